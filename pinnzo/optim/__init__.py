"""Optimizers: one registry of first-order and zeroth-order (loss-query-only) methods."""

from __future__ import annotations

from typing import Callable

from pinnzo.optim.objective import Objective
from pinnzo.optim.optimizers import (SGD, Adam, Hybrid, Optimizer, StepInfo, ZOAdam, ZOCGE, ZOSGD, ZOSignSGD,
                                     learning_rate)
from pinnzo.registry import Registry
from pinnzo.settings import Settings

OPTIMIZERS: Registry[Callable[[Settings], Optimizer]] = Registry("optimizer")
for _name, _cls in [("adam", Adam), ("sgd", SGD), ("zo-rge", ZOSGD), ("zo-signrge", ZOSignSGD),
                    ("zo-cge", ZOCGE), ("hybrid", Hybrid), ("zo-adam", ZOAdam)]:
    OPTIMIZERS.register(_name, _cls)


def make_optimizer(settings: Settings) -> Optimizer:
    return OPTIMIZERS[settings.optimizer](settings)


__all__ = ["OPTIMIZERS", "Objective", "Optimizer", "StepInfo", "learning_rate", "make_optimizer"]
