"""Optimizers: one registry of first-order and zeroth-order (loss-query-only) methods."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from pinnzo.optim import transforms
from pinnzo.optim.gauss_newton import GNState
from pinnzo.optim.info import StepInfo
from pinnzo.optim.lbfgs import LBFGSState
from pinnzo.optim.objective import Objective
from pinnzo.optim.optimizers import (GradientDescent, Hybrid, HybridState, adam, adam_lbfgs, gn, hybrid, lbfgs, sgd,
                                     smoothed, zo_adam, zo_cge, zo_gn, zo_rge, zo_signrge)
from pinnzo.registry import Registry

OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer")
for _factory in (adam, sgd, lbfgs, adam_lbfgs, gn, zo_rge, zo_signrge, zo_cge, hybrid, zo_adam, zo_gn):
    OPTIMIZERS.register(_factory.__name__.replace("_", "-"), _factory)
FIRST_ORDER = ("adam", "sgd", "lbfgs", "adam-lbfgs", "gn")  # back-propagate; the others only query the loss
LEAST_SQUARES = ("gn", "zo-gn")  # need a residual vector (PINN losses)
FIXED_POINTS = ("lbfgs", "adam-lbfgs", "gn", "zo-gn")  # want a fixed set of points between resamples

# optimizer states go into checkpoints read with torch.load(..., weights_only=True)
torch.serialization.add_safe_globals([*transforms.STATE_TYPES, HybridState, GNState, LBFGSState])


def make_optimizer(name: str, **options):
    """The optimizer ``name`` built from the keyword ``options`` its factory takes (others are
    ignored, so a whole settings mapping can be passed)."""
    accepted = optimizer_options(name)
    return OPTIMIZERS[name](**{key: value for key, value in options.items() if key in accepted})


def optimizer_options(name: str) -> set[str]:
    """The keyword arguments (settings) optimizer ``name`` uses."""
    return set(inspect.signature(OPTIMIZERS[name]).parameters)


__all__ = ["FIRST_ORDER", "FIXED_POINTS", "LEAST_SQUARES", "OPTIMIZERS", "GradientDescent", "Hybrid", "Objective",
           "StepInfo", "make_optimizer", "optimizer_options", "smoothed"]
