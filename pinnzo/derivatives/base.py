"""The derivative-backend protocol.

A backend answers one question: given a batched callable f ((B, D) -> (B,)),
points X (B, D) and a set of atoms, return one tensor (B,) per atom. It is
pure tensor code, so it works on both training paths: differentiable by
autograd with respect to the parameters inside f (first-order training), and
under torch.no_grad or torch.func.vmap over parameter sets (zeroth-order).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable, Mapping

import torch

from pinnzo.atoms import Atom

Function = Callable[[torch.Tensor], torch.Tensor]


class DerivativeBackend(ABC):
    """Computes derivative atoms of f at a batch of points.

    Attributes:
        name: the registry name.
        smoothed: True when the value atom is the Gaussian-smoothed model
            u(x) = E f(x + delta) (the Stein backends) rather than f itself.
    """

    name: str = ""
    smoothed: bool = False

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


def evaluate_in_chunks(f: Function, points: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
    """f over (R, D) points in chunks of at most ``rows_per_chunk`` rows: (R,)."""
    if len(points) <= rows_per_chunk:
        return f(points)
    return torch.cat([f(chunk) for chunk in torch.split(points, rows_per_chunk)])
