"""Gradient estimators: pure functions (objective, theta, batch, generator) -> Estimate.

The zeroth-order ones (paper eq. 2; docs/method.md, "Zeroth-order estimators")
only query loss values; ``backprop`` is the first-order reference. Each reports
the loss at theta and the loss queries it used (the objective counts them too).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pinnzo.optim.objective import Objective


class Estimate(NamedTuple):
    gradient: torch.Tensor  # (d,)
    loss: torch.Tensor  # scalar: the loss at theta (or the mean of the queried losses, central RGE)
    queries: int


def directions(count: int, dim: int, kind: str, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``count`` random directions (count, d): standard Gaussian or Rademacher (+-1)."""
    if kind == "gaussian":
        xi = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        xi = torch.randint(0, 2, (count, dim), generator=generator).double() * 2 - 1
    else:
        raise ValueError(f"unknown perturbation {kind!r}; must be one of gaussian, rademacher")
    return xi.to(dtype=like.dtype, device=like.device)


def rge(objective: Objective, theta: torch.Tensor, batch, generator: torch.Generator, count: int, mu: float,
        kind: str = "gaussian", difference: str = "forward") -> Estimate:
    """Random gradient estimate over ``count`` directions xi_i.

    forward:  g = 1/(N mu) sum_i [L(theta + mu xi_i) - L(theta)] xi_i       (N + 1 queries)
    central:  g = 1/(2 N mu) sum_i [L(theta + mu xi_i) - L(theta - mu xi_i)] xi_i   (2N queries;
              the reported loss is the mean of the 2N perturbed losses)
    """
    xi = directions(count, theta.numel(), kind, generator, theta)
    if difference == "forward":
        values = objective.losses(torch.cat([theta[None], theta + mu * xi]), batch)
        loss, perturbed = values[0], values[1:]
        return Estimate(((perturbed - loss) / (count * mu)) @ xi, loss, count + 1)
    if difference == "central":
        values = objective.losses(torch.cat([theta + mu * xi, theta - mu * xi]), batch)
        plus, minus = values[:count], values[count:]
        return Estimate(((plus - minus) / (2 * count * mu)) @ xi, values.mean(), 2 * count)
    raise ValueError(f"unknown difference {difference!r}; must be one of forward, central")


def cge(objective: Objective, theta: torch.Tensor, batch, generator: torch.Generator, mu: float,
        difference: str = "forward", coordinates: int = 0) -> Estimate:
    """Coordinate-wise estimate over all d coordinates, or a random subset S of ``coordinates``.

    forward:  g_j = [L(theta + mu e_j) - L(theta)] / mu         (|S| + 1 queries)
    central:  g_j = [L(theta + mu e_j) - L(theta - mu e_j)] / (2 mu)   (2|S| queries)
    Coordinates outside S get g_j = 0. Forward differences take the layered path when
    the objective has one (Objective.coordinate_losses): the same values, without
    re-running the layers before each perturbed one.
    """
    d = theta.numel()
    if coordinates and coordinates < d:
        chosen = torch.randperm(d, generator=generator)[:coordinates].to(theta.device)
    else:
        chosen = torch.arange(d, device=theta.device)
    g = torch.zeros_like(theta)
    if difference == "forward" and objective.layered:
        loss = objective.loss(theta, batch)
        g[chosen] = (objective.coordinate_losses(theta, batch, chosen, mu) - loss) / mu
        return Estimate(g, loss, len(chosen) + 1)
    steps = torch.zeros(len(chosen), d, dtype=theta.dtype, device=theta.device)
    steps[torch.arange(len(chosen)), chosen] = mu
    if difference == "forward":
        values = objective.losses(torch.cat([theta[None], theta + steps]), batch)
        g[chosen] = (values[1:] - values[0]) / mu
        return Estimate(g, values[0], len(chosen) + 1)
    if difference == "central":
        values = objective.losses(torch.cat([theta + steps, theta - steps]), batch)
        g[chosen] = (values[: len(chosen)] - values[len(chosen):]) / (2 * mu)
        return Estimate(g, values.mean(), 2 * len(chosen))
    raise ValueError(f"unknown difference {difference!r}; must be one of forward, central")


def backprop(objective: Objective, theta: torch.Tensor, batch, generator: torch.Generator) -> Estimate:
    """The exact gradient by back-propagation (first-order training): one query."""
    loss, gradient = objective.value_and_grad(theta, batch)
    return Estimate(gradient, loss, 1)
