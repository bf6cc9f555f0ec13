"""Sparse-grid and cubature rules for Gaussian expectations, cached on disk.

    rule = get_rule("gauss-hermite", dim=21, level=3)   # 925 nodes, degree 5
    E f(x + sigma z) ~= sum_j rule.weights[j] * f(x + sigma * rule.nodes[j])
"""

from __future__ import annotations

import functools
from pathlib import Path

from pinnzo.quadrature import cache
from pinnzo.quadrature.families import FAMILIES, check_request
from pinnzo.quadrature.rule import Rule

__all__ = ["FAMILIES", "Rule", "build_rule", "get_rule", "rule_path"]


def build_rule(family: str, dim: int, level: int) -> Rule:
    """Build a rule from scratch (no cache)."""
    return check_request(family, dim, level).build(dim, level)


def rule_path(family: str, dim: int, level: int, cache_dir: Path | str | None = None) -> Path:
    return cache.cache_path(Path(cache_dir) if cache_dir else cache.default_cache_dir(), family, dim, level)


def get_rule(family: str, dim: int, level: int, cache_dir: Path | str | None = None) -> Rule:
    """The rule for N(0, I_dim), loaded from the cache or built and cached."""
    check_request(family, dim, level)
    return _cached_rule(family, dim, level, str(rule_path(family, dim, level, cache_dir)))


@functools.lru_cache(maxsize=32)
def _cached_rule(family: str, dim: int, level: int, path: str) -> Rule:
    spec = FAMILIES[family]
    expect = (family, dim, level) if spec.degree is None else (family, dim, level, spec.degree(dim, level))
    rule = cache.load(Path(path), expect)  # a file that holds anything else is rebuilt, with a warning
    if rule is None:
        rule = build_rule(family, dim, level)
        try:
            cache.save(rule, Path(path))
        except OSError as error:
            cache._log.warning("could not write quadrature cache %s (%s); using the rule from memory",
                               path, error.strerror or error)
    return rule
