"""Networks: dense MLPs and TT-compressed MLPs (paper section 3.1)."""

from pinnzo.nets.factorize import balanced_factors, padded_factors, parse_shape
from pinnzo.nets.mlp import ACTIVATIONS, MLP, build_mlp
from pinnzo.nets.tt import TTLinear

__all__ = ["ACTIVATIONS", "MLP", "TTLinear", "balanced_factors", "build_mlp", "padded_factors", "parse_shape"]
