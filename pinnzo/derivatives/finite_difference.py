"""Finite-difference backend: central differences, one batched forward over the stencil."""

from __future__ import annotations

import torch

from pinnzo.atoms import Atom
from pinnzo.derivatives.base import DerivativeBackend, evaluate_in_chunks

# Near-optimal steps for unit-scale smooth f: h1 ~ eps^(1/3), h2 ~ eps^(1/4).
AUTO_STEPS = {torch.float64: (1e-5, 1e-4), torch.float32: (5e-3, 2e-2)}


class FiniteDifference(DerivativeBackend):
    """Central differences (truncation error O(h^2)):

        du/dz_i      = [f(z + h1 e_i) - f(z - h1 e_i)] / (2 h1)
        d2u/dz_i2    = [f(z + h2 e_i) + f(z - h2 e_i) - 2 f(z)] / h2^2
        d2u/dz_i dz_j = [f(++) - f(+-) - f(-+) + f(--)] / (4 h2^2)   (four-point stencil)

    ``step`` (h1) and ``step2`` (h2): 0 picks the dtype's default (AUTO_STEPS);
    the paper uses 0.01 for both. Every stencil point of every row of X is
    gathered into one batch and f is called once (chunked by memory).
    """

    name = "fd"

    def __init__(self, step: float = 0.0, step2: float = 0.0, rows_per_chunk: int = 1 << 20):
        self.step, self.step2, self.rows_per_chunk = step, step2, rows_per_chunk
        self._stencils = {}  # (atoms, spatial, dim, dtype, device) -> (offsets, plan, coefficients)

    def steps(self, dtype) -> tuple[float, float]:
        h1, h2 = AUTO_STEPS.get(dtype, AUTO_STEPS[torch.float32])
        return self.step or h1, self.step2 or self.step or h2

    def _stencil(self, atoms, spatial, dim, dtype):
        """Offsets (S, D) with index maps for each atom's formula."""
        h1, h2 = self.steps(dtype)
        offsets: dict[tuple, int] = {(): 0}  # sparse offset {(axis, step)...} -> row

        def at(*moves):
            key = tuple(sorted(moves))
            return offsets.setdefault(key, len(offsets))

        plan = {}
        for atom in atoms:
            for elementary in _elementary(atom, spatial):
                if elementary in plan:
                    continue
                if elementary.kind == "d1":
                    (i,) = elementary.index
                    plan[elementary] = ([at((i, h1)), at((i, -h1))], [1.0, -1.0], 2 * h1)
                elif elementary.kind == "d2" and elementary.index[0] == elementary.index[1]:
                    i = elementary.index[0]
                    plan[elementary] = ([at((i, h2)), at((i, -h2)), 0], [1.0, 1.0, -2.0], h2 * h2)
                elif elementary.kind == "d2":
                    i, j = elementary.index
                    rows = [at((i, h2), (j, h2)), at((i, h2), (j, -h2)), at((i, -h2), (j, h2)), at((i, -h2), (j, -h2))]
                    plan[elementary] = (rows, [1.0, -1.0, -1.0, 1.0], 4 * h2 * h2)
        table = torch.zeros(len(offsets), dim, dtype=torch.float64)
        for key, row in offsets.items():
            for axis, step in key:
                table[row, axis] += step
        return table, plan

    def _prepared(self, atoms: frozenset, spatial, dim, dtype, device):
        """The stencil as tensors, built once per atom set (the loss is evaluated many times)."""
        key = (atoms, tuple(spatial), dim, dtype, device)
        if key not in self._stencils:
            table, plan = self._stencil(atoms, spatial, dim, dtype)
            weights = {atom: (rows, torch.tensor(coefficients, dtype=dtype, device=device) / scale)
                       for atom, (rows, coefficients, scale) in plan.items()}
            self._stencils[key] = (table.to(dtype=dtype, device=device), weights)
        return self._stencils[key]

    def __call__(self, f, X, atoms, spatial):
        atoms = frozenset(atoms)
        B, D = X.shape
        table, weights = self._prepared(atoms, spatial, D, X.dtype, X.device)
        points = (X[:, None, :] + table[None]).reshape(-1, D)
        F = evaluate_in_chunks(f, points, self.rows_per_chunk).reshape(B, len(table))
        derived = {atom: F[:, rows] @ coefficients for atom, (rows, coefficients) in weights.items()}
        return _assemble(atoms, F[:, 0], derived, spatial)

    def evaluations_per_point(self, atoms, spatial, dim):
        return len(self._stencil(set(atoms), spatial, dim, torch.float32)[0])


def _elementary(atom: Atom, spatial):
    if atom.kind == "lap":
        return [Atom("d2", (i, i)) for i in spatial]
    if atom.kind == "gradsq":
        return [Atom("d1", (i,)) for i in spatial]
    if atom.kind == "value":
        return []
    return [atom]


def _assemble(atoms, value, derived, spatial):
    """Combine elementary atoms into the requested ones (lap, gradsq)."""
    out = {}
    for atom in atoms:
        if atom.kind == "value":
            out[atom] = value
        elif atom.kind == "lap":
            out[atom] = sum(derived[Atom("d2", (i, i))] for i in spatial)
        elif atom.kind == "gradsq":
            out[atom] = sum(derived[Atom("d1", (i,))] ** 2 for i in spatial)
        else:
            out[atom] = derived[atom]
    return out
