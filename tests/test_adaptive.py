"""Loss-only adaptivity: ReLoBRaLo and SoftAdapt term weights against their closed forms, RAD's
sampling probabilities, and runs with each setting that record the weights and resume bit-identically."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from scipy.stats import chi2

import helpers
from helpers import run_cli
from pinnzo.adaptive import (LP_FLOOR, Discrepancy, PointGrowth, TermBalancer, discrepancy_weights, lp_weights,
                             rad_choice, rad_probabilities, relobralo_weights, softadapt_weights)
from pinnzo.loop import Interrupted
from pinnzo.pinn import resolve_settings, solve
from pinnzo.problem import load_problem
from pinnzo.residual import sample_batch

E = math.e


def _tensor(*values):
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- term weights

def test_the_discrepancy_weights_match_their_closed_form():
    # terms: the residual (no noise), a data term fitted below its noise, one above it, one near the floor
    mean_squares, noise = _tensor(5.0, 0.25, 9.0, 1e-6), _tensor(0, 1, 1, 1)
    got = discrepancy_weights(mean_squares, noise, _tensor(1, 0.8, 0.5, 0.5), floor=0.01)
    assert torch.equal(got, _tensor(1, 0.8 * 0.25, 1.0, 0.01))  # 1 without noise; capped at 1; floored
    weights = Discrepancy(noise)
    assert torch.equal(weights.update(_tensor(3, 0.5, 0.5, 0.5)), _tensor(1, 0.5, 0.5, 0.5))  # from lambda = 1
    assert torch.equal(weights.update(_tensor(3, 0.5, 4.0, 1.0)), _tensor(1, 0.25, 1.0, 0.5))


@pytest.mark.parametrize("lookback", [True, False])
def test_relobralo_matches_its_closed_form(lookback):
    # L(t) = (2, 1), L(t-1) = (4, 1), L(0) = (8, 2), lambda(t-1) = (1.2, 0.8), alpha 0.9, tau 0.5:
    # bal(t, 0)   = 2 softmax((0.25, 0.5) / 0.5) = 2 (1, e^0.5) / (1 + e^0.5)
    # bal(t, t-1) = 2 softmax((0.5, 1) / 0.5)    = 2 (1, e) / (1 + e)
    to_first = _tensor(2 / (1 + E**0.5), 2 * E**0.5 / (1 + E**0.5))
    to_previous = _tensor(2 / (1 + E), 2 * E / (1 + E))
    history = _tensor(1.2, 0.8) if lookback else to_first
    expected = 0.9 * history + 0.1 * to_previous
    got = relobralo_weights(_tensor(2, 1), _tensor(4, 1), _tensor(8, 2), _tensor(1.2, 0.8), 0.9, 0.5, lookback)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)


def test_softadapt_matches_its_closed_form():
    # s = L(t) - L(t-1) = (2, -1), n = s / |s|_1 = (2/3, -1/3), beta 3: 2 softmax((2, -1)) = 2 (e^2, e^-1) / (e^2 + e^-1)
    got = softadapt_weights(_tensor(3, 1), _tensor(1, 2), 3.0)
    expected = 2 * _tensor(E**2, E**-1) / (E**2 + E**-1)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)


def test_the_balancer_follows_a_loss_history():
    """Three updates of ReLoBRaLo with rho = 1 (always look back) and rho = 0 (never), by hand."""
    history = [_tensor(8, 2), _tensor(4, 1), _tensor(2, 1)]
    tau, alpha = 0.5, 0.9
    bal = lambda now, then: 2 * torch.softmax(now / then / tau, 0)  # noqa: E731
    for rho in (1.0, 0.0):
        balancer = TermBalancer("relobralo", alpha=alpha, tau=tau, rho=rho)
        generator = torch.Generator().manual_seed(0)
        got = [balancer.update(losses, generator) for losses in history]
        one = torch.ones(2, dtype=torch.float64)
        second = alpha * (one if rho else bal(history[1], history[0])) + (1 - alpha) * bal(history[1], history[0])
        third = alpha * (second if rho else bal(history[2], history[0])) + (1 - alpha) * bal(history[2], history[1])
        for value, want in zip(got, [one, second, third]):
            torch.testing.assert_close(value, want, rtol=1e-14, atol=0)
    softadapt = TermBalancer("softadapt", beta=3.0)
    weights = [softadapt.update(losses, generator) for losses in (_tensor(1, 2), _tensor(3, 1))]
    torch.testing.assert_close(weights[1], softadapt_weights(_tensor(3, 1), _tensor(1, 2), 3.0), rtol=0, atol=0)
    assert torch.equal(weights[0], torch.ones(2, dtype=torch.float64))


# ---------------------------------------------------------------- RAD

def test_rad_probabilities_match_the_formula():
    # |r|^2 = (0, 1, 4, 9), mean 3.5; p ~ |r|^2 / 3.5 + 0.5
    expected = _tensor(0.5, 1 / 3.5 + 0.5, 4 / 3.5 + 0.5, 9 / 3.5 + 0.5)
    got = rad_probabilities(_tensor(0, 1, -2, 3), k=2.0, c=0.5)
    torch.testing.assert_close(got, expected / expected.sum(), rtol=1e-14, atol=0)
    assert torch.equal(rad_probabilities(torch.zeros(5), 1.0, 0.0), torch.full((5,), 0.2, dtype=torch.float64))


def test_rad_draws_have_the_rad_frequencies():
    """Chi-square goodness of fit of 40,000 draws from 8 candidates with known residuals (fixed
    seed): consistent with |r|^k / E|r|^k + c, and inconsistent with uniform draws or another k."""
    residuals = _tensor(0.0, 0.1, -0.5, 1.0, 2.0, -3.0, 0.2, 4.0)
    draws = 40_000
    chosen = rad_choice(residuals, draws, k=1.0, c=0.2, generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(chosen, minlength=len(residuals)).double()

    def statistic(probabilities):
        expected = draws * probabilities
        return float(((counts - expected) ** 2 / expected).sum())

    limit = chi2.ppf(0.999, df=len(residuals) - 1)
    assert statistic(rad_probabilities(residuals, 1.0, 0.2)) < limit
    assert statistic(torch.full((8,), 1 / 8, dtype=torch.float64)) > limit
    assert statistic(rad_probabilities(residuals, 2.0, 0.2)) > limit


# ---------------------------------------------------------------- runs

LINE = {**helpers.LINE, "name": "line", "conditions": {"ends": {"at": "boundary", "value": 0, "weight": 2.0}},
        "solve": {"network": "mlp", "width": 8, "activation": "tanh", "backend": "ad", "optimizer": "adam",
                  "lr": 0.01, "steps": 24, "batch": 16, "condition_batch": 4, "eval_every": 1, "eval_points": 50}}
# LINE's block is Adam's, so zo-gn takes its own network, points and evaluations unless they are given
ADAM_BLOCK_POINTS = {"width": 8, "batch": 16, "condition_batch": 4, "eval_every": 1}


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as file:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(file)]


def _interrupted_and_resumed(problem, settings, folder, at_step):
    def interrupt(step, state):
        if step == at_step:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        solve(problem, settings, out=folder, callbacks=[interrupt])
    return solve(problem, settings, out=folder, resume=True)


@pytest.mark.parametrize("changes, queries_per_step", [
    ({"loss_weights": "relobralo", "relobralo_alpha": 0.5, "relobralo_rho": 0.5}, 2),  # the step + the terms
    ({"loss_weights": "softadapt", "softadapt_beta": 5.0}, 2),
    ({"resample": "rad", "rad_pool": 4}, 5),  # the step + the pool of 4 x 16 points in 4 chunks
    ({"residual_power": 1.0, "residual_power_warmup": 0}, 2),  # the step + the interior residuals for the weights
    # zo-gn: the weights in use (from step 4) are in the checkpoint
    ({"residual_power": 1.0, "optimizer": "zo-gn", "backend": "fd", "dtype": "float64", "resample_every": 4,
      "residual_power_warmup": 1, "grow_points": 0.0, **ADAM_BLOCK_POINTS}, None),
    ({"resample": "rad", "loss_weights": "relobralo", "relobralo_alpha": 0.5, "optimizer": "zo-signrge",
      "directions": 4, "resample_every": 3}, None),
])
def test_an_adaptive_run_records_its_weights_and_resumes_bit_identically(tmp_path, changes, queries_per_step):
    problem = load_problem(LINE)
    settings = resolve_settings(problem, changes)
    straight = solve(problem, settings, out=tmp_path / "straight")
    resumed = _interrupted_and_resumed(problem, settings, tmp_path / "broken", at_step=10)
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "broken")
    assert torch.equal(straight.theta, resumed.theta)
    rows = _rows(tmp_path / "straight")
    if queries_per_step is not None:
        assert [int(row["queries"]) for row in rows] == [queries_per_step * (step + 1) for step in range(24)]
    if "loss_weights" not in changes:
        assert "weight_residual" not in rows[0]
        return
    weights = [(float(row["weight_residual"]), float(row["weight_ends"])) for row in rows]
    # lambda = 1 at the first update: the configured weights, the file's 2 times (2 pi)^2 for d(u, x, x) on [0, 1]
    assert weights[0] == pytest.approx((1.0, 2.0 * (2 * math.pi) ** 2), rel=1e-12)
    assert len(set(weights)) > 1  # and they adapt
    period = settings.resample_every or 1
    for step in range(1, 24):  # they change only when the points are resampled
        if step % period:
            assert weights[step] == weights[step - 1]


def test_zo_gn_keeps_its_weights_between_resamples(tmp_path):
    """With a fixed-points method the weights change only every resample_every steps."""
    problem = load_problem(LINE)
    settings = resolve_settings(problem, {"optimizer": "zo-gn", "backend": "fd", "dtype": "float64",
                                          "loss_weights": "relobralo", "relobralo_alpha": 0.5, "relobralo_rho": 0.0,
                                          "resample_every": 5, "steps": 16, "grow_points": 0.0,
                                          **ADAM_BLOCK_POINTS})
    solve(problem, settings, out=tmp_path / "run")
    weights = [float(row["weight_residual"]) for row in _rows(tmp_path / "run")]
    assert len(weights) == 16
    changed = [step for step in range(1, 16) if weights[step] != weights[step - 1]]
    assert changed and set(changed) <= {5, 10, 15}


def test_rad_takes_interior_points_where_the_residual_is_large(tmp_path):
    """After training, the RAD batch concentrates where |r| is large: its mean |r| exceeds that of
    uniform points (measured on the run's own network)."""
    from pinnzo.pinn import PINNTask, build

    problem = load_problem(LINE)
    settings = resolve_settings(problem, {"resample": "rad", "rad_pool": 20, "rad_k": 2.0, "rad_c": 0.0,
                                          "batch": 64})
    components = build(problem, settings)
    task = PINNTask(components)
    theta = components.objective.flatten()
    generators = {name: torch.Generator().manual_seed(i) for i, name in enumerate(task.generator_names)}
    batch = task.sample(0, generators, theta)
    network = components.objective.network(theta)
    with torch.no_grad():
        chosen = components.loss.interior_residual(network, batch.interior).abs().mean()
        uniform_points = problem.sample_interior(2000, torch.Generator().manual_seed(9))
        uniform = components.loss.interior_residual(network, uniform_points).abs().mean()
    assert chosen > 1.3 * uniform


@pytest.mark.parametrize("args, needle", [
    (["--set", "loss_weights=magic"], "--set loss_weights: unknown value 'magic'; must be one of fixed, relobralo"),
    (["--set", "resample=smart"], "--set resample: unknown value 'smart'; must be one of uniform, rad"),
    (["--set", "relobralo_alpha=1.5"], "--set relobralo_alpha: expected a number in [0, 1]; found 1.5"),
    (["--set", "relobralo_tau=0"], "--set relobralo_tau: expected a positive finite number; found 0.0"),
    (["--set", "rad_pool=0"], "--set rad_pool: expected an integer >= 1; found 0"),
    (["--set", "residual_power=3"], "--set residual_power: expected a number in [1, 2]; found 3.0"),
    (["--set", "residual_power=0.5"], "--set residual_power: expected a number in [1, 2]; found 0.5"),
])
def test_bad_adaptivity_settings_give_one_line(tmp_path, args, needle):
    import yaml

    problem = tmp_path / "line.yaml"
    problem.write_text(yaml.safe_dump(LINE))
    result = run_cli(["solve", str(problem), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnzo: error:") and needle in lines[0], result.output


def test_a_crashed_adaptive_run_resumes_bit_identically(tmp_path):
    """Like kill -9: no checkpoint at the crash, so the resumed run redoes steps, RAD draws and
    weight updates from the last checkpoint (every 4 steps) and must land on the same numbers."""
    problem = load_problem(LINE)
    settings = resolve_settings(problem, {"resample": "rad", "loss_weights": "relobralo", "relobralo_alpha": 0.5,
                                          "relobralo_rho": 0.5, "resample_every": 3, "eval_every": 4})
    straight = solve(problem, settings, out=tmp_path / "straight")

    def crash(step, state):
        if step == 13:
            raise SystemExit(137)
    with pytest.raises(SystemExit):
        solve(problem, settings, out=tmp_path / "broken", callbacks=[crash])
    resumed = solve(problem, settings, out=tmp_path / "broken", resume=True)
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "broken")
    assert torch.equal(straight.theta, resumed.theta)


# ---------------------------------------------------------------- the residual's L_p norm

def test_lp_weights_match_their_closed_form():
    r = _tensor(1.0, -2.0, 4.0, 0.0)
    rms = math.sqrt(21 / 4)
    sizes = _tensor(1.0, 2.0, 4.0, LP_FLOOR * rms)  # the zero residual weighs as the floor
    expected = 1 / sizes
    assert torch.allclose(lp_weights(r, 1.0), expected / expected.mean(), rtol=1e-15)
    expected = sizes ** -0.5
    assert torch.allclose(lp_weights(r, 1.5), expected / expected.mean(), rtol=1e-15)
    assert torch.equal(lp_weights(r, 2.0), torch.ones(4, dtype=torch.float64))
    assert torch.equal(lp_weights(torch.zeros(3), 1.0), torch.ones(3, dtype=torch.float64))


def test_the_weighted_mean_square_has_the_gradient_of_the_lp_term():
    """d mean(w r^2) = 2 / (p mean |r|^(p-2)) d mean |r|^p at the residuals the weights were taken at."""
    A = torch.randn(30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta = torch.randn(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    for p in (1.0, 1.5):
        r = A @ theta - b
        weights = lp_weights(r, p)
        (weighted,) = torch.autograd.grad((weights * r.square()).mean(), theta, retain_graph=True)
        (lp,) = torch.autograd.grad(r.abs().pow(p).mean(), theta)
        scale = 2 / (p * r.detach().abs().pow(p - 2).mean())
        assert torch.allclose(weighted, scale * lp, rtol=1e-12)


def test_reweighted_least_squares_with_lp_weights_finds_the_median():
    """The L1 fit of a constant to data is their median (the least-squares fit, their mean, is pulled
    by the outlier): weighted least squares with the weights taken at each fit converges to it."""
    data = _tensor(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 100.0)
    c = data.mean()
    for _ in range(200):
        weights = lp_weights(c - data, 1.0)
        c = (weights * data).sum() / weights.sum()  # the undamped Gauss-Newton step of mean(w (c - x)^2)
    assert abs(c - 3.0) < 1e-3 * LP_FLOOR * 100


def test_a_batch_with_point_weights_weighs_its_interior_residuals():
    """The PINN task's fresh batch carries the lp_weights of its interior residuals at theta; the loss
    is mean(w r^2) over the interior plus the conditions' terms, and so is the residual vector's
    squared norm, whole and summed over shards."""
    task, generators, theta = _task({"residual_power": 1.0, "residual_power_warmup": 0, "batch": 24,
                                     "dtype": "float64"})
    batch = task.sample(0, generators, theta)
    loss, network = task.components.loss, task.objective.network(theta)
    residuals = loss.residuals(network, batch)
    assert torch.equal(batch.point_weights, lp_weights(residuals["residual"], 1.0))
    interior = (batch.point_weights * residuals["residual"].square()).mean()
    assert loss.condition_weights == pytest.approx((2.0 * (2 * math.pi) ** 2,), rel=1e-15)  # d(u, x, x) on [0, 1]
    expected = interior + loss.condition_weights[0] * residuals["ends"].square().mean()
    assert torch.allclose(loss(network, batch), expected, rtol=1e-13)
    assert torch.allclose(loss.residual_vector(network, batch).square().sum(), expected, rtol=1e-13)

    class Half:
        def __init__(self, rank):
            self.rank = rank

        def shard(self, count):
            return slice(0, count // 2) if self.rank == 0 else slice(count // 2, count)
    shards = [batch.shard(Half(rank)) for rank in (0, 1)]
    assert sum(len(shard.point_weights) for shard in shards) == 24
    summed = sum(loss.residual_vector(network, shard).square().sum() for shard in shards)
    assert torch.allclose(summed, expected, rtol=1e-13)


def test_the_lp_weights_start_after_the_warmup_point_sets():
    """With residual_power_warmup 2 and resample_every 3, the point sets of steps 0 and 3 are fitted in
    the plain mean square (no weights, no query for them); the set of step 6 is the first reweighted."""
    task, generators, theta = _task({"residual_power": 1.0, "residual_power_warmup": 2, "resample_every": 3,
                                     "batch": 24, "dtype": "float64"})
    assert "least squares reweighted from step 6" in task.describe()
    for step in (0, 3):
        queries = task.objective.queries
        assert task.sample(step, generators, theta).point_weights is None
        assert task.objective.queries == queries
    batch = task.sample(6, generators, theta)
    assert task.objective.queries == queries + 1
    residual = task.components.loss.interior_residual(task.objective.network(theta), batch.interior)
    assert torch.equal(batch.point_weights, lp_weights(residual, 1.0))


# ---------------------------------------------------------------- growing point sets

def test_point_growth_needs_a_gap_and_a_stall():
    """Growth when the fresh loss exceeds ratio x the fitted one and fell by less than half since the
    last resample; never at the first resample; never beyond the limit; the state round-trips."""
    growth = PointGrowth(ratio=4.0, limit=4)
    assert growth.can_grow() and not growth.overfitted(1.0, 100.0)  # the first resample: no stall known
    assert not growth.overfitted(1.0, 40.0)  # gap 40, but the fresh loss fell from 100 to 40: progress
    assert growth.overfitted(1.0, 30.0)  # gap 30 and 30 > 40 / 2: stalled
    assert not growth.overfitted(10.0, 30.0)  # stalled, but a gap of 3 is what a fit of the points costs
    growth.factor = 2
    assert growth.can_grow()
    growth.factor = 4
    assert not growth.can_grow()
    copy = PointGrowth(ratio=4.0, limit=4)
    copy.load_state_dict(growth.state_dict())
    assert (copy.factor, copy.limit, copy.last_fresh) == (4, 4, 30.0)
    assert not PointGrowth(ratio=0.0, limit=16).can_grow()


def test_joined_batches_keep_every_point_and_normal():
    problem = load_problem(POISSON_SQUARE)
    a = sample_batch(problem, 5, 3, torch.Generator().manual_seed(0))
    b = sample_batch(problem, 7, 2, torch.Generator().manual_seed(1))
    joined = a.join(b)
    assert joined.sizes == (12, 5)
    assert torch.equal(joined.interior, torch.cat([a.interior, b.interior]))
    (X, n), = joined.conditions
    assert torch.equal(X, torch.cat([a.conditions[0][0], b.conditions[0][0]]))
    assert torch.equal(n, torch.cat([a.conditions[0][1], b.conditions[0][1]]))


POISSON_SQUARE = {
    "name": "square",
    "variables": {"space": {"name": "x", "dim": 2, "domain": [0, 1]}},
    "equation": "lap(u) = -2 * pi**2 * sin(pi * x1) * sin(pi * x2)",
    "exact": "sin(pi * x1) * sin(pi * x2)",
    "conditions": {"walls": {"at": "boundary", "type": "neumann", "value": "0"}},
}


def _task(changes):
    from pinnzo.pinn import PINNTask, build

    problem = load_problem(LINE)
    components = build(problem, resolve_settings(problem, changes))
    task = PINNTask(components)
    generators = {name: torch.Generator().manual_seed(i) for i, name in enumerate(task.generator_names)}
    return task, generators, components.objective.flatten()


def test_a_stalled_overfitted_fit_doubles_the_points():
    """With theta unchanged the fitted and fresh losses agree, so ratio 0.5 calls every stall a gap:
    the first resample only records the fresh loss, the second doubles both kinds of points, for
    good, and the limit stops the growth; each check costs two loss queries."""
    task, generators, theta = _task({"optimizer": "zo-gn", "backend": "fd", "dtype": "float64", "batch": 16,
                                     "condition_batch": 4, "resample_every": 2, "grow_points": 0.5,
                                     "max_growth": 2})
    assert task.sample(0, generators, theta).sizes == (16, 4)
    queries = task.objective.queries
    assert task.sample(2, generators, theta).sizes == (16, 4) and task.take_events() == []
    assert task.objective.queries == queries + 2
    assert task.sample(3, generators, theta).sizes == (16, 4)  # no resample: the same points
    assert task.sample(4, generators, theta).sizes == (32, 8)
    (event,) = task.take_events()
    assert event.startswith("points: 32 interior and 8 per condition from now on")
    queries = task.objective.queries
    assert task.sample(6, generators, theta).sizes == (32, 8)  # the limit: no more checks
    assert task.objective.queries == queries and task.take_events() == []


def test_points_do_not_grow_beyond_the_jacobians_memory():
    """A Gauss-Newton Jacobian that would not fit in memory_mb stops the growth with one event."""
    task, generators, theta = _task({"optimizer": "zo-gn", "backend": "fd", "dtype": "float64", "batch": 400,
                                     "condition_batch": 100, "resample_every": 1, "grow_points": 0.5,
                                     "memory_mb": 1})
    for step in range(3):
        task.sample(step, generators, theta)
    assert task.batch.sizes == (400, 100) and task.growth.limit == 1
    (event,) = task.take_events()
    assert event.startswith("points: kept at 400 interior points") and "memory_mb = 1" in event


def test_a_growing_run_resumes_bit_identically(tmp_path):
    """zo-gn on too few points for its 97 parameters grows them, and an interrupted run ends with the
    numbers of an uninterrupted one (the factor and the last fresh loss are in the checkpoint)."""
    problem = load_problem(LINE)
    settings = resolve_settings(problem, {"optimizer": "zo-gn", "backend": "fd", "dtype": "float64",
                                          "resample_every": 3, "grow_points": 1.5, "max_growth": 8,
                                          **ADAM_BLOCK_POINTS})
    straight = solve(problem, settings, out=tmp_path / "straight")
    grown = [row for row in straight.summary["events"] if row["event"].startswith("points:")]
    assert grown and grown[0]["step"] <= 15 < grown[-1]["step"], straight.summary["events"]  # before and after
    resumed = _interrupted_and_resumed(problem, settings, tmp_path / "broken", at_step=15)
    assert _rows(tmp_path / "straight") == _rows(tmp_path / "broken")
    assert torch.equal(straight.theta, resumed.theta)
    assert resumed.summary["events"] == straight.summary["events"]
