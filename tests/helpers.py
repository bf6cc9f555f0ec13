"""Small helpers shared by the tests."""

from __future__ import annotations

import math

import numpy as np


def gaussian_moment(exponents) -> float:
    """E[prod_i z_i^a_i] for z ~ N(0, I): prod (a_i - 1)!! when all a_i are even, else 0."""
    exponents = np.asarray(exponents)
    if (exponents % 2).any():
        return 0.0
    return float(math.prod(math.prod(range(int(a) - 1, 0, -2)) for a in exponents))


def run_cli(args: list[str]):
    """Invoke the pinnzo CLI in-process with typer's CliRunner; returns the Result."""
    from typer.testing import CliRunner

    from pinnzo.cli import app

    return CliRunner().invoke(app, args)
