"""The activation chosen by pilot runs (``activation: auto``).

Which activation suits a PDE is not known before training. sin units follow oscillating, smooth
solutions (heat modes, waves) with fewer steps; tanh units follow fronts and layers (docs/method.md,
"The activation, chosen by pilot runs"). With ``activation: auto`` a run first trains one pilot per
candidate in ``CANDIDATES``, each for ``pilot_share`` of the time budget (of the steps, when the run
has no budget), from the same seed. The pilot whose parameters give the lowest loss on fresh points,
drawn alike for every pilot and trained on by none, wins. Its run is then continued to the full
budget in the run folder, optimizer state and metrics included: only the other pilots' time is
spent on the choice.

The run folder: ``RUN/pilots/<activation>/`` holds each pilot's run while they train; the winner's
files then move up into ``RUN/``, and ``config.yaml`` keeps the settings asked for (activation
auto) beside a ``pilots`` record of the choice, from which ``effective`` rebuilds the settings the
run trained with. A run interrupted during its pilots resumes them; one interrupted later resumes
the winner's run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from pinnzo import runs
from pinnzo.distributed import current
from pinnzo.errors import PinnzoError
from pinnzo.loop import Diverged, Interrupted
from pinnzo.problem import Problem
from pinnzo.residual import sample_batch
from pinnzo.settings import Settings

AUTO = "auto"
CANDIDATES = ("tanh", "sin")  # in this order; a tie goes to the first
FOLDER = "pilots"
DIVERGED = "diverged.json"
HELD_OUT_SEED = 7919  # added to the run's seed for the fresh points that score the pilots


def effective(settings: Settings, record: dict | None) -> Settings:
    """The settings a run trained with: ``settings`` as asked, with the pilots' choice applied
    (the chosen activation and the budget left to it) when ``record`` holds one."""
    if settings.activation != AUTO:
        return settings
    if not record:
        raise PinnzoError("activation auto: the run folder holds no record of the pilots' choice")
    return settings.replace({"activation": record["chosen"], "time_budget": record["time_budget"]})


def overhead(record: dict | None) -> tuple[float, int]:
    """(seconds, loss queries) of a choice's losing pilots: what the choice cost beyond the run's own
    figures, which include the winner's pilot. (0, 0) without a choice."""
    losers = [name for name in record["candidates"] if name != record["chosen"]] if record else []
    return (sum(record["seconds"][name] for name in losers),
            sum(max(0, record["queries"][name]) for name in losers))


def pilot_settings(settings: Settings, activation: str) -> Settings:
    """One pilot's settings: the run's, with ``activation`` and a share of its budget (or steps), and no
    forward finish (the winner's run goes on to the run's own, at the end of the full budget)."""
    if settings.time_budget:
        share = {"time_budget": settings.pilot_share * settings.time_budget}
    else:
        share = {"steps": max(1, round(settings.pilot_share * settings.steps))}
    return settings.replace({"activation": activation, "forward_finish": 0.0, **share})


def choose(problem: Problem, settings: Settings, run_dir: Path, resume: bool, quiet: bool,
           solve: Callable) -> dict:
    """Train (or finish) the pilots of ``settings`` (activation auto) in ``run_dir``/pilots, move the
    winner's run up into ``run_dir`` and return the choice's record (config.yaml's ``pilots``).

    ``solve(problem, settings, out=, resume=, quiet=)`` trains one run and returns its ``Run``.
    A run folder whose choice was made returns its record unchanged.
    """
    run_dir = Path(run_dir)
    world = current()
    if resume:
        saved = runs.read_config(run_dir) if (run_dir / runs.CONFIG).is_file() else {}
        if saved.get(FOLDER):
            if world.writer:  # the winner's pilot folder, moved up but for its summary
                shutil.rmtree(run_dir / FOLDER / saved[FOLDER]["chosen"], ignore_errors=True)
            return saved[FOLDER]
        if saved or not (run_dir / FOLDER).is_dir():
            raise PinnzoError(f"--resume {run_dir}: not a run started with activation auto (no pilot runs there)")
    elif world.writer:
        runs.refuse_nonempty(run_dir)
    scores, seconds, queries = {}, {}, {}
    for activation in CANDIDATES:
        folder = run_dir / FOLDER / activation
        scores[activation], seconds[activation], queries[activation] = _pilot(
            problem, pilot_settings(settings, activation), folder, quiet, solve)
    finite = {name: score for name, score in scores.items() if math.isfinite(score)}
    if not finite:
        raise Diverged(f"activation auto: every pilot diverged ({', '.join(CANDIDATES)}); see {run_dir / FOLDER}")
    chosen = min(finite, key=finite.get)
    spent = sum(seconds[name] for name in CANDIDATES if name != chosen)
    record = {"candidates": list(CANDIDATES), "share": settings.pilot_share, "held_out_loss": scores,
              "seconds": seconds, "queries": queries, "chosen": chosen,
              "time_budget": max(settings.time_budget - spent, 0.0) if settings.time_budget else 0.0}
    record = json.loads(world.broadcast_text(json.dumps(record) if world.writer else ""))  # rank 0's clock
    chosen, scores = record["chosen"], record["held_out_loss"]  # rank 0's, on every rank
    if world.writer:
        _promote(run_dir, chosen, problem, settings, record)
    if not quiet and world.writer:
        others = ", ".join(f"{name} {scores[name]:.3e}" for name in CANDIDATES if name != chosen)
        left = f"to {record['time_budget']:.0f} s in all" if settings.time_budget else f"to {settings.steps} steps"
        print(f"activation: {chosen} (loss on fresh points {scores[chosen]:.3e}; {others}); "
              f"its pilot run goes on {left}", file=sys.stderr, flush=True)
    return record


def held_out_loss(run) -> float:
    """A pilot's loss at its final parameters on fresh points: as many as a step's, drawn from
    their own seed (the same points for every pilot of a run); inf when not finite."""
    settings, components = run.settings, run.components
    generator = torch.Generator().manual_seed(settings.seed + HELD_OUT_SEED)
    batch = sample_batch(run.problem, settings.batch, settings.condition_batch, generator, components.dtype,
                         components.device)
    objective = components.objective
    batch = batch.shard(objective.world) if objective.world.sharded else batch
    score = objective.loss(run.theta, batch).item()
    return score if math.isfinite(score) else math.inf


def _pilot(problem: Problem, settings: Settings, folder: Path, quiet: bool,
           solve: Callable) -> tuple[float, float, int]:
    """Train one pilot (or finish it; a finished one is read back): (its held-out loss, inf when it
    diverged; its seconds of training; its loss queries)."""
    from pinnzo.pinn import load_run

    world = current()
    state = world.broadcast_text(_state(folder) if world.writer else "")
    if state == "diverged":
        record = json.loads((folder / DIVERGED).read_text())
        return math.inf, record["seconds"], record["queries"]
    if state != "finished":
        if state == "new" and world.writer and folder.exists():
            shutil.rmtree(folder)  # a pilot killed before its first checkpoint
        started = time.perf_counter()
        try:
            run = solve(problem, settings, out=folder, resume=state == "resume", quiet=quiet)
        except Interrupted:
            if not quiet and world.writer:
                print(f"(a pilot of the run in {folder.parent.parent}: continue that with --resume "
                      f"{folder.parent.parent})", file=sys.stderr, flush=True)
            raise
        except Diverged as error:
            seconds, queries = time.perf_counter() - started, -1  # -1: not counted
            if world.writer:
                record = {"message": str(error), "seconds": seconds, "queries": queries}
                runs.atomic_write(folder / DIVERGED, json.dumps(record).encode())
            return math.inf, seconds, queries
    else:
        run = load_run(folder)
    return held_out_loss(run), float(run.summary["wall_time_s"]), int(run.summary["total_queries"])


def _state(folder: Path) -> str:
    """A pilot folder's state: finished, diverged, resume (a checkpoint) or new."""
    if (folder / DIVERGED).is_file():
        return "diverged"
    if (folder / "summary.json").is_file():
        return "finished"
    return "resume" if (folder / runs.CHECKPOINT).is_file() else "new"


def _promote(run_dir: Path, chosen: str, problem: Problem, settings: Settings, record: dict) -> None:
    """Move the winning pilot's run up into ``run_dir`` as the run to continue: its config.yaml,
    rewritten first to the settings asked for with the choice's record, moves last; its summary
    stays behind (the run is not finished) and goes with the pilot's folder."""
    from pinnzo.pinn import run_config

    source = run_dir / FOLDER / chosen
    runs.write_config(source, {"task": "pinn", **run_config(problem, settings), FOLDER: record})
    for path in sorted(source.iterdir(), key=lambda path: path.name == runs.CONFIG):
        if path.name not in ("summary.json", runs.LOCK):
            os.replace(path, run_dir / path.name)
    shutil.rmtree(source)
