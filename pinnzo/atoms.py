"""Derivative atoms: the quantities of u a residual needs (the problem <-> backend protocol).

A problem reads its atoms off the equation's sympy expression and asks a
derivative backend for exactly those; the backend returns one tensor (B,)
per atom. Indices are input columns (spatial coordinates first, then time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import sympy


@dataclass(frozen=True, order=True)
class Atom:
    """One derivative quantity of u at a batch of points.

    kind: "value" (u), "d1" (du/dz_i), "d2" (d2u/dz_i dz_j, i <= j), "d3" and "d4" (third and fourth
          derivatives, indices sorted), "lap" (sum of d2u/dx_k2 over the spatial coordinates),
          "gradsq" (sum of (du/dx_k)^2 over the spatial coordinates).
    index: () for value/lap/gradsq, (i,) for d1, (i, j) for d2, (i, j, k) for d3, (i, j, k, l) for d4.
    """

    kind: str
    index: tuple[int, ...] = ()

    def __post_init__(self):
        arity = {"value": 0, "d1": 1, "d2": 2, "d3": 3, "d4": 4, "lap": 0, "gradsq": 0}
        if arity.get(self.kind) != len(self.index):
            raise ValueError(f"bad atom {self.kind}{self.index}")
        if list(self.index) != sorted(self.index):
            raise ValueError(f"{self.kind} atoms are stored with sorted indices")

    @property
    def order(self) -> int:
        """The order of a partial derivative (0 for the value; 2 for lap; 1 for gradsq's parts)."""
        return {"value": 0, "lap": 2, "gradsq": 1}.get(self.kind, len(self.index))


VALUE = Atom("value")
LAPLACIAN = Atom("lap")
GRADIENT_SQUARED = Atom("gradsq")


def d1(i: int) -> Atom:
    return Atom("d1", (i,))


def d2(i: int, j: int) -> Atom:
    return Atom("d2", (min(i, j), max(i, j)))


MAX_ORDER = 4  # the highest partial derivative d(u, ...) takes


def partial(*indices: int) -> Atom:
    """The partial derivative of u by the input columns ``indices`` (1 to MAX_ORDER of them, any order)."""
    if not 1 <= len(indices) <= MAX_ORDER:
        raise ValueError(f"partial derivatives have order 1 to {MAX_ORDER}; found {len(indices)}")
    return Atom(f"d{len(indices)}", tuple(sorted(indices)))


def atom_symbol(atom: Atom, columns: list[str]) -> sympy.Symbol:
    """The sympy symbol standing for ``atom`` in an equation over ``columns``."""
    if atom.kind == "value":
        return sympy.Symbol("u")
    if atom.kind in ("lap", "gradsq"):
        return sympy.Symbol(f"{atom.kind}(u)")
    return sympy.Symbol("u_" + "_".join(columns[i] for i in atom.index))


def elementary(atoms, spatial, direct: tuple[str, ...] = ()) -> frozenset[Atom]:
    """The elementary atoms (value, d1, d2) that ``atoms`` are made of:
    lap = sum_k d2(k, k) and gradsq = sum_k d1(k)^2 over the spatial columns.
    Kinds in ``direct`` are kept whole (a backend that computes them in one go)."""
    parts = set()
    for atom in atoms:
        if atom.kind in direct:
            parts.add(atom)
        elif atom.kind == "lap":
            parts |= {d2(i, i) for i in spatial}
        elif atom.kind == "gradsq":
            parts |= {d1(i) for i in spatial}
        else:
            parts.add(atom)
    return frozenset(parts)


def assemble(atoms, parts: Mapping[Atom, "torch.Tensor"], spatial) -> dict:
    """The requested ``atoms`` from their elementary ``parts`` ({atom: (..., B)})."""
    out = {}
    for atom in atoms:
        if atom in parts:
            out[atom] = parts[atom]
        elif atom.kind == "lap":
            out[atom] = sum(parts[d2(i, i)] for i in spatial)
        elif atom.kind == "gradsq":
            out[atom] = sum(parts[d1(i)] ** 2 for i in spatial)
        else:
            raise KeyError(f"atom {atom} was not computed")
    return out
