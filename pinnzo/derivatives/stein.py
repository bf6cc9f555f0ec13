"""Stein estimators of the Gaussian-smoothed model u(x) = E f(x + delta), delta ~ N(0, sigma^2 I).

Paper eq. (9) (docs/method.md, "Stein estimators"), with delta = sigma z:

    grad u        = E[ z/(2 sigma)             (f(x+delta) - f(x-delta)) ]
    d2u/dx_i2     = E[ (z_i^2 - 1)/(2 sigma^2)  (f(x+delta) + f(x-delta) - 2 f(x)) ]
    d2u/dx_i dx_j = E[ z_i z_j/(2 sigma^2)      (f(x+delta) + f(x-delta) - 2 f(x)) ]
    lap u         = E[ (|z_x|^2 - d)/(2 sigma^2) (f(x+delta) + f(x-delta) - 2 f(x)) ]
    u             = f(x) + E[ (f(x+delta) + f(x-delta) - 2 f(x)) / 2 ]
    third, fourth = E[ H(z)/(2 sigma^k)          (f(x+delta) -+ f(x-delta) ...) ]
      derivatives   with H(z) = prod_a He_{m_a}(z_a), the probabilists' Hermite polynomials of the
                    times m_a each axis a is differentiated (k = sum m_a; the first two rows are
                    its k = 1, 2 cases): pair differences D1 for odd k, D2 for even k

The higher derivatives' weights grow like 1/sigma^k and their estimates need a rule exact to degree
k + the model's local degree: a Monte-Carlo estimate is far noisier, and a sparse grid needs a
higher level than for the Laplacian (docs/problems.md).

The expectation is a symmetric node set z_j with weights w_j: a sparse grid
(paper eq. 13) or antithetic Monte-Carlo pairs. Because the set is its own
negation, f(x - delta_j) is f(x + delta_mirror(j)): f is evaluated once per
node (the origin gives f(x)), the pair differences
    D1_j = F_j - F_mirror(j),   D2_j = F_j + F_mirror(j) - 2 F_center
are formed first, and every atom of every point is one matmul of D1 or D2
with a weight matrix precomputed per rule, sigma and atom set. Weighting the
raw values instead would be algebraically equal and numerically ruinous in
float32 (the weights reach 204 and are scaled by 1/sigma^2 ... 1/sigma^4).
"""

from __future__ import annotations


import numpy as np
import torch

from pinnzo.atoms import VALUE, Atom, elementary
from pinnzo.derivatives.base import StencilBackend


class SteinEstimator(StencilBackend):
    """Stein derivatives over a symmetric node set (nodes z (n, D), weights, mirror, center)."""

    smoothed = True

    def __init__(self, sigma: float, rows_per_chunk: int = 1 << 20):
        if not sigma > 0:
            raise ValueError("sigma must be positive")
        self.sigma = float(sigma)
        self.rows_per_chunk = rows_per_chunk

    # subclasses set these (float64 numpy arrays)
    nodes: np.ndarray
    weights: np.ndarray
    mirror: np.ndarray
    center: int

    def _set_nodes(self, nodes, weights, mirror, center) -> None:
        pairs = np.flatnonzero(np.arange(len(nodes)) < mirror)  # one node of each +- pair
        self.nodes, self.weights, self.mirror, self.center = nodes, weights, mirror, center
        self.pairs, self.partners = pairs, mirror[pairs]
        self._cache = {}

    def _weight_matrices(self, atoms: tuple[Atom, ...], spatial: tuple[int, ...], dtype, device):
        """(W1 (P, a1), W2 (P, a2)) for the D1- and D2-based atoms, cached."""
        key = (atoms, spatial, dtype, device)
        if key not in self._cache:
            z = self.nodes[self.pairs]
            w = 2.0 * self.weights[self.pairs]  # each pair stands for its two nodes
            s = self.sigma
            first, second = [], []
            for atom in atoms:
                if atom.kind == "d1":
                    first.append(w * z[:, atom.index[0]] / (2 * s))
                elif atom.kind == "d2":
                    i, j = atom.index
                    second.append(w * (z[:, i] * z[:, j] - (i == j)) / (2 * s * s))
                elif atom.kind == "lap":
                    second.append(w * ((z[:, list(spatial)] ** 2).sum(1) - len(spatial)) / (2 * s * s))
                elif atom.kind == "value":
                    second.append(w / 2)
                else:  # d3 (odd: D1), d4 (even: D2)
                    (first if atom.kind in ODD else second).append(w * _hermite(z, atom.index) / (2 * s ** atom.order))
            as_tensor = lambda cols: torch.tensor(np.stack(cols, 1) if cols else np.zeros((len(z), 0)),
                                                  dtype=dtype, device=device)
            self._cache[key] = (as_tensor(first), as_tensor(second))
        return self._cache[key]

    def offsets(self, atoms, spatial, dim, dtype, device):
        key = ("offsets", dtype, device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.sigma * self.nodes, dtype=dtype, device=device)
        return self._cache[key]

    def parts(self, F, atoms, spatial):
        """Elementary atoms from F[..., b, j] = f(X[b] + sigma z_j) (..., B, n) by the pair differences."""
        ordered = tuple(sorted(elementary(atoms, spatial, direct=("lap",))))
        first = [a for a in ordered if a.kind in ODD]
        second = [a for a in ordered if a.kind not in ODD]
        W1, W2 = self._weight_matrices(ordered, tuple(spatial), F.dtype, F.device)
        parts = {}
        if first:
            D1 = F[..., self.pairs] - F[..., self.partners]
            parts.update(zip(first, (D1 @ W1).unbind(-1)))
        if second:
            D2 = F[..., self.pairs] + F[..., self.partners] - 2 * F[..., self.center, None]
            parts.update(zip(second, (D2 @ W2).unbind(-1)))
        if VALUE in parts:
            parts[VALUE] = parts[VALUE] + F[..., self.center]
        return parts

    def evaluations_per_point(self, atoms, spatial, dim):
        return len(self.nodes)

    def rounding_gain(self, dtype, atoms=frozenset()) -> float:
        """The largest weight sum of the estimators: the Laplacian's sum |w (|z|^2 - D)| / (2 sigma^2)
        bounds the second derivatives' (with D all inputs), a third or fourth derivative's among
        ``atoms`` is sum |w H(z)| / (2 sigma^k), and 4 for the pair differences."""
        z2 = (self.nodes**2).sum(1)
        high = [np.abs(self.weights * _hermite(self.nodes, atom.index)).sum() / (2 * self.sigma**atom.order)
                for atom in atoms if atom.kind in ("d3", "d4")]
        return 4 * max(np.abs(self.weights * (z2 - self.nodes.shape[1])).sum() / (2 * self.sigma**2),
                       np.abs(self.weights[:, None] * self.nodes).sum(0).max() / self.sigma, 1.0, *high)


ODD = ("d1", "d3")  # the atoms estimated from the odd pair differences D1

# the probabilists' Hermite polynomials He_0 ... He_4 (orthogonal under N(0, 1))
HERMITE = (lambda z: np.ones_like(z), lambda z: z, lambda z: z**2 - 1, lambda z: z**3 - 3 * z,
           lambda z: z**4 - 6 * z**2 + 3)


def _hermite(z: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """prod_a He_{m_a}(z[:, a]) over the axes a of ``index`` (m_a: how often a occurs): (n,)."""
    value = np.ones(len(z))
    for axis in set(index):
        value = value * HERMITE[index.count(axis)](z[:, axis])
    return value


class SparseGridStein(SteinEstimator):
    """Stein estimator with a sparse-grid rule (paper: Gauss-Hermite level 3, 925 nodes for D = 21)."""

    name = "sparse-grid"

    def __init__(self, dim: int, sigma: float = 0.1, family: str = "gauss-hermite", level: int = 3,
                 rows_per_chunk: int = 1 << 20):
        from pinnzo.quadrature import get_rule

        super().__init__(sigma, rows_per_chunk)
        rule = get_rule(family, dim, level)
        self.rule = rule
        nodes, weights, mirror, center = rule.nodes, rule.weights, rule.mirror, rule.center
        if center is None:  # f(x) is needed for D2; add the origin with weight 0
            nodes = np.vstack([nodes, np.zeros((1, dim))])
            weights = np.append(weights, 0.0)
            mirror = np.append(mirror, len(mirror))
            center = len(nodes) - 1
        self._set_nodes(nodes, weights, mirror, center)

    def describe(self) -> str:
        return (f"sparse-grid Stein ({self.rule.family} level {self.rule.level}, {len(self.nodes)} nodes, "
                f"sigma {self.sigma}); values are the smoothed model E f(x + delta)")


class MonteCarloStein(SteinEstimator):
    """Stein estimator with ``samples`` antithetic Monte-Carlo pairs +-delta (paper: 1024, sigma 0.1).

    The samples are redrawn by ``refresh`` (once per training step, so all loss
    queries of a zeroth-order step share them).
    """

    name = "stein"

    def __init__(self, dim: int, sigma: float = 0.1, samples: int = 1024, seed: int = 0,
                 rows_per_chunk: int = 1 << 20):
        super().__init__(sigma, rows_per_chunk)
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.dim, self.samples = dim, samples
        self.refresh(torch.Generator().manual_seed(seed))

    def refresh(self, generator: torch.Generator) -> None:
        z = torch.randn(self.samples, self.dim, generator=generator, dtype=torch.float64).numpy()
        m = self.samples
        nodes = np.vstack([z, -z, np.zeros((1, self.dim))])
        weights = np.append(np.full(2 * m, 1.0 / (2 * m)), 0.0)
        mirror = np.concatenate([np.arange(m, 2 * m), np.arange(m), [2 * m]])
        self._set_nodes(nodes, weights, mirror, 2 * m)

    def describe(self) -> str:
        return (f"Monte-Carlo Stein ({self.samples} antithetic pairs, sigma {self.sigma}); "
                f"values are the smoothed model E f(x + delta)")
