"""pinnzo bench accuracy: every shipped problem x training method, each cell a wall-time budget.

A *method* is a fixed recipe of settings (network, derivative backend, optimizer,
precision), the same for every problem: methods are tuned, problem files are
not. Each cell is an ordinary run folder ``OUT/<problem>/<method>/`` trained
until its time budget (``time_budget``) or until the optimizer can make no more
progress, so that:

- a finished cell is skipped on a re-run, an interrupted one resumed (reproduce.run_cell);
- the figures are read from the runs: final and best relative L2 against the exact
  solution, the training time at which the validation error first fell below 1e-2
  and 1e-3, loss queries and steps.

Writes ``OUT/accuracy.json`` and ``OUT/accuracy.md``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from pinnzo import runs
from pinnzo.errors import PinnzoError
from pinnzo.fileio import atomic_write, make_folder
from pinnzo.registry import Registry

THRESHOLDS = (1e-2, 1e-3)
STEPS = 1_000_000  # a cell ends by its time budget (or convergence), not by a step count


@dataclass(frozen=True)
class Method:
    """A training recipe: the settings it sets on top of the problem file's."""

    label: str
    changes: Mapping
    back_propagation: bool


# The first-order reference of the issue tracker's comparison: a dense 64-64 tanh PINN.
_DENSE = {"network": "mlp", "width": 64, "depth": 2, "activation": "tanh", "backend": "ad", "dtype": "float32"}
# The paper's method at pinnzo's CPU defaults (the demo's recipe).
_PAPER = {"network": "tt", "width": 32, "depth": 2, "rank": 2, "activation": "sin", "backend": "sparse-grid",
          "rule": "lu-darmofal", "sigma": 0.1, "dtype": "float32", "lr": 0.005, "lr_decay": 0.5,
          "decay_every": 150, "directions": 10, "mu": 0.01}
METHODS: Registry[Method] = Registry("method")
METHODS.register("adam", Method("FO Adam + AD, dense 64-64 tanh", {**_DENSE, "optimizer": "adam", "lr": 1e-3,
                                                                   "eval_every": 100}, True))
# L-BFGS fits a fixed point set: 2,000 + 400 points, fresh every 1,000 steps. On the default 256 + 64
# the 4,417 parameters fit the points and miss the PDE (allen-cahn1d: loss 3e-4, relative L2 1.4).
METHODS.register("adam-lbfgs", Method(
    "FO Adam then L-BFGS + AD, dense 64-64 tanh, float64, 2,000 + 400 points",
    {**_DENSE, "dtype": "float64", "optimizer": "adam-lbfgs", "lr": 1e-3, "switch_step": 1000, "patience": 1000,
     "batch": 2000, "condition_batch": 400, "resample_every": 1000, "eval_every": 50}, True))
METHODS.register("zo-signrge", Method("ZO-signRGE + sparse-grid Stein, TT 32 (the paper's method)",
                                      {**_PAPER, "optimizer": "zo-signrge", "eval_every": 50}, False))
METHODS.register("hybrid", Method("ZO hybrid (signRGE, then CGE) + sparse-grid Stein, TT 32",
                                  {**_PAPER, "optimizer": "hybrid", "patience": 100, "cge_lr": 0.001,
                                   "cge_mu": 0.001, "eval_every": 50}, False))
# 1,000 points per condition: with 200, a 20-D Poisson problem fitted its boundary points (5 a face) and
# missed the boundary between them (relative L2 0.2 against 7.3e-3 with 1,000, 120 s).
METHODS.register("zo-gn", Method(
    "ZO Gauss-Newton + FD, dense 32-32 tanh, float64, 1,000 + 1,000 points (doubled when overfitted), Jacobian "
    "columns by the chain rule at the moved layer (forward computations only)",
    {"network": "mlp", "width": 32, "depth": 2, "activation": "tanh", "backend": "fd", "dtype": "float64",
     "optimizer": "zo-gn", "batch": 1000, "condition_batch": 1000, "resample_every": 20, "eval_every": 5}, False))

# First order at its best on small problems: zo-gn's recipe with the Jacobian by autograd (not in the default grid).
METHODS.register("gn", Method("FO Gauss-Newton (Jacobian by autograd) + FD, dense 32-32 tanh, float64, "
                              "1,000 + 1,000 points (doubled when overfitted)",
                              {**METHODS["zo-gn"].changes, "optimizer": "gn"}, True))

# The same recipes with sin activations (the network's only change): zo-gn-sin did better than zo-gn on six
# shipped problems and worse on nine, most on a steep layer (README, "Accuracy: every problem x method").
METHODS.register("zo-gn-sin", Method("zo-gn with sin activations", {**METHODS["zo-gn"].changes, "activation": "sin"},
                                     False))
METHODS.register("gn-sin", Method("gn with sin activations", {**METHODS["gn"].changes, "activation": "sin"}, True))
# The activation chosen per problem by two pilot runs of 30 s (tanh, sin), the winner trained on (pilots.py).
METHODS.register("zo-gn-auto", Method("zo-gn with the activation chosen by pilots (tanh or sin, 10% of the budget "
                                      "each)", {**METHODS["zo-gn"].changes, "activation": "auto"}, False))

# Loss-only adaptivity (adaptive.py) on top of the recipes above: RAD resampling of the interior
# points and ReLoBRaLo term weights. Adam's RAD resamples every 10 steps (a pool of 10 x batch costs
# 10 queries, one per step on average); zo-gn's at its own resamples (every 20 steps).
_ZO_GN = dict(METHODS["zo-gn"].changes)
METHODS.register("adam-rad", Method("adam, interior points by RAD (pool 10 x batch, k = c = 1) every 10 steps",
                                    {**METHODS["adam"].changes, "resample": "rad", "resample_every": 10}, True))
METHODS.register("adam-relobralo", Method("adam, term weights by ReLoBRaLo (alpha 0.999, tau 0.1, rho 0.99)",
                                          {**METHODS["adam"].changes, "loss_weights": "relobralo"}, True))
METHODS.register("zo-gn-rad", Method("zo-gn, interior points by RAD (pool 10 x batch, k = c = 1) at each resample",
                                     {**_ZO_GN, "resample": "rad"}, False))
METHODS.register("zo-gn-relobralo", Method("zo-gn, term weights by ReLoBRaLo (alpha 0.9, tau 0.1, rho 0.99) at "
                                           "each resample", {**_ZO_GN, "loss_weights": "relobralo",
                                                             "relobralo_alpha": 0.9}, False))

# The equation's residual in the L1 norm (reweighted least squares at each resample; adaptive.lp_weights).
METHODS.register("zo-gn-l1", Method("zo-gn, the equation's residual in the L1 norm (reweighted least squares)",
                                    {**_ZO_GN, "residual_power": 1.0}, False))
METHODS.register("gn-l1", Method("gn, the equation's residual in the L1 norm (reweighted least squares)",
                                 {**METHODS["gn"].changes, "residual_power": 1.0}, True))


def shipped_problems(folder: Path) -> list[Path]:
    """The problem files with an exact solution (the others have nothing to measure against)."""
    from pinnzo.problem import load_problem

    return [path for path in sorted(folder.glob("*.yaml")) if load_problem(path).has_exact]


def cell_settings(problem, method: Method, budget: float, device: str | None = None):
    from pinnzo.pinn import resolve_settings

    changes = {**method.changes, "steps": STEPS, "time_budget": budget, "eval_points": 2000}
    if device:
        changes["device"] = device
    return resolve_settings(problem, changes)


def time_to(metrics: list[dict], threshold: float) -> float | None:
    """Training seconds until the validation error first fell to ``threshold`` (None: never)."""
    return next((row["wall_s"] for row in metrics if row["val_rel_l2"] <= threshold), None)


def cell_record(problem_name: str, method_name: str, folder: Path, status: str, summary: dict) -> dict:
    """A cell's figures. A run whose activation pilots chose (activation auto) counts the losing
    pilots' seconds in its times, as if they had all run before the winner's."""
    from pinnzo.pilots import overhead

    record = {"problem": problem_name, "method": method_name, "status": status, "run": str(folder)}
    if status == "diverged":
        return {**record, "message": summary.get("message")}
    metrics = runs.read_metrics(folder, ("wall_s", "val_rel_l2"))
    spent, queries = overhead(summary.get("pilots"))
    later = lambda seconds: None if seconds is None else seconds + spent
    if summary.get("pilots"):
        record["activation"] = summary["activation"]
    return {**record, "final_rel_l2": summary["final_rel_l2"], "best_rel_l2": summary["best_rel_l2"],
            **{f"seconds_to_{t:g}": later(time_to(metrics, t)) for t in THRESHOLDS},
            "wall_time_s": later(summary["wall_time_s"]), "steps": summary["steps"],
            "queries": summary["total_queries"] + queries, "stopped_by": summary.get("stopped_by"),
            "parameters": summary["parameters"]}


def run_accuracy(problem_paths: list[Path], method_names: list[str], budget: float, out: Path,
                 echo: Callable[[str], None] = print, quiet: bool = True, device: str | None = None,
                 report_only: bool = False) -> list[Path]:
    """Run (or skip) every cell; write accuracy.json and accuracy.md in ``out``. ``report_only``: run
    nothing, report the finished cells and mark the others "not run"."""
    from pinnzo.loop import Diverged
    from pinnzo.pinn import solve
    from pinnzo.problem import load_problem
    from pinnzo.reproduce import run_cell

    methods = [(name, METHODS[name]) for name in method_names]
    problems = [load_problem(path) for path in problem_paths]
    missing = [problem.name for problem in problems if not problem.has_exact]
    if missing:
        raise PinnzoError(f"bench accuracy: no exact solution to measure against in {', '.join(missing)}")
    records = []
    for problem in problems:
        for name, method in methods:
            folder = out / problem.name / name
            settings = cell_settings(problem, method, budget, device)
            if report_only and not finished(folder, settings):
                records.append({"problem": problem.name, "method": name, "status": "not run", "run": str(folder)})
                echo(f"{problem.name} / {name}: not run")
                continue
            started = time.perf_counter()

            def train(resume, p=problem, s=settings, f=folder):
                try:
                    return solve(p, s, out=f, resume=resume, quiet=quiet).summary
                except Diverged:  # a result of the method: run_cell records it
                    raise
                except PinnzoError as error:  # the cell cannot run as set (its memory, say): the grid goes on
                    raise Refused(str(error)) from None
            diverged_before = (folder / "diverged.json").is_file()
            try:
                result = run_cell(settings, folder, train)
            except Refused as refusal:
                records.append({"problem": problem.name, "method": name, "status": "refused", "run": str(folder),
                                "message": str(refusal)})
                echo(f"{problem.name} / {name}: refused: {refusal}")
                continue
            record = cell_record(problem.name, name, folder, result.status, result.summary)
            records.append(record)
            took = "" if result.status == "skipped" or diverged_before else \
                f" in {time.perf_counter() - started:.0f} s"
            outcome = f": {record['message']}" if result.status == "diverged" else \
                f", relative L2 {_figure(record.get('final_rel_l2'))}"
            echo(f"{problem.name} / {name}: {result.status}{took}{outcome}")
    report = {"budget_s": budget, "methods": {name: {"label": m.label, "settings": dict(m.changes),
                                                     "back_propagation": m.back_propagation} for name, m in methods},
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cells": records}
    from pinnzo.bench import machine_info

    make_folder(out)
    atomic_write(out / "accuracy.json", json.dumps({"machine": machine_info(), **report}, indent=2).encode())
    atomic_write(out / "accuracy.md", markdown(report).encode())
    return [out / "accuracy.json", out / "accuracy.md"]


class Refused(Exception):
    """A cell whose run refused its settings (recorded with the message; the other cells go on)."""


def finished(folder: Path, settings) -> bool:
    """Whether ``folder`` holds a finished (or diverged) run of ``settings`` (another run is refused)."""
    from pinnzo.reproduce import check_saved

    if not ((folder / "summary.json").is_file() or (folder / "diverged.json").is_file()):
        return False
    check_saved(folder, settings.as_dict())
    return True


def _figure(value) -> str:
    return "—" if value is None else f"{value:.1e}"


def _seconds(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def markdown(report: dict) -> str:
    """One row per problem: each method's final relative L2 (seconds to 1e-2 / 1e-3)."""
    names = list(report["methods"])
    lines = [f"Relative L2 error against the exact solution after {report['budget_s']:g} s of training per cell "
             f"(in brackets: seconds until it first fell below 1e-2 / 1e-3, — never; and the activation that "
             f"pilot runs chose, where they did).", "",
             "| problem | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    problems = list(dict.fromkeys(cell["problem"] for cell in report["cells"]))
    for problem in problems:
        cells = {cell["method"]: cell for cell in report["cells"] if cell["problem"] == problem}
        texts = []
        for name in names:
            cell = cells.get(name)
            if cell is None or cell["status"] in ("not run", "refused"):
                texts.append("not run" if cell is None else cell["status"])
            elif cell["status"] == "diverged":
                texts.append("diverged")
            else:
                chosen = f", {cell['activation']}" if cell.get("activation") else ""
                texts.append(f"{_figure(cell['final_rel_l2'])} ({_seconds(cell['seconds_to_0.01'])} / "
                             f"{_seconds(cell['seconds_to_0.001'])}{chosen})")
        lines.append(f"| {problem} | " + " | ".join(texts) + " |")
    lines += [""] + [f"- `{name}`: {method['label']}" for name, method in report["methods"].items()]
    return "\n".join(lines) + "\n"
