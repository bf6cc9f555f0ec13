"""End-to-end solves, the run folder, resume, divergence, and the solve CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import LINE, run_cli
from pinnzo.errors import PinnzoError
from pinnzo.loop import Diverged, Interrupted
from pinnzo.pinn import build, solve
from pinnzo.problem import load_problem
from pinnzo.residual import PINNLoss


def train(problem, settings, out, resume=False, quiet=True, on_step=None) -> dict:
    """A solve in ``out`` with these exact settings; its summary."""
    callbacks = [lambda step, state: on_step(step)] if on_step else []
    return solve(problem, settings, out=out, resume=resume, quiet=quiet, callbacks=callbacks).summary


def defaults(problem):
    from pinnzo.pinn import resolve_settings

    return resolve_settings(problem)

# A 2-D analogue of the paper's HJB: u_t + lap u - 0.5 |grad u|^2 = -2 on [0,1]^2 x [0,1],
# exact u = x1 + x2 + 1 - t, terminal condition by the ansatz: the network must learn N = 1.
SMALL = """
name: small-hjb
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
  time: {name: t, domain: [0, 1]}
equation: d(u, t) + lap(u) - 0.5 * gradsq(u) = -2
exact: sum(x) + 1 - t
ansatz: sum(x) + (1 - t) * N
solve:
  network: tt
  width: 8
  rank: 2
  backend: sparse-grid
  optimizer: zo-signrge
  lr: 0.01
  steps: 60
  batch: 32
  eval_every: 20
  eval_points: 500
  seed: 3
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return load_problem(path)


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("changes, factor", [
    ({"optimizer": "adam", "backend": "ad", "lr": 0.02}, 5),
    ({"optimizer": "sgd", "backend": "fd", "lr": 0.01, "momentum": 0.5}, 3),
    ({"optimizer": "zo-signrge"}, 3),
    ({"optimizer": "zo-rge", "lr": 0.01, "directions": 20}, 2),
    ({"optimizer": "zo-adam", "lr": 0.02, "backend": "stein", "samples": 64}, 2),
    ({"optimizer": "zo-cge", "lr": 0.005, "momentum": 0.5, "steps": 40}, 2),
    ({"optimizer": "hybrid", "patience": 10, "cge_lr": 0.002}, 3),
])
def test_short_solves_reduce_the_validation_error(small, tmp_path, changes, factor):
    settings = defaults(small).replace(changes)
    summary = train(small, settings, tmp_path / "run", quiet=True)
    rows = _rows(tmp_path / "run")
    first, last = float(rows[0]["val_rel_l2"]), summary["final_rel_l2"]
    assert last < first / factor, (first, last)
    # loss queries per step, from the estimators' formulas: 1 (back-propagation), N + 1 (RGE),
    # d + 1 (CGE over all d coordinates); the hybrid switches from RGE to CGE once
    d = summary["parameters"]
    per_step = {"adam": 1, "sgd": 1, "zo-signrge": settings.directions + 1, "zo-rge": settings.directions + 1,
                "zo-adam": settings.directions + 1, "zo-cge": d + 1}
    if settings.optimizer == "hybrid":
        switch = summary["events"][0]["step"] if summary["events"] else settings.steps
        expected = switch * (settings.directions + 1) + (settings.steps - switch) * (d + 1)
    else:
        expected = settings.steps * per_step[settings.optimizer]
    assert summary["total_queries"] == int(rows[-1]["queries"]) == expected
    assert summary["steps"] == settings.steps


def test_run_folder_contents(small, tmp_path):
    summary = train(small, defaults(small), tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json", "model.pt",
                                               "best.pt", "checkpoint.pt"}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["settings"]["optimizer"] == "zo-signrge" and config["problem_name"] == "small-hjb"
    saved = json.loads((run / "summary.json").read_text())
    for key in ("problem", "backend", "optimizer", "network", "parameters", "steps", "total_queries",
                "final_loss", "best_loss", "final_mse", "final_rel_l2", "best_mse", "best_rel_l2",
                "wall_time_s", "device", "dtype", "versions"):
        assert key in saved, key
    assert "smoothed" in saved["prediction"]  # sparse-grid: the paper's smoothed prediction
    assert saved["queries_per_step"] == 11  # signRGE, N = 10 forward differences
    state = torch.load(run / "model.pt", weights_only=True)
    components = build(small, defaults(small))
    components.model.load_state_dict(state)
    # the saved model reproduces the summary's final error
    from pinnzo.pinn import Validation
    validation = Validation.create(small, defaults(small), torch.float32, "cpu")
    theta = components.objective.flatten()
    assert validation.errors(components.predict(theta, validation.X))[1] == pytest.approx(
        summary["final_rel_l2"], rel=1e-5)
    assert len(_rows(run)) == 4  # steps 1, 20, 40, 60


def test_resume_after_interrupt_gives_the_uninterrupted_numbers(small, tmp_path):
    settings = defaults(small).replace({"steps": 50, "eval_every": 10})
    train(small, settings, tmp_path / "straight", quiet=True)

    def interrupt(step):
        if step == 23:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        train(small, settings, tmp_path / "broken", quiet=True, on_step=interrupt)

    def crash(step):  # like kill -9: no checkpoint is written at the crash
        if step == 37:
            raise SystemExit(137)
    with pytest.raises(SystemExit):
        train(small, settings, tmp_path / "broken", resume=True, quiet=True, on_step=crash)
    train(small, settings, tmp_path / "broken", resume=True, quiet=True)
    straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "broken")
    drop = lambda rows: [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]
    assert drop(straight) == drop(resumed)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_resume_is_refused(small, tmp_path):
    settings = defaults(small).replace({"steps": 20})
    train(small, settings, tmp_path / "run", quiet=True)
    with pytest.raises(PinnzoError, match=r"does not match the saved run: lr: saved 0.01, now 0.02"):
        train(small, settings.replace({"lr": 0.02}), tmp_path / "run", resume=True, quiet=True)
    with pytest.raises(PinnzoError, match="nothing to resume"):
        train(small, settings, tmp_path / "empty", resume=True, quiet=True)
    with pytest.raises(PinnzoError, match="exists and is not empty"):
        train(small, settings, tmp_path / "run", quiet=True)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(small, tmp_path, monkeypatch):
    settings = defaults(small).replace({"steps": 40, "eval_every": 10, "optimizer": "adam", "backend": "ad"})
    original = PINNLoss.__call__
    calls = {"n": 0}

    def poisoned(self, network, batch):
        calls["n"] += 1
        value = original(self, network, batch)
        return value * float("nan") if calls["n"] > 25 else value
    monkeypatch.setattr(PINNLoss, "__call__", poisoned)
    with pytest.raises(Diverged, match="at step 26; stopped. The last good checkpoint \\(step 20\\)"):
        train(small, settings, tmp_path / "run", quiet=True)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 20 and torch.isfinite(checkpoint["theta"]).all()


# ---- the CLI ----------------------------------------------------------------

def test_cli_flags_override_the_file(tmp_path):
    problem = tmp_path / "small.yaml"
    problem.write_text(SMALL)
    out = tmp_path / "run"
    result = run_cli(["solve", str(problem), "--steps", "4", "--lr", "0.02", "--backend", "ad",
                      "--set", "eval_every=2", "--set", "width=6", "--width", "5", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())["settings"]
    assert (saved["steps"], saved["lr"], saved["backend"], saved["eval_every"], saved["width"]) == (4, 0.02, "ad", 2, 5)
    assert saved["optimizer"] == "zo-signrge" and saved["rank"] == 2  # from the file
    assert "relative L2" in result.output and str(out) in result.output


@pytest.mark.parametrize("args, needle", [
    (["--backend", "magic"], "unknown backend 'magic'; must be one of ad, fd, stein, sparse-grid"),
    (["--optimizer", "newton"], "unknown optimizer 'newton'; must be one of"),
    (["--dtype", "float16"], "--dtype: unknown value 'float16'; must be one of auto, float32, float64"),
    (["--steps", "many"], "'--steps'"),
    (["--set", "colour=red"], "--set colour: unknown setting"),
    (["--set", "steps"], "--set expects key=value"),
    (["--bogus"], "No such option"),
    (["--preset", "huge"], "unknown preset 'huge'; must be one of paper"),
    (["--resume", "nowhere"], "nothing to resume"),
    (["--steps", "0"], "--steps: expected an integer >= 1; found 0"),
    (["--set", "eval_every=0"], "--set eval_every: expected an integer >= 1; found 0"),
    (["--sigma", "0"], "--sigma: expected a positive finite number; found 0.0"),
    (["--lr", "-1"], "--lr: expected a positive finite number; found -1.0"),
    (["--set", "momentum=1"], "--set momentum: expected a number in [0, 1); found 1.0"),
    (["--set", "forward_finish=1"], "--set forward_finish: expected a number in [0, 1); found 1.0"),
    (["--set", "forward_finish_weight=2"], "--set forward_finish_weight: expected a number in [0, 1]; found 2.0"),
    (["--set", "mu=nan"], "--set mu: expected a positive finite number; found nan"),
    (["--set", "depth=100000"], "--set depth: expected an integer <= 1,000; found 100,000"),
])
def test_cli_bad_flags_give_exit_2_and_one_line(tmp_path, args, needle):
    problem = tmp_path / "small.yaml"
    problem.write_text(SMALL)
    result = run_cli(["solve", str(problem), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnzo: error:") and needle in lines[0], result.output


def test_cli_refuses_cuda_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    problem = tmp_path / "small.yaml"
    problem.write_text(SMALL)
    result = run_cli(["solve", str(problem), "--device", "cuda", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_explicit_tt_shapes_give_the_papers_layers(small):
    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / "hjb20.yaml")
    settings = defaults(problem).replace({"width": 512, "shapes": "1x1x3x7,8x4x4x4"})
    table = build(problem, settings).model.parameter_table()
    assert [row[1] for row in table] == ["TT 21 -> 512 (1x1x3x7 -> 8x4x4x4), ranks=[1, 2, 2, 2, 1]",
                                         "TT 512 -> 512 (8x4x4x4 -> 8x4x4x4), ranks=[1, 2, 2, 2, 1]",
                                         "dense 512 -> 1"]
    assert [row[2] for row in table] == [136 + 512, 288 + 512, 513]
    with pytest.raises(PinnzoError, match="do not cover 512"):
        build(problem, settings.replace({"shapes": "1x1x3x7,4x4x4x4"}))
    with pytest.raises(PinnzoError, match="expected 'input,hidden'"):
        build(problem, settings.replace({"shapes": "1x1x3x7"}))


def test_a_second_writer_of_a_run_folder_is_refused(small, tmp_path):
    """While one process writes a run folder (it holds the folder's advisory lock), another
    --resume of it is refused with one line; afterwards the resume goes through."""
    from pinnzo import runs

    settings = defaults(small).replace({"steps": 4, "eval_every": 2})

    def stop(step):
        if step == 1:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        train(small, settings, tmp_path / "run", on_step=stop)
    with runs.writer_lock(tmp_path / "run"):
        with pytest.raises(PinnzoError, match="another pinnzo process is writing this run folder"):
            train(small, settings, tmp_path / "run", resume=True)
    assert train(small, settings, tmp_path / "run", resume=True)["steps"] == 4


@pytest.mark.parametrize("args, needle", [
    (["--batch", "1000000000"], "batch: 1,000,000,000 needs about"),
    (["--width", "10000000"], "width: 10,000,000 needs about"),
    (["--width", "4096", "--depth", "1000"], "depth: 1,000 needs about"),
    (["--rank", "100000"], "rank: 100,000 needs about"),
    (["--set", "directions=100000000"], "directions: 100,000,000 needs about"),
    (["--set", "eval_points=2000000000"], "eval_points: 2,000,000,000 needs about"),
    (["--backend", "stein", "--set", "samples=1000000000"], "samples: 1,000,000,000 needs about"),
    (["--seed", str(2**64 - 1)], "--seed: expected an integer <= 4,611,686,018,427,387,904"),
])
def test_oversized_settings_are_refused_before_allocating(tmp_path, args, needle):
    problem = tmp_path / "small.yaml"
    problem.write_text(SMALL)
    result = run_cli(["solve", str(problem), *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "r").exists()


# ---- dtype "auto" ------------------------------------------------------------

@pytest.mark.parametrize("optimizer, dtype", [("zo-gn", "float64"), ("gn", "float64"), ("lbfgs", "float64"),
                                              ("adam-lbfgs", "float64"), ("zo-signrge", "float32"),
                                              ("adam", "float32"), ("hybrid", "float32")])
def test_dtype_auto_is_float64_for_least_squares_and_quasi_newton_optimizers(optimizer, dtype):
    from pinnzo.pinn import resolve_settings

    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / "hjb20.yaml")
    assert problem.solve.get("dtype") is None  # the demo's file leaves it to its method
    assert resolve_settings(problem, {"optimizer": optimizer}).dtype == dtype


def test_an_explicit_dtype_wins_over_auto(tmp_path):
    from pinnzo.pinn import resolve_settings

    given = yaml.safe_load(SMALL)
    given["solve"] = {**given.get("solve", {}), "dtype": "float32"}
    in_file = load_problem(given)
    assert resolve_settings(in_file, {"optimizer": "zo-gn"}).dtype == "float32"  # the file's
    assert resolve_settings(in_file, {"optimizer": "zo-gn", "dtype": "float64"}).dtype == "float64"  # a flag's
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    result = run_cli(["solve", str(path), "--optimizer", "zo-gn", "--dtype", "float32", "--steps", "1",
                      "--set", "width=4", "--set", "eval_points=10", "--out", str(tmp_path / "run"), "-q",
                      "--no-plots"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["settings"]["dtype"] == "float32"


# ---- the Gauss-Newton optimizers' defaults --------------------------------------

LEAST_SQUARES_RECIPE = {"network": "mlp", "width": 24, "depth": 2, "activation": "tanh", "backend": "fd",
                        "batch": 1000, "condition_batch": 1000}


@pytest.mark.parametrize("optimizer", ["zo-gn", "gn"])
def test_gauss_newton_gets_an_overdetermined_dense_recipe_where_nothing_else_is_said(optimizer):
    from pinnzo.pinn import build, resolve_settings

    given = yaml.safe_load(SMALL)
    del given["solve"]
    problem = load_problem(given)  # a user's file with no solve: block
    settings = resolve_settings(problem, {"optimizer": optimizer})
    assert {key: getattr(settings, key) for key in LEAST_SQUARES_RECIPE} == LEAST_SQUARES_RECIPE
    assert settings.dtype == "float64"
    residuals = settings.batch + settings.condition_batch * len(problem.conditions)
    assert residuals > build(problem, settings).objective.dim  # overdetermined: 1,000 residuals, 721 parameters


def test_a_file_that_names_no_optimizer_is_solved_by_zo_gn_with_its_recipe():
    """A user's PDE with no solve: block and no flags gets the back-propagation-free Gauss-Newton (its
    recipe, float64), not the paper's hybrid; a solve: block that names the hybrid keeps it."""
    from pinnzo.pinn import resolve_settings

    given = yaml.safe_load(SMALL)
    del given["solve"]
    settings = resolve_settings(load_problem(given))
    assert settings.optimizer == "zo-gn" and settings.dtype == "float64"
    assert {key: getattr(settings, key) for key in LEAST_SQUARES_RECIPE} == LEAST_SQUARES_RECIPE
    given["solve"] = {"optimizer": "hybrid"}
    settings = resolve_settings(load_problem(given))
    assert (settings.optimizer, settings.network, settings.backend, settings.dtype) == \
        ("hybrid", "tt", "sparse-grid", "float32")


def test_the_file_and_the_flags_win_over_the_optimizers_defaults(tmp_path):
    from pinnzo.pinn import resolve_settings

    given = yaml.safe_load(SMALL)
    given["solve"] = {"optimizer": "zo-gn", "batch": 300, "network": "tt"}
    problem = load_problem(given)
    settings = resolve_settings(problem, {"backend": "sparse-grid"})
    assert (settings.batch, settings.network, settings.backend) == (300, "tt", "sparse-grid")  # file, file, flag
    assert (settings.width, settings.activation, settings.condition_batch) == (24, "tanh", 1000)  # zo-gn's
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(given))
    result = run_cli(["solve", str(path), "--steps", "1", "--set", "width=4", "--set", "eval_points=10",
                      "--out", str(tmp_path / "run"), "-q", "--no-plots"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["settings"]
    assert (written["batch"], written["network"], written["width"], written["backend"]) == (300, "tt", 4, "fd")


def test_a_block_written_for_another_optimizer_gives_way_to_gauss_newtons_defaults():
    """A shipped file's Adam recipe (autodiff, 256 + 128 points, width 32) run with --optimizer zo-gn:
    zo-gn's defaults replace those fields (Adam's 384 residuals for 697+ parameters left the fit
    underdetermined, and autodiff back-propagates); the block's other settings and the flags hold."""
    from pinnzo.pinn import resolve_settings

    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / "layer2d.yaml")
    assert (problem.solve["optimizer"], problem.solve["backend"], problem.solve["batch"]) == ("adam", "ad", 256)
    for optimizer in ("zo-gn", "gn"):
        settings = resolve_settings(problem, {"optimizer": optimizer})
        assert {key: getattr(settings, key) for key in LEAST_SQUARES_RECIPE} == LEAST_SQUARES_RECIPE
        assert (settings.eval_every, settings.grow_points, settings.max_growth) == (10, 8.0, 4)
        assert (settings.steps, settings.eval_points) == (2000, 4000)  # the block's, not zo-gn's fields
    settings = resolve_settings(problem, {"optimizer": "zo-gn", "width": 32, "backend": "ad"})
    assert (settings.width, settings.backend, settings.batch) == (32, "ad", 1000)  # flags win
    assert resolve_settings(problem).backend == "ad"  # the block's own optimizer keeps its recipe
    inverse = load_problem(Path(__file__).resolve().parents[1] / "problems" / "burgers1d-inverse.yaml")
    assert (inverse.solve["optimizer"], inverse.solve["width"], inverse.solve["batch"]) == ("zo-gn", 16, 500)
    settings = resolve_settings(inverse, {"optimizer": "gn"})  # gn's defaults are zo-gn's: the block holds
    assert (settings.width, settings.batch, settings.condition_batch) == (16, 500, 100)
    given = yaml.safe_load(SMALL)
    given["solve"] = {"batch": 300, "backend": "stein"}  # names no optimizer: it holds for zo-gn
    settings = resolve_settings(load_problem(given), {"optimizer": "zo-gn"})
    assert (settings.batch, settings.backend, settings.condition_batch) == (300, "stein", 1000)


def test_the_run_names_the_settings_of_a_block_written_for_another_optimizer():
    from pinnzo.pinn import PINNTask, build, resolve_settings

    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / "layer2d.yaml")
    settings = resolve_settings(problem, {"optimizer": "zo-gn", "width": 32})
    header = PINNTask(build(problem, settings)).describe()
    assert ("note: the file's solve: block is written for adam, so this zo-gn run does not take its backend ad, "
            "batch 256, condition_batch 128, eval_every 100") in header
    assert "width" not in header.split("note:")[1]  # the flag kept the block's width
    assert "note:" not in PINNTask(build(problem, resolve_settings(problem, {"steps": 1}))).describe()


def test_the_other_optimizers_keep_the_general_defaults():
    from pinnzo.pinn import resolve_settings
    from pinnzo.settings import Settings

    given = yaml.safe_load(SMALL)
    del given["solve"]
    problem = load_problem(given)
    for optimizer in ("adam", "zo-signrge", "hybrid", "lbfgs"):
        settings = resolve_settings(problem, {"optimizer": optimizer})
        assert {key: getattr(settings, key) for key in LEAST_SQUARES_RECIPE} == \
            {key: getattr(Settings(), key) for key in LEAST_SQUARES_RECIPE}


def test_a_settings_object_with_dtype_auto_is_made_concrete_by_solve(tmp_path):
    from pinnzo.settings import Settings

    settings = Settings(network="mlp", width=4, backend="ad", optimizer="gn", steps=1, batch=20,
                        eval_points=10, eval_every=1)
    assert settings.dtype == "auto"
    run = solve(load_problem(yaml.safe_load(SMALL)), settings, out=tmp_path / "run")
    assert run.settings.dtype == "float64" and run.theta.dtype == torch.float64


PROBLEMS = Path(__file__).resolve().parents[1] / "problems"
WIDE_LINE = {**LINE, "name": "poisson1d-wide", "variables": {"space": {"name": "x", "dim": 1, "domain": [0, 50]}},
             "equation": "d(u, x, x) = -(pi / 50)**2 * sin(pi * x / 50)", "exact": "sin(pi * x / 50)"}


def test_the_network_maps_each_input_into_the_unit_interval_with_the_least_change():
    """(x - c) s per input: s = 1 / max(1, half the interval), then the least shift c that fits it in
    [-1, 1]: [0, 50] -> [-1, 1], [100, 101] -> [0, 1], time [0, 10] -> [-1, 1]; an interval inside
    [-1, 1] keeps its input as it is, and a domain of such intervals gets no map at all."""
    from pinnzo.pinn import input_map

    variables = {"space": {"name": "x", "dim": 3, "domain": [[0, 50], [100, 101], [-0.5, 1]]},
                 "time": {"name": "t", "domain": [0, 10]}}
    wide = load_problem({"name": "wide", "variables": variables, "equation": "d(u, t) - lap(u)", "exact": "x1"})
    assert input_map(wide) == ([25.0, 100.0, 0.0, 5.0], [1 / 25, 1.0, 1.0, 1 / 5])
    assert input_map(load_problem(PROBLEMS / "poisson2d.yaml")) is None
    assert input_map(load_problem(PROBLEMS / "heat10-decay.yaml")) is None  # [-1, 1]^10 x [0, 1]
    model = build(wide, _settings_for(wide)).model
    X = torch.tensor([[50.0, 100.0, -0.5, 10.0], [0.0, 101.0, 1.0, 0.0]], dtype=model.input_scale.dtype)
    expected = torch.tensor([[1.0, 0.0, -0.5, 1.0], [-1.0, 1.0, 1.0, -1.0]], dtype=X.dtype)
    torch.testing.assert_close(model.normalised(X), expected)
    plain = type(model)(model.layers, "tanh")  # the same layers without the map
    assert torch.equal(model(X), plain(model.normalised(X)))


def _settings_for(problem):
    from pinnzo.pinn import resolve_settings

    return resolve_settings(problem, {"network": "mlp", "width": 4, "activation": "tanh", "dtype": "float64"})


def test_a_domain_in_physical_units_trains_like_a_unit_one(tmp_path, capsys):
    """u = sin(pi x / 50) on [0, 50]: with its input mapped to [-1, 1] the network starts as on a unit
    domain, and 200 Gauss-Newton steps reach 1e-2 (without the map, tanh units saturate at x ~ 50
    and the run ended at 0.98). The run's first line says that its inputs are mapped."""
    run = solve(WIDE_LINE, optimizer="zo-gn", backend="fd", steps=200, quiet=False, out=tmp_path / "run")
    assert run.summary["final_rel_l2"] < 1e-2
    assert "; inputs mapped into [-1, 1]" in capsys.readouterr().err
    solve(LINE, optimizer="zo-gn", backend="fd", steps=1, quiet=False, out=tmp_path / "unit")
    assert "inputs mapped" not in capsys.readouterr().err
