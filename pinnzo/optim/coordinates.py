"""All coordinate queries L(theta + mu e_j) of an MLP at once, reusing its unperturbed layers.

A layer's pre-activation z = layer(a) is linear in each single parameter tensor
(a dense weight, a bias, one TT core: the TT matrix is multilinear in its cores,
paper eq. 7). Moving entry j of one tensor by mu therefore gives exactly

    z(theta + mu e_j) = z(theta) + mu dz_j,    dz_j = the layer's unit response to e_j
                                                (``layer.unit_responses``, prepared once
                                                per parameter tensor),

and only the layers after the perturbed one see a change. ``LayeredForward`` carries the
change itself (not the perturbed values) through those layers: activation increments by a
Taylor series at the cached pre-activations (nets/increments.py), the next layer's change
as a product with its weights on the moved units only. The outputs' changes dF_j are the
differences a black-box query at theta + mu e_j computes (to rounding), without their
cancellation; nothing is differentiated.

It applies to a model with ``layers``, ``activation`` and ``squeeze`` (nets.MLP)
whose layers report ``unit_responses``, and a loss of the form
``criterion(network(inputs(batch)), batch)`` (mnist.CrossEntropy, and PINN
losses whose derivative backend evaluates the network at fixed points; a PINN loss
takes the changes directly, ``PINNLoss.around``: its stencil atoms are linear in them).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.func import functional_call

from pinnzo.nets.increments import Increments

GATHERED = 2**22  # values of a block's unit responses fetched in one piece (a strided gather per tile is slow)
COLUMNS = 32  # entries of a parameter tensor whose changes are computed together (LayeredForward.changes)


def row_bytes(sizes: list[int], dtype: torch.dtype, columns: int = COLUMNS) -> int:
    """Memory of one row of a ``LayeredForward`` over a network of layer ``sizes`` (inputs first) with
    a block of its changes: every layer's input and output, the activations' cached pre-activations
    and values, the units' derivatives (``sensitivities``), and a block of ``columns`` changes of the
    outputs with about four more values each for the loss's work on them (``PINNLoss.around``)."""
    hidden, outputs = sum(sizes[1:-1]), sizes[-1]
    values = sum(sizes[:-1]) + sum(sizes[1:]) + 2 * hidden + (hidden + outputs) + 5 * columns * outputs
    return values * torch.finfo(dtype).bits // 8


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


class LayeredForward:
    """The unperturbed forward of an MLP at x (R, D), kept layer by layer, and the exact
    changes of its outputs when single parameter entries move.

    A move of entry j of layer l's tensor by mu changes z_l by mu dz_j on a few units U
    (a dense weight: 1 unit; a TT core: out / m_k units), and then, layer after layer,

        da_l = act(z_l + dz_l) - act(z_l)          (nets/increments.py: a Taylor series at the
                                                    cached z_l, exact to rounding, for sin and tanh)
        dz_{l+1} = W_{l+1} da_l                    (the next layer is linear: its bias cancels; on
                                                    the U moved units only, for the first one)

    down to the change of the outputs dF (E, R) or (E, R, C). These are the differences
    F(theta + mu e_j) - F(theta) that black-box queries compute, without their cancellation.
    """

    def __init__(self, model, params: dict[str, torch.Tensor], x: torch.Tensor):
        self.model, self.layers = model, list(model.layers)
        self.per_layer = _layer_params(model, params)
        self.inputs, self.outputs, self.increments = [], [], []
        a = model.normalised(x)
        for index, layer in enumerate(self.layers):
            z = functional_call(layer, self.per_layer[index][0], (a,))
            self.inputs.append(a)
            self.outputs.append(z)
            if index < len(self.layers) - 1:
                a = model.activation(z)
                self.increments.append(Increments(model.activation, z.T.contiguous(), a.T.contiguous()))
        self._weights: dict[int, torch.Tensor] = {}
        self._gains: dict[int, torch.Tensor] = {}
        self._sensitivities: dict[int, torch.Tensor] = {}
        last = len(self.layers) - 1
        self.folded = last > 0 and self.outputs[last].shape[-1] == 1  # one output: its weights fold into
        if self.folded:                                                # the last increments
            self.increments[last - 1].weights = self.weights(last)[0]
            if last >= 2:  # and a moved unit of the layer before moves them along a column of these
                self.increments[last - 1].into = self.weights(last - 1)

    @property
    def output(self) -> torch.Tensor:
        """The unperturbed outputs F (R,) or (R, C)."""
        return self.outputs[-1].squeeze(-1) if self.model.squeeze else self.outputs[-1]

    def weights(self, index: int) -> torch.Tensor:
        """The (out, in) matrix of layer ``index`` (linear): layer(I) - layer(0), transposed."""
        if index not in self._weights:
            self._weights[index] = _input_weights(self.layers[index], self.per_layer[index][0],
                                                  self.outputs[index - 1].shape[-1], self.outputs[index]).T
        return self._weights[index]

    def gain(self, index: int) -> torch.Tensor:
        """``_gain`` of layer ``index``'s weights (0-d)."""
        if index not in self._gains:
            self._gains[index] = _gain(self.weights(index))
        return self._gains[index]

    def changes(self, chosen: torch.Tensor, mu: float, columns: int = COLUMNS, tile: int = 2**18,
                linear: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """dF for the flat coordinates ``chosen`` (E,) moved by mu, in blocks of up to ``columns``:
        (positions in ``chosen`` (e,), dF (e, R) or (e, R, C)).

        Entries that move the same units (a TT core's entries with the same output index, a dense
        weight's row) form blocks of their own, which share the per-unit work. Each block is computed
        a tile of rows at a time, with about ``tile`` values in each (e, width, rows) tensor, so
        that they stay in the processor's cache. ``linear``: mu times the derivatives dF/dtheta_j
        instead, by the chain rule at the moved layer (``sensitivities``), when every activation has a
        series (sin, tanh; else the differences: a direct difference of relu or gelu leaves its units'
        derivatives noisy at about sqrt(eps), which a stencil's 1 / h^2 would amplify)."""
        linear = linear and self.exact_derivatives
        offset = 0
        for index, (layer_params, names) in enumerate(self.per_layer):
            for name in names:
                count = layer_params[name].numel()
                inside = ((chosen >= offset) & (chosen < offset + count)).nonzero().flatten()
                if len(inside):
                    responses = self.layers[index].unit_responses(layer_params, name, self.inputs[index])
                    for part, shared in _blocks(responses(chosen[inside] - offset)[0], columns):
                        response = responses(chosen[inside[part]] - offset)
                        yield inside[part], (self._linear_block(index, response, shared, mu, tile) if linear
                                             else self._block(index, response, shared, mu, tile))
                offset += count

    def _block(self, index: int, response, shared: bool, mu: float, tile: int) -> torch.Tensor:
        """dF (e, R) or (e, R, C) of one block of entries of a tensor of layer ``index``."""
        units, values = response
        rows, (E, U) = self.inputs[0].shape[0], units.shape
        width = max([U] + [z.shape[-1] for z in self.outputs[index + 1:-1]])
        step = max(1, tile // (E * width))
        units = units[0] if shared else units
        change = self.outputs[-1].new_empty(E, self.outputs[-1].shape[-1], rows)
        gather = max(step, GATHERED // (E * U))  # rows of values fetched at once; their tiles are views
        for outer in range(0, rows, gather):
            stop = min(outer + gather, rows)
            fetched = values(slice(outer, stop))
            for start in range(outer, stop, step):
                tile_rows = slice(start, min(start + step, stop))
                change[:, :, tile_rows] = self._propagate(index, units, mu * fetched[:, :, start - outer:
                                                                                   tile_rows.stop - outer], tile_rows)
        return change[:, 0] if self.model.squeeze else change.transpose(1, 2)

    @property
    def exact_derivatives(self) -> bool:
        """Whether ``sensitivities`` are derivatives to rounding: every activation has a series."""
        return all(increments.kind is not None for increments in self.increments)

    def sensitivities(self, index: int, tile: int = 2**18) -> torch.Tensor:
        """dF/dz of layer ``index``'s pre-activation units at every row: (U, R) or (U, R, C), by the
        changes of single units moved by a step (eps^2) so small that the activation increments'
        series stops at its first order (nets/increments.py): the forward-mode derivative, to
        rounding. Needs ``exact_derivatives``."""
        if not self.exact_derivatives:
            raise ValueError("the units' derivatives need activations with a series (sin, tanh)")
        if index not in self._sensitivities:
            z = self.outputs[index]
            units = torch.arange(z.shape[-1], device=z.device)[:, None]
            ones = lambda rows: z.new_ones(len(units), 1, rows.stop - rows.start)  # noqa: E731
            step = torch.finfo(z.dtype).eps ** 2
            self._sensitivities[index] = self._block(index, (units, ones), False, step, tile) / step
        return self._sensitivities[index]

    def _linear_block(self, index: int, response, shared: bool, mu: float, tile: int) -> torch.Tensor:
        """mu dF/dtheta_e (e, R) or (e, R, C) of one block of entries of a tensor of layer ``index``:
        the chain rule at that layer, sum_u dF/dz_u dz_u/dtheta_e (z is linear in the tensor, so
        dz_u/dtheta_e is the unit response); ``shared``: every entry moves the same units."""
        units, values = response
        sensitivities = self.sensitivities(index, tile)  # (U, R) or (U, R, C)
        if sensitivities.dim() == 2:
            sensitivities = sensitivities[..., None]
        (E, U), (rows, C) = units.shape, sensitivities.shape[1:]
        change = sensitivities.new_empty(E, rows, C)
        step = max(1, GATHERED // (E * U * C))
        for start in range(0, rows, step):
            part = slice(start, min(start + step, rows))
            moved = values(part)  # (e, U, r)
            picked = sensitivities[units[0], part] if shared else sensitivities[:, part][units]  # ([e,] U, r, C)
            if U == 1:
                torch.mul(moved[:, 0, :, None], picked[..., 0, :, :], out=change[:, part])
            elif shared and C > 1:  # a matrix product per row: (e, U) by (U, C)
                change[:, part] = torch.bmm(moved.permute(2, 0, 1), picked.permute(1, 0, 2)).permute(1, 0, 2)
            else:
                torch.sum(moved[..., None] * picked, dim=1, out=change[:, part])
        change.mul_(mu)
        return change[..., 0] if self.model.squeeze else change

    def _propagate(self, index: int, units: torch.Tensor, dz: torch.Tensor, rows: slice) -> torch.Tensor:
        """The outputs' change (E, C, r) at ``rows`` from the change dz (E, U, r) of layer ``index``'s
        pre-activation at its ``units`` (E, U), or (U,) when every entry moves the same units."""
        last = len(self.layers) - 1
        if index == last:
            E, U, R = dz.shape
            width = self.outputs[last].shape[-1]
            units = units.expand(E, U)
            return dz.new_zeros(E, width, R).scatter_add_(1, units[:, :, None].expand(E, U, R), dz)
        reach = self.increments[index].reach(dz)  # each row's largest |dz| (r,), None without a series
        da = self.increments[index](dz, units, rows, reach)
        if index == last - 1 and self.folded:
            return da
        weights = self.weights(index + 1)[:, units]  # (out, U) or (out, E, U)
        if index == last - 2 and self.folded and units.shape[-1] == 1:
            # one moved unit before the last hidden layer: its change moves that layer along one column
            # of its weights, whose series the increments regroup once for every unit (nets/increments.py)
            moved = self.increments[last - 1].along(da, units, rows, None if reach is None else reach * _gain(weights))
            if moved is not None:
                return moved
        dz = (weights if units.dim() == 1 else weights.permute(1, 0, 2)) @ da  # (E, out, r)
        reach = None if reach is None else reach * _gain(weights)
        for later in range(index + 1, last):
            dz = self.increments[later](dz, None, rows, reach)
            if not (later == last - 1 and self.folded):
                dz = self.weights(later + 1) @ dz
                reach = None if reach is None else reach * self.gain(later + 1)
        return dz


def _gain(weights: torch.Tensor) -> torch.Tensor:
    """How much a linear layer after sin or tanh can grow a row's largest change: dz' = weights (act(z + dz)
    - act(z)) has |dz'| <= max_o sum_u |w_ou| max_u |dz_u| (sin and tanh change by at most |dz|), for
    weights (out, U) or (out, E, U). A row's bound times it depends on the row alone, unlike the maximum
    of dz' over the row, and costs no pass over the (E, out, r) values."""
    return weights.abs().sum(-1).max()


def _blocks(units: torch.Tensor, columns: int) -> list[tuple[torch.Tensor, bool]]:
    """Blocks of up to ``columns`` entries (positions into units (E, U)) and whether they share
    their units: the groups of at least 4 entries with the same units, then the rest together."""
    _, group, sizes = torch.unique(units, dim=0, return_inverse=True, return_counts=True)
    order = torch.argsort(group, stable=True)
    blocks, rest = [], []
    for members in torch.split(order, sizes.tolist()):
        if len(members) >= 4:
            blocks += [(part, True) for part in torch.split(members, columns)]
        else:
            rest.append(members)
    if rest:
        blocks += [(part, False) for part in torch.split(torch.cat(rest), columns)]
    return blocks


def perturbed_outputs(model, params: dict[str, torch.Tensor], x: torch.Tensor, chosen: torch.Tensor,
                      mu: float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The network's outputs at theta + mu e_j for the flat coordinates ``chosen`` (E,),
    in blocks: (positions in ``chosen`` (e,), outputs (e, R) or (e, R, C)).

    ``params``: theta unflattened by name (model.named_parameters order); x (R, D):
    the network inputs.
    """
    forward = LayeredForward(model, params, x)
    for part, change in forward.changes(chosen, mu):
        yield part, forward.output + change
