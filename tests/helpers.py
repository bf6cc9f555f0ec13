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


class SineNet:
    """f(z) = sum_k a_k sin(w_k . z + b_k): a random smooth network with a
    closed-form Gaussian smoothing E f(z + delta) = sum_k a_k exp(-sigma^2 |w_k|^2 / 2) sin(w_k . z + b_k).

    Shapes: W (K, D), b (K,), a (K,); __call__: (B, D) -> (B,).
    """

    def __init__(self, dim: int, units: int = 16, seed: int = 0, dtype=None):
        import torch

        dtype = dtype or torch.float64
        generator = torch.Generator().manual_seed(seed)
        self.W = torch.randn(units, dim, generator=generator, dtype=dtype) / dim**0.5
        self.b = torch.rand(units, generator=generator, dtype=dtype) * 6.28
        self.a = torch.randn(units, generator=generator, dtype=dtype) / units**0.5

    def __call__(self, Z):
        import torch

        return torch.sin(Z @ self.W.T + self.b) @ self.a

    def smoothed(self, sigma: float) -> "SineNet":
        import torch

        smooth = SineNet.__new__(SineNet)
        smooth.W, smooth.b = self.W, self.b
        smooth.a = self.a * torch.exp(-0.5 * sigma**2 * (self.W**2).sum(1))
        return smooth
