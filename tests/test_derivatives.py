"""Derivative backends against closed forms, against autodiff, and against the paper's formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import SineNet
from pinnzo.atoms import GRADIENT_SQUARED, LAPLACIAN, VALUE, Atom, d1, d2, partial
from pinnzo.derivatives import (BACKENDS, Autodiff, FiniteDifference, MonteCarloStein, SparseGridStein,
                                make_backend)
from pinnzo.derivatives.reference import paper_sparse_grid
from pinnzo.domains import Box
from pinnzo.errors import PinnzoError
from pinnzo.problem import load_problem
from pinnzo.quadrature import get_rule
from pinnzo.residual import PINNLoss, sample_batch
from pinnzo.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DIM = 21
SPATIAL = tuple(range(20))
ALL_ATOMS = {VALUE, d1(0), d1(20), d2(3, 3), d2(20, 20), d2(1, 4), LAPLACIAN, GRADIENT_SQUARED}


def reference(f, X, atoms=ALL_ATOMS):
    return Autodiff()(f, X, atoms, SPATIAL)


def test_unknown_backend_has_one_clear_error():
    with pytest.raises(PinnzoError, match="unknown backend 'bp'; must be one of ad, fd, stein, sparse-grid"):
        make_backend(Settings(backend="bp"), 3)
    assert BACKENDS.names() == ["ad", "fd", "stein", "sparse-grid"]


def test_autodiff_matches_the_closed_form_derivatives_of_a_sine_network():
    net = SineNet(DIM)
    X = torch.rand(7, DIM, dtype=torch.float64)
    out = reference(net, X)
    phase = X @ net.W.T + net.b
    gradient = (torch.cos(phase) * net.a) @ net.W  # (B, D)
    hessian = -torch.einsum("bk,k,ki,kj->bij", torch.sin(phase), net.a, net.W, net.W)
    torch.testing.assert_close(out[d1(0)], gradient[:, 0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(out[d2(1, 4)], hessian[:, 1, 4], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(out[d2(20, 20)], hessian[:, 20, 20], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(out[LAPLACIAN], hessian.diagonal(dim1=1, dim2=2)[:, :20].sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[GRADIENT_SQUARED], (gradient[:, :20] ** 2).sum(1), rtol=1e-12, atol=1e-14)


# ---- sparse grid: exact on polynomials ---------------------------------------

def _random_cubic(dim: int, seed: int):
    """A random polynomial of total degree 3 in ``dim`` variables and its smoothing.

    For degree <= 3, E f(x + delta) = f(x) + sigma^2/2 lap_full f(x) exactly.
    """
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, generator=g, dtype=torch.float64)
    B = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    triples = torch.randint(0, dim, (40, 3), generator=g)
    c = torch.randn(40, generator=g, dtype=torch.float64)

    def f(X):
        cubic = (X[:, triples[:, 0]] * X[:, triples[:, 1]] * X[:, triples[:, 2]]) @ c
        return 0.7 + X @ a + ((X @ B) * X).sum(1) + cubic
    return f


@pytest.mark.parametrize("family", ["gauss-hermite", "genz-keister", "lu-darmofal"])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_grid_is_exact_on_cubic_polynomials(family, seed):
    sigma = 0.1
    f = _random_cubic(DIM, seed)
    X = torch.rand(5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    full = tuple(range(DIM))

    def smoothed(Z):
        lap_full = Autodiff()(f, Z, {LAPLACIAN}, full)[LAPLACIAN]
        return f(Z) + 0.5 * sigma**2 * lap_full

    hessian_diagonal = {d2(i, i) for i in range(DIM)}
    atoms = ALL_ATOMS | hessian_diagonal | {d1(i) for i in range(DIM)}
    expected = reference(smoothed, X, atoms)
    got = SparseGridStein(DIM, sigma, family, 3)(f, X, atoms, SPATIAL)
    for atom in atoms:
        torch.testing.assert_close(got[atom], expected[atom], rtol=1e-10, atol=1e-10, msg=str(atom))


def test_once_per_node_estimator_equals_the_papers_form():
    net, sigma = SineNet(DIM, seed=3), 0.1
    X = torch.rand(6, DIM, dtype=torch.float64)
    rule = get_rule("gauss-hermite", DIM, 3)
    gradient, laplacian = paper_sparse_grid(net, X, rule, sigma, SPATIAL)
    atoms = {d1(i) for i in range(DIM)} | {LAPLACIAN}
    got = SparseGridStein(DIM, sigma)(net, X, atoms, SPATIAL)
    for i in range(DIM):
        torch.testing.assert_close(got[d1(i)], gradient[:, i], rtol=0, atol=1e-12)
    # The Laplacian weights sum |w_j (|z_j|^2 - d)| / (2 sigma^2) ~ 1e6 multiply the rounding
    # of every f value, in both forms alike: they can agree only to that floor (~1e-10 here).
    z2 = (rule.nodes[:, :20] ** 2).sum(1)
    floor = 4 * np.finfo(np.float64).eps * np.abs(rule.weights * (z2 - 20)).sum() / (2 * sigma**2) \
        * net(X).abs().max().item()
    assert floor < 1e-9
    torch.testing.assert_close(got[LAPLACIAN], laplacian, rtol=0, atol=floor)


def test_sparse_grid_evaluates_the_network_once_per_node():
    calls = []
    net = SineNet(DIM)

    def counting(Z):
        calls.append(len(Z))
        return net(Z)
    backend = SparseGridStein(DIM, 0.1)
    backend(counting, torch.rand(100, DIM, dtype=torch.float64), {LAPLACIAN, d1(20), GRADIENT_SQUARED}, SPATIAL)
    assert sum(calls) == 100 * 925
    assert backend.evaluations_per_point(ALL_ATOMS, SPATIAL, DIM) == 925


def test_memory_chunking_gives_the_same_numbers():
    net = SineNet(DIM)
    X = torch.rand(10, DIM, dtype=torch.float64)
    whole = SparseGridStein(DIM, 0.1)(net, X, ALL_ATOMS, SPATIAL)
    chunked = SparseGridStein(DIM, 0.1, rows_per_chunk=777)(net, X, ALL_ATOMS, SPATIAL)
    for atom in ALL_ATOMS:
        torch.testing.assert_close(chunked[atom], whole[atom], rtol=0, atol=1e-13)


def test_pair_differences_save_float32_from_cancellation():
    """docs/method.md: weighting raw values of the HJB exact solution in float32 gives a
    residual^2 near 74; the pair differences give a small one."""
    problem = load_problem(REPO / "problems" / "hjb20.yaml")
    X = problem.sample_interior(100, torch.Generator().manual_seed(0), torch.float32)
    backend = SparseGridStein(DIM, 0.1)
    atoms = backend(problem.exact_solution, X, problem.atoms, problem.spatial)
    paired = problem.residual_from_atoms(X, atoms).square().mean().item()
    # the same rule with the raw values weighted directly
    z = torch.tensor(backend.rule.nodes, dtype=torch.float32)
    w = torch.tensor(backend.rule.weights, dtype=torch.float32)
    F = problem.exact_solution((X[:, None, :] + 0.1 * z[None]).reshape(-1, DIM)).reshape(100, -1)
    s = 0.1
    raw = {Atom("d1", (20,)): F @ (w * z[:, 20] / s),
           LAPLACIAN: F @ (w * ((z[:, :20] ** 2).sum(1) - 20) / (s * s)),
           GRADIENT_SQUARED: sum((F @ (w * z[:, i] / s)) ** 2 for i in range(20))}
    naive = problem.residual_from_atoms(X, raw).square().mean().item()
    assert paired < 0.5
    assert naive > 20 * paired and naive > 5.0


# ---- agreement with (smoothed) autodiff on a random network -------------------

def test_sparse_grid_matches_the_smoothed_model_at_the_rules_order():
    """Against the closed-form smoothed network. The degree-5 rule integrates the
    Stein integrands exactly up to their degree-5 Taylor terms, so the first term
    it misses is O(sigma^4) for the value and first derivatives (integrand degree
    deg f + 1, odd part) and O(sigma^2) for second derivatives (integrand degree
    deg f + 2): halving sigma divides the errors by ~16 and ~4."""
    net = SineNet(DIM, seed=5)
    X = torch.rand(8, DIM, dtype=torch.float64)
    first_order = {VALUE, d1(0), d1(20)}
    second_order = {d2(3, 3), d2(20, 20), d2(1, 4), LAPLACIAN}
    amplitude = net.a.abs().sum().item()  # |w_k| < 2 for these weights: derivative k <= amplitude 2^k
    assert net.W.norm(dim=1).max() < 2
    errors = {"first": [], "second": []}
    for sigma in (0.2, 0.1):
        expected = reference(net.smoothed(sigma), X, first_order | second_order)
        got = SparseGridStein(DIM, sigma)(net, X, first_order | second_order, SPATIAL)
        first = max((got[a] - expected[a]).abs().max().item() for a in first_order)
        second = max((got[a] - expected[a]).abs().max().item() for a in second_order)
        # missed Taylor terms: sigma^4 |f^(5)| 15/5! and sigma^2 |f^(4)| 15/4! per coordinate pair, over D^2 pairs
        assert first < sigma**4 * amplitude * 2**5 * 15 / 120 * DIM, (sigma, first)
        assert second < sigma**2 * amplitude * 2**4 * 15 / 24 * DIM, (sigma, second)
        errors["first"].append(first)
        errors["second"].append(second)
    assert 10 < errors["first"][0] / errors["first"][1] < 24
    assert 3 < errors["second"][0] / errors["second"][1] < 5


def test_finite_differences_match_autodiff_with_error_of_order_h2():
    net = SineNet(DIM, seed=6)
    X = torch.rand(8, DIM, dtype=torch.float64)
    expected = reference(net, X)
    errors = []
    for h in (0.02, 0.01):
        got = FiniteDifference(h, h)(net, X, ALL_ATOMS, SPATIAL)
        worst = max((got[a] - expected[a]).abs().max().item() for a in ALL_ATOMS)
        # truncation h^2/6 |f'''| (first) and h^2/12 |f''''| (second), summed over the 20 Laplacian terms
        assert worst < h**2 * net.a.abs().sum().item() * 2**4 * DIM / 6, (h, worst)
        errors.append(worst)
    assert 3.0 < errors[0] / errors[1] < 5.0  # O(h^2)
    automatic = FiniteDifference()(net, X, ALL_ATOMS, SPATIAL)  # float64 default steps h1 1e-5, h2 1e-4
    h1, h2 = FiniteDifference().steps(torch.float64)
    scale = net(X).abs().max().item() + net.a.abs().sum().item()
    eps = torch.finfo(torch.float64).eps
    # rounding: 4 eps |f| / h2^2 per second difference, 20 of them in the Laplacian; truncation as above
    bound = 20 * 4 * eps * scale / h2**2 + h2**2 * net.a.abs().sum().item() * 2**4 * DIM / 6
    worst = max((automatic[a] - expected[a]).abs().max().item() for a in ALL_ATOMS)
    assert worst < bound < 1e-4, (worst, bound)



def test_finite_differences_share_points_between_first_and_second_differences_on_one_axis():
    """lap + gradsq on the 20 space axes and u_t: centre, +-h2 on each space axis (shared by its first
    and second differences), +-h1 on t: 43 points, not 83; the first derivatives keep their accuracy."""
    backend, atoms = FiniteDifference(), frozenset({LAPLACIAN, GRADIENT_SQUARED, d1(20)})
    h1, h2 = backend.steps(torch.float64)
    table = backend.offsets(atoms, SPATIAL, DIM, torch.float64, torch.device("cpu"))
    assert table.shape == (1 + 2 * 20 + 2, DIM)
    moves = {tuple(row.tolist()) for row in table}
    for axis in SPATIAL:
        for step in (h2, -h2):
            assert tuple(step if i == axis else 0.0 for i in range(DIM)) in moves
    assert tuple(h1 if i == 20 else 0.0 for i in range(DIM)) in moves
    net = SineNet(DIM, seed=6)
    X = torch.rand(8, DIM, dtype=torch.float64)
    got, expected = backend(net, X, atoms, SPATIAL), reference(net, X, atoms)
    scale = net(X).abs().max().item() + net.a.abs().sum().item()
    eps = torch.finfo(torch.float64).eps
    # gradsq: 20 squared first differences at h2 (truncation h2^2/6 |f'''|, rounding eps |f| / h2)
    first = h2**2 * net.a.abs().sum().item() * 2**3 / 6 + eps * scale / h2
    gradient_bound = 2 * 20 * first * (expected[GRADIENT_SQUARED].abs().max().item() ** 0.5 + first)
    assert (got[GRADIENT_SQUARED] - expected[GRADIENT_SQUARED]).abs().max().item() < gradient_bound < 1e-5
    assert (got[d1(20)] - expected[d1(20)]).abs().max().item() < 1e-8  # u_t at h1 = 1e-5

def test_finite_differences_of_an_affine_ansatz_difference_b_n_and_take_the_offsets_derivatives_exactly():
    """hjb20: u = sum(x) + (1 - t) N, |u| ~ 10. The loss differences b N = (1 - t) N (|b N| <= 1.3 here)
    and adds the exact derivatives of sum(x), so its residual rounds relative to |b N|, not to |u|; on
    the layered path (the network's values at the stencil points) too. Differencing u itself rounds
    about 10x more."""
    problem = load_problem(REPO / "problems" / "hjb20.yaml")
    frequencies = torch.linspace(0.1, 1.0, 21, dtype=torch.float64)
    network = lambda X: 1.0 + 0.3 * torch.sin(X @ frequencies)  # noqa: E731
    batch = sample_batch(problem, 2000, 0, torch.Generator().manual_seed(0), torch.float64)
    X, backend = batch.interior, FiniteDifference()
    exact = problem.residual_from_atoms(X, Autodiff()(problem.solution(network), X, problem.atoms, SPATIAL))
    whole = problem.residual_from_atoms(X, backend(problem.solution(network), X, problem.atoms, SPATIAL))
    loss = PINNLoss(problem, backend)
    assert loss.splits_ansatz
    split = loss.residuals(network, batch)["residual"]
    layered = loss.residual_criterion(network(loss.inputs(batch)), batch)
    rms = lambda r: (r - exact).square().mean().sqrt().item()  # noqa: E731
    h2, eps = backend.steps(torch.float64)[1], torch.finfo(torch.float64).eps
    # 20 second differences, each rounding about 4 eps |f| / h2^2 (random signs: sqrt(20) of them)
    assert rms(split) < 20**0.5 * 4 * eps * 1.3 / h2**2 < rms(whole) / 5
    torch.testing.assert_close(layered, split * len(X) ** -0.5, rtol=0, atol=1e-12)
    assert not PINNLoss(problem, SparseGridStein(DIM, 0.1)).splits_ansatz  # a smoothing: of sum(x) too

def test_monte_carlo_stein_error_shrinks_like_one_over_sqrt_n():
    net = SineNet(DIM, seed=7)
    X = torch.rand(16, DIM, dtype=torch.float64)
    sigma = 0.1
    expected = reference(net.smoothed(sigma), X, {d1(0), LAPLACIAN})
    rms = {}
    for samples in (256, 4096):
        squared = []
        for seed in range(6):
            got = MonteCarloStein(DIM, sigma, samples, seed)(net, X, {d1(0), LAPLACIAN}, SPATIAL)
            squared.append(((got[LAPLACIAN] - expected[LAPLACIAN]) ** 2).mean().item())
        rms[samples] = np.sqrt(np.mean(squared))
    ratio = rms[256] / rms[4096]
    assert 2.5 < ratio < 6.5, ratio  # sqrt(4096 / 256) = 4
    # absolute level: one antithetic pair estimates the Laplacian with standard deviation
    # sqrt(2 D) / (2 sigma^2) * sigma^2 |f''| ~ sqrt(D / 2) * amplitude; N pairs divide it by sqrt(N)
    bound = 3 * np.sqrt(DIM / 2) * net.a.abs().sum().item() / np.sqrt(4096)
    assert rms[4096] < bound, (rms[4096], bound)


# ---- the shipped problems ---------------------------------------------------

SHIPPED = sorted((REPO / "problems").glob("*.yaml"))


def _inner_points(problem, n, margin, dtype=torch.float64):
    """Points at least ``margin`` inside the domain, so every stencil stays in it."""
    if not isinstance(problem.domain, Box):  # keep the points at least margin from the boundary (and the ends of time)
        X = problem.sample_interior(50 * n, torch.Generator().manual_seed(0), dtype)
        keep = problem.domain.sdf(X[:, list(problem.spatial)]) <= -margin
        if problem.time_index is not None:
            t, t0, t1 = X[:, problem.time_index], problem.lows[-1], problem.highs[-1]
            keep &= (t >= t0 + margin) & (t <= t1 - margin)
        assert keep.sum() >= n
        return X[keep][:n]
    X = problem.sample_interior(n, torch.Generator().manual_seed(0), dtype)
    lows, highs = torch.tensor(problem.lows, dtype=dtype), torch.tensor(problem.highs, dtype=dtype)
    return lows + margin + (X - lows) / (highs - lows) * (highs - lows - 2 * margin)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_exact_solution_residual_per_backend(path):
    problem = load_problem(path)
    X = _inner_points(problem, 64, margin=0.2)
    residual = {}
    for name in ("ad", "fd", "sparse-grid"):
        backend = make_backend(Settings(backend=name), problem.dim)
        atoms = backend(problem.exact_solution, X, problem.atoms, problem.spatial)
        residual[name] = problem.residual_from_atoms(X, atoms, problem.exact_unknowns).abs().max().item()
    assert residual["ad"] < 1e-8

    def max_residual(backend):
        atoms = backend(problem.exact_solution, X, problem.atoms, problem.spatial)
        return problem.residual_from_atoms(X, atoms, problem.exact_unknowns).abs().max().item()

    if residual["fd"] >= 1e-4:  # default float64 steps 1e-5 / 1e-4; a thin layer (layer2d) exceeds
        h1, h2 = FiniteDifference().steps(torch.float64)  # that, but only by the O(h^2) truncation
        halved = max_residual(FiniteDifference(step=h1 / 2, step2=h2 / 2))
        assert 3.0 < residual["fd"] / halved < 5.0, (residual["fd"], halved)
    exact = problem.exact
    inputs = [s for s in exact.free_symbols]
    if exact.is_polynomial(*inputs) and max(exact.as_poly(*inputs).degree_list()) <= 3:
        assert residual["sparse-grid"] < 1e-8  # the smoothed exact solution is the exact solution
    else:  # the Stein residual is the smoothing bias: O(sigma^2) once sigma is below the solution's
        # finest scale (0.1 is for the smooth problems; the fronts of allen-cahn1d and layer2d are
        # 0.05 and 0.02 wide): halve sigma until the bias quarters, and it must shrink on the way
        sigma, value = 0.1, residual["sparse-grid"]
        for _ in range(4):
            half = max_residual(SparseGridStein(problem.dim, sigma / 2))
            if 2.5 < value / half < 6.0:
                break
            assert half < value, (sigma, value, half)
            sigma, value = sigma / 2, half
        else:
            raise AssertionError(f"no O(sigma^2) smoothing bias down to sigma = {sigma}")


def test_monte_carlo_stein_residual_of_hjb20_shrinks_with_samples():
    problem = load_problem(REPO / "problems" / "hjb20.yaml")
    X = _inner_points(problem, 32, margin=0.0)
    rms = []
    for samples in (128, 2048):
        squares = []
        for seed in range(6):
            backend = MonteCarloStein(problem.dim, 0.1, samples, seed=seed)
            atoms = backend(problem.exact_solution, X, problem.atoms, problem.spatial)
            squares.append(problem.residual_from_atoms(X, atoms).square().mean().item())
        rms.append(np.sqrt(np.mean(squares)))
    # the residual is linear in the gradient error at leading order: sqrt(2048 / 128) = 4
    assert 2.5 < rms[0] / rms[1] < 6.5, rms


# ---- both training paths ----------------------------------------------------

class TinyNet(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.hidden = torch.nn.Linear(dim, 6, dtype=torch.float64)
        self.out = torch.nn.Linear(6, 1, dtype=torch.float64)

    def forward(self, X):
        return self.out(torch.sin(self.hidden(X))).squeeze(-1)


@pytest.mark.parametrize("name", ["ad", "fd", "stein", "sparse-grid"])
def test_gradients_through_each_backend_pass_gradcheck(name):
    dim = 3
    net = TinyNet(dim)
    X = torch.rand(4, dim, dtype=torch.float64)
    # the paper's FD step 0.01: gradcheck's own differences (eps 1e-6) of an FD second
    # derivative carry rounding ~1e-16 / h^2 / eps, which h = 0.01 keeps near 1e-6
    backend = make_backend(Settings(backend=name, samples=16, fd_step=1e-2), dim)
    atoms = {VALUE, d1(2), d2(0, 1), LAPLACIAN, GRADIENT_SQUARED}
    weight = net.hidden.weight.detach().clone().requires_grad_()

    def loss(w):
        f = lambda Z: net.out(torch.sin(torch.nn.functional.linear(Z, w, net.hidden.bias))).squeeze(-1)
        out = backend(f, X, atoms, (0, 1))
        return torch.stack([out[a] for a in sorted(atoms)])
    assert torch.autograd.gradcheck(loss, (weight,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["ad", "fd", "stein", "sparse-grid"])
def test_backends_run_without_a_graph_and_under_vmap(name):
    dim = 4
    net = TinyNet(dim)
    X = torch.rand(5, dim, dtype=torch.float64)
    backend = make_backend(Settings(backend=name, samples=32), dim)
    atoms = {VALUE, d1(3), LAPLACIAN}
    with torch.no_grad():
        out = backend(net, X, atoms, (0, 1, 2))
    assert all(not t.requires_grad for t in out.values())
    # a batch of 3 parameter sets evaluated with torch.func.vmap equals 3 separate calls
    params = {k: torch.stack([v.detach() + 0.1 * i for i in range(3)]) for k, v in net.named_parameters()}

    def lap_for(p):
        f = lambda Z: torch.func.functional_call(net, p, (Z,))
        return backend(f, X, atoms, (0, 1, 2))[LAPLACIAN]
    # FD second differences amplify the summation-order rounding of vmap by 1/h^2 = 1e8
    tolerance = 1e-6 if name == "fd" else 1e-10
    with torch.no_grad():
        batched = torch.func.vmap(lap_for)(params)
        for i in range(3):
            single = lap_for({k: v[i] for k, v in params.items()})
            torch.testing.assert_close(batched[i], single, rtol=tolerance, atol=tolerance)


# ---- third and fourth derivatives ----------------------------------------------------------

HIGH = {partial(0, 0, 0), partial(0, 1, 2), partial(0, 0, 0, 0), partial(0, 0, 1, 1), partial(1, 2, 2, 2)}


def _trig(X):
    """sin(2 x0) exp(x1) cos(x2) and its derivatives of HIGH in closed form."""
    x, y, z = X[:, 0], X[:, 1], X[:, 2]
    s, c, e = torch.sin(2 * x), torch.cos(2 * x), torch.exp(y)
    return s * e * torch.cos(z), {
        partial(0, 0, 0): -8 * c * e * torch.cos(z), partial(0, 1, 2): -2 * c * e * torch.sin(z),
        partial(0, 0, 0, 0): 16 * s * e * torch.cos(z), partial(0, 0, 1, 1): -4 * s * e * torch.cos(z),
        partial(1, 2, 2, 2): s * e * torch.sin(z)}


def test_autodiff_takes_third_and_fourth_derivatives_exactly():
    X = torch.rand(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, exact = _trig(X)
    got = Autodiff()(lambda Y: _trig(Y)[0], X, HIGH | {VALUE, d1(0)}, (0, 1, 2))
    for atom in HIGH:
        torch.testing.assert_close(got[atom], exact[atom], rtol=0, atol=1e-12)


def test_finite_differences_of_third_and_fourth_derivatives_are_products_of_central_stencils():
    """O(h^2) truncation at the automatic steps: h^2 / 6 |f^(6)| <= 1.6e-5 / 6 x 64 e for d4 along x0,
    about 1e-5 of the derivative's size; halving the step quarters it."""
    X = torch.rand(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f, (_, exact) = (lambda Y: _trig(Y)[0]), _trig(X)
    backend = FiniteDifference()
    got = backend(f, X, HIGH, (0, 1, 2))
    errors = {atom: (got[atom] - exact[atom]).abs().max().item() for atom in HIGH}
    assert all(errors[atom] < 2e-5 * exact[atom].abs().max().item() for atom in HIGH), errors
    h3, h4 = backend.high_step(torch.float64, 3), backend.high_step(torch.float64, 4)
    finer = FiniteDifference(step=h3 / 2)(f, X, {partial(0, 0, 0)}, (0, 1, 2))[partial(0, 0, 0)]
    assert (finer - exact[partial(0, 0, 0)]).abs().max().item() < errors[partial(0, 0, 0)] / 3
    # the stencils: 5 points for d4 along one axis, 3 x 3 (two second differences) for d(u, x0, x0, x1, x1)
    assert backend.evaluations_per_point({partial(0, 0, 0, 0)}, (0,), 1) == 5
    assert backend.evaluations_per_point({partial(0, 0, 1, 1)}, (0, 1), 2) == 9
    # the rounding gain counts the fourth derivative's 16 / h^4
    assert backend.rounding_gain(torch.float64, {partial(0, 0, 0, 0)}) == pytest.approx(16 / h4**4)
    assert backend.rounding_gain(torch.float64) == pytest.approx(4 / 1e-8)


def test_sparse_grid_stein_takes_third_and_fourth_derivatives_of_the_smoothed_model():
    """f = x^4 y + x^3 + y^5 (degree 5): the smoothed model's derivatives are polynomials again, and a
    rule exact to degree 9 (Gauss-Hermite level 5 in 2-D) gives them to rounding; level 3 does not."""
    sigma = 0.1
    X = torch.rand(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, y = X[:, 0], X[:, 1]
    f = lambda Y: Y[:, 0] ** 4 * Y[:, 1] + Y[:, 0] ** 3 + Y[:, 1] ** 5  # noqa: E731
    # E (x + s z)^3 = x^3 + 3 x s^2, E (x + s z)^4 = x^4 + 6 x^2 s^2 + 3 s^4, E (y + s z)^5 = y^5 + 10 y^3 s^2 + ...
    exact = {partial(0, 0, 0): 24 * x * y + 6, partial(0, 0, 0, 0): 24 * y, partial(0, 0, 0, 1): 24 * x,
             partial(1, 1, 1, 1): 120 * y, partial(0, 1, 1): 0 * x}
    got = SparseGridStein(2, sigma, level=5)(f, X, set(exact), (0, 1))
    for atom, value in exact.items():
        torch.testing.assert_close(got[atom], value, rtol=0, atol=1e-9)
    coarse = SparseGridStein(2, sigma, level=3)(f, X, {partial(0, 0, 0, 0)}, (0, 1))[partial(0, 0, 0, 0)]
    assert (coarse - exact[partial(0, 0, 0, 0)]).abs().max() > 1
