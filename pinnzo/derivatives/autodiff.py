"""Autodiff backend: exact derivatives of f by torch.func (composable with vmap and autograd)."""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from pinnzo.atoms import VALUE, assemble, elementary
from pinnzo.derivatives.base import DerivativeBackend


class Autodiff(DerivativeBackend):
    """du/dz_i from one vector-Jacobian product of sum(f); second derivatives
    d2u/dz_i dz_j as Hessian columns by forward-over-reverse products
    (jvp of the gradient along e_j), vmapped over the needed columns j
    instead of a Python loop over dimensions."""

    name = "ad"

    def __call__(self, f, X, atoms, spatial):
        parts = elementary(atoms, spatial)
        columns = sorted({a.index[1] for a in parts if a.kind == "d2"})
        if not any(a.kind != "value" for a in parts):
            return {VALUE: f(X)}
        ones = torch.ones(X.shape[0], dtype=X.dtype, device=X.device)

        def gradient(points):
            value, pullback = vjp(f, points)
            return pullback(ones)[0], value

        if columns:
            directions = torch.zeros(len(columns), *X.shape, dtype=X.dtype, device=X.device)
            directions[torch.arange(len(columns)), :, torch.tensor(columns)] = 1.0

            def hessian_column(direction):
                (grad, value), (column, _) = jvp(gradient, (X,), (direction,))
                return grad, value, column
            grads, values, hessian_columns = vmap(hessian_column)(directions)  # (c, B, D), (c, B), (c, B, D)
            grad, value = grads[0], values[0]
            second = {j: hessian_columns[k] for k, j in enumerate(columns)}
        else:
            grad, value = gradient(X)
            second = {}
        computed = {VALUE: value}
        for atom in parts:
            if atom.kind == "d1":
                computed[atom] = grad[:, atom.index[0]]
            elif atom.kind == "d2":
                computed[atom] = second[atom.index[1]][:, atom.index[0]]
            elif atom.kind in ("d3", "d4"):
                computed[atom] = _nested_jvp(f, X, atom.index)
        return assemble(atoms, computed, spatial)


def _nested_jvp(f, X: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """d^k f / dz_a1 ... dz_ak at X (B,): k nested forward-mode products along the unit vectors e_a."""
    def along(inner, axis):
        unit = torch.zeros_like(X)
        unit[:, axis] = 1.0
        return lambda Y: jvp(inner, (Y,), (unit,))[1]

    g = f
    for axis in axes:
        g = along(g, axis)
    return g(X)
