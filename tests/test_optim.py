"""Zeroth-order estimators and optimizers on losses with known gradients."""

from __future__ import annotations

import pytest
import torch

from pinnzo.errors import PinnzoError
from pinnzo.optim import OPTIMIZERS, Objective, make_optimizer
from pinnzo.optim import estimators

D = 30


class Vector(torch.nn.Module):
    def __init__(self, dim=D):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, dim, dtype=torch.float64))

    def forward(self, X):
        return X @ self.w


def quadratic_objective(chunk=8):
    """L(w) = 1/2 w^T A w - c^T w with gradient A w - c (the network's outputs on the identity are w)."""
    A = torch.diag(torch.linspace(1, 3, D, dtype=torch.float64))
    c = torch.linspace(0, 1, D, dtype=torch.float64)
    eye = torch.eye(D, dtype=torch.float64)

    def loss(network, batch):
        w = network(eye)
        return 0.5 * w @ A @ w - c @ w
    objective = Objective(Vector(), loss, chunk)
    theta = objective.flatten()
    return objective, theta, A @ theta - c


NO_BATCH = None  # the quadratic's loss reads no data


@pytest.mark.parametrize("difference", ["forward", "central"])
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_rge_converges_to_the_true_gradient(kind, difference):
    objective, theta, gradient = quadratic_objective()
    cosines = []
    for count in (10, 100, 3000):
        g, _, _ = estimators.rge(objective, theta, NO_BATCH, torch.Generator().manual_seed(0), count, 1e-5, kind,
                                 difference)
        cosines.append(torch.nn.functional.cosine_similarity(g, gradient, 0).item())
    # E cos ~ sqrt(N / (N + d)) for isotropic directions: 0.5, 0.88, 0.995
    assert cosines[0] > 0.3 and cosines[1] > 0.8 and cosines[2] > 0.99, cosines
    assert cosines[0] < cosines[2]


def test_query_counts_are_as_documented():
    objective, theta, _ = quadratic_objective()
    g = torch.Generator().manual_seed(0)
    cases = [
        (lambda: estimators.rge(objective, theta, NO_BATCH, g, 7, 1e-3, "gaussian", "forward"), 8),
        (lambda: estimators.rge(objective, theta, NO_BATCH, g, 7, 1e-3, "gaussian", "central"), 14),
        (lambda: estimators.cge(objective, theta, NO_BATCH, g, 1e-3, "forward"), D + 1),
        (lambda: estimators.cge(objective, theta, NO_BATCH, g, 1e-3, "central"), 2 * D),
        (lambda: estimators.cge(objective, theta, NO_BATCH, g, 1e-3, "forward", coordinates=5), 6),
        (lambda: estimators.backprop(objective, theta, NO_BATCH, g), 1),
    ]
    for estimate, expected in cases:
        before = objective.queries
        _, _, reported = estimate()
        assert reported == expected and objective.queries - before == expected


def test_cge_equals_the_finite_difference_gradient():
    objective, theta, gradient = quadratic_objective()
    mu = 1e-4
    g, loss, _ = estimators.cge(objective, theta, NO_BATCH, torch.Generator(), mu, "forward")
    reference = torch.stack([(objective.loss(theta + mu * e, NO_BATCH) - objective.loss(theta, NO_BATCH)) / mu
                             for e in torch.eye(D, dtype=torch.float64)])
    # batched (vmap) and single evaluations round differently: ~eps |L| / mu = 1e-12 .. 1e-11
    torch.testing.assert_close(g, reference, rtol=0, atol=1e-10)
    central, _, _ = estimators.cge(objective, theta, NO_BATCH, torch.Generator(), mu, "central")
    torch.testing.assert_close(central, gradient, rtol=0, atol=1e-9)  # exact for a quadratic
    subset, _, _ = estimators.cge(objective, theta, NO_BATCH, torch.Generator().manual_seed(3), mu, "forward",
                                  coordinates=4)
    assert int((subset != 0).sum()) == 4
    torch.testing.assert_close(subset[subset != 0], reference[subset != 0], rtol=0, atol=1e-10)


def test_batched_and_looped_evaluation_agree():
    from pathlib import Path

    from pinnzo.derivatives import Autodiff
    from pinnzo.nets import build_mlp
    from pinnzo.problem import load_problem
    from pinnzo.residual import PINNLoss, sample_batch

    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / "poisson2d.yaml")
    model = build_mlp([2, 8, 8, 1], "tt", "tanh", rank=2)
    objective = Objective(model, PINNLoss(problem, Autodiff()), queries_per_chunk=4)
    batch = sample_batch(problem, 32, 16, torch.Generator().manual_seed(0))
    theta = objective.flatten()
    thetas = theta + 0.1 * torch.randn(10, theta.numel(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(objective.losses(thetas, batch), objective.losses_looped(thetas, batch), rtol=1e-6,
                               atol=1e-6)
    assert objective.queries == 20


def _steps(optimizer, objective, theta, count, seed=lambda step: step):
    """``count`` updates; returns (theta, state, infos)."""
    state, infos = optimizer.init(theta), []
    for step in range(count):
        theta, state, info = optimizer.update(step, theta, state, objective, NO_BATCH,
                                              torch.Generator().manual_seed(seed(step)))
        infos.append(info)
    return theta, state, infos


@pytest.mark.parametrize("name", ["adam", "sgd", "zo-rge", "zo-signrge", "zo-cge", "hybrid", "zo-adam"])
def test_only_first_order_steps_save_tensors_for_back_propagation(name):
    """autograd saves tensors for a backward pass exactly when a step back-propagates:
    never in a zeroth-order step, always in a first-order one."""
    objective, theta, _ = quadratic_objective()
    optimizer = make_optimizer(name, directions=4, patience=1)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        theta, _, _ = _steps(optimizer, objective, theta, 3)
    assert (saved != []) == (name in ("adam", "sgd")), len(saved)
    assert not theta.requires_grad


def test_first_order_steps_do_back_propagate():
    objective, theta, gradient = quadratic_objective()
    optimizer = make_optimizer("sgd", lr=0.1, momentum=0.0)
    new, _, _ = _steps(optimizer, objective, theta, 1)
    torch.testing.assert_close(new, theta - 0.1 * gradient, rtol=0, atol=1e-14)
    assert objective.queries == 1


def test_signrge_moves_every_coordinate_by_lr():
    objective, theta, _ = quadratic_objective()
    optimizer = make_optimizer("zo-signrge", lr=0.01, directions=10, mu=1e-4)
    new, _, _ = _steps(optimizer, objective, theta, 1, seed=lambda step: 0)
    torch.testing.assert_close((new - theta).abs(), torch.full_like(theta, 0.01), rtol=0, atol=1e-15)
    assert objective.queries == 11


def test_hybrid_switches_to_cge_when_the_loss_stalls():
    objective, theta, _ = quadratic_objective()
    flat = Objective(objective.model, lambda network, batch: torch.tensor(1.0, dtype=torch.float64))
    optimizer = make_optimizer("hybrid", patience=5, directions=2)
    theta, state, infos = _steps(optimizer, flat, theta, 10)
    assert [info.stage for info in infos] == ["signrge"] * 6 + ["cge"] * 4
    assert [info.events for info in infos if info.events] == [
        ["hybrid: switched from signRGE to CGE at step 5 (smoothed loss 1.000e+00 did not improve for 5 steps)"]]
    assert state.switch_step == 5


def test_hybrid_switch_step_forces_the_switch():
    objective, theta, _ = quadratic_objective()
    optimizer = make_optimizer("hybrid", patience=10_000, switch_step=4, directions=2)
    theta, state, infos = _steps(optimizer, objective, theta, 6)
    assert [info.stage for info in infos] == ["signrge"] * 4 + ["cge"] * 2 and state.switch_step == 3


def test_learning_rate_schedule_and_registry():
    from pinnzo.optim.transforms import exponential_decay

    schedule = exponential_decay(0.1, 0.9, 10)
    assert schedule(9) == pytest.approx(0.1) and schedule(25) == pytest.approx(0.1 * 0.81)
    assert make_optimizer("zo-signrge", lr=0.1, lr_decay=0.9, decay_every=10).schedule(25) == pytest.approx(0.081)
    with pytest.raises(PinnzoError, match="unknown optimizer 'newton'; must be one of adam, sgd, lbfgs, adam-lbfgs, gn"):
        make_optimizer("newton")
    assert {"adam", "sgd", "lbfgs", "adam-lbfgs", "gn", "zo-rge", "zo-signrge", "zo-cge", "hybrid", "zo-adam",
            "zo-gn"} == set(OPTIMIZERS.names())
    # each registry name is served by the factory of the same name
    assert all(OPTIMIZERS[name].__name__ == name.replace("-", "_") for name in OPTIMIZERS.names())


@pytest.mark.parametrize("name", ["adam", "sgd", "zo-rge", "zo-signrge", "zo-cge", "hybrid", "zo-adam"])
def test_every_optimizer_decreases_a_quadratic(name):
    objective, theta, _ = quadratic_objective()
    optimizer = make_optimizer(name, lr=0.05 if "sign" in name or name == "hybrid" else 0.1, directions=20,
                               mu=1e-4, momentum=0.5, patience=1000, lr_decay=0.9, decay_every=20)
    start = objective.loss(theta, NO_BATCH).item()
    theta, _, _ = _steps(optimizer, objective, theta, 100)
    minimum = -0.5 * (torch.linspace(0, 1, D) ** 2 / torch.linspace(1, 3, D)).sum().item()
    end = objective.loss(theta, NO_BATCH).item()
    assert end - minimum < 0.2 * (start - minimum), (start, end, minimum)


@pytest.mark.parametrize("network, sizes, shapes, activation", [
    ("tt", [784, 1024, 10], [(7, 4, 4, 7), (8, 4, 4, 8), (1, 5, 2, 1)], "relu"),  # the paper's MNIST TT-MLP
    ("tt", [30, 20, 7], None, "relu"),  # padded factorisations (7 and 30 do not split evenly)
    ("tt", [6, 12, 12, 3], None, "tanh"),  # a perturbed layer two layers before the output
    ("mlp", [30, 20, 7], None, "gelu"),
])
def test_layered_coordinate_queries_equal_black_box_queries(network, sizes, shapes, activation):
    """CGE's fast path returns the losses of the perturbed networks themselves."""
    from pinnzo.mnist import cross_entropy
    from pinnzo.nets import build_mlp

    model = build_mlp(sizes, network, activation, 3, tt_output=True, shapes=shapes, dtype=torch.float64,
                      squeeze=False)
    objective = Objective(model, cross_entropy, 1)
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(9, sizes[0], generator=generator, dtype=torch.float64),
             torch.randint(0, sizes[-1], (9,), generator=generator))
    theta = objective.flatten() + 0.1 * torch.randn(objective.dim, generator=generator, dtype=torch.float64)
    chosen = torch.randperm(objective.dim, generator=generator)[:400]
    mu = 0.01
    steps = torch.zeros(len(chosen), objective.dim, dtype=torch.float64)
    steps[torch.arange(len(chosen)), chosen] = mu
    assert objective.layered
    before = objective.queries
    fast = objective.coordinate_losses(theta, batch, chosen, mu)
    assert objective.queries - before == len(chosen)
    black_box = objective.losses_looped(theta + steps, batch)
    assert torch.allclose(fast, black_box, rtol=0, atol=1e-13)
    base = objective.loss(theta, batch)
    assert ((black_box - base) / mu).abs().max() > 1e-3  # the coordinates do move the loss
    # and the CGE estimate through the fast path is the black-box one
    g_fast, _, queries = estimators.cge(objective, theta, batch, torch.Generator().manual_seed(0), mu, coordinates=50)
    objective.loss_fn = lambda network, batch: cross_entropy(network, batch)  # no layered form
    assert not objective.layered
    g_slow, _, _ = estimators.cge(objective, theta, batch, torch.Generator().manual_seed(0), mu, coordinates=50)
    assert queries == 51 and torch.allclose(g_fast, g_slow, rtol=0, atol=1e-10)
    assert (g_fast != 0).sum() > 40
