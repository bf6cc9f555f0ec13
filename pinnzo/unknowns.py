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

import collections
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



SETTLE_WINDOW = 0.1  # the unknowns must have settled over this share of the run (and two point sets) to be held


@dataclass
class ForwardFinish:
    """The end of a run of an inverse problem (``forward_finish``): once ``share`` of the run (of its steps,
    or of its time budget) is left and the unknowns have settled (``settled``: they moved by less than
    ``tolerance``, relative, at the ends of the point sets over the last tenth of the run and two sets
    at least), every batch holds the unknowns at their values then (``held``, raw (k,)) and weighs each
    data condition by ``data_factor`` more.

    Why. The loss trades the equation's residual against the data's misfit, so with noisy data at
    weight 1 the network bends towards the noise between the measurements: on burgers1d-inverse u ends
    2.0e-4 from the exact solution, where the equation solved for the estimated nu is 1.1e-5 from it.
    As the data's weight falls, the fit tends to the constrained one (u solves the equation and the
    conditions; the data's least squares choose the unknowns), the maximum-likelihood estimate for
    Gaussian noise. Weighted down from the start, though, the unknowns drift to values that make the
    equation easier for the network (heat10-inverse at weight 0.01: k = 0.9907 for 0.99856). So the
    unknowns are fitted with the data at full weight, then held while u settles on the equation's
    solution for them. Unknowns still on the move are not held: a run ends where they stand. Each point
    set has its own least-squares estimate, so the motion is measured across two point sets at least
    (heat10-inverse's 60-step recipe: k creeps by 0.1% within a set of 10 steps and jumps by 0.5% to
    the next), at the ends of the sets, where the unknowns are fitted to one. Holding settled ones
    forgoes at most the motion of the quarter left, about 2.5 x ``tolerance`` at the settled pace.
    docs/method.md, "The forward finish".

    ``measured``: per condition, whether it is a data condition; ``unknowns``: the problem's, whose raw
    coordinates are the last k of theta; ``resample_every``: the steps of a point set; ``history``:
    (done, step, the values) at the ends of the point sets since the settling test's reference.
    """

    share: float
    data_factor: float
    tolerance: float
    measured: tuple[bool, ...]
    unknowns: tuple[Unknown, ...]
    resample_every: int = 1
    held: torch.Tensor | None = None
    history: collections.deque = dataclasses.field(default_factory=collections.deque)

    @classmethod
    def create(cls, problem, settings, resample_every: int) -> "ForwardFinish | None":
        """The finish of a run of ``problem`` with ``settings`` and point sets of ``resample_every`` steps;
        None for a forward problem or ``forward_finish`` 0."""
        if not problem.unknowns or settings.forward_finish == 0:
            return None
        measured = tuple(condition.kind == "measured" for condition in problem.conditions)
        return cls(settings.forward_finish, settings.forward_finish_weight, settings.forward_finish_tolerance,
                   measured, tuple(problem.unknowns), resample_every)

    def values(self, theta: torch.Tensor) -> torch.Tensor:
        """The unknowns' values (k,) float64 at theta (d,)."""
        return torch.stack(list(unknown_values(self.unknowns, theta[-len(self.unknowns):].detach().double().cpu())
                                .values()))

    def starts(self, done: float, theta: torch.Tensor, step: int) -> bool:
        """Whether the finish starts at ``step``, ``done`` (in [0, 1]) of the run behind: then it holds
        the unknowns at theta's (d,). It starts at the first fresh point set (a step that is a multiple of
        ``resample_every``) at which ``share`` of the run is left and the unknowns have settled
        (``settled``), so that each point set is fitted with one loss."""
        if self.held is not None or step % self.resample_every != 0:
            return False
        self.history.append((done, step, tuple(self.values(theta).tolist())))
        if not self.settled(done, step) or done < 1 - self.share:
            return False
        self.held, self.history = theta[-len(self.unknowns):].detach().clone(), collections.deque()
        return True

    def settled(self, done: float, step: int) -> bool:
        """Whether every unknown stayed within ``tolerance`` times its value of the reference at the end of
        every point set since it: the reference is the last end of a set at least ``SETTLE_WINDOW`` of the
        run and two sets before ``step`` (False when none is that old). Keeps only the reference and the
        ends after it."""
        def old(entry) -> bool:
            return entry[0] <= done - SETTLE_WINDOW and entry[1] <= step - 2 * self.resample_every

        while len(self.history) > 1 and old(self.history[1]):
            self.history.popleft()
        if not old(self.history[0]):
            return False
        reference = self.history[0][2]
        return all(abs(b - a) < self.tolerance * abs(a) for _, _, values in self.history
                   for a, b in zip(reference, values))

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
        return (f"; from {1 - self.share:.0%} of the run on, once the unknowns stay within {self.tolerance:g} "
                f"(relative) at the ends of the point sets of a tenth of it, they are held and the data weighed x "
                f"{self.data_factor:g} (forward finish)")

    def started_text(self) -> str:
        values = ", ".join(f"{unknown.name} = {float(value):.6g}"
                           for unknown, value in zip(self.unknowns, self.values(self.held)))
        return (f"forward finish: the unknowns held at {values} (within {self.tolerance:g} at the ends of the "
                f"point sets of the last tenth of the run), the data weighted x {self.data_factor:g} from now on")

    def state_dict(self) -> dict:
        return {"held_unknowns": self.held, "finish_history": list(self.history)}

    def load_state_dict(self, saved: dict) -> None:
        self.held = saved.get("held_unknowns")
        self.history = collections.deque(tuple(entry) for entry in saved.get("finish_history", []))
