"""Dense MLPs and TT-MLPs mapping (B, D) inputs to (B, out) outputs."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from pinnzo.nets.tt import TTLinear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin": torch.sin, "tanh": torch.tanh, "relu": torch.relu, "gelu": nn.functional.gelu,
}


# Var(W) = GAIN / in_features: LeCun for sin and tanh, He for the rectifiers.
GAIN = {"sin": 1.0, "tanh": 1.0, "relu": 2.0, "gelu": 2.0}


class DenseLinear(nn.Linear):
    """nn.Linear that also reports its unit responses (for the layered coordinate queries), and
    multiplies its output by a fixed ``output_scale`` once one is set (``scale_output``; a PINN's
    output layer: ``pinn.output_scale``): y = s (x W^T + b)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("output_scale", None)  # saved with the weights once set

    def scale_output(self, scale: float) -> None:
        """Multiply the output by ``scale`` from now on (1: no buffer, as without a scale)."""
        self.output_scale = None if scale == 1 else torch.tensor(scale, dtype=self.weight.dtype,
                                                                 device=self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.output_scale is None else y * self.output_scale

    def unit_responses(self, params: dict[str, torch.Tensor], name: str, x: torch.Tensor):
        """How the output at x (B, in) changes per unit change of entries of parameter ``name``
        ("weight" (out, in) or "bias"): a function entries (E,) -> sparse (units (E, 1), values: rows
        (a slice of x's rows) -> (E, 1, rows)). The layer is linear in each of its parameter tensors."""
        scale = 1.0 if self.output_scale is None else self.output_scale
        if name == "bias":
            return lambda entries: (entries[:, None],
                                    lambda rows=slice(None): x.new_full((len(entries), 1, len(x[rows])), float(scale)))

        columns = x.T.contiguous() * scale  # (in, B): an entry's values are a row of it, not a strided column of x

        def responses(entries):
            out_index, in_index = torch.unravel_index(entries, params["weight"].shape)
            return out_index[:, None], lambda rows=slice(None): columns[in_index, rows][:, None, :]
        return responses


def dense_layer(in_features: int, out_features: int, dtype, generator, gain: float = 1.0) -> DenseLinear:
    """A dense layer with N(0, gain/in_features) weights (the TT layers' target) and zero bias."""
    layer = DenseLinear(in_features, out_features, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=generator, dtype=dtype)
                           * (gain / in_features) ** 0.5)
        layer.bias.zero_()
    return layer


class MLP(nn.Module):
    """x -> act(L_1 ((x - c) s)) -> ... -> L_out h: (B, D) -> (B,) when ``squeeze`` else (B, out).

    Each layer is dense (nn.Linear) or TT (TTLinear); the activation is applied
    between layers, not after the last. ``input_map`` (c, s), each (D,), is a fixed shift and
    factor per input (None: none), so that inputs in physical units reach the first layer at
    the size of its initialisation (a PINN's: ``pinn.input_map``).
    """

    def __init__(self, layers: Sequence[nn.Module], activation: str = "sin", squeeze: bool = True,
                 input_map: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; must be one of {', '.join(ACTIVATIONS)}")
        self.layers = nn.ModuleList(layers)
        self.activation = ACTIVATIONS[activation]
        self.squeeze = squeeze
        shift, scale = input_map if input_map is not None else (None, None)
        self.register_buffer("input_shift", shift)  # saved with the weights (None: not in the state dict)
        self.register_buffer("input_scale", scale)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The first layer's input (x - c) s (B, D)."""
        return x if self.input_scale is None else (x - self.input_shift) * self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalised(x)
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        x = self.layers[-1](x)
        return x.squeeze(-1) if self.squeeze else x

    def parameter_table(self) -> list[tuple[str, str, int]]:
        """(layer name, description, parameter count) per layer."""
        rows = []
        for index, layer in enumerate(self.layers):
            count = sum(p.numel() for p in layer.parameters())
            if isinstance(layer, TTLinear):
                description = f"TT {layer.extra_repr()}"
            else:
                description = f"dense {layer.in_features} -> {layer.out_features}"
            rows.append((f"layer{index + 1}", description, count))
        return rows


def build_mlp(sizes: Sequence[int], network: str = "mlp", activation: str = "sin", rank=2,
              tt_output: bool = False, shapes: Sequence[Sequence[int]] | None = None,
              dtype=torch.float32, seed: int = 0, squeeze: bool = True,
              input_map: tuple[Sequence[float], Sequence[float]] | None = None) -> MLP:
    """An MLP through ``sizes`` (e.g. [21, 512, 512, 1]), its inputs x mapped to (x - c) s by
    ``input_map`` = (c, s), a shift and a factor per input (None: as they are).

    ``network="tt"`` makes the hidden layers TT-matrix layers (paper: the two first
    layers of the HJB network, rank 2); the output layer is TT too when
    ``tt_output`` (MNIST: 1024 -> 10 = 1x5x2x1), else dense. ``shapes`` optionally
    gives the factorisation of each size (same length as ``sizes``).
    """
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = index == len(sizes) - 2
        # the input layer sees the data (gain 1); later layers see activations
        gain = GAIN.get(activation, 1.0) if index > 0 else 1.0
        if network == "tt" and (not last or tt_output):
            in_shape = shapes[index] if shapes else None
            out_shape = shapes[index + 1] if shapes else None
            layers.append(TTLinear(n_in, n_out, rank, in_shape, out_shape, target_variance=gain / n_in,
                                   dtype=dtype, generator=generator))
        else:
            layers.append(dense_layer(n_in, n_out, dtype, generator, gain))
    if input_map is not None:
        input_map = tuple(torch.tensor(values, dtype=dtype) for values in input_map)
    return MLP(layers, activation, squeeze, input_map)
