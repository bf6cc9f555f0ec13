"""The layered coordinate queries: activation increments by series, TT unit responses, and the
Jacobian columns of nonlinear PINN residuals (gradsq, products of atoms, an ansatz) against
black-box residual queries."""

from __future__ import annotations

import math

import pytest
import torch

from pinnzo.nets.increments import Increments
from pinnzo.nets.tt import TTLinear, tt_matvec, tt_unit_responses
from pinnzo.pinn import build, resolve_settings
from pinnzo.problem import load_problem
from pinnzo.residual import sample_batch


@pytest.mark.parametrize("activation", [torch.sin, torch.tanh])
@pytest.mark.parametrize("scale", [1e-9, 1e-4, 1e-2, 0.3])
def test_increments_equal_the_direct_difference(activation, scale):
    generator = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(7, 50, dtype=torch.float64, generator=generator)  # (W, R)
    delta = scale * torch.randn(3, 7, 50, dtype=torch.float64, generator=generator)
    increments = Increments(activation, z, activation(z))
    direct = activation(z + delta) - activation(z)
    floor = 2e-15  # the direct difference's own rounding: about eps |z + delta| |act'| with |z| up to ~8
    assert (increments(delta) - direct).abs().max() <= floor
    if scale <= 1e-4:  # small steps take the series (the direct difference is only a fallback)
        assert increments.order(delta.abs().max().item()) is not None
    # at some units of the rows 10..39, per entry or shared
    units = torch.tensor([[0, 3], [6, 6], [1, 2]])
    picked = activation(z[units, 10:40] + delta[:, :2, 10:40]) - activation(z[units, 10:40])
    assert (increments(delta[:, :2, 10:40], units, slice(10, 40)) - picked).abs().max() <= floor
    shared = activation(z[units[0], 10:40] + delta[:, :2, 10:40]) - activation(z[units[0], 10:40])
    assert (increments(delta[:, :2, 10:40], units[0], slice(10, 40)) - shared).abs().max() <= floor
    # summed with output weights
    weights = torch.randn(7, dtype=torch.float64, generator=generator)
    folded = Increments(activation, z, activation(z), weights)
    assert (folded(delta)[:, 0] - (direct * weights[:, None]).sum(1)).abs().max() <= 10 * floor
    assert (folded(delta[:, :2, 10:40], units, slice(10, 40))[:, 0]
            - (picked * weights[units][:, :, None]).sum(1)).abs().max() <= 10 * floor


def test_the_series_order_meets_its_remainder_bound():
    z = torch.zeros(1, 1, dtype=torch.float64)
    sin, tanh = Increments(torch.sin, z, z), Increments(torch.tanh, z, z)
    eps = torch.finfo(torch.float64).eps
    for delta in (1e-8, 1e-5, 1e-3):  # relative to the increment: at most eps |delta| / 4
        order = sin.order(delta)
        assert delta ** (order + 1) / math.factorial(order + 1) <= eps * delta / 4
        assert delta ** order / math.factorial(order) > eps * delta / 4  # and no higher than needed
        assert tanh.order(delta) >= order
    # beyond MAX_ORDER terms the direct difference is used; relu has no series here
    assert sin.order(0.1) is None and sin.order(0.0) == 0 and Increments(torch.relu, z, z).order(1e-8) is None


@pytest.mark.parametrize("activation", [torch.sin, torch.tanh])
def test_a_rows_increments_do_not_depend_on_the_rows_evaluated_with_it(activation):
    """Rows whose deltas need different series orders (and one beyond the series) give bit for bit the
    same increments in any block of rows: a shard of a batch computes the batch's values."""
    generator = torch.Generator().manual_seed(2)
    z = 2 * torch.randn(5, 60, dtype=torch.float64, generator=generator)
    scales = 10.0 ** torch.linspace(-10, -2, 60, dtype=torch.float64)
    scales[17], scales[40] = 0.0, 0.3  # a row without change, a row for the direct difference
    delta = scales * torch.randn(4, 5, 60, dtype=torch.float64, generator=generator)
    increments = Increments(activation, z, activation(z))
    whole = increments(delta)
    units = torch.tensor([1, 3])
    picked = increments(delta[:, :2], units)
    for rows in (slice(0, 30), slice(30, 60), slice(7, 8), slice(13, 45)):
        assert torch.equal(increments(delta[..., rows].contiguous(), None, rows), whole[..., rows])
        assert torch.equal(increments(delta[:, :2, rows].contiguous(), units, rows), picked[..., rows])
    assert (whole - (activation(z + delta) - activation(z))).abs().max() <= 2e-15


@pytest.mark.parametrize("activation", [torch.sin, torch.tanh])
def test_a_looser_reach_keeps_the_increments_exact_and_per_row(activation):
    """A caller's reach (an upper bound of each row's |delta|, here 30 times its maximum) may raise a row's
    order, never lose accuracy, and the rows stay independent of the block they come in."""
    generator = torch.Generator().manual_seed(3)
    z = 2 * torch.randn(5, 40, dtype=torch.float64, generator=generator)
    delta = 10.0 ** torch.linspace(-9, -3, 40, dtype=torch.float64) * torch.randn(4, 5, 40, dtype=torch.float64,
                                                                                 generator=generator)
    increments = Increments(activation, z, activation(z))
    largest = increments.reach(delta)
    assert torch.equal(largest, delta.abs().amax((0, 1)))
    reach = 30 * largest
    whole = increments(delta, None, slice(None), reach)
    assert (whole - (activation(z + delta) - activation(z))).abs().max() <= 2e-15
    assert (increments.orders(reach) >= increments.orders(largest)).all()
    assert (increments.orders(reach) > increments.orders(largest)).any()  # some rows do take more terms
    for rows in (slice(0, 20), slice(11, 12), slice(5, 33)):
        assert torch.equal(increments(delta[..., rows].contiguous(), None, rows, reach[rows]), whole[..., rows])


@pytest.mark.parametrize("activation", ["sin", "tanh"])
def test_changes_through_later_layers_with_a_carried_bound_are_the_black_box_ones(activation):
    """Three hidden layers: the later layers' series orders come from a bound of each row's change carried
    through them (not from their maxima); dF is still F(theta + mu e_j) - F(theta) to rounding."""
    from torch.func import functional_call

    from pinnzo.nets.mlp import MLP, dense_layer
    from pinnzo.optim.coordinates import LayeredForward

    generator = torch.Generator().manual_seed(4)
    model = MLP([dense_layer(*sizes, torch.float64, generator) for sizes in ((2, 12), (12, 12), (12, 12), (12, 1))],
                activation)
    params = {name: value.detach() for name, value in model.named_parameters()}
    x = torch.rand(300, 2, dtype=torch.float64, generator=generator) * 4 - 2
    theta = torch.cat([value.flatten() for value in params.values()])
    chosen, mu = torch.arange(0, len(theta), 3), 1e-3
    forward = LayeredForward(model, params, x)
    for part, change in forward.changes(chosen, mu, tile=5 * 12 * 37):  # tiles of 37 rows
        for position, dF in zip(part.tolist()[::5], change[::5]):
            moved = theta.clone()
            moved[chosen[position]] += mu
            values = torch.split(moved, [value.numel() for value in params.values()])
            moved_params = {name: value.view_as(params[name]) for name, value in zip(params, values)}
            assert (dF - (functional_call(model, moved_params, (x,)) - forward.output)).abs().max() <= 1e-14


@pytest.mark.parametrize("sizes", [(21, 32), (30, 20), (7, 13)])
def test_tt_unit_responses_are_the_exact_changes_of_the_layer(sizes):
    """Moving one core entry by 1 changes W x exactly by the responses (padded factorisations too)."""
    n_in, n_out = sizes
    layer = TTLinear(n_in, n_out, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(40, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cores = [core.detach() for core in layer.core_list()]
    for k in range(len(cores)):
        entries = torch.arange(cores[k].numel())
        units, values = tt_unit_responses(cores, k, x, n_out)(entries)
        block = values(slice(5, 30))
        assert block.shape == (len(entries), units.shape[1], 25)
        for n in entries[torch.randperm(len(entries), generator=torch.Generator().manual_seed(k))[:8]].tolist():
            moved = [core.clone() for core in cores]
            moved[k].view(-1)[n] += 1.0
            change = (tt_matvec(moved, x, n_out) - tt_matvec(cores, x, n_out))[5:30]
            ours = torch.zeros(25, n_out, dtype=torch.float64).index_add_(1, units[n], block[n].T)
            torch.testing.assert_close(ours, change, rtol=0, atol=1e-13)


NONLINEAR = {
    "name": "nonlinear2d",
    "variables": {"space": {"name": "x", "dim": 2, "domain": [0, 1]}},
    "equation": "lap(u) - gradsq(u) + u * d(u, x1) + u**3 = 1",
    "conditions": {"walls": {"at": "boundary", "value": 0, "weight": 2.0}},
}


AFFINE, NONLINEAR_ANSATZ = "x1 * (1 - x1) * N + 1", "x1 * N + N**3 / 10"


WIDE = {"space": {"name": "x", "dim": 2, "domain": [[0, 1], [-5, 2]]}}  # the network maps x2 to (x2 + 1.5) / 3.5


@pytest.mark.parametrize("backend, network, depth, activation, ansatz, variables", [
    ("fd", "mlp", 3, "tanh", None, None), ("fd", "tt", 2, "sin", AFFINE, None),
    ("stein", "mlp", 3, "tanh", NONLINEAR_ANSATZ, None), ("stein", "tt", 2, "sin", None, None),
    ("sparse-grid", "mlp", 3, "tanh", AFFINE, None), ("sparse-grid", "tt", 2, "sin", NONLINEAR_ANSATZ, None),
    ("fd", "mlp", 2, "tanh", None, WIDE), ("sparse-grid", "tt", 2, "sin", None, WIDE),
])
def test_layered_columns_of_a_nonlinear_residual_equal_black_box_queries(backend, network, depth, activation,
                                                                         ansatz, variables):
    """gradsq, products of atoms, u^3, a boundary term; no ansatz, an affine one, a nonlinear one;
    three hidden layers (changes through two later hidden layers) or the TT-MLP; every backend with
    each network and each kind of ansatz; a domain whose inputs the network maps."""
    document = {**NONLINEAR, **({"ansatz": ansatz} if ansatz else {})}
    document.update({"variables": variables} if variables else {})
    problem = load_problem(document)
    settings = resolve_settings(problem, {"dtype": "float64", "network": network, "width": 6, "depth": depth,
                                          "activation": activation, "backend": backend, "samples": 8,
                                          "fd_step": 1e-2})
    components = build(problem, settings)
    objective = components.objective
    batch = sample_batch(problem, 5, 3, torch.Generator().manual_seed(0), torch.float64)
    theta = objective.flatten() + 0.2 * torch.randn(objective.dim, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(1))
    assert objective.layered and (components.model.input_scale is not None) == (variables is not None)
    # Stein: to 1e-12. fd: to the black-box queries' own rounding, which its second differences
    # amplify by 4 / h^2 (h = 1e-2), about 2e-16 x 4e4 per atom
    floor = 1e-12 if backend != "fd" else 100 * 2.2e-16 * 4 / 1e-2**2
    chosen = torch.cat([torch.arange(0, objective.dim, 4), torch.tensor([objective.dim - 1])])  # every tensor
    steps = torch.eye(objective.dim, dtype=torch.float64)[chosen]
    for mu in (1e-3, 1e-7):
        layered = objective.coordinate_residuals(theta, batch, chosen, mu)
        black_box = objective.residuals(theta + mu * steps, batch)
        assert (layered - black_box).abs().max() <= floor * max(1.0, black_box.abs().max().item())
        moved = (black_box - objective.residuals(theta[None], batch)).abs().amax(1)
        assert moved.min() > 0 and moved.median() > 1e-2 * mu  # the columns move, far above the floor
    losses = objective.coordinate_losses(theta, batch, chosen, 1e-3)
    black_box = objective.losses(theta + 1e-3 * steps, batch)
    assert (losses - black_box).abs().max() <= 10 * floor * max(1.0, black_box.abs().max().item())


def _flat_jacobian(model, params: dict, x: torch.Tensor) -> torch.Tensor:
    """dF/dtheta (d, R) or (d, R, C) by autograd, theta flattened in named_parameters order."""
    from torch.func import functional_call, jacrev

    names, shapes = list(params), [value.shape for value in params.values()]

    def outputs(theta):
        values = torch.split(theta, [shape.numel() for shape in shapes])
        return functional_call(model, {n: v.view(s) for n, v, s in zip(names, values, shapes)}, (x,))

    return jacrev(outputs)(torch.cat([value.flatten() for value in params.values()])).movedim(-1, 0)


@pytest.mark.parametrize("network, activation, outputs, input_map", [
    ("mlp", "tanh", 1, None), ("tt", "sin", 1, None), ("mlp", "sin", 3, None), ("tt", "tanh", 3, None),
    ("mlp", "tanh", 1, ([1.0, 0.0, -3.0], [0.5, 1.0, 0.01])), ("tt", "sin", 3, ([0.5, 2.0, 0.0], [0.1, 0.2, 1.0])),
])
def test_linear_changes_are_mu_times_the_autograd_jacobian(network, activation, outputs, input_map):
    """``linear``: mu times sum_u dF/dz_u dz_u/dtheta_e at the moved layer, with dF/dz_u from one tiny
    move of each unit (the series' first order: the derivative to rounding), equals mu dF/dtheta_e by
    autograd; every tensor of a dense and a TT-MLP, one and several outputs, blocks of rows, inputs
    mapped by the network or not."""
    from pinnzo.nets.mlp import build_mlp
    from pinnzo.optim.coordinates import LayeredForward

    model = build_mlp([3, 8, 8, outputs], network, activation, 2, dtype=torch.float64, seed=2, squeeze=outputs == 1,
                      input_map=input_map)
    generator = torch.Generator().manual_seed(3)
    params = {name: value.detach() + 0.3 * torch.randn(value.shape, dtype=torch.float64, generator=generator)
              for name, value in model.named_parameters()}
    x = torch.rand(70, 3, dtype=torch.float64, generator=generator) * 4 - 2
    exact = _flat_jacobian(model, params, x)
    mu = 1e-3
    changes = torch.full_like(exact, math.nan)
    for part, change in LayeredForward(model, params, x).changes(torch.arange(len(exact)), mu, tile=8 * 8 * 16,
                                                                 linear=True):
        changes[part] = change
    assert ((changes / mu - exact).abs().max() / exact.abs().max()).item() <= 1e-14
    # the differences through the later layers differ from it by O(mu): a real second order
    differences = torch.cat([change for _, change in LayeredForward(model, params, x).changes(
        torch.arange(len(exact)), mu)])
    assert ((differences / mu - exact).abs().max() / exact.abs().max()).item() > 1e-11


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_without_a_series_the_linear_changes_are_the_differences(activation):
    """relu and gelu have no series: their units' derivatives would be direct differences, noisy at
    about sqrt(eps), which an fd stencil's 1 / h^2 amplifies (gelu on layer2d: Jacobian error 0.18).
    ``linear`` then takes the differences, bit for bit, and the sensitivities refuse."""
    from pinnzo.nets.mlp import build_mlp
    from pinnzo.optim.coordinates import LayeredForward

    model = build_mlp([3, 8, 8, 1], "mlp", activation, dtype=torch.float64, seed=2)
    params = {name: value.detach() for name, value in model.named_parameters()}
    x = torch.rand(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 4 - 2
    forward = LayeredForward(model, params, x)
    chosen = torch.arange(sum(value.numel() for value in params.values()))
    linear = torch.cat([change for _, change in forward.changes(chosen, 1e-6, linear=True)])
    assert not forward.exact_derivatives
    assert torch.equal(linear, torch.cat([change for _, change in forward.changes(chosen, 1e-6)]))
    with pytest.raises(ValueError, match="series"):
        forward.sensitivities(0)


@pytest.mark.parametrize("backend, network", [("fd", "mlp"), ("sparse-grid", "tt"), ("stein", "mlp")])
def test_linear_jacobian_of_a_nonlinear_residual_is_autograds(backend, network):
    """zo-gn's default columns (``gn_columns=chain``) on gradsq, products of atoms and u^3: within O(mu) of
    the autograd Jacobian (the residual's own curvature in the outputs), closer than the differences
    through the later layers, which add the network's curvature."""
    from pinnzo.optim.gauss_newton import difference_jacobian

    problem = load_problem(NONLINEAR)
    settings = resolve_settings(problem, {"dtype": "float64", "network": network, "width": 6, "depth": 2,
                                          "activation": "tanh" if network == "mlp" else "sin",
                                          "backend": backend, "samples": 8, "fd_step": 1e-2})
    objective = build(problem, settings).objective
    batch = sample_batch(problem, 5, 3, torch.Generator().manual_seed(0), torch.float64)
    theta = objective.flatten() + 0.2 * torch.randn(objective.dim, dtype=torch.float64,
                                                     generator=torch.Generator().manual_seed(1))
    _, exact = objective.residual_jacobian(theta, batch)
    error = lambda jacobian: ((jacobian.matrix - exact).norm() / exact.norm()).item()  # noqa: E731
    mu = 1e-6
    linear = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", mu=mu, linear=True)
    differences = difference_jacobian(objective, theta, batch, torch.Generator(), "coordinates", mu=mu)
    assert linear.queries == differences.queries == objective.dim + 2
    assert error(linear) < 1e-6 and error(linear) < error(differences)
