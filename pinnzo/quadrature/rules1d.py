"""One-dimensional quadrature rules for the standard normal weight.

Every rule integrates against the probabilists' weight exp(-x^2/2)/sqrt(2 pi):
weights sum to 1 and E[x^2] = 1. Nodes are returned sorted and exactly
symmetric (node j is the negation of node n-1-j; an odd rule has an exact 0).

Two families, each indexed by a Smolyak *level* l >= 1:

* ``gauss-hermite``: l points (degree 2l - 1), from scipy's roots_hermitenorm.
* ``genz-keister``: the nested Kronrod-Patterson extensions of Gauss-Hermite
  1 -> 3 -> 9 -> 19 -> 35 points (degrees 1, 5, 15, 29, 51; Genz & Keister
  1996), used "slow-growth": level l takes the smallest rule of degree
  >= 2l - 1, so a level-k sparse grid has the same exactness as Gauss-Hermite.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mpmath
import numpy as np
from scipy.special import roots_hermitenorm


@dataclass(frozen=True)
class Rule1D:
    """A 1-D rule: ``nodes`` (n,), ``weights`` (n,), polynomial ``degree``."""

    nodes: np.ndarray
    weights: np.ndarray
    degree: int


def _symmetrize(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make a numerically symmetric rule exactly symmetric (sorted nodes)."""
    order = np.argsort(nodes)
    nodes, weights = nodes[order], weights[order]
    nodes = 0.5 * (nodes - nodes[::-1])
    weights = 0.5 * (weights + weights[::-1])
    if len(nodes) % 2:
        nodes[len(nodes) // 2] = 0.0
    return nodes, weights


@functools.lru_cache(maxsize=None)
def gauss_hermite(points: int) -> Rule1D:
    """The ``points``-point Gauss-Hermite rule for N(0, 1), degree 2*points - 1."""
    nodes, weights = roots_hermitenorm(points)
    nodes, weights = _symmetrize(np.asarray(nodes, float), np.asarray(weights, float) / np.sqrt(2 * np.pi))
    return Rule1D(nodes, weights / weights.sum(), 2 * points - 1)


# --- Genz-Keister: Kronrod-Patterson extensions computed in high precision ---

_GK_EXTENSIONS = (2, 6, 10, 16)  # points added at each step: 1 -> 3 -> 9 -> 19 -> 35
_DIGITS = 80


def _normal_moment(k: int) -> mpmath.mpf:
    """E[x^k] for x ~ N(0, 1): (k-1)!! for even k, 0 for odd k."""
    return mpmath.mpf(0) if k % 2 else mpmath.fac2(k - 1) if k else mpmath.mpf(1)


def _patterson_extension(nodes: list, added: int) -> list:
    """Roots of the monic q (degree ``added``) with E[p(x) q(x) x^j] = 0, j < added.

    p is the node polynomial of ``nodes``. Together, nodes and the roots of q
    form an interpolatory rule of degree len(nodes) + 2*added - 1.
    """
    p = [mpmath.mpf(1)]  # coefficients, lowest degree first
    for x in nodes:
        p = [(p[i - 1] if i else 0) - x * (p[i] if i < len(p) else 0) for i in range(len(p) + 1)]

    def moment_pq(i: int, j: int) -> mpmath.mpf:  # E[p(x) x^(i+j)]
        return mpmath.fsum(c * _normal_moment(k + i + j) for k, c in enumerate(p))

    a = mpmath.matrix(added, added)
    b = mpmath.matrix(added, 1)
    for j in range(added):
        for i in range(added):
            a[j, i] = moment_pq(i, j)
        b[j] = -moment_pq(added, j)
    q = mpmath.lu_solve(a, b)
    coefficients = [q[i] for i in range(added)] + [mpmath.mpf(1)]
    roots = mpmath.polyroots(coefficients[::-1], maxsteps=400, extraprec=4 * _DIGITS)
    if any(abs(mpmath.im(r)) > mpmath.mpf(10) ** (-_DIGITS // 2) for r in roots):
        raise ArithmeticError("Genz-Keister extension has complex nodes")
    return [mpmath.re(r) for r in roots]


def _interpolatory_weights(nodes: list) -> list:
    """Weights that integrate 1, x, ..., x^(n-1) exactly against N(0, 1)."""
    n = len(nodes)
    vandermonde = mpmath.matrix([[x**k for x in nodes] for k in range(n)])
    moments = mpmath.matrix([_normal_moment(k) for k in range(n)])
    w = mpmath.lu_solve(vandermonde, moments)
    return [w[i] for i in range(n)]


@functools.lru_cache(maxsize=None)
def _genz_keister_nodes(index: int) -> tuple:
    """High-precision nodes of the index-th nested rule (0: the single node 0)."""
    if index == 0:
        return (mpmath.mpf(0),)
    with mpmath.workdps(_DIGITS):
        previous = list(_genz_keister_nodes(index - 1))
        return tuple(previous + _patterson_extension(previous, _GK_EXTENSIONS[index - 1]))


@functools.lru_cache(maxsize=None)
def genz_keister(index: int) -> Rule1D:
    """The index-th nested Genz-Keister rule (index 0..4: 1, 3, 9, 19, 35 points)."""
    nodes = _genz_keister_nodes(index)
    if index == 0:
        return Rule1D(np.zeros(1), np.ones(1), 1)
    old = len(nodes) - _GK_EXTENSIONS[index - 1]
    degree = old + 2 * _GK_EXTENSIONS[index - 1] - 1
    degree += 1 - degree % 2  # a symmetric rule also integrates the next odd power
    with mpmath.workdps(_DIGITS):
        weights = _interpolatory_weights(list(nodes))
    x, w = _symmetrize(np.array([float(v) for v in nodes]), np.array([float(v) for v in weights]))
    return Rule1D(x, w, degree)


def _genz_keister_degree(index: int) -> int:
    points = 1 + sum(_GK_EXTENSIONS[:index])
    degree = points + _GK_EXTENSIONS[index - 1] - 1 if index else 1
    return degree + 1 - degree % 2


def gauss_hermite_level(level: int) -> Rule1D:
    """Level l of the Gauss-Hermite family: l points."""
    return gauss_hermite(level)


def genz_keister_level(level: int) -> Rule1D:
    """Level l of the Genz-Keister family: the smallest rule of degree >= 2l - 1."""
    for index in range(len(_GK_EXTENSIONS) + 1):
        if _genz_keister_degree(index) >= 2 * level - 1:
            return genz_keister(index)
    raise ValueError(f"genz-keister levels stop at {GENZ_KEISTER_MAX_LEVEL}")


GENZ_KEISTER_MAX_LEVEL = (_genz_keister_degree(len(_GK_EXTENSIONS)) + 1) // 2
