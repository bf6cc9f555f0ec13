"""TT-matrix layers and MLP builders."""

from __future__ import annotations

import math

import pytest
import torch

from pinnzo.nets import TTLinear, balanced_factors, build_mlp, padded_factors
from pinnzo.nets.factorize import prime_factors


@pytest.mark.parametrize("n_in, n_out, ranks, shapes", [
    (21, 512, 2, ((1, 1, 3, 7), (8, 4, 4, 4))),
    (784, 1024, 6, ((7, 4, 4, 7), (8, 4, 4, 8))),
    (1024, 10, 3, ((8, 4, 4, 8), (1, 5, 2, 1))),
    (11, 13, [3, 2, 4], (None, None)),  # padded: 11 -> 12, 13 -> 14
    (30, 6, [2, 5], (None, None)),
])
def test_both_forward_modes_equal_the_reconstructed_matrix(n_in, n_out, ranks, shapes):
    cores = 4 if isinstance(ranks, int) else len(ranks) + 1
    layer = TTLinear(n_in, n_out, ranks, shapes[0], shapes[1], cores=cores, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0))
    x = torch.randn(9, n_in, dtype=torch.float64)
    expected = x @ layer.weight().T + layer.bias
    for mode in ("dense", "cores", "auto"):
        layer.mode = mode
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    assert layer.weight().shape == (n_out, n_in)


def test_reconstruction_equals_the_product_of_core_slices():
    """tensorly-style: W[(i1..iL), (j1..jL)] = G1[:, i1, j1, :] ... GL[:, iL, jL, :] entrywise."""
    layer = TTLinear(24, 12, [2, 3], (2, 3, 4), (2, 2, 3), cores=3, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(1))
    W = layer.weight()
    G = [c.detach() for c in layer.cores]
    for i in [(0, 0, 0), (1, 1, 2), (0, 1, 1)]:
        for j in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
            product = G[0][:, i[0], j[0], :] @ G[1][:, i[1], j[1], :] @ G[2][:, i[2], j[2], :]
            row = (i[0] * 2 + i[1]) * 3 + i[2]
            column = (j[0] * 3 + j[1]) * 4 + j[2]
            assert W[row, column].item() == pytest.approx(product.item(), abs=1e-12)


@pytest.mark.parametrize("rank", [2, 4, 6, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstructed_weight_has_the_intended_std(rank, seed):
    layer = TTLinear(784, 1024, rank, (7, 4, 4, 7), (8, 4, 4, 8), generator=torch.Generator().manual_seed(seed))
    target = math.sqrt(1 / 784)
    assert abs(layer.weight().std().item() / target - 1) < 0.10
    custom = TTLinear(784, 1024, rank, target_variance=2 / (784 + 1024), generator=torch.Generator().manual_seed(seed))
    assert abs(custom.weight().std().item() / math.sqrt(2 / 1808) - 1) < 0.10


@pytest.mark.parametrize("r", range(1, 11))
def test_parameter_counts_follow_the_formula(r):
    layer = TTLinear(784, 1024, r, (7, 4, 4, 7), (8, 4, 4, 8))
    m, n, ranks = (8, 4, 4, 8), (7, 4, 4, 7), [1, r, r, r, 1]
    assert layer.parameter_count() == sum(ranks[k] * m[k] * n[k] * ranks[k + 1] for k in range(4)) + 1024
    mnist = build_mlp([784, 1024, 10], "tt", rank=r, tt_output=True, shapes=[(7, 4, 4, 7), (8, 4, 4, 8), (1, 5, 2, 1)])
    assert sum(p.numel() for p in mnist.parameters()) == 128 * r + 60 * r * r + 1034
    assert sum(row[2] for row in mnist.parameter_table()) == 128 * r + 60 * r * r + 1034


def test_paper_parameter_counts_of_table_2():
    for rank, params in [(10, 8314), (6, 3962)]:
        net = build_mlp([784, 1024, 10], "tt", rank=rank, tt_output=True,
                        shapes=[(7, 4, 4, 7), (8, 4, 4, 8), (1, 5, 2, 1)])
        assert sum(p.numel() for p in net.parameters()) == params
    dense = build_mlp([784, 1024, 10], "mlp")
    assert sum(p.numel() for p in dense.parameters()) == 814_090


def test_automatic_factorisation_multiplies_back():
    for n in range(1, 1500):
        for count in (2, 3, 4, 5):
            factors = padded_factors(n, count)
            assert len(factors) == count
            product = math.prod(factors)
            is_padded_prime = n > 3 and prime_factors(n) == [n]
            assert product == (n + 1 if is_padded_prime else n)
            assert math.prod(balanced_factors(n, count)) == n
    assert padded_factors(21, 4) == (7, 3, 1, 1)
    assert padded_factors(512, 4) == (8, 4, 4, 4)
    assert padded_factors(1024, 4) == (8, 8, 4, 4)


@pytest.mark.parametrize("activation", ["sin", "tanh", "relu", "gelu"])
def test_mlp_shapes_and_activations(activation):
    net = build_mlp([5, 16, 16, 1], "tt", activation, rank=2)
    x = torch.rand(7, 5)
    assert net(x).shape == (7,)
    assert [row[1].split()[0] for row in net.parameter_table()] == ["TT", "TT", "dense"]
    with pytest.raises(ValueError, match="must be one of sin, tanh, relu, gelu"):
        build_mlp([5, 4, 1], activation="swish")


@pytest.mark.parametrize("mode", ["dense", "cores"])
def test_gradients_through_functional_call_equal_direct_back_propagation(mode):
    """The optimizers differentiate through torch.func.functional_call; every core must get its gradient."""
    from pinnzo.optim import Objective

    net = build_mlp([12, 16, 10], "tt", "relu", rank=3, tt_output=True, dtype=torch.float64)
    for layer in net.layers:
        layer.mode = mode
    x, y = torch.randn(5, 12, dtype=torch.float64), torch.randint(0, 10, (5,))
    loss_fn = lambda network, batch: torch.nn.functional.cross_entropy(network(batch[0]), batch[1])
    net.zero_grad()
    loss_fn(net, (x, y)).backward()
    direct = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    objective = Objective(net, loss_fn)
    _, gradient = objective.value_and_grad(objective.flatten(), (x, y))
    torch.testing.assert_close(gradient, direct, rtol=1e-12, atol=1e-14)
    assert all(p.grad.abs().sum() > 0 for p in net.parameters())
