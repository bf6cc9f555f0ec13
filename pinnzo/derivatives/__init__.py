"""Derivative backends: one protocol, a registry {"ad", "fd", "stein", "sparse-grid"}."""

from __future__ import annotations

from typing import Callable

from pinnzo.derivatives.autodiff import Autodiff
from pinnzo.derivatives.base import DerivativeBackend
from pinnzo.derivatives.finite_difference import FiniteDifference
from pinnzo.derivatives.stein import MonteCarloStein, SparseGridStein, SteinEstimator
from pinnzo.registry import Registry
from pinnzo.settings import Settings

# name -> factory(settings, input dimension D, rows per evaluation chunk)
BACKENDS: Registry[Callable[[Settings, int, int], DerivativeBackend]] = Registry("backend")
BACKENDS.register("ad", lambda s, dim, rows: Autodiff())
BACKENDS.register("fd", lambda s, dim, rows: FiniteDifference(s.fd_step, s.fd_step, rows))
BACKENDS.register("stein", lambda s, dim, rows: MonteCarloStein(dim, s.sigma, s.samples, s.seed, rows))
BACKENDS.register("sparse-grid", lambda s, dim, rows: SparseGridStein(dim, s.sigma, s.rule, s.level, rows))


def make_backend(settings: Settings, dim: int, rows_per_chunk: int = 1 << 20) -> DerivativeBackend:
    """The backend named by ``settings.backend`` for inputs of dimension ``dim``."""
    return BACKENDS[settings.backend](settings, dim, rows_per_chunk)


__all__ = ["BACKENDS", "Autodiff", "DerivativeBackend", "FiniteDifference", "MonteCarloStein",
           "SparseGridStein", "SteinEstimator", "make_backend"]
