"""The network's output scale (pinn.output_scale): the solution's size estimated from the file, and
a problem scaled by a power of ten trained like the unit one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import interrupted_and_straight
from pinnzo.optim.gauss_newton import _finite_columns, difference_jacobian
from pinnzo.pinn import build, load_run, output_layer, resolve_settings, solve
from pinnzo.problem import load_problem
from pinnzo.residual import sample_batch

REPO = Path(__file__).resolve().parents[1]

HEAT = """name: heat{tag}
variables:
  space: {{name: x, dim: 1, domain: [0, 1]}}
  time: {{name: t, domain: [0, 1]}}
equation: d(u, t) = 0.1 * lap(u)
exact: {a} * exp(-0.1 * pi**2 * t) * sin(pi * x) + {b} * x
conditions:
  start: {{at: initial, value: "{a} * sin(pi * x) + {b} * x"}}
  ends: {{at: boundary, value: "{b} * x"}}
"""

POISSON = """name: poisson{tag}
variables:
  space: {{name: x, dim: 2, domain: [0, 1]}}
equation: lap(u) = -2 * pi**2 * {a} * sin(pi * x1) * sin(pi * x2)
exact: {a} * sin(pi * x1) * sin(pi * x2)
conditions:
  walls: {{at: boundary, value: 0}}
"""

SMALL = {"dtype": "float64", "width": 8, "batch": 60, "condition_batch": 30, "eval_every": 1, "eval_points": 200}


def _file(folder: Path, template: str, tag: str, a: str, b: str = "0") -> Path:
    path = folder / f"{template[:4]}{tag}.yaml"
    path.write_text(template.format(tag=tag, a=a, b=b))
    return path


def _scale(path: Path, **changes) -> float:
    problem = load_problem(path)
    model = build(problem, resolve_settings(problem, {"optimizer": "zo-gn", **changes})).model
    scale = output_layer(model).output_scale
    return 1.0 if scale is None else scale.item()


def test_the_output_scale_is_the_solutions_size_from_the_conditions_or_the_equation(tmp_path):
    # the conditions' values: initial data of RMS ~5e-4 and 5e2
    assert _scale(_file(tmp_path, HEAT, "small", "0.001", "0.0005")) == pytest.approx(1e-3)
    assert _scale(_file(tmp_path, HEAT, "large", "1000", "500")) == pytest.approx(1e3)
    # zero boundary data: the equation's source over its response to the initial network
    assert _scale(_file(tmp_path, POISSON, "small", "1e-4")) == pytest.approx(1e-4)
    assert _scale(_file(tmp_path, POISSON, "large", "1e5")) == pytest.approx(1e5)
    # within a factor of 10^1.5 of 1 the network is left as it is
    assert _scale(_file(tmp_path, POISSON, "unit", "0.1")) == 1.0
    # a given scale is taken as it is
    assert _scale(_file(tmp_path, POISSON, "given", "1e-4"), output_scale=0.5) == 0.5


@pytest.mark.parametrize("path", sorted((REPO / "problems").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_problem_keeps_the_unscaled_network(path):
    """The accuracy table's runs are those of an unscaled network (hjb20's ansatz, O(1) solutions)."""
    problem = load_problem(path)
    model = build(problem, resolve_settings(problem, {})).model
    assert output_layer(model).output_scale is None and "output_scale" not in str(list(model.state_dict()))


def test_a_problem_scaled_by_a_power_of_ten_trains_like_the_unit_one(tmp_path):
    """u and its data times 1e-3: the residuals are 1e-3 times the unit problem's at every step, so
    zo-gn takes the same steps and the relative errors agree; the unscaled network (output_scale=1)
    has to shrink an O(1) output instead, and its errors differ."""
    unit, small = _file(tmp_path, HEAT, "unit", "1", "0.5"), _file(tmp_path, HEAT, "small", "0.001", "0.0005")
    settings = {"optimizer": "zo-gn", "backend": "fd", "steps": 8, **SMALL}
    errors = {}
    for name, path, changes in [("unit", unit, {}), ("scaled", small, {}), ("unscaled", small, {"output_scale": 1})]:
        run = solve(path, out=tmp_path / name, **settings, **changes)
        errors[name] = torch.tensor([row["val_rel_l2"] for row in run.metrics], dtype=torch.float64)
    assert errors["unit"][-1] < 0.05 * errors["unit"][0]  # it trains
    torch.testing.assert_close(errors["scaled"], errors["unit"], rtol=1e-5, atol=0)
    assert (errors["unscaled"] - errors["unit"]).abs().max() > 1e-2 * errors["unit"].max()


@pytest.mark.parametrize("network", ["mlp", "tt"])
@pytest.mark.parametrize("backend", ["fd", "stein"])
def test_layered_columns_of_a_scaled_output_equal_black_box_queries_and_autograd(tmp_path, network, backend):
    path = _file(tmp_path, POISSON, "small", "1e-4")
    problem = load_problem(path)
    components = build(problem, resolve_settings(problem, {"optimizer": "zo-gn", "backend": backend,
                                                           "network": network, "samples": 16, **SMALL}))
    objective = components.objective
    assert output_layer(components.model).output_scale.item() == pytest.approx(1e-4)
    batch = sample_batch(problem, 12, 6, torch.Generator().manual_seed(0), torch.float64)
    theta = objective.flatten()
    mu = 1e-3
    layered = objective.coordinate_residuals(theta, batch, torch.arange(objective.dim), mu)
    black_box = objective.residuals(theta + mu * torch.eye(objective.dim, dtype=torch.float64), batch)
    moved = (black_box - objective.residuals(theta[None], batch)).abs().max()
    # fd: the rounding of u (~1e-4 eps) divided by h^2 = 1e-8 in two second differences; Stein: exact sums
    u = objective.network(theta)(batch.interior).abs().max()
    floor = 100 * 2.2e-16 * u * 8 / 1e-8 if backend == "fd" else 1e-9 * moved
    assert (layered - black_box).abs().max() <= floor < moved / 10
    # the chain-rule columns against autograd's Jacobian
    _, exact = objective.residual_jacobian(theta, batch)
    chain = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", linear=True).matrix
    assert ((chain - exact).norm() / exact.norm()).item() < 1e-5


def test_a_network_whose_output_is_zero_gets_finite_columns(tmp_path):
    """u = 0 at every point made the layered rounding gain (parts over max |u|) infinite, its step mu
    NaN and every column NaN (LAPACK then stopped with an internal error); the gain is now at most
    the backend's."""
    problem = load_problem(_file(tmp_path, POISSON, "unit", "1"))
    components = build(problem, resolve_settings(problem, {"optimizer": "zo-gn", **SMALL}))
    objective = components.objective
    with torch.no_grad():
        for parameter in output_layer(components.model).parameters():
            parameter.zero_()
    theta = objective.flatten()
    batch = sample_batch(problem, 20, 10, torch.Generator().manual_seed(0), torch.float64)
    assert objective.coordinate_rounding_gain(theta, batch) == float("inf")
    columns = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", gain=4e8, linear=True)
    _, exact = objective.residual_jacobian(theta, batch)
    assert torch.isfinite(columns.matrix).all()
    assert ((columns.matrix - exact).norm() / exact.norm()).item() < 1e-4


def test_jacobian_columns_that_are_not_finite_are_held():
    J = torch.tensor([[1.0, float("nan"), 2.0], [3.0, 4.0, float("inf")]], dtype=torch.float64)
    held, count = _finite_columns(J)
    assert count == 2
    assert torch.equal(held, torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64))
    finite = torch.ones(2, 3, dtype=torch.float64)
    assert _finite_columns(finite) == (finite, 0)


def test_a_scaled_run_loads_and_resumes_with_its_scale(tmp_path):
    path = _file(tmp_path, POISSON, "small", "1e-4")
    problem = load_problem(path)
    settings = resolve_settings(problem, {"optimizer": "zo-gn", "steps": 8, "resample_every": 3, **SMALL})
    (straight, resumed), (a, b) = interrupted_and_straight(path, settings, tmp_path, at_step=4)
    assert straight == resumed and all(torch.equal(a[key], b[key]) for key in a)
    run = load_run(tmp_path / "straight")
    X = problem.sample_interior(50, torch.Generator().manual_seed(3), torch.float64)
    trained = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert trained["layers.2.output_scale"].item() == pytest.approx(1e-4)
    assert 1e-6 < run.predict(X).abs().max().item() < 1e-3  # the 1e-4 solution's size, through the scale
