"""The generalised Gauss-Newton (zo-gn on the MNIST cross-entropy) against closed forms and autograd."""

from __future__ import annotations

import torch
import pytest

from pinnzo.mnist import build_classifier, cross_entropy, train_mnist
from pinnzo.optim import Objective
from pinnzo.optim.ggn import GeneralisedGaussNewton, conjugate_gradients
from pinnzo.optim.gauss_newton import GNState
from pinnzo.settings import MnistSettings
from test_mnist import _separable


def test_conjugate_gradients_solve_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(40, 30, generator=g, dtype=torch.float64)
    M = B.T @ B + 0.1 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, generator=g, dtype=torch.float64)
    x = conjugate_gradients(lambda v: M @ v, b, M.diagonal(), iterations=200, tolerance=1e-14)
    torch.testing.assert_close(x, torch.linalg.solve(M, b), rtol=1e-10, atol=1e-12)
    # cut off early it is still a descent direction of the model b^T x - x^T M x / 2
    short = conjugate_gradients(lambda v: M @ v, b, M.diagonal(), iterations=2)
    assert (b @ short - short @ M @ short / 2).item() > 0


def _logits_batch(seed=0, rows=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (rows,), generator=g)
    return logits, (torch.zeros(rows, 784, dtype=torch.float64), labels)


def test_cross_entropy_curvature_is_the_criterions_gradient_and_hessian():
    logits, batch = _logits_batch()
    loss, gradient, product = cross_entropy.curvature(logits, batch)
    f = lambda F: cross_entropy.criterion(F, batch)
    torch.testing.assert_close(loss, f(logits), rtol=1e-14, atol=0)
    torch.testing.assert_close(gradient, torch.func.grad(f)(logits), rtol=1e-12, atol=1e-15)
    u = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hessian_u = torch.func.jvp(torch.func.grad(f), (logits,), (u,))[1]
    torch.testing.assert_close(product(u), hessian_u, rtol=1e-12, atol=1e-15)
    # diag(J^T H J) for a Jacobian J (d, B, C) against the explicit matrix
    J = torch.randn(5, *logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    explicit = torch.stack([J[j].reshape(-1) @ product(J[j]).reshape(-1) for j in range(5)])
    torch.testing.assert_close(cross_entropy.curvature_diagonal(J, logits, batch), explicit, rtol=1e-12, atol=0)


def _tt_objective(rows=12):
    settings = MnistSettings(rank=2, dtype="float64", activation="tanh")
    model = build_classifier(settings, torch.float64)
    g = torch.Generator().manual_seed(3)
    batch = (torch.randn(rows, 784, generator=g, dtype=torch.float64), torch.randint(0, 10, (rows,), generator=g))
    return Objective(model, cross_entropy), batch


def test_the_layered_outputs_jacobian_matches_autograd():
    objective, batch = _tt_objective()
    theta = objective.flatten()
    outputs, changes = objective.coordinate_outputs(theta, batch, 1e-7)
    exact = torch.func.jacrev(lambda t: objective.network(t)(batch[0]))(theta)  # (R, C, d)
    torch.testing.assert_close(outputs, objective.network(theta)(batch[0]), rtol=1e-13, atol=1e-13)
    error = (changes / 1e-7 - exact.permute(2, 0, 1)).norm() / exact.norm()
    assert error < 1e-6, error
    assert objective.queries == 1 + theta.numel()


def test_a_ggn_step_is_the_damped_newton_step_of_the_generalised_model():
    objective, batch = _tt_objective()
    theta = objective.flatten()
    optimizer = GeneralisedGaussNewton("zo-gn", damping=10.0, iterations=10_000, reuse=0)
    moved, state, info = optimizer.update(0, theta, optimizer.init(theta), objective, batch, None)
    # the same step from autograd's Jacobian and the explicit d x d matrices
    J = torch.func.jacrev(lambda t: objective.network(t)(batch[0]))(theta).reshape(-1, theta.numel())
    _, gradient, product = cross_entropy.curvature(objective.network(theta)(batch[0]), batch)
    H = torch.stack([product(e.reshape(-1, 10)).reshape(-1) for e in torch.eye(len(J), dtype=torch.float64)])
    G, g = J.T @ H @ J, J.T @ gradient.reshape(-1)
    damping = 10.0 * G.diagonal().mean()
    expected = theta + torch.linalg.solve(G + damping * torch.eye(len(G), dtype=torch.float64), -g)
    assert isinstance(state, GNState) and (state.accepted, state.rejected) == (1, 0) and info.loss == pytest.approx(
        cross_entropy.criterion(objective.network(theta)(batch[0]), batch).item(), rel=1e-12)
    assert (moved - expected).norm() / (expected - theta).norm() < 1e-5
    assert objective.loss(moved, batch) < objective.loss(theta, batch)


@pytest.mark.parametrize("damping, kept", [(30.0, True), (10.0, False)])
def test_a_reused_ggn_step_takes_the_new_gradient_through_the_old_jacobian_and_curvature(damping, kept):
    """After the accepted step to theta', a reused step solves the same damped generalised model with
    the gradient at theta' pushed through theta's Jacobian: a' = -(G + lambda D)^-1 J^T grad_F l(F(theta')),
    kept only if it lowers the loss (from this random start, with damping 10 the old model overshoots:
    loss 0.75 at theta', 3.1 after the reused step)."""
    objective, batch = _tt_objective()
    theta = objective.flatten()
    once = GeneralisedGaussNewton("zo-gn", damping=damping, iterations=10_000, reuse=0)
    first, _, _ = once.update(0, theta, once.init(theta), objective, batch, None)
    twice = GeneralisedGaussNewton("zo-gn", damping=damping, iterations=10_000, reuse=1)
    before = objective.queries
    moved, state, _ = twice.update(0, theta, twice.init(theta), objective, batch, None)
    assert state.accepted == 1 and objective.queries - before == (theta.numel() + 1) + 1 + 2
    J = torch.func.jacrev(lambda t: objective.network(t)(batch[0]))(theta).reshape(-1, theta.numel())
    _, _, product = cross_entropy.curvature(objective.network(theta)(batch[0]), batch)
    _, moved_gradient, _ = cross_entropy.curvature(objective.network(first)(batch[0]), batch)
    H = torch.stack([product(e.reshape(-1, 10)).reshape(-1) for e in torch.eye(len(J), dtype=torch.float64)])
    G = J.T @ H @ J
    trial = first + torch.linalg.solve(G + damping * G.diagonal().mean() * torch.eye(len(G), dtype=torch.float64),
                                       -J.T @ moved_gradient.reshape(-1))
    assert bool(objective.loss(trial, batch) < objective.loss(first, batch)) is kept
    if kept:
        assert (moved - trial).norm() / (trial - first).norm() < 1e-4
    else:
        assert torch.equal(moved, first)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zo_gn_classifies_separable_data_in_one_epoch(tmp_path, dtype):
    settings = MnistSettings(optimizer="zo-gn", rank=2, epochs=1, batch=32, seed=0, dtype=dtype)
    summary = train_mnist(_separable(), settings, tmp_path / "run", quiet=True)
    assert summary["test_accuracy"] >= 0.95, summary["test_accuracy"]
    steps, d = 600 // 32, summary["parameters"]
    assert summary["total_queries"] >= steps * (d + 2)  # outputs, d columns, at least one trial each


def test_an_interrupted_zo_gn_run_resumes_bit_identically(tmp_path):
    from pinnzo.loop import Interrupted

    data = _separable(n=320)
    settings = MnistSettings(optimizer="zo-gn", rank=2, epochs=2, batch=32, seed=0, damping=10.0)
    straight = train_mnist(data, settings, tmp_path / "a", quiet=True)

    def stop(step, state):
        if step == 13:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        train_mnist(data, settings, tmp_path / "b", quiet=True, callbacks=[stop])
    resumed = train_mnist(data, settings, tmp_path / "b", resume=True, quiet=True)
    assert resumed["test_loss"] == straight["test_loss"] and resumed["total_queries"] == straight["total_queries"]
    a, b = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in "ab")
    assert all(torch.equal(a[key], b[key]) for key in a)
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert any(isinstance(value, GNState) for value in _walk(saved))  # the damping state was checkpointed


def _walk(value):
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, (list, tuple)) and not isinstance(value, GNState):
        for item in value:
            yield from _walk(item)


def test_the_damping_never_falls_below_its_floor():
    # Nielsen's rule after a perfect step (gain 1) divides lambda by 3; the floor stops it
    assert GeneralisedGaussNewton("zo-gn")._accepted(0.3, 1.0) == pytest.approx(0.1, rel=1e-15)
    assert GeneralisedGaussNewton("zo-gn", floor=0.25)._accepted(0.3, 1.0) == 0.25
    assert GeneralisedGaussNewton("zo-gn", rule="marquardt", floor=0.25)._accepted(0.3, 1.0) == 0.25


def test_the_classifier_takes_the_differences_and_can_take_the_chain_rule():
    """MNIST's default columns are the differences (with one hidden layer the chain rule has nothing
    to skip); gn_columns=chain reaches the generalised Gauss-Newton too."""
    from pinnzo.optim import make_optimizer
    from pinnzo.optim.ggn import generalised
    from pinnzo.settings import MnistSettings

    for columns, linear in ((MnistSettings().gn_columns, False), ("chain", True)):
        settings = MnistSettings().replace({"optimizer": "zo-gn", "gn_columns": columns})
        optimizer = generalised(make_optimizer("zo-gn", **settings.as_dict()), 10, 1e-15)
        assert optimizer.linear is linear


def test_the_curvature_diagonal_is_the_same_in_chunks_and_in_a_float32_jacobians_dtype(monkeypatch):
    import pinnzo.mnist as mnist

    logits, batch = _logits_batch(rows=9)
    J = torch.randn(6, *logits.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    whole = cross_entropy.curvature_diagonal(J, logits, batch)
    monkeypatch.setattr(mnist, "DIAGONAL_CHUNK", 2 * logits.numel())  # two Jacobian rows a chunk
    torch.testing.assert_close(cross_entropy.curvature_diagonal(J, logits, batch), whole, rtol=1e-15, atol=0)
    single = cross_entropy.curvature_diagonal(J.float(), logits, batch)
    assert single.dtype == torch.float64
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=1e-7)


def test_a_float32_networks_ggn_step_solves_in_float32_products_to_their_accuracy():
    """On a float32 network J stays float32 (no float64 copy); the step equals the float64 network's
    step to float32 accuracy."""
    objective, batch = _tt_objective()
    theta = objective.flatten()
    optimizer = GeneralisedGaussNewton("zo-gn", damping=10.0, iterations=10_000, reuse=0, mu=1e-3)
    exact, _, _ = optimizer.update(0, theta, optimizer.init(theta), objective, batch, None)
    single = Objective(objective.model.float(), cross_entropy)
    batch32 = (batch[0].float(), batch[1])
    moved, state, _ = optimizer.update(0, theta.float(), optimizer.init(theta.float()), single, batch32, None)
    assert moved.dtype == torch.float32 and state.accepted == 1
    assert ((moved.double() - exact).norm() / (exact - theta).norm()).item() < 1e-3
