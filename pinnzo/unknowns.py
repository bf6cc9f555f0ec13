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



SETTLE_WINDOW = 0.1  # the unknowns must have settled over this share of the run before the finish holds them


@dataclass
class ForwardFinish:
    """The end of a run of an inverse problem (``forward_finish``): once ``share`` of the run (of its steps,
    or of its time budget) is left and the unknowns have settled (they moved by less than ``tolerance``,
    relative, over the last tenth of the run: ``SETTLE_WINDOW``), every batch holds the unknowns at
    their values then (``held``, raw (k,)) and weighs each data condition by ``data_factor`` more.

    Why. The loss trades the equation's residual against the data's misfit, so with noisy data at
    weight 1 the network bends towards the noise between the measurements: on burgers1d-inverse u ends
    2.0e-4 from the exact solution, where the equation solved for the estimated nu is 1.1e-5 from it.
    As the data's weight falls, the fit tends to the constrained one (u solves the equation and the
    conditions; the data's least squares choose the unknowns), the maximum-likelihood estimate for
    Gaussian noise. Weighted down from the start, though, the unknowns drift to values that make the
    equation easier for the network (heat10-inverse at weight 0.01: k = 0.9907 for 0.99856). So the
    unknowns are fitted with the data at full weight, then held while u settles on the equation's
    solution for them. Unknowns still on the move are not held (a file's 60-step recipe, whose k
    still moves by 1% a tenth of the run at three quarters of it): a run ends where they stand, and
    holding settled ones forgoes at most the motion of the quarter left, about 2.5 x ``tolerance`` at
    the settled pace. docs/method.md, "The forward finish".

    ``measured``: per condition, whether it is a data condition; ``unknowns``: the problem's, whose raw
    coordinates are the last k of theta; ``history``: (done, values (k,) float64) of the steps since
    the settling window before the finish could start (for the settling test).
    """

    share: float
    data_factor: float
    tolerance: float
    measured: tuple[bool, ...]
    unknowns: tuple[Unknown, ...]
    held: torch.Tensor | None = None
    history: list = dataclasses.field(default_factory=list)

    @classmethod
    def create(cls, problem, settings) -> "ForwardFinish | None":
        """The finish of a run of ``problem`` with ``settings``; None for a forward problem or
        ``forward_finish`` 0."""
        if not problem.unknowns or settings.forward_finish == 0:
            return None
        measured = tuple(condition.kind == "measured" for condition in problem.conditions)
        return cls(settings.forward_finish, settings.forward_finish_weight, settings.forward_finish_tolerance,
                   measured, tuple(problem.unknowns))

    def values(self, theta: torch.Tensor) -> torch.Tensor:
        """The unknowns' values (k,) float64 at theta (d,)."""
        raw = theta[-len(self.unknowns):].detach().double().cpu()
        return torch.stack([unknown.value(raw[k]) for k, unknown in enumerate(self.unknowns)])

    def starts(self, done: float, theta: torch.Tensor) -> bool:
        """Whether the finish starts now, ``done`` (in [0, 1]) of the run behind: then it holds the
        unknowns at theta's (d,). It starts at the first step at which ``share`` of the run is left
        and the unknowns have settled (``settled``)."""
        if self.held is not None or done < 1 - self.share - SETTLE_WINDOW:
            return False
        self.history.append((done, self.values(theta)))
        if done < 1 - self.share or not self.settled(done):
            return False
        self.held, self.history = theta[-len(self.unknowns):].detach().clone(), []
        return True

    def settled(self, done: float) -> bool:
        """Whether every unknown moved by less than ``tolerance`` times its value since the last step
        at least ``SETTLE_WINDOW`` of the run ago (False when no step is that old)."""
        earlier = [values for at, values in self.history if at <= done - SETTLE_WINDOW]
        if not earlier:
            return False
        self.history = self.history[len(earlier) - 1:]  # the reference and the steps after it
        reference, now = earlier[-1], self.history[-1][1]
        return bool(((now - reference).abs() < self.tolerance * reference.abs()).all())

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
        return torch.cat([theta[:-len(self.unknowns)], self.held.to(theta)])

    def describe(self) -> str:
        return (f"; from {1 - self.share:.0%} of the run on, once the unknowns move by less than "
                f"{self.tolerance:g} (relative) over a tenth of it, they are held and the data weighed x "
                f"{self.data_factor:g} (forward finish)")

    def started_text(self) -> str:
        values = ", ".join(f"{unknown.name} = {float(value):.6g}"
                           for unknown, value in zip(self.unknowns, self.values(self.held)))
        return (f"forward finish: the unknowns held at {values} (they moved by less than {self.tolerance:g} "
                f"over the last tenth of the run), the data weighted x {self.data_factor:g} from now on")

    def state_dict(self) -> dict:
        return {"held_unknowns": self.held, "finish_history": self.history}

    def load_state_dict(self, saved: dict) -> None:
        self.held, self.history = saved.get("held_unknowns"), list(saved.get("finish_history", []))
