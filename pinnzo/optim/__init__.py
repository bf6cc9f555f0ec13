"""Optimizers: one registry of first-order and zeroth-order (loss-query-only) methods."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from pinnzo.optim import transforms
from pinnzo.optim.objective import Objective
from pinnzo.optim.optimizers import (GradientDescent, Hybrid, HybridState, StepInfo, adam, hybrid, sgd, smoothed,
                                     zo_adam, zo_cge, zo_rge, zo_signrge)
from pinnzo.registry import Registry

OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer")
for _factory in (adam, sgd, zo_rge, zo_signrge, zo_cge, hybrid, zo_adam):
    OPTIMIZERS.register(_factory.__name__.replace("_", "-"), _factory)

# optimizer states go into checkpoints read with torch.load(..., weights_only=True)
torch.serialization.add_safe_globals([*transforms.STATE_TYPES, HybridState])


def make_optimizer(name: str, **options):
    """The optimizer ``name`` built from the keyword ``options`` its factory takes (others are
    ignored, so a whole settings mapping can be passed)."""
    factory = OPTIMIZERS[name]
    accepted = inspect.signature(factory).parameters
    return factory(**{key: value for key, value in options.items() if key in accepted})


__all__ = ["OPTIMIZERS", "GradientDescent", "Hybrid", "Objective", "StepInfo", "make_optimizer", "smoothed"]
