"""Inverse problems: unknown parameters (the bound transforms, training with every kind of optimizer,
the layered coordinate queries, resume, run folders) and measured data (reading, checks, pinnzo data make)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import interrupted_and_straight, run_cli
from pinnzo.data import make_measurements, measurements_csv
from pinnzo.derivatives import Autodiff
from pinnzo.errors import PinnzoError
from pinnzo.loop import Interrupted
from pinnzo.pinn import build, load_run, resolve_settings, solve
from pinnzo.problem import ProblemError, load_problem
from pinnzo.residual import sample_batch
from pinnzo.pilots import pilot_settings
from pinnzo.settings import Settings
from pinnzo.unknowns import ForwardFinish, Unknown

REPO = Path(__file__).resolve().parents[1]

# -k u'' = pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0: u = sin(pi x) / k. Data of u = sin(pi x) identify k = 1.
LINE = {
    "name": "line-inverse",
    "variables": {"space": {"name": "x", "dim": 1, "domain": [0, 1]}},
    "unknowns": {"k": {"initial": 0.5, "bounds": [0.1, 4], "exact": 1.0}},
    "equation": "-k * d(u, x, x) = pi**2 * sin(pi * x)",
    "exact": "sin(pi * x)",
    "conditions": {"ends": {"at": "boundary", "value": 0},
                   "measured": {"at": "data", "file": "line.csv"}},
    "solve": {"network": "mlp", "width": 8, "activation": "tanh", "dtype": "float64", "batch": 60,
              "condition_batch": 4, "eval_every": 5, "eval_points": 200},
}
FORWARD = {key: LINE[key] for key in ("name", "variables", "exact")} | {
    "equation": "-d(u, x, x) = pi**2 * sin(pi * x)"}


@pytest.fixture
def line(tmp_path):
    """LINE with 40 exact measurements of u in tmp_path/line.csv."""
    X, values, _ = make_measurements(load_problem(FORWARD), 40, 0.0, 0)
    (tmp_path / "line.csv").write_bytes(measurements_csv(["x"], X, values, ["exact values"]))
    return load_problem(LINE, tmp_path)


# ---- the bound transform ---------------------------------------------------

@pytest.mark.parametrize("low, high, initial", [(0.0, 1.0, 0.1), (2.0, math.inf, 2.5), (-math.inf, -1.0, -7.0),
                                                (-math.inf, math.inf, -3.0), (1e-3, 1.0, 0.999)])
def test_the_transform_keeps_the_bounds_and_inverts_at_the_initial_value(low, high, initial):
    unknown = Unknown("k", initial, low, high)
    raw = torch.tensor(unknown.raw(initial), dtype=torch.float64)
    assert unknown.value(raw).item() == pytest.approx(initial, rel=1e-12)
    everywhere = unknown.value(torch.linspace(-30, 30, 601, dtype=torch.float64))
    assert (everywhere >= low).all() and (everywhere <= high).all()
    assert (everywhere.diff() != 0).any() and ((everywhere.diff() > 0).all() or (everywhere.diff() < 0).all())
    if math.isfinite(low) and math.isfinite(high):  # the sigmoid map: lo + (hi - lo) sigmoid(r)
        assert unknown.value(torch.tensor(0.0)).item() == pytest.approx((low + high) / 2)


def test_the_problem_reads_unknowns_and_data(line):
    (unknown,) = line.unknowns
    assert (unknown.name, unknown.initial, unknown.low, unknown.high, unknown.exact) == ("k", 0.5, 0.1, 4.0, 1.0)
    measured = line.conditions[1]
    assert measured.on == "data" and measured.data.points.shape == (40, 1)
    torch.testing.assert_close(measured.data.values, torch.sin(torch.pi * measured.data.points[:, 0]))
    X, normals = line.sample_condition(measured, 7, torch.Generator(), torch.float64)
    assert torch.equal(X, measured.data.points) and normals is None  # every row, in the file's order
    # at the exact k the exact solution satisfies the equation; at the initial k it does not
    X = line.sample_interior(50, torch.Generator().manual_seed(0), torch.float64)
    atoms = Autodiff()(line.exact_solution, X, line.atoms, line.spatial)
    assert line.residual_from_atoms(X, atoms, line.exact_unknowns).abs().max() < 1e-10
    assert line.residual_from_atoms(X, atoms).abs().max() > 1  # (1 - 0.5) pi^2 sin(pi x)


def test_a_data_condition_can_measure_a_derivative_in_an_npz_file(tmp_path):
    X = torch.linspace(0.05, 0.95, 30, dtype=torch.float64)[:, None]
    np.savez(tmp_path / "slope.npz", x=X[:, 0].numpy(), ux=(torch.pi * torch.cos(torch.pi * X[:, 0])).numpy())
    problem = load_problem(LINE | {"conditions": {"slope": {"at": "data", "file": "slope.npz", "value": "d(u, x)",
                                                            "column": "ux"}}}, tmp_path)
    (condition,) = problem.conditions
    atoms = Autodiff()(problem.exact_solution, condition.data.points, problem.condition_atoms(condition),
                       problem.spatial)
    assert problem.condition_residual(condition, condition.data.points, None, atoms).abs().max() < 1e-12
    wrong = Autodiff()(lambda Y: 2 * problem.exact_solution(Y), condition.data.points,
                       problem.condition_atoms(condition), problem.spatial)
    assert problem.condition_residual(condition, condition.data.points, None, wrong).abs().max() > 1


@pytest.mark.parametrize("content, needle", [
    ("x,v\n0.5,1\n", "has columns x, v; expected exactly x, u"),
    ("x,u,t\n0.5,1,0\n", "expected exactly x, u"),
    ("x,u\n0.5,nan\n", "column u holds nan in row 1"),
    ("x,u\n0.5,1\n0.6\n", "row 2 has 1 values"),
    ("x,u\n0.5,one\n", "row 1, column u: not a number"),
    ("# only a comment\n", "is empty"),
    ("x,u\n", "has no rows"),
])
def test_a_bad_data_file_is_refused_naming_the_key(tmp_path, content, needle):
    (tmp_path / "line.csv").write_text(content)
    with pytest.raises(ProblemError, match="conditions.measured.file: ") as error:
        load_problem(LINE, tmp_path)
    assert needle in str(error.value)


# ---- training the unknowns ------------------------------------------------

def test_zo_gn_identifies_the_coefficient_without_back_propagation(line, tmp_path):
    run = solve(line, optimizer="zo-gn", backend="fd", steps=40, out=tmp_path / "run")
    assert run.summary["unknowns"]["k"]["initial"] == 0.5  # trained from its initial value, to the exact 1
    assert abs(run.metrics[-1]["k"] - 1.0) < abs(run.metrics[0]["k"] - 1.0) or abs(run.metrics[0]["k"] - 1) < 1e-3
    assert run.summary["unknowns"]["k"]["value"] == pytest.approx(1.0, rel=1e-3), run.summary["unknowns"]
    assert run.summary["unknowns"]["k"]["relative_error"] < 1e-3


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs", "gn", "zo-cge"])
def test_first_order_and_coordinate_optimizers_move_the_unknown_towards_its_value(line, tmp_path, optimizer):
    # zo-cge takes plain steps, and the ends weigh (2 pi)^2 (the conditions' automatic factor): a smaller lr
    changes = {"backend": "ad" if optimizer in ("adam", "lbfgs", "gn") else "fd", "steps": 6, "eval_every": 2,
               "lr": {"lbfgs": 0.5, "zo-cge": 0.005}.get(optimizer, 0.02)}
    run = solve(line, optimizer=optimizer, out=tmp_path / "run", **changes)
    k = [row["k"] for row in run.metrics]
    assert k[-1] > k[0] + 1e-3 and k[-1] > 0.5, (optimizer, k)  # the data pull k from 0.5 up to 1


@pytest.mark.parametrize("optimizer", ["zo-signrge", "zo-rge", "zo-adam"])
def test_random_direction_optimizers_update_the_unknown_at_every_step(line, tmp_path, optimizer):
    raw = []  # (no forward finish: it could hold the unknown in the last steps)
    solve(line, optimizer=optimizer, backend="fd", steps=5, lr=0.01, forward_finish=0.0, out=tmp_path / "run",
          callbacks=[lambda step, state: raw.append(state.theta[-1].item())])
    moves = np.diff([load_problem(LINE, tmp_path).unknowns[0].raw(0.5)] + raw)
    assert (np.abs(moves) > 0).all(), moves
    if optimizer == "zo-signrge":  # signSGD moves every coordinate by exactly lr
        np.testing.assert_allclose(np.abs(moves), 0.01, rtol=1e-9)


@pytest.mark.parametrize("backend", ["fd", "sparse-grid"])
def test_layered_coordinate_queries_cover_the_unknowns(line, backend):
    settings = resolve_settings(line, {"backend": backend, "width": 5, "sigma": 0.05, "rule": "gauss-hermite",
                                       "level": 3})
    objective = build(line, settings).objective
    assert objective.layered and objective.unknowns == 1
    batch = sample_batch(line, 6, 3, torch.Generator().manual_seed(0), torch.float64)
    theta = objective.flatten() + 0.1 * torch.randn(objective.dim, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(1))
    chosen, mu = torch.tensor([objective.dim - 1, 0, 7, objective.dim - 1, objective.dim - 3]), 1e-3
    before = objective.queries
    layered = objective.coordinate_residuals(theta, batch, chosen, mu)
    losses = objective.coordinate_losses(theta, batch, chosen, mu)
    assert objective.queries - before == 2 * len(chosen)
    black_box = objective.residuals(theta + mu * torch.eye(objective.dim, dtype=torch.float64)[chosen], batch)
    floor = 1e-8 if backend == "fd" else 1e-11
    assert (layered - black_box).abs().max() <= floor
    torch.testing.assert_close(losses, black_box.square().sum(1), rtol=1e-9, atol=floor)
    # the unknown's column moves the residuals of the equation only (the data do not involve k)
    column = black_box[0] - objective.residuals(theta[None], batch)[0]
    assert column[:6].abs().max() > 1e-6 and column[6:].abs().max() < 1e-12


def test_parts_of_a_batch_take_the_measurements_of_their_data_points(line):
    """A step's points in parts (the layered queries beyond memory_mb) or shards (torchrun's points
    split) take the data's measurements at their own data points; a grown batch keeps the data's
    points once (they are the file's, not drawn)."""
    objective = build(line, resolve_settings(line, {"backend": "fd", "width": 5})).objective
    loss = objective.loss_fn
    batch = sample_batch(line, 8, 4, torch.Generator().manual_seed(0), torch.float64)
    theta = objective.flatten() + 0.1 * torch.randn(objective.dim, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(1))
    network = objective.network(theta)
    whole = loss.residual_vector(network, batch)
    # (to fd's rounding: the network's values round differently in other GEMM sizes, and d2 divides by h^2)
    third = -(-len(loss.inputs(batch)) // 3)
    parts = loss.split(batch, third)
    assert len(parts) == 3 and [part.starts[2] for part in parts] == [0, 13, 26]  # 40 data points
    torch.testing.assert_close(loss.join_rows([loss.residual_vector(network, part) for part in parts], parts),
                               whole, rtol=0, atol=1e-8)
    chosen, mu = torch.arange(objective.dim), 1e-3
    objective.layered_rows = None
    columns = objective.coordinate_residuals(theta, batch, chosen, mu)
    objective.layered_rows = third
    assert (objective.coordinate_residuals(theta, batch, chosen, mu) - columns).abs().max() <= 1e-8 * columns.abs().max()
    halves = [batch.part(index, 2).part(side, 2) for index in range(2) for side in range(2)]  # a part of a shard
    assert [half.starts[2] for half in halves] == [0, 10, 20, 30] and all(half.sizes == batch.sizes for half in halves)
    torch.testing.assert_close(loss.join_rows([loss.residual_vector(network, half) for half in halves], halves),
                               whole, rtol=0, atol=1e-8)
    grown = batch.join(sample_batch(line, 8, 4, torch.Generator().manual_seed(2), torch.float64), (False, True))
    assert [len(X) for X, _ in grown.conditions] == [8, 40] and len(grown.interior) == 16
    assert loss.residual_vector(network, grown).shape == (16 + 8 + 40,)


# ---- run folders: metrics, summary, plots, resume, load_run ------------------

def test_the_run_folder_records_and_plots_the_unknowns_and_keeps_the_data(line, tmp_path):
    run = solve(line, optimizer="zo-gn", backend="fd", steps=5, out=tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    assert [float(row["k"]) for row in rows] == [row["k"] for row in run.metrics]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert float(rows[-1]["k"]) == summary["unknowns"]["k"]["value"] == run.summary["unknowns"]["k"]["value"]
    assert summary["unknowns"]["k"]["exact"] == 1.0 and summary["unknowns"]["k"]["bounds"] == [0.1, 4.0]
    assert summary["data_misfit"]["measured"]["rms"] > 0
    assert (tmp_path / "run" / "data" / "line.csv").read_bytes() == (tmp_path / "line.csv").read_bytes()
    (tmp_path / "line.csv").unlink()  # the run folder keeps its own copy
    again = load_run(tmp_path / "run")
    assert again.components.unknowns(again.theta) == run.components.unknowns(run.theta)
    from pinnzo.plots import unknown_curves

    assert unknown_curves(again, tmp_path / "run" / "plots", "png") == tmp_path / "run" / "plots" / "unknowns.png"
    plotted = list(csv.DictReader((tmp_path / "run" / "plots" / "unknowns.csv").read_text().splitlines()))
    assert [float(row["k"]) for row in plotted] == [row["k"] for row in run.metrics]


@pytest.mark.parametrize("optimizer, backend", [("zo-gn", "fd"), ("adam", "ad")])
def test_resume_with_unknowns_is_bit_identical(line, tmp_path, optimizer, backend):
    settings = resolve_settings(line, {"optimizer": optimizer, "backend": backend, "steps": 12,
                                       "resample_every": 5, "eval_every": 3})
    (straight, resumed), (a, b) = interrupted_and_straight(line, settings, tmp_path, at_step=6)
    assert straight == resumed and "k" in straight[0]
    assert "unknowns.raw" in a and all(torch.equal(a[key], b[key]) for key in a)


def test_a_resume_with_a_changed_data_file_is_refused(line, tmp_path):
    settings = resolve_settings(line, {"optimizer": "zo-gn", "backend": "fd", "steps": 4})

    def interrupt(step, state):
        if step == 1:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        solve(line, settings, out=tmp_path / "run", callbacks=[interrupt])
    with open(tmp_path / "line.csv", "a") as file:
        file.write("0.5,1.0\n")
    result = run_cli(["solve", str(_as_file(tmp_path)), "--resume", str(tmp_path / "run"), "--optimizer", "zo-gn",
                      "--backend", "fd", "--steps", "4", "--quiet", "--no-plots"])
    assert result.exit_code == 2 and "the problem differs" in result.output, result.output


def _as_file(folder: Path) -> Path:
    import yaml

    path = folder / "line.yaml"
    path.write_text(yaml.safe_dump(LINE, sort_keys=False))
    return path


# ---- pinnzo data make ---------------------------------------------------------

def test_data_make_is_reproducible_with_a_seed_and_never_overwrites(tmp_path):
    problem = REPO / "problems" / "heat10.yaml"
    out = [tmp_path / name for name in ("a.csv", "b.csv", "c.csv")]
    for path, seed in zip(out, (3, 3, 4)):
        result = run_cli(["data", "make", str(problem), "--points", "50", "--noise", "0.05", "--seed", str(seed),
                          "--out", str(path)])
        assert result.exit_code == 0, result.output
    data = [[line for line in path.read_text().splitlines() if not line.startswith("#")] for path in out]
    assert data[0] == data[1] != data[2] and len(data[0]) == 51
    lines = out[0].read_text().splitlines()
    assert lines[0] == f"# made by: pinnzo data make {problem} --points 50 --noise 0.05 --seed 3 --out {out[0]}"
    before = out[0].read_bytes()
    result = run_cli(["data", "make", str(problem), "--points", "5", "--out", str(out[0])])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "exists" in result.output
    assert out[0].read_bytes() == before


def test_data_make_noise_is_the_stated_fraction_of_the_rms(tmp_path):
    problem = load_problem(REPO / "problems" / "burgers1d.yaml")
    X, values, sigma = make_measurements(problem, 4000, 0.02, 0)
    exact = problem.exact_solution(X)
    assert sigma == pytest.approx(0.02 * exact.square().mean().sqrt().item())
    assert (values - exact).std().item() == pytest.approx(sigma, rel=0.05)
    assert X.min(0).values.tolist() >= [-1, 0] and X.max(0).values.tolist() <= [1, 1]
    path = tmp_path / "u.csv"
    path.write_bytes(measurements_csv(problem.columns, X, values, []))
    shutil.copy(path, tmp_path / "u2.csv")
    read = load_problem(LINE | {"variables": {"space": {"name": "x", "dim": 1, "domain": [-1, 1]},
                                              "time": {"name": "t", "domain": [0, 1]}},
                                "exact": "x", "equation": "-k * d(u, x, x)",
                                "conditions": {"measured": {"at": "data", "file": "u.csv"}}}, tmp_path)
    assert torch.equal(read.conditions[0].data.values, values)  # the CSV reads back exactly


def test_data_make_refuses_a_problem_without_an_exact_solution(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("variables:\n  space: {name: x, dim: 1, domain: [0, 1]}\nequation: d(u, x, x)\n")
    result = run_cli(["data", "make", str(path), "--out", str(tmp_path / "d.csv")])
    assert result.exit_code == 2 and "no exact solution" in result.output and not (tmp_path / "d.csv").exists()


def test_data_make_measures_a_derivative_that_identifies_the_coefficient_end_to_end(tmp_path):
    import yaml

    forward = tmp_path / "forward.yaml"
    forward.write_text(yaml.safe_dump(FORWARD, sort_keys=False))
    result = run_cli(["data", "make", str(forward), "--points", "30", "--value", "d(u, x)", "--column", "ux",
                      "--out", str(tmp_path / "slope.csv")])
    assert result.exit_code == 0 and "30 measurements of d(u, x)" in result.output, result.output
    text = (tmp_path / "slope.csv").read_text()
    assert "--value 'd(u, x)' --column ux" in text.splitlines()[0] and "\nx,ux\n" in text
    slope = load_problem(LINE | {"conditions": {"ends": {"at": "boundary", "value": 0},
                                                "slope": {"at": "data", "file": "slope.csv", "value": "d(u, x)",
                                                          "column": "ux"}}}, tmp_path)
    data = slope.conditions[1].data
    torch.testing.assert_close(data.values, torch.pi * torch.cos(torch.pi * data.points[:, 0]), rtol=0, atol=1e-14)
    # u = sin(pi x) / k, so the measured slopes pi cos(pi x) pin k = 1 (trained from 0.5, forward queries only)
    run = solve(slope, optimizer="zo-gn", backend="fd", steps=12, out=tmp_path / "run")
    assert run.summary["unknowns"]["k"]["relative_error"] < 1e-3, run.summary["unknowns"]


@pytest.mark.parametrize("flags, needle", [
    (["--value", "d(u, y)"], "--value: unknown name 'y'"),
    (["--value", "x"], "--value: the measured value does not involve the unknown u"),
    (["--value", "d(u, x) = 1"], "--value: expected the measured quantity"),
    (["--column", "x"], "--column: 'x' is a variable"),
    (["--column", "sin"], "--column: expected a plain identifier"),
])
def test_data_make_refuses_a_bad_measured_quantity_in_one_line(tmp_path, flags, needle):
    result = run_cli(["data", "make", str(REPO / "problems" / "burgers1d.yaml"), "--points", "5", *flags,
                      "--out", str(tmp_path / "d.csv")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and needle in result.output, result.output
    assert not (tmp_path / "d.csv").exists()


# ---- the shipped inverse problems -------------------------------------------------

@pytest.mark.parametrize("name, unknown, exact", [("heat10-inverse", "k", 1.0), ("burgers1d-inverse", "nu", 0.1)])
def test_the_shipped_inverse_problems_state_their_exact_parameter_and_noisy_data(name, unknown, exact):
    problem = load_problem(REPO / "problems" / f"{name}.yaml")
    assert problem.exact_unknowns == {unknown: exact}
    assert f"its exact value is {unknown} = {exact:g}" in problem.text
    (measured,) = [c for c in problem.conditions if c.data is not None]
    misfit = measured.data.values - problem.exact_solution(measured.data.points)
    rms = problem.exact_solution(measured.data.points).square().mean().sqrt()
    assert 200 <= len(misfit) <= 500
    assert 0.005 < (misfit.square().mean().sqrt() / rms).item() < 0.02  # 1% noise
    assert measured.data.noise == pytest.approx(misfit.std().item(), rel=0.2)


def test_heat10_inverse_data_see_a_one_percent_change_of_k():
    """The solutions u_k = exp(-k pi^2 t / 4) mean(sin(pi x / 2)) share the problem's initial values and
    insulated faces for every k: a 1% change of k must move the 400 noise-free data by many noise levels."""
    problem = load_problem(REPO / "problems" / "heat10-inverse.yaml")
    (measured,) = [c for c in problem.conditions if c.data is not None]

    def solution(k):
        return lambda X: torch.exp(-k * torch.pi ** 2 * X[:, -1] / 4) * torch.sin(torch.pi * X[:, :-1] / 2).mean(1)
    X = problem.sample_interior(64, torch.Generator().manual_seed(0), torch.float64)
    atoms = Autodiff()(solution(1.3), X, problem.atoms, problem.spatial)
    assert problem.residual_from_atoms(X, atoms, {"k": 1.3}).abs().max() < 1e-12
    faces, normals = problem.sample_condition(problem.conditions[1], 64, torch.Generator().manual_seed(1),
                                              torch.float64)
    flux = Autodiff()(solution(1.3), faces, problem.condition_atoms(problem.conditions[1]), problem.spatial)
    assert problem.condition_residual(problem.conditions[1], faces, normals, flux).abs().max() < 1e-12
    points = measured.data.points
    torch.testing.assert_close(solution(1.0)(points), problem.exact_solution(points), rtol=0, atol=1e-14)
    chi2 = ((solution(1.01)(points) - solution(1.0)(points)) / measured.data.noise).square().sum().item()
    assert chi2 > 100  # 174: a 1% error of k is a 13-sigma misfit of the data


# ---- the discrepancy principle (loss_weights: discrepancy) ----------------

def _noisy_line(tmp_path, stated: float, actual: float = 0.02):
    """LINE with 40 measurements of u carrying noise of standard deviation ``actual``, stated as ``stated``."""
    X, values, _ = make_measurements(load_problem(FORWARD), 40, 0.0, 0)
    values = values + actual * torch.randn(values.shape, generator=torch.Generator().manual_seed(3),
                                         dtype=values.dtype)
    (tmp_path / "line.csv").write_bytes(measurements_csv(["x"], X, values, ["noisy values"]))
    spec = {**LINE, "conditions": {**LINE["conditions"], "measured": {"at": "data", "file": "line.csv",
                                                                      "noise": stated}}}
    return load_problem(spec, tmp_path)


def test_the_discrepancy_weights_leave_a_fit_above_its_noise_alone_and_weight_down_one_below(tmp_path):
    settings = dict(optimizer="zo-gn", backend="fd", steps=40, resample_every=10, width=16, batch=200,
                    forward_finish=0.0)  # the discrepancy weights alone (the finish weighs the data down too)
    fixed = solve(_noisy_line(tmp_path, 1e-4), out=tmp_path / "fixed", **settings)
    # the misfit (about 0.017) stays far above a stated noise of 1e-4: every factor is 1, the fit is the plain one
    above = solve(_noisy_line(tmp_path, 1e-4), out=tmp_path / "above", loss_weights="discrepancy", **settings)
    assert all(row["weight_measured"] == 1.0 for row in above.metrics)
    assert torch.equal(above.theta, fixed.theta)
    # stated as 0.02, the draw's own standard deviation, the fit is below it: the weight falls
    below = solve(_noisy_line(tmp_path, 0.02), out=tmp_path / "below", loss_weights="discrepancy", **settings)
    assert below.summary["data_misfit"]["measured"]["rms_over_noise"] < 1
    weights = [row["weight_measured"] for row in below.metrics]
    assert weights[0] == 1.0 and weights == sorted(weights, reverse=True) and weights[-1] < 0.5
    ends = (2 * math.pi) ** 2  # the conditions' automatic factor for d(u, x, x) on [0, 1]; the data's is 1
    assert all(row["weight_residual"] == 1.0 and row["weight_ends"] == pytest.approx(ends) for row in below.metrics)


def test_the_discrepancy_weight_stops_at_its_floor_and_needs_a_stated_noise(tmp_path):
    problem = _noisy_line(tmp_path, 1.0)  # stated 50x too large: the fit is always below it
    run = solve(problem, optimizer="zo-gn", backend="fd", steps=40, resample_every=10, loss_weights="discrepancy",
                discrepancy_floor=0.05, forward_finish=0.0, out=tmp_path / "run")
    assert run.metrics[-1]["weight_measured"] == pytest.approx(0.05, rel=1e-12)
    with pytest.raises(PinnzoError, match="no data condition states its noise"):
        solve(load_problem(LINE, tmp_path), optimizer="zo-gn", steps=2, loss_weights="discrepancy",
              out=tmp_path / "none")


# ---- the forward finish (forward_finish) -------------------------------------

def test_a_held_batch_takes_its_unknowns_and_weighs_its_data_down(line):
    """With held unknowns the loss no longer depends on theta's unknown coordinates, and equals the loss
    at the held values with the data's weight times the factor: the closed form of the terms."""
    settings = resolve_settings(line, {"optimizer": "zo-gn", "backend": "fd", "width": 5})
    components = build(line, settings)
    objective, loss = components.objective, components.loss
    finish = ForwardFinish.create(line, settings.replace({"forward_finish": 0.5, "forward_finish_weight": 0.1}), 1)
    theta = objective.flatten() + 0.1 * torch.randn(objective.dim, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(1))
    batch = sample_batch(line, 8, 4, torch.Generator().manual_seed(0), torch.float64)
    assert not finish.starts(0.42, theta, 42) and not finish.starts(0.49, theta, 49)  # not before half the run
    assert finish.apply(batch) is batch and torch.equal(finish.constrain(theta), theta)
    assert finish.starts(0.55, theta, 55) and not finish.starts(0.9, theta + 1, 90)  # once, at theta's values
    held = finish.apply(batch)
    moved = theta.clone()
    moved[-1] += 0.3  # another k
    terms = loss.residuals(objective.network(theta), batch)
    ends = loss.condition_weights[0]
    by_hand = (terms["residual"].square().mean() + ends * terms["ends"].square().mean()
               + 0.1 * terms["measured"].square().mean())
    for parameters in (theta, moved):
        torch.testing.assert_close(objective.loss(parameters, held), by_hand, rtol=1e-12, atol=0)
    assert objective.loss(moved, batch) != objective.loss(theta, batch)
    torch.testing.assert_close(finish.constrain(moved), theta, rtol=0, atol=0)
    # the unknown's Jacobian column is zero: every optimizer leaves it
    columns = objective.coordinate_residuals(theta, held, torch.tensor([objective.dim - 1]), 1e-3)
    assert torch.equal(columns[0], objective.residuals(theta[None], held)[0])


def test_the_finish_holds_only_settled_unknowns(line):
    """It starts at the first step with a quarter of the run left at which the unknown moved by less
    than the tolerance (relative) since the last step at least a tenth of the run and two point sets
    before (here a run of 100 steps)."""
    settings = resolve_settings(line, {"optimizer": "zo-gn", "backend": "fd", "width": 5,
                                       "forward_finish_tolerance": 0.01})
    theta = build(line, settings).objective.flatten()
    k = lambda value: torch.cat([theta[:-1], torch.tensor([line.unknowns[0].raw(value)], dtype=theta.dtype)])
    moves = [(0.60, 0.80), (0.66, 0.90), (0.70, 0.95), (0.76, 0.97), (0.80, 0.98), (0.86, 0.99), (0.90, 0.992),
             (0.97, 0.995)]
    finish = ForwardFinish.create(line, settings, resample_every=1)
    started = [finish.starts(done, k(value), round(100 * done)) for done, value in moves]
    # before 0.75 never; then against the last value at least 0.1 earlier: 7.8% (0.90 at 0.66), 3.2%, 2.1%,
    # 1.2% (0.98 at 0.80), and at 0.97 0.5% (0.99 at 0.86): held
    assert started == [False] * 7 + [True], started
    assert finish.values(finish.constrain(theta)).item() == pytest.approx(0.995, rel=1e-12)
    # with point sets of 20 steps the reference must be 40 steps old: at step 97 that is 0.80 at step 60,
    # 24% off, and nothing is held
    finish = ForwardFinish.create(line, settings, resample_every=20)
    assert not any(finish.starts(done, k(value), round(100 * done)) for done, value in moves)


@pytest.mark.parametrize("optimizer, backend", [("zo-gn", "fd"), ("adam", "ad")])
def test_the_forward_finish_holds_the_unknowns_over_the_last_quarter(tmp_path, optimizer, backend):
    # (a tolerance of 1: settled at once, so that Adam's unknown, still moving, is held too)
    run = solve(_noisy_line(tmp_path, 0.02), optimizer=optimizer, backend=backend, steps=40, resample_every=10,
                eval_every=1, lr=0.01, forward_finish_tolerance=1.0, out=tmp_path / "run")
    k = [row["k"] for row in run.metrics]
    assert len(set(k[:30])) > 1 and len(set(k[30:])) == 1, k  # steps 31 to 40 (done >= 0.75) hold it
    assert k[-1] == run.summary["unknowns"]["k"]["value"]
    (event,) = [event for event in run.summary["events"] if event["event"].startswith("forward finish")]
    assert event["step"] == 31 and f"k = {k[29]:.6g}" in event["event"], event


def test_the_forward_finish_brings_u_onto_the_equations_solution_for_the_estimate(tmp_path):
    """-k u'' = pi^2 sin(pi x) with zero ends has u = sin(pi x) / k: after the finish u is that for the held
    k to well within the bend of the plain fit towards the data's noise (standard deviation 0.1; measured
    1.6e-4 without the finish, 2.9e-6 with it)."""
    settings = dict(optimizer="gn", backend="fd", steps=120, resample_every=10, width=16, batch=200)
    distances = {}
    for share in (0.0, 0.25):
        run = solve(_noisy_line(tmp_path, 0.1, 0.1), forward_finish=share, out=tmp_path / f"run{share}", **settings)
        X = torch.linspace(0, 1, 401, dtype=torch.float64)[:, None]
        u = run.predict(X)
        equation = torch.sin(torch.pi * X[:, 0]) / run.summary["unknowns"]["k"]["value"]
        distances[share] = ((u - equation).norm() / equation.norm()).item()
    assert distances[0.25] < distances[0.0] / 10 and distances[0.25] < 1e-5, distances


def test_resume_across_the_forward_finish_is_bit_identical(line, tmp_path):
    # interrupted after step 15 of 20: the settling test's history (the ends of the point sets of 2 steps)
    # must survive the resume; the finish starts at step 17 (index 16, the first set end past 3/4)
    settings = resolve_settings(line, {"optimizer": "zo-gn", "backend": "fd", "steps": 20, "resample_every": 2,
                                       "eval_every": 1, "forward_finish_tolerance": 0.05})
    (straight, resumed), (a, b) = interrupted_and_straight(line, settings, tmp_path, at_step=14)
    assert straight == resumed and len({row["k"] for row in straight[-5:]}) == 1  # held from step 17 on
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_the_pilots_run_without_the_forward_finish():
    assert pilot_settings(Settings(), "tanh").forward_finish == 0.0 and Settings().forward_finish == 0.25


def test_a_run_whose_unknown_still_moves_is_not_held(tmp_path):
    # Adam at lr 0.01 moves k by more than 0.1% over every four of its 40 steps
    run = solve(_noisy_line(tmp_path, 0.02), optimizer="adam", backend="ad", steps=40, eval_every=1, lr=0.01,
                out=tmp_path / "run")
    k = [row["k"] for row in run.metrics]
    assert all(abs(b - a) > 1e-3 * abs(a) for a, b in zip(k[26:], k[30:]))
    assert not [event for event in run.summary["events"] if event["event"].startswith("forward finish")]
