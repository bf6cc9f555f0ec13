"""Benchmarks that write JSON. Never part of the test suite (no timed tests).

Each suite returns a dict; ``write_report`` adds machine information. Figures
that compare two things are ratios measured in the same process, so they stay
meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def machine_info() -> dict:
    import torch

    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def best_time(function: Callable[[], object], repeats: int = 5, budget_s: float = 20.0) -> float:
    """Least wall time of ``function()`` over up to ``repeats`` calls (seconds)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved_times(*functions: Callable[[], object], rounds: int = 7) -> tuple[float, ...]:
    """Least wall times of the functions timed in turn, so that all see the same machine
    speed (on a shared machine it swings by 2x between moments)."""
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for function, record in zip(functions, times):
            t0 = time.perf_counter()
            function()
            record.append(time.perf_counter() - t0)
    return tuple(min(record) for record in times)


def write_report(path: Path, report: dict) -> None:
    """Write ``{"machine": ..., **report}`` as JSON, atomically."""
    from pinnzo.fileio import atomic_write

    atomic_write(path, json.dumps({"machine": machine_info(), **report}, indent=2).encode())


def quadrature_benchmark() -> dict:
    """Build times (best of several) and cache-load times of the sparse grids.

    Targets (2-core machine, from a C++ library's build times): D = 21 level 5
    under 0.4 s, D = 100 level 3 under 0.5 s, cache load under 20 ms.
    """
    from pinnzo.quadrature import build_rule, cache
    from pinnzo.quadrature.families import FAMILIES

    cases = [("gauss-hermite", 21, 3), ("gauss-hermite", 21, 4), ("gauss-hermite", 21, 5),
             ("gauss-hermite", 100, 3), ("gauss-hermite", 100, 4),
             ("genz-keister", 21, 3), ("genz-keister", 21, 5), ("lu-darmofal", 21, 3)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for family, dim, level in cases:
            FAMILIES[family].build(dim, level)  # warm 1-D rule caches
            build_s = best_time(lambda: build_rule(family, dim, level), repeats=3)
            rule = build_rule(family, dim, level)
            path = cache.cache_path(Path(folder), family, dim, level)
            cache.save(rule, path)
            load_s = best_time(lambda: cache.load(path), repeats=5)
            rows.append({"family": family, "dim": dim, "level": level, "nodes": rule.size,
                         "degree": rule.degree, "sum_abs_weights": rule.abs_weight_sum,
                         "build_s": build_s, "cache_load_s": load_s,
                         "cache_file_bytes": path.stat().st_size})
            del rule
    return {"suite": "quadrature", "rules": rows,
            "targets": {"gauss-hermite d21 l5 build_s": 0.4, "gauss-hermite d100 l3 build_s": 0.5,
                        "cache_load_s": 0.02}}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _hjb20_components(width: int | None = None, backend: str = "sparse-grid", **changes):
    """(problem, settings, components, batch) of hjb20 with a fixed batch of points."""
    import torch

    from pinnzo.pinn import build, resolve_settings
    from pinnzo.problem import load_problem
    from pinnzo.residual import sample_batch

    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / "hjb20.yaml")
    settings = resolve_settings(problem, {"backend": backend, **({"width": width} if width else {}), **changes})
    components = build(problem, settings)
    batch = sample_batch(problem, settings.batch, settings.condition_batch, torch.Generator().manual_seed(0))
    return problem, settings, components, batch


def paper_sparse_grid_loss(problem, network, X, rule, sigma: float):
    """The HJB loss with the sparse-grid Stein derivatives evaluated the paper's way (eq. 13)."""
    from pinnzo import atoms as A
    from pinnzo.derivatives.reference import paper_sparse_grid

    gradient, laplacian = paper_sparse_grid(problem.solution(network), X, rule, sigma, problem.spatial)
    spatial = list(problem.spatial)
    atoms = {A.d1(problem.time_index): gradient[:, problem.time_index], A.LAPLACIAN: laplacian,
             A.GRADIENT_SQUARED: (gradient[:, spatial] ** 2).sum(1)}
    return problem.residual_from_atoms(X, atoms).square().mean()


def _measure_backend(name: str, width: int | None, rule: str | None = None) -> dict:
    problem, settings, c, batch = _hjb20_components(width, name, **({"rule": rule} if rule else {}))
    theta = c.objective.flatten()
    per_point = c.loss.backend.evaluations_per_point(problem.atoms, problem.spatial, problem.dim)
    before = _peak_rss_mb()
    loss_s = best_time(lambda: c.objective.loss(theta, batch), repeats=5)
    after_loss = _peak_rss_mb()
    grad_s = best_time(lambda: c.objective.value_and_grad(theta, batch), repeats=3)
    return {"backend": name + (f" ({rule})" if rule else ""), "evaluations_per_point": per_point, "loss_s": loss_s, "loss_and_gradient_s": grad_s,
            "peak_rss_growth_loss_mb": after_loss - before, "peak_rss_growth_gradient_mb": _peak_rss_mb() - before}


def _laplacian_loop(f, X, spatial):
    """Reference: the Laplacian by autograd with a Python loop over the dimensions."""
    import torch

    X = X.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(f(X).sum(), X, create_graph=True)
    return sum(torch.autograd.grad(gradient[:, i].sum(), X, create_graph=True)[0][:, i] for i in spatial)


def autodiff_laplacian_comparison(width: int | None = None) -> dict:
    """AD Laplacian on hjb20: torch.func (vmap over jvp of vjp) against a loop over dimensions."""
    import torch

    from pinnzo.atoms import LAPLACIAN
    from pinnzo.derivatives import Autodiff

    problem, settings, c, batch = _hjb20_components(width, "ad")
    X = batch.interior
    u = problem.solution(c.objective.network(c.objective.flatten()))
    vmapped = lambda: Autodiff()(u, X, {LAPLACIAN}, problem.spatial)[LAPLACIAN]
    looped = lambda: _laplacian_loop(u, X, problem.spatial)
    difference = (vmapped() - looped()).abs().max().item()
    vmap_s, loop_s = best_time(vmapped, repeats=5), best_time(looped, repeats=5)
    return {"vmap_s": vmap_s, "loop_s": loop_s, "vmap_speedup": loop_s / vmap_s, "max_difference": difference}


def derivatives_benchmark(width: int | None = None) -> dict:
    """Per backend on the hjb20 setting (21 inputs, default network, batch 100)."""
    import torch

    import multiprocessing

    # each backend in a fresh process, so that its peak memory is its own
    context = multiprocessing.get_context("spawn")
    rows = []
    for name, rule in (("ad", None), ("fd", None), ("stein", None), ("sparse-grid", "gauss-hermite"),
                       ("sparse-grid", "lu-darmofal")):
        with context.Pool(1) as pool:
            rows.append(pool.apply(_measure_backend, (name, width, rule)))
    # the paper's rule evaluated the paper's way, and one plain forward of as many rows
    problem, settings, c, batch = _hjb20_components(width, "sparse-grid", rule="gauss-hermite")
    X = batch.interior
    theta = c.objective.flatten()
    network = c.objective.network(theta)
    rule = c.loss.backend.rule
    with torch.no_grad():
        ours = c.objective.loss(theta, batch).item()
        paper = paper_sparse_grid_loss(problem, network, X, rule, settings.sigma).item()
        ours_s, paper_s = interleaved_times(lambda: c.objective.loss(theta, batch),
                                            lambda: paper_sparse_grid_loss(problem, network, X, rule, settings.sigma),
                                            rounds=3)
        points = (X[:, None, :] + torch.tensor(rule.nodes * 0.1, dtype=X.dtype)[None]).reshape(-1, X.shape[1])
        u = problem.solution(network)  # the network with its ansatz: the f the estimator evaluates
        ours_s, forward_s = interleaved_times(lambda: c.objective.loss(theta, batch), lambda: u(points))
    return {
        "suite": "derivatives", "setting": f"hjb20, width {settings.width}, batch {settings.batch}, float32",
        "backends": rows, "autodiff_laplacian": autodiff_laplacian_comparison(width),
        "sparse_grid_vs_paper": {
            "nodes": rule.size, "evaluations_per_point": {"pinnzo": rule.size, "paper": 2 * rule.size + 1},
            "pinnzo_loss_s": ours_s, "paper_loss_s": paper_s, "speedup": paper_s / ours_s,
            "loss_pinnzo": ours, "loss_paper": paper, "relative_difference": abs(ours - paper) / abs(paper),
            "one_forward_of_the_same_rows_s": forward_s, "loss_over_forward": ours_s / forward_s,
            "targets": {"speedup": 1.8, "loss_over_forward": 1.5},
        },
    }


def zo_benchmark(widths=(32, 512)) -> dict:
    """ZO steps on hjb20: time per step, queries per second, FLOP/s against a GEMM."""
    import torch

    from pinnzo.optim import make_optimizer

    rows = []
    for width in widths:
        problem, settings, c, batch = _hjb20_components(width, "sparse-grid", rule="gauss-hermite")
        objective = c.objective
        theta = objective.flatten()
        optimizer = make_optimizer(settings.optimizer, **settings.as_dict())
        state = optimizer.init(theta)
        generator = torch.Generator().manual_seed(0)
        queries_per_step = settings.directions + 1
        rows_per_query = settings.batch * c.loss.backend.evaluations_per_point(problem.atoms, problem.spatial, problem.dim)
        sizes = [problem.dim, width, width, 1]
        flops = 2 * rows_per_query * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
        A = torch.randn(rows_per_query, width)
        B = torch.randn(width, width)
        step_s, gemm_s = interleaved_times(lambda: optimizer.update(0, theta, state, objective, batch, generator),
                                           lambda: A @ B, rounds=3)
        gemm_flops = 2 * rows_per_query * width * width / gemm_s
        sin_s = best_time(lambda: torch.sin(A), repeats=5)
        achieved = flops * queries_per_step / step_s
        rows.append({"width": width, "parameters": objective.dim, "step_s": step_s,
                     "queries_per_step": queries_per_step, "queries_per_s": queries_per_step / step_s,
                     "network_flops_per_query": flops, "achieved_flop_s": achieved,
                     "gemm_flop_s_same_shape": gemm_flops, "fraction_of_gemm": achieved / gemm_flops,
                     "activation_share": 2 * sin_s * queries_per_step / step_s})
    batching = []
    for label, backend, batch in (("hjb20 sparse-grid, 92,500 rows per query", "sparse-grid", 100),
                                  ("hjb20 autodiff, 100 rows per query", "ad", 100)):
        problem, settings, c, points = _hjb20_components(32, backend, batch=batch, rule="gauss-hermite")
        objective = c.objective
        theta = objective.flatten()
        thetas = theta + 0.01 * torch.randn(11, theta.numel(), generator=torch.Generator().manual_seed(0))
        objective.queries_per_chunk = 11
        batched_s, looped_s = interleaved_times(lambda: objective.losses(thetas, points),
                                                lambda: objective.losses_looped(thetas, points), rounds=4)
        batching.append({"case": label, "batched_s": batched_s, "looped_s": looped_s,
                         "batched_speedup": looped_s / batched_s})
    return {"suite": "zo", "steps": rows, "batched_vs_looped": batching, "cge_coordinates": cge_benchmark(),
            "layered_jacobian": layered_jacobian_benchmark(), "gn_jacobian": gn_jacobian_benchmark(),
            "targets": {"fraction_of_gemm": 0.5, "batched_speedup": 2.0, "layered_jacobian_speedup": 5.0}}


# (problem file, settings) of the layered-Jacobian cases: the demo's TT-MLP with the sparse grid in
# both precisions, and a small dense network with the fd backend.
LAYERED_JACOBIAN_CASES = (
    ("hjb20", {"dtype": "float32"}),
    ("hjb20", {"dtype": "float64"}),
    ("poisson2d", {"backend": "fd", "network": "mlp", "width": 16, "depth": 2, "dtype": "float64"}),
)


def layered_jacobian_benchmark(cases=LAYERED_JACOBIAN_CASES, sample: int = 32, rounds: int = 3) -> dict:
    """zo-gn's Jacobian columns along every coordinate: all of them from one unperturbed forward plus
    the changes through the layers after each perturbed parameter (optim/coordinates.py), and by the
    units' derivatives (``gn_columns=chain``), at zo-gn's layered step, against one residual query per column
    at the black-box step (timed on ``sample`` columns, batched as zo-gn's black-box path queries
    them), interleaved in one process; both layered Jacobians' errors against autograd's, and the
    layered differences' largest difference to the black-box queries at the black-box step."""
    import torch

    from pinnzo.optim.gauss_newton import default_mu
    from pinnzo.pinn import build, resolve_settings
    from pinnzo.problem import load_problem
    from pinnzo.residual import sample_batch

    rows = []
    for name, changes in cases:
        problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / f"{name}.yaml")
        settings = resolve_settings(problem, changes)
        c = build(problem, settings)
        batch = sample_batch(problem, settings.batch, settings.condition_batch, torch.Generator().manual_seed(0),
                             c.dtype)
        objective = c.objective
        theta = objective.flatten()
        mu = default_mu(theta, c.loss.backend.rounding_gain(c.dtype))
        columns = torch.arange(objective.dim)
        chosen = columns[torch.randperm(objective.dim, generator=torch.Generator().manual_seed(0))[:sample]]
        steps = torch.zeros(len(chosen), objective.dim, dtype=c.dtype)
        steps[torch.arange(len(chosen)), chosen] = mu
        own_mu = default_mu(theta, objective.coordinate_rounding_gain(theta, batch) or 1.0)  # zo-gn's layered step
        layered_s, looped_s, linear_s = interleaved_times(
            lambda: objective.coordinate_residuals(theta, batch, columns, own_mu),
            lambda: objective.residuals(theta + steps, batch),
            lambda: objective.coordinate_residuals(theta, batch, columns, own_mu, linear=True), rounds=rounds)
        difference = (objective.coordinate_residuals(theta, batch, chosen, mu)
                      - objective.residuals(theta + steps, batch)).abs().max().item()
        per_column_s = looped_s / len(chosen)
        errors = _jacobian_errors(objective, theta, batch, own_mu)
        rows.append({"case": f"{name} {settings.network} {settings.width}x{settings.depth} {settings.activation}, "
                             f"{settings.backend}{' ' + settings.rule if settings.backend == 'sparse-grid' else ''}, "
                             f"batch {settings.batch}, {settings.dtype}",
                     "columns": objective.dim, "residuals": objective.residual_count(batch),
                     "network_rows": len(c.loss.inputs(batch)), "mu": mu,
                     "layered_all_columns_s": layered_s, "one_query_per_column_s": per_column_s * objective.dim,
                     "speedup": per_column_s * objective.dim / layered_s,
                     "largest_difference_to_black_box": difference,
                     "linear_all_columns_s": linear_s, "linear_speedup": per_column_s * objective.dim / linear_s,
                     **errors})
    return {"cases": rows, "timing": f"least of {rounds} interleaved rounds; the per-column time from "
                                      f"{sample} columns queried in one batch"}


GN_JACOBIAN_RECIPE = {"optimizer": "gn", "network": "mlp", "width": 32, "depth": 2, "activation": "tanh",
                      "backend": "fd", "dtype": "float64", "batch": 1000, "condition_batch": 1000}


def gn_jacobian_benchmark(problem_name: str = "reaction3d-manufactured", rounds: int = 3) -> dict:
    """gn's Jacobian of a PINN loss (the accuracy grid's gn recipe): the network's gradient rows each
    added to the one residual its value enters (residual.Perturbations.sensitivities), against the
    same rows with each of the d columns pushed through the residuals by its own forward-mode product
    (how gn took it before), interleaved in one process; and their largest difference, relative to
    the Jacobian's largest entry."""
    import torch

    from pinnzo.pinn import build, resolve_settings
    from pinnzo.problem import load_problem
    from pinnzo.residual import sample_batch

    problem = load_problem(Path(__file__).resolve().parents[1] / "problems" / f"{problem_name}.yaml")
    settings = resolve_settings(problem, GN_JACOBIAN_RECIPE)
    c = build(problem, settings)
    batch = sample_batch(problem, settings.batch, settings.condition_batch, torch.Generator().manual_seed(0),
                         c.dtype)
    objective, theta = c.objective, c.objective.flatten()
    by_rows_s, pushed_s = interleaved_times(lambda: objective.residual_jacobian(theta, batch),
                                            lambda: _jacobian_by_pushed_columns(objective, theta, batch),
                                            rounds=rounds)
    exact = objective.residual_jacobian(theta, batch)[1]
    difference = (exact - _jacobian_by_pushed_columns(objective, theta, batch)).abs().max().item()
    return {"case": f"{problem_name} mlp 32x2 tanh, fd, {settings.batch} + {settings.condition_batch} points, "
                    f"float64", "columns": objective.dim, "residuals": len(exact),
            "network_rows": len(c.loss.inputs(batch)), "by_residual_rows_s": by_rows_s,
            "pushed_columns_s": pushed_s, "speedup": pushed_s / by_rows_s,
            "largest_difference": difference / exact.abs().max().item(),
            "timing": f"least of {rounds} interleaved rounds"}


def _jacobian_by_pushed_columns(objective, theta, batch):
    """The reference for gn_jacobian_benchmark (a PINN loss without unknowns): dN/dtheta by rows, then
    each column pushed through the residual criterion by forward mode, vmapped in chunks."""
    import torch
    from torch.func import jacrev, jvp, vmap

    loss, chunk = objective.loss_fn, 2**22
    X = loss.inputs(batch)
    network = lambda t, x: objective.network(t)(x[None])[0]  # noqa: E731
    with torch.no_grad():
        N = objective.network(theta)(X)
    push = lambda column: jvp(lambda values: loss.residual_criterion(values, batch), (N,), (column,))[1]  # noqa: E731
    with torch.enable_grad():
        dN = torch.cat([vmap(jacrev(network), in_dims=(None, 0))(theta, part)
                        for part in torch.split(X, max(1, chunk // theta.numel()))])
        return torch.cat([vmap(push)(part) for part in torch.split(dN.T, max(1, chunk // len(N)))]).T.detach()


def _jacobian_errors(objective, theta, batch, mu: float) -> dict:
    """The layered Jacobians' largest differences to autograd's, relative to its largest entry, at
    the step mu: by forward differences of the coordinates and by the units' derivatives (``linear``)."""
    import torch

    columns = torch.arange(objective.dim)
    _, exact = objective.residual_jacobian(theta, batch)
    base = objective.coordinate_residuals(theta, batch, columns[:1], 0.0)[0]
    scale = exact.abs().max().item()
    errors = {"layered_mu": mu}
    for key, linear in (("differences_error_to_autograd", False), ("linear_error_to_autograd", True)):
        columns_by_layers = (objective.coordinate_residuals(theta, batch, columns, mu, linear) - base).T / mu
        errors[key] = (columns_by_layers - exact).abs().max().item() / scale
    return errors


def cge_benchmark(coordinates: int = 512) -> dict:
    """CGE coordinate queries on the MNIST TT-MLP (r = 6, batch 64): all at once by
    re-running only the later layers (optim/coordinates.py) vs one forward per query."""
    import torch

    from pinnzo.mnist import build_classifier, cross_entropy
    from pinnzo.optim import Objective
    from pinnzo.settings import MnistSettings

    objective = Objective(build_classifier(MnistSettings()), cross_entropy, 1)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(64, 784, generator=generator), torch.randint(0, 10, (64,), generator=generator))
    theta = objective.flatten()
    chosen = torch.randperm(objective.dim, generator=generator)[:coordinates]
    steps = torch.zeros(len(chosen), objective.dim)
    steps[torch.arange(len(chosen)), chosen] = 0.01
    layered_s, looped_s = interleaved_times(lambda: objective.coordinate_losses(theta, batch, chosen, 0.01),
                                            lambda: objective.losses_looped(theta + steps, batch), rounds=3)
    full_s = best_time(lambda: objective.coordinate_losses(theta, batch, torch.arange(objective.dim), 0.01),
                       repeats=3)
    return {"network": f"MNIST TT-MLP r = 6 ({objective.dim} parameters), batch 64", "coordinates": coordinates,
            "layered_s": layered_s, "looped_s": looped_s, "layered_speedup": looped_s / layered_s,
            "full_step_queries": objective.dim, "full_step_layered_s": full_s,
            "full_step_looped_s_estimate": looped_s * objective.dim / coordinates}


def tt_layer_benchmark() -> dict:
    """TT forward by rebuilding W + GEMM vs core by core, against a dense layer of the same shape."""
    import torch

    from pinnzo.nets import TTLinear

    rows = []
    for n_in, n_out, rank in ((512, 512, 2), (784, 1024, 6), (21, 512, 2)):
        layer = TTLinear(n_in, n_out, rank)
        dense = torch.nn.Linear(n_in, n_out)
        for batch in (1, 4, 16, 64, 256, 4096, 92500):
            x = torch.randn(batch, n_in)
            with torch.no_grad():
                layer.mode = "dense"
                rebuild_s = best_time(lambda: layer(x), repeats=5)
                layer.mode = "cores"
                cores_s = best_time(lambda: layer(x), repeats=5)
                dense_s = best_time(lambda: dense(x), repeats=5)
            rows.append({"layer": f"{n_in}->{n_out} r{rank}", "batch": batch, "rebuild_gemm_s": rebuild_s,
                         "core_by_core_s": cores_s, "dense_layer_s": dense_s,
                         "best": "cores" if cores_s < rebuild_s else "rebuild",
                         "best_over_dense": min(rebuild_s, cores_s) / dense_s})
    return {"suite": "tt-layer", "rows": rows,
            "auto_rule": "core by core when rows * (in + out) * 4 < in * out, else rebuild W + GEMM"}


# Every suite by name, with its default sizes (pinnzo bench all, make bench; the accuracy grid is
# its own command, pinnzo bench accuracy).
SUITES: dict[str, Callable[[], dict]] = {
    "quadrature": quadrature_benchmark, "derivatives": derivatives_benchmark, "zo": zo_benchmark,
    "tt-layer": tt_layer_benchmark,
}
