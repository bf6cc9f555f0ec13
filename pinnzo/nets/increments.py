"""Increments of an activation, act(z + delta) - act(z), for many small deltas at the same z.

The layered coordinate queries (optim/coordinates.py) move a layer's pre-activation z
(R, W) by a small delta for each of E parameter entries at once: (E, R, W) values. Evaluating
act(z + delta) costs one transcendental function per value; the Taylor series

    act(z + delta) - act(z) = sum_{k=1..K} c_k(z) delta^k + remainder,   c_k = act^(k)(z) / k!,

costs K fused multiply-adds per value once the c_k are known, and they are computed once
per z (sin: +-sin z, +-cos z over k!; tanh: polynomials in tanh z). The order K is chosen per
row of z, from the row's max |delta|, so that the remainder bound is at most eps(dtype) |delta| / 4:
rounding relative to the increment itself (|act'| <= 1), far below the rounding of act(z + delta)
(|act| <= 1), so the increments are the black-box ones to rounding:

    sin:   |remainder| <= |delta|^(K+1) / (K+1)!          (every derivative is at most 1)
    tanh:  |remainder| <= M |delta|^(K+1) / (1 - |delta|) (Cauchy's estimate on the disc of
                                                          radius 1, M = max |tanh| there = tan 1)

Relative, not absolute: the rows of one finite-difference stencil may take different orders, and
the stencil's weights (1 / h^2) amplify the difference of their remainders. An absolute eps / 4
would put errors of eps / h^2 into a stencil's change, however small the delta, and a Jacobian
column (the change over delta) would lose all accuracy at small steps.

Larger deltas, and activations without a series here (relu, gelu), take the direct
difference act(z + delta) - act(z), which is what a black-box query computes.

Each row's order depends on that row alone: in a block of rows that need different orders, the
coefficients above a row's order are zero in that row (Horner then adds exact zeros, and the
lower-order sum comes out bit for bit). A process holding a shard of a batch thus computes the
batch's increments of its rows (up to the summation kernel of the weighted sums over the units).
The caller may pass each row's ``reach``, any upper bound of its |delta| that depends on the row
alone (optim/coordinates.py carries one through the layers instead of reducing every layer's
deltas): a looser bound costs at most a higher order, never accuracy.
"""

from __future__ import annotations

import bisect
import functools
import math

import numpy as np
import torch

MAX_ORDER = 6  # beyond it (|delta| too large) the direct difference costs less than the series
TANH_BOUND = 1.6  # >= tan(1) = 1.5574, the largest |tanh| on a disc of radius 1 about a real point


def _sin_bound(order: int, delta: float) -> float:
    return delta ** (order + 1) / math.factorial(order + 1)


def _tanh_bound(order: int, delta: float) -> float:
    return TANH_BOUND * delta ** (order + 1) / (1 - delta) if delta < 1 else math.inf


def _tanh_polynomials(count: int) -> list[np.ndarray]:
    """P_k with tanh^(k)(z) = P_k(tanh z), k = 0..count (numpy coefficients, lowest first):
    P_0 = t, P_{k+1} = P_k'(t) (1 - t^2)."""
    polynomials = [np.array([0.0, 1.0])]
    for _ in range(count):
        derivative = np.polynomial.polynomial.polyder(polynomials[-1])
        polynomials.append(np.polynomial.polynomial.polymul(derivative, [1.0, 0.0, -1.0]))
    return polynomials


_TANH = _tanh_polynomials(MAX_ORDER)


@functools.cache
def _thresholds(kind: str, dtype: torch.dtype) -> tuple[float, ...]:
    """Per order K = 1..MAX_ORDER: the largest |delta| whose remainder bound is at most eps(dtype) |delta| / 4
    (by bisection in double precision, then rounded down to a value of ``dtype``, so that comparing a
    ``dtype`` tensor with them and a float with them agree), increasing in K."""
    bound = _sin_bound if kind == "sin" else _tanh_bound
    tolerance = torch.finfo(dtype).eps / 4
    thresholds = []
    for order in range(1, MAX_ORDER + 1):
        low, high = 0.0, 1.0
        for _ in range(80):
            middle = (low + high) / 2
            low, high = (middle, high) if bound(order, middle) <= tolerance * middle else (low, middle)
        rounded = torch.tensor(low, dtype=dtype)
        if rounded.item() > low:
            rounded = torch.nextafter(rounded, torch.zeros_like(rounded))
        thresholds.append(rounded.item())
    return tuple(thresholds)


@functools.cache
def _boundaries(kind: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0 then ``_thresholds`` (MAX_ORDER + 1,): torch.bucketize of a row's reach in them is its order
    (0 for no change, MAX_ORDER + 1 beyond the series)."""
    return torch.tensor((0.0,) + _thresholds(kind, dtype), dtype=dtype, device=device)


class Increments:
    """act(z + delta) - act(z) at fixed z, unit-major: zT (W, R), with act(z) = ``aT`` (W, R)
    already computed."""

    def __init__(self, activation, zT: torch.Tensor, aT: torch.Tensor, weights: torch.Tensor | None = None):
        """``weights`` (W,): the increments are only needed summed with these weights (a linear output
        layer with one output follows): sum_w weights[w] increment[w], folded into the c_k."""
        self.activation, self.z, self.a, self.weights = activation, zT, aT, weights
        self.into: torch.Tensor | None = None  # (W, U): the weights from the layer before (``along``)
        self._regrouped: list[torch.Tensor] = []  # C_1, C_2, ... (U, R) of ``along``
        self.kind = {torch.sin: "sin", torch.tanh: "tanh"}.get(activation)
        self._coefficients: list[torch.Tensor] = []  # c_1, c_2, ... (W, R), computed as needed
        self._cos = None

    def order(self, delta_max: float) -> int | None:
        """The smallest series order whose remainder is below eps |delta| / 4 at |delta| <= delta_max, or None."""
        if self.kind is None:
            return None
        if delta_max == 0:
            return 0
        order = bisect.bisect_left(_thresholds(self.kind, self.z.dtype), delta_max) + 1
        return order if order <= MAX_ORDER else None

    def orders(self, reach: torch.Tensor) -> torch.Tensor:
        """``order`` of each row (r,) from its largest |delta| ``reach`` (r,) (of z's dtype): MAX_ORDER + 1
        where no order suffices (those rows take the direct difference)."""
        return torch.bucketize(reach, _boundaries(self.kind, self.z.dtype, reach.device))

    def coefficient(self, k: int) -> torch.Tensor:
        """c_k = act^(k)(z) / k! (W, R), times the weights when given."""
        while len(self._coefficients) < k:
            scale = 1 / math.factorial(len(self._coefficients) + 1)
            scale = scale if self.weights is None else scale * self.weights[:, None]
            self._coefficients.append(self._derivative(len(self._coefficients) + 1) * scale)
        return self._coefficients[k - 1]

    def _derivative(self, k: int) -> torch.Tensor:
        if self.kind == "sin":  # sin^(k) z = sin(z + k pi / 2): cos, -sin, -cos, sin, ...
            if self._cos is None:
                self._cos = torch.cos(self.z)
            return (self._cos, -self.a, -self._cos, self.a)[(k - 1) % 4]
        result = torch.zeros_like(self.a)  # tanh: Horner in t = tanh z
        for coefficient in _TANH[k][::-1]:
            result = result * self.a + coefficient
        return result

    def reach(self, delta: torch.Tensor) -> torch.Tensor | None:
        """Each row's largest |delta| (r,) for deltas (E, U, r); None without a series (not needed).
        (max and -min over the rows' columns: two passes that write nothing, unlike |delta|.)"""
        if self.kind is None:
            return None
        columns = delta.reshape(-1, delta.shape[-1])
        return torch.maximum(columns.amax(0), columns.amin(0).neg_())

    def __call__(self, delta: torch.Tensor, units: torch.Tensor | None = None, rows: slice = slice(None),
                 reach: torch.Tensor | None = None) -> torch.Tensor:
        """Increments (E, U, r) for deltas (E, U, r) at the units ``units`` (E, U), or (U,) the same
        for all E, and the ``rows`` of z; or (E, W, r) for deltas (E, W, r) at every unit when
        ``units`` is None. With weights: their weighted sums over the units (E, 1, r). ``reach`` (r,):
        an upper bound of each row's |delta| that depends on the row alone (default: its maximum);
        it sets the row's series order."""
        def pick(values: torch.Tensor) -> torch.Tensor:
            return _at_units(values[:, rows], units)
        if self.kind is None:
            return self._direct(delta, units, pick)
        reach = self.reach(delta) if reach is None else reach
        low, high = [bound.item() for bound in torch.aminmax(reach)] if len(reach) else (0.0, 0.0)
        lowest, highest = self.order(low), self.order(high)
        if lowest is None:
            return self._direct(delta, units, pick)
        if highest == 0:
            return torch.zeros_like(delta) if self.weights is None else delta.new_zeros(len(delta), 1, delta.shape[-1])
        orders = self.orders(reach) if highest != lowest else None
        series = self._series(delta, units, rows, orders, lowest, MAX_ORDER if highest is None else highest)
        if highest is not None:
            return series
        return torch.where(orders > MAX_ORDER, self._direct(delta, units, pick), series)

    def along(self, delta: torch.Tensor, units: torch.Tensor, rows: slice, reach: torch.Tensor | None
              ) -> torch.Tensor | None:
        """The weighted increments sum_w weights[w] (act(z_w + into[w, u] delta) - act(z_w)) (E, 1, r)
        for changes delta (E, 1, r) of one unit u of the layer before (``units``: (1,) the same for all
        E, or (E, 1)), which move this layer along the column ``into[:, u]`` of its weights. The series
        regroups as

            sum_k (sum_w weights[w] c_k[w] into[w, u]^k) delta^k = sum_k C_k[u] delta^k,

        with C_k = (into^k)^T c_k (U, R) one matrix product per order for all units: one term per order
        instead of one per unit of this layer. ``reach`` (r,): each row's bound of |into[w, u] delta|.
        None where this does not apply (no ``into`` and folded weights, no series, a row beyond it):
        the caller takes ``__call__``."""
        if self.weights is None or self.into is None or self.kind is None:
            return None
        reach = self.reach(delta) * self.into.abs().max() if reach is None else reach
        low, high = [bound.item() for bound in torch.aminmax(reach)] if len(reach) else (0.0, 0.0)
        lowest, highest = self.order(low), self.order(high)
        if lowest is None or highest is None:
            return None
        if highest == 0:
            return torch.zeros_like(delta)
        orders = self.orders(reach) if highest != lowest else None

        def coefficient(k: int) -> torch.Tensor:  # C_k at the units and rows: (1, r) or (E, 1, r)
            values = self.regrouped(k)[:, rows]
            return _at_units(values if k <= lowest else values * (orders >= k), units)

        result = coefficient(highest)
        for k in range(highest - 1, 0, -1):
            result = torch.addcmul(coefficient(k), delta, result)
        return result * delta

    def regrouped(self, k: int) -> torch.Tensor:
        """C_k = (into^k)^T c_k (U, R): the order-k coefficient of a change along each column of ``into``."""
        while len(self._regrouped) < k:
            order = len(self._regrouped) + 1
            self._regrouped.append(self.into.pow(order).T @ self.coefficient(order))
        return self._regrouped[k - 1]

    def _direct(self, delta: torch.Tensor, units: torch.Tensor | None, pick) -> torch.Tensor:
        """act(z + delta) - act(z), summed with the weights when given."""
        change = self.activation(pick(self.z) + delta) - pick(self.a)
        if self.weights is None:
            return change
        weights = self.weights if units is None else self.weights[units]  # (W,), (U,) or (E, U)
        return (change * weights[..., None]).sum(-2, keepdim=True)

    def _series(self, delta: torch.Tensor, units: torch.Tensor | None, rows: slice, orders: torch.Tensor | None,
                lowest: int, highest: int) -> torch.Tensor:
        """The Taylor series of each row to its own order ``orders`` (r,) (None: all ``lowest``),
        lowest <= orders <= highest (rows above highest are left to the caller): Horner in delta, with
        the coefficients above a row's order set to zero in that row."""
        def coefficient(k: int) -> torch.Tensor:  # masked before picking the units: (W, r), not (E, U, r)
            values = self.coefficient(k)[:, rows]
            return _at_units(values if k <= lowest else values * (orders >= k), units)

        result = coefficient(highest)
        for k in range(highest - 1, 0, -1):  # Horner: c_1 + delta (c_2 + delta (c_3 + ...))
            result = torch.addcmul(coefficient(k), delta, result)
        if self.weights is None:
            return result * delta
        return torch.linalg.vecdot(result.expand_as(delta), delta, dim=-2)[:, None]


def _at_units(values: torch.Tensor, units: torch.Tensor | None) -> torch.Tensor:
    """values (W, r) at the ``units``: all (W, r) for None, (U, r) for (U,), (E, U, r) for (E, U)
    (an index_select: several times faster than values[units])."""
    return values if units is None else values.index_select(0, units.flatten()).view(*units.shape, -1)
