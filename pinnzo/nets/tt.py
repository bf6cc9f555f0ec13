"""Tensor-train (TT-matrix) linear layers (paper eq. 7, DESIGN.md section 2)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pinnzo.nets.factorize import padded_factors, size


def _normalised_gaussian(shape, std: float, generator, dtype) -> torch.Tensor:
    """Gaussian entries rescaled so their mean square is exactly std^2.

    A core has few entries (98 for 2 x 7 x 7 x 1), so the sample variance of a
    plain draw is off by ~15%, and the reconstructed W multiplies L such errors.
    """
    core = torch.randn(shape, generator=generator, dtype=torch.float64)
    core *= std / core.square().mean().sqrt()
    return core.to(dtype)


class TTLinear(nn.Module):
    """y = W x + b with W (M x N) in TT-matrix format.

    M = prod m_k (padded to >= out_features), N = prod n_k (>= in_features);
    cores G_k of shape (r_{k-1}, m_k, n_k, r_k), r_0 = r_L = 1, so that
    W[(i_1..i_L), (j_1..j_L)] = G_1[:, i_1, j_1, :] ... G_L[:, i_L, j_L, :].
    Parameters: sum_k r_{k-1} m_k n_k r_k (+ out_features for the bias).

    Initialisation: every core entry ~ N(0, s^2) (normalised per core) with
    s = (target / prod_{k=1}^{L-1} r_k)^(1 / (2L)), so that the reconstructed
    W has Var(W_ij) = target (default 1/N, i.e. 1/in_features).

    Forward: rebuild W and one GEMM (``mode="dense"``, fastest for the batches a
    PINN evaluates: hundreds of thousands of rows), or contract core by core
    (``mode="cores"``, cheaper for a handful of rows); ``mode="auto"`` contracts
    core by core when rows * (in + out) * 4 < in * out. That crossover matches
    `pinnzo bench tt-layer` on 2 cores: ~100 rows for 784 -> 1024 (so MNIST's
    mini-batch of 64 contracts), ~64 for 512 -> 512, ~5 for 21 -> 512.
    """

    def __init__(self, in_features: int, out_features: int, ranks: int | Sequence[int] = 2,
                 in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None,
                 cores: int = 4, bias: bool = True, target_variance: float | None = None,
                 mode: str = "auto", dtype=torch.float32, generator: torch.Generator | None = None):
        super().__init__()
        in_shape = tuple(in_shape) if in_shape else padded_factors(in_features, cores)
        out_shape = tuple(out_shape) if out_shape else padded_factors(out_features, len(in_shape))
        if len(in_shape) != len(out_shape):
            raise ValueError(f"input shape {in_shape} and output shape {out_shape} need the same number of factors")
        if size(in_shape) < in_features or size(out_shape) < out_features:
            raise ValueError(f"shapes {in_shape} x {out_shape} do not cover {in_features} -> {out_features}")
        L = len(in_shape)
        ranks = [1] + ([ranks] * (L - 1) if isinstance(ranks, int) else list(ranks)) + [1]
        if isinstance(ranks[1], list) or len(ranks) != L + 1:
            raise ValueError(f"expected one rank or {L - 1} inner ranks; found {ranks[1:-1]}")
        self.in_features, self.out_features = in_features, out_features
        self.in_shape, self.out_shape, self.ranks, self.mode = in_shape, out_shape, tuple(ranks), mode
        target = target_variance if target_variance is not None else 1.0 / in_features
        std = (target / math.prod(ranks[1:-1])) ** (1 / (2 * L))
        self.cores = nn.ParameterList([
            nn.Parameter(_normalised_gaussian((ranks[k], out_shape[k], in_shape[k], ranks[k + 1]), std,
                                              generator, dtype))
            for k in range(L)])
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    def weight(self) -> torch.Tensor:
        """The dense W (out_features, in_features) the cores represent."""
        # index the ParameterList: slicing it builds a new ParameterList that re-wraps
        # each tensor as a Parameter, cutting the graph under torch.func.functional_call
        result = self.cores[0]  # (1, m1, n1, r1)
        for k in range(1, len(self.cores)):
            core = self.cores[k]
            r0, M, N, _ = result.shape
            _, m, n, r = core.shape
            result = torch.einsum("aijb,bklc->aikjlc", result, core).reshape(r0, M * m, N * n, r)
        return result[0, : self.out_features, : self.in_features, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_features) -> (B, out_features)."""
        rows = x.shape[0] if x.dim() > 1 else 1
        small = 4 * rows * (self.in_features + self.out_features) < self.in_features * self.out_features
        contract = self.mode == "cores" or (self.mode == "auto" and small)
        if not contract:
            return nn.functional.linear(x, self.weight(), self.bias)
        y = self._contract(x)
        return y + self.bias if self.bias is not None else y

    def _contract(self, x: torch.Tensor) -> torch.Tensor:
        """Core-by-core contraction without forming W."""
        batch = x.shape[:-1]
        N = size(self.in_shape)
        if N > self.in_features:
            x = torch.nn.functional.pad(x, (0, N - self.in_features))
        t = x.reshape(-1, *self.in_shape)[..., None]  # (B, n1, ..., nL, r_L=1)
        L = len(self.cores)
        for k in reversed(range(L)):  # contract n_k and r_k, emit m_k at the front of the output modes
            core = self.cores[k]  # (r_{k-1}, m_k, n_k, r_k)
            # t: (B, n_1..n_k, r_k, m_{k+1}..m_L)
            t = torch.movedim(t, 1 + k, -1)  # bring n_k last: (B, n_1..n_{k-1}, r_k, m_{k+1}.., n_k)
            t = torch.movedim(t, 1 + k, -1)  # bring r_k last:  (B, ..., m_{k+1}.., n_k, r_k)
            t = torch.tensordot(t, core, dims=([-2, -1], [2, 3]))  # (B, n_1..n_{k-1}, m_{k+1}.., r_{k-1}, m_k)
            t = torch.movedim(t, -2, 1 + k)  # r_{k-1} after n_1..n_{k-1}
            t = torch.movedim(t, -1, 2 + k)  # m_k before m_{k+1}
        y = t.reshape(*batch, size(self.out_shape))
        return y[..., : self.out_features]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        shape = "x".join(map(str, self.in_shape)) + " -> " + "x".join(map(str, self.out_shape))
        return f"{self.in_features} -> {self.out_features} ({shape}), ranks={list(self.ranks)}"
