"""Zeroth-order gradient estimators (paper eq. 2, DESIGN.md section 2).

Each returns (g (d,), loss at theta, queries used). Only loss values are used.
"""

from __future__ import annotations

import torch

from pinnzo.optim.objective import Objective


def directions(count: int, dim: int, kind: str, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``count`` random directions (count, d): standard Gaussian or Rademacher (+-1)."""
    if kind == "gaussian":
        xi = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        xi = torch.randint(0, 2, (count, dim), generator=generator).double() * 2 - 1
    else:
        raise ValueError(f"unknown perturbation {kind!r}; must be one of gaussian, rademacher")
    return xi.to(dtype=like.dtype, device=like.device)


def rge(objective: Objective, theta: torch.Tensor, generator: torch.Generator, count: int, mu: float,
        kind: str = "gaussian", difference: str = "forward") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random gradient estimate over ``count`` directions xi_i.

    forward:  g = 1/(N mu) sum_i [L(theta + mu xi_i) - L(theta)] xi_i       (N + 1 queries)
    central:  g = 1/(2 N mu) sum_i [L(theta + mu xi_i) - L(theta - mu xi_i)] xi_i   (2N queries;
              the reported loss is the mean of the 2N perturbed losses)
    """
    xi = directions(count, theta.numel(), kind, generator, theta)
    if difference == "forward":
        values = objective.losses(torch.cat([theta[None], theta + mu * xi]))
        loss, perturbed = values[0], values[1:]
        g = ((perturbed - loss) / (count * mu)) @ xi
        return g, loss, count + 1
    if difference == "central":
        values = objective.losses(torch.cat([theta + mu * xi, theta - mu * xi]))
        plus, minus = values[:count], values[count:]
        g = ((plus - minus) / (2 * count * mu)) @ xi
        return g, values.mean(), 2 * count
    raise ValueError(f"unknown difference {difference!r}; must be one of forward, central")


def cge(objective: Objective, theta: torch.Tensor, generator: torch.Generator, mu: float,
        difference: str = "forward", coordinates: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Coordinate-wise estimate over all d coordinates, or a random subset of ``coordinates``.

    forward:  g_j = [L(theta + mu e_j) - L(theta)] / mu         (|S| + 1 queries)
    central:  g_j = [L(theta + mu e_j) - L(theta - mu e_j)] / (2 mu)   (2|S| queries)
    Coordinates outside the subset S get g_j = 0. Forward differences on an MLP with a
    criterion-of-the-output loss take the layered path (Objective.coordinate_losses):
    the same values, without re-running the layers before each perturbed one.
    """
    d = theta.numel()
    if coordinates and coordinates < d:
        chosen = torch.randperm(d, generator=generator)[:coordinates].to(theta.device)
    else:
        chosen = torch.arange(d, device=theta.device)
    g = torch.zeros_like(theta)
    if difference == "forward" and objective.layered:  # the same values, without re-running unperturbed layers
        loss = objective.loss(theta)
        g[chosen] = (objective.coordinate_losses(theta, chosen, mu) - loss) / mu
        return g, loss, len(chosen) + 1
    steps = torch.zeros(len(chosen), d, dtype=theta.dtype, device=theta.device)
    steps[torch.arange(len(chosen)), chosen] = mu
    if difference == "forward":
        values = objective.losses(torch.cat([theta[None], theta + steps]))
        loss = values[0]
        g[chosen] = (values[1:] - loss) / mu
        return g, loss, len(chosen) + 1
    if difference == "central":
        values = objective.losses(torch.cat([theta + steps, theta - steps]))
        g[chosen] = (values[: len(chosen)] - values[len(chosen):]) / (2 * mu)
        return g, values.mean(), 2 * len(chosen)
    raise ValueError(f"unknown difference {difference!r}; must be one of forward, central")
