"""Figures: their numbers against an independent evaluation, their files, compare."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run_cli
from pinnzo.derivatives import make_backend
from pinnzo.nets import build_mlp
from pinnzo.plots import DPI
from pinnzo.problem import load_problem
from pinnzo.pinn import resolve_settings, solve
from pinnzo.settings import Settings

REPO = Path(__file__).resolve().parents[1]

ONE_D = """
name: sine1d
variables:
  space: {name: x, dim: 1, domain: [0, 3]}
equation: d(u, x, x) = -sin(x)
exact: sin(x)
conditions:
  ends: {at: boundary, value: sin(x), weight: 1.0}
solve: {network: mlp, width: 8, backend: ad, optimizer: adam, lr: 0.01, steps: 30, batch: 32,
        condition_batch: 8, eval_every: 10, eval_points: 300}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    one = root / "sine1d.yaml"
    one.write_text(ONE_D)
    made = {}
    for name, path, changes in [
        ("1d", one, {}),
        ("2d", REPO / "problems" / "poisson2d.yaml", {"steps": 30, "width": 8, "eval_points": 400}),
        ("2d-fd", REPO / "problems" / "poisson2d.yaml", {"steps": 20, "width": 8, "eval_points": 400,
                                                        "backend": "fd", "optimizer": "zo-signrge"}),
        # float64: the float32 smoothed prediction itself is only good to ~sum|w| eps |u| = 2.5e-4
        ("21d", REPO / "problems" / "hjb20.yaml", {"steps": 3, "width": 8, "eval_every": 1, "eval_points": 200,
                                                   "dtype": "float64"}),
    ]:
        problem = load_problem(path)
        solve(problem, resolve_settings(problem, changes), out=root / name, quiet=True)
        made[name] = root / name
    return made


def _csv(path: Path) -> list[dict]:
    with open(path) as file:
        return [{k: (float(v) if v not in ("",) and k not in ("line",) else v) for k, v in row.items()}
                for row in csv.DictReader(file)]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", data[16:24])


def _independent_error(run_dir: Path, X: np.ndarray) -> np.ndarray:
    """|u_pred - u_exact| from the saved model, rebuilt without pinnzo.plots/train."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    settings = Settings().replace(config["settings"])
    problem = load_problem(config["problem"])
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    reach = [max(1.0, (high - low) / 2) for low, high in zip(problem.lows, problem.highs)]
    shift = [min(max(0.0, high - r), low + r) for low, high, r in zip(problem.lows, problem.highs, reach)]
    mapped = shift != [0.0] * problem.dim or reach != [1.0] * problem.dim
    net = build_mlp([problem.dim] + [settings.width] * settings.depth + [1], settings.network,
                    settings.activation, settings.rank, dtype=dtype,
                    input_map=(shift, [1 / r for r in reach]) if mapped else None)
    net.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    backend = make_backend(settings, problem.dim)
    points = torch.tensor(X, dtype=dtype)
    with torch.no_grad():
        from pinnzo.atoms import VALUE
        predicted = backend(problem.solution(net), points, {VALUE}, problem.spatial)[VALUE].double()
    return (predicted - problem.exact_solution(points.double())).abs().numpy()


@pytest.mark.parametrize("name", ["1d", "2d", "21d"])
def test_figures_exist_with_the_expected_size(runs, name):
    result = run_cli(["plot", str(runs[name])])
    assert result.exit_code == 0, result.output
    plots = runs[name] / "plots"
    expected = {"training": (11.0, 4.2), "histogram": (6.5, 4.3)}
    problem_dim = {"1d": 1, "2d": 2, "21d": 21}[name]
    lines_columns = 1 if problem_dim == 1 else 3
    expected["lines"] = (4.2 * lines_columns, 6.4)
    if problem_dim > 1:
        expected["slice"] = (13.5, 4.3)
    for figure, (width, height) in expected.items():
        assert _png_size(plots / f"{figure}.png") == (round(width * DPI), round(height * DPI)), figure
        assert (plots / f"{figure}.csv").stat().st_size > 100
    if problem_dim == 1:
        assert not (plots / "slice.png").exists()


@pytest.mark.parametrize("name", ["1d", "2d", "21d", "2d-fd"])
def test_numbers_behind_the_figures_are_the_pointwise_errors(runs, name):
    result = run_cli(["plot", str(runs[name])])
    assert result.exit_code == 0, result.output
    problem = load_problem(__import__("yaml").safe_load((runs[name] / "config.yaml").read_text())["problem"])
    columns = list(problem.columns)
    lows, highs = np.array(problem.lows), np.array(problem.highs)
    figures = ("lines", "slice", "histogram") if problem.dim > 1 else ("lines", "histogram")
    for figure in figures:
        rows = _csv(runs[name] / "plots" / f"{figure}.csv")
        if figure == "slice":  # the slice's CSV holds its two axes; the others sit at the centre
            X = np.tile((lows + highs) / 2, (len(rows), 1))
            for c in columns:
                if c in rows[0]:
                    X[:, columns.index(c)] = [row[c] for row in rows]
        else:
            X = np.array([[row[c] for c in columns] for row in rows])
        assert ((X >= lows - 1e-12) & (X <= highs + 1e-12)).all(), f"{figure}: points outside the domain"
        recorded = np.array([row["abs_error"] for row in rows])
        np.testing.assert_allclose(recorded, _independent_error(runs[name], X), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(recorded, np.abs(np.array([row["predicted"] for row in rows])
                                                    - np.array([row["exact"] for row in rows])), atol=1e-12)


def test_slice_respects_axes_and_fixed_values(runs):
    result = run_cli(["plot", str(runs["21d"]), "--slice", "x3,x7", "--at", "x1=0.25", "--at", "t=0.75"])
    assert result.exit_code == 0, result.output
    rows = _csv(runs["21d"] / "plots" / "slice.csv")
    assert set(rows[0]) == {"x3", "x7", "predicted", "exact", "abs_error"}
    values = {row["x3"] for row in rows}
    assert min(values) == 0.0 and max(values) == 1.0
    # the exact solution sum(x) + 1 - t pins the fixed values: x1 = 0.25, t = 0.75, others 0.5
    for row in rows[:50]:
        assert row["exact"] == pytest.approx(row["x3"] + row["x7"] + 0.25 + 17 * 0.5 + 1 - 0.75, abs=1e-9)


@pytest.mark.parametrize("args, needle", [
    (["--slice", "x1"], "--slice expects two different variables"),
    (["--slice", "x1,y"], "--slice expects two different variables"),
    (["--at", "x2=7"], "lies outside its domain [0, 1]"),
    (["--at", "x2"], "--at expects variable=value"),
    (["--format", "gif"], "--format: unknown value 'gif'; must be one of png, pdf, svg"),
])
def test_bad_plot_options(runs, args, needle):
    result = run_cli(["plot", str(runs["21d"]), *args])
    assert result.exit_code == 2 and needle in result.output and result.output.count("\n") == 1, result.output


def test_incomplete_or_foreign_run_folders_are_explained(runs, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt"):
        (partial / name).write_bytes((runs["2d"] / name).read_bytes())
    result = run_cli(["plot", str(partial)])
    assert result.exit_code == 2
    assert "not a finished pinnzo run: no summary.json (the run did not finish: continue it with --resume)" \
        in result.output
    old = tmp_path / "old"
    old.mkdir()
    for name in ("summary.json", "metrics.csv", "model.pt"):
        (old / name).write_bytes((runs["2d"] / name).read_bytes())
    (old / "config.yaml").write_text("format: 0\n")
    result = run_cli(["plot", str(old)])
    assert result.exit_code == 2 and "config.yaml: damaged (expected a mapping with settings)" in result.output
    assert run_cli(["plot", str(tmp_path / "nothing")]).exit_code == 2


def test_compare_two_runs_and_refuse_different_problems(runs, tmp_path):
    out = tmp_path / "cmp"
    result = run_cli(["compare", str(runs["2d"]), str(runs["2d-fd"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "compare.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["run"], r["backend"], r["optimizer"]) for r in rows] == [("2d", "ad", "adam"), ("2d-fd", "fd", "zo-signrge")]
    assert rows[1]["queries"] == str(20 * 11)
    assert rows[0]["steps"] == "30"
    markdown = (out / "compare.md").read_text()
    assert markdown.count("\n") == 4 and "| 2d-fd | poisson2d | fd | zo-signrge |" in markdown
    assert _png_size(out / "compare-curves.png") == (round(11.0 * DPI), round(4.2 * DPI))
    refused = run_cli(["compare", str(runs["2d"]), str(runs["21d"]), "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2 and "cannot compare runs of different problems (hjb20, poisson2d)" in refused.output


def test_figures_of_an_l_shape_leave_the_removed_quadrant_out(tmp_path):
    problem = load_problem(REPO / "problems" / "poisson-lshape.yaml")
    changes = {"steps": 2, "width": 8, "eval_points": 200, "batch": 32, "condition_batch": 16}
    solve(problem, resolve_settings(problem, changes), out=tmp_path / "run", quiet=True)
    result = run_cli(["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    for figure in ("lines", "slice", "histogram"):
        rows = _csv(tmp_path / "run" / "plots" / f"{figure}.csv")
        x1, x2 = np.array([row["x1"] for row in rows]), np.array([row["x2"] for row in rows])
        assert not ((x1 >= 0) & (x2 <= 0)).any(), f"{figure}: points of the removed quadrant or its edges"
        assert np.isfinite([row["abs_error"] for row in rows]).all()
    slice_rows = _csv(tmp_path / "run" / "plots" / "slice.csv")
    # the 81 x 81 grid over [-1, 1]^2 strictly inside the L: 79^2 inside the square, less 40^2 with x1 >= 0, x2 <= 0
    assert len(slice_rows) == 79 * 79 - 40 * 40


NO_EXACT = """
name: no-exact
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
  time: {name: t, domain: [0, 1]}
equation: d(u, t) = 0.1 * lap(u)
conditions:
  start: {at: initial, value: "x1 * x2"}
solve: {network: mlp, width: 6, backend: ad, optimizer: adam, lr: 0.01, steps: 4, batch: 16, condition_batch: 8,
        eval_every: 2, eval_points: 50}
"""


def test_a_problem_without_an_exact_solution_gets_its_loss_and_figures_of_its_prediction(tmp_path):
    """No exact solution: the final line reports the loss (not a NaN error), the figures show the
    predicted solution along lines and over a slice, whose values are the network's (no error columns),
    summary.json says null for the errors, and compare shows them as a dash."""
    path = tmp_path / "no-exact.yaml"
    path.write_text(NO_EXACT)
    result = run_cli(["solve", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "no-exact: loss " in result.output and "no exact solution" in result.output and "nan" not in result.output
    plots = tmp_path / "run" / "plots"
    assert sorted(p.name for p in plots.glob("*.png")) == ["lines.png", "slice.png", "training.png"]
    from pinnzo.pinn import load_run

    run = load_run(tmp_path / "run")
    lines, slice_rows = _csv(plots / "lines.csv"), _csv(plots / "slice.csv")
    for rows in (lines, slice_rows):
        assert rows and "predicted" in rows[0] and "exact" not in rows[0] and "abs_error" not in rows[0]
    X = torch.tensor([[row[c] for c in run.problem.columns] for row in lines[:5]], dtype=torch.float64)
    np.testing.assert_allclose([row["predicted"] for row in lines[:5]], run.predict(X).numpy(), rtol=1e-6)
    # summary.json is strict JSON: no error to report is null, not NaN (which strict parsers refuse)
    import json

    def refuse(constant):
        raise ValueError(f"{constant} in summary.json")

    summary = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["final_rel_l2"] is None and summary["best_mse"] is None and summary["final_loss"] > 0
    assert run.summary["final_rel_l2"] is None
    result = run_cli(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "compare")])
    assert result.exit_code == 0 and "—" in result.output, result.output
    with open(tmp_path / "compare" / "compare-curves.csv") as file:  # the training loss, where there is no error
        curves = list(csv.DictReader(file))
    assert [float(row["loss"]) for row in curves] == [float(row["loss"]) for row in run.metrics]
