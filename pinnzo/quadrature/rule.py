"""The immutable cubature ``Rule`` every quadrature family returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Rule:
    """A symmetric cubature rule for the standard normal weight N(0, I_D).

    E[f(z)] ~= sum_j weights[j] * f(nodes[j]).  For N(0, sigma^2 I) use the
    nodes scaled by sigma (``scaled``).

    Attributes:
        nodes: (n, D) float64.
        weights: (n,) float64, summing to 1 (some may be negative).
        dim: D.
        level: the Smolyak level k (Gauss-Hermite: exact to total degree 2k-1).
        family: the registry name of the family that built it.
        degree: every monomial of total degree <= degree is integrated exactly.
        mirror: (n,) int64, ``nodes[mirror[j]] == -nodes[j]`` (the Stein
            backends pair f(x + delta) with f(x - delta) through it).
        center: index of the origin node, or None when the rule has none.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int
    level: int
    family: str
    degree: int
    mirror: np.ndarray
    center: int | None

    def __post_init__(self):
        for array in (self.nodes, self.weights, self.mirror):
            array.setflags(write=False)

    @property
    def size(self) -> int:
        """Number of nodes n."""
        return len(self.weights)

    @property
    def abs_weight_sum(self) -> float:
        """sum |w_j|: how much the rule amplifies rounding error in f."""
        return float(np.abs(self.weights).sum())

    def scaled(self, sigma: float) -> np.ndarray:
        """Nodes of the same rule for N(0, sigma^2 I): (n, D) float64."""
        return self.nodes * sigma

    def __repr__(self) -> str:
        return (f"Rule(family={self.family!r}, dim={self.dim}, level={self.level}, "
                f"nodes={self.size}, degree={self.degree})")


def find_mirror(nodes: np.ndarray) -> np.ndarray:
    """For each row of ``nodes`` (n, D), the index of the row equal to its negation.

    Raises ValueError when the node set is not symmetric.
    """
    keys = {row.tobytes(): j for j, row in enumerate(nodes)}
    negated = (-nodes) + 0.0  # + 0.0 turns -0.0 into 0.0 so the bytes match
    try:
        return np.array([keys[row.tobytes()] for row in negated], dtype=np.int64)
    except KeyError:
        raise ValueError("the rule's node set is not symmetric") from None


def find_center(nodes: np.ndarray) -> int | None:
    """Index of the origin among ``nodes`` (n, D), or None."""
    at_origin = np.flatnonzero(~nodes.any(axis=1))
    return int(at_origin[0]) if len(at_origin) else None
