"""pinnzo bench distributed: steps per second on 1 and 2 processes (1 thread each) and the bytes
each step sends, for the zeroth-order, Gauss-Newton, first-order and MNIST methods.

Each case is an ordinary run, started once alone and once by torchrun with 2 processes
(``--dist-split points`` and ``queries``), so the figures include everything a user's
run pays. Two byte counts per step come back: ``payload`` (what each rank handed to
the process group's collectives, counted at the calls) and ``loopback`` (what the
operating system counted on the loopback interface during the 2-process run, gloo's
framing and the rendezvous included; other traffic on the machine would add to it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pinnzo.errors import PinnzoError


@dataclass(frozen=True)
class Case:
    name: str
    command: tuple[str, ...]  # pinnzo arguments, without --out


def cases(steps: int, data_dir: Path | None) -> list[Case]:
    common = ("--steps", str(steps), "--set", f"eval_every={steps}", "--set", "eval_points=1000", "--no-plots", "-q")
    listed = [
        Case("zo-signrge hjb20 sparse-grid", ("solve", "problems/hjb20.yaml", *common)),
        Case("zo-gn hjb20 sparse-grid", ("solve", "problems/hjb20.yaml", "--optimizer", "zo-gn", "--dtype", "float64",
                                         *common)),
        Case("adam poisson2d ad", ("solve", "problems/poisson2d.yaml", "--batch", "2048", "--set",
                                   "condition_batch=512", *common)),
    ]
    if data_dir is not None:
        listed.append(Case("mnist hybrid tt", ("mnist", "--data-dir", str(data_dir), "--optimizer", "hybrid",
                                               "--epochs", "1", "--set", f"steps_per_epoch={steps}",
                                               "--set", f"switch_step={steps // 2}", "--set", "validation=1000",
                                               "--no-plots", "-q")))
    return listed


def _loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (Linux /proc/net/dev; 0 elsewhere)."""
    try:
        for line in Path("/proc/net/dev").read_text().splitlines():
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _run(arguments: list[str], out: Path, processes: int, split: str) -> dict:
    """One run; its summary plus the loopback bytes counted while it ran."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "pinnzo", *arguments, "--out", str(out)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "pinnzo", *arguments, "--out", str(out), "--dist-split", split]
    before = _loopback_bytes()
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise PinnzoError(f"bench distributed: {' '.join(arguments[:2])} on {processes} processes failed: "
                          f"{(done.stderr.strip().splitlines() or ['?'])[-1][:300]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["loopback_bytes"] = _loopback_bytes() - before
    return summary


def distributed_benchmark(steps: int = 20, data_dir: Path | None = None, echo=print) -> dict:
    """The JSON report: per case, steps/s alone and on 2 processes (each split), efficiency, bytes."""
    results = []
    with tempfile.TemporaryDirectory(prefix="pinnzo-bench-distributed-") as scratch:
        for case in cases(steps, data_dir):
            record = {"case": case.name, "command": " ".join(case.command)}
            alone = _run(list(case.command), Path(scratch) / f"{len(results)}-1", 1, "points")
            record["steps_per_s_1"] = alone["steps"] / alone["wall_time_s"]
            for split in ("points", "queries"):
                pair = _run(list(case.command), Path(scratch) / f"{len(results)}-2-{split}", 2, split)
                rate = pair["steps"] / pair["wall_time_s"]
                record[split] = {"steps_per_s_2": rate, "efficiency": rate / (2 * record["steps_per_s_1"]),
                                 "payload_bytes_per_step": pair["bytes_per_step"],
                                 "loopback_bytes_per_step": pair["loopback_bytes"] / max(1, pair["steps"])}
                echo(f"{case.name}: {split}: {rate:.2f} steps/s on 2 processes against "
                     f"{record['steps_per_s_1']:.2f} alone (efficiency {record[split]['efficiency']:.0%}), "
                     f"{pair['bytes_per_step']:,.0f} bytes/step")
            results.append(record)
    return {"steps": steps, "threads_per_process": 1, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": results}
