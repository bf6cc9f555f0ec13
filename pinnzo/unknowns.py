"""Unknown parameters of an inverse problem, trained with the network.

An unknown (``unknowns: {nu: {initial: 0.1, bounds: [0, 1]}}`` in a problem file)
is a scalar of the equation or of the conditions that the training identifies.
It is stored as an unconstrained *raw* value r, one more coordinate of theta,
and reaches the equation through a transform that keeps it inside its bounds
(never clipping, so every optimizer sees a smooth function of r):

    bounds [lo, hi]:      value = lo + (hi - lo) * sigmoid(r)
    bounds [lo, null]:    value = lo + softplus(r)
    bounds [null, hi]:    value = hi - softplus(r)
    no bounds:            value = r

The raw value starts at the inverse of the transform at ``initial``, which must
lie strictly inside the bounds (the transform reaches the bounds only at r = +-inf).
``WithUnknowns`` is the trained model: the network and the raw values as real
parameters, so checkpoints, model files and ``load_run`` carry them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Unknown:
    """One unknown scalar: its name, initial value, bounds (lo, hi; -inf / inf: open) and, when the
    problem file states it, its exact value (reported beside the estimate, never used in training)."""

    name: str
    initial: float
    low: float = -math.inf
    high: float = math.inf
    exact: float | None = None

    def value(self, raw: torch.Tensor) -> torch.Tensor:
        """The unknown's value from its raw coordinate (any shape; elementwise)."""
        bounded_below, bounded_above = math.isfinite(self.low), math.isfinite(self.high)
        if bounded_below and bounded_above:
            return self.low + (self.high - self.low) * torch.sigmoid(raw)
        if bounded_below:
            return self.low + nn.functional.softplus(raw)
        if bounded_above:
            return self.high - nn.functional.softplus(raw)
        return raw

    def raw(self, value: float) -> float:
        """The inverse transform: the raw coordinate whose value is ``value`` (strictly inside the bounds)."""
        bounded_below, bounded_above = math.isfinite(self.low), math.isfinite(self.high)
        if bounded_below and bounded_above:
            share = (value - self.low) / (self.high - self.low)
            return math.log(share / (1 - share))
        if bounded_below:
            return _softplus_inverse(value - self.low)
        if bounded_above:
            return _softplus_inverse(self.high - value)
        return value

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies strictly inside the bounds (where the transform can reach it)."""
        return self.low < value < self.high

    def bounds_text(self) -> str:
        low = "-inf" if self.low == -math.inf else f"{self.low:g}"
        high = "inf" if self.high == math.inf else f"{self.high:g}"
        return f"({low}, {high})"


def _softplus_inverse(y: float) -> float:
    """x with log(1 + e^x) = y > 0, without overflow for large y."""
    return y + math.log(-math.expm1(-y))


def unknown_values(unknowns: Sequence[Unknown], raw: torch.Tensor | None) -> dict[str, torch.Tensor | float]:
    """Name -> value of every unknown: from the raw coordinates (k,) (batched under vmap), or the initial
    values when ``raw`` is None."""
    if raw is None:
        return {unknown.name: unknown.initial for unknown in unknowns}
    return {unknown.name: unknown.value(raw[..., k]) for k, unknown in enumerate(unknowns)}


class UnknownParameters(nn.Module):
    """The raw coordinates of the unknowns, one parameter ``raw`` (k,)."""

    def __init__(self, unknowns: Sequence[Unknown], dtype=torch.float32):
        super().__init__()
        self.raw = nn.Parameter(torch.tensor([unknown.raw(unknown.initial) for unknown in unknowns], dtype=dtype))


class WithUnknowns(nn.Module):
    """A network and the unknowns trained with it. theta = [the network's parameters in its own order,
    then the raw unknowns (k,)] (``objective.Objective`` reads the unknowns off the parameter ``RAW``);
    forward is the network's: (B, D) -> (B,)."""

    RAW = "unknowns.raw"

    def __init__(self, network: nn.Module, unknowns: Sequence[Unknown]):
        super().__init__()
        self.network = network
        self.unknowns = UnknownParameters(unknowns, next(network.parameters()).dtype)
        self.names = tuple(unknown.name for unknown in unknowns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def parameter_table(self) -> list[tuple[str, str, int]]:
        """The network's rows and one for the unknowns."""
        return [*self.network.parameter_table(), ("unknowns", ", ".join(self.names), len(self.names))]

