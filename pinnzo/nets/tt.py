"""Tensor-train (TT-matrix) linear layers (paper eq. 7; docs/method.md, "The TT layer").

The TT maths are pure functions on a list of cores G_k (r_{k-1}, m_k, n_k, r_k),
as tensorly writes them: ``tt_matrix`` (the dense W), ``tt_matvec`` (W x core by
core) and ``tt_unit_responses`` (how the output moves per unit change of one
core's entries). ``TTLinear`` holds the cores and a bias and calls them.
"""

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


def tt_matrix(cores: Sequence[torch.Tensor], out_features: int, in_features: int) -> torch.Tensor:
    """The dense W (out_features, in_features) of TT cores: W[(i_1..i_L), (j_1..j_L)] =
    G_1[:, i_1, j_1, :] ... G_L[:, i_L, j_L, :], cut to the unpadded size."""
    result = cores[0]  # (1, m1, n1, r1)
    for core in cores[1:]:
        r0, M, N, _ = result.shape
        _, m, n, r = core.shape
        result = torch.einsum("aijb,bklc->aikjlc", result, core).reshape(r0, M * m, N * n, r)
    return result[0, :out_features, :in_features, 0]


def _padded_input(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]]:
    in_shape = tuple(core.shape[2] for core in cores)
    N = math.prod(in_shape)
    if N > x.shape[-1]:
        x = torch.nn.functional.pad(x, (0, N - x.shape[-1]))
    return x, in_shape


def tt_matvec(cores: Sequence[torch.Tensor], x: torch.Tensor, out_features: int) -> torch.Tensor:
    """W x for x (..., in_features) -> (..., out_features), contracting core by core
    without forming W (cheaper than rebuilding W for a handful of rows)."""
    batch = x.shape[:-1]
    x, in_shape = _padded_input(x, cores)
    t = x.reshape(-1, *in_shape)[..., None]  # (B, n1, ..., nL, r_L=1)
    for k in reversed(range(len(cores))):  # contract n_k and r_k, emit m_k at the front of the output modes
        # t: (B, n_1..n_k, r_k, m_{k+1}..m_L)
        t = torch.movedim(t, 1 + k, -1)  # bring n_k last: (B, n_1..n_{k-1}, r_k, m_{k+1}.., n_k)
        t = torch.movedim(t, 1 + k, -1)  # bring r_k last:  (B, ..., m_{k+1}.., n_k, r_k)
        t = torch.tensordot(t, cores[k], dims=([-2, -1], [2, 3]))  # (B, n_1..n_{k-1}, m_{k+1}.., r_{k-1}, m_k)
        t = torch.movedim(t, -2, 1 + k)  # r_{k-1} after n_1..n_{k-1}
        t = torch.movedim(t, -1, 2 + k)  # m_k before m_{k+1}
    out_size = math.prod(core.shape[1] for core in cores)
    return t.reshape(*batch, out_size)[..., :out_features]


def _merged(cores: Sequence[torch.Tensor], rank: int, like: torch.Tensor) -> torch.Tensor:
    """The product of consecutive cores, the first of rank ``rank`` on its left, as one core
    (rank, M, N, r_last) (the identity (rank, 1, 1, rank) for none)."""
    result = torch.eye(rank, dtype=like.dtype, device=like.device).reshape(rank, 1, 1, rank)
    for core in cores:
        r0, M, N, _ = result.shape
        _, m, n, r = core.shape
        result = torch.einsum("aijb,bklc->aikjlc", result, core).reshape(r0, M * m, N * n, r)
    return result


def tt_unit_responses(cores: Sequence[torch.Tensor], k: int, x: torch.Tensor, out_features: int):
    """How W x changes per unit change of entries of core k: a function entries (E,) (flat indices)
    -> (units (E, U), values: rows (a slice of x's rows) -> (E, U, rows)), the sparse form,
    U = out_size / m_k.

    x (B, in_features). W is linear in core k, so the change is exact: with the cores before k
    merged into L (P, N_<, r_{k-1}) and those after into R (r_k, Q, N_>),

        dz[b, (p, i, q)] / dG_k[a, i, j, c] = sum_{s, t} L[p, s, a] x[b, (s, j, t)] R[c, q, t],

    the same for every output index i of core k. It is computed once, as two matrix products,
    into T[c, q, a, p, j, b] (rows last, so that a block of rows of an entry is a slab).
    """
    x, in_shape = _padded_input(x, cores)
    out_shape = tuple(core.shape[1] for core in cores)
    L = _merged(cores[:k], 1, x)[0]  # (P, N_<, r_{k-1})
    R = _merged(cores[k + 1:], cores[k].shape[3], x)[..., 0]  # (r_k, Q, N_>)
    (P, N_before, r0), (r1, Q, N_after) = L.shape, R.shape
    m_k, n_k = cores[k].shape[1:3]
    B = x.shape[0]
    xt = x.reshape(B, N_before * n_k, N_after).permute(2, 1, 0).reshape(N_after, -1)  # (t, (s, j, b))
    y = (R.reshape(r1 * Q, N_after) @ xt).reshape(r1 * Q, N_before, n_k * B)  # (c q, s, (j, b))
    T = (L.permute(2, 0, 1).reshape(r0 * P, N_before) @ y).reshape(r1, Q, r0, P, n_k, B)  # (c, q, a, p, j, b)
    # one contiguous (q p, rows) slab per (c, a, j): an entry's values are one slab, whatever its i
    T = T.permute(0, 2, 4, 1, 3, 5).reshape(r1 * r0 * n_k, Q * P, B)
    after = math.prod(out_shape[k + 1:])
    base = (torch.arange(P, device=x.device)[None, :] * (m_k * after)  # unit of (q, p), i = 0
            + torch.arange(after, device=x.device)[:, None]).flatten()

    def responses(entries: torch.Tensor):
        a, i, j, c = torch.unravel_index(entries, cores[k].shape)
        units = base[None, :] + (i * after)[:, None]  # (E, U) flat output indices

        slabs = (c * r0 + a) * n_k + j

        def values(rows=slice(None)):
            return T[slabs, :, rows]  # (E, U, rows)

        padded = units >= out_features  # outputs cut off by the padding of the factorisation
        if not padded.any():
            return units, values
        kept = ~padded[:, :, None]
        return units.masked_fill(padded, 0), lambda rows=slice(None): values(rows) * kept

    return responses


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
    core by core when rows * (in + out) * 4 < in * out, a cost rule fitted to
    `pinnzo bench tt-layer` (its crossovers are in the README's benchmark table).
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

    def core_list(self) -> list[torch.Tensor]:
        """The cores as a list (indexed one by one: slicing the ParameterList would re-wrap
        each tensor as a Parameter, cutting the graph under torch.func.functional_call)."""
        return [self.cores[k] for k in range(len(self.cores))]

    def weight(self) -> torch.Tensor:
        """The dense W (out_features, in_features) the cores represent."""
        return tt_matrix(self.core_list(), self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_features) -> (B, out_features)."""
        rows = x.shape[0] if x.dim() > 1 else 1
        small = 4 * rows * (self.in_features + self.out_features) < self.in_features * self.out_features
        contract = self.mode == "cores" or (self.mode == "auto" and small)
        if not contract:
            return nn.functional.linear(x, self.weight(), self.bias)
        y = tt_matvec(self.core_list(), x, self.out_features)
        return y + self.bias if self.bias is not None else y

    def unit_responses(self, params: dict[str, torch.Tensor], name: str, x: torch.Tensor):
        """How this layer's output at x (B, in) changes per unit change of entries of parameter
        ``name`` (as in named_parameters), with the given parameter values: a function entries (E,)
        -> sparse (units (E, U), values: rows (a slice of x's rows) -> (E, U, rows)), prepared once
        per parameter tensor."""
        if name == "bias":
            return lambda entries: (entries[:, None], lambda rows=slice(None): x.new_ones(len(entries), 1, len(x[rows])))
        names = [f"cores.{k}" for k in range(len(self.cores))]
        return tt_unit_responses([params[core] for core in names], names.index(name), x, self.out_features)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        shape = "x".join(map(str, self.in_shape)) + " -> " + "x".join(map(str, self.out_shape))
        return f"{self.in_features} -> {self.out_features} ({shape}), ranks={list(self.ranks)}"
