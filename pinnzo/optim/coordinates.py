"""All coordinate queries L(theta + mu e_j) of an MLP at once, reusing its unperturbed layers.

A layer's pre-activation z = layer(a) is linear in each single parameter tensor
(a dense weight, a bias, one TT core: the TT matrix is multilinear in its cores,
paper eq. 7). Moving entry j of one tensor by mu therefore gives exactly

    z(theta + mu e_j) = z(theta) + mu dz_j,    dz_j = the layer's unit response to e_j
                                                (``layer.unit_responses``, prepared once
                                                per parameter tensor),

and only the layers after the perturbed one need to run again: for all chosen
entries of a tensor as one batch. The values are the outputs a black-box query
at theta + mu e_j computes (to rounding); nothing is differentiated.

It applies to a model with ``layers``, ``activation`` and ``squeeze`` (nets.MLP)
whose layers report ``unit_responses``, and a loss of the form
``criterion(network(inputs(batch)), batch)`` (mnist.CrossEntropy, and PINN
losses whose derivative backend evaluates the network at fixed points).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.func import functional_call


def supports(model, loss_fn) -> bool:
    """Whether ``perturbed_outputs`` applies to this model and loss."""
    layers = getattr(model, "layers", None)
    return (layers is not None and all(hasattr(layer, "unit_responses") for layer in layers)
            and getattr(loss_fn, "layered", False))


def _input_weights(layer, params: dict[str, torch.Tensor], width: int, like: torch.Tensor) -> torch.Tensor:
    """The (in, out) matrix of a linear layer: layer(I) - layer(0)."""
    eye = torch.eye(width, dtype=like.dtype, device=like.device)
    outputs = functional_call(layer, params, (torch.cat([eye, eye.new_zeros(1, width)]),))
    return outputs[:-1] - outputs[-1:]


def _layer_params(model, params: dict[str, torch.Tensor]) -> list[tuple[dict[str, torch.Tensor], list[str]]]:
    """Per layer: its parameters by local name, and their names in flattening order."""
    result = []
    for index, layer in enumerate(model.layers):
        names = [name for name, _ in layer.named_parameters()]
        result.append(({name: params[f"layers.{index}.{name}"] for name in names}, names))
    return result


def perturbed_outputs(model, params: dict[str, torch.Tensor], x: torch.Tensor, chosen: torch.Tensor, mu: float,
                      max_elements: int = 2**24) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The network's outputs at theta + mu e_j for the flat coordinates ``chosen`` (E,),
    in blocks: (positions in ``chosen`` (e,), outputs (e, R) or (e, R, C)).

    ``params``: theta unflattened by name (model.named_parameters order); x (R, D):
    the network inputs. ``max_elements`` bounds the (e, R, width) blocks.
    """
    layers = list(model.layers)
    per_layer = _layer_params(model, params)
    a = x
    inputs, outputs = [], []
    for index, layer in enumerate(layers):
        z = functional_call(layer, per_layer[index][0], (a,))
        inputs.append(a)
        outputs.append(z)
        a = model.activation(z) if index < len(layers) - 1 else z
    widest = max(z.shape[-1] for z in outputs)
    per_block = max(1, max_elements // (a.shape[0] * widest))
    last = len(layers) - 1
    offset = 0
    for index, (layer_params, names) in enumerate(per_layer):
        if index == last - 1:  # the next layer is the (linear) output layer
            weights = _input_weights(layers[last], per_layer[last][0], outputs[index].shape[-1], a)
        for name in names:
            count = layer_params[name].numel()
            inside = ((chosen >= offset) & (chosen < offset + count)).nonzero().flatten()
            if len(inside):
                responses = layers[index].unit_responses(layer_params, name, inputs[index])
            for part in torch.split(inside, per_block) if len(inside) else ():
                units, values = responses(chosen[part] - offset)
                h = _propagate(model, layers, per_layer, index, inputs, outputs, units, values, mu,
                               weights if index == last - 1 else None)
                yield part, (h.squeeze(-1) if model.squeeze else h)
            offset += count


def _propagate(model, layers, per_layer, index, inputs, outputs, units, values, mu, weights):
    """Outputs (E, R, out) after moving layer ``index``'s pre-activation by mu * the unit responses."""
    E, R, U = values.shape
    z = outputs[index]
    if weights is not None:
        # only the changed units: output + W_out[units]^T (act(z_u + mu dz_u) - act(z_u));
        # act(z) is the output layer's input
        z_units = z[:, units].permute(1, 0, 2)  # (E, R, U)
        change = model.activation(z_units + mu * values) - inputs[index + 1][:, units].permute(1, 0, 2)
        return outputs[-1] + torch.einsum("ebu,euc->ebc", change, weights[units])
    h = z + mu * z.new_zeros(E, R, z.shape[-1]).scatter_add_(2, units[:, None, :].expand(E, R, U), values)
    for later in range(index + 1, len(layers)):
        h = functional_call(layers[later], per_layer[later][0],
                            (model.activation(h).reshape(E * R, -1),)).reshape(E, R, -1)
    return h
