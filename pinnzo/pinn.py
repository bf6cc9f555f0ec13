"""PINN solves: Problem + Settings -> network, backend, loss, objective, optimizer -> a trained Run.

    problem = load_problem("problems/hjb20.yaml")
    run = solve(problem, backend="sparse-grid", optimizer="zo-signrge", steps=200, out="results/x")
    run.summary["final_rel_l2"]; run.predict(X)
    run = load_run("results/x")

``solve`` drives the one training loop (loop.py) with a ``PINNTask``; the run
folder is written by runs.py. A ``Run`` holds the trained model, so plots need
no rebuilding after a solve.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import torch

from pinnzo import loop, pilots, runs
from pinnzo.adaptive import Adaptivity, PointGrowth
from pinnzo.atoms import VALUE
from pinnzo.derivatives import BACKENDS, make_backend, plan_chunks
from pinnzo.derivatives.finite_difference import FiniteDifference
from pinnzo.errors import PinnzoError
from pinnzo.nets import build_mlp, parse_shape
from pinnzo.optim import FIXED_POINTS, LEAST_SQUARES, OPTIMIZERS, Objective, StepInfo, make_optimizer
from pinnzo.optim.coordinates import row_bytes
from pinnzo.optim.gauss_newton import GaussNewton
from pinnzo.problem import Problem, load_problem
from pinnzo.residual import Batch, PINNLoss, sample_batch
from pinnzo.settings import Settings, block_keys
from pinnzo.unknowns import ForwardFinish, WithUnknowns, unknown_values

DTYPES = {"float32": torch.float32, "float64": torch.float64}
METRIC_FIELDS = ["step", "queries", "loss", "smoothed_loss", "val_mse", "val_rel_l2", "val_mse_raw",
                 "val_rel_l2_raw", "lr", "stage", "wall_s"]


def resolve_settings(problem: Problem, changes: Mapping[str, Any] = (), prefix: str = "") -> Settings:
    """Defaults < the optimizer's defaults < the problem's solve: block < ``changes``; backend and
    optimizer names checked; dtype "auto" made concrete for the optimizer. A block written for an
    optimizer with other defaults gives way to the run's optimizer's defaults (settings.block_keys)."""
    changes = dict(changes)
    settings = Settings().replace(problem.solve).replace(changes, prefix)
    OPTIMIZERS[settings.optimizer]  # one "must be one of" error
    settings = settings.with_optimizer_defaults({*block_keys(problem.solve, settings.optimizer), *changes})
    BACKENDS[settings.backend]
    return settings.concrete()


def _block_set_aside(block: Mapping[str, Any], settings: Settings) -> str:
    """A note naming the settings of a solve: block written for another optimizer that this run does
    not use (its optimizer's own defaults, or flags, replaced them); empty when there are none."""
    holding, written = block_keys(block, settings.optimizer), Settings().replace(block)
    changed = [f"{key} {getattr(written, key)}" for key in block
               if key not in holding and getattr(settings, key) != getattr(written, key)]
    if not changed:
        return ""
    return (f"\nnote: the file's solve: block is written for {block['optimizer']}, so this {settings.optimizer} run "
            f"does not take its {', '.join(changed)} ({settings.optimizer}'s defaults or the flags instead)")


def resample_period(settings: Settings) -> int:
    """Steps between fresh points: ``resample_every``, or automatically 1 for the gradient methods, 100
    for L-BFGS (its curvature history wants one problem) and 20 for Gauss-Newton (a few steps solve one
    point set's least squares; more point sets generalise better: docs/method.md)."""
    if settings.resample_every:
        return settings.resample_every
    if settings.optimizer in LEAST_SQUARES:
        return 20
    return 100 if settings.optimizer in FIXED_POINTS else 1


def device_of(name: str) -> torch.device:
    """torch.device(name), refusing CUDA on a machine without it."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PinnzoError("--device cuda: CUDA is not available on this machine")
    return device


# ---------------------------------------------------------------- components

@dataclass
class Components:
    """Everything a run is built from, derived from (problem, settings)."""

    problem: Problem
    settings: Settings
    model: torch.nn.Module
    loss: PINNLoss
    objective: Objective
    dtype: torch.dtype
    device: torch.device

    def unknowns(self, theta: torch.Tensor) -> dict[str, float]:
        """Name -> value of the problem's unknowns at theta ({} for a forward problem)."""
        k = self.objective.unknowns
        if not k:
            return {}
        return {name: float(value) for name, value in unknown_values(self.problem.unknowns, theta[-k:].double()).items()}

    def predict(self, theta: torch.Tensor, X: torch.Tensor, smoothed: bool = True, chunk: int = 2000) -> torch.Tensor:
        """u at X (B,): the backend's prediction (smoothed for Stein) or the raw network + ansatz."""
        network = self.objective.network(theta)
        with torch.no_grad():
            parts = []
            for block in torch.split(X.to(self.dtype), chunk):
                if smoothed:
                    parts.append(self.loss.predict(network, block))
                else:
                    parts.append(self.problem.solution(network)(block))
            return torch.cat(parts)


def memory_estimates(problem: Problem, settings: Settings, per_point: int | None) -> dict[str, float]:
    """Bytes the largest single allocations of a run need, by the setting that drives each (the
    batch's only once ``per_point``, the backend's evaluations per point, is known)."""
    value = torch.finfo(DTYPES[settings.dtype]).bits // 8
    rows = residual_rows(problem, settings)
    d = problem.dim * settings.width + settings.width**2 * (settings.depth - 1) + settings.width
    return {
        "width": 3.0 * value * (problem.dim * settings.width + settings.width**2),  # a dense W (TT rebuilds it)
        "depth": 3.0 * value * settings.width**2 * settings.depth,
        "rank": 4.0 * value * settings.rank**2 * settings.width if settings.network == "tt" else 0.0,  # TT cores
        "batch": 2.0 * value * rows * (per_point or 0) * (problem.dim + settings.width),  # stencil + activations
        "condition_batch": 2.0 * value * rows * (per_point or 0) * (problem.dim + settings.width),
        "eval_points": 4.0 * value * settings.eval_points * problem.dim,
        "directions": 8.0 * settings.directions * d,  # RGE's (N, d) directions
        "samples": 16.0 * settings.samples * problem.dim if settings.backend == "stein" else 0.0,
    }


def residual_rows(problem: Problem, settings: Settings) -> int:
    """Points of one step: the batch, condition_batch per condition, every row of each data file."""
    return settings.batch + sum(len(c.data.points) if c.data is not None else settings.condition_batch
                                for c in problem.conditions)


def check_memory(problem: Problem, settings: Settings, per_point: int | None = None) -> None:
    """Refuse, before allocating anything, a run whose single allocations would not fit in memory."""
    limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2
    for setting, needed in memory_estimates(problem, settings, per_point).items():
        if needed > limit:
            raise PinnzoError(f"{setting}: {getattr(settings, setting):,} needs about {needed / 2**30:,.1f} GiB at "
                              f"once (more than half of this machine's {2 * limit / 2**30:.0f} GiB); use a "
                              f"smaller {setting}")


def build(problem: Problem, settings: Settings) -> Components:
    """Model, backend, loss and objective for a run, within the settings' memory budget."""
    device = device_of(settings.device)
    dtype = DTYPES[settings.dtype]
    sizes = [problem.dim] + [settings.width] * settings.depth + [1]
    check_memory(problem, settings)  # before the backend draws its samples
    backend = make_backend(settings, problem.dim)
    per_point = backend.evaluations_per_point(problem.atoms, problem.spatial, problem.dim)
    check_memory(problem, settings, per_point)
    model = build_mlp(sizes, settings.network, settings.activation, settings.rank,
                      shapes=tt_shapes(settings, sizes), dtype=dtype, seed=settings.seed,
                      input_map=input_map(problem))
    if problem.unknowns:  # an inverse problem: the unknowns are trained with the network
        model = WithUnknowns(model, problem.unknowns)
    model = model.to(device)
    plan = plan_chunks(per_point * residual_rows(problem, settings), sizes, dtype, settings.memory_mb)
    backend.rows_per_chunk = plan.rows_per_chunk
    loss = PINNLoss(problem, backend, condition_scale(problem, settings))
    output_layer(model).scale_output(output_scale(problem, settings, model))
    layered_rows = settings.memory_mb * 2**20 // row_bytes(sizes, dtype)  # the layered queries' rows at once
    objective = Objective(model, loss, plan.queries_per_chunk, layered_rows=layered_rows)
    return Components(problem, settings, model, loss, objective, dtype, device)


def condition_scale(problem: Problem, settings: Settings) -> float:
    """The factor of every condition's weight: ``condition_scale`` when given (> 0), else the gain of the
    equation's highest derivatives on the domain's longest waves (docs/problems.md): over its
    derivatives of order 2 to 4, the largest product over their axes of 2 pi / (the axis's length)
    (for the Laplacian the largest (2 pi / L)^2 over the spatial axes), at least 1.

    The equation's rows are about that gain times u's size, the conditions' rows about u's size, and
    only the conditions see the operator's kernel (a fourth-order one's: the cubics, in 1-D), so with
    weight 1 the conditions are fitted last. Measured at 120 s with zo-gn's defaults, weight 1 ->
    automatic: clamped plate 3.3e-2 -> 5.0e-4, Kuramoto-Sivashinsky 2.9e-4 -> 4.5e-5, helmholtz2d
    1.3e-4 -> 5.1e-5, layer2d 5.1e-4 -> 1.4e-4; KdV on [-6, 6] (gain 0.14, so 1) did worse weighted
    1000 (6.7e-6 -> 2.4e-4 in 60 s)."""
    if settings.condition_scale > 0:
        return settings.condition_scale
    wave = [2 * math.pi / (high - low) for low, high in zip(problem.lows, problem.highs)]
    gains = [max(wave[i] ** 2 for i in problem.spatial) if atom.kind == "lap"
             else math.prod(wave[i] for i in atom.index) for atom in problem.atoms if atom.order >= 2]
    return max([1.0, *gains])


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The network's last (dense) layer, under the unknowns' wrapper of an inverse problem."""
    return getattr(model, "network", model).layers[-1]


def output_scale(problem: Problem, settings: Settings, model: torch.nn.Module) -> float:
    """The factor s of the network's output layer, u = s (W h + b): ``settings.output_scale``, or for
    0 the solution's size estimated from the file, so that the network works at the size of its
    initialisation. A solution of 1e-4 learnt by an O(1) network is a small difference of O(1)
    values: its rounding, amplified by a stencil, then floors the fit (relative L2 2e-3 where the
    same problem at size 1 reaches 1.5e-5), and the hidden layers' Jacobian columns shrink with the
    output layer (docs/method.md, "The solution's size").

    The estimate: the largest RMS of the values the Dirichlet, initial and terminal conditions and the
    measured data prescribe (256 points each, a fixed generator); without one above 1e-10 (zero data,
    a Neumann problem), the equation's: |r[0]| |N0| / |r[N0] - r[0]| with r the residual at 256 points
    for u = 0 and for the initial network N0, which is the size of u that a linear equation's source
    asks for. Snapped to a power of ten, and 1 within a factor of 10^1.5 (the network's size for O(1)
    solutions: every shipped problem) or with an ansatz (whose network is a correction of unknown size)."""
    if settings.output_scale:
        return settings.output_scale
    if problem.ansatz is not None:
        return 1.0
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    sizes = [_rms(values) for values in _prescribed_values(problem, generator, dtype)]
    size = max(sizes, default=0.0)
    if not size > 1e-10:
        size = _equation_size(problem, model, generator, dtype)
    if not (math.isfinite(size) and size > 0):
        return 1.0
    power = round(math.log10(size))
    return 10.0 ** power if abs(math.log10(size)) >= 1.5 else 1.0


def _rms(values: torch.Tensor) -> float:
    return values.double().square().mean().sqrt().item() if values.numel() else 0.0


def _prescribed_values(problem: Problem, generator: torch.Generator, dtype) -> list[torch.Tensor]:
    """The values of u the conditions prescribe: Dirichlet, initial and terminal values at 256 of their
    points, and the measured data of u itself."""
    values = []
    for condition in problem.conditions:
        if condition.kind == "measured" and condition.atoms == {VALUE}:
            values.append(condition.data.values)
        elif condition.kind == "dirichlet":
            target = problem.condition_target(condition, problem.sample_condition(condition, 256, generator, dtype)[0])
            values += [] if target is None else [target]
    return values


def _equation_size(problem: Problem, model: torch.nn.Module, generator, dtype) -> float:
    """|r[0]| |N0| / |r[N0] - r[0]| at 256 interior points (RMS): the equation's residual for u = 0
    (its source) over its change for the initial network N0, times N0's size; derivatives by finite
    differences whatever the run's backend (a Monte-Carlo Stein estimate with few samples is noisy)."""
    network = getattr(model, "network", model)
    X = problem.sample_interior(256, generator, dtype, next(network.parameters()).device)
    loss = PINNLoss(problem, FiniteDifference())
    with torch.no_grad():
        zero = loss.interior_residual(lambda Y: network(Y) * 0, X)
        initial = loss.interior_residual(network, X)
        change = _rms(initial - zero)
        return _rms(zero) * _rms(network(X)) / change if change > 0 else 0.0


def input_map(problem: Problem) -> tuple[list[float], list[float]] | None:
    """The network's shift c and factor s per input, (x - c) s, from its interval [a, b] (the domain's
    bounding box, then time): the least change that puts the interval inside [-1, 1]. The factor is
    1 / max(1, (b - a) / 2), then the shift the smallest |c| with a - c >= -1 / s and b - c <= 1 / s.
    A domain in physical units (a price up to 300, a time up to 10, x in [100, 101]) would otherwise
    saturate the first layer's tanh or sin units, or reach them as a narrow band. None when every
    interval lies in [-1, 1] already (the network of a unit domain is unchanged)."""
    shifts, scales = [], []
    for low, high in zip(problem.lows, problem.highs):
        reach = max(1.0, (high - low) / 2)
        shifts.append(min(max(0.0, high - reach), low + reach))
        scales.append(1 / reach)
    return None if all(c == 0 for c in shifts) and all(s == 1 for s in scales) else (shifts, scales)


def tt_shapes(settings: Settings, sizes: list[int]) -> list | None:
    """Per-size factorisations from ``shapes`` = "input,hidden" (the output layer stays dense)."""
    if not settings.shapes:
        return None
    try:
        given = [parse_shape(part) for part in settings.shapes.split(",")]
    except ValueError as error:
        raise PinnzoError(f"shapes: {error}") from None
    if len(given) != 2 or len(given[0]) != len(given[1]):
        raise PinnzoError(f"shapes: expected 'input,hidden' with equally many factors, e.g. 1x1x3x7,8x4x4x4; "
                          f"found {settings.shapes!r}")
    for shape, size, what in ((given[0], sizes[0], "input"), (given[1], sizes[1], "hidden")):
        if math.prod(shape) < size:
            raise PinnzoError(f"shapes: the {what} factors {'x'.join(map(str, shape))} do not cover {size}")
    return [given[0]] + [given[1]] * (len(sizes) - 2) + [None]


@dataclass
class Validation:
    """A fixed validation set and its exact values."""

    X: torch.Tensor
    exact: torch.Tensor | None

    @classmethod
    def create(cls, problem: Problem, settings: Settings, dtype, device) -> "Validation":
        generator = torch.Generator().manual_seed(settings.seed + 3)
        X = problem.sample_interior(settings.eval_points, generator, dtype, device)
        return cls(X, problem.exact_solution(X) if problem.has_exact else None)

    def errors(self, prediction: torch.Tensor) -> tuple[float, float]:
        """(MSE, relative L2) of a prediction against the exact solution."""
        if self.exact is None:
            return math.nan, math.nan
        difference = (prediction - self.exact).double()
        return difference.square().mean().item(), (difference.norm() / self.exact.double().norm()).item()


# ---------------------------------------------------------------- the task

def gn_tolerance(settings: Settings) -> float:
    """The Gauss-Newton optimizers' convergence test (loss below gn_tolerance times the first): only
    for a run without a time budget. A budgeted run trains to its budget, or to its rounding floor
    (the stall rule, optim/gauss_newton.py): the loss below 1e-10 of its first value still left
    70x in the error on burgers1d (2.5e-6 at the test, 3.5e-8 at 300 s)."""
    return 0.0 if settings.time_budget else settings.gn_tolerance


class PINNTask:
    """A PINN solve as a task of the training loop."""

    kind = "pinn"
    progress_metric = ("val rel-L2", "val_rel_l2")

    def __init__(self, components: Components, choice: dict | None = None):
        self.components, self.choice = components, choice  # choice: the pilots' record (activation auto)
        self.settings, self.problem = components.settings, components.problem
        self.objective, self.device, self.steps = components.objective, components.device, self.settings.steps
        self.time_budget = self.settings.time_budget
        self.resample_every = resample_period(self.settings)
        self.optimizer = make_optimizer(self.settings.optimizer, **{
            **self.settings.as_dict(), "resample_every": self.resample_every,
            "gn_tolerance": gn_tolerance(self.settings),
            "rounding_gain": components.loss.backend.rounding_gain(components.dtype, components.loss.atoms)})
        self.validation = Validation.create(self.problem, self.settings, components.dtype, components.device)
        self.batch, self.stein_state = None, None  # the step's points (all ranks' when distributed)
        self.world = components.objective.world
        self.adaptivity = Adaptivity(self.settings, components.loss, self.objective, self.resample_every)
        self.growth = PointGrowth(self.settings.grow_points, self.settings.max_growth)
        self.forward_finish = ForwardFinish.create(self.problem, self.settings, self.resample_every)
        self.events: list[str] = []  # the growths of the points since the loop last took them
        # the adaptive draws get a generator of their own, so that the uniform draws stay those of a plain run
        self.generator_names = ("points", "zo", "stein") + (("adaptive",) if self.adaptivity.active else ())
        self.metric_fields = (METRIC_FIELDS + [unknown.name for unknown in self.problem.unknowns]
                              + self.adaptivity.metric_fields())

    def describe(self) -> str:
        s = self.settings
        text = (f"pinnzo solve {self.problem.name}: {self.components.loss.backend.describe()}; {s.optimizer}; "
                f"{s.network} {s.width}x{s.depth} {s.activation}{' (chosen by pilots)' if self.choice else ''} "
                f"({self.objective.dim:,} parameters); {s.steps} steps of "
                f"{s.batch} points{self.adaptivity.describe()}")
        if input_map(self.problem) is not None:
            text += "; inputs mapped into [-1, 1]"
        scale = output_layer(self.components.model).output_scale
        if scale is not None:
            text += f"; output scaled by {scale.item():g}"
        measured = [condition.kind == "measured" for condition in self.problem.conditions]
        if self.components.loss.condition_scale != 1 and not all(measured):
            text += f"; conditions' weights x {self.components.loss.condition_scale:.4g}"
            text += " (not the data's)" if any(measured) else ""
        text += _block_set_aside(self.problem.solve, s)
        text += self.forward_finish.describe() if self.forward_finish is not None else ""
        residuals = residual_rows(self.problem, s)
        if s.optimizer in LEAST_SQUARES and residuals < self.objective.dim:
            text += (f"\nwarning: {residuals:,} residuals for {self.objective.dim:,} parameters: the least-squares "
                     f"problem is underdetermined and the fit may be exact at the points and wrong between them; "
                     f"raise batch / condition_batch")
        order = max(atom.order for atom in self.components.loss.atoms)
        if order > 2 and self.components.loss.backend.smoothed:
            rule = f"level {s.level}" if s.backend == "sparse-grid" else f"{s.samples} samples"
            text += (f"\nwarning: derivatives of order {order} by a Stein estimator need a rule exact to a high degree "
                     f"(sparse-grid level 5 or more) or very many samples (this run: {rule}); "
                     f"--backend fd or ad are accurate there")
        return text

    def sample(self, step: int, generators, theta: torch.Tensor, done: float = 0.0):
        """Fresh points (and Monte-Carlo Stein samples) every ``resample_every`` steps; the same ones
        in between, so that second-order methods see one least-squares problem. The fresh points
        double when theta fitted the last ones rather than the PDE (``grow_points``; adaptive.PointGrowth).
        With adaptivity on, a fresh batch gets RAD's interior points and new term weights at ``theta``
        (adaptive.py). Once an inverse problem's forward finish starts (``done``: the share of the run
        behind; unknowns.ForwardFinish), every batch holds the unknowns and weighs the data down."""
        if self.forward_finish is not None and self.forward_finish.starts(done, theta, step):  # at a resample
            self.events.append(self.forward_finish.started_text())
        if self.batch is None or step % self.resample_every == 0:
            c, fitted = self.components, self._mine if self.batch is not None else None
            self.batch = self._draw(generators["points"])
            if fitted is not None and self.growth.can_grow():
                self._grow(fitted, theta, generators["points"])
            self.stein_state = generators["stein"].get_state()
            c.loss.backend.refresh(generators["stein"])
            if self.adaptivity.active:
                self.batch = self.adaptivity.adapt(self.batch, theta, generators["adaptive"], step)
            self._set_batch(self.batch)
        return self._mine

    def _set_batch(self, batch: Batch) -> None:
        """Make ``batch`` (freshly drawn or adapted) the step's, with the forward finish's changes once it holds."""
        self.batch = self.forward_finish.apply(batch) if self.forward_finish is not None else batch
        self._mine = self._shard(self.batch)

    def constrain(self, theta: torch.Tensor) -> torch.Tensor:
        """theta with the held unknowns in their coordinates during a forward finish (the loss no longer
        depends on them, so an optimizer with momentum or random directions might move them)."""
        return self.forward_finish.constrain(theta) if self.forward_finish is not None else theta

    def _draw(self, generator: torch.Generator) -> Batch:
        """Uniform points: batch and condition_batch times the growth factor."""
        s, c, factor = self.settings, self.components, self.growth.factor
        return sample_batch(self.problem, s.batch * factor, s.condition_batch * factor, generator, c.dtype, c.device)

    def _shard(self, batch: Batch) -> Batch:
        return batch.shard(self.world) if self.world.sharded else batch

    def _grow(self, fitted: Batch, theta: torch.Tensor, generator: torch.Generator) -> None:
        """Double the fresh batch when its loss at theta exceeds grow_points times the loss on the
        points just fitted, ``fitted`` (both with the fitted points' term weights, and without the
        points' L_p weights); not beyond what the Gauss-Newton Jacobian can hold in memory_mb."""
        fitted = dataclasses.replace(fitted, point_weights=None)
        fresh = self._shard(dataclasses.replace(self.batch, weights=fitted.weights))
        before, after = (self.objective.loss(theta, batch).item() for batch in (fitted, fresh))
        if not self.growth.overfitted(before, after):
            return
        grown = self.batch.join(self._draw(generator), tuple(c.data is not None for c in self.problem.conditions))
        if isinstance(self.optimizer, GaussNewton) and not self.optimizer.fits(self.objective, theta,
                                                                               self._shard(grown)):
            self.growth.limit = self.growth.factor
            self.events.append(f"points: kept at {len(self.batch.interior):,} interior points, although the loss "
                               f"on fresh ones is {after / before:.1f}x that on the fitted ones: twice as many "
                               f"would not fit in memory_mb = {self.settings.memory_mb}")
            return
        self.batch, self.growth.factor = grown, 2 * self.growth.factor
        s, factor = self.settings, self.growth.factor
        self.events.append(f"points: {s.batch * factor:,} interior and {s.condition_batch * factor:,} per condition "
                           f"from now on (the loss on fresh points, {after:.3e}, is {after / before:.1f}x that on "
                           f"the fitted ones, and fell by less than half since the last resample)")

    def take_events(self) -> list[str]:
        events, self.events = self.events, []
        return events

    def should_evaluate(self, step: int) -> bool:
        return (step + 1) % self.settings.eval_every == 0 or step + 1 == self.steps or step == 0

    def errors(self, theta: torch.Tensor) -> tuple[float, float, float, float]:
        """(MSE, relative L2) of the backend's prediction, then of the raw network."""
        c = self.components
        smooth = self.validation.errors(c.predict(theta, self.validation.X, True))
        raw = self.validation.errors(c.predict(theta, self.validation.X, False)) if c.loss.backend.smoothed else smooth
        return (*smooth, *raw)

    def evaluate(self, theta, step: int, info: StepInfo, state) -> dict:
        mse, rel, mse_raw, rel_raw = self.errors(theta)
        return {"step": step + 1, "queries": state.queries, "loss": info.loss, "smoothed_loss": state.smoothed_loss,
                "val_mse": mse, "val_rel_l2": rel, "val_mse_raw": mse_raw, "val_rel_l2_raw": rel_raw,
                "lr": self.optimizer.schedule(step), "stage": info.stage,
                **self.adaptivity.metric_values(self.batch), **self.components.unknowns(theta)}

    def score(self, row: dict) -> float:
        return row["val_rel_l2"] if not math.isnan(row["val_rel_l2"]) else row["loss"]

    def refresh(self) -> bool:
        """Draw fresh points (and Stein samples) at the next step, off the resampling schedule."""
        self.batch = None
        return True

    def state_dict(self) -> dict:
        """The points in use (reused until the next resample) and the Stein generator before their draw."""
        saved = self.forward_finish.state_dict() if self.forward_finish is not None else {}
        if self.batch is None:
            return saved
        saved.update({"interior": self.batch.interior, "conditions": list(self.batch.conditions),
                      "stein_state": self.stein_state, "growth": self.growth.state_dict(),
                      "weights": self.batch.weights, "point_weights": self.batch.point_weights})
        if self.adaptivity.active:
            saved["adaptivity"] = self.adaptivity.state_dict()
        return saved

    def load_state_dict(self, saved: dict) -> None:
        if self.forward_finish is not None:
            self.forward_finish.load_state_dict(saved)
        if "interior" in saved:
            self.batch = Batch(saved["interior"], tuple(tuple(pair) for pair in saved["conditions"]),
                               weights=saved.get("weights"), point_weights=saved.get("point_weights"),
                               held_unknowns=saved.get("held_unknowns"))
            self._mine = self._shard(self.batch)
            self.stein_state = saved["stein_state"]
            self.growth.load_state_dict(saved.get("growth", {}))
            self.adaptivity.load_state_dict(saved.get("adaptivity", {}))
            self.components.loss.backend.refresh(torch.Generator().set_state(self.stein_state))

    def finish(self, state, run_dir: Path) -> dict:
        """model.pt, best.pt and the summary's PINN fields."""
        c, s = self.components, self.settings
        best_theta = state.best_theta if state.best_theta is not None else state.theta
        best_mse, best_rel = self.validation.errors(c.predict(best_theta, self.validation.X, True))
        runs.write_model(run_dir, runs.BEST, c.objective.state_dict(best_theta))
        runs.write_model(run_dir, runs.MODEL, c.objective.state_dict(state.theta))
        final = state.metrics[-1]
        backend = c.loss.backend
        return {
            "problem": self.problem.name, "problem_file": str(self.problem.path or ""),
            "backend": s.backend, "backend_description": backend.describe(),
            "prediction": ("smoothed model E f(x + delta) (Stein backend), as in the paper; raw network "
                           "errors are the *_raw fields") if backend.smoothed else "network output",
            "optimizer": s.optimizer, "network": s.network, "width": s.width, "depth": s.depth, "rank": s.rank,
            "activation": s.activation, "parameters": c.objective.dim,
            "parameters_per_layer": [list(row) for row in c.model.parameter_table()],
            "final_loss": final["loss"], "best_loss": min(row["loss"] for row in state.metrics),
            "final_mse": final["val_mse"], "final_rel_l2": final["val_rel_l2"],
            "final_mse_raw": final["val_mse_raw"], "final_rel_l2_raw": final["val_rel_l2_raw"],
            "best_mse": best_mse, "best_rel_l2": best_rel, "eval_points": s.eval_points,
            "dtype": s.dtype, "seed": s.seed, **self.inverse_summary(state.theta, best_theta),
            **({pilots.FOLDER: self.choice} if self.choice else {}),
        }

    def inverse_summary(self, theta: torch.Tensor, best_theta: torch.Tensor) -> dict:
        """The unknowns' final and best estimates (with their exact values and relative errors when the
        problem file states them), and each data term's RMS misfit in units of its noise level."""
        if not self.problem.unknowns and not self.problem.data_files:
            return {}
        c = self.components
        final, best = c.unknowns(theta), c.unknowns(best_theta)
        unknowns = {}
        for unknown in self.problem.unknowns:
            record = {"value": final[unknown.name], "best": best[unknown.name], "initial": unknown.initial,
                      "bounds": [b if math.isfinite(b) else None for b in (unknown.low, unknown.high)],
                      "exact": unknown.exact}
            if unknown.exact is not None and unknown.exact != 0:
                record["relative_error"] = abs(final[unknown.name] - unknown.exact) / abs(unknown.exact)
            unknowns[unknown.name] = record
        misfit = {}
        if self.batch is not None:
            with torch.no_grad():
                residuals = c.loss.residuals(c.objective.network(theta), self.batch)
            for condition in self.problem.conditions:
                if condition.data is not None:
                    residual = residuals[condition.name]
                    rms = residual.double().square().mean().sqrt().item()
                    noise = condition.data.noise
                    misfit[condition.name] = {"rms": rms, "noise": noise, "rms_over_noise": rms / noise if noise else None}
        return {"unknowns": unknowns, "data_misfit": misfit}


# ---------------------------------------------------------------- runs

@dataclass
class Run:
    """A finished PINN run: its folder's records and the trained model."""

    path: Path
    config: dict
    summary: dict
    metrics: list[dict]
    components: Components
    theta: torch.Tensor

    @property
    def problem(self) -> Problem:
        return self.components.problem

    @property
    def settings(self) -> Settings:
        return self.components.settings

    def predict(self, X: torch.Tensor, smoothed: bool = True) -> torch.Tensor:
        """The trained solution u at X (B, D) -> (B,) (smoothed for the Stein backends unless not
        ``smoothed``)."""
        return self.components.predict(self.theta, torch.as_tensor(X), smoothed)

    @cached_property
    def validation(self) -> Validation:
        return Validation.create(self.problem, self.settings, self.components.dtype, self.components.device)


def run_config(problem: Problem, settings: Settings) -> dict:
    """What config.yaml records besides the task; a resume must match it."""
    path = str(problem.path.resolve()) if problem.path is not None else None
    return {"problem": path, "problem_name": problem.name, "problem_sha256": problem_digest(problem),
            "settings": settings.as_dict()}


DATA_COPY = "data"  # the run folder's copies of the problem's data files


def problem_digest(problem: Problem) -> str:
    """sha256 of the problem's text, and of its data files when it has any."""
    if not problem.data_files:
        return runs.text_digest(problem.text)
    parts = [problem.text] + [f"{name}:{runs.bytes_digest(content)}" for name, content in problem.data_files.items()]
    return runs.text_digest("\n".join(parts))


def run_files(problem: Problem) -> dict[str, str | bytes]:
    """The files a run folder keeps besides its records: the problem and its data files."""
    return {runs.PROBLEM_COPY: problem.text,
            **{f"{DATA_COPY}/{name}": content for name, content in problem.data_files.items()}}


def default_run_dir(problem: Problem, settings: Settings, root: Path = Path("results")) -> Path:
    return runs.default_run_dir(problem.name, f"{settings.backend}-{settings.optimizer}", root)


def solve(problem: Problem | str | Path | Mapping, settings: Settings | None = None, *, out: str | Path | None = None,
          resume: bool = False, quiet: bool = True, callbacks=(), **changes) -> Run:
    """Train a PINN on ``problem`` and return the finished Run (its folder: ``out``, or
    results/<problem>/<time>-<backend>-<optimizer>).

    Settings: the problem's solve: block, then ``settings`` (a full Settings) if given,
    then keyword ``changes`` (any setting, e.g. steps=200, backend="fd").
    """
    if not isinstance(problem, Problem):
        problem = load_problem(problem)
    if settings is None:
        settings = resolve_settings(problem, changes)
    else:
        settings = settings.replace(changes).concrete()
        OPTIMIZERS[settings.optimizer], BACKENDS[settings.backend]
    run_dir = Path(out) if out is not None else default_run_dir(problem, settings)
    config = run_config(problem, settings)
    if settings.activation == pilots.AUTO:  # pilot runs choose it; the winner's run goes on (pilots.py)
        config[pilots.FOLDER] = pilots.choose(problem, settings, run_dir, resume, quiet, solve)
        resume = True
    components = build(problem, pilots.effective(settings, config.get(pilots.FOLDER)))
    task = PINNTask(components, config.get(pilots.FOLDER))
    summary, state = loop.train(task, run_dir, config, resume, quiet, callbacks,
                                files=run_files(problem), seed=settings.seed)
    return Run(run_dir, runs.read_config(run_dir), summary, state.metrics, components, state.theta)


SUMMARY_FIELDS = ("problem", "backend", "optimizer", "network", "parameters", "steps", "total_queries",
                  "wall_time_s", "final_mse", "final_rel_l2")


def load_run(run_dir: str | Path) -> Run:
    """Read a finished PINN run folder and rebuild its trained model; PinnzoError when incomplete."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PinnzoError(f"{run_dir}: no such run folder")
    config = runs.read_config(run_dir)
    if config.get("task", "pinn") != "pinn":
        raise PinnzoError(f"{run_dir}: a {config['task']} run; this command reads PINN runs (pinnzo solve) only")
    summary = runs.read_summary(run_dir, SUMMARY_FIELDS)
    metrics = runs.read_metrics(run_dir, ("step", "queries", "loss", "val_mse", "val_rel_l2"))
    problem = _run_problem(run_dir, config)
    try:
        settings = Settings().replace(config["settings"], f"{run_dir / runs.CONFIG}: settings.")
        settings = pilots.effective(settings, config.get(pilots.FOLDER))
    except PinnzoError as error:
        raise PinnzoError(f"{run_dir}: run files from an older or damaged format ({error})") from None
    components = build(problem, settings.replace({"device": "cpu"}))
    try:
        components.model.load_state_dict(runs.read_model(run_dir))
    except RuntimeError as error:
        raise PinnzoError(f"{run_dir}: model.pt does not match config.yaml ({str(error).splitlines()[0]})") from None
    return Run(run_dir, config, summary, metrics, components, components.objective.flatten())


def _run_problem(run_dir: Path, config: dict) -> Problem:
    """The run's problem: its copy in the folder, else (older runs) the recorded file, checked by sha256."""
    copy = run_dir / runs.PROBLEM_COPY
    source = copy if copy.is_file() else Path(str(config.get("problem")))
    if not source.is_file():
        raise PinnzoError(f"{run_dir}: the run's problem file {source} is missing")
    data = run_dir / DATA_COPY
    problem = load_problem(source, data if copy.is_file() and data.is_dir() else None)
    if config.get("problem_sha256") not in (problem_digest(problem), None):
        raise PinnzoError(f"{run_dir}: the problem file {source} changed after the run")
    return dataclasses.replace(problem, name=config.get("problem_name", problem.name))
