"""Smolyak sparse grids from nested or non-nested 1-D rules (docs/method.md, "Sparse-grid rules").

A_{D,k} = sum_{q=max(0,k-D)}^{k-1} (-1)^{k-1-q} C(D-1, k-1-q)
          sum_{|l| = D+q} V_{l_1} x ... x V_{l_D}            (paper eq. 11)

Only coordinates with l_i > 1 carry a non-trivial node (V_1 is the single node
0 with weight 1), so a multi-index is a small set of active coordinates with
their levels. Every 1-D node gets an integer id (0 is the origin, ids of a
node and of its negation are paired), a D-dimensional node is a row of ids,
and repeated nodes are merged exactly by comparing those rows, never by
floating-point tolerance in D dimensions.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator

import numpy as np

from pinnzo.quadrature.rule import Rule
from pinnzo.quadrature.rules1d import Rule1D

Level1D = Callable[[int], Rule1D]

# Relative size below which a merged weight is cancellation noise, not a node.
_CANCELLED = 1e-13


def _partitions(total: int, largest: int | None = None):
    """Partitions of ``total`` into positive parts, non-increasing."""
    largest = total if largest is None else largest
    if total == 0:
        yield ()
        return
    for part in range(min(total, largest), 0, -1):
        for rest in _partitions(total - part, part):
            yield (part,) + rest


def _excess_patterns(dim: int, level: int):
    """Yield (coefficient, excesses): excesses is a tuple of l_i - 1 > 0 (ordered)
    for the active coordinates of one family of multi-indices of the formula."""
    for q in range(max(0, level - dim), level):
        coefficient = (-1) ** (level - 1 - q) * math.comb(dim - 1, level - 1 - q)
        for partition in _partitions(q):
            if len(partition) <= dim:
                yield from ((coefficient, excesses) for excesses in _distinct_permutations(partition))


def _distinct_permutations(items: tuple) -> Iterator[tuple]:
    """The distinct orderings of ``items`` in lexicographic order, i.e.
    sorted(set(itertools.permutations(items))) without generating the len(items)!
    repeats (19 equal parts would be 10^17 of them)."""
    current = sorted(items)
    while True:
        yield tuple(current)
        i = len(current) - 2
        while i >= 0 and current[i] >= current[i + 1]:
            i -= 1
        if i < 0:
            return
        j = len(current) - 1
        while current[j] <= current[i]:
            j -= 1
        current[i], current[j] = current[j], current[i]
        current[i + 1:] = reversed(current[i + 1:])


def raw_point_count(dim: int, level: int, level_rule: Level1D) -> int:
    """Number of tensor-product points before merging (the memory the build needs).

    Counted without enumerating the multi-indices (their number grows like
    2^level): ways[q][a] sums, over the orderings of a positive excesses adding
    up to q, the product of the 1-D rule sizes; each such ordering is placed on
    C(dim, a) sets of coordinates.
    """
    top = level - 1
    sizes = {excess: len(level_rule(excess + 1).nodes) for excess in range(1, top + 1)}
    ways = [[0] * (top + 1) for _ in range(top + 1)]
    ways[0][0] = 1
    for q in range(1, top + 1):
        for a in range(1, q + 1):
            ways[q][a] = sum(sizes[p] * ways[q - p][a - 1] for p in range(1, q - a + 2))
    return sum(math.comb(dim, a) * ways[q][a]
               for q in range(max(0, level - dim), level) for a in range(min(q, dim) + 1))


class _NodeIds:
    """Integer ids for the 1-D node values: 0 -> 0.0, i -> +v_i, -i -> -v_i."""

    def __init__(self, rules: list[Rule1D]):
        positive = np.unique(np.concatenate([r.nodes[r.nodes > 0] for r in rules]))
        keep = np.ones(len(positive), bool)
        keep[1:] = np.diff(positive) > 1e-12 * positive[1:]
        self.positive = positive[keep]
        if len(self.positive) > 127:
            raise ValueError("too many distinct 1-D nodes for int8 ids")
        if len(self.positive) >= _SLOT // 2:
            raise ValueError("too many distinct 1-D nodes for the merge keys")

    def of(self, nodes: np.ndarray) -> np.ndarray:
        """ids (int8) of 1-D ``nodes``."""
        index = np.searchsorted(self.positive, np.abs(nodes) * (1 - 1e-12))
        ids = np.where(nodes == 0, 0, (index + 1) * np.sign(nodes))
        return ids.astype(np.int8)

    def values(self, ids: np.ndarray) -> np.ndarray:
        """Node values (float64) of int8 ``ids``."""
        table = np.zeros(256)
        table[128 + 1:128 + 1 + len(self.positive)] = self.positive
        table[128 - len(self.positive):128] = -self.positive[::-1]
        return table[ids.astype(np.int16) + 128]


def _tensor_grid(rules: list[Rule1D], ids: _NodeIds) -> tuple[np.ndarray, np.ndarray]:
    """Tensor product of 1-D rules: ids (g, a) int8 and weights (g,)."""
    if not rules:
        return np.zeros((1, 0), np.int8), np.ones(1)
    mesh_ids = np.meshgrid(*[ids.of(r.nodes) for r in rules], indexing="ij")
    mesh_w = np.meshgrid(*[r.weights for r in rules], indexing="ij")
    return (np.stack([m.ravel() for m in mesh_ids], axis=1),
            np.prod(np.stack([m.ravel() for m in mesh_w], axis=1), axis=1))


def smolyak(dim: int, level: int, level_rule: Level1D, family: str, degree: int) -> Rule:
    """Build the level-``level`` Smolyak rule in ``dim`` dimensions.

    ``level_rule(l)`` gives the 1-D rule V_l. Returns a ``Rule`` whose repeated
    nodes are merged (weights summed) and whose cancelled nodes are dropped.
    """
    rules = {l: level_rule(l) for l in range(1, level + 1)}
    ids = _NodeIds(list(rules.values()))
    width = max(1, level - 1)  # at most level - 1 coordinates are off the origin
    keys, weights = [], []
    for coefficient, excesses in _excess_patterns(dim, level):
        active = len(excesses)
        grid_ids, grid_w = _tensor_grid([rules[e + 1] for e in excesses], ids)
        combos = list(itertools.combinations(range(dim), active))
        combos = np.array(combos, dtype=np.int32).reshape(len(combos), 1, active)
        entries = np.full((len(combos), len(grid_w), width), _EMPTY, dtype=np.int32)
        if active:
            codes = combos * _SLOT + grid_ids[None].astype(np.int32) + 128
            entries[..., :active] = np.where(grid_ids[None] == 0, _EMPTY, codes)
        keys.append(entries.reshape(-1, width))
        weights.append(np.broadcast_to(coefficient * grid_w, (len(combos), len(grid_w))).ravel())
    return _merge(np.concatenate(keys), np.concatenate(weights), ids, dim, level, family, degree)


# A node is keyed by its off-origin coordinates: dim * _SLOT + (id + 128) each,
# sorted (so by dim), padded with _EMPTY. Equal nodes have equal keys.
_SLOT = 256
_EMPTY = np.iinfo(np.int32).max


def _merge(entries, weights, ids: _NodeIds, dim, level, family, degree) -> Rule:
    """Sum the weights of equal nodes; drop nodes whose weights cancelled."""
    entries = np.sort(entries, axis=1)
    width = entries.shape[1]
    void = np.dtype((np.void, 4 * width))
    unique_keys, inverse = np.unique(np.ascontiguousarray(entries).view(void).ravel(), return_inverse=True)
    merged = np.bincount(inverse, weights=weights)
    magnitude = np.bincount(inverse, weights=np.abs(weights))
    keep = np.abs(merged) > _CANCELLED * magnitude
    kept = unique_keys[keep]
    codes = kept.view(np.int32).reshape(-1, width)
    occupied = codes != _EMPTY
    mirror_codes = np.where(occupied, codes - 2 * (codes % _SLOT - 128), _EMPTY)
    mirror_keys = np.ascontiguousarray(mirror_codes).view(void).ravel()
    mirror = np.minimum(np.searchsorted(kept, mirror_keys), len(kept) - 1)
    if not np.array_equal(kept[mirror], mirror_keys):
        raise AssertionError("Smolyak rule is not symmetric")
    rows, slots = np.nonzero(occupied)
    node_ids = np.zeros((len(kept), dim), dtype=np.int8)
    node_ids[rows, codes[rows, slots] // _SLOT] = codes[rows, slots] % _SLOT - 128
    nodes = ids.values(node_ids)
    weights = merged[keep]
    weights = 0.5 * (weights + weights[mirror])
    center = np.flatnonzero(~occupied.any(axis=1))
    return Rule(nodes, weights, dim, level, family, degree, mirror.astype(np.int64),
                int(center[0]) if len(center) else None)


def smolyak_degree(dim: int, level: int, degree_of_level: Callable[[int], int]) -> int:
    """Total degree the Smolyak rule integrates exactly (rules symmetric).

    A monomial prod x_i^{a_i} (all a_i even) is exact iff some multi-index of
    the formula has degree_of_level(l_i) >= a_i for all i, i.e. iff
    sum_i excess(a_i) <= level - 1 with excess(a) = min{l - 1 : d_l >= a}.
    Odd monomials are exact by symmetry. The first failing even total degree
    is found by a small knapsack over the coordinates.
    """
    # cheapest exponent (cost) that pushes one coordinate's excess to at least g
    cost = {g: degree_of_level(g) + 2 - degree_of_level(g) % 2 for g in range(1, level + 1)}
    best = {0: 0}  # excess reached (capped at level) -> least total degree
    for _ in range(min(dim, level)):
        step = dict(best)
        for reached, total in best.items():
            for g, c in cost.items():
                key = min(level, reached + g)
                step[key] = min(step.get(key, math.inf), total + c)
        best = step
    return best[level] - 1
