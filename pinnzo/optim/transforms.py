"""Update transformations in optax's manner: (init, update) pairs over typed, immutable state.

    transform = chain(scale_by_adam(), scale_by_schedule(exponential_decay(1e-3)))
    state = transform.init(theta)
    updates, state = transform.update(gradient, state, step)
    theta = theta + updates

A transformation maps a gradient (estimate) to an update; ``chain`` composes
them left to right. States are NamedTuples of tensors and numbers, so they go
into a checkpoint as they are (torch.load(..., weights_only=True) reads them).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

Schedule = Callable[[int], float]


class Transformation(NamedTuple):
    """init(theta) -> state; update(g, state, step) -> (updates, state)."""

    init: Callable[[torch.Tensor], Any]
    update: Callable[[torch.Tensor, Any, int], tuple[torch.Tensor, Any]]


class EmptyState(NamedTuple):
    pass


class AdamState(NamedTuple):
    m: torch.Tensor  # first moment
    v: torch.Tensor  # second moment
    t: int  # updates so far


class TraceState(NamedTuple):
    b: torch.Tensor  # the momentum buffer


STATE_TYPES = (EmptyState, AdamState, TraceState)


def exponential_decay(lr: float, decay: float = 1.0, every: int = 1000) -> Schedule:
    """step -> lr * decay ** floor(step / every) (the paper's step decay)."""
    every = max(1, every)
    return lambda step: lr * decay ** (step // every)


def scale_by_sign() -> Transformation:
    """g -> sign(g) (signSGD; paper section 3.2)."""
    return Transformation(lambda theta: EmptyState(), lambda g, state, step: (torch.sign(g), state))


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transformation:
    """g -> m_hat / (sqrt(v_hat) + eps) with bias-corrected moments (Adam)."""

    def init(theta):
        return AdamState(torch.zeros_like(theta), torch.zeros_like(theta), 0)

    def update(g, state, step):
        t = state.t + 1
        m = state.m.mul(b1).add_(g, alpha=1 - b1)
        v = state.v.mul(b2).addcmul_(g, g, value=1 - b2)
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        return m_hat / (v_hat.sqrt() + eps), AdamState(m, v, t)

    return Transformation(init, update)


def trace(decay: float) -> Transformation:
    """g -> b = decay * b + g (heavy-ball momentum)."""

    def update(g, state, step):
        b = decay * state.b + g
        return b, TraceState(b)

    return Transformation(lambda theta: TraceState(torch.zeros_like(theta)), update)


def scale_by_schedule(schedule: Schedule) -> Transformation:
    """u -> -schedule(step) * u (a descent step with the learning rate of the step)."""
    return Transformation(lambda theta: EmptyState(), lambda u, state, step: (-schedule(step) * u, state))


def chain(*transforms: Transformation) -> Transformation:
    """The transformations applied one after the other; the state is the tuple of theirs."""

    def init(theta):
        return tuple(t.init(theta) for t in transforms)

    def update(g, states, step):
        new_states = []
        for transform, state in zip(transforms, states):
            g, state = transform.update(g, state, step)
            new_states.append(state)
        return g, tuple(new_states)

    return Transformation(init, update)
