"""Optimizers with one tiny protocol (optax's init/update, on a flat theta).

    state = optimizer.init(theta)
    theta, state, info = optimizer.step(step, theta, state, objective, generator)

State is a dict of tensors and numbers (checkpointable). ``first_order``
optimizers back-propagate (objective.value_and_grad); the others only query
the loss and never build an autograd graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pinnzo.optim import estimators
from pinnzo.optim.objective import Objective
from pinnzo.settings import Settings


@dataclass
class StepInfo:
    """What one step did: the training loss at theta, loss queries used, notes."""

    loss: float
    queries: int
    stage: str = ""
    events: list[str] = field(default_factory=list)


def learning_rate(settings: Settings, step: int, base: float | None = None) -> float:
    """lr * lr_decay ** floor(step / decay_every) (the paper's exponential / step decay)."""
    base = settings.lr if base is None else base
    return base * settings.lr_decay ** (step // max(1, settings.decay_every))


class Optimizer:
    first_order = False

    def __init__(self, settings: Settings):
        self.settings = settings

    def init(self, theta: torch.Tensor) -> dict:
        return {}

    def step(self, step: int, theta, state, objective: Objective, generator) -> tuple[torch.Tensor, dict, StepInfo]:
        raise NotImplementedError


def _adam_update(state: dict, g: torch.Tensor, lr: float, betas=(0.9, 0.999), eps=1e-8) -> torch.Tensor:
    """Adam's step direction (scaled by lr); updates m, v, t in ``state``."""
    state["t"] += 1
    state["m"].mul_(betas[0]).add_(g, alpha=1 - betas[0])
    state["v"].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
    m_hat = state["m"] / (1 - betas[0] ** state["t"])
    v_hat = state["v"] / (1 - betas[1] ** state["t"])
    return lr * m_hat / (v_hat.sqrt() + eps)


class SGD(Optimizer):
    """theta <- theta - lr_t g with back-propagated g (and optional momentum)."""

    first_order = True

    def init(self, theta):
        return {"b": torch.zeros_like(theta)}

    def step(self, step, theta, state, objective, generator):
        loss, g = objective.value_and_grad(theta)
        state["b"] = self.settings.momentum * state["b"] + g
        return theta - learning_rate(self.settings, step) * state["b"], state, StepInfo(loss.item(), 1)


class Adam(Optimizer):
    """Adam on back-propagated gradients."""

    first_order = True

    def init(self, theta):
        return {"m": torch.zeros_like(theta), "v": torch.zeros_like(theta), "t": 0}

    def step(self, step, theta, state, objective, generator):
        loss, g = objective.value_and_grad(theta)
        return theta - _adam_update(state, g, learning_rate(self.settings, step)), state, StepInfo(loss.item(), 1)


class ZeroOrder(Optimizer):
    """Shared by the loss-only optimizers: the RGE of the settings."""

    def rge(self, theta, objective, generator):
        s = self.settings
        return estimators.rge(objective, theta, generator, s.directions, s.mu, s.perturbation, s.difference)


class ZOSGD(ZeroOrder):
    """zo-rge: theta <- theta - lr_t g_RGE (paper eqs. 1-2)."""

    def step(self, step, theta, state, objective, generator):
        g, loss, queries = self.rge(theta, objective, generator)
        return theta - learning_rate(self.settings, step) * g, state, StepInfo(loss.item(), queries, "rge")


class ZOSignSGD(ZeroOrder):
    """zo-signrge: theta <- theta - lr_t sign(g_RGE) (ZO-signSGD, paper section 3.2)."""

    def step(self, step, theta, state, objective, generator):
        g, loss, queries = self.rge(theta, objective, generator)
        return theta - learning_rate(self.settings, step) * torch.sign(g), state, StepInfo(loss.item(), queries, "signrge")


class ZOAdam(ZeroOrder):
    """zo-adam: the RGE estimate fed to Adam."""

    def init(self, theta):
        return {"m": torch.zeros_like(theta), "v": torch.zeros_like(theta), "t": 0}

    def step(self, step, theta, state, objective, generator):
        g, loss, queries = self.rge(theta, objective, generator)
        update = _adam_update(state, g, learning_rate(self.settings, step))
        return theta - update, state, StepInfo(loss.item(), queries, "rge-adam")


class ZOCGE(ZeroOrder):
    """zo-cge: coordinate-wise estimate with momentum b <- m b + g, theta <- theta - lr_t b."""

    def __init__(self, settings, mu: float | None = None, lr: float | None = None):
        super().__init__(settings)
        self.mu = mu if mu is not None else settings.mu
        self.lr = lr

    def init(self, theta):
        return {"b": torch.zeros_like(theta)}

    def step(self, step, theta, state, objective, generator):
        s = self.settings
        g, loss, queries = estimators.cge(objective, theta, generator, self.mu, s.difference, s.coordinates)
        state["b"] = s.momentum * state["b"] + g
        theta = theta - learning_rate(s, step, self.lr) * state["b"]
        return theta, state, StepInfo(loss.item(), queries, "cge")


class Hybrid(ZeroOrder):
    """The paper's hybrid: ZO-signRGE coarse training, then ZO-CGE with momentum.

    Patience rule: the smoothed loss s_t = 0.9 s_{t-1} + 0.1 L_t must improve on
    its best value by a relative 1e-3 at least once every ``patience`` steps;
    when it does not, the optimizer switches to CGE (``cge_mu``, ``cge_lr`` or lr)
    for the rest of the run. ``switch_step`` > 0 switches at that step at the
    latest (a time budget). The switch step is logged and kept in the state.
    """

    def __init__(self, settings):
        super().__init__(settings)
        self.coarse = ZOSignSGD(settings)
        self.fine = ZOCGE(settings, mu=settings.cge_mu, lr=settings.cge_lr or None)

    def init(self, theta):
        return {"stage": 0, "smoothed": float("nan"), "best": float("inf"), "since": 0, "switch_step": -1,
                **self.fine.init(theta)}

    def step(self, step, theta, state, objective, generator):
        if state["stage"] == 1:
            return self.fine.step(step, theta, state, objective, generator)
        theta, state, info = self.coarse.step(step, theta, state, objective, generator)
        smoothed = info.loss if state["smoothed"] != state["smoothed"] else 0.9 * state["smoothed"] + 0.1 * info.loss
        state["smoothed"] = smoothed
        if smoothed < state["best"] * (1 - 1e-3):
            state["best"], state["since"] = smoothed, 0
        else:
            state["since"] += 1
        budget = self.settings.switch_step and step + 1 >= self.settings.switch_step
        if state["since"] >= self.settings.patience or budget:
            state["stage"], state["switch_step"] = 1, step
            reason = (f"smoothed loss {smoothed:.3e} did not improve for {self.settings.patience} steps"
                      if not budget else f"switch_step {self.settings.switch_step} reached")
            info.events.append(f"hybrid: switched from signRGE to CGE at step {step} ({reason})")
        return theta, state, info
