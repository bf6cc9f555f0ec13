"""Finite-difference backend: central differences, one batched forward over the stencil."""

from __future__ import annotations

import torch

from pinnzo.atoms import Atom, elementary
from pinnzo.derivatives.base import StencilBackend

# Near-optimal steps for unit-scale smooth f: h1 ~ eps^(1/3), h2 ~ eps^(1/4).
AUTO_STEPS = {torch.float64: (1e-5, 1e-4), torch.float32: (5e-3, 2e-2)}
# Third and fourth derivatives: h ~ (eps sum|c| / |f^(m+2)|)^(1 / (m + 2)) with |f^(m+2)| ~ 10, about
# eps^(1/5) and eps^(1/6); the rounding left is ~1e-6 (third) and ~1e-5 (fourth) of |f| in float64,
# ~1e-3 and ~1e-2 in float32 (docs/problems.md: float64 for such equations).
HIGH_STEPS = {torch.float64: (1.5e-3, 4e-3), torch.float32: (5e-2, 1e-1)}
# Central differences of order m = 1 ... 4 along one axis (truncation O(h^2)): {offset / h: weight},
# divided by h^m; a mixed derivative is the product of its axes' stencils.
CENTRAL = {1: {-1: -0.5, 1: 0.5}, 2: {-1: 1.0, 0: -2.0, 1: 1.0}, 3: {-2: -0.5, -1: 1.0, 1: -1.0, 2: 0.5},
           4: {-2: 1.0, -1: -4.0, 0: 6.0, 1: -4.0, 2: 1.0}}


class FiniteDifference(StencilBackend):
    """Central differences (truncation error O(h^2)):

        du/dz_i      = [f(z + h1 e_i) - f(z - h1 e_i)] / (2 h1)
        d2u/dz_i2    = [f(z + h2 e_i) + f(z - h2 e_i) - 2 f(z)] / h2^2
        d2u/dz_i dz_j = [f(++) - f(+-) - f(-+) + f(--)] / (4 h2^2)   (four-point stencil)
        d3 and d4 atoms: the product over their axes of the axes' central stencils (CENTRAL) at the
        step of their order (HIGH_STEPS), e.g. d4u/dx4 = [f(2h) - 4 f(h) + 6 f - 4 f(-h) + f(-2h)] / h^4

    ``step`` (h1) and ``step2`` (h2): 0 picks the dtype's default (AUTO_STEPS);
    the paper uses 0.01 for both. A first derivative along an axis that also
    carries a second one takes h2, so that both share the points z +- h2 e_i
    (the stencil of lap + gradsq in d dimensions has 2d + 1 points, not 4d + 1;
    h2 is within a factor eps^(-1/12) of h1's optimum, which costs a first
    derivative about eps^(1/2) instead of eps^(2/3) relative error). Every
    stencil point of every row of X is gathered into one batch and f is called
    once (chunked by memory).
    """

    name = "fd"

    def __init__(self, step: float = 0.0, step2: float = 0.0, rows_per_chunk: int = 1 << 20):
        self.step, self.step2, self.rows_per_chunk = step, step2, rows_per_chunk
        self._stencils = {}  # (atoms, spatial, dtype, device) -> (moves, {atom: (rows, coefficients)}, {dim: offsets})

    def steps(self, dtype) -> tuple[float, float]:
        h1, h2 = AUTO_STEPS.get(dtype, AUTO_STEPS[torch.float32])
        return self.step or h1, self.step2 or self.step or h2

    def high_step(self, dtype, order: int) -> float:
        """The step of the third (order 3) and fourth (order 4) derivatives."""
        return self.step or HIGH_STEPS.get(dtype, HIGH_STEPS[torch.float32])[order - 3]

    def _plan(self, atoms, spatial, dtype, device):
        """The stencil's offsets as sparse moves {(axis, step), ...} (row 0 is X itself) and, per
        elementary atom, its rows and coefficients; built once per atom set."""
        key = (atoms, spatial, dtype, device)
        if key in self._stencils:
            return self._stencils[key]
        h1, h2 = self.steps(dtype)
        offsets: dict[tuple, int] = {(): 0}

        def at(*moves):
            return offsets.setdefault(tuple(sorted(moves)), len(offsets))

        plan = {}
        needed = sorted(elementary(atoms, spatial) - {Atom("value")})
        curved = {atom.index[0] for atom in needed if atom.kind == "d2" and atom.index[0] == atom.index[1]}
        for atom in needed:
            if atom.kind == "d1":
                (i,) = atom.index
                h = h2 if i in curved else h1
                plan[atom] = ([at((i, h)), at((i, -h))], [1.0, -1.0], 2 * h)
            elif atom.kind == "d2" and atom.index[0] == atom.index[1]:
                i = atom.index[0]
                plan[atom] = ([at((i, h2)), at((i, -h2)), 0], [1.0, 1.0, -2.0], h2 * h2)
            elif atom.kind == "d2":
                i, j = atom.index
                rows = [at((i, h2), (j, h2)), at((i, h2), (j, -h2)), at((i, -h2), (j, h2)), at((i, -h2), (j, -h2))]
                plan[atom] = (rows, [1.0, -1.0, -1.0, 1.0], 4 * h2 * h2)
            else:
                h = self.high_step(dtype, atom.order)
                moves = _product_stencil(atom.index)
                plan[atom] = ([at(*((axis, k * h) for axis, k in move if k)) for move in moves],
                              list(moves.values()), h ** atom.order)
        weights = {atom: (rows, torch.tensor(coefficients, dtype=dtype, device=device) / scale)
                   for atom, (rows, coefficients, scale) in plan.items()}
        self._stencils[key] = (list(offsets), weights, {})
        return self._stencils[key]

    def offsets(self, atoms, spatial, dim, dtype, device):
        moves, _, tables = self._plan(atoms, spatial, dtype, device)
        if dim not in tables:
            table = torch.zeros(len(moves), dim, dtype=torch.float64)
            for row, key in enumerate(moves):
                for axis, step in key:
                    table[row, axis] += step
            tables[dim] = table.to(dtype=dtype, device=device)
        return tables[dim]

    def rounding_gain(self, dtype, atoms=frozenset()) -> float:
        """A second difference [f(+h) + f(-h) - 2 f] / h^2 multiplies rounding by 4 / h^2; a third or
        fourth derivative among ``atoms`` by the sum of its stencil's |weights| / h^m."""
        h1, h2 = self.steps(dtype)
        high = [sum(map(abs, _product_stencil(atom.index).values())) / self.high_step(dtype, atom.order) ** atom.order
                for atom in atoms if atom.kind in ("d3", "d4")]
        return max(1 / h1, 4 / h2 / h2, *high)

    def parts(self, F, atoms, spatial):
        _, weights, _ = self._plan(atoms, spatial, F.dtype, F.device)
        parts = {atom: F[..., rows] @ coefficients for atom, (rows, coefficients) in weights.items()}
        parts[Atom("value")] = F[..., 0]
        return parts


def _product_stencil(index: tuple[int, ...]) -> dict[tuple, float]:
    """The stencil of the derivative by the axes ``index`` (repeats: higher order along an axis) as
    {((axis, offset / h), ...): weight}: the product of each axis's central stencil (CENTRAL)."""
    stencil = {(): 1.0}
    for axis in sorted(set(index)):
        line = CENTRAL[index.count(axis)]
        stencil = {move + ((axis, k),): weight * c for move, weight in stencil.items() for k, c in line.items()}
    return stencil
