"""The derivative-backend protocol.

A backend answers one question: given a batched callable f ((B, D) -> (B,)),
points X (B, D) and a set of atoms, return one tensor (B,) per atom. It is
pure tensor code, so it works on both training paths: differentiable by
autograd with respect to the parameters inside f (first-order training), and
under torch.no_grad or torch.func.vmap over parameter sets (zeroth-order).

Most backends (fd, stein, sparse-grid) are *stencil* backends: they evaluate f
at fixed shifted copies X + offsets and combine the values linearly. Their two
halves are exposed separately (``points`` and ``combine``), so that the values
of f can come from elsewhere: the layered coordinate queries (optim/coordinates.py)
re-use one unperturbed forward for many parameter perturbations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Mapping

import torch

from pinnzo.atoms import Atom, assemble

Function = Callable[[torch.Tensor], torch.Tensor]


class DerivativeBackend(ABC):
    """Computes derivative atoms of f at a batch of points.

    Attributes:
        name: the registry name.
        smoothed: True when the value atom is the Gaussian-smoothed model
            u(x) = E f(x + delta) (the Stein backends) rather than f itself.
        rows_per_chunk: the most rows of points f is called on at once (memory).
    """

    name: str = ""
    smoothed: bool = False
    rows_per_chunk: int = 1 << 20

    @abstractmethod
    def __call__(self, f: Function, X: torch.Tensor, atoms: Iterable[Atom],
                 spatial: tuple[int, ...]) -> Mapping[Atom, torch.Tensor]:
        """Atoms of f at X (B, D): {atom: (B,)}. ``spatial``: the spatial columns."""

    def refresh(self, generator: torch.Generator) -> None:
        """Draw new random perturbations (called once per training step)."""

    def evaluations_per_point(self, atoms: Iterable[Atom], spatial: tuple[int, ...], dim: int) -> int:
        """Network evaluations per point (forward passes of f per row of X)."""
        return 1

    def describe(self) -> str:
        return self.name

    def rounding_gain(self, dtype: torch.dtype, atoms: Iterable[Atom] = frozenset()) -> float:
        """About how much the derivatives amplify the rounding error of f (relative): 1 for exact
        derivatives; a difference quotient divides it by its steps (``atoms``: the loss's, whose
        third and fourth derivatives amplify more). zo-gn sizes its own difference step from it."""
        return 1.0


class StencilBackend(DerivativeBackend):
    """A backend whose atoms are linear combinations of f at X + offsets (S offsets per point)."""

    @abstractmethod
    def offsets(self, atoms: frozenset, spatial: tuple[int, ...], dim: int, dtype, device) -> torch.Tensor:
        """The stencil (S, D): f is evaluated at X[b] + offsets[s]."""

    @abstractmethod
    def parts(self, F: torch.Tensor, atoms: frozenset, spatial: tuple[int, ...]) -> dict:
        """The elementary atoms (atoms.elementary) from the stencil values F (..., B, S):
        {atom: (..., B)}, each a linear combination of the values of its row."""

    def combine(self, F: torch.Tensor, atoms: frozenset, spatial: tuple[int, ...]) -> dict:
        """Atoms from the stencil values F (..., B, S): {atom: (..., B)}."""
        return assemble(atoms, self.parts(F, atoms, spatial), spatial)

    def linear_map(self, atoms: frozenset, spatial: tuple[int, ...], dim: int, dtype, device) -> tuple[list, torch.Tensor]:
        """The elementary atoms as one matrix: (their keys, W (S, a)) with parts(F)[key_i] = F @ W[:, i]
        (read off the parts of the unit values)."""
        stencil = len(self.offsets(atoms, tuple(spatial), dim, dtype, device))
        parts = self.parts(torch.eye(stencil, dtype=dtype, device=device), atoms, spatial)
        keys = sorted(parts)
        return keys, torch.stack([parts[key] for key in keys], 1)

    def points(self, X: torch.Tensor, atoms: frozenset, spatial: tuple[int, ...]) -> torch.Tensor:
        """Every stencil point of every row of X: (B * S, D), row b * S + s = X[b] + offsets[s]."""
        offsets = self.offsets(atoms, tuple(spatial), X.shape[1], X.dtype, X.device)
        return (X[:, None, :] + offsets[None]).reshape(-1, X.shape[1])

    def values(self, f: Function, X: torch.Tensor, atoms: frozenset, spatial: tuple[int, ...]) -> torch.Tensor:
        """f at every stencil point of every row of X: (B, S)."""
        F = evaluate_in_chunks(f, self.points(X, atoms, spatial), self.rows_per_chunk)
        stencil = len(self.offsets(atoms, tuple(spatial), X.shape[1], X.dtype, X.device))
        return F.reshape(X.shape[0], stencil)  # (named: B may be 0, a rank's share of a small condition)

    def __call__(self, f, X, atoms, spatial):
        atoms, spatial = frozenset(atoms), tuple(spatial)
        return self.combine(self.values(f, X, atoms, spatial), atoms, spatial)

    def evaluations_per_point(self, atoms, spatial, dim):
        return len(self.offsets(frozenset(atoms), tuple(spatial), dim, torch.float64, "cpu"))


def evaluate_in_chunks(f: Function, points: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
    """f over (R, D) points in chunks of at most ``rows_per_chunk`` rows: (R,)."""
    if len(points) <= rows_per_chunk:
        return f(points)
    return torch.cat([f(chunk) for chunk in torch.split(points, rows_per_chunk)])
