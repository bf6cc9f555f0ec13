"""The one training loop, for every task (PINN solves and MNIST).

A *task* says what is trained and how it is judged; the loop does the rest:

    task.sample(step, generators, theta, done) -> batch   the step's data (theta: the parameters now;
                                                    done: the share of the run behind, in [0, 1])
    task.optimizer.update(...)                      one step on task.objective
    task.constrain(theta) -> theta                  what the task holds fixed, restored
    task.should_evaluate(step) / task.evaluate(...) a metrics row now and then
    task.finish(state, run_dir) -> summary fields   model files and final figures

and the loop's own concerns are small named pieces: ``check_finite`` (stopping
on divergence), ``commit`` (the state after a finished step), ``Checkpointer``
(the run folder's checkpoint.pt and metrics.csv) and ``Progress`` (the live
display). Callbacks ``callback(step, state)`` run after every finished step.

Every random draw comes from a seeded torch.Generator whose state is part of
the committed state, so a run resumed after Ctrl-C or kill -9 ends with exactly
the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import yaml

from pinnzo import runs
from pinnzo.errors import PinnzoError
from pinnzo.fileio import make_folder
from pinnzo.optim import StepInfo, smoothed

Callback = Callable[[int, "TrainState"], None]


class Diverged(PinnzoError):
    """The loss or the parameters became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint of the last finished step was written."""


class Task(Protocol):
    """What the loop trains (see pinn.PINNTask and mnist.MnistTask)."""

    kind: str  # "pinn" | "mnist": recorded in config.yaml
    steps: int
    time_budget: float  # seconds of training after which the run stops (0: none)
    objective: Any  # optim.Objective
    optimizer: Any
    device: torch.device
    generator_names: tuple[str, ...]  # seeded seed + 0, 1, ...; one named "zo" drives the optimizer
    metric_fields: list[str]
    progress_metric: tuple[str, str]  # (label, metrics-row key) shown by the progress display

    def describe(self) -> str: ...
    def sample(self, step: int, generators: dict[str, torch.Generator], theta: torch.Tensor, done: float) -> Any: ...
    def constrain(self, theta: torch.Tensor) -> torch.Tensor: ...  # theta with what the task holds fixed restored
    def refresh(self) -> bool: ...  # fresh points at the next step (an optimizer stalled); False: none to draw
    def take_events(self) -> list[str]: ...  # what sample() did worth a line in the log (e.g. points grown)
    def should_evaluate(self, step: int) -> bool: ...
    def evaluate(self, theta: torch.Tensor, step: int, info: StepInfo, state: "TrainState") -> dict: ...
    def score(self, row: dict) -> float | None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, saved: dict) -> None: ...
    def finish(self, state: "TrainState", run_dir: Path) -> dict: ...


@dataclass
class TrainState:
    """The state after the last finished step: what a checkpoint holds."""

    theta: torch.Tensor
    optimizer: Any
    step: int = 0  # next step to run
    queries: int = 0
    metrics: list = field(default_factory=list)
    window: list = field(default_factory=list)  # training losses since the last evaluation
    best_theta: torch.Tensor | None = None
    best_score: float = math.inf
    average: torch.Tensor | None = None  # the parameters' moving average, for a task with ``average`` > 0
    smoothed_loss: float = math.nan
    elapsed: float = 0.0
    events: list = field(default_factory=list)
    generators: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)
    stopped_by: str = "steps"  # "steps", or "time budget" / "converged" when the run stopped early

    @property
    def result(self) -> torch.Tensor:
        """The parameters the run reports: the moving average when the task keeps one, else the last step's."""
        return self.theta if self.average is None else self.average


# ---------------------------------------------------------------- the loop's pieces

def check_finite(info: StepInfo, theta: torch.Tensor, step: int, checkpoint: "Checkpointer") -> None:
    """Stop with Diverged on a NaN or infinite loss or parameter vector."""
    if math.isfinite(info.loss) and torch.isfinite(theta).all():
        return
    what = (f"the loss became {info.loss}" if not math.isfinite(info.loss)
            else f"the parameters became non-finite (the loss before the update was a finite {info.loss:.6g}, "
                 f"the update was not)")
    raise Diverged(f"{what} at step {step + 1}; stopped. {checkpoint.describe()}")


def commit(state: TrainState, step: int, theta, optimizer_state, info: StepInfo, task: Task,
           generators: dict[str, torch.Generator]) -> None:
    """Make the finished step the state a checkpoint would hold; a task with ``average`` = beta > 0 also
    keeps the parameters' exponential moving average, a <- beta a + (1 - beta) theta (Polyak averaging),
    which it then evaluates and reports (TrainState.result)."""
    state.theta, state.optimizer, state.step = theta, optimizer_state, step + 1
    decay = getattr(task, "average", 0.0)
    if decay:
        state.average = theta.clone() if state.average is None else torch.lerp(theta, state.average, decay)
    state.queries = task.objective.queries
    state.smoothed_loss = smoothed(state.smoothed_loss, info.loss)
    state.window.append(info.loss)
    state.events += [{"step": step + 1, "event": event} for event in info.events]
    state.generators = {name: generator.get_state() for name, generator in generators.items()}
    state.task = task.state_dict()


class Checkpointer:
    """Writes checkpoint.pt and metrics.csv of the committed state."""

    def __init__(self, run_dir: Path, fields: list[str], started: float, saved_step: int | None,
                 writer: bool = True):
        self.run_dir, self.fields, self.started, self.saved_step = Path(run_dir), fields, started, saved_step
        self.writer = writer  # in a distributed run only rank 0 writes

    def __call__(self, state: TrainState) -> None:
        state.elapsed = time.perf_counter() - self.started
        if self.writer:
            runs.write_checkpoint(self.run_dir, vars(state), state.metrics, self.fields)
        self.saved_step = state.step

    def describe(self) -> str:
        if self.saved_step is None:
            return (f"No checkpoint was written yet: {self.run_dir} holds only the run's configuration; "
                    f"remove it (or choose another --out) to start again")
        return f"The last good checkpoint (step {self.saved_step}) is kept in {self.run_dir}"


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

def train(task: Task, run_dir: Path, config: dict, resume: bool = False, quiet: bool = False,
          callbacks: Sequence[Callback] = (), files: dict[str, str | bytes] | None = None,
          seed: int = 0) -> tuple[dict, TrainState]:
    """Run (or continue) ``task`` in ``run_dir``; returns the summary (also in summary.json)
    and the final state.

    ``config`` is recorded in config.yaml (a resume must match it); ``files`` are
    written beside it (name -> text) when the run starts.
    """
    run_dir, config = Path(run_dir), {"task": task.kind, **config}
    world = task.objective.world
    same = {key: value for key, value in config.items() if key not in ("problem", "data_dir")}  # paths may differ
    world.refuse_mismatch(yaml.safe_dump(same, sort_keys=True), "problem files or settings")
    if not world.writer:  # in a distributed run only rank 0 writes the run folder
        world.settle(None)
        return _train(task, run_dir, resume, True, callbacks, seed)
    with contextlib.ExitStack() as stack:
        try:
            if resume:
                runs.open_run_dir(run_dir, config, resume=True)  # checks only
            else:
                runs.refuse_nonempty(run_dir)
                make_folder(run_dir)
            stack.enter_context(runs.writer_lock(run_dir))
            if not resume:
                runs.open_run_dir(run_dir, config, False, files)
        except PinnzoError as error:
            world.settle(error)
        world.settle(None)
        return _train(task, run_dir, resume, quiet, callbacks, seed)


def _train(task: Task, run_dir: Path, resume: bool, quiet: bool, callbacks: Sequence[Callback],
           seed: int) -> tuple[dict, TrainState]:
    state, generators = _start(task, run_dir, resume, seed)
    state.stopped_by = "steps"  # until this invocation's loop stops early (a resumed pilot's ended on its budget)
    world = task.objective.world
    progress = Progress(task.steps, quiet or not world.writer, metric=task.progress_metric[0])
    progress.message(task.describe())
    started = time.perf_counter() - state.elapsed
    checkpoint = Checkpointer(run_dir, task.metric_fields, started, state.step if resume else None, world.writer)
    sent, first_step = world.payload_bytes, state.step
    shown = state.metrics[-1][task.progress_metric[1]] if state.metrics else None
    last = None  # (step, info, stop) of the last committed step
    done = max(state.step / task.steps, state.elapsed / task.time_budget if task.time_budget else 0.0)
    try:
        for step in range(state.step, task.steps):
            batch = task.sample(step, generators, state.theta, done)
            theta, optimizer_state, info = task.optimizer.update(step, state.theta, state.optimizer, task.objective,
                                                                 batch, generators["zo"])
            theta = task.constrain(theta)
            check_finite(info, theta, step, checkpoint)
            info.events[:0] = task.take_events()
            if info.stalled and not task.refresh():  # before commit: the checkpoint holds no stale points
                info.converged = True
            commit(state, step, theta, optimizer_state, info, task, generators)
            last = (step, info, info.converged)
            for event in info.events:
                progress.message(event)
            spent = _budget_spent(task, started, world)
            out_of_time = spent >= 1
            done = max((step + 1) / task.steps, spent)
            stop = out_of_time or info.converged
            last = (step, info, stop)
            if (task.should_evaluate(step) or stop) and world.writer:
                shown = _evaluate(task, state, step, info, started, checkpoint)
                progress.update(step, info.loss, state.queries, shown, force=True)
            else:
                progress.update(step, info.loss, state.queries, shown)
            for callback in callbacks:
                callback(step, state)
            if stop:
                if out_of_time:
                    progress.message(f"time budget of {task.time_budget:g} s reached after step {state.step}")
                state.stopped_by = "time budget" if out_of_time else "converged"
                break
    except KeyboardInterrupt:
        if last is not None and world.writer and state.step == last[0] + 1:
            step, info, stop = last  # the committed step's evaluation row, if Ctrl-C came before it
            if (task.should_evaluate(step) or stop) and (not state.metrics or state.metrics[-1]["step"] != state.step):
                _evaluate(task, state, step, info, started, checkpoint)
        checkpoint(state)
        progress.message(f"interrupted after step {state.step}; continue with --resume {run_dir}")
        raise Interrupted(str(run_dir)) from None
    finally:
        progress.close()
    summary = _run_fields(task, state, started, (world.payload_bytes - sent, state.step - first_step))
    if world.writer:
        summary = runs.json_safe({**task.finish(state, run_dir), **summary})
        runs.write_summary(run_dir, summary)
    return summary, state


def _budget_spent(task: Task, started: float, world) -> float:
    """The share of the time budget behind (0 without one), by rank 0's clock on every rank."""
    if not task.time_budget:
        return 0.0
    share = (time.perf_counter() - started) / task.time_budget if world.writer else 0.0
    return float(world.all_reduce(torch.tensor([share], dtype=torch.float64)).item())


def _evaluate(task: Task, state: TrainState, step: int, info: StepInfo, started: float,
              checkpoint: Checkpointer) -> float:
    """The committed step's metrics row, recorded and checkpointed; returns the progress figure."""
    row = task.evaluate(state.result, step, info, state)
    row["wall_s"] = time.perf_counter() - started
    _record(task, state, row)
    checkpoint(state)
    return row[task.progress_metric[1]]


def _start(task: Task, run_dir: Path, resume: bool, seed: int) -> tuple[TrainState, dict[str, torch.Generator]]:
    """The state to start from (fresh, or the checkpoint's) and the task's seeded generators."""
    generators = {name: torch.Generator().manual_seed(seed + offset)
                  for offset, name in enumerate(task.generator_names)}
    if resume:
        state = TrainState(**runs.read_checkpoint(run_dir, task.device))
        for name, generator in generators.items():
            generator.set_state(state.generators[name])
        task.load_state_dict(state.task)
    else:
        theta = task.objective.flatten()
        state = TrainState(theta=theta, optimizer=task.optimizer.init(theta))
    task.objective.queries = state.queries
    return state, generators


def _record(task: Task, state: TrainState, row: dict) -> None:
    """Append an evaluation row; keep the best parameters by the task's score."""
    state.metrics.append(row)
    state.window = []
    score = task.score(row)
    if score is not None and score < state.best_score:
        state.best_score, state.best_theta = score, state.result.clone()


def _run_fields(task: Task, state: TrainState, started: float, sent: tuple[int, int]) -> dict:
    """The summary's fields about the run itself; ``sent``: (bytes this rank handed to the process
    group, steps) in this invocation."""
    from pinnzo import __version__

    world = task.objective.world
    return {"steps": state.step, "stopped_by": state.stopped_by,
            **world.describe(), "bytes_per_step": sent[0] / max(1, sent[1]),
            "total_queries": state.queries, "queries_per_step": state.queries / max(1, state.step),
            "events": state.events, "wall_time_s": time.perf_counter() - started, "device": str(task.device),
            "versions": {"pinnzo": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "status": "finished"}
