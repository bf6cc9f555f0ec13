"""Derivative backends: one protocol, a registry {"ad", "fd", "stein", "sparse-grid"}."""

from __future__ import annotations

from typing import Callable

from pinnzo.derivatives.autodiff import Autodiff
from pinnzo.derivatives.base import DerivativeBackend, StencilBackend
from pinnzo.derivatives.finite_difference import FiniteDifference
from pinnzo.derivatives.memory import ChunkPlan, plan_chunks
from pinnzo.derivatives.stein import MonteCarloStein, SparseGridStein, SteinEstimator
from pinnzo.registry import Registry
from pinnzo.settings import Settings

# name -> factory(settings, input dimension D)
BACKENDS: Registry[Callable[[Settings, int], DerivativeBackend]] = Registry("backend")
BACKENDS.register("ad", lambda s, dim: Autodiff())
BACKENDS.register("fd", lambda s, dim: FiniteDifference(s.fd_step, s.fd_step))
BACKENDS.register("stein", lambda s, dim: MonteCarloStein(dim, s.sigma, s.samples, s.seed))
BACKENDS.register("sparse-grid", lambda s, dim: SparseGridStein(dim, s.sigma, s.rule, s.level))


def make_backend(settings: Settings, dim: int) -> DerivativeBackend:
    """The backend named by ``settings.backend`` for inputs of dimension ``dim``."""
    return BACKENDS[settings.backend](settings, dim)


__all__ = ["BACKENDS", "Autodiff", "ChunkPlan", "DerivativeBackend", "FiniteDifference", "MonteCarloStein",
           "SparseGridStein", "SteinEstimator", "StencilBackend", "make_backend", "plan_chunks"]
