"""pinnzo reproduce: the paper's Tables 1, 2, 4, 5 and 6, cell by cell, beside the published figures.

A table is rows (networks) x columns (training set-ups). Each cell is one run of
``pinnzo solve problems/hjb20.yaml`` or ``pinnzo mnist`` in its own folder,
``OUT/<task>/<row>--<column>/``, so that:

- a cell whose folder holds a finished ``summary.json`` (or a ``diverged.json``)
  is skipped on a re-run, an interrupted one is resumed from its checkpoint;
- cells with the same row and column keys are the same run, shared between
  tables (Table 5's FO+AD column is Table 4's; Table 1's TT-MLP row is in Table 2);
- a folder holding a run with other settings is refused, never overwritten.

The table is written as ``OUT/table-N.md`` (pinnzo / paper in every cell) and
``OUT/table-N.json``, with the ``compare`` plots of its runs in ``OUT/table-N/``.

The published figures below are copied from the paper (section 5). The paper
reports HJB "MSE" / "validation loss": pinnzo reports the validation mean
squared error of u against the exact solution; MNIST: test accuracy (%).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping

from pinnzo import pilots, runs
from pinnzo.errors import PinnzoError
from pinnzo.fileio import atomic_write, make_folder
from pinnzo.registry import Registry

NO_CONVERGENCE = "no conv."  # the paper's empty fields ("Empty fields indicate no convergence")
DIVERGED = "diverge"


@dataclass(frozen=True)
class Row:
    """A network of a table. ``changes`` None: pinnzo cannot build it (``missing`` says why)."""

    key: str  # folder name part, e.g. "tt-r8"
    label: str  # as the paper names it
    changes: Mapping | None
    paper_params: int | None
    paper: tuple  # the published figure per column of the paper, in column order
    missing: str = ""


@dataclass(frozen=True)
class Column:
    """A training set-up. ``beyond``: not in the paper (pinnzo's own column)."""

    key: str
    label: str
    changes: Mapping
    beyond: bool = False


@dataclass(frozen=True)
class Table:
    number: str
    title: str
    task: str  # "hjb20" | "mnist"
    rows: tuple[Row, ...]
    columns: tuple[Column, ...]

    @property
    def metric(self) -> str:
        return "final_mse" if self.task == "hjb20" else "test_accuracy"

    def paper_value(self, row: Row, column: Column):
        """The published figure of a cell (None for pinnzo's own columns)."""
        if column.beyond:
            return None
        index = [c for c in self.columns if not c.beyond].index(column)
        return row.paper[index]


@dataclass(frozen=True)
class Scale:
    """Sizes and schedules of one reproduction scale (``cpu`` or ``paper``)."""

    name: str
    description: str
    width: int  # HJB hidden width (paper: 768)
    ranks: tuple[int, int]  # HJB TT ranks of the two TT-MLP rows (paper: 7,745 and 3,209 parameters)
    pinn: Mapping  # settings of every HJB cell
    fo: Mapping  # first-order HJB cells
    zo: Mapping  # zeroth-order HJB cells
    mnist_ranks: tuple[int, int, int]  # Table 2's rows (paper: 8,314 / 3,962 / 2,698 parameters)
    mnist: Mapping  # settings of every MNIST cell
    mnist_fo: Mapping
    mnist_zo: Mapping
    mnist_hybrid: Mapping


SCALES: dict[str, Scale] = {
    "cpu": Scale(
        name="cpu",
        description="HJB: width 64, 300 steps of 50 points, float32; MNIST: 10 epochs of 100 steps of 64 "
                    "images (1.2 passes over the training split)",
        width=64, ranks=(4, 2),
        pinn={"depth": 2, "activation": "sin", "batch": 50, "steps": 300, "eval_every": 50, "eval_points": 2000,
              "rule": "gauss-hermite", "level": 3, "sigma": 0.1, "samples": 1024, "dtype": "float32", "seed": 0},
        fo={"optimizer": "adam", "lr": 2e-3, "lr_decay": 0.5, "decay_every": 100},
        zo={"optimizer": "zo-signrge", "lr": 0.005, "lr_decay": 0.5, "decay_every": 75, "directions": 10,
            "mu": 0.01},
        mnist_ranks=(10, 6, 4),
        mnist={"epochs": 10, "steps_per_epoch": 100, "batch": 64, "seed": 0},
        mnist_fo={"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "lr_decay": 0.7, "decay_epochs": 3},
        mnist_zo={"lr": 0.003, "mu": 0.01, "directions": 10, "lr_decay": 0.7, "decay_epochs": 3},
        mnist_hybrid={"switch_step": 800, "coordinates": 4096, "cge_lr": 0.05, "cge_mu": 0.01, "momentum": 0.9},
    ),
    "paper": Scale(
        name="paper",
        description="the paper's sizes (HJB: width 768, 10,000 steps of 100 points; MNIST: 100 epochs, "
                    "lr 1e-3 x0.9 every 10 epochs); a job for a GPU",
        width=768, ranks=(8, 3),
        pinn={"depth": 2, "activation": "sin", "batch": 100, "steps": 10000, "eval_every": 500,
              "eval_points": 10000, "rule": "gauss-hermite", "level": 3, "sigma": 0.1, "samples": 1024,
              "dtype": "float32", "seed": 0, "memory_mb": 16384},
        fo={"optimizer": "adam", "lr": 1e-3, "lr_decay": 0.5, "decay_every": 2500},
        zo={"optimizer": "zo-signrge", "lr": 1e-3, "lr_decay": 0.5, "decay_every": 2500, "directions": 10,
            "mu": 0.1},
        mnist_ranks=(10, 6, 4),
        mnist={"epochs": 100, "batch": 64, "seed": 0},
        mnist_fo={"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "lr_decay": 0.9, "decay_epochs": 10},
        mnist_zo={"lr": 1e-3, "mu": 0.1, "directions": 10, "lr_decay": 0.9, "decay_epochs": 10},
        mnist_hybrid={"patience": 2000, "coordinates": 0, "cge_mu": 0.01, "momentum": 0.9},
    ),
}


# ------------------------------------------------------------------ the tables

def _hjb_rows(scale: Scale, published: dict[str, tuple]) -> tuple[Row, ...]:
    high, low = scale.ranks
    return (
        Row("mlp", "MLP", {"network": "mlp", "width": scale.width}, 608257, published["mlp"]),
        Row(f"tt-r{high}", "TT-MLP", {"network": "tt", "width": scale.width, "rank": high}, 7745, published["high"]),
        Row(f"tt-r{low}", "TT-MLP", {"network": "tt", "width": scale.width, "rank": low}, 3209, published["low"]),
    )


def _hjb_column(key: str, label: str, scale: Scale, backend: str, first_order: bool, beyond=False, **extra):
    return Column(key, label, {**(scale.fo if first_order else scale.zo), "backend": backend, **extra}, beyond)


def table4(scale: Scale) -> Table:
    rows = _hjb_rows(scale, {"mlp": (3.58e-04, 5.97e-05, 8.98e-04, 4.27e-04),
                             "high": (4.28e-05, 4.90e-05, 2.28e-04, 7.14e-05),
                             "low": (1.63e-05, 4.56e-05, 3.82e-04, 4.49e-05)})
    columns = (_hjb_column("fo-ad", "FO+AD", scale, "ad", True),
               _hjb_column("fo-fd", "FO+FD", scale, "fd", True),
               _hjb_column("fo-se", "FO+SE", scale, "stein", True),
               _hjb_column("fo-sg", "FO+SG", scale, "sparse-grid", True),
               _hjb_column("fo-sg-ld", "FO+SG, Lu-Darmofal rule", scale, "sparse-grid", True, True,
                           rule="lu-darmofal"))
    return Table("4", "FO training with different loss evaluations (20-dim HJB)", "hjb20", rows, columns)


def table5(scale: Scale) -> Table:
    rows = _hjb_rows(scale, {"mlp": (3.58e-04, 9.23e-02, DIVERGED, 1.62e-01),
                             "high": (4.28e-05, 3.79e-04, 4.35e-04, 4.79e-05),
                             "low": (1.63e-05, 3.82e-04, 2.75e-04, 1.44e-05)})
    columns = (_hjb_column("fo-ad", "FO+AD", scale, "ad", True),
               _hjb_column("zo-fd", "ZO+FD", scale, "fd", False),
               _hjb_column("zo-se", "ZO+SE", scale, "stein", False),
               _hjb_column("zo-sg", "ZO+SG", scale, "sparse-grid", False),
               _hjb_column("zo-sg-ld", "ZO+SG, Lu-Darmofal rule", scale, "sparse-grid", False, True,
                           rule="lu-darmofal"),
               _hjb_column("zo-sg-f64", "ZO+SG, float64", scale, "sparse-grid", False, True, dtype="float64"))
    return Table("5", "ZO training results for the 20-dim HJB PDE", "hjb20", rows, columns)


def dense_width(parameters: int, depth: int, dim: int = 21) -> int:
    """The hidden width of a dense ``dim -> w (x depth) -> 1`` MLP with about ``parameters``
    parameters (weights and biases): (depth-1) w^2 + (dim + depth + 1) w + 1 = parameters."""
    a, b = depth - 1, dim + depth + 1
    if a == 0:
        return max(1, round((parameters - 1) / b))
    return max(1, round((-b + (b * b + 4 * a * (parameters - 1)) ** 0.5) / (2 * a)))


def table6(scale: Scale) -> Table:
    from pinnzo.nets import build_mlp

    high = scale.ranks[0]
    tt_params = sum(p.numel() for p in build_mlp([21, scale.width, scale.width, 1], "tt", "sin", high).parameters())
    narrow, shallow = dense_width(tt_params, 2), dense_width(tt_params, 1)
    rows = (
        Row("mlp", f"FC-3, {scale.width} neurons", {"network": "mlp", "width": scale.width}, 608257,
            (3.58e-04, 1.62e-01)),
        Row(f"mlp-w{narrow}", f"FC-3, {narrow} neurons (paper: 78)", {"network": "mlp", "width": narrow}, 7800,
            (1.52e-02, 4.35e-02)),
        Row(f"mlp-w{shallow}-d1", f"FC-2, {shallow} neurons (paper: 320)",
            {"network": "mlp", "width": shallow, "depth": 1}, 7700, (6.55e-04, 1.00e-02)),
        Row(f"tt-r{high}", f"TT-3, {scale.width} neurons", {"network": "tt", "width": scale.width, "rank": high},
            7745, (4.25e-05, 4.79e-05)),
        Row("sp", "SP-3 (pruned)", None, 7603, (1.54e-09, 6.29e-05),
            missing="not reproduced: pinnzo has no pruned (GraSP) networks"),
    )
    columns = (_hjb_column("fo-ad", "FO-AD", scale, "ad", True),
               _hjb_column("zo-sg", "ZO-SG", scale, "sparse-grid", False),
               _hjb_column("zo-sg-ld", "ZO-SG, Lu-Darmofal rule", scale, "sparse-grid", False, True,
                           rule="lu-darmofal"))
    return Table("6", "Validation loss of dense, TT and pruned networks of similar size (20-dim HJB)", "hjb20",
                 rows, columns)


def _mnist_columns(scale: Scale, rge: bool) -> tuple[Column, ...]:
    zo = dict(scale.mnist_zo)
    columns = [Column("fo", "FO", dict(scale.mnist_fo))]
    if rge:
        columns.append(Column("zo-rge", "ZO-RGE", {**zo, "optimizer": "zo-rge"}))
    columns.append(Column("zo-signrge", "ZO-signRGE", {**zo, "optimizer": "zo-signrge"}))
    columns.append(Column("hybrid", "Hybrid ZO", {**scale.mnist_zo, **scale.mnist_hybrid, "optimizer": "hybrid"}))
    return tuple(columns)


def table1(scale: Scale) -> Table:
    n = NO_CONVERGENCE
    rows = (
        Row("mlp-w1024", "MLP, 1024 neurons", {"network": "mlp", "width": 1024}, 814090, (97.43, n, n)),
        Row("mlp-w10", "MLP, 10 neurons", {"network": "mlp", "width": 10}, 7940, (93.69, 61.51, 86.47)),
        Row("tt-r6", "TT-MLP, 1024 neurons (r = 6)", {"network": "tt", "width": 1024, "rank": 6}, 3962,
            (97.16, 88.48, 96.64)),
        Row("sp", "SP-MLP (pruned)", None, 4089, (86.36, 83.39, 92.24),
            missing="not reproduced: pinnzo has no pruned (GraSP) networks"),
    )
    return Table("1", "MNIST validation accuracy (%) of MLPs, TT-MLPs and SP-MLPs", "mnist", rows,
                 _mnist_columns(scale, rge=False))


def table2(scale: Scale) -> Table:
    n = NO_CONVERGENCE
    published = {10: (8314, (97.33, 85.14, 87.87, 96.77)), 6: (3962, (97.16, 87.72, 88.48, 96.64)),
                 4: (2698, (96.47, 89.67, 89.01, 95.83))}
    paper_ranks = (10, 6, 4)
    rows = [Row("mlp-w1024", "FC-1024", {"network": "mlp", "width": 1024}, 814090, (97.43, n, n, n))]
    for paper_rank, rank in zip(paper_ranks, scale.mnist_ranks):
        params, figures = published[paper_rank]
        rows.append(Row(f"tt-r{rank}", f"TT-MLP, r = {rank}", {"network": "tt", "width": 1024, "rank": rank},
                        params, figures))
    return Table("2", "MNIST validation accuracy (%) of TT-MLPs at different compression ratios", "mnist",
                 tuple(rows), _mnist_columns(scale, rge=True))


TABLES: Registry[Callable[[Scale], Table]] = Registry("table")
for _number, _builder in (("1", table1), ("2", table2), ("4", table4), ("5", table5), ("6", table6)):
    TABLES.register(_number, _builder)


# ------------------------------------------------------------------ running cells

def _diverged_record(folder: Path) -> dict | None:
    path = folder / "diverged.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_saved(folder: Path, settings: dict) -> None:
    """Refuse a folder whose saved run used other settings."""
    config = runs.read_config(folder)
    missing, differences = runs.compare_settings(config["settings"], settings, config.get("task"))
    differences += [f"{key}: not saved, now {settings[key]!r}" for key in missing]
    if differences:
        raise PinnzoError(f"{folder} holds a run with other settings ({'; '.join(differences[:3])}); "
                          f"remove it or give another --out")


@dataclass
class CellResult:
    folder: Path
    status: str  # "finished" | "diverged" | "skipped" (finished earlier)
    summary: dict = field(default_factory=dict)


def run_cell(settings, folder: Path, run: Callable[[bool], dict]) -> CellResult:
    """Run one cell in ``folder`` unless it finished before. ``run(resume)`` trains it."""
    from pinnzo.loop import Diverged

    wanted = settings.as_dict()
    if (folder / "summary.json").is_file() or (folder / "diverged.json").is_file():
        check_saved(folder, wanted)
        diverged = _diverged_record(folder)
        if diverged is not None:
            return CellResult(folder, "diverged", diverged)
        return CellResult(folder, "skipped", runs.read_summary(folder))
    resume = (folder / "checkpoint.pt").is_file() or (folder / pilots.FOLDER).is_dir()  # pilots: activation auto
    if not resume and folder.exists():
        leftovers = {path.name for path in folder.iterdir()}
        if leftovers - {runs.CONFIG, runs.PROBLEM_COPY, runs.LOCK}:
            raise PinnzoError(f"{folder} is not empty and holds no checkpoint to resume; remove it or give "
                              f"another --out")
        for name in (runs.CONFIG, runs.PROBLEM_COPY):  # killed before its first checkpoint
            (folder / name).unlink(missing_ok=True)
    try:
        return CellResult(folder, "finished", run(resume))
    except Diverged as error:
        record = {"status": "diverged", "message": str(error), "settings": wanted}
        atomic_write(folder / "diverged.json", json.dumps(record, indent=2).encode())
        return CellResult(folder, "diverged", record)


@dataclass
class Context:
    """What every cell of a reproduction shares."""

    scale: Scale
    out: Path
    problem_path: Path = Path("problems/hjb20.yaml")
    data_dir: Path | None = None
    device: str | None = None
    quiet: bool = True
    echo: Callable[[str], None] = print

    @cached_property
    def problem(self):
        """The HJB problem, loaded once."""
        from pinnzo.problem import load_problem

        return load_problem(self.problem_path)

    @cached_property
    def mnist_data(self):
        """The MNIST split, read once (validation size from the scale)."""
        from pinnzo.mnist import default_data_dir, load_mnist
        from pinnzo.settings import MnistSettings

        validation = self.scale.mnist.get("validation", MnistSettings.validation)
        return load_mnist(self.data_dir or default_data_dir(), validation)


def cell_settings(table: Table, row: Row, column: Column, context: Context):
    """The full settings of a cell: file / MNIST defaults < scale < row < column < --device."""
    from pinnzo.settings import MnistSettings

    device = {"device": context.device} if context.device else {}
    if table.task == "hjb20":
        from pinnzo.settings import Settings

        base = Settings().replace(context.problem.solve)
        changes = {**context.scale.pinn, **row.changes, **column.changes, **device}
        return base.replace(changes, f"reproduce table {table.number}, {row.key}--{column.key}: ")
    changes = {**context.scale.mnist, **row.changes, **column.changes, **device}
    return MnistSettings().replace(changes, f"reproduce table {table.number}, {row.key}--{column.key}: ")


def _runner(table: Table, settings, folder: Path, context: Context) -> Callable[[bool], dict]:
    if table.task == "hjb20":
        from pinnzo.pinn import solve

        return lambda resume: solve(context.problem, settings, out=folder, resume=resume, quiet=context.quiet).summary
    from pinnzo.mnist import train_mnist

    data_dir = str(context.data_dir or "")
    return lambda resume: train_mnist(context.mnist_data, settings, folder, resume=resume, quiet=context.quiet,
                                      data_dir=data_dir)


def run_table(table: Table, context: Context) -> dict[tuple[str, str], CellResult]:
    """Run (or skip) every cell; returns the results by (row key, column key)."""
    results = {}
    cells = [(row, column) for row in table.rows if row.changes is not None for column in table.columns]
    for index, (row, column) in enumerate(cells, 1):
        folder = context.out / table.task / f"{row.key}--{column.key}"
        settings = cell_settings(table, row, column, context)
        started = time.perf_counter()
        result = run_cell(settings, folder, _runner(table, settings, folder, context))
        results[(row.key, column.key)] = result
        took = "" if result.status == "skipped" else f" in {time.perf_counter() - started:.0f} s"
        context.echo(f"table {table.number} [{index}/{len(cells)}] {row.label} / {column.label}: "
                     f"{result.status}{took}, {format_figure(table, cell_figure(table, result))}  ({folder})")
    return results


# ------------------------------------------------------------------ the report

def cell_figure(table: Table, result: CellResult | None):
    """pinnzo's figure of a cell: MSE, accuracy in %, DIVERGED or None (not run)."""
    if result is None:
        return None
    if result.status == "diverged":
        return DIVERGED
    value = result.summary[table.metric]
    return 100 * value if table.task == "mnist" else value


def format_figure(table: Table, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if table.task == "mnist" else f"{value:.2e}"


def table_markdown(table: Table, scale: Scale, results: dict[tuple[str, str], CellResult]) -> str:
    """The table with ``pinnzo / paper`` in every cell."""
    metric = "test accuracy (%)" if table.task == "mnist" else "validation MSE of u against the exact solution"
    header = ["Network", "Params (pinnzo / paper)"] + [
        column.label + (" *" if column.beyond else "") for column in table.columns]
    lines = [f"### Table {table.number}: {table.title}", "",
             f"Each cell: pinnzo / paper; {metric}. Scale `{scale.name}`: {scale.description}. "
             f"Made by `pinnzo reproduce {table.number} --scale {scale.name}` on {time.strftime('%Y-%m-%d')}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = {row.missing for row in table.rows if row.changes is None}
    marks = {note: "†" * (k + 1) for k, note in enumerate(sorted(notes))}
    for row in table.rows:
        row_results = [results[(row.key, c.key)] for c in table.columns if (row.key, c.key) in results]
        counts = [r.summary["parameters"] for r in row_results if "parameters" in r.summary]
        params = f"{counts[0]:,}" if counts else "—"
        label = row.label + (f" {marks[row.missing]}" if row.changes is None else "")
        cells = [label, f"{params} / {row.paper_params:,}" if row.paper_params else params]
        for column in table.columns:
            ours = format_figure(table, cell_figure(table, results.get((row.key, column.key))))
            cells.append(f"{ours} / {format_figure(table, table.paper_value(row, column))}")
        lines.append("| " + " | ".join(cells) + " |")
    footnotes = [f"{mark} {note}." for note, mark in marks.items()]
    if any(column.beyond for column in table.columns):
        footnotes.insert(0, "\\* beyond the paper: pinnzo's own column (no published figure).")
    lines += [""] + footnotes if footnotes else []
    return "\n".join(lines) + "\n"


def table_record(table: Table, scale: Scale, results: dict[tuple[str, str], CellResult]) -> dict:
    """table-N.json: every cell's figure, the published one, and its run folder."""
    cells = []
    for row in table.rows:
        for column in table.columns:
            result = results.get((row.key, column.key))
            cells.append({"row": row.label, "column": column.label, "beyond_the_paper": column.beyond,
                          "pinnzo": cell_figure(table, result), "paper": table.paper_value(row, column),
                          "parameters": result.summary.get("parameters") if result else None,
                          "paper_parameters": row.paper_params, "missing": row.missing or None,
                          "wall_time_s": result.summary.get("wall_time_s") if result else None,
                          "queries": result.summary.get("total_queries") if result else None,
                          "run": str(result.folder) if result else None})
    return {"table": table.number, "title": table.title, "scale": scale.name, "scale_description": scale.description,
            "metric": table.metric, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cells": cells}


def compare_plots(table: Table, results: dict[tuple[str, str], CellResult], out: Path) -> list[Path]:
    """The `compare` plots of a table's finished runs, in OUT/table-N/."""
    folders = [r.folder for r in results.values() if r.status != "diverged"]
    if not folders:
        return []
    target = out / f"table-{table.number}"
    if table.task == "hjb20":
        from pinnzo.plots import compare_runs

        return compare_runs(folders, target)[1]
    from pinnzo.plots import compare_accuracy

    return compare_accuracy(folders, target)


def reproduce(number: str, context: Context) -> list[Path]:
    """Run table ``number`` at ``context.scale``; write its Markdown, JSON and plots."""
    table = TABLES[number](context.scale)
    results = run_table(table, context)
    make_folder(context.out)
    markdown, record = context.out / f"table-{table.number}.md", context.out / f"table-{table.number}.json"
    atomic_write(markdown, table_markdown(table, context.scale, results).encode())
    atomic_write(record, json.dumps(table_record(table, context.scale, results), indent=2).encode())
    return [markdown, record] + compare_plots(table, results, context.out)
