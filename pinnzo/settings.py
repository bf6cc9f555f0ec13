"""Run settings: defaults, the problem file's ``solve:`` block, then flags.

Every field can be set in a problem file's ``solve:`` block and overridden on
the command line (``--steps 500`` or ``--set steps=500``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from pinnzo.errors import PinnzoError

# dtype "auto" is float64 for these optimizers (least squares and quasi-Newton: they converge past the
# float32 rounding floor of the loss, ~1e-4 relative error) and float32 for every other one
FLOAT64_OPTIMIZERS = ("lbfgs", "adam-lbfgs", "gn", "zo-gn")

# Defaults of the Gauss-Newton optimizers, under the problem file's solve: block and the flags (a field
# either of them sets wins; a block written for an optimizer with other defaults sets none of them:
# block_keys). The general defaults (the paper's TT-MLP, sparse-grid Stein, 100 points) give a
# least-squares problem with fewer residuals than parameters, fitted exactly at the points and
# wrong between them. A small dense tanh network keeps the d x d solve cheap; 1,000 points and 1,000
# per condition make the problem overdetermined, each condition's points too (a 20-D box has 40 faces);
# finite differences are exact to rounding in float64 (docs/method.md, "Defaults of the Gauss-Newton
# optimizers"). The point sets grow to 4 x the first at most: a step's normal equations cost rows x
# parameters^2, and on poisson-lshape 16 x left 262 steps in 300 s (1.0e-3), 4 x 380 (5.7e-4).
LEAST_SQUARES_DEFAULTS = {"network": "mlp", "width": 24, "depth": 2, "activation": "tanh", "backend": "fd",
                          "batch": 1000, "condition_batch": 1000, "eval_every": 10, "grow_points": 8.0,
                          "max_growth": 4}
OPTIMIZER_DEFAULTS = {"gn": LEAST_SQUARES_DEFAULTS, "zo-gn": LEAST_SQUARES_DEFAULTS}


def block_keys(block: Mapping[str, Any], optimizer: str) -> set[str]:
    """The settings of a problem's ``solve:`` block that hold against ``optimizer``'s own defaults.

    All of them when the block names no optimizer, or one with the same defaults (gn for zo-gn). A
    block written for an optimizer with other defaults is that optimizer's recipe: a file's Adam recipe
    (autodiff, 256 points) run with ``--optimizer zo-gn`` would give Gauss-Newton fewer residuals than
    parameters and make it back-propagate, so there the optimizer's defaults replace the block's values
    for their fields; the block's other settings (steps, dtype, eval_points, ...) still hold."""
    named = block.get("optimizer")
    if named is None or OPTIMIZER_DEFAULTS.get(named, {}) == OPTIMIZER_DEFAULTS.get(optimizer, {}):
        return set(block)
    return set(block) - set(OPTIMIZER_DEFAULTS.get(optimizer, {}))


class SettingsBase:
    """replace / names / as_dict for the frozen settings dataclasses below."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def replace(self, changes: Mapping[str, Any], prefix: str = ""):
        """A copy with ``changes`` applied, each checked against the field's type.

        ``prefix`` starts every error message (e.g. "problems/x.yaml: solve.").
        """
        checked = {}
        types = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            if key not in types:
                raise PinnzoError(f"{prefix}{key}: unknown setting; must be one of {', '.join(self.names())}")
            checked[key] = _coerce(value, types[key], f"{prefix}{key}", key)
        return dataclasses.replace(self, **checked)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def concrete(self):
        """A copy whose dtype "auto" is made concrete for its optimizer (FLOAT64_OPTIMIZERS: float64)."""
        if self.dtype != "auto":
            return self
        return dataclasses.replace(self, dtype="float64" if self.optimizer in FLOAT64_OPTIMIZERS else "float32")


@dataclass(frozen=True)
class Settings(SettingsBase):
    """Settings of a PINN run (pinnzo solve)."""

    # network
    network: str = "tt"  # mlp | tt (gn, zo-gn: LEAST_SQUARES_DEFAULTS unless given, as width, depth, activation)
    width: int = 64  # hidden width
    depth: int = 2  # hidden layers (21 -> 512 -> 512 -> 1 is depth 2; at most 1000)
    rank: int = 2  # TT rank of the compressed layers
    activation: str = "sin"  # sin | tanh | relu | gelu | auto (pilot runs choose tanh or sin: pinnzo/pilots.py)
    output_scale: float = 0.0  # u = this x the network's output layer (0: auto, the solution's size: pinn.output_scale)
    pilot_share: float = 0.1  # activation auto: each pilot's share of the time budget (of the steps without one)
    shapes: str = ""  # TT factorisations "input,hidden", e.g. 1x1x3x7,8x4x4x4 (empty: automatic)
    # derivatives
    backend: str = "sparse-grid"  # ad | fd | stein | sparse-grid (gn, zo-gn: fd unless given)
    sigma: float = 0.1  # Gaussian smoothing of the Stein backends
    samples: int = 1024  # Monte-Carlo Stein samples
    rule: str = "gauss-hermite"  # sparse-grid family
    level: int = 3  # sparse-grid level
    fd_step: float = 0.0  # finite-difference step (0: automatic for the dtype)
    # optimizer
    # adam | sgd | lbfgs | adam-lbfgs | gn | zo-rge | zo-signrge | zo-cge | hybrid | zo-adam | zo-gn; where neither
    # the file nor the flags name one, the back-propagation-free Gauss-Newton (the paper's method: hybrid)
    optimizer: str = "zo-gn"
    lr: float = 1e-3
    lr_decay: float = 1.0  # multiply lr by this every decay_every steps
    decay_every: int = 1000
    directions: int = 10  # N random directions of RGE / signRGE
    mu: float = 0.01  # ZO perturbation radius
    perturbation: str = "gaussian"  # gaussian | rademacher
    difference: str = "forward"  # forward | central
    momentum: float = 0.9  # CGE momentum
    coordinates: int = 0  # CGE random coordinate subset per step (0: all)
    patience: int = 50  # hybrid: steps without improvement of the smoothed loss before switching
    switch_step: int = 0  # hybrid: switch at this step at the latest (0: the patience rule only)
    cge_mu: float = 0.01  # hybrid: CGE perturbation radius after the switch
    cge_lr: float = 0.0  # hybrid: CGE learning rate after the switch (0: lr)
    # Gauss-Newton (gn, zo-gn) and L-BFGS (lbfgs, adam-lbfgs)
    gn_subspace: str = "auto"  # auto | coordinates | gaussian | orthonormal (zo-gn's directions; auto: all coordinates up to 4096 parameters, else min(gn_directions, residuals) orthonormal)
    gn_directions: int = 200  # k random directions of zo-gn (gaussian, orthonormal, auto)
    gn_mu: float = 0.0  # zo-gn difference step (0: sqrt(eps x rounding gain) times the scale of theta)
    damping: float = 1e-3  # initial Levenberg-Marquardt damping lambda
    damping_rule: str = "nielsen"  # nielsen | marquardt
    damping_matrix: str = "identity"  # identity (lambda x mean diag(J^T J) x I, Levenberg) | diagonal (lambda diag(J^T J), Marquardt)
    gn_acceleration: float = 0.0  # gn, zo-gn: geodesic acceleration w kept while |w| <= this x |v| (one query a trial; 0: off)
    # gn, zo-gn: converged once the loss is below this times its first value (0: never; runs without a time_budget only)
    gn_tolerance: float = 1e-10
    gn_columns: str = "chain"  # zo-gn's layered Jacobian columns: chain (the chain rule at the moved layer, from its units' derivatives; sin and tanh, else the differences) | differences (through the later layers)
    gn_reuse: int = 2  # gn, zo-gn: more steps with each accepted step's Jacobian, each kept while it lowers the loss (0: none)
    history: int = 50  # L-BFGS history size
    resample_every: int = 0  # draw new points every this many steps (0: 1 for gradient methods, 100 for lbfgs, adam-lbfgs, 20 for gn, zo-gn)
    # run
    steps: int = 1000
    batch: int = 100  # interior points per step (gn, zo-gn: LEAST_SQUARES_DEFAULTS unless given)
    condition_batch: int = 100  # points per condition per step (gn, zo-gn: LEAST_SQUARES_DEFAULTS unless given)
    eval_every: int = 100
    eval_points: int = 10_000
    seed: int = 0
    dtype: str = "auto"  # auto | float32 | float64 (auto: float64 for lbfgs, adam-lbfgs, gn, zo-gn; else float32)
    device: str = "cpu"  # cpu | cuda
    memory_mb: int = 1024  # budget for one chunk of batched evaluations
    time_budget: float = 0.0  # stop after the step that passes this many seconds of training (0: no limit)
    # loss-only adaptivity, applied at each resample of the points (pinnzo/adaptive.py)
    # fixed | relobralo | softadapt | discrepancy: factors of the terms' weights from their loss values
    # (discrepancy: a data term's weight lowered while its misfit is below its noise)
    loss_weights: str = "fixed"
    relobralo_alpha: float = 0.999  # ReLoBRaLo's exponential smoothing alpha, in [0, 1]
    relobralo_tau: float = 0.1  # ReLoBRaLo's softmax temperature tau (> 0)
    relobralo_rho: float = 0.99  # ReLoBRaLo's expected lookback E[rho] (Bernoulli), in [0, 1]
    softadapt_beta: float = 0.1  # SoftAdapt's softmax scale beta (> 0)
    discrepancy_floor: float = 0.01  # discrepancy: the least factor of a data term's weight, in (0, 1]
    resample: str = "uniform"  # uniform | rad: interior points uniform, or by residual (RAD)
    # p in [1, 2]: the equation's term takes the L_p norm of its residual, by least squares with the points'
    # weights |r|^(p - 2) (mean 1) taken at each resample (2: the plain mean square)
    residual_power: float = 2.0
    # residual_power: the first this many point sets are fitted in the plain mean square, so that the reweighting
    # starts from a least-squares fit rather than from the untrained network's residuals
    residual_power_warmup: int = 4
    # multiplies every condition's weight but measured data's; 0: automatic, the gain of the equation's derivatives
    # of order 2 to 4 on the domain's longest waves, prod (2 pi / length) over their axes, and at least 1
    condition_scale: float = 0.0
    rad_pool: int = 10  # RAD: candidates per kept interior point (pool of rad_pool x batch)
    rad_k: float = 1.0  # RAD: probability proportional to |r|^k / mean |r|^k + c
    rad_c: float = 1.0
    grow_points: float = 0.0  # at a resample, double the points when their loss exceeds this x the loss on the points just fitted (0: never; gn, zo-gn: 8)
    max_growth: int = 16  # grow_points: the point sets grow to at most this x batch and condition_batch (gn, zo-gn: 4)
    # inverse problems: in the last this share of the run (of the steps, or of the time_budget), once the unknowns
    # have settled, hold them and weigh the data by forward_finish_weight, so that u solves the equation for those
    # values rather than bending towards the data's noise (0: off; unknowns.ForwardFinish, docs/method.md "The
    # forward finish")
    forward_finish: float = 0.25
    forward_finish_weight: float = 0.01  # forward_finish: the factor of the data terms' weights, in (0, 1]
    # forward_finish: settled = within this (relative) of their value at the ends of the point sets over the last tenth
    # of the run (two sets at least)
    forward_finish_tolerance: float = 1e-3

    def with_optimizer_defaults(self, given) -> "Settings":
        """A copy with its optimizer's defaults (OPTIMIZER_DEFAULTS) in every field not in ``given``."""
        defaults = OPTIMIZER_DEFAULTS.get(self.optimizer, {})
        return self.replace({key: value for key, value in defaults.items() if key not in given})


@dataclass(frozen=True)
class MnistSettings(SettingsBase):
    """Settings of an MNIST run (pinnzo mnist); paper section 5.1."""

    network: str = "tt"  # mlp | tt
    rank: int = 6  # TT rank r: ranks [1, r, r, r, 1]
    width: int = 1024  # hidden layer (1024 = 8x4x4x8 for TT)
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_decay: float = 0.9  # the paper: x0.9 every 10 epochs
    decay_epochs: int = 10
    momentum: float = 0.9
    directions: int = 10  # the paper: N = 10, mu = 0.1 for RGE / signRGE
    mu: float = 0.1
    perturbation: str = "gaussian"
    difference: str = "forward"
    coordinates: int = 0
    patience: int = 2000  # hybrid, in steps
    switch_step: int = 0  # hybrid: switch at this step at the latest (0: the patience rule only)
    cge_mu: float = 0.01  # the paper: mu = 0.01, m = 0.9 in the fine-tuning stage
    cge_lr: float = 0.0
    gn_mu: float = 0.0  # zo-gn (generalised Gauss-Newton): difference step (0: sqrt(eps) x max(1, |theta|_inf))
    gn_columns: str = "differences"  # zo-gn: the outputs' Jacobian columns: differences | chain (the chain rule at the moved layer; sin and tanh only)
    damping: float = 1e-3  # zo-gn: initial Levenberg-Marquardt damping lambda
    damping_rule: str = "nielsen"  # zo-gn: nielsen | marquardt
    damping_matrix: str = "identity"  # zo-gn: identity (Levenberg) | diagonal (Marquardt)
    cg_iterations: int = 100  # zo-gn: conjugate-gradient products per step's solve
    gn_reuse: int = 0  # zo-gn: more steps with each accepted step's Jacobian and curvature, each kept while it lowers the loss (0: none)
    damping_floor: float = 1e-15  # zo-gn: lambda never falls below this
    average: float = 0.0  # the reported model: the parameters' moving average of this decay (0: the last step's)
    epochs: int = 5
    batch: int = 64
    steps_per_epoch: int = 0  # 0: the whole training split
    validation: int = 5000  # images held out of the training set for validation
    time_budget: float = 0.0  # stop after the step that passes this many seconds of training (0: no limit)
    seed: int = 0
    dtype: str = "float32"  # auto | float32 | float64 (auto as for PINN runs)
    device: str = "cpu"
    memory_mb: int = 1024


CHOICES = {
    "network": ("mlp", "tt"),
    "activation": ("sin", "tanh", "relu", "gelu", "auto"),
    "perturbation": ("gaussian", "rademacher"),
    "difference": ("forward", "central"),
    "dtype": ("auto", "float32", "float64"),
    "gn_subspace": ("auto", "coordinates", "gaussian", "orthonormal"),
    "gn_columns": ("chain", "differences"),
    "damping_rule": ("nielsen", "marquardt"),
    "damping_matrix": ("identity", "diagonal"),
    "device": ("cpu", "cuda"),
    "loss_weights": ("fixed", "relobralo", "softadapt", "discrepancy"),
    "resample": ("uniform", "rad"),
}


# Smallest allowed value of the settings that have one (the others may be 0).
MINIMUM = {"width": 1, "depth": 1, "rank": 1, "samples": 1, "level": 1, "decay_every": 1, "directions": 1,
           "gn_directions": 1, "history": 1,
           "steps": 1, "batch": 1, "condition_batch": 1, "eval_every": 1, "eval_points": 2, "memory_mb": 1,
           "decay_epochs": 1, "epochs": 1, "validation": 1,
           "cg_iterations": 1}
MAXIMUM_INTEGER = 2**62  # seeds and sizes beyond it overflow torch's generators and tensor sizes
# Largest allowed value of the settings with a practical ceiling below MAXIMUM_INTEGER: a plain MLP
# deeper than this does not train, and building one takes minutes and gigabytes of layer objects.
MAXIMUM = {"depth": 1000}
POSITIVE = {"sigma", "lr", "mu", "cge_mu", "lr_decay", "damping"}  # floats that must be > 0
BELOW_ONE = {"momentum", "average", "forward_finish"}  # floats in [0, 1)
# loss-only adaptivity (adaptive.py)
POSITIVE |= {"relobralo_tau", "softadapt_beta", "discrepancy_floor"}
UNIT_INTERVAL = {"relobralo_alpha", "relobralo_rho", "discrepancy_floor"}  # floats in [0, 1]
POSITIVE.add("pilot_share")
BELOW_HALF = {"pilot_share"}  # floats below 1/2 (two pilots take less than the whole run)
ONE_TO_TWO = {"residual_power"}  # floats in [1, 2]
MINIMUM["rad_pool"] = 1
MINIMUM["max_growth"] = 1
POSITIVE |= {"forward_finish_weight", "forward_finish_tolerance"}
UNIT_INTERVAL.add("forward_finish_weight")


def _coerce(value: Any, kind: str, where: str, name: str):
    """Check/convert a YAML or command-line value to the field's type."""
    if isinstance(value, str) and kind in ("int", "float"):
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            raise PinnzoError(f"{where}: expected {kind}; found {value!r}") from None
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise PinnzoError(f"{where}: expected an integer; found {value!r}")
        minimum = MINIMUM.get(name, 0)
        if value < minimum:
            raise PinnzoError(f"{where}: expected an integer >= {minimum}; found {value}")
        if value > MAXIMUM_INTEGER:
            raise PinnzoError(f"{where}: expected an integer <= {MAXIMUM_INTEGER:,} (2^62); found {value}")
        if value > MAXIMUM.get(name, value):
            raise PinnzoError(f"{where}: expected an integer <= {MAXIMUM[name]:,}; found {value:,}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PinnzoError(f"{where}: expected a number; found {value!r}")
        value = float(value)
        if not math.isfinite(value) or (name in POSITIVE and value <= 0) or value < 0:
            raise PinnzoError(f"{where}: expected a {'positive' if name in POSITIVE else 'non-negative'} "
                              f"finite number; found {value!r}")
        if name in BELOW_ONE and not value < 1:
            raise PinnzoError(f"{where}: expected a number in [0, 1); found {value!r}")
        if name in BELOW_HALF and not value < 0.5:
            raise PinnzoError(f"{where}: expected a number in (0, 0.5); found {value!r}")
        if name in UNIT_INTERVAL and not value <= 1:
            raise PinnzoError(f"{where}: expected a number in [0, 1]; found {value!r}")
        if name in ONE_TO_TWO and not 1 <= value <= 2:
            raise PinnzoError(f"{where}: expected a number in [1, 2]; found {value!r}")
        return value
    if not isinstance(value, str):
        raise PinnzoError(f"{where}: expected a string; found {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise PinnzoError(f"{where}: unknown value {value!r}; must be one of {', '.join(CHOICES[name])}")
    return value
