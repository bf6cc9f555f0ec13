"""Problem x backend -> the PINN loss on a batch of points (paper eqs. 4-6).

    L = mean_i r(x_i)^2 + sum_c weight_c * mean_k (B_c[u](x_k) - g_c(x_k))^2

The builder reads the atoms off the equation, asks the backend for exactly
those, and evaluates the compiled residual on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pinnzo.atoms import VALUE
from pinnzo.derivatives.base import DerivativeBackend
from pinnzo.problem import Problem

Network = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """Training points of one step.

    interior: (B, D) points in the domain.
    conditions: per condition of the problem, (X (Bc, D), outward normals (Bc, d) or None).
    """

    interior: torch.Tensor
    conditions: tuple[tuple[torch.Tensor, torch.Tensor | None], ...]


def sample_batch(problem: Problem, interior: int, per_condition: int, generator: torch.Generator,
                 dtype=torch.float32, device="cpu") -> Batch:
    """Fresh uniform points for one step, from the seeded ``generator``."""
    X = problem.sample_interior(interior, generator, dtype, device)
    conditions = tuple(problem.sample_condition(c, per_condition, generator, dtype, device)
                       for c in problem.conditions)
    return Batch(X, conditions)


class PINNLoss:
    """loss(network, batch) for one problem and derivative backend."""

    def __init__(self, problem: Problem, backend: DerivativeBackend):
        self.problem, self.backend = problem, backend

    def terms(self, network: Network, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term of the loss: {"residual": scalar, <condition name>: scalar}."""
        problem, backend = self.problem, self.backend
        u = problem.solution(network)
        atoms = backend(u, batch.interior, problem.atoms, problem.spatial)
        terms = {"residual": problem.residual_from_atoms(batch.interior, atoms).square().mean()}
        for condition, (X, normals) in zip(problem.conditions, batch.conditions):
            values = backend(u, X, problem.condition_atoms(condition), problem.spatial)
            residual = problem.condition_residual(condition, X, normals, values)
            terms[condition.name] = condition.weight * residual.square().mean()
        return terms

    def __call__(self, network: Network, batch: Batch) -> torch.Tensor:
        """The scalar loss."""
        return sum(self.terms(network, batch).values())

    def residuals(self, network: Network, X: torch.Tensor) -> torch.Tensor:
        """Pointwise PDE residual (B,) at X."""
        u = self.problem.solution(network)
        atoms = self.backend(u, X, self.problem.atoms, self.problem.spatial)
        return self.problem.residual_from_atoms(X, atoms)

    def predict(self, network: Network, X: torch.Tensor) -> torch.Tensor:
        """The backend's solution u at X (B,): smoothed for the Stein backends."""
        u = self.problem.solution(network)
        return self.backend(u, X, {VALUE}, self.problem.spatial)[VALUE]
