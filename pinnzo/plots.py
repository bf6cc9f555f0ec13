"""Figures of a run: training curves, solution and error along lines, a 2-D slice,
the error histogram, the unknowns of an inverse problem; and side-by-side comparison of runs.

Every figure is saved with the numbers behind it (a CSV of the same name), so
it can be re-made or checked. Matplotlib's non-interactive Agg backend is used,
so plotting works on a machine without a screen.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pinnzo import runs  # noqa: E402
from pinnzo.domains import Box  # noqa: E402
from pinnzo.errors import PinnzoError  # noqa: E402
from pinnzo.fileio import make_folder  # noqa: E402
from pinnzo.pinn import Run, load_run  # noqa: E402

BACKEND_COLORS = {"ad": "#1b9e77", "fd": "#d95f02", "stein": "#7570b3", "sparse-grid": "#e7298a"}
TIME_COLORS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
FORMATS = ("png", "pdf", "svg")
FIGURE_SIZE = (11.0, 4.2)
DPI = 110


def _title(run: Run, what: str) -> str:
    s = run.summary
    return f"{s['problem']}: {what}\n{s['backend']} / {s['optimizer']} / {s['network']} ({s['parameters']:,} parameters)"


def _save(figure, path: Path, fmt: str, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path.with_suffix(f".{fmt}"), format=fmt, dpi=DPI)
    plt.close(figure)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.with_suffix(".csv").write_text(buffer.getvalue())
    return path.with_suffix(f".{fmt}")


def _prediction(run: Run, X: torch.Tensor) -> np.ndarray:
    return run.predict(X).double().cpu().numpy()


def _exact(run: Run, X: torch.Tensor) -> np.ndarray:
    return run.problem.exact_solution(X.double()).numpy()


def _inside(run: Run, X: torch.Tensor) -> np.ndarray:
    """(n,) bool: the points whose spatial part lies in the problem's domain (a box: all of them).

    Lines and slices run over the domain's bounding box; the figures mask the
    points outside the domain (and on its boundary) and their CSVs leave them out.
    """
    if isinstance(run.problem.domain, Box):  # the bounding box itself, faces included
        return np.ones(len(X), dtype=bool)
    # the open domain: a grid line along a removed part's edge (on no side of the domain) stays blank
    return (run.problem.domain.sdf(X[:, list(run.problem.spatial)]) < 0).numpy()


def _masked(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    return np.where(inside, values, np.nan)


# ------------------------------------------------------------ training curves

def training_curves(run: Run, out: Path, fmt: str) -> Path:
    """Loss and validation errors against step and against loss queries (log scale)."""
    metrics = run.metrics
    figure, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE, constrained_layout=True)
    color = BACKEND_COLORS.get(run.summary["backend"], "black")
    for axis, key, label in ((axes[0], "step", "training step"), (axes[1], "queries", "loss queries")):
        x = [row[key] for row in metrics]
        axis.plot(x, [row["loss"] for row in metrics], color="0.4", label="training loss")
        axis.plot(x, [row["val_mse"] for row in metrics], color=color, label="validation MSE")
        axis.plot(x, [row["val_rel_l2"] for row in metrics], color=color, linestyle="--", label="validation relative L2")
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("loss / error (dimensionless)")
        axis.grid(True, which="both", alpha=0.3)
        for event in run.summary.get("events", []):
            step = event["step"]
            position = step if key == "step" else _queries_at(metrics, step)
            axis.axvline(position, color="black", linewidth=0.8, linestyle=":")
            axis.annotate("switch to CGE", (position, 0.95), xycoords=("data", "axes fraction"),
                          rotation=90, va="top", ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    figure.suptitle(_title(run, "training curves"), fontsize=10)
    rows = [{"step": r["step"], "queries": r["queries"], "loss": r["loss"], "val_mse": r["val_mse"],
             "val_rel_l2": r["val_rel_l2"]} for r in metrics]
    return _save(figure, out / "training", fmt, rows)


def unknown_curves(run: Run, out: Path, fmt: str) -> Path:
    """Each unknown of an inverse problem against the step, with its exact value when the problem states it."""
    unknowns = run.problem.unknowns
    figure, axes = plt.subplots(1, len(unknowns), figsize=(5.5 * len(unknowns), 4.2), constrained_layout=True,
                                squeeze=False)
    steps = [0] + [row["step"] for row in run.metrics]  # step 0: the initial value
    for axis, unknown in zip(axes[0], unknowns):
        axis.plot(steps, [unknown.initial] + [row[unknown.name] for row in run.metrics], color="#1b9e77", marker=".",
                  label=f"estimate (initial {unknown.initial:g}, final {run.metrics[-1][unknown.name]:.6g})")
        if unknown.exact is not None:
            axis.axhline(unknown.exact, color="black", linestyle="--", linewidth=1,
                         label=f"exact value {unknown.exact:g}")
        axis.set_xlabel("training step")
        axis.set_ylabel(unknown.name)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(_title(run, "unknown parameters"), fontsize=10)
    rows = [{"step": row["step"], **{u.name: row[u.name] for u in unknowns}} for row in run.metrics]
    return _save(figure, out / "unknowns", fmt, rows)


def _queries_at(metrics: list[dict], step: int) -> float:
    steps = [row["step"] for row in metrics]
    return float(np.interp(step, steps, [row["queries"] for row in metrics]))


# ------------------------------------------------------------ lines

def line_points(run: Run, points: int = 201) -> list[tuple[str, float | None, torch.Tensor, np.ndarray]]:
    """(line name, time, X (points, D), parameter s in [0, 1]) for the lines drawn.

    Lines run through the centre of the domain's bounding box: the main diagonal
    from the low corner to the high corner, and the axes of the first and last
    spatial coordinates; for time-dependent problems each at t = t0, the mid time
    and T. The figure masks their parts outside the domain.
    """
    problem = run.problem
    lows, highs = np.array(problem.lows), np.array(problem.highs)
    centre = (lows + highs) / 2
    s = np.linspace(0.0, 1.0, points)
    spatial = list(problem.spatial)
    directions = [("diagonal", spatial)] if len(spatial) > 1 else []
    directions += [(f"{problem.columns[i]} axis", [i]) for i in dict.fromkeys([spatial[0], spatial[-1]])]
    times = [None]
    if problem.time_index is not None:
        t0, t1 = lows[problem.time_index], highs[problem.time_index]
        times = [t0, (t0 + t1) / 2, t1]
    result = []
    for name, moving in directions:
        for t in times:
            X = np.tile(centre, (points, 1))
            for i in moving:
                X[:, i] = lows[i] + s * (highs[i] - lows[i])
            if t is not None:
                X[:, problem.time_index] = t
            result.append((name, t, torch.tensor(X), s))
    return result


def error_lines(run: Run, out: Path, fmt: str) -> Path:
    """Predicted and exact solution, and |error|, along lines through the domain (the predicted
    solution alone for a problem with no exact one)."""
    lines = line_points(run)
    names = list(dict.fromkeys(name for name, *_ in lines))
    has_exact = run.problem.has_exact
    panels = 2 if has_exact else 1
    figure, axes = plt.subplots(panels, len(names), figsize=(4.2 * len(names), 0.4 + 3.0 * panels), squeeze=False,
                                constrained_layout=True)
    rows = []
    time_name = run.problem.columns[run.problem.time_index] if run.problem.time_index is not None else "t"
    for column, name in enumerate(names):
        top = axes[0, column]
        for k, (line, t, X, s) in enumerate([entry for entry in lines if entry[0] == name]):
            inside = _inside(run, X)
            predicted = _masked(_prediction(run, X), inside)
            color = TIME_COLORS[k % len(TIME_COLORS)]
            label = f"{time_name} = {t:g}" if t is not None else None
            top.plot(s, predicted, color=color, linestyle="--" if has_exact else "-",
                     label="predicted" if t is None else label)
            values = {"predicted": predicted}
            if has_exact:
                exact = _masked(_exact(run, X), inside)
                values.update(exact=exact, abs_error=np.abs(predicted - exact))
                top.plot(s, exact, color=color, linewidth=2.5, alpha=0.35, label="exact" if t is None else None)
                axes[1, column].semilogy(s, np.maximum(values["abs_error"], 1e-16), color=color, label=label)
            for j in np.flatnonzero(inside):
                rows.append({"line": name, "time": "" if t is None else t, "s": s[j],
                             **{c: X[j, i].item() for i, c in enumerate(run.problem.columns)},
                             **{key: value[j] for key, value in values.items()}})
        top.set_title(f"along the {name}" + (" (solid: exact, dashed: predicted)" if has_exact else ""), fontsize=9)
        top.set_ylabel("u")
        for axis in axes[:, column]:
            axis.set_xlabel("position s along the line (0: low end, 1: high end)")
            axis.grid(True, alpha=0.3)
        if has_exact:
            axes[1, column].set_ylabel("|u_pred - u_exact|")
        (axes[-1, column] if run.problem.time_index is not None else top).legend(fontsize=8)
    what = "solution and error" if has_exact else "predicted solution (no exact solution given)"
    figure.suptitle(_title(run, f"{what} along lines through the centre"), fontsize=10)
    return _save(figure, out / "lines", fmt, rows)


# ------------------------------------------------------------ slice

@dataclass(frozen=True)
class SliceSpec:
    """Two coordinates to vary and fixed values for the others."""

    axes: tuple[int, int]
    fixed: dict[int, float]


def slice_spec(run: Run, axes: str | None = None, at: list[str] | None = None) -> SliceSpec:
    """Parse ``--slice x1,t`` and ``--at x2=0.5`` against the problem's columns."""
    problem = run.problem
    columns = list(problem.columns)
    if axes:
        names = [name.strip() for name in axes.split(",")]
        if len(names) != 2 or names[0] == names[1] or any(name not in columns for name in names):
            raise PinnzoError(f"--slice expects two different variables among {', '.join(columns)}; found {axes!r}")
        chosen = (columns.index(names[0]), columns.index(names[1]))
    elif problem.time_index is not None:
        chosen = (problem.spatial[0], problem.time_index)
    elif len(problem.spatial) >= 2:
        chosen = (problem.spatial[0], problem.spatial[1])
    else:
        raise PinnzoError("a 2-D slice needs two input variables; this problem has one")
    fixed = {}
    for item in at or []:
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals or name not in columns:
            raise PinnzoError(f"--at expects variable=value with a variable among {', '.join(columns)}; found {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise PinnzoError(f"--at {name}: expected a number; found {value!r}") from None
        index = columns.index(name)
        if index in chosen:
            raise PinnzoError(f"--at {name}: {name} is one of the slice's own axes")
        low, high = problem.lows[index], problem.highs[index]
        if not low <= number <= high:
            raise PinnzoError(f"--at {name}={number:g} lies outside its domain [{low:g}, {high:g}]")
        fixed[index] = number
    return SliceSpec(chosen, fixed)


def slice_points(run: Run, spec: SliceSpec, resolution: int = 81) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """X (resolution^2, D), and the grid values a (resolution,), b (resolution,)."""
    problem = run.problem
    lows, highs = np.array(problem.lows), np.array(problem.highs)
    i, j = spec.axes
    a = np.linspace(lows[i], highs[i], resolution)
    b = np.linspace(lows[j], highs[j], resolution)
    A, B = np.meshgrid(a, b, indexing="xy")
    X = np.tile((lows + highs) / 2, (A.size, 1))
    for index, value in spec.fixed.items():
        X[:, index] = value
    X[:, i], X[:, j] = A.ravel(), B.ravel()
    return torch.tensor(X), a, b


def error_slice(run: Run, out: Path, fmt: str, spec: SliceSpec) -> Path:
    """Heatmaps of predicted, exact and |error| over two coordinates, the others fixed
    (blank outside the domain); the predicted solution alone for a problem with no exact one."""
    X, a, b = slice_points(run, spec)
    inside = _inside(run, X)
    values = {"predicted": _masked(_prediction(run, X), inside)}
    if run.problem.has_exact:
        values["exact"] = _masked(_exact(run, X), inside)
        values["abs_error"] = np.abs(values["predicted"] - values["exact"])
    shape = (len(b), len(a))
    columns = run.problem.columns
    i, j = spec.axes
    figure, axes = plt.subplots(1, len(values), figsize=(0.3 + 4.4 * len(values), 4.3), squeeze=False,
                                constrained_layout=True)
    solution = [values[key] for key in ("predicted", "exact") if key in values]
    low, high = min(np.nanmin(u) for u in solution), max(np.nanmax(u) for u in solution)
    extent = (a[0], a[-1], b[0], b[-1])
    # a shaped domain keeps its shape (a disk stays round); a box fills the panel
    spatial = i in run.problem.spatial and j in run.problem.spatial
    aspect = "equal" if spatial and not isinstance(run.problem.domain, Box) else "auto"
    panels = {"predicted": ("predicted u", "viridis", (low, high)), "exact": ("exact u", "viridis", (low, high)),
              "abs_error": ("|u_pred - u_exact|", "magma", (0, np.nanmax(values.get("abs_error", 0))))}
    for axis, (key, shown) in zip(axes[0], values.items()):
        name, cmap, limits = panels[key]
        image = axis.imshow(shown.reshape(shape), origin="lower", extent=extent, aspect=aspect, cmap=cmap,
                            vmin=limits[0], vmax=limits[1] if limits[1] > limits[0] else limits[0] + 1e-12)
        figure.colorbar(image, ax=axis, shrink=0.9)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel(columns[i])
        axis.set_ylabel(columns[j])
    others = [k for k in range(len(columns)) if k not in spec.axes]
    fixed_text = ", ".join(f"{columns[k]} = {X[0, k].item():g}" for k in others[:4])
    if len(others) > 4:
        fixed_text += f", ... ({len(others)} fixed; centre unless --at)"
    figure.suptitle(_title(run, f"slice over ({columns[i]}, {columns[j]}) at {fixed_text}"), fontsize=10)
    rows = [{columns[i]: X[k, i].item(), columns[j]: X[k, j].item(), **{key: value[k] for key, value in values.items()}}
            for k in np.flatnonzero(inside)]
    return _save(figure, out / "slice", fmt, rows)


# ------------------------------------------------------------ histogram

def error_histogram(run: Run, out: Path, fmt: str) -> Path:
    """Histogram of the pointwise errors on the run's validation set."""
    validation = run.validation
    predicted = _prediction(run, validation.X.cpu())
    exact = validation.exact.double().cpu().numpy()
    error = np.abs(predicted - exact)
    figure, axis = plt.subplots(figsize=(6.5, 4.3), constrained_layout=True)
    floor = max(np.quantile(error, 0.001), 1e-16)  # one tiny outlier must not stretch the axis
    bins = np.logspace(math.log10(floor), math.log10(max(error.max(), floor * 10)), 50)
    bins[0] = min(bins[0], max(error.min(), 1e-300))
    axis.hist(error, bins=bins, color=BACKEND_COLORS.get(run.summary["backend"], "gray"), alpha=0.85)
    axis.set_xscale("log")
    axis.set_xlabel("|u_pred - u_exact| at a validation point")
    axis.set_ylabel("number of points")
    axis.axvline(np.sqrt(np.mean(error**2)), color="black", linestyle="--", label="root mean square")
    axis.legend(fontsize=8)
    axis.set_title(_title(run, f"pointwise errors on {len(error):,} validation points"), fontsize=9)
    rows = [{**{c: validation.X[k, i].item() for i, c in enumerate(run.problem.columns)},
             "predicted": predicted[k], "exact": exact[k], "abs_error": error[k]} for k in range(len(error))]
    return _save(figure, out / "histogram", fmt, rows)


MNIST_SUMMARY = ("network", "parameters", "optimizer", "test_accuracy")
MNIST_METRICS = ("epoch", "step", "queries", "train_loss", "val_loss", "val_accuracy")


def _mnist_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(summary, metric rows) of a finished MNIST run folder."""
    return runs.read_summary(run_dir, MNIST_SUMMARY), runs.read_metrics(run_dir, MNIST_METRICS)


def accuracy_curves(run_dir: Path, fmt: str) -> Path:
    """An MNIST run: validation accuracy and losses against epoch and against loss queries."""
    summary, metrics = _mnist_run(run_dir)
    figure, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE, constrained_layout=True)
    for axis, key, label in ((axes[0], "epoch", "epoch"), (axes[1], "queries", "loss queries")):
        x = [row[key] for row in metrics]
        axis.plot(x, [100 * row["val_accuracy"] for row in metrics], color="#1b9e77", marker="o",
                  label="validation accuracy")
        axis.set_xlabel(label)
        axis.set_ylabel("validation accuracy (%)")
        axis.grid(True, alpha=0.3)
        twin = axis.twinx()
        twin.plot(x, [row["train_loss"] for row in metrics], color="0.5", linestyle="--", label="training loss")
        twin.plot(x, [row["val_loss"] for row in metrics], color="#d95f02", linestyle=":", label="validation loss")
        twin.set_ylabel("cross-entropy")
        if key == "queries":
            axis.set_xscale("log")
        for event in summary.get("events", []):
            if key == "epoch":
                steps_per_epoch = metrics[0]["step"] / metrics[0]["epoch"]
                axis.axvline(event["step"] / steps_per_epoch, color="black", linewidth=0.8, linestyle=":")
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"MNIST: {summary['network']} ({summary['parameters']:,} parameters) / {summary['optimizer']}: "
                    f"test accuracy {100 * summary['test_accuracy']:.2f}%", fontsize=10)
    rows = [{"epoch": r["epoch"], "queries": r["queries"], "train_loss": r["train_loss"], "val_loss": r["val_loss"],
             "val_accuracy": r["val_accuracy"]} for r in metrics]
    return _save(figure, run_dir / "plots" / "accuracy", fmt, rows)


def plot_run(run: Run | Path | str, fmt: str = "png", axes: str | None = None, at: list[str] | None = None) -> list[Path]:
    """Every figure of a run (a trained Run, or a run folder), written to RUN_DIR/plots/."""
    if fmt not in FORMATS:
        raise PinnzoError(f"--format: unknown value {fmt!r}; must be one of {', '.join(FORMATS)}")
    if not isinstance(run, Run):
        if not Path(run).is_dir():
            raise PinnzoError(f"{run}: no such run folder")
        if runs.run_task(Path(run)) == "mnist":
            return [accuracy_curves(Path(run), fmt)]
        run = load_run(run)
    out = run.path / "plots"
    written = [training_curves(run, out, fmt)]
    if run.problem.unknowns:
        written.append(unknown_curves(run, out, fmt))
    written.append(error_lines(run, out, fmt))
    if run.problem.dim >= 2:
        written.append(error_slice(run, out, fmt, slice_spec(run, axes, at)))
    if run.problem.has_exact:
        written.append(error_histogram(run, out, fmt))
    return written


# ------------------------------------------------------------ compare

COMPARE_COLUMNS = ["run", "problem", "backend", "optimizer", "network", "parameters", "steps", "queries",
                   "wall_s", "mse", "rel_l2"]


def compare_rows(runs: list[Run]) -> list[dict]:
    problems = {run.summary["problem"] for run in runs}
    if len(problems) > 1:
        raise PinnzoError(f"cannot compare runs of different problems ({', '.join(sorted(problems))})")
    return [{"run": run.path.name, "problem": run.summary["problem"], "backend": run.summary["backend"],
             "optimizer": run.summary["optimizer"], "network": run.summary["network"],
             "parameters": run.summary["parameters"], "steps": run.summary["steps"],
             "queries": run.summary["total_queries"], "wall_s": round(run.summary["wall_time_s"], 1),
             "mse": run.summary["final_mse"], "rel_l2": run.summary["final_rel_l2"]} for run in runs]


def markdown_table(rows: list[dict]) -> str:
    def cell(value):
        return "—" if value is None else \
            f"{value:.3e}" if isinstance(value, float) and not float(value).is_integer() else str(value)
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COMPARE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def terminal_table(rows: list[dict]) -> str:
    def cell(value):
        return "—" if value is None else \
            f"{value:.3e}" if isinstance(value, float) and not float(value).is_integer() else str(value)
    table = [COMPARE_COLUMNS] + [[cell(row[c]) for c in COMPARE_COLUMNS] for row in rows]
    widths = [max(len(r[k]) for r in table) for k in range(len(COMPARE_COLUMNS))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(r, widths)) for r in table)


def compare_runs(run_dirs: list[Path], out: Path, fmt: str = "png") -> tuple[list[dict], list[Path]]:
    """Table (Markdown + CSV) and overlaid error curves of several runs of one problem (their training
    losses where the problem gives no exact solution)."""
    if fmt not in FORMATS:
        raise PinnzoError(f"--format: unknown value {fmt!r}; must be one of {', '.join(FORMATS)}")
    runs = [load_run(path) for path in run_dirs]
    rows = compare_rows(runs)
    make_folder(out)
    (out / "compare.md").write_text(markdown_table(rows) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    (out / "compare.csv").write_text(buffer.getvalue())
    figure, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE, constrained_layout=True)
    curve, what = ("val_rel_l2", "validation relative L2 error") if runs[0].problem.has_exact else \
        ("loss", "training loss")
    curve_rows = []
    styles = ["-", "--", "-.", ":"]
    for k, run in enumerate(runs):
        label = f"{run.summary['backend']} / {run.summary['optimizer']} ({run.path.name})"
        color = BACKEND_COLORS.get(run.summary["backend"], "black")
        for axis, key in ((axes[0], "step"), (axes[1], "queries")):
            axis.plot([r[key] for r in run.metrics], [r[curve] for r in run.metrics], color=color,
                      linestyle=styles[k % len(styles)], label=label)
        curve_rows += [{"run": run.path.name, "step": r["step"], "queries": r["queries"],
                        "loss": r["loss"], "val_rel_l2": r["val_rel_l2"], "val_mse": r["val_mse"]} for r in run.metrics]
    for axis, label in ((axes[0], "training step"), (axes[1], "loss queries")):
        axis.set_yscale("log")
        axis.set_xscale("log" if label == "loss queries" else "linear")
        axis.set_xlabel(label)
        axis.set_ylabel(what)
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.suptitle(f"{rows[0]['problem']}: {what} of {len(runs)} runs", fontsize=10)
    path = _save(figure, out / "compare-curves", fmt, curve_rows)
    return rows, [out / "compare.md", out / "compare.csv", path]


def compare_accuracy(run_dirs: list[Path], out: Path, fmt: str = "png") -> list[Path]:
    """MNIST runs side by side: validation accuracy against epoch and against loss queries."""
    runs = [(Path(folder), *_mnist_run(Path(folder))) for folder in run_dirs]
    figure, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE, constrained_layout=True)
    styles = ["-", "--", "-.", ":"]
    rows = []
    for k, (folder, summary, metrics) in enumerate(runs):
        label = f"{summary['network']} ({summary['parameters']:,}) / {summary['optimizer']}"
        for axis, key in ((axes[0], "epoch"), (axes[1], "queries")):
            axis.plot([r[key] for r in metrics], [100 * r["val_accuracy"] for r in metrics],
                      linestyle=styles[k % len(styles)], label=label)
        rows += [{"run": folder.name, "epoch": r["epoch"], "queries": r["queries"],
                  "val_accuracy": r["val_accuracy"]} for r in metrics]
    for axis, label in ((axes[0], "epoch"), (axes[1], "loss queries")):
        axis.set_xlabel(label)
        axis.set_ylabel("validation accuracy (%)")
        axis.grid(True, which="both", alpha=0.3)
    axes[1].set_xscale("log")
    axes[1].legend(fontsize=7)
    figure.suptitle(f"MNIST: validation accuracy of {len(runs)} runs", fontsize=10)
    return [_save(figure, Path(out) / "compare-accuracy", fmt, rows)]
