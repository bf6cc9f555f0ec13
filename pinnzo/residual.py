"""Problem x backend -> the PINN loss on a batch of points (paper eqs. 4-6).

    L = mean_i r(x_i)^2 + sum_c weight_c * mean_k (B_c[u](x_k) - g_c(x_k))^2

The builder reads the atoms off the equation, asks the backend for exactly
those, and evaluates the compiled residual on them. The same terms form the
residual vector of the least-squares view (Gauss-Newton),

    rho = [r(x_i) / sqrt(B), sqrt(weight_c / B_c) (B_c[u](x_k) - g_c(x_k))],   |rho|^2 = L.

With a stencil backend (fd, stein, sparse-grid) the loss is a fixed function of
the network's values at fixed points: ``inputs(batch)`` lists those points and
``criterion(outputs, batch)`` finishes the loss from the values, so the layered
coordinate queries can supply them (optim/coordinates.py).

An inverse problem's unknowns enter the equation and the conditions: the network
callable carries their raw coordinates (``network.unknowns`` (k,), see
optim/objective.py), which the loss maps to values (unknowns.py); a callable
without them (a plain function) stands for the unknowns at their initial values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pinnzo.atoms import VALUE
from pinnzo.derivatives.base import DerivativeBackend, StencilBackend
from pinnzo.problem import Problem
from pinnzo.unknowns import unknown_values

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
        self.condition_atoms = [problem.condition_atoms(c) for c in problem.conditions]
        self._inputs_of, self._inputs = None, None  # the stencil points of the last batch
        self._affine_of, self._affine = None, None  # the ansatz's (a, b) at them, when affine in N

    def _residuals(self, atoms_at, batch: Batch, raw: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor, float]]:
        """(name, residual (..., B_k), weight) of every term; ``atoms_at(k, X, atoms)`` gives the
        atoms at the points of term k (0: interior, c + 1: condition c); ``raw``: the unknowns' raw
        coordinates (k,) (None: their initial values)."""
        problem = self.problem
        unknowns = unknown_values(problem.unknowns, raw) if raw is not None else None
        terms = [("residual", problem.residual_from_atoms(batch.interior, atoms_at(0, batch.interior, problem.atoms),
                                                          unknowns), 1.0)]
        for k, (condition, (X, normals)) in enumerate(zip(problem.conditions, batch.conditions), 1):
            values = atoms_at(k, X, self.condition_atoms[k - 1])
            terms.append((condition.name, problem.condition_residual(condition, X, normals, values, unknowns),
                          condition.weight))
        return terms

    def _backend_atoms(self, network: Network):
        u = self.problem.solution(network)
        return lambda k, X, atoms: self.backend(u, X, atoms, self.problem.spatial)

    def residuals(self, network: Network, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term's residuals: {"residual": (B,), <condition name>: (B_c,)} (unweighted)."""
        return {name: residual for name, residual, _ in self._residuals(self._backend_atoms(network), batch,
                                                                         _raw(network))}

    def terms(self, network: Network, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term of the loss: {"residual": scalar, <condition name>: scalar}."""
        return {name: _term(residual, weight) for name, residual, weight
                in self._residuals(self._backend_atoms(network), batch, _raw(network))}

    def __call__(self, network: Network, batch: Batch) -> torch.Tensor:
        """The scalar loss."""
        return sum(self.terms(network, batch).values())

    def residual_vector(self, network: Network, batch: Batch) -> torch.Tensor:
        """rho (n,), n = B + sum_c B_c, with |rho|^2 = the loss."""
        return _stack(self._residuals(self._backend_atoms(network), batch, _raw(network)))

    def residual_count(self, batch: Batch) -> int:
        """n: one residual per interior point and per condition point."""
        return len(batch.interior) + sum(len(X) for X, _ in batch.conditions)

    def predict(self, network: Network, X: torch.Tensor) -> torch.Tensor:
        """The backend's solution u at X (B,): smoothed for the Stein backends."""
        u = self.problem.solution(network)
        return self.backend(u, X, {VALUE}, self.problem.spatial)[VALUE]

    # ---- the layered form: the loss from the network's values at fixed points

    @property
    def layered(self) -> bool:
        """Whether the loss is criterion(network(inputs(batch)), batch) (a stencil backend)."""
        return isinstance(self.backend, StencilBackend)

    def _segments(self, batch: Batch) -> list[tuple[torch.Tensor, frozenset]]:
        X = [batch.interior] + [points for points, _ in batch.conditions]
        return list(zip(X, [frozenset(self.problem.atoms)] + self.condition_atoms))

    def inputs(self, batch: Batch) -> torch.Tensor:
        """Every point the backend evaluates the network at: (R, D), the interior's stencil,
        then each condition's (computed once per batch)."""
        if self._inputs_of is not batch:
            spatial = self.problem.spatial
            self._inputs = torch.cat([self.backend.points(X, atoms, spatial) for X, atoms in self._segments(batch)])
            self._inputs_of = batch
        return self._inputs

    def _atoms_from_outputs(self, outputs: torch.Tensor, batch: Batch):
        """atoms_at for network values (..., R) at ``inputs(batch)``."""
        problem, segments = self.problem, self._segments(batch)
        points = self.inputs(batch)
        if self._affine_of is not batch:
            self._affine, self._affine_of = problem.ansatz_coefficients(points), batch
        u = problem.apply_ansatz(points, outputs) if self._affine is None else self._affine[0] + self._affine[1] * outputs
        blocks, start = [], 0
        for X, atoms in segments:
            stencil = len(self.backend.offsets(atoms, tuple(problem.spatial), X.shape[1], X.dtype, X.device))
            rows = len(X) * stencil
            blocks.append(u[..., start:start + rows].reshape(*u.shape[:-1], len(X), stencil))
            start += rows
        return lambda k, X, atoms: self.backend.combine(blocks[k], atoms, problem.spatial)

    def criterion(self, outputs: torch.Tensor, batch: Batch, unknowns: torch.Tensor | None = None) -> torch.Tensor:
        """The loss (...,) from network values (..., R) at ``inputs(batch)`` (and the unknowns' raw
        coordinates (k,))."""
        return sum(_term(residual, weight) for _, residual, weight
                   in self._residuals(self._atoms_from_outputs(outputs, batch), batch, unknowns))

    def residual_criterion(self, outputs: torch.Tensor, batch: Batch, unknowns: torch.Tensor | None = None) -> torch.Tensor:
        """The residual vector (..., n) from network values (..., R) at ``inputs(batch)``."""
        return _stack(self._residuals(self._atoms_from_outputs(outputs, batch), batch, unknowns))


def _raw(network: Network) -> torch.Tensor | None:
    """The raw unknowns (k,) a network callable carries (objective.Network), or None."""
    return getattr(network, "unknowns", None)


def _term(residual: torch.Tensor, weight: float) -> torch.Tensor:
    """weight * mean r^2 over the last axis."""
    return weight * residual.square().mean(-1)


def _stack(terms: list[tuple[str, torch.Tensor, float]]) -> torch.Tensor:
    return torch.cat([residual * (weight / residual.shape[-1]) ** 0.5 for _, residual, weight in terms], dim=-1)
