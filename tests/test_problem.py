"""Problem files: every shipped problem is consistent, parsing is safe, errors are clear."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import pytest
import sympy
import torch

from helpers import run_cli
from pinnzo import atoms as A
from pinnzo.atoms import atom_symbol
from pinnzo.derivatives import Autodiff
from pinnzo.expr import ExpressionError, Scope, compile_torch, parse
from pinnzo.problem import Problem, ProblemError, load_problem
from pinnzo.residual import PINNLoss, sample_batch

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "problems").glob("*.yaml"))


def test_at_least_six_problems_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"hjb20", "heat10", "poisson2d", "burgers1d", "hjb10-lq", "black-scholes"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_exact_solution_satisfies_the_shipped_problem(path):
    problem = load_problem(path)
    generator = torch.Generator().manual_seed(1)
    X = problem.sample_interior(200, generator, torch.float64)
    atoms = Autodiff()(problem.exact_solution, X, problem.atoms, problem.spatial)
    unknowns = problem.exact_unknowns  # an inverse problem: the unknowns at their exact values
    assert problem.residual_from_atoms(X, atoms, unknowns).abs().max().item() < 1e-8
    for condition in problem.conditions:
        Xc, normals = problem.sample_condition(condition, 200, generator, torch.float64)
        values = Autodiff()(problem.exact_solution, Xc, problem.condition_atoms(condition), problem.spatial)
        residual = problem.condition_residual(condition, Xc, normals, values, unknowns)
        if condition.data is None:
            assert residual.abs().max().item() < 1e-10
        else:  # measurements: the exact values plus noise of the stated standard deviation
            assert residual.std().item() == pytest.approx(condition.data.noise, rel=0.2)
    if problem.ansatz is not None:  # the ansatz must be able to represent the exact solution's data
        assert problem.ansatz.has(sympy.Symbol("N", real=True))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_compiled_expressions_agree_with_sympy(path):
    problem = load_problem(path)
    X = problem.sample_interior(20, torch.Generator().manual_seed(2), torch.float64)
    columns = list(problem.columns)
    rng = np.random.default_rng(3)
    atom_values = {atom: torch.tensor(rng.normal(size=20)) for atom in problem.atoms}
    compiled = problem.residual_from_atoms(X, atom_values)
    exact = problem.exact_solution(X)
    for k in range(20):
        subs = {sympy.Symbol(c, real=True): float(X[k, j]) for j, c in enumerate(columns)}
        subs.update({atom_symbol(a, columns): float(v[k]) for a, v in atom_values.items()})
        subs.update({sympy.Symbol(u.name, real=True): u.initial for u in problem.unknowns})
        reference = float(problem.residual.evalf(30, subs=subs))
        assert compiled[k].item() == pytest.approx(reference, rel=1e-12, abs=1e-12)
        assert exact[k].item() == pytest.approx(float(problem.exact.evalf(30, subs=subs)), rel=1e-12, abs=1e-12)


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _random_closed_form(rng: random.Random, depth: int = 3) -> str:
    leaves = ["x1", "x2", "t", "0.7", "1.3"]
    if depth == 0:
        return rng.choice(leaves)
    choice = rng.randrange(4)
    a, b = _random_closed_form(rng, depth - 1), _random_closed_form(rng, depth - 1)
    if choice == 0:
        return f"({a} + {b})"
    if choice == 1:
        return f"({a} * {b})"
    return f"{rng.choice(['sin', 'cos', 'exp', 'tanh'])}({a} / 2)"


@pytest.mark.parametrize("seed", range(4))
def test_manufactured_source_makes_any_closed_form_a_solution(tmp_path, seed):
    exact = _random_closed_form(random.Random(seed)) + " + x1 * t"
    path = _write(tmp_path, f"""
variables:
  space: {{name: x, dim: 2, domain: [-1, 1]}}
  time: {{name: t, domain: [0, 1]}}
equation: d(u, t) - lap(u) + u**3 + d(u, x1, x2) * gradsq(u)
source: manufactured
exact: "{exact}"
""")
    problem = load_problem(path)
    assert problem.manufactured
    X = problem.sample_interior(100, torch.Generator().manual_seed(seed), torch.float64)
    atoms = Autodiff()(problem.exact_solution, X, problem.atoms, problem.spatial)
    assert problem.residual_from_atoms(X, atoms).abs().max().item() < 1e-8
    # and a different function does not satisfy it
    wrong = lambda Z: problem.exact_solution(Z) + 0.1 * Z[:, 0] ** 2
    atoms = Autodiff()(wrong, X, problem.atoms, problem.spatial)
    assert problem.residual_from_atoms(X, atoms).abs().max().item() > 1e-3


def test_the_residuals_terms_of_the_points_alone_are_split_off_as_its_forcing():
    X = torch.rand(7, 21, dtype=torch.float64)
    hjb20 = load_problem(REPO / "problems" / "hjb20.yaml")  # u_t + lap(u) - 0.05 gradsq(u) = -2
    assert torch.equal(hjb20.forcing(X), torch.full((7,), 2.0, dtype=torch.float64))
    assert load_problem(REPO / "problems" / "hjb10-lq.yaml").forcing(X[:, :11]) is None  # = 0
    inverse = load_problem(REPO / "problems" / "heat10-inverse.yaml")  # k lap(u): k is an unknown
    assert inverse.forcing(X[:, :11]) is None
    assert [inverse.condition_target(c, X[:, :11]) is None for c in inverse.conditions] == [False, False, True]


def test_a_loss_computes_the_forcing_and_the_targets_once_per_point_set(monkeypatch):
    problem = load_problem(REPO / "problems" / "sine-gordon6d.yaml")  # a manufactured source, Dirichlet data
    loss, network = PINNLoss(problem, Autodiff()), lambda X: torch.sin(X).sum(-1)
    calls = []
    for name in ("forcing", "condition_target"):
        original = getattr(Problem, name)
        monkeypatch.setattr(Problem, name, lambda *args, original=original, name=name: (calls.append(name),
                                                                                         original(*args))[1])
    first, second = (sample_batch(problem, 50, 20, torch.Generator().manual_seed(seed), torch.float64)
                     for seed in (0, 1))
    values = [loss(network, first), loss(network, first), loss(network, second)]
    assert calls == ["forcing", "condition_target"] * 2  # once for each point set
    assert values[0] == values[1] != values[2]
    X, (Y, _) = first.interior, first.conditions[0]
    atoms = Autodiff()(network, X, problem.atoms, problem.spatial)
    residual = problem.residual_from_atoms(X, atoms)  # the forcing computed inline
    faces = network(Y) - problem.exact_solution(Y)
    assert values[0].item() == pytest.approx((residual.square().mean() + faces.square().mean()).item(), rel=1e-14)


# ---- the residual builder, end to end with autodiff ------------------------

def test_hjb20_loss_has_the_closed_form_values():
    problem = load_problem(REPO / "problems" / "hjb20.yaml")
    loss = PINNLoss(problem, Autodiff())
    batch = sample_batch(problem, 64, 8, torch.Generator().manual_seed(0), torch.float64)
    # N = 1 gives the exact solution; N = 0 gives u = sum(x): residual 0 + 0 - 0.05*20 + 2 = 1
    ones = lambda X: torch.ones(X.shape[0], dtype=X.dtype)
    zeros = lambda X: torch.zeros(X.shape[0], dtype=X.dtype)
    assert loss(ones, batch).item() < 1e-24
    assert loss(zeros, batch).item() == pytest.approx(1.0, abs=1e-12)
    # N = c t: u = sum(x) + c t (1 - t), u_t = c (1 - 2t), residual = c (1 - 2t) - 0.05*20 + 2
    c = 0.5
    linear = lambda X: c * X[:, 20]
    t = batch.interior[:, 20]
    expected = ((c * (1 - 2 * t) + 1) ** 2).mean()
    assert loss(linear, batch).item() == pytest.approx(expected.item(), rel=1e-12)


def test_poisson_loss_with_conditions_and_first_order_gradient():
    problem = load_problem(REPO / "problems" / "poisson2d.yaml")
    loss = PINNLoss(problem, Autodiff())
    batch = sample_batch(problem, 128, 64, torch.Generator().manual_seed(0), torch.float64)
    x1, x2 = batch.interior[:, 0], batch.interior[:, 1]
    source = 2 * np.pi**2 * torch.sin(np.pi * x1) * torch.sin(np.pi * x2)
    terms = loss.terms(lambda X: torch.zeros(X.shape[0], dtype=X.dtype), batch)
    assert terms["residual"].item() == pytest.approx((source**2).mean().item(), rel=1e-12)
    assert terms["walls"].item() == 0.0
    shift = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    terms = loss.terms(lambda X: problem.exact_solution(X) + shift, batch)
    assert terms["residual"].item() < 1e-20
    assert terms["walls"].item() == pytest.approx(10 * 0.09, rel=1e-12)
    (gradient,) = torch.autograd.grad(sum(terms.values()), shift)
    assert gradient.item() == pytest.approx(10 * 2 * 0.3, rel=1e-12)


def test_boundary_points_lie_on_faces_with_outward_normals():
    problem = load_problem(REPO / "problems" / "heat10.yaml")
    faces = next(c for c in problem.conditions if c.on == "boundary")
    X, normals = problem.sample_condition(faces, 500, torch.Generator().manual_seed(0), torch.float64)
    lows, highs = torch.tensor(problem.lows[:10]), torch.tensor(problem.highs[:10])
    on_low, on_high = X[:, :10] == lows, X[:, :10] == highs
    assert ((on_low | on_high).sum(1) == 1).all()
    np.testing.assert_array_equal(normals.numpy(), (on_high.double() - on_low.double()).numpy())
    initial = next(c for c in problem.conditions if c.on == "initial")
    X, _ = problem.sample_condition(initial, 50, torch.Generator().manual_seed(0), torch.float64)
    assert (X[:, 10] == 0).all() and ((X[:, :10] >= 0) & (X[:, :10] <= 1)).all()


def test_neumann_condition_uses_the_outward_normal_derivative(tmp_path):
    problem = load_problem(_write(tmp_path, """
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
equation: lap(u) - 2
exact: x1**2
conditions:
  flux: {at: boundary, type: neumann, value: 2 * x1 * sign(x1 - 0.5) * (1 - abs(sign(x2 - 0.5)) + 1) / 2}
"""))
    flux = problem.conditions[0]
    X, normals, residual = _exact_condition_residual(problem, flux, 400)
    got = residual + flux.value_fn(problem.values(X))
    expected = 2 * X[:, 0] * normals[:, 0]  # du/dn = grad(x1^2) . n
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-12)


ROBIN = """
variables:
  space: {name: x, dim: 2, domain: {disk: {center: [0.5, 0], radius: 2}}}
parameters: {h: 3}
unknowns:
  k: {initial: 0.5, bounds: [0, 5], exact: 2}
equation: lap(u) - 2
exact: x1**2
conditions:
  rim: {at: boundary, type: robin, coefficient: h * k + x2, value: 0}
"""


def test_robin_condition_adds_the_coefficient_times_u_to_the_outward_normal_derivative(tmp_path):
    problem = load_problem(_write(tmp_path, ROBIN))
    rim = problem.conditions[0]
    assert problem.condition_atoms(rim) == {A.VALUE, A.d1(0), A.d1(1)}
    X, normals = problem.sample_condition(rim, 300, torch.Generator().manual_seed(0), torch.float64)
    values = Autodiff()(problem.exact_solution, X, problem.condition_atoms(rim), problem.spatial)
    np.testing.assert_allclose(normals.numpy(), ((X - torch.tensor([0.5, 0.0])) / 2).numpy(), atol=1e-12)
    got = problem.condition_residual(rim, X, normals, values, {"k": torch.tensor(2.0, dtype=torch.float64)})
    x1, x2 = X[:, 0], X[:, 1]
    expected = 2 * x1 * normals[:, 0] + (3 * 2 + x2) * x1**2  # du/dn + (h k + x2) u, u = x1^2
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-12)
    assert problem.unknowns[0].name == "k"  # an unknown in the coefficient alone is identifiable


def test_check_verifies_a_robin_condition(tmp_path):
    text = ROBIN.replace("value: 0", "value: 2 * x1 * (x1 - 0.5) / 2 + (h * k + x2) * x1**2")  # at k = 2
    assert load_problem(_write(tmp_path, text)).exact_check()["rim"] < 1e-12
    inward = text.replace("2 * x1 * (x1 - 0.5) / 2", "-2 * x1 * (x1 - 0.5) / 2")
    assert load_problem(_write(tmp_path, inward)).exact_check()["rim"] > 1


def test_third_and_fourth_derivatives_are_atoms_and_manufactured_sources_use_them(tmp_path):
    """The clamped plate: lap^2 u written out, its source derived from the exact solution."""
    problem = load_problem(_write(tmp_path, """
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
  time: {name: t, domain: [0, 1]}
equation: d(u, x1, x1, x1, x1) + 2 * d(u, x2, x1, x2, x1) + d(u, x2, x2, x2, x2) + d(u, t, x1, x1)
source: manufactured
exact: (sin(pi * x1) * sin(pi * x2))**2 * exp(t)
"""))
    assert problem.atoms == {A.partial(0, 0, 0, 0), A.partial(0, 0, 1, 1), A.partial(1, 1, 1, 1), A.partial(0, 0, 2)}
    assert str(A.atom_symbol(A.partial(0, 0, 1, 1), list(problem.columns))) == "u_x1_x1_x2_x2"
    assert problem.exact_check()["residual"] < 1e-10
    # the source is lap^2 u + u_x1x1t of the exact solution, at a point worked by hand:
    # at (1/2, 1/4, 0) u = sin^2(pi x1) sin^2(pi x2), whose x1-part s1 = sin^2 has s1'' = 2 pi^2 cos(2 pi x1)
    # = -2 pi^2 and s1 = -8 pi^4 cos(2 pi x1) = 8 pi^4; s2 = 1/2, s2 = 0, s2 = 0
    X = torch.tensor([[0.5, 0.25, 0.0]], dtype=torch.float64)
    expected = 8 * math.pi**4 * 0.5 + 2 * (-2 * math.pi**2) * 0 + 0 + (-2 * math.pi**2) * 0.5
    assert -problem.forcing(X).item() == pytest.approx(expected, rel=1e-12)


def test_operator_condition_prescribes_an_expression_of_the_atoms(tmp_path):
    """A beam's free moment and a plate's: B[u] = d(u, x1, x1) and lap(u) + u d(u, x2), by autodiff
    on the exact solution, against the closed forms."""
    problem = load_problem(_write(tmp_path, """
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
equation: d(u, x1, x1, x1, x1) + d(u, x2, x2, x2, x2)
exact: x1**3 * exp(x2)
conditions:
  moment: {at: boundary, type: operator, operator: "d(u, x1, x1)", value: 6 * x1 * exp(x2)}
  mixed: {at: boundary, type: operator, operator: "lap(u) + u * d(u, x2)", value: 0}
"""))
    moment, mixed = problem.conditions
    assert problem.condition_atoms(moment) == {A.d2(0, 0)}
    assert problem.condition_atoms(mixed) == {A.LAPLACIAN, A.VALUE, A.d1(1)}
    assert problem.exact_check()["moment"] < 1e-12
    X, _, got = _exact_condition_residual(problem, mixed, 100)
    x1, x2 = X[:, 0], X[:, 1]
    u = x1**3 * torch.exp(x2)
    expected = 6 * x1 * torch.exp(x2) + u + u * u  # lap u = (6 x1 + x1^3) e^x2, u_x2 = u
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-12)


def _exact_condition_residual(problem, condition, n: int):
    """n points of the condition's set, their normals, and B[exact] - value there (autodiff, float64)."""
    X, normals = problem.sample_condition(condition, n, torch.Generator().manual_seed(0), torch.float64)
    values = Autodiff()(problem.exact_solution, X, problem.condition_atoms(condition), problem.spatial)
    return X, normals, problem.condition_residual(condition, X, normals, values)


def test_rate_condition_is_the_time_derivative_at_the_initial_time(tmp_path):
    problem = load_problem(_write(tmp_path, """
variables:
  space: {name: x, dim: 1, domain: [0, 1]}
  time: {name: t, domain: [0.25, 2]}
equation: d(u, t, t) - 4 * lap(u)
exact: sin(pi * x) * cos(2 * pi * t)
conditions:
  start: {at: initial, value: 0}
  velocity: {at: initial, type: rate, value: 3 * x}
"""))
    velocity = problem.conditions[1]
    assert problem.condition_atoms(velocity) == {A.d1(1)}
    X, normals, got = _exact_condition_residual(problem, velocity, 200)
    assert normals is None and (X[:, 1] == 0.25).all()
    expected = -2 * math.pi * torch.sin(math.pi * X[:, 0]) - 3 * X[:, 0]  # u_t(x, 1/4) - 3x
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-12)


WAVE = """
variables:
  space: {name: x, dim: 1, domain: [0, 1]}
  time: {name: t, domain: [0, 1]}
equation: d(u, t, t) - 4 * lap(u)
exact: sin(pi * x) * cos(2 * pi * t)
conditions:
  start: {at: initial, value: sin(pi * x)}
  velocity: {at: initial, type: rate, value: 0}
  ends: {at: boundary, type: neumann, value: -pi * cos(2 * pi * t)}
"""


def test_check_verifies_every_condition_against_the_exact_solution(tmp_path):
    checks = load_problem(_write(tmp_path, WAVE)).exact_check()
    assert set(checks) == {"residual", "start", "velocity", "ends"}
    assert max(checks.values()) < 1e-12  # u_t(x, 0) = 0; du/dn = -pi cos(2 pi t) at both ends
    wrong = WAVE.replace("type: rate, value: 0", "type: rate, value: 0.1 * x")
    result = run_cli(["check", str(_write(tmp_path, wrong))])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "velocity:" in line and "exact check" in line)
    assert float(line.rsplit(": ", 1)[1]) == pytest.approx(0.1, rel=0.05)  # max |0 - 0.1 x| over [0, 1]
    ends = next(line for line in result.output.splitlines() if "ends:" in line and "exact check" in line)
    assert float(ends.rsplit(": ", 1)[1]) < 1e-12

# ---- validation and safety ------------------------------------------------

GOOD = """
variables:
  space: {name: x, dim: 3, domain: [0, 1]}
  time: {name: t, domain: [0, 1]}
parameters: {nu: 0.5}
equation: d(u, t) - nu * lap(u)
exact: exp(-t) * sum(x)
"""

BAD_FILES = [
    (GOOD + "colour: blue\n", "colour: unknown key"),
    (GOOD.replace("equation: d(u, t) - nu * lap(u)\n", ""), "equation: missing required key"),
    (GOOD.replace("dim: 3", "dim: three"), "variables.space.dim: expected an integer >= 1; found 'three'"),
    (GOOD.replace("dim: 3", "dim: 0"), "variables.space.dim: expected an integer >= 1"),
    (GOOD.replace("domain: [0, 1]}\n  time", "domain: [[0, 1], [0, 1]]}\n  time"),
     "variables.space.domain: expected 3 [low, high] pairs (dim is 3); found 2"),
    (GOOD.replace("sum(x)", "x4"), "exact: unknown name 'x4'"),
    (GOOD.replace("nu: 0.5", "nu: fast"), "parameters.nu: expected a number; found str 'fast'"),
    (GOOD.replace("nu: 0.5", "x2: 0.5"), "parameters.x2: 'x2' is already a variable"),
    (GOOD.replace("domain: [0, 1]}\n  time", "domain: [1, 0]}\n  time"), "expected low < high"),
    (GOOD + "solve: {steps: many}\n", "solve.steps: expected int; found 'many'"),
    (GOOD + "solve: {colour: red}\n", "solve.colour: unknown key"),
    (GOOD + "source: invented\n", "source: expected one of manufactured"),
    (GOOD + "conditions: {walls: {at: boundary, type: rate, value: 0}}\n",
     "conditions.walls.type: rate conditions (du/dt) apply at the initial or terminal time only"),
    (GOOD + "conditions: {start: {at: initial, type: neumann, value: 0}}\n",
     "conditions.start.type: neumann conditions apply on the boundary only"),
    (GOOD + "conditions: {start: {at: initial, type: robin, coefficient: 1, value: 0}}\n",
     "conditions.start.type: robin conditions apply on the boundary only"),
    (GOOD + "conditions: {walls: {at: boundary, type: robin, value: 0}}\n",
     "conditions.walls: a robin condition needs a coefficient (du/dn + coefficient u = value)"),
    (GOOD + "conditions: {walls: {at: boundary, coefficient: 2, value: 0}}\n",
     "conditions.walls.coefficient: only robin conditions take a coefficient; this one is dirichlet"),
    (GOOD + "conditions: {walls: {at: boundary, type: robin, coefficient: log(x1 - 2), value: 0}}\n",
     "conditions.walls.coefficient: is nan at"),
    (GOOD + "conditions: {walls: {at: boundary, type: robin, coefficient: y, value: 0}}\n",
     "conditions.walls.coefficient: unknown name 'y'"),
    (GOOD + "conditions: {walls: {at: boundary, type: operator, value: 0}}\n",
     "conditions.walls: an operator condition needs an operator (operator = value, e.g. d(u, x, x) = 0)"),
    (GOOD + "conditions: {walls: {at: boundary, operator: 'd(u, x1, x1)', value: 0}}\n",
     "conditions.walls.operator: only operator conditions take an operator; this one is dirichlet"),
    (GOOD + "conditions: {walls: {at: boundary, type: operator, operator: x1 + t, value: 0}}\n",
     "conditions.walls.operator: the operator does not involve the unknown u"),
    (GOOD + "conditions: {walls: {at: boundary, type: operator, operator: 'd(u, x1) = 1', value: 0}}\n",
     "conditions.walls.operator: expected the quantity the condition prescribes, e.g. d(u, x, x), not an equation"),
    (GOOD + "ansatz: sum(x)\n", "ansatz: the ansatz must use the network output N"),
    (GOOD + "conditions:\n  c: {at: edge, value: 0}\n", "conditions.c.at: expected one of initial, terminal, boundary"),
    (GOOD + "conditions:\n  c: {at: initial}\n", "conditions.c.value: missing required key"),
    (GOOD + "conditions:\n  c: {at: initial, value: 0, weight: -1}\n", "expected a weight >= 0"),
    (GOOD.replace("d(u, t) - nu * lap(u)", "d(u, y)"), "equation: unknown name 'y'"),
    (GOOD.replace("d(u, t) - nu * lap(u)", "d(u, 2)"), "equation: d(u, ...) differentiates by a variable"),
    (GOOD.replace("d(u, t) - nu * lap(u)", "d(u, t) = lap(u) = 0"), "expected 'expression' (= 0) or 'left = right'"),
    (GOOD.replace("d(u, t) - nu * lap(u)", "x1 + t"), "does not involve the unknown u"),
    (GOOD.replace("d(u, t) - nu * lap(u)", "d(u, t, t, t, x1, x2)"),
     "d() is written d(u, v), d(u, v, w), ... up to 4 variables (a fourth derivative) among x1, x2, x3, t"),
    ("variables: [1, 2]\nequation: u\n", "variables: expected a mapping; found a list"),
    ("just text", "(top level): expected a mapping; found str"),
    ("variables: {space: {name: x, dim: 1, domain: [0, 1]}\nequation: u\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, needle", BAD_FILES)
def test_bad_problem_files_give_file_key_expected_found_and_exit_2(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ProblemError) as error:
        load_problem(path)
    message = str(error.value)
    assert message.startswith(str(path)) and needle in message, message
    result = run_cli(["check", str(path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"pinnzo: error: {message}"


def test_missing_problem_file(tmp_path):
    result = run_cli(["check", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2 and "problem file not found" in result.output


HOSTILE = [
    ("__import__('os').system('touch pwned')", "only named functions may be called"),
    ("().__class__.__bases__", "attribute access is not allowed"),
    ("lambda: 0", "lambda is not allowed"),
    ("x1.real", "attribute access is not allowed"),
    ("'rm -rf /'", "str literal"),
    ("9**9**9", "too large"),
    ("(" * 100_000 + "1" + ")" * 100_000, "characters long"),
    ("-" * 5_000 + "x1", "nested too deeply"),
    ("-" * 150 + "x1", "nested deeper than 100"),
    ("(" * 250 + "x1" + ")" * 250, "not a valid expression"),
    ("undeclared + 1", "unknown name 'undeclared'"),
    ("eval('1')", "unknown function 'eval'"),
    ("x1[0]", "subscripting is not allowed"),
    ("sin(x1, x2)", "takes 1 argument"),
    ("sin(x=1)", "keyword arguments are not allowed"),
    ("[x1 for x1 in range(9)]", "comprehension is not allowed"),
    ("x1 if x2 else 0", "if-else is not allowed"),
    ("__builtins__", "not allowed"),
    ("1e999", "too large"),
    ("2**2**2**2**2", "too large"),
]


@pytest.mark.parametrize("text, needle", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_expressions_are_refused_quickly_and_never_run(tmp_path, monkeypatch, text, needle):
    monkeypatch.chdir(tmp_path)
    x = sympy.symbols("x1:3", real=True)
    scope = Scope({"x1": x[0], "x2": x[1]}, "x", x)
    started = time.perf_counter()
    with pytest.raises(ExpressionError) as error:
        parse(text, scope)
    assert time.perf_counter() - started < 1.0
    assert needle in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists()
    # the same through a problem file and the CLI: exit 2, one line
    quoted = "'" + ("u + " + text).replace("'", "''") + "'"  # a YAML single-quoted string
    path = _write(tmp_path, f"variables:\n  space: {{name: x, dim: 2, domain: [0, 1]}}\nequation: {quoted}\n")
    started = time.perf_counter()
    result = run_cli(["check", str(path)])
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "pwned").exists()


def test_compiled_functions_run_in_float32_and_float64():
    x = sympy.symbols("x1:3", real=True)
    scope = Scope({"x1": x[0], "x2": x[1]}, "x", x)
    expression = parse("erf(x1) * max(x2, 0.5) + norm2(x) - prod(cos(x)) + abs(x1 - x2)**1.5", scope)
    function = compile_torch(expression, {x[0]: "x1", x[1]: "x2"})
    for dtype in (torch.float32, torch.float64):
        values = {"x1": torch.linspace(-1, 1, 7, dtype=dtype), "x2": torch.linspace(0, 2, 7, dtype=dtype)}
        result = function(values)
        assert result.dtype == dtype and result.shape == (7,)
        for k in range(7):
            subs = {x[0]: float(values["x1"][k]), x[1]: float(values["x2"][k])}
            tolerance = 1e-12 if dtype == torch.float64 else 1e-5
            assert result[k].item() == pytest.approx(float(expression.evalf(subs=subs)), rel=tolerance, abs=tolerance)
    constant = compile_torch(parse("2 * pi", scope), {})
    assert torch.allclose(constant({"x1": torch.zeros(3)}), torch.full((3,), 2 * np.pi))


def test_check_names_the_conditions_automatic_factor_and_not_the_datas(tmp_path):
    """burgers1d-inverse: u_xx on x in [-1, 1], so its conditions' weights are multiplied by pi^2; the data's not.
    A file whose solve: block sets condition_scale gets that factor, named as the setting's."""
    import yaml
    from helpers import LINE

    given = _write(tmp_path, yaml.safe_dump({**LINE, "solve": {"condition_scale": 2.5}}))
    result = run_cli(["check", str(given)])
    assert result.exit_code == 0 and "weight 3 (x 2.5 condition_scale)" in result.output, result.output
    result = run_cli(["check", str(Path(__file__).resolve().parents[1] / "problems" / "burgers1d-inverse.yaml")])
    assert result.exit_code == 0, result.output
    lines = {line.split(":")[0].split()[-1]: line
             for line in result.output.splitlines() if line.startswith("condition")}
    assert "weight 1 (x 9.87 automatic)" in lines["initial"] and "weight 1 (x 9.87 automatic)" in lines["ends"]
    assert "weight 1, noise" in lines["measured"]
