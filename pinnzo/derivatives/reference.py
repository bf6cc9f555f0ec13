"""The paper's sparse-grid Stein estimator evaluated the paper's way (eq. 13): a reference.

f(x + delta_j), f(x - delta_j) and f(x) for every node, one forward per
perturbation, weighted node by node. pinnzo's SparseGridStein evaluates f once
per node and weights pair differences instead (docs/method.md); the tests check
the two agree, and ``pinnzo bench derivatives`` times them against each other.
"""

from __future__ import annotations

import torch


def paper_sparse_grid(f, X: torch.Tensor, rule, sigma: float, spatial) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient (B, D), Laplacian over ``spatial`` (B,)) of the smoothed f at X (B, D)."""
    delta = torch.tensor(rule.nodes * sigma, dtype=X.dtype)
    weights = torch.tensor(rule.weights, dtype=X.dtype)
    spatial = list(spatial)
    f0 = f(X)
    gradient = torch.zeros(X.shape, dtype=X.dtype)
    laplacian = torch.zeros(len(X), dtype=X.dtype)
    for j in range(len(delta)):
        plus, minus = f(X + delta[j]), f(X - delta[j])
        gradient += weights[j] * delta[j] / (2 * sigma**2) * (plus - minus)[:, None]
        radius = (delta[j, spatial] ** 2).sum()
        laplacian += weights[j] * (radius - sigma**2 * len(spatial)) / (2 * sigma**4) * (plus + minus - 2 * f0)
    return gradient, laplacian
