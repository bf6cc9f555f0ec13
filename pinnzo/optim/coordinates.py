"""All coordinate queries L(theta + mu e_j) of an MLP at once, reusing its unperturbed layers.

A layer's pre-activation z = layer(a) is linear in each single parameter tensor
(a dense weight, a bias, one TT core: the TT matrix is multilinear in its cores,
paper eq. 7). Moving entry j of one tensor by mu therefore gives exactly

    z(theta + mu e_j) = z(theta) + mu dz_j,    dz_j = the layer's output with that
                                                tensor replaced by the unit tensor e_j
                                                (and no bias),

and only the layers after the perturbed one need to run again: for all chosen
entries of a tensor as one batch. The values are the losses a black-box query
at theta + mu e_j returns (to rounding); nothing is differentiated. This is what
makes the paper's ZO-CGE fine-tuning affordable: on the MNIST TT-MLP (r = 6) a
full 3,963-query CGE step costs about as much as a few plain forwards.

It applies when the loss is ``criterion(network(inputs(batch)), batch)``: a
loss object with ``inputs`` and ``criterion`` methods (see ``mnist.CrossEntropy``).
"""

from __future__ import annotations

import math
import string

import torch
from torch.func import functional_call

from pinnzo.nets.mlp import MLP
from pinnzo.nets.tt import TTLinear


def supports(model, loss_fn) -> bool:
    """Whether ``coordinate_losses`` applies to this model and loss."""
    return isinstance(model, MLP) and hasattr(loss_fn, "criterion") and hasattr(loss_fn, "inputs")


def tt_core_responses(layer: TTLinear, cores: list[torch.Tensor], k: int, x: torch.Tensor,
                      entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit perturbations of entries (flat indices, (E,)) of core k, in sparse form:
    (units (E, U), values (E, B, U)), U = out_size / m_k; see ``unit_responses``.

    x (B, in_features). Contracts x with every core but k (one einsum), leaving
    core k's indices (r_{k-1}, n_k, r_k) open; entry (a, i, j, c) changes exactly
    the outputs whose k-th output index is i, by that slice.
    """
    L = len(cores)
    letters = iter(string.ascii_letters)
    b = next(letters)
    n = [next(letters) for _ in range(L)]
    m = [next(letters) for _ in range(L)]
    r = [next(letters) for _ in range(L + 1)]
    N = math.prod(layer.in_shape)
    if N > layer.in_features:
        x = torch.nn.functional.pad(x, (0, N - layer.in_features))
    ones = x.new_ones(1)  # closes the boundary ranks r_0 = r_L = 1
    operands, subscripts = [x.reshape(-1, *layer.in_shape), ones, ones], [b + "".join(n), r[0], r[L]]
    for j in range(L):
        if j != k:
            operands.append(cores[j])
            subscripts.append(r[j] + m[j] + n[j] + r[j + 1])
    others = "".join(m[j] for j in range(L) if j != k)
    T = torch.einsum(",".join(subscripts) + "->" + b + others + r[k] + n[k] + r[k + 1], *operands)
    B = T.shape[0]
    m_k, after = layer.out_shape[k], math.prod(layer.out_shape[k + 1:])
    before = math.prod(layer.out_shape[:k])
    a, i, j, c = torch.unravel_index(entries, cores[k].shape)
    values = T.reshape(B, before * after, *T.shape[-3:])[:, :, a, j, c].permute(2, 0, 1)  # (E, B, U)
    base = (torch.arange(before, device=x.device)[:, None] * (m_k * after)
            + torch.arange(after, device=x.device)[None, :]).flatten()
    units = base[None, :] + (i * after)[:, None]  # (E, U) flat output indices
    padded = units >= layer.out_features  # outputs cut off by the padding of the factorisation
    return units.masked_fill(padded, 0), values.masked_fill(padded[:, None, :], 0.0)


def unit_responses(layer, params: dict[str, torch.Tensor], name: str, x: torch.Tensor,
                   entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How ``layer``'s output at input x (B, in) changes per unit perturbation of the
    given entries (E,) of its parameter ``name``, in sparse form:
    (units (E, U), values (E, B, U)): dz_e[:, units[e, u]] = values[e, :, u], 0 elsewhere."""
    E, B = len(entries), x.shape[0]
    if name == "bias":
        return entries[:, None], x.new_ones(E, B, 1)
    if name == "weight":  # dense (out, in)
        out_index, in_index = torch.unravel_index(entries, params["weight"].shape)
        return out_index[:, None], x[:, in_index].T[:, :, None]
    k = int(name.split(".")[1])  # "cores.k"
    cores = [params[f"cores.{j}"] for j in range(len(layer.cores))]
    return tt_core_responses(layer, cores, k, x, entries)


def input_weights(layer, params: dict[str, torch.Tensor], width: int, like: torch.Tensor) -> torch.Tensor:
    """The (in, out) matrix of a linear layer: layer(I) - layer(0)."""
    eye = torch.eye(width, dtype=like.dtype, device=like.device)
    outputs = functional_call(layer, params, (torch.cat([eye, eye.new_zeros(1, width)]),))
    return outputs[:-1] - outputs[-1:]


def _layer_params(params: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = f"layers.{index}."
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def coordinate_losses(model: MLP, params: dict[str, torch.Tensor], sizes: list[int], loss_fn, batch,
                      chosen: torch.Tensor, mu: float, max_elements: int = 2**24) -> torch.Tensor:
    """L(theta + mu e_j) for the flat coordinates ``chosen`` (E,) -> (E,).

    ``params``/``sizes``: theta unflattened by name, in flattening order.
    ``max_elements`` bounds the (E, B, width) blocks of one batch of entries.
    """
    layers = list(model.layers)
    layer_params = [_layer_params(params, index) for index in range(len(layers))]
    a = loss_fn.inputs(batch)
    inputs, outputs = [], []
    for index, layer in enumerate(layers):
        z = functional_call(layer, layer_params[index], (a,))
        inputs.append(a)
        outputs.append(z)
        a = model.activation(z) if index < len(layers) - 1 else z
    widest = max(z.shape[-1] for z in outputs)
    per_batch = max(1, max_elements // (a.shape[0] * widest))
    last = len(layers) - 1
    result = torch.empty(len(chosen), dtype=a.dtype, device=a.device)
    offset = 0
    for name, count in zip(params, sizes):
        inside = ((chosen >= offset) & (chosen < offset + count)).nonzero().flatten()
        index, local = int(name.split(".")[1]), name.split(".", 2)[2]
        if index == last - 1 and len(inside):  # the next layer is the (linear) output layer
            weights = input_weights(layers[last], layer_params[last], outputs[index].shape[-1], a)
        for part in torch.split(inside, per_batch) if len(inside) else ():
            units, values = unit_responses(layers[index], layer_params[index], local, inputs[index],
                                           chosen[part] - offset)
            E, B, U = values.shape
            z = outputs[index]
            if index == last - 1:
                # only the changed units: logits + W_out[units]^T (act(z_u + mu dz_u) - act(z_u))
                z_units = z[:, units].permute(1, 0, 2)  # (E, B, U)
                change = model.activation(z_units + mu * values) - model.activation(z_units)
                h = outputs[last] + torch.einsum("ebu,euc->ebc", change, weights[units])
            else:
                dz = z.new_zeros(E, B, z.shape[-1]).scatter_add_(2, units[:, None, :].expand(E, B, U), values)
                h = z + mu * dz  # (E, B, out)
                for later in range(index + 1, len(layers)):
                    h = functional_call(layers[later], layer_params[later],
                                        (model.activation(h).reshape(E * B, -1),)).reshape(E, B, -1)
            result[part] = loss_fn.criterion(h.squeeze(-1) if model.squeeze else h, batch)
        offset += count
    return result
