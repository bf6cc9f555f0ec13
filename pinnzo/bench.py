"""Benchmarks that write JSON. Never part of the test suite (no timed tests).

Each suite returns a dict; ``write_report`` adds machine information. Figures
that compare two things are ratios measured in the same process, so they stay
meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def machine_info() -> dict:
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def best_time(function: Callable[[], object], repeats: int = 5, budget_s: float = 20.0) -> float:
    """Least wall time of ``function()`` over up to ``repeats`` calls (seconds)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return min(times)


def write_report(path: Path, report: dict) -> None:
    """Write ``{"machine": ..., **report}`` as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        json.dump({"machine": machine_info(), **report}, file, indent=2)
    os.replace(temporary, path)


def quadrature_benchmark() -> dict:
    """Build times (best of several) and cache-load times of the sparse grids.

    Targets (DESIGN.md, 2-core machine): D = 21 level 5 under 0.4 s, D = 100
    level 3 under 0.5 s, cache load under 20 ms.
    """
    from pinnzo.quadrature import build_rule, cache
    from pinnzo.quadrature.families import FAMILIES

    cases = [("gauss-hermite", 21, 3), ("gauss-hermite", 21, 4), ("gauss-hermite", 21, 5),
             ("gauss-hermite", 100, 3), ("gauss-hermite", 100, 4),
             ("genz-keister", 21, 3), ("genz-keister", 21, 5), ("lu-darmofal", 21, 3)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for family, dim, level in cases:
            FAMILIES[family].build(dim, level)  # warm 1-D rule caches
            build_s = best_time(lambda: build_rule(family, dim, level), repeats=3)
            rule = build_rule(family, dim, level)
            path = cache.cache_path(Path(folder), family, dim, level)
            cache.save(rule, path)
            load_s = best_time(lambda: cache.load(path), repeats=5)
            rows.append({"family": family, "dim": dim, "level": level, "nodes": rule.size,
                         "degree": rule.degree, "sum_abs_weights": rule.abs_weight_sum,
                         "build_s": build_s, "cache_load_s": load_s,
                         "cache_file_bytes": path.stat().st_size})
            del rule
    return {"suite": "quadrature", "rules": rows,
            "targets": {"gauss-hermite d21 l5 build_s": 0.4, "gauss-hermite d100 l3 build_s": 0.5,
                        "cache_load_s": 0.02}}
