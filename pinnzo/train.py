"""The training loop: sampling, steps, evaluation, checkpoints, progress.

Data flows one way: Problem + Settings -> model, backend, PINNLoss ->
Objective -> optimizer steps -> evaluations -> the run folder:

    config.yaml    resolved settings, problem file and its sha256
    metrics.csv    one row per evaluation
    summary.json   final and best figures, wall time, versions
    model.pt       final state dict (torch.load(..., weights_only=True))
    best.pt        state dict of the best evaluated model
    checkpoint.pt  theta, optimizer state, every generator's state, metrics

Every random draw comes from a seeded torch.Generator saved in the
checkpoint, so a resumed run ends with exactly the numbers of an
uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from pinnzo.derivatives import make_backend
from pinnzo.errors import PinnzoError
from pinnzo.fileio import atomic_write
from pinnzo.nets import build_mlp
from pinnzo.optim import Objective, make_optimizer
from pinnzo.problem import Problem
from pinnzo.residual import PINNLoss, sample_batch
from pinnzo.settings import Settings

DTYPES = {"float32": torch.float32, "float64": torch.float64}
METRIC_FIELDS = ["step", "queries", "loss", "smoothed_loss", "val_mse", "val_rel_l2", "val_mse_raw",
                 "val_rel_l2_raw", "lr", "stage", "wall_s"]


BATCH_ROWS = 16384


class Diverged(PinnzoError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint of the last finished step was written."""


# ---------------------------------------------------------------- components

@dataclass
class Components:
    """Everything a run is built from, derived from (problem, settings)."""

    problem: Problem
    settings: Settings
    model: torch.nn.Module
    loss: PINNLoss
    objective: Objective
    optimizer: object
    dtype: torch.dtype
    device: torch.device


def build(problem: Problem, settings: Settings) -> Components:
    """Model, backend, loss, objective and optimizer for a run."""
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PinnzoError("--device cuda: CUDA is not available on this machine")
    dtype = DTYPES[settings.dtype]
    sizes = [problem.dim] + [settings.width] * settings.depth + [1]
    if settings.depth < 1 or settings.width < 1:
        raise PinnzoError("width and depth must be at least 1")
    model = build_mlp(sizes, settings.network, settings.activation, settings.rank,
                      shapes=tt_shapes(settings, sizes), dtype=dtype, seed=settings.seed).to(device)
    # memory: each network evaluation keeps about 3 activations per layer width
    row_bytes = 3 * sum(sizes) * torch.finfo(dtype).bits // 8
    budget = settings.memory_mb * 2**20
    probe = make_backend(settings, problem.dim)
    per_point = probe.evaluations_per_point(problem.atoms, problem.spatial, problem.dim)
    rows_per_query = per_point * (settings.batch + settings.condition_batch * len(problem.conditions))
    # batch parameter vectors only until a forward has BATCH_ROWS rows: beyond that
    # the GEMMs are already large and vmap only adds memory traffic (bench zo)
    queries_per_chunk = max(1, min(budget // max(1, rows_per_query * row_bytes),
                                   BATCH_ROWS // max(1, rows_per_query)))
    rows_per_chunk = max(4096, budget // row_bytes // queries_per_chunk)
    backend = make_backend(settings, problem.dim, rows_per_chunk)
    loss = PINNLoss(problem, backend)
    objective = Objective(model, loss, queries_per_chunk)
    return Components(problem, settings, model, loss, objective, make_optimizer(settings), dtype, device)


def tt_shapes(settings: Settings, sizes: list[int]) -> list | None:
    """Per-size factorisations from ``shapes`` = "input,hidden" (the output layer stays dense)."""
    if not settings.shapes:
        return None
    from pinnzo.nets import parse_shape

    try:
        given = [parse_shape(part) for part in settings.shapes.split(",")]
    except ValueError as error:
        raise PinnzoError(f"shapes: {error}") from None
    if len(given) != 2 or len(given[0]) != len(given[1]):
        raise PinnzoError(f"shapes: expected 'input,hidden' with equally many factors, e.g. 1x1x3x7,8x4x4x4; "
                          f"found {settings.shapes!r}")
    for shape, size, what in ((given[0], sizes[0], "input"), (given[1], sizes[1], "hidden")):
        if __import__("math").prod(shape) < size:
            raise PinnzoError(f"shapes: the {what} factors {'x'.join(map(str, shape))} do not cover {size}")
    return [given[0]] + [given[1]] * (len(sizes) - 2) + [None]


# ---------------------------------------------------------------- evaluation

@dataclass
class Validation:
    """A fixed validation set and its exact values."""

    X: torch.Tensor
    exact: torch.Tensor | None

    @classmethod
    def create(cls, problem: Problem, settings: Settings, dtype, device) -> "Validation":
        generator = torch.Generator().manual_seed(settings.seed + 3)
        X = problem.sample_interior(settings.eval_points, generator, dtype, device)
        exact = problem.exact_solution(X) if problem.has_exact else None
        return cls(X, exact)

    def errors(self, prediction: torch.Tensor) -> tuple[float, float]:
        """(MSE, relative L2) of a prediction against the exact solution."""
        if self.exact is None:
            return math.nan, math.nan
        difference = (prediction - self.exact).double()
        mse = difference.square().mean().item()
        return mse, (difference.norm() / self.exact.double().norm()).item()


def predict(components: Components, theta: torch.Tensor, X: torch.Tensor, smoothed: bool = True,
            chunk: int = 2000) -> torch.Tensor:
    """u at X (B,): the backend's prediction (smoothed for Stein) or the raw network + ansatz."""
    network = components.objective.network(theta)
    with torch.no_grad():
        parts = []
        for block in torch.split(X, chunk):
            if smoothed:
                parts.append(components.loss.predict(network, block))
            else:
                parts.append(components.problem.solution(network)(block))
        return torch.cat(parts)


# ---------------------------------------------------------------- run folder

def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_config(problem: Problem, settings: Settings) -> dict:
    """What config.yaml records; a resume must match it."""
    return {"problem": str(problem.path), "problem_name": problem.name,
            "problem_sha256": file_digest(problem.path), "settings": settings.as_dict()}


def numbered_run_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    path, suffix = base, 2
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return path


def default_run_dir(problem: Problem, settings: Settings, root: Path = Path("results")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return numbered_run_dir(root / problem.name / f"{stamp}-{settings.backend}-{settings.optimizer}")


def open_run_dir(run_dir: Path, config: dict, resume: bool) -> None:
    """Prepare a run folder: write config.yaml for a new run (refusing a non-empty
    folder), or check that a resumed run's saved config.yaml matches ``config``."""
    saved_path = run_dir / "config.yaml"
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise PinnzoError(f"--out {run_dir}: the folder exists and is not empty; choose another "
                              f"(or --resume it)")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(saved_path, yaml.safe_dump(config, sort_keys=False).encode())
        return
    if not (run_dir / "checkpoint.pt").is_file() or not saved_path.is_file():
        raise PinnzoError(f"--resume {run_dir}: no checkpoint.pt and config.yaml there; nothing to resume")
    saved = yaml.safe_load(saved_path.read_text())
    differences = []
    if saved.get("problem_sha256") != config.get("problem_sha256"):
        differences.append(f"problem file {config['problem']} differs from the one the run used ({saved.get('problem')})")
    for key, value in config["settings"].items():
        if saved.get("settings", {}).get(key) != value:
            differences.append(f"{key}: saved {saved.get('settings', {}).get(key)!r}, now {value!r}")
    if differences:
        raise PinnzoError(f"--resume {run_dir}: the configuration does not match the saved run: "
                          + "; ".join(differences))


def write_checkpoint(run_dir: Path, state, generators: dict, queries: int, started: float,
                     fields: list[str] = METRIC_FIELDS) -> None:
    """checkpoint.pt (the state with every generator's state) and metrics.csv, atomically."""
    state.elapsed = time.perf_counter() - started
    state.generators = {name: g.get_state() for name, g in generators.items()}
    state.queries = queries
    atomic_write(run_dir / "checkpoint.pt", _torch_bytes(vars(state)))
    _write_metrics(run_dir / "metrics.csv", state.metrics, fields)


# ---------------------------------------------------------------- progress

class Progress:
    """A one-line live progress display on stderr (a line per evaluation when not a terminal)."""

    def __init__(self, total: int, quiet: bool, stream=None, metric: str = "val rel-L2"):
        self.total, self.quiet, self.metric = total, quiet, metric
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.perf_counter()
        self.first_step = None
        self.last_draw = 0.0

    def update(self, step: int, loss: float, queries: int, error: float | None, force: bool = False):
        if self.quiet:
            return
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step, self.started = step, now
        if self.live and not force and now - self.last_draw < 0.2:
            return
        self.last_draw = now
        done = step + 1 - self.first_step
        eta = (now - self.started) / max(done, 1) * (self.total - step - 1)
        width = 24
        filled = int(width * (step + 1) / self.total)
        bar = "#" * filled + "-" * (width - filled)
        text = f"[{bar}] step {step + 1}/{self.total}  loss {loss:.3e}  "
        if error is not None and not math.isnan(error):
            text += f"{self.metric} {error:.4g}  "
        text += f"queries {queries:,}  ETA {eta:5.0f}s"
        if self.live:
            self.stream.write("\r" + text + "\033[K")
        elif force:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str):
        if not self.quiet:
            self.stream.write(("\n" if self.live else "") + text + "\n")
            self.stream.flush()

    def close(self):
        if self.live and not self.quiet:
            self.stream.write("\n")


# ---------------------------------------------------------------- the loop

@dataclass
class TrainState:
    """What a checkpoint holds."""

    theta: torch.Tensor
    optimizer: dict
    step: int = 0  # next step to run
    queries: int = 0
    metrics: list = field(default_factory=list)
    best_theta: torch.Tensor | None = None
    best_error: float = math.inf
    smoothed_loss: float = math.nan
    elapsed: float = 0.0
    events: list = field(default_factory=list)
    generators: dict = field(default_factory=dict)


def train(problem: Problem, settings: Settings, run_dir: Path, resume: bool = False, quiet: bool = False,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Run (or continue) training in ``run_dir``; returns the summary.

    ``on_step(step)`` is called after every finished step (tests use it to
    interrupt a run).
    """
    components = build(problem, settings)
    config = run_config(problem, settings)
    run_dir = Path(run_dir)
    open_run_dir(run_dir, config, resume)

    generators = {name: torch.Generator().manual_seed(settings.seed + offset)
                  for name, offset in (("points", 0), ("zo", 1), ("stein", 2))}
    objective, optimizer = components.objective, components.optimizer
    if resume:
        saved = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location=components.device)
        state = TrainState(**saved)
        for name, generator in generators.items():
            generator.set_state(state.generators[name])
    else:
        theta = objective.flatten()
        state = TrainState(theta=theta, optimizer=optimizer.init(theta))
    objective.queries = state.queries
    validation = Validation.create(problem, settings, components.dtype, components.device)
    progress = Progress(settings.steps, quiet)
    progress.message(f"pinnzo solve {problem.name}: {components.loss.backend.describe()}; "
                     f"{settings.optimizer}; {settings.network} {settings.width}x{settings.depth} "
                     f"({objective.dim:,} parameters); {settings.steps} steps of {settings.batch} points")
    started = time.perf_counter() - state.elapsed
    saved_step = [state.step]

    def checkpoint():
        saved_step[0] = state.step
        write_checkpoint(run_dir, state, generators, objective.queries, started)

    def evaluate(step: int, info_loss: float, stage: str, lr: float):
        smooth_mse, smooth_rel = validation.errors(predict(components, state.theta, validation.X, True))
        raw_mse, raw_rel = (smooth_mse, smooth_rel) if not components.loss.backend.smoothed else \
            validation.errors(predict(components, state.theta, validation.X, False))
        row = {"step": step + 1, "queries": objective.queries, "loss": info_loss,
               "smoothed_loss": state.smoothed_loss, "val_mse": smooth_mse, "val_rel_l2": smooth_rel,
               "val_mse_raw": raw_mse, "val_rel_l2_raw": raw_rel, "lr": lr, "stage": stage,
               "wall_s": time.perf_counter() - started}
        state.metrics.append(row)
        score = smooth_rel if not math.isnan(smooth_rel) else info_loss
        if score < state.best_error:
            state.best_error, state.best_theta = score, state.theta.clone()
        return smooth_rel

    from pinnzo.optim import learning_rate

    error = state.metrics[-1]["val_rel_l2"] if state.metrics else None
    try:
        for step in range(state.step, settings.steps):
            batch = sample_batch(problem, settings.batch, settings.condition_batch, generators["points"],
                                 components.dtype, components.device)
            components.loss.backend.refresh(generators["stein"])
            objective.batch = batch
            theta, optimizer_state, info = optimizer.step(step, state.theta, state.optimizer, objective,
                                                          generators["zo"])
            if not math.isfinite(info.loss) or not torch.isfinite(theta).all():
                raise Diverged(f"the loss became {info.loss} at step {step + 1}; stopped, the last good "
                               f"checkpoint (step {saved_step[0]}) is kept in {run_dir}")
            state.theta, state.optimizer, state.step = theta, optimizer_state, step + 1
            state.smoothed_loss = info.loss if math.isnan(state.smoothed_loss) else \
                0.95 * state.smoothed_loss + 0.05 * info.loss
            for event in info.events:
                state.events.append({"step": step + 1, "event": event})
                progress.message(event)
            last = step + 1 == settings.steps
            if (step + 1) % settings.eval_every == 0 or last or step == 0:
                error = evaluate(step, info.loss, info.stage, learning_rate(settings, step))
                checkpoint()
                progress.update(step, info.loss, objective.queries, error, force=True)
            else:
                progress.update(step, info.loss, objective.queries, error)
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        checkpoint()
        progress.message(f"interrupted after step {state.step}; continue with --resume {run_dir}")
        raise Interrupted(str(run_dir)) from None
    finally:
        progress.close()
    summary = finish(components, state, validation, run_dir, started)
    return summary


def _write_metrics(path: Path, rows: list[dict], fields: list[str] = METRIC_FIELDS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, buffer.getvalue().encode())


def _state_dict(components: Components, theta: torch.Tensor) -> dict:
    components.objective.load(theta)
    return {k: v.detach().cpu().clone() for k, v in components.model.state_dict().items()}


def finish(components: Components, state: TrainState, validation: Validation, run_dir: Path,
           started: float) -> dict:
    """Write model.pt, best.pt and summary.json; return the summary."""
    settings, problem = components.settings, components.problem
    best_theta = state.best_theta if state.best_theta is not None else state.theta
    best_mse, best_rel = validation.errors(predict(components, best_theta, validation.X, True))
    final = state.metrics[-1]
    atomic_write(run_dir / "best.pt", _torch_bytes(_state_dict(components, best_theta)))
    atomic_write(run_dir / "model.pt", _torch_bytes(_state_dict(components, state.theta)))
    losses = [row["loss"] for row in state.metrics]
    summary = {
        "problem": problem.name, "problem_file": str(problem.path),
        "backend": settings.backend, "backend_description": components.loss.backend.describe(),
        "prediction": ("smoothed model E f(x + delta) (Stein backend), as in the paper; raw network "
                       "errors are the *_raw fields") if components.loss.backend.smoothed else "network output",
        "optimizer": settings.optimizer, "network": settings.network, "width": settings.width,
        "depth": settings.depth, "rank": settings.rank, "activation": settings.activation,
        "parameters": components.objective.dim,
        "parameters_per_layer": [list(row) for row in components.model.parameter_table()],
        "steps": state.step, "total_queries": components.objective.queries,
        "queries_per_step": components.objective.queries / max(1, state.step),
        "final_loss": final["loss"], "best_loss": min(losses),
        "final_mse": final["val_mse"], "final_rel_l2": final["val_rel_l2"],
        "final_mse_raw": final["val_mse_raw"], "final_rel_l2_raw": final["val_rel_l2_raw"],
        "best_mse": best_mse, "best_rel_l2": best_rel,
        "eval_points": settings.eval_points, "events": state.events,
        "wall_time_s": time.perf_counter() - started, "device": str(components.device),
        "dtype": settings.dtype, "seed": settings.seed,
        "versions": {"pinnzo": _version(), "torch": torch.__version__, "python": platform.python_version()},
        "status": "finished",
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _version() -> str:
    from pinnzo import __version__

    return __version__


# ---------------------------------------------------------------- reading runs

REQUIRED_RUN_FILES = ("config.yaml", "summary.json", "metrics.csv", "model.pt")


@dataclass
class LoadedRun:
    """A finished run folder, with the model rebuilt."""

    path: Path
    config: dict
    summary: dict
    metrics: list[dict]
    components: Components
    theta: torch.Tensor

    @property
    def problem(self) -> Problem:
        return self.components.problem


def load_run(run_dir: Path | str) -> LoadedRun:
    """Read a run folder and rebuild its trained model; PinnzoError when incomplete."""
    from pinnzo.problem import load_problem

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PinnzoError(f"{run_dir}: no such run folder")
    missing = [name for name in REQUIRED_RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        hint = " (the run did not finish: continue it with pinnzo solve ... --resume)" \
            if (run_dir / "checkpoint.pt").is_file() else ""
        raise PinnzoError(f"{run_dir}: not a finished pinnzo run: missing {', '.join(missing)}{hint}")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        with open(run_dir / "metrics.csv") as file:
            metrics = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(file)]
        settings = Settings().replace(config["settings"], f"{run_dir / 'config.yaml'}: settings.")
        problem_path = Path(config["problem"])
    except (yaml.YAMLError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise PinnzoError(f"{run_dir}: run files from an older or damaged format ({type(error).__name__}: "
                          f"{error})") from None
    if not problem_path.is_file():
        raise PinnzoError(f"{run_dir}: the run's problem file {problem_path} is missing")
    if file_digest(problem_path) != config.get("problem_sha256"):
        raise PinnzoError(f"{run_dir}: the problem file {problem_path} changed after the run")
    if not metrics:
        raise PinnzoError(f"{run_dir}: metrics.csv has no rows")
    problem = load_problem(problem_path)
    components = build(problem, settings.replace({"device": "cpu"}))
    state = torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu")
    try:
        components.model.load_state_dict(state)
    except RuntimeError as error:
        raise PinnzoError(f"{run_dir}: model.pt does not match config.yaml ({str(error).splitlines()[0]})") from None
    return LoadedRun(run_dir, config, summary, metrics, components, components.objective.flatten())


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
