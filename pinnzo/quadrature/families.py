"""The registry of quadrature families: name -> builder(dim, level) -> Rule."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from pinnzo.errors import PinnzoError
from pinnzo.quadrature.cubature import lu_darmofal
from pinnzo.quadrature.rule import Rule
from pinnzo.quadrature.rules1d import (GENZ_KEISTER_MAX_LEVEL, gauss_hermite_level,
                                       genz_keister_level)
from pinnzo.quadrature.smolyak import raw_point_count, smolyak, smolyak_degree
from pinnzo.registry import Registry

# Refuse requests whose estimated peak memory (see the Family.memory estimates)
# is above this; env PINNZO_QUADRATURE_MAX_BYTES overrides it.
MEMORY_LIMIT_BYTES = 4 * 2**30
MEMORY_LIMIT_ENV = "PINNZO_QUADRATURE_MAX_BYTES"


@dataclass(frozen=True)
class Family:
    """How to build the rules of one family and which levels it has.

    ``memory(dim, level)``: an upper estimate of the peak bytes a build of the
    rule and its cache file needs; ``degree(dim, level)``: the total degree the
    rule integrates exactly (checked against cache files).
    """

    build: Callable[[int, int], Rule]
    max_level: int
    min_dim: int = 1
    levels: tuple[int, ...] | None = None  # when only some levels exist
    memory: Callable[[int, int], int] = lambda dim, level: 0
    degree: Callable[[int, int], int] | None = None


def memory_limit() -> int:
    """The largest estimated build memory allowed, in bytes."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not text:
        return MEMORY_LIMIT_BYTES
    try:
        limit = int(float(text))
    except (ValueError, OverflowError):
        limit = 0
    if limit <= 0:
        raise PinnzoError(f"env {MEMORY_LIMIT_ENV}: expected a positive number of bytes; found {text[:40]!r}")
    return limit


def check_memory(family: str, dim: int, level: int, needed: int) -> None:
    """PinnzoError when ``needed`` bytes exceed the limit."""
    limit = memory_limit()
    if needed > limit:
        raise PinnzoError(
            f"{family} level {level} in {dim} dimensions needs about {needed / 2**30:.3g} GiB "
            f"to build (limit {limit / 2**30:.3g} GiB, env {MEMORY_LIMIT_ENV}); use a lower level or dim")


# Bytes per tensor-product point while the Smolyak formula is assembled and
# merged (int32 keys of ``width`` slots, weights, sort and merge indices,
# Python combination tuples), and per entry of the n x D node matrix (the
# float64 nodes, int8 ids and int16 temporaries, the encoded cache file).
_BYTES_PER_RAW_POINT, _BYTES_PER_KEY_SLOT = 160, 24
_BYTES_PER_NODE_ENTRY = 16
_FIXED_BYTES = 64 * 2**20  # chunk buffers of the cache encode / decode


def _smolyak_memory(level_rule) -> Callable[[int, int], int]:
    def memory(dim: int, level: int) -> int:
        raw = raw_point_count(dim, level, level_rule)  # also bounds the merged node count
        width = max(1, level - 1)
        return (_FIXED_BYTES + raw * (_BYTES_PER_RAW_POINT + _BYTES_PER_KEY_SLOT * width)
                + raw * dim * _BYTES_PER_NODE_ENTRY)
    return memory


def _lu_darmofal_memory(dim: int, level: int) -> int:
    # nodes, the edge midpoints and their temporaries, the mirror search's
    # row keys and negated copy: about 6 float64 copies of the n x D nodes
    nodes = dim * dim + 3 * dim + 3
    return _FIXED_BYTES + nodes * dim * 8 * 6 + nodes * 200


def _smolyak_family(name: str, level_rule, max_level: int) -> Callable[[int, int], Rule]:
    memory = _smolyak_memory(level_rule)

    def build(dim: int, level: int) -> Rule:
        check_memory(name, dim, level, memory(dim, level))
        degree = smolyak_degree(dim, level, lambda l: level_rule(l).degree)
        return smolyak(dim, level, level_rule, name, degree)
    return build


def _build_lu_darmofal(dim: int, level: int) -> Rule:
    check_memory("lu-darmofal", dim, level, _lu_darmofal_memory(dim, level))
    return lu_darmofal(dim)


def _smolyak_degree(level_rule) -> Callable[[int, int], int]:
    return lambda dim, level: smolyak_degree(dim, level, lambda l: level_rule(l).degree)


FAMILIES: Registry[Family] = Registry("quadrature family")
# Smolyak sparse grid of 1, 2, 3, ... point Gauss-Hermite rules (the paper's)
FAMILIES.register("gauss-hermite", Family(
    _smolyak_family("gauss-hermite", gauss_hermite_level, 20), max_level=20,
    memory=_smolyak_memory(gauss_hermite_level), degree=_smolyak_degree(gauss_hermite_level)))
# Smolyak sparse grid of the nested Genz-Keister rules (level 3: 2D^2+1 nodes)
FAMILIES.register("genz-keister", Family(
    _smolyak_family("genz-keister", genz_keister_level, GENZ_KEISTER_MAX_LEVEL), max_level=GENZ_KEISTER_MAX_LEVEL,
    memory=_smolyak_memory(genz_keister_level), degree=_smolyak_degree(genz_keister_level)))
# degree-5 simplex cubature, D^2+3D+3 nodes, sum|w| ~ 2 (level 3 only)
FAMILIES.register("lu-darmofal", Family(
    _build_lu_darmofal, max_level=3, min_dim=2, levels=(3,), memory=_lu_darmofal_memory,
    degree=lambda dim, level: 5))


def check_request(family: str, dim: int, level: int) -> Family:
    """Validate (family, dim, level) and its memory estimate; return the family, or raise PinnzoError."""
    spec = FAMILIES[family]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < spec.min_dim:
        raise PinnzoError(f"quadrature dim must be an integer >= {spec.min_dim} for {family}; found {dim}")
    if spec.levels is not None and level not in spec.levels:
        raise PinnzoError(f"{family} has only level(s) {', '.join(map(str, spec.levels))} "
                          f"(degree 5); found level {level}")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= spec.max_level:
        raise PinnzoError(f"quadrature level must be an integer in 1..{spec.max_level} for {family}; found {level}")
    check_memory(family, dim, level, spec.memory(dim, level))
    return spec
