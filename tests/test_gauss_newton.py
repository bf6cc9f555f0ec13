"""Gauss-Newton (gn, zo-gn), L-BFGS (lbfgs, adam-lbfgs): the residual oracle, the layered Jacobian,
closed-form problems, a small PINN, resume, and the refusals."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from helpers import LINE, interrupted_and_straight, run_cli
from pinnzo.errors import PinnzoError
from pinnzo.optim import Objective, make_optimizer
from pinnzo.optim.gauss_newton import GaussNewton, auto_subspace, difference_jacobian
from pinnzo.pinn import build, resolve_settings, solve
from pinnzo.problem import load_problem
from pinnzo.residual import sample_batch

REPO = Path(__file__).resolve().parents[1]


def _components(path, **changes):
    problem = load_problem(path)
    settings = resolve_settings(problem, {"dtype": "float64", "width": 6, "batch": 6, "condition_batch": 4,
                                          "samples": 16, **changes})
    components = build(problem, settings)
    batch = sample_batch(problem, 6, 4, torch.Generator().manual_seed(0), torch.float64)
    theta = components.objective.flatten() + 0.1 * torch.randn(components.objective.dim, dtype=torch.float64,
                                                               generator=torch.Generator().manual_seed(1))
    return components.objective, batch, theta


@pytest.mark.parametrize("backend", ["ad", "fd", "stein", "sparse-grid"])
def test_the_residual_vector_squared_is_the_loss_with_condition_weights(backend):
    objective, batch, theta = _components(REPO / "problems" / "poisson2d.yaml", backend=backend)  # walls: weight 10
    residuals = objective.residuals(torch.stack([theta, 1.1 * theta]), batch)
    assert residuals.shape == (2, objective.residual_count(batch)) == (2, 6 + 4)
    losses = objective.losses(torch.stack([theta, 1.1 * theta]), batch)  # the same batched forwards
    torch.testing.assert_close(residuals.square().sum(1), losses, rtol=1e-12, atol=0)
    # the condition's share: weight 10 times the mean square of its 4 residuals
    interior = residuals[0, :6].square().sum()
    assert (residuals[0, 6:].square().sum() / (losses[0] - interior)).item() == pytest.approx(1.0, abs=1e-12)


NONLINEAR = """
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
equation: lap(u) + u * d(u, x1) - gradsq(u) = 1
ansatz: x1 + (1 + x2) * tanh(N)
conditions:
  left: {at: boundary, type: neumann, value: "1", weight: 3}
  rim: {at: boundary, type: robin, coefficient: "1 + x2", value: "x1", weight: 2}
"""

FOURTH = """
variables:
  space: {name: x, dim: 2, domain: [0, 1]}
equation: d(u, x1, x1, x1, x1) + 2 * d(u, x1, x1, x2, x2) + u * d(u, x1, x2, x2) = 1
conditions:
  edge: {at: boundary, value: 0}
  clamped: {at: boundary, type: neumann, value: 0}
  moment: {at: boundary, type: operator, operator: "lap(u) + u * d(u, x1, x1, x1)", value: x2, weight: 2}
"""


@pytest.mark.parametrize("network", ["mlp", "tt"])
@pytest.mark.parametrize("backend", ["fd", "stein", "sparse-grid"])
@pytest.mark.parametrize("problem", ["hjb20-bc", "nonlinear", "fourth"])
def test_layered_jacobian_columns_equal_black_box_queries(tmp_path, network, backend, problem):
    """Every coordinate column, on hjb20-bc (21 inputs, an ansatz-free loss with boundary data), on
    NONLINEAR (a non-affine ansatz, Neumann and Robin conditions) and on FOURTH (third and fourth
    derivatives, an operator condition)."""
    path = REPO / "problems" / "hjb20-bc.yaml" if problem == "hjb20-bc" else tmp_path / f"{problem}.yaml"
    if problem != "hjb20-bc":
        path.write_text(NONLINEAR if problem == "nonlinear" else FOURTH)
    objective, batch, theta = _components(path, backend=backend, network=network, fd_step=1e-2)
    assert objective.layered
    # FOURTH: a larger move, for columns that stand far above its fourth differences' rounding floor
    chosen, mu = torch.arange(objective.dim), 1e-1 if problem == "fourth" else 1e-3
    before = objective.queries
    layered = objective.coordinate_residuals(theta, batch, chosen, mu)
    assert objective.queries - before == objective.dim
    black_box = objective.residuals(theta + mu * torch.eye(objective.dim, dtype=torch.float64), batch)
    # Stein: agreement to 1e-12. FD: its second differences divide the rounding of the network
    # values (~1e-16 |f|) by h^2 = 1e-4 and sum 20 of them, so it agrees to that floor instead.
    # (with FOURTH's fourth derivatives, 16 / h^4 in place of 4 / h^2: the backend's rounding_gain)
    gain = objective.loss_fn.backend.rounding_gain(torch.float64, objective.loss_fn.atoms)
    floor = 1e-12 if backend != "fd" else 1e3 * 2.2e-16 * objective.network(theta)(batch.interior).abs().max() \
        * gain * 20
    assert (layered - black_box).abs().max() <= floor
    assert (black_box - objective.residuals(theta[None], batch)).abs().max() > 1e3 * floor  # columns move


@pytest.mark.parametrize("network", ["mlp", "tt"])
@pytest.mark.parametrize("backend", ["fd", "stein"])
def test_layered_queries_too_large_for_memory_take_the_points_a_part_at_a_time(network, backend):
    """poisson2d (a condition of weight 10) with IRLS point weights and adaptive term weights: the
    layered residuals and losses of a batch in parts, against the batch whole and against black-box
    queries (a data condition's parts: tests/test_inverse.py)."""
    objective, batch, theta = _components(REPO / "problems" / "poisson2d.yaml", backend=backend, network=network)
    batch = dataclasses.replace(batch, weights=(1.0, 3.0), point_weights=torch.linspace(0.5, 1.5, 6,
                                                                                        dtype=torch.float64))
    rows = len(objective.loss_fn.inputs(batch))
    chosen, mu = torch.arange(objective.dim), 1e-3
    objective.layered_rows = None
    whole = objective.coordinate_residuals(theta, batch, chosen, mu)
    whole_losses = objective.coordinate_losses(theta, batch, chosen, mu)
    objective.layered_rows = -(-rows // 3)
    parts = objective.loss_fn.split(batch, objective.layered_rows)
    assert [len(part.interior) for part in parts] == [2, 2, 2] and [len(part.conditions[0][0]) for part in parts] \
        == [1, 1, 2] and all(part.sizes == (6, 4) for part in parts)
    before = objective.queries
    split = objective.coordinate_residuals(theta, batch, chosen, mu)
    assert objective.queries - before == objective.dim
    # fd: the network's values round differently in blocks of other sizes, and its second differences
    # amplify that by 4 / h^2 ~ 4e4 (rounding 1e-16 of |f|, to ~1e-11 of the residuals)
    floor = 1e-12 if backend == "stein" else 1e-9
    assert (split - whole).abs().max() <= floor * whole.abs().max()
    torch.testing.assert_close(objective.coordinate_losses(theta, batch, chosen, mu), whole_losses,
                               rtol=floor, atol=0)
    black_box = objective.residuals(theta + mu * torch.eye(objective.dim, dtype=torch.float64), batch)
    # fd's black-box differences cancel in the values themselves: 1 / mu = 1e3 more rounding
    assert (split - black_box).abs().max() <= (1e-12 if backend == "stein" else 1e-6) * black_box.abs().max()
    torch.testing.assert_close(black_box.square().sum(1), whole_losses, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", ["fd", "stein", "sparse-grid"])
def test_a_share_of_the_points_without_a_conditions_points_has_no_rows_of_it(backend):
    """Four shares of poisson2d's 6 interior and 3 wall points (a rank's share under torchrun with
    more processes than a condition has points): the first has no wall point, and the shares'
    residuals still join to the step's."""
    objective, batch, theta = _components(REPO / "problems" / "poisson2d.yaml", backend=backend)
    batch = sample_batch(objective.loss_fn.problem, 6, 3, torch.Generator().manual_seed(0), torch.float64)
    shares = [batch.part(index, 4) for index in range(4)]
    assert [len(share.conditions[0][0]) for share in shares] == [0, 1, 1, 1]
    loss, network = objective.loss_fn, objective.network(theta)
    assert loss.residual_vector(network, shares[0]).shape == (1,)  # its one interior point
    joined = loss.join_rows([loss.residual_vector(network, share) for share in shares], shares)
    # fd: the network's values round differently in forwards of other sizes, and d2 divides by h^2
    torch.testing.assert_close(joined, loss.residual_vector(network, batch), rtol=0,
                               atol=1e-8 if backend == "fd" else 1e-12)


@pytest.mark.parametrize("network", ["mlp", "tt"])
@pytest.mark.parametrize("problem, backend", [("hjb20-bc", "stein"), ("hjb20-bc", "sparse-grid"),
                                              ("poisson2d", "fd"), ("burgers1d-inverse", "sparse-grid")])
def test_the_autograd_jacobian_by_rows_equals_reverse_mode_over_the_residual_vector(network, problem, backend):
    """gn's Jacobian of a stencil loss, (d rho / d N)(d N / d theta), against jacrev of the whole
    residual vector; burgers1d-inverse has an unknown (the last column) inside the equation."""
    objective, batch, theta = _components(REPO / "problems" / f"{problem}.yaml", backend=backend, network=network)
    assert objective.layered
    value = lambda t: objective.residuals(t[None], batch)[0]
    with torch.enable_grad():
        reverse = torch.func.jacrev(lambda t: objective._residual_vector()(objective.network(t), batch))(theta)
    before = objective.queries
    rho, J = objective.residual_jacobian(theta, batch)
    assert objective.queries - before == 1 and J.shape == (objective.residual_count(batch), objective.dim)
    # fd's second differences divide the rounding of the network values (~1e-16 |N|) by h^2 = 1e-8
    # (float64) and sum two: they agree to that floor, in rho and in J; the others to 1e-12
    scale = objective.network(theta)(objective.loss_fn.inputs(batch)).abs().max()
    floor = 1e-12 if backend != "fd" else 10 * 2.2e-16 * 4 / 1e-8 * 2 * scale
    assert (rho - value(theta)).abs().max() <= floor
    assert (J - reverse).abs().max() <= floor < 1e-3 * reverse.abs().max()
    if objective.unknowns:
        assert J[:, -1].abs().max() > 1e-3  # the unknown's column is not left at zero
    # within a memory budget: the network's Jacobian 7 parameters at a time, the same columns (to the
    # rounding of the pushes, batched differently)
    blocked = objective.residual_jacobian(theta, batch, columns=7)
    assert torch.equal(blocked[0], rho)
    torch.testing.assert_close(blocked[1], J, rtol=0, atol=1e-13 * J.abs().max().item())


@pytest.mark.parametrize("backend", ["fd", "sparse-grid"])
@pytest.mark.parametrize("case", ["split ansatz", "nonlinear ansatz with weights"])
def test_the_pinn_jacobian_by_sensitivities_equals_reverse_mode(tmp_path, backend, case):
    """gn's Jacobian of a PINN loss without unknowns goes through residual.Perturbations.sensitivities
    (each network value enters one residual row): against jacrev of the whole residual vector, on
    hjb20 (an affine ansatz, split from the differences under fd) and on a loss with products of
    atoms, gradsq, a Neumann and a Robin condition's stencils, a non-affine ansatz and IRLS point weights."""
    import dataclasses

    if case == "split ansatz":
        path = REPO / "problems" / "hjb20.yaml"
    else:
        path = tmp_path / "nonlinear.yaml"
        path.write_text(NONLINEAR)
    objective, batch, theta = _components(path, backend=backend)
    if case != "split ansatz":
        weights = torch.linspace(0.5, 2.0, len(batch.interior), dtype=torch.float64)
        batch = dataclasses.replace(batch, point_weights=weights)
    assert objective.layered and not objective.unknowns
    with torch.enable_grad():
        reverse = torch.func.jacrev(lambda t: objective._residual_vector()(objective.network(t), batch))(theta)
    rho, J = objective.residual_jacobian(theta, batch)
    scale = objective.network(theta)(objective.loss_fn.inputs(batch)).abs().max()
    floor = 1e-12 if backend != "fd" else 10 * 2.2e-16 * 4 / 1e-8 * 4 * max(1.0, scale)
    assert (J - reverse).abs().max() <= floor < 1e-3 * reverse.abs().max()
    assert (rho - objective.residuals(theta[None], batch)[0]).abs().max() <= floor


def test_the_benchmarks_reference_jacobian_is_gns():
    """``pinnzo bench zo``'s gn_jacobian times gn's Jacobian against pushing each column through the
    residuals: the reference computes the same matrix (to fd's rounding floor)."""
    from pinnzo.bench import _jacobian_by_pushed_columns

    objective, batch, theta = _components(REPO / "problems" / "reaction3d-manufactured.yaml", backend="fd")
    _, J = objective.residual_jacobian(theta, batch)
    pushed = _jacobian_by_pushed_columns(objective, theta, batch)
    assert pushed.shape == J.shape == (objective.residual_count(batch), objective.dim)
    assert (pushed - J).abs().max() <= 1e-7 * J.abs().max() and J.abs().max() > 0


@pytest.mark.parametrize("network", ["mlp", "tt"])
def test_central_differences_take_the_layered_path_with_the_black_box_values(network):
    """Central columns (rho(theta + mu e_j) - rho(theta - mu e_j)) / 2 mu: 2k + 2 queries (one for the
    layered path's rounding gain), the layered changes moving by -mu too, equal to black-box queries;
    mu is (eps g)^(1/3) for central differences."""
    objective, batch, theta = _components(REPO / "problems" / "hjb20-bc.yaml", backend="stein", network=network)
    k = objective.dim
    jacobian = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", difference="central")
    gain = objective.coordinate_rounding_gain(theta, batch)
    mu = (2.220446049250313e-16 * gain) ** (1 / 3) * max(1.0, theta.abs().max().item())
    assert jacobian.queries == 2 * k + 2 and jacobian.directions is None
    steps = mu * torch.eye(k, dtype=torch.float64)
    black_box = ((objective.residuals(theta + steps, batch) - objective.residuals(theta - steps, batch)) / (2 * mu)).T
    assert (jacobian.matrix - black_box).abs().max() <= 1e-12 / mu
    forward = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates")
    with torch.enable_grad():
        exact = torch.func.jacrev(lambda t: objective._residual_vector()(objective.network(t), batch))(theta)
    # second-order truncation: central is far closer to the exact Jacobian than forward
    assert (jacobian.matrix - exact).abs().max() < 0.05 * (forward.matrix - exact).abs().max()


def _linear_least_squares(curvature: torch.Tensor | None = None):
    """rho(w) = M w - b (n = 12 > d = 5), plus (w . w) ``curvature`` (12,) when given: the network's
    outputs on the identity are w."""
    generator = torch.Generator().manual_seed(0)
    M = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    b = torch.randn(12, generator=generator, dtype=torch.float64)
    c = torch.zeros(12, dtype=torch.float64) if curvature is None else curvature

    class Vector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))

        def forward(self, X):
            return X @ self.w

    class LeastSquares:
        eye = torch.eye(5, dtype=torch.float64)

        def residual_vector(self, network, batch):
            w = network(self.eye)
            return M @ w - b + (w @ w) * c

        def residual_count(self, batch):
            return 12

        def __call__(self, network, batch):
            return self.residual_vector(network, batch).square().sum()

    objective = Objective(Vector(), LeastSquares())
    return objective, torch.linalg.lstsq(M, b[:, None]).solution[:, 0]


@pytest.mark.parametrize("name", ["gn", "zo-gn"])
def test_gauss_newton_solves_linear_least_squares_in_one_undamped_step(name):
    objective, solution = _linear_least_squares()
    optimizer = make_optimizer(name, damping=1e-15, gn_reuse=0)  # (reused steps: the test below)
    theta = objective.flatten()
    theta, state, info = optimizer.update(0, theta, optimizer.init(theta), objective, None, torch.Generator())
    torch.testing.assert_close(theta, solution, rtol=0, atol=1e-7 if name == "zo-gn" else 1e-12)
    assert state.accepted == 1 and state.rejected == 0
    # queries: the Jacobian (autograd: 1; forward differences: d + 1) and one trial of the step
    assert objective.queries == (1 if name == "gn" else 5 + 1) + 1


@pytest.mark.parametrize("matrix", ["identity", "diagonal"])
def test_a_damped_step_solves_the_levenberg_or_marquardt_system(matrix):
    """One accepted step from theta = 0 is a = -(A + lambda D)^-1 J^T r with D = mean(diag A) I or diag A."""
    objective, _ = _linear_least_squares()
    theta = objective.flatten()
    r0 = objective.residuals(theta[None], None)[0]
    columns = torch.stack([objective.residuals((theta + e)[None], None)[0] - r0 for e in torch.eye(5, dtype=torch.float64)])
    J, A = columns.T, columns @ columns.T
    D = A.diagonal().mean() * torch.eye(5, dtype=torch.float64) if matrix == "identity" else torch.diag(A.diagonal())
    expected = torch.linalg.solve(A + 0.5 * D, -J.T @ r0)
    optimizer = make_optimizer("gn", damping=0.5, damping_matrix=matrix, gn_reuse=0)
    moved, state, _ = optimizer.update(0, theta, optimizer.init(theta), objective, None, torch.Generator())
    assert state.accepted == 1
    torch.testing.assert_close(moved, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reuse", [1, 3])
def test_reused_jacobian_steps_are_iterative_refinement_of_the_damped_system(reuse):
    """On a linear least-squares problem each reused step a' = -(A + lambda D)^-1 J^T r(theta') with
    the first step's J and damping refines theta towards the least-squares solution by the closed
    form theta <- theta - M^-1 J^T (J theta - b); one residual query each."""
    objective, solution = _linear_least_squares()
    theta = objective.flatten()
    r0 = objective.residuals(theta[None], None)[0]
    J = torch.stack([objective.residuals((theta + e)[None], None)[0] - r0 for e in torch.eye(5, dtype=torch.float64)]).T
    A = J.T @ J
    M = A + 0.5 * A.diagonal().mean() * torch.eye(5, dtype=torch.float64)
    expected = theta.clone()
    for _ in range(1 + reuse):
        expected = expected - torch.linalg.solve(M, J.T @ (J @ expected + r0 - J @ theta))
    optimizer = make_optimizer("gn", damping=0.5, gn_reuse=reuse)
    before = objective.queries
    moved, state, info = optimizer.update(0, theta, optimizer.init(theta), objective, None, torch.Generator())
    torch.testing.assert_close(moved, expected, rtol=1e-10, atol=1e-12)
    assert objective.queries - before == 1 + 1 + reuse  # the Jacobian, the trial, the reused steps
    plain = make_optimizer("gn", damping=0.5, gn_reuse=0).update(0, theta, optimizer.init(theta), objective, None,
                                                     torch.Generator())[0]
    assert (moved - solution).norm() < 0.9 * (plain - solution).norm()  # closer to the solution
    # at the solution a reused step changes nothing and is not kept: one query, then it stops
    optimizer = make_optimizer("gn", damping=1e-15, gn_reuse=3)
    before = objective.queries
    exact, _, _ = optimizer.update(0, theta, optimizer.init(theta), objective, None, torch.Generator())
    assert objective.queries - before == 1 + 1 + 1
    torch.testing.assert_close(exact, solution, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size, accelerated", [(0.05, True), (5.0, False)])
def test_geodesic_acceleration_bends_the_step_by_the_second_directional_derivative(size, accelerated):
    """rho(w) = M w - b + (w . w) c: along a velocity v its second directional derivative is exactly
    2 (v . v) c, so the step is v + w / 2 with w = -(A + lambda D)^-1 J^T 2 (v . v) c, kept while
    |w| <= 0.75 |v|; a strong curvature (large c) gives |w| > 0.75 |v| and the plain step v."""
    c = size * torch.linspace(-1, 1, 12, dtype=torch.float64)
    objective, _ = _linear_least_squares(c)
    theta = objective.flatten() + 0.1
    J = torch.func.jacrev(lambda t: objective.loss_fn.residual_vector(objective.network(t), None))(theta)
    r0 = objective.residuals(theta[None], None)[0]
    A = J.T @ J
    M = A + 0.5 * A.diagonal().mean() * torch.eye(5, dtype=torch.float64)
    v = torch.linalg.solve(M, -J.T @ r0)
    w = torch.linalg.solve(M, -J.T @ (2 * (v @ v) * c))
    assert bool(w.norm() <= 0.75 * v.norm()) is accelerated
    plain = make_optimizer("gn", damping=0.5, gn_reuse=0)  # gn_acceleration = 0: off by default
    bent = make_optimizer("gn", damping=0.5, gn_acceleration=0.75, gn_reuse=0)
    unbent, _, _ = plain.update(0, theta, plain.init(theta), objective, None, torch.Generator())
    moved, state, _ = bent.update(0, theta, bent.init(theta), objective, None, torch.Generator())
    torch.testing.assert_close(unbent, theta + v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(moved, theta + (v + w / 2 if accelerated else v), rtol=1e-8, atol=1e-10)


def test_auto_subspace_takes_every_coordinate_up_to_4096_parameters_then_random_directions():
    assert auto_subspace(200, 261, 100) == ("coordinates", 261)
    assert auto_subspace(200, 5000, 10_000) == ("orthonormal", 200)
    assert auto_subspace(200, 5000, 150) == ("orthonormal", 150)  # J has rank <= n: at most n directions
    objective, _ = _linear_least_squares()  # 5 parameters: every coordinate
    jacobian = difference_jacobian(objective, objective.flatten(), None, torch.Generator().manual_seed(0))
    assert jacobian.directions is None and jacobian.matrix.shape == (12, 5) and jacobian.queries == 6


def test_a_solved_zero_residual_problem_has_converged_relative_to_its_first_loss():
    """b = M w*: one undamped step solves it; the loss falls below tolerance x the first loss."""
    objective, _ = _linear_least_squares()
    residual_vector = objective.loss_fn.residual_vector
    offset = residual_vector(lambda X: X @ torch.ones(5, dtype=torch.float64), None)  # rho(1) = M 1 - b
    objective.loss_fn.residual_vector = lambda network, batch: residual_vector(network, batch) - offset
    theta = objective.flatten()
    first = objective.loss(theta, None).item()
    for tolerance, converged in ((1e-12, True), (1e-40, False)):
        optimizer = make_optimizer("gn", damping=1e-15, gn_tolerance=tolerance)
        moved, state, info = optimizer.update(0, theta, optimizer.init(theta), objective, None, torch.Generator())
        torch.testing.assert_close(moved, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-10)
        assert state.first_loss == pytest.approx(first) and info.converged is converged
        assert any("converged" in event for event in info.events) is converged


def test_the_convergence_test_ends_only_runs_without_a_time_budget(tmp_path):
    """gn_tolerance stops a run given steps once its loss is below the tolerance times the first; a
    run given a time budget trains on past it (to its budget, its steps or its rounding floor), and
    its loss ends lower."""
    settings = dict(optimizer="zo-gn", backend="fd", steps=40, gn_tolerance=1e-6)
    ended = solve(LINE, **settings, out=tmp_path / "steps")
    budgeted = solve(LINE, **settings, time_budget=3600.0, out=tmp_path / "budget")
    assert ended.summary["stopped_by"] == "converged" and ended.summary["steps"] < 40
    assert "below 1e-06 times its first value" in ended.summary["events"][-1]["event"]
    assert budgeted.summary["steps"] > ended.summary["steps"]
    assert not any("times its first value" in event["event"] for event in budgeted.summary["events"])
    assert budgeted.summary["final_loss"] < ended.summary["final_loss"]


def test_a_singular_system_is_damped_not_an_error():
    """A residual that ignores two of the parameters: J^T J is singular; the damping handles it."""
    objective, _ = _linear_least_squares()
    residual_vector = objective.loss_fn.residual_vector
    objective.loss_fn.residual_vector = lambda network, batch: residual_vector(network, batch) * torch.tensor(
        [1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64).repeat(3)[:12]
    optimizer = make_optimizer("zo-gn", damping=1e-3)
    theta = objective.flatten()
    state = optimizer.init(theta)
    for step in range(5):
        theta, state, info = optimizer.update(step, theta, state, objective, None, torch.Generator())
    assert torch.isfinite(theta).all() and state.accepted >= 1


def test_lbfgs_reaches_the_minimum_of_a_quadratic():
    D = 30
    A = torch.diag(torch.linspace(1, 30, D, dtype=torch.float64))
    c = torch.linspace(0, 1, D, dtype=torch.float64)

    class Vector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(D, dtype=torch.float64))

        def forward(self, X):
            return X @ self.w

    eye = torch.eye(D, dtype=torch.float64)
    objective = Objective(Vector(), lambda network, batch: 0.5 * network(eye) @ A @ network(eye) - c @ network(eye))
    optimizer = make_optimizer("lbfgs", history=50, resample_every=1000)
    theta, state = objective.flatten(), None
    state = optimizer.init(theta)
    errors = []
    for step in range(60):
        theta, state, info = optimizer.update(step, theta, state, objective, None, torch.Generator())
        errors.append((theta - torch.linalg.solve(A, c)).abs().max().item())
    # the loss resolves w only to ~sqrt(eps |L| / lambda_min) ~ 1e-9: L-BFGS gets there
    assert errors[-1] < 1e-8, errors[::10]
    assert errors[4] > 1e-3  # it does take steps to get there


@pytest.mark.parametrize("optimizer", ["zo-gn", "gn"])
def test_levenberg_marquardt_solves_a_small_pinn_in_a_few_steps(tmp_path, optimizer):
    changes = {"backend": "fd"} if optimizer == "zo-gn" else {"backend": "ad"}
    run = solve(LINE, optimizer=optimizer, steps=35, out=tmp_path / "run", **changes)
    assert run.summary["final_rel_l2"] < 1e-3, run.summary["final_rel_l2"]
    first = run.metrics[0]["val_rel_l2"]
    assert first > 0.1  # it started far away


ROBIN_ONLY = """
variables:
  space: {name: x, dim: 1, domain: [0, 1]}
equation: -d(u, x, x) = 4 * cos(2 * x)
exact: cos(2 * x) + x
conditions:
  ends: {at: boundary, type: robin, coefficient: 2, value: "(2 * x - 1) * (1 - 2 * sin(2 * x)) + 2 * (cos(2 * x) + x)"}
"""


def test_zo_gn_solves_a_problem_whose_only_condition_is_robin(tmp_path):
    """-u'' = f with du/dn + 2u = g at both ends (outward normals -1 and +1: the value's 2x - 1) has
    the one solution cos(2x) + x; a wrong sign of the normal or of the u term would give another."""
    path = tmp_path / "robin.yaml"
    path.write_text(ROBIN_ONLY)
    run = solve(path, steps=25, width=8, batch=64, condition_batch=16, out=tmp_path / "run")
    assert run.summary["final_rel_l2"] < 1e-4, run.summary["final_rel_l2"]  # 3.7e-5; the inward normal: 0.94
    assert run.metrics[0]["val_rel_l2"] > 0.1


def test_conditions_weigh_the_equations_gain_on_the_domains_longest_waves(tmp_path):
    """condition_scale 0 (automatic): the largest prod (2 pi / L) over the axes of a derivative of order
    2 to 4 (the Laplacian: its largest (2 pi / L)^2), at least 1; the loss's condition terms carry it;
    a given value is taken."""
    from pinnzo.pinn import condition_scale

    path = tmp_path / "plate.yaml"
    path.write_text(FOURTH.replace("domain: [0, 1]", "domain: [[0, 1], [0, 0.5]]"))
    problem = load_problem(path)
    automatic = condition_scale(problem, resolve_settings(problem, {}))
    assert automatic == pytest.approx((2 * math.pi) ** 2 * (4 * math.pi) ** 2)  # d(u, x1, x1, x2, x2) on 1 x 0.5
    assert condition_scale(problem, resolve_settings(problem, {"condition_scale": 3.0})) == 3.0
    kdv = tmp_path / "kdv.yaml"
    kdv.write_text("""
variables:
  space: {name: x, dim: 1, domain: [-6, 6]}
  time: {name: t, domain: [0, 1]}
equation: d(u, t) + 6 * u * d(u, x) + d(u, x, x, x)
""")
    kdv_problem = load_problem(kdv)
    assert condition_scale(kdv_problem, resolve_settings(kdv_problem, {})) == 1.0  # (2 pi / 12)^3 < 1
    poisson = load_problem(REPO / "problems" / "poisson2d.yaml")  # lap(u) on [0, 1]^2
    assert condition_scale(poisson, resolve_settings(poisson, {})) == pytest.approx((2 * math.pi) ** 2)
    heat = tmp_path / "heat.yaml"  # lap(u) over x1 in [0, 4], x2 in [0, 2]; time's interval does not count
    heat.write_text("""
variables:
  space: {name: x, dim: 2, domain: [[0, 4], [0, 2]]}
  time: {name: t, domain: [0, 0.1]}
equation: d(u, t) = lap(u) + d(u, x1, x2)
""")
    heat_problem = load_problem(heat)
    assert condition_scale(heat_problem, resolve_settings(heat_problem, {})) == pytest.approx(math.pi ** 2)
    heat.write_text(heat.read_text().replace("lap(u) + d(u, x1, x2)", "d(u, x1, x2) + d(u, t, x2)"))
    heat_problem = load_problem(heat)  # d(u, t, x2): (2 pi / 0.1) (2 pi / 2)
    assert condition_scale(heat_problem, resolve_settings(heat_problem, {})) == pytest.approx(20 * math.pi ** 2)
    transport = tmp_path / "transport.yaml"  # first order: no factor
    transport.write_text(heat.read_text().replace("d(u, x1, x2) + d(u, t, x2)", "- d(u, x1)"))
    transport_problem = load_problem(transport)
    assert condition_scale(transport_problem, resolve_settings(transport_problem, {})) == 1.0
    objective, batch, theta = _components(path, backend="fd")
    scale = objective.loss_fn.condition_scale
    terms = objective.loss_fn.terms(objective.network(theta), batch)
    edge = objective.residuals(theta[None], batch)[0][6:10]  # the 4 edge rows follow the 6 interior ones
    assert edge.square().sum().item() == pytest.approx(terms["edge"].item(), rel=1e-12)
    values = objective.network(theta)(batch.conditions[0][0])
    assert terms["edge"].item() == pytest.approx(scale * values.square().mean().item(), rel=1e-12)


def test_measured_data_keep_their_weight_under_the_automatic_condition_scale():
    """burgers1d-inverse (u_xx on [-1, 1]: x pi^2): its initial and end conditions are weighted pi^2, its
    noisy data 1, so the heavier conditions do not pull the fit towards the noise (docs/problems.md)."""
    from pinnzo.pinn import PINNTask
    from pinnzo.residual import PINNLoss

    objective, batch, theta = _components(REPO / "problems" / "burgers1d-inverse.yaml", backend="fd")
    loss = objective.loss_fn
    assert loss.condition_scale == pytest.approx(math.pi ** 2)
    network = objective.network(theta)
    plain = PINNLoss(loss.problem, loss.backend).terms(network, batch)
    terms = loss.terms(network, batch)
    assert terms["initial"].item() == pytest.approx(math.pi ** 2 * plain["initial"].item(), rel=1e-12)
    assert terms["ends"].item() == pytest.approx(math.pi ** 2 * plain["ends"].item(), rel=1e-12)
    assert terms["measured"].item() == pytest.approx(plain["measured"].item(), rel=1e-12)
    assert plain["measured"].item() > 0
    for name, header in [("burgers1d-inverse", "; conditions' weights x 9.87 (not the data's)"),
                         ("poisson2d", "; conditions' weights x 39.48"), ("hjb20", None)]:
        problem = load_problem(REPO / "problems" / f"{name}.yaml")  # hjb20: no conditions, no factor named
        text = PINNTask(build(problem, resolve_settings(problem, {"width": 6}))).describe()
        assert (header in text) if header else ("conditions' weights" not in text), text


BEAM = """
variables:
  space: {name: x, dim: 1, domain: [0, 1]}
equation: d(u, x, x, x, x) + d(u, x, x, x) = 24 - 12 * (1 - 2 * x)
exact: (x * (1 - x))**2
conditions:
  ends: {at: boundary, value: 0}
  clamped: {at: boundary, type: neumann, value: 0}
"""


@pytest.mark.parametrize("optimizer", ["zo-gn", "gn"])
def test_gauss_newton_solves_a_fourth_order_problem(tmp_path, optimizer):
    """A clamped beam with a third-derivative term: u'''' + u''' = f, u = u' = 0 at both ends; the
    exact solution x^2 (1 - x)^2 has u'''' = 24 and u''' = -12 (1 - 2x). With the conditions weighted
    by the operator's gain (2 pi)^4 (pinn.condition_scale): 4.9e-4 after 60 steps (weighted 1: 7.9
    after 30, 4.8e-5 after 300)."""
    path = tmp_path / "beam.yaml"
    path.write_text(BEAM)
    run = solve(path, optimizer=optimizer, backend="fd", steps=60, width=8, batch=64, condition_batch=16,
                eval_every=10, out=tmp_path / "run")
    assert run.summary["final_rel_l2"] < 1e-3, run.summary["final_rel_l2"]
    assert run.metrics[0]["val_rel_l2"] > 0.1


SIMPLY_SUPPORTED = """
variables:
  space: {name: x, dim: 1, domain: [0, 1]}
equation: d(u, x, x, x, x) = pi**4 * sin(pi * x)
exact: sin(pi * x)
conditions:
  ends: {at: boundary, value: 0}
  free: {at: boundary, type: operator, operator: "d(u, x, x)", value: 0}
"""


def test_zo_gn_solves_a_simply_supported_beam_whose_moments_are_an_operator_condition(tmp_path):
    """u'''' = pi^4 sin(pi x) with u = 0 and u'' = 0 (no moment) at both ends: sin(pi x). With u' = 0
    in place of u'' = 0 (clamped ends) the solution would be another (u' of sin(pi x) is -pi at x = 1)."""
    path = tmp_path / "beam.yaml"
    path.write_text(SIMPLY_SUPPORTED)
    run = solve(path, steps=60, width=8, batch=64, condition_batch=16, eval_every=10, out=tmp_path / "run")
    assert run.summary["final_rel_l2"] < 1e-4, run.summary["final_rel_l2"]  # 4.4e-6
    assert run.metrics[0]["val_rel_l2"] > 0.1


@pytest.mark.parametrize("optimizer, changes", [
    ("zo-gn", {"backend": "fd", "resample_every": 7}),
    ("lbfgs", {"backend": "ad", "resample_every": 7}),
    ("adam-lbfgs", {"backend": "ad", "switch_step": 6, "resample_every": 7}),
])
def test_resume_after_an_interrupt_is_bit_identical(tmp_path, optimizer, changes):
    settings = resolve_settings(load_problem(LINE), {"optimizer": optimizer, "steps": 16, **changes})
    (straight, resumed), (a, b) = interrupted_and_straight(LINE, settings, tmp_path, at_step=9)
    assert straight == resumed
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_jacobian_too_large_for_memory_is_refused_with_the_setting_to_change(tmp_path):
    with pytest.raises(PinnzoError, match=r"zo-gn: the Jacobian has 1,010 residuals x .* more than memory_mb = 1"):
        solve(LINE, optimizer="zo-gn", backend="fd", batch=1000, memory_mb=1, steps=2, out=tmp_path / "r")
    # gn with a stencil backend also holds the network's Jacobian at the 3,010 stencil rows: ~4.5 MB
    # whole, 0.05 MB a parameter; within memory_mb = 4 it takes the parameters in blocks, the same steps
    problem = load_problem(LINE)
    objective = build(problem, resolve_settings(problem, {"optimizer": "gn", "backend": "fd"})).objective
    batch = sample_batch(problem, 1000, 10, torch.Generator().manual_seed(0), torch.float64)
    theta = objective.flatten()
    whole, blocked = GaussNewton("gn", memory_mb=1024), GaussNewton("gn", memory_mb=4)
    assert whole._columns(objective, theta, batch) is None and whole.fits(objective, theta, batch)
    assert 1 < blocked._columns(objective, theta, batch) < objective.dim
    assert not blocked.fits(objective, theta, batch)  # the points do not grow into blocks
    runs = [solve(LINE, optimizer="gn", backend="fd", batch=1000, memory_mb=memory, steps=2,
                  out=tmp_path / f"gn{memory}") for memory in (1024, 4)]
    # (to fd's rounding: within memory_mb = 4 the network's values are also computed in blocks of rows)
    assert runs[0].summary["final_loss"] == pytest.approx(runs[1].summary["final_loss"], rel=1e-8)
    with pytest.raises(PinnzoError, match=r"gn: the Jacobian has 1,010 residuals x 97 directions and the network's "
                                          r"3,010 stencil rows x 97 parameters, one parameter at a time \(~2 MB\), "
                                          r"more than memory_mb = 1: lower batch or condition_batch, or raise "
                                          r"memory_mb"):
        solve(LINE, optimizer="gn", backend="fd", batch=1000, memory_mb=1, steps=1, out=tmp_path / "gn")


def test_difference_step_follows_the_backends_rounding():
    """fd in float64 amplifies rounding by 4 / h2^2 = 4e8: the step is sqrt(eps * 4e8) ~ 3e-4."""
    objective, batch, theta = _components(REPO / "problems" / "poisson2d.yaml", backend="fd")
    from pinnzo.optim.gauss_newton import default_mu

    assert default_mu(theta, 4e8) == pytest.approx((2.220446e-16 * 4e8) ** 0.5 * max(1, theta.abs().max().item()))
    jacobian = difference_jacobian(objective, theta, batch, torch.Generator(), "orthonormal", 7)
    assert jacobian.matrix.shape == (10, 7) and jacobian.queries == 8
    S = jacobian.directions
    torch.testing.assert_close(S @ S.T, torch.eye(7, dtype=torch.float64), rtol=0, atol=1e-12)


def test_gauss_newton_stops_when_it_can_make_no_progress(tmp_path):
    """In float32 the fd residuals carry rounding ~eps * 4 / h^2: once the loss reaches that floor no
    trial step decreases it, the damping runs to its limit, and the run stops."""
    run = solve(LINE, optimizer="zo-gn", backend="fd", dtype="float32", steps=300, out=tmp_path / "run")
    assert run.summary["stopped_by"] == "converged" and run.summary["steps"] < 300
    assert run.summary["final_rel_l2"] < 3e-3
    assert "converged" in run.summary["events"][-1]["event"]


def test_a_stall_asks_for_fresh_points_and_a_second_one_without_progress_converges():
    """At the least-squares minimum no trial step decreases the loss: with progress since the last
    stall the step reports stalled (the damping starts afresh), without any it has converged."""
    from pinnzo.optim.gauss_newton import MAX_DAMPING, GNState

    objective, solution = _linear_least_squares()
    optimizer = make_optimizer("gn", damping=1e-3)
    loss = objective.loss(solution, None).item()
    # (steps accepted since the last stall, the loss at that stall): fresh points only after progress
    # to below 0.9 times the last stall's loss
    for since_stall, stall_loss, stalled in ((3, math.inf, True), (3, loss / 0.89, True), (0, math.inf, False),
                                             (3, loss / 0.91, False)):
        state = GNState(MAX_DAMPING / 4, 2.0, 10, 0, 1.0, since_stall, stall_loss)
        moved, state, info = optimizer.update(5, solution, state, objective, None, torch.Generator())
        assert torch.equal(moved, solution) and (info.stalled, info.converged) == (stalled, not stalled)
        assert state.damping == (1e-3 if stalled else MAX_DAMPING) and state.since_stall == 0
        assert state.stall_loss == pytest.approx(loss, rel=1e-12)
        assert ("converged" in info.events[-1]) is not stalled


def test_a_pinn_draws_fresh_points_after_a_stall_and_resumes_across_it_bit_identically(tmp_path):
    """float32 fd: at the rounding floor zo-gn stalls; the run goes on with fresh points (off the
    resampling schedule), and an interrupt right after the stall resumes to the same numbers."""
    settings = resolve_settings(load_problem(LINE), {"optimizer": "zo-gn", "backend": "fd", "dtype": "float32",
                                                      "steps": 70, "resample_every": 1000})
    run = solve(LINE, settings, out=tmp_path / "first")
    stalls = [event["step"] for event in run.summary["events"] if "fresh points, damping" in event["event"]]
    assert stalls and run.summary["steps"] > stalls[0]  # it went on after the stall
    assert run.summary["final_rel_l2"] < 1e-3
    settings = settings.replace({"steps": stalls[0] + 6})
    (straight, resumed), (a, b) = interrupted_and_straight(LINE, settings, tmp_path, at_step=stalls[0] - 1)
    assert straight == resumed
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("optimizer, period", [("adam", 1), ("zo-signrge", 1), ("lbfgs", 100), ("adam-lbfgs", 100),
                                               ("gn", 20), ("zo-gn", 20)])
def test_the_points_are_resampled_every_step_for_gradients_and_held_for_least_squares(optimizer, period):
    from pinnzo.pinn import resample_period

    problem = load_problem(LINE)
    assert resample_period(resolve_settings(problem, {"optimizer": optimizer})) == period
    assert resample_period(resolve_settings(problem, {"optimizer": optimizer, "resample_every": 7})) == 7


def test_refresh_draws_fresh_points_at_the_next_step():
    from pinnzo.pinn import PINNTask

    problem = load_problem(LINE)
    task = PINNTask(build(problem, resolve_settings(problem, {"optimizer": "zo-gn", "backend": "fd"})))
    generators = {name: torch.Generator().manual_seed(i) for i, name in enumerate(task.generator_names)}
    theta = task.objective.flatten()
    first = task.sample(0, generators, theta)
    assert task.sample(1, generators, theta) is first  # the same points until the next resample
    assert task.refresh() is True
    fresh = task.sample(2, generators, theta)
    assert fresh is not first and not torch.equal(fresh.interior, first.interior)
    assert task.sample(3, generators, theta) is fresh


@pytest.mark.parametrize("args, needle", [
    (["--optimizer", "lbfgs", "--set", "directions=4"], "--set directions: lbfgs does not use this setting"),
    (["--optimizer", "zo-gn", "--lr", "0.1"], "--lr: zo-gn does not use this setting"),
    (["--optimizer", "adam", "--set", "gn_subspace=coordinates"], "--set gn_subspace: adam does not use this"),
    (["--optimizer", "zo-gn", "--set", "gn_subspace=sideways"], "must be one of auto, coordinates, gaussian"),
    (["--optimizer", "gn", "--set", "damping=0"], "--set damping: expected a positive finite number"),
    (["--optimizer", "zo-gn", "--set", "gn_tolerance=1e-6", "--set", "time_budget=60"],
     "--set gn_tolerance: the convergence test applies to runs without a time_budget"),
])
def test_impossible_combinations_are_refused_with_one_line(tmp_path, args, needle):
    result = run_cli(["solve", str(REPO / "problems" / "poisson2d.yaml"), *args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and needle in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "r").exists()


def test_mnist_refuses_the_autograd_gauss_newton():
    result = run_cli(["mnist", "--optimizer", "gn", "--data-dir", "nowhere"])
    assert result.exit_code == 2 and "Gauss-Newton with an autograd Jacobian needs a least-squares loss" in \
        result.output and "zo-gn" in result.output and result.output.count("\n") == 1, result.output


def test_an_underdetermined_least_squares_problem_is_warned_about(tmp_path, capsys):
    solve(LINE, optimizer="zo-gn", backend="fd", batch=20, condition_batch=2, steps=1, quiet=False,
          out=tmp_path / "few")
    assert "warning: 22 residuals for 97 parameters: the least-squares problem is underdetermined" in \
        capsys.readouterr().err
    solve(LINE, optimizer="zo-gn", backend="fd", steps=1, quiet=False, out=tmp_path / "enough")
    assert "underdetermined" not in capsys.readouterr().err


@pytest.mark.parametrize("backend, warned", [("sparse-grid", "level 3"), ("stein", "64 samples"), ("fd", None)])
def test_stein_derivatives_of_order_three_or_four_are_warned_about(tmp_path, capsys, backend, warned):
    path = tmp_path / "beam.yaml"
    path.write_text(BEAM)
    solve(path, optimizer="zo-gn", backend=backend, samples=64, width=4, batch=16, condition_batch=4, steps=1,
          quiet=False, out=tmp_path / backend)
    err = capsys.readouterr().err
    if warned is None:
        assert "Stein" not in err
    else:
        assert (f"warning: derivatives of order 4 by a Stein estimator need a rule exact to a high degree "
                f"(sparse-grid level 5 or more) or very many samples (this run: {warned})") in err


@pytest.mark.parametrize("network", ["mlp", "tt"])
@pytest.mark.parametrize("problem", ["helmholtz2d", "layer2d"])
def test_layered_forward_differences_take_a_step_sized_by_the_parts_and_match_autograd(network, problem):
    """The layered columns round relative to the stencil parts and residuals, not to u amplified by fd's
    4 / h^2 = 4e8: their step is sqrt(eps g) for the measured gain g (~1e2-1e4 here), and the Jacobian
    agrees with the autograd one to ~1e-6, where the black-box step sqrt(eps 4e8) truncates at ~3e-4.
    Their differences start from the layered path's own unperturbed residuals, not from batched forwards
    whose last bits differ (an error the stencil and 1 / mu amplify)."""
    objective, _, theta = _components(REPO / "problems" / f"{problem}.yaml", backend="fd", network=network)
    batch = sample_batch(load_problem(REPO / "problems" / f"{problem}.yaml"), 50, 20,
                         torch.Generator().manual_seed(0), torch.float64)
    rho, exact = objective.residual_jacobian(theta, batch)
    gain = objective.coordinate_rounding_gain(theta, batch)
    assert 1 < gain < 1e5
    error = lambda m: ((m - exact).norm() / exact.norm()).item()
    layered = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", gain=4e8)
    assert layered.queries == objective.dim + 3 and torch.equal(layered.residual, objective.residuals(theta[None], batch)[0])
    assert error(layered.matrix) < 2e-6
    black_box_step = (2.220446049250313e-16 * 4e8) ** 0.5 * max(1.0, theta.abs().max().item())
    coarse = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", mu=black_box_step)
    assert error(coarse.matrix) > 1e-4
    # a ten times smaller step: the layered rounding grows as 1 / mu from a floor far below the black box's
    fine = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", mu=1e-8)
    assert error(fine.matrix) < 1e-5


def test_an_inverse_problem_keeps_the_backends_step():
    """With unknowns the layered queries go through the criterion of N + dN (values again): no gain of
    their own, and the step stays sqrt(eps x the backend's gain)."""
    objective, batch, theta = _components(REPO / "problems" / "burgers1d-inverse.yaml", backend="fd")
    assert objective.layered and objective.coordinate_rounding_gain(theta, batch) is None


def test_the_column_setting_chooses_the_layered_columns(tmp_path):
    """``gn_columns``: chain (the default) or differences, each the Jacobian zo-gn then takes; anything
    else is one "must be one of" line and exit code 2."""
    objective, batch, theta = _components(REPO / "problems" / "layer2d.yaml", backend="fd", network="mlp")
    matrices = []
    for columns, linear in (("chain", True), ("differences", False)):
        optimizer = make_optimizer("zo-gn", gn_columns=columns)
        assert optimizer.linear is linear
        expected = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", linear=linear)
        matrices.append(optimizer.jacobian(objective, theta, batch, torch.Generator()).matrix)
        assert torch.equal(matrices[-1], expected.matrix)
    assert not torch.equal(*matrices)  # the two columns differ (by O(mu))
    assert make_optimizer("zo-gn").linear  # the default
    result = run_cli(["solve", str(REPO / "problems" / "layer2d.yaml"), "--optimizer", "zo-gn", "--set",
                      "gn_columns=exact", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "must be one of chain, differences" in result.output, result.output
    assert not (tmp_path / "run").exists()
