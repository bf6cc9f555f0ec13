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

# The build holds every tensor-product point as a row of D int8 ids plus its
# weight and merge index; refuse builds that would need more than this.
MEMORY_LIMIT_BYTES = int(os.environ.get("PINNZO_QUADRATURE_MAX_BYTES", 4 * 2**30))


@dataclass(frozen=True)
class Family:
    """How to build the rules of one family and which levels it has."""

    build: Callable[[int, int], Rule]
    max_level: int
    min_dim: int = 1
    levels: tuple[int, ...] | None = None  # when only some levels exist


def _smolyak_family(name: str, level_rule, max_level: int) -> Callable[[int, int], Rule]:
    def build(dim: int, level: int) -> Rule:
        needed = raw_point_count(dim, level, level_rule) * (dim + 24)
        if needed > MEMORY_LIMIT_BYTES:
            raise PinnzoError(
                f"{name} level {level} in {dim} dimensions needs about {needed / 2**30:.1f} GiB "
                f"to build (limit {MEMORY_LIMIT_BYTES / 2**30:.1f} GiB, "
                f"env PINNZO_QUADRATURE_MAX_BYTES); use a lower level"
            )
        degree = smolyak_degree(dim, level, lambda l: level_rule(l).degree)
        return smolyak(dim, level, level_rule, name, degree)
    return build


FAMILIES: Registry[Family] = Registry("quadrature family")
# Smolyak sparse grid of 1, 2, 3, ... point Gauss-Hermite rules (the paper's)
FAMILIES.register("gauss-hermite", Family(
    _smolyak_family("gauss-hermite", gauss_hermite_level, 20), max_level=20))
# Smolyak sparse grid of the nested Genz-Keister rules (level 3: 2D^2+1 nodes)
FAMILIES.register("genz-keister", Family(
    _smolyak_family("genz-keister", genz_keister_level, GENZ_KEISTER_MAX_LEVEL), max_level=GENZ_KEISTER_MAX_LEVEL))
# degree-5 simplex cubature, D^2+3D+3 nodes, sum|w| ~ 2 (level 3 only)
FAMILIES.register("lu-darmofal", Family(
    lambda dim, level: lu_darmofal(dim), max_level=3, min_dim=2, levels=(3,)))


def check_request(family: str, dim: int, level: int) -> Family:
    """Validate (family, dim, level) and return the family, or raise PinnzoError."""
    spec = FAMILIES[family]
    if dim < spec.min_dim:
        raise PinnzoError(f"quadrature dim must be an integer >= {spec.min_dim} for {family}; found {dim}")
    if spec.levels is not None and level not in spec.levels:
        raise PinnzoError(f"{family} has only level(s) {', '.join(map(str, spec.levels))} "
                          f"(degree 5); found level {level}")
    if not 1 <= level <= spec.max_level:
        raise PinnzoError(f"quadrature level must be an integer in 1..{spec.max_level} for {family}; found {level}")
    return spec
