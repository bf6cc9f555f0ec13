"""Optimizers: a gradient estimator followed by an update transformation, plus the hybrid.

    optimizer = zo_signrge(lr=1e-3, directions=10, mu=0.01)
    state = optimizer.init(theta)
    theta, state, info = optimizer.update(step, theta, state, objective, batch, generator)

Each registry name has a factory of the same name (``zo-signrge`` -> ``zo_signrge``)
taking its own keyword arguments. The zeroth-order ones never build an autograd
graph: their estimators only query the loss.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from pinnzo.optim import estimators
from pinnzo.optim.gauss_newton import GaussNewton
from pinnzo.optim.info import StepInfo
from pinnzo.optim.lbfgs import LBFGS
from pinnzo.optim.transforms import (Schedule, Transformation, chain, exponential_decay, scale_by_adam,
                                     scale_by_schedule, scale_by_sign, trace)

Estimator = Callable[..., estimators.Estimate]  # (objective, theta, batch, generator) -> Estimate
SMOOTHING = 0.9  # the smoothed loss s_t = 0.9 s_{t-1} + 0.1 L_t


def smoothed(previous: float, loss: float) -> float:
    """The one smoothed-loss definition (an exponential moving average; nan starts it)."""
    return loss if math.isnan(previous) else SMOOTHING * previous + (1 - SMOOTHING) * loss


@dataclass(frozen=True)
class GradientDescent:
    """theta <- theta + transform(estimate(theta)): every optimizer but the hybrid."""

    estimate: Estimator
    transform: Transformation
    schedule: Schedule
    stage: str

    def init(self, theta: torch.Tensor):
        return self.transform.init(theta)

    def update(self, step: int, theta, state, objective, batch, generator):
        estimate = self.estimate(objective, theta, batch, generator)
        updates, state = self.transform.update(estimate.gradient, state, step)
        return theta + updates, state, StepInfo(estimate.loss.item(), self.stage)


class HybridState(NamedTuple):
    stage: int  # 0: coarse (signRGE, Adam), 1: fine (CGE, L-BFGS)
    smoothed: float
    best: float
    since: int  # steps since the smoothed loss last improved
    switch_step: int  # -1 until the switch
    coarse: Any
    fine: Any


@dataclass(frozen=True)
class Hybrid:
    """A switching wrapper: ``coarse`` training, then ``fine`` for the rest of the run. The paper's
    hybrid is ZO-signRGE then ZO-CGE with momentum; adam-lbfgs is Adam then L-BFGS.

    Patience rule: the smoothed loss must improve on its best value by a relative
    1e-3 at least once every ``patience`` steps; when it does not, the optimizer
    switches. ``switch_step`` > 0 switches at that step at the latest (a time
    budget). The switch step is logged and kept in the state.
    """

    coarse: Any
    fine: Any
    patience: int
    switch_step: int = 0
    name: str = "hybrid"
    labels: tuple[str, str] = ("signRGE", "CGE")

    @property
    def schedule(self) -> Schedule:
        return self.coarse.schedule

    def init(self, theta):
        return HybridState(0, math.nan, math.inf, 0, -1, self.coarse.init(theta), self.fine.init(theta))

    def update(self, step, theta, state, objective, batch, generator):
        if state.stage == 1:
            theta, fine, info = self.fine.update(step, theta, state.fine, objective, batch, generator)
            return theta, state._replace(fine=fine), info
        theta, coarse, info = self.coarse.update(step, theta, state.coarse, objective, batch, generator)
        level = smoothed(state.smoothed, info.loss)
        best, since = (level, 0) if level < state.best * (1 - 1e-3) else (state.best, state.since + 1)
        state = state._replace(smoothed=level, best=best, since=since, coarse=coarse)
        budget = self.switch_step and step + 1 >= self.switch_step
        if since >= self.patience or budget:
            state = state._replace(stage=1, switch_step=step)
            reason = (f"smoothed loss {level:.3e} did not improve for {self.patience} steps" if not budget
                      else f"switch_step {self.switch_step} reached")
            info.events.append(f"{self.name}: switched from {self.labels[0]} to {self.labels[1]} at step {step} "
                               f"({reason})")
        return theta, state, info


# ---------------------------------------------------------------- the registry's factories

def _descent(estimate, schedule, stage, *transforms) -> GradientDescent:
    return GradientDescent(estimate, chain(*transforms, scale_by_schedule(schedule)), schedule, stage)


def _rge(directions, mu, perturbation, difference) -> Estimator:
    return functools.partial(estimators.rge, count=directions, mu=mu, kind=perturbation, difference=difference)


def _cge(mu, difference, coordinates) -> Estimator:
    return functools.partial(estimators.cge, mu=mu, difference=difference, coordinates=coordinates)


def adam(lr: float = 1e-3, lr_decay: float = 1.0, decay_every: int = 1000) -> GradientDescent:
    """Adam on back-propagated gradients."""
    return _descent(estimators.backprop, exponential_decay(lr, lr_decay, decay_every), "", scale_by_adam())


def sgd(lr: float = 1e-3, momentum: float = 0.9, lr_decay: float = 1.0, decay_every: int = 1000) -> GradientDescent:
    """theta <- theta - lr_t b, b <- momentum b + g, with back-propagated g."""
    return _descent(estimators.backprop, exponential_decay(lr, lr_decay, decay_every), "", trace(momentum))


def zo_rge(lr: float = 1e-3, directions: int = 10, mu: float = 0.01, perturbation: str = "gaussian",
           difference: str = "forward", lr_decay: float = 1.0, decay_every: int = 1000) -> GradientDescent:
    """theta <- theta - lr_t g_RGE (ZO-SGD; paper eqs. 1-2)."""
    return _descent(_rge(directions, mu, perturbation, difference), exponential_decay(lr, lr_decay, decay_every),
                    "rge")


def zo_signrge(lr: float = 1e-3, directions: int = 10, mu: float = 0.01, perturbation: str = "gaussian",
               difference: str = "forward", lr_decay: float = 1.0, decay_every: int = 1000) -> GradientDescent:
    """theta <- theta - lr_t sign(g_RGE) (ZO-signSGD; paper section 3.2)."""
    return _descent(_rge(directions, mu, perturbation, difference), exponential_decay(lr, lr_decay, decay_every),
                    "signrge", scale_by_sign())


def zo_adam(lr: float = 1e-3, directions: int = 10, mu: float = 0.01, perturbation: str = "gaussian",
            difference: str = "forward", lr_decay: float = 1.0, decay_every: int = 1000) -> GradientDescent:
    """The RGE estimate fed to Adam."""
    return _descent(_rge(directions, mu, perturbation, difference), exponential_decay(lr, lr_decay, decay_every),
                    "rge-adam", scale_by_adam())


def zo_cge(lr: float = 1e-3, mu: float = 0.01, momentum: float = 0.9, difference: str = "forward",
           coordinates: int = 0, lr_decay: float = 1.0, decay_every: int = 1000) -> GradientDescent:
    """Coordinate-wise estimate with momentum: b <- m b + g_CGE, theta <- theta - lr_t b."""
    return _descent(_cge(mu, difference, coordinates), exponential_decay(lr, lr_decay, decay_every), "cge",
                    trace(momentum))


def hybrid(lr: float = 1e-3, directions: int = 10, mu: float = 0.01, perturbation: str = "gaussian",
           difference: str = "forward", lr_decay: float = 1.0, decay_every: int = 1000, momentum: float = 0.9,
           coordinates: int = 0, patience: int = 50, switch_step: int = 0, cge_mu: float = 0.01,
           cge_lr: float = 0.0) -> Hybrid:
    """ZO-signRGE, then ZO-CGE (``cge_mu``, ``cge_lr`` or lr, momentum) by the patience rule."""
    coarse = zo_signrge(lr, directions, mu, perturbation, difference, lr_decay, decay_every)
    fine = zo_cge(cge_lr or lr, cge_mu, momentum, difference, coordinates, lr_decay, decay_every)
    return Hybrid(coarse, fine, patience, switch_step)


def lbfgs(history: int = 50, resample_every: int = 1) -> LBFGS:
    """L-BFGS with a strong-Wolfe line search on back-propagated gradients (one iteration a step)."""
    return LBFGS(history, resample_every)


def adam_lbfgs(lr: float = 1e-3, lr_decay: float = 1.0, decay_every: int = 1000, history: int = 50,
               resample_every: int = 1, patience: int = 50, switch_step: int = 0) -> Hybrid:
    """Adam, then L-BFGS (the usual PINN recipe), switched by the patience rule or at ``switch_step``."""
    return Hybrid(adam(lr, lr_decay, decay_every), lbfgs(history, resample_every), patience, switch_step,
                  "adam-lbfgs", ("Adam", "L-BFGS"))


def gn(damping: float = 1e-3, damping_rule: str = "nielsen", damping_matrix: str = "identity",
       gn_acceleration: float = 0.0, gn_tolerance: float = 1e-10, memory_mb: int = 1024,
       gn_reuse: int = 2) -> GaussNewton:
    """Levenberg-Marquardt with the Jacobian of the residual vector by autograd (first order);
    ``gn_reuse``: more steps with each Jacobian (GaussNewton._reused)."""
    return GaussNewton("gn", damping=damping, rule=damping_rule, matrix=damping_matrix, tolerance=gn_tolerance,
                       acceleration=gn_acceleration, memory_mb=memory_mb, reuse=gn_reuse)


def zo_gn(gn_subspace: str = "auto", gn_directions: int = 200, gn_mu: float = 0.0, difference: str = "forward",
          damping: float = 1e-3, damping_rule: str = "nielsen", damping_matrix: str = "identity",
          gn_acceleration: float = 0.0, gn_tolerance: float = 1e-10, memory_mb: int = 1024,
          rounding_gain: float = 1.0, gn_columns: str = "chain", gn_reuse: int = 2) -> GaussNewton:
    """Levenberg-Marquardt with the Jacobian by forward differences of residual queries: no
    back-propagation anywhere. ``rounding_gain``: the derivative backend's (sizes the step gn_mu);
    ``gn_columns``: the layered columns by the chain rule at the moved layer, or by differences;
    ``gn_reuse``: more steps with each Jacobian (GaussNewton._reused)."""
    return GaussNewton("zo-gn", gn_subspace, gn_directions, gn_mu, difference, damping, damping_rule,
                       damping_matrix, gn_tolerance, acceleration=gn_acceleration, memory_mb=memory_mb,
                       rounding_gain=rounding_gain, linear=gn_columns == "chain", reuse=gn_reuse)
