"""How many network rows and parameter vectors one batched evaluation may hold.

A loss query evaluates the network on ``rows_per_query`` rows (points x the
backend's evaluations per point); a zeroth-order step evaluates several
queries together (vmap over parameter vectors). Both are bounded by the memory
budget, counting about three activations per unit of every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Batch parameter vectors only until a forward has this many rows: beyond it the
# GEMMs are already large and vmap only adds memory traffic (pinnzo bench zo).
BATCH_ROWS = 16384


@dataclass(frozen=True)
class ChunkPlan:
    """queries_per_chunk: parameter vectors per vmapped forward; rows_per_chunk: rows per call of f."""

    queries_per_chunk: int
    rows_per_chunk: int


def row_bytes(sizes: list[int], dtype: torch.dtype) -> int:
    """Memory of one network row: about 3 activations per unit of each layer."""
    return 3 * sum(sizes) * torch.finfo(dtype).bits // 8


def plan_chunks(rows_per_query: int, sizes: list[int], dtype: torch.dtype, memory_mb: int) -> ChunkPlan:
    """The chunking of batched loss queries within ``memory_mb``."""
    per_row = row_bytes(sizes, dtype)
    budget = memory_mb * 2**20
    queries = max(1, min(budget // max(1, rows_per_query * per_row), BATCH_ROWS // max(1, rows_per_query)))
    return ChunkPlan(queries, max(4096, budget // per_row // queries))
