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

``ForwardFinish`` ends a run of an inverse problem with the unknowns held at their
estimates and the data weighted down (``forward_finish``, ``forward_finish_weight``).
"""

from __future__ import annotations

import dataclasses
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



@dataclass
class ForwardFinish:
    """The last ``share`` of a run of an inverse problem (``forward_finish``): from the first step at which
    that share of the run (of its steps, or of its time budget) is left, every batch holds the unknowns
    at their estimates then (``held``, raw (k,)) and weighs each data condition by ``data_factor`` more.

    Why. The loss trades the equation's residual against the data's misfit, so with noisy data at
    weight 1 the network bends towards the noise between the measurements: on burgers1d-inverse u ends
    2.0e-4 from the exact solution, where the equation solved for the estimated nu is 1.1e-5 from it.
    As the data's weight falls, the fit tends to the constrained one (u solves the equation and the
    conditions; the data's least squares choose the unknowns), the maximum-likelihood estimate for
    Gaussian noise. Weighted down from the start, though, the unknowns drift to values that make the
    equation easier for the network (heat10-inverse at weight 0.01: k = 0.9907 for 0.99856). So the
    unknowns are fitted with the data at full weight, then held while u settles on the equation's
    solution for them. docs/method.md, "The forward finish".

    ``measured``: per condition, whether it is a data condition; ``unknowns``: k, the last k coordinates
    of theta.
    """

    share: float
    data_factor: float
    measured: tuple[bool, ...]
    unknowns: int
    held: torch.Tensor | None = None

    @classmethod
    def create(cls, problem, settings, unknowns: int) -> "ForwardFinish | None":
        """The finish of a run of ``problem`` with ``settings``; None for a forward problem or
        ``forward_finish`` 0."""
        if not unknowns or settings.forward_finish == 0:
            return None
        measured = tuple(condition.kind == "measured" for condition in problem.conditions)
        return cls(settings.forward_finish, settings.forward_finish_weight, measured, unknowns)

    def starts(self, done: float, theta: torch.Tensor) -> bool:
        """Whether the finish starts now, ``done`` (in [0, 1]) of the run behind: then it holds the
        unknowns at theta's (d,)."""
        if self.held is not None or done < 1 - self.share:
            return False
        self.held = theta[-self.unknowns:].detach().clone()
        return True

    def apply(self, batch):
        """``batch`` (residual.Batch) with the held unknowns and the data conditions' weights times
        ``data_factor``; unchanged before the finish."""
        if self.held is None:
            return batch
        weights = batch.weights or (1.0,) * (1 + len(self.measured))
        factors = (1.0, *(self.data_factor if measured else 1.0 for measured in self.measured))
        return dataclasses.replace(batch, weights=tuple(w * f for w, f in zip(weights, factors)),
                                   held_unknowns=self.held)

    def constrain(self, theta: torch.Tensor) -> torch.Tensor:
        """theta (d,) with the held unknowns in its last k coordinates (itself before the finish)."""
        if self.held is None:
            return theta
        return torch.cat([theta[:-self.unknowns], self.held.to(theta)])

    def describe(self) -> str:
        return (f"; the last {self.share:.0%} of the run holds the unknowns and weighs the data x "
                f"{self.data_factor:g} (forward finish)")

    def started_text(self, unknowns: Sequence[Unknown]) -> str:
        values = ", ".join(f"{name} = {float(value):.6g}"
                           for name, value in unknown_values(unknowns, self.held.double()).items())
        return (f"forward finish: the unknowns held at {values}, the data weighted x {self.data_factor:g} "
                f"from now on")
