"""A minimal symmetric degree-5 cubature for N(0, I_D): Lu & Darmofal (2004).

D^2 + 3D + 3 nodes: the origin, and on the sphere of radius sqrt(D + 2) the
D + 1 vertices a_j of a regular simplex, their negations, and the D(D + 1)/2
normalised edge midpoints b_jk = (a_j + a_k)/|a_j + a_k| with their negations
(Mysovskikh's spherical design). For D = 21: 507 nodes against the 925 of the
level-3 Gauss-Hermite sparse grid, with sum |w| ~ 2 instead of 841.

Weights follow from the moment equations of the Gaussian up to degree 5
(odd moments vanish by the +- symmetry):
    w_0 + 2(D+1) A + D(D+1) B = 1                              (mass)
    r^2 [2 A sum_j a_j1^2 + 2 B sum_jk b_jk1^2]  = 1          (E x_1^2)
    r^4 [2 A sum_j a_j1^4 + 2 B sum_jk b_jk1^4]  = 3          (E x_1^4)
and isotropy of the union gives E x_1^2 x_2^2 = 1 for free; the test checks
every monomial.
"""

from __future__ import annotations

import numpy as np

from pinnzo.quadrature.rule import Rule, find_center, find_mirror


def simplex_vertices(dim: int) -> np.ndarray:
    """The D + 1 unit vertices of a regular simplex centred at 0: (D + 1, D).

    Pairwise inner products are -1/D.
    """
    corners = np.eye(dim + 1) - 1.0 / (dim + 1)  # centred corners of the standard simplex
    basis, _ = np.linalg.qr(corners[:, :dim] - corners[:, :dim].mean(axis=0))  # (D+1, D)
    vertices = corners @ basis
    return vertices / np.linalg.norm(vertices, axis=1, keepdims=True)


def lu_darmofal(dim: int) -> Rule:
    """The degree-5 rule with D^2 + 3D + 3 nodes for N(0, I_D), D >= 2."""
    if dim < 2:
        raise ValueError("lu-darmofal needs dim >= 2")
    radius = np.sqrt(dim + 2.0)
    a = simplex_vertices(dim)
    j, k = np.triu_indices(dim + 1, 1)
    b = a[j] + a[k]
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    # moment equations for (w0, A, B), using the first coordinate (isotropy)
    system = np.array([
        [1.0, 2 * len(a), 2 * len(b)],
        [0.0, 2 * radius**2 * (a[:, 0] ** 2).sum(), 2 * radius**2 * (b[:, 0] ** 2).sum()],
        [0.0, 2 * radius**4 * (a[:, 0] ** 4).sum(), 2 * radius**4 * (b[:, 0] ** 4).sum()],
    ])
    # lstsq: in D = 2 both point sets are hexagons (5-designs) and the system is
    # rank-deficient; the minimum-norm solution is then the balanced one.
    w0, weight_a, weight_b = np.linalg.lstsq(system, [1.0, 1.0, 3.0], rcond=None)[0]
    nodes = np.concatenate([np.zeros((1, dim)), radius * a, -radius * a, radius * b, -radius * b]) + 0.0
    weights = np.concatenate([[w0], np.full(2 * len(a), weight_a), np.full(2 * len(b), weight_b)])
    return Rule(nodes, weights, dim, 3, "lu-darmofal", 5, find_mirror(nodes), find_center(nodes))
