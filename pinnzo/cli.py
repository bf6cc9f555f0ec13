"""The ``pinnzo`` command line: thin typer commands that delegate to the library.

Every user error (a PinnzoError, a bad flag, a missing file) is printed as one
line ``pinnzo: error: ...`` with exit code 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from pinnzo.errors import PinnzoError, one_line
from pinnzo.settings import LEAST_SQUARES_DEFAULTS


class _OneLineErrors(TyperGroup):
    """Turn usage errors and PinnzoErrors into one line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args, prog_name or "pinnzo", complete_var, standalone_mode=False, **extra)
        except typer.Exit as done:  # --help and typer.Exit
            sys.exit(done.exit_code)
        except typer.TyperException as error:  # click's usage errors
            if type(error).__name__ == "NoArgsIsHelpError":
                typer.echo(error.format_message(), err=True)
                sys.exit(2)
            _fail(error.format_message())
        except PinnzoError as error:
            _fail(str(error))
        except typer.Abort:
            typer.echo("pinnzo: interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str) -> None:
    typer.echo(f"pinnzo: error: {one_line(message)}", err=True)
    sys.exit(2)


app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Physics-informed neural networks trained without back-propagation.")
quadrature_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, rich_markup_mode=None,
                             help="Sparse-grid and cubature rules for Gaussian expectations.")
bench_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks that write JSON (ratios measured in one run).")
data_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, rich_markup_mode=None,
                       help="Measured data for inverse problems (at: data conditions).")
app.add_typer(quadrature_app, name="quadrature")
app.add_typer(bench_app, name="bench")
app.add_typer(data_app, name="data")

OPTIMIZER_HELP = ("First order (back-propagation): adam | sgd | lbfgs | adam-lbfgs | gn. Zeroth order (loss "
                  "queries only): zo-rge | zo-signrge | zo-cge | zo-adam | hybrid | zo-gn")
# PINN runs only (pinnzo solve)
LEAST_SQUARES_HELP = ("Where the flags say nothing and the file's solve: block is silent or written for gn or "
                      "zo-gn, these two take "
                      + ", ".join(f"{key} {value}" for key, value in LEAST_SQUARES_DEFAULTS.items()))

CacheDir = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Rule cache folder (default: $PINNZO_QUADRATURE_DIR, else ./quadrature).")]


def _check_cache_dir(cache_dir: Optional[Path]) -> None:
    """--cache-dir must be a folder (or not exist yet)."""
    if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise PinnzoError(f"--cache-dir {cache_dir}: not a folder")


@quadrature_app.command("build")
def quadrature_build(
    dim: Annotated[int, typer.Option("--dim", help="Dimension D of the Gaussian (inputs incl. time).")],
    level: Annotated[int, typer.Option("--level", help="Smolyak level k: exact to total degree 2k-1.")],
    family: Annotated[str, typer.Option("--family", help="gauss-hermite | genz-keister | lu-darmofal.")] = "gauss-hermite",
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write an .npz with arrays nodes (n x D), weights (n).")] = None,
    cache_dir: CacheDir = None,
):
    """Build a rule (or load it from the cache) and print its figures."""
    import numpy as np

    from pinnzo.quadrature import get_rule, rule_path

    if out is not None:  # every flag is checked before the (possibly long) build
        if out.suffix != ".npz":
            raise PinnzoError(f"--out must name an .npz file; found {out}")
        if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
            raise PinnzoError(f"--out {out}: not a writable file path")
    _check_cache_dir(cache_dir)
    started = time.perf_counter()
    rule = get_rule(family, dim, level, cache_dir)
    elapsed = time.perf_counter() - started
    typer.echo(f"family        {rule.family}\n"
               f"dim, level    {rule.dim}, {rule.level}\n"
               f"nodes         {rule.size}\n"
               f"degree        {rule.degree}\n"
               f"sum w         {rule.weights.sum():.15g}\n"
               f"sum |w|       {rule.abs_weight_sum:.6g}\n"
               f"time          {elapsed * 1e3:.1f} ms (build or cache load)\n"
               f"cache         {rule_path(family, dim, level, cache_dir)}")
    if out is not None:
        import io

        from pinnzo.fileio import atomic_write

        buffer = io.BytesIO()
        np.savez(buffer, nodes=rule.nodes, weights=rule.weights)
        try:
            atomic_write(out, buffer.getvalue())
        except OSError as error:
            raise PinnzoError(f"--out {out}: cannot write ({error.strerror or error})") from None
        typer.echo(f"wrote         {out}")


@quadrature_app.command("list")
def quadrature_list(cache_dir: CacheDir = None):
    """List the rules in the cache."""
    from pinnzo.quadrature.cache import default_cache_dir, list_cached

    _check_cache_dir(cache_dir)
    folder = cache_dir or default_cache_dir()
    entries = list_cached(folder)
    typer.echo(f"{folder}: {len(entries)} rule file(s)")
    for path, header in entries:
        if header is None:
            typer.echo(f"  {path.name:<36} unreadable (rebuilt on next use)")
        else:
            typer.echo(f"  {header['family'][:14]:<14} dim {header['dim']:>4}  level {header['level']:>2}  "
                       f"nodes {header['size']:>8}  degree {header['degree']:>3}  {path.name}")


PRESETS = {
    # the paper's HJB scale (section 5.2): a job for a GPU
    "paper": {"network": "tt", "width": 512, "depth": 2, "rank": 2, "activation": "sin",
              "backend": "sparse-grid", "rule": "gauss-hermite", "level": 3, "sigma": 0.1,
              "optimizer": "zo-signrge", "lr": 1e-3,
              "lr_decay": 1.0, "directions": 10, "mu": 0.01, "steps": 10000, "batch": 100,
              "eval_every": 500, "eval_points": 10000, "device": "cuda", "memory_mb": 16384},
}


def _parse_assignments(assignments: list[str]) -> dict[str, str]:
    changes = {}
    for item in assignments:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise PinnzoError(f"--set expects key=value; found {item!r}")
        changes[key.strip()] = value.strip()
    return changes


def resolve_settings(problem, preset: Optional[str], assignments: list[str], flags: dict):
    """Defaults < the optimizer's defaults < file < preset < --set key=value < explicit flags."""
    from pinnzo.pinn import resolve_settings as resolve
    from pinnzo.settings import Settings

    settings = Settings().replace(problem.solve)
    named = {}
    if preset is not None:
        if preset not in PRESETS:
            raise PinnzoError(f"unknown preset {preset!r}; must be one of {', '.join(PRESETS)}")
        named = PRESETS[preset]
        settings = settings.replace(named, f"--preset {preset}: ")
    explicit = _parse_assignments(assignments)
    settings = settings.replace(explicit, "--set ")
    given = {key: value for key, value in flags.items() if value is not None}
    settings = resolve(problem, {**named, **explicit, **given}, "--")
    _refuse_unused(settings.optimizer, {**{key: "--set " + key for key in explicit},
                                        **{key: "--" + key for key in given}})
    if "pilot_share" in explicit and settings.activation != "auto":
        raise PinnzoError("--set pilot_share: the pilots' share applies to activation auto only; set both or neither")
    if "gn_tolerance" in explicit and settings.time_budget:
        raise PinnzoError("--set gn_tolerance: the convergence test applies to runs without a time_budget (a "
                          "budgeted run trains to its budget or its rounding floor); give one or the other")
    return settings


# settings that only some optimizers read (memory_mb and resample_every serve every run)
SHARED_SETTINGS = {"memory_mb", "resample_every", "rounding_gain"}


def _refuse_unused(optimizer: str, given: dict[str, str]) -> None:
    """An optimizer setting given explicitly that the chosen optimizer does not use is an error."""
    from pinnzo.optim import OPTIMIZERS, optimizer_options

    used = optimizer_options(optimizer)
    for key, flag in given.items():
        users = [name for name in OPTIMIZERS.names() if key in optimizer_options(name)]
        if users and key not in used and key not in SHARED_SETTINGS:
            raise PinnzoError(f"{flag}: {optimizer} does not use this setting (it is for {', '.join(users)})")


def _report(line: str, run, run_dir: Path, no_plots: bool) -> None:
    """The closing lines of a training command: its figures, the plots, where the run is."""
    typer.echo(line)
    if not no_plots:
        from pinnzo.plots import plot_run

        plot_run(run)
    typer.echo(f"results in {run_dir}")


def _run_folder(resume: Optional[Path], out: Optional[Path], default) -> tuple[Path, bool]:
    """(run folder, whether to resume it): --resume, --out or the default (rank 0's, in a distributed
    run); after torchrun restarted the workers (--max-restarts) a run with a checkpoint resumes."""
    from pinnzo import distributed, runs

    if resume is not None and out is not None and resume != out:
        raise PinnzoError("--resume names the run folder; do not also give a different --out")
    world = distributed.current()
    if resume is None and out is None and os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") not in ("", "0"):
        raise PinnzoError("torchrun --max-restarts: give --out, so that restarted workers find the run's checkpoint")
    run_dir = resume or out or Path(world.broadcast_text(str(default()) if world.writer else ""))
    restarted = distributed.restarted() and (run_dir / runs.CHECKPOINT).is_file()
    return run_dir, resume is not None or restarted


@contextlib.contextmanager
def _distributed(workers: Optional[int], backend: str, split: str, timeout: float, device: str | None,
                 auto_split: str):
    """This command's World: joins torchrun's process group (alone when not launched by torchrun);
    with --workers N, first starts N local copies of the command through torch's launcher."""
    from pinnzo import distributed

    if workers is not None:
        _launch_workers(workers)
    world = distributed.init(backend, split, timeout, device or "cpu", auto_split)
    try:
        yield world
    finally:
        distributed.shutdown()


def _launch_workers(workers: int) -> None:
    """Run this command again as ``torchrun --standalone --nproc-per-node N -m pinnzo ...`` (torch's
    own launcher, torch.distributed.run) and exit with its status."""
    from pinnzo import distributed

    if workers < 1:
        raise PinnzoError(f"--workers: expected an integer >= 1; found {workers}")
    if distributed.launched():
        raise PinnzoError("--workers: this process is already one of torchrun's workers; give either torchrun or "
                          "--workers, not both")
    from torch.distributed.run import get_args_parser, run

    argv, rest, skip = sys.argv[1:], [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--workers":
            skip = True
        elif not item.startswith("--workers="):
            rest.append(item)
    arguments = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(workers), "--module",
                                              "pinnzo", *rest])
    try:
        run(arguments)
    except Exception as error:  # torch's ChildFailedError: the workers printed their own lines
        typer.echo(f"pinnzo: error: a worker failed ({type(error).__name__}); see the lines above", err=True)
        sys.exit(2)
    sys.exit(0)


DIST_HELP = {
    "workers": "Start N local processes through torch's launcher (torchrun --standalone); 1 thread each is "
               "best on a CPU (OMP_NUM_THREADS).",
    "dist_backend": "Process-group backend under torchrun or --workers: auto (gloo on CPU, nccl on CUDA) | gloo | nccl.",
    "dist_split": "Split each step over the processes: auto | points (data parallel) | queries (parameter vectors); auto: queries for the MNIST hybrid and zo-cge, else points.",
    "dist_timeout": "Seconds a process waits for the others before it stops (a dead or hung worker).",
}


@app.command("solve")
def solve(
    problem: Annotated[Path, typer.Argument(help="Problem file (YAML), e.g. problems/hjb20.yaml.")],
    backend: Annotated[Optional[str], typer.Option(help="Derivatives: ad | fd | stein | sparse-grid.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        help=f"{OPTIMIZER_HELP}. Default: the file's solve: block, else zo-gn (the paper's method: hybrid). "
             f"{LEAST_SQUARES_HELP}.")] = None,
    network: Annotated[Optional[str], typer.Option(help="mlp | tt.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Hidden width.")] = None,
    depth: Annotated[Optional[int], typer.Option(help="Hidden layers.")] = None,
    rank: Annotated[Optional[int], typer.Option(help="TT rank.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Interior points per step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    sigma: Annotated[Optional[float], typer.Option(help="Gaussian smoothing of the Stein backends.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of every random draw.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="auto | float32 | float64 (auto: float64 for lbfgs, adam-lbfgs, gn, zo-gn; else float32).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default results/<problem>/<time>-<backend>-<optimizer>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the interrupted run in this folder.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="Any setting: --set key=value (repeatable).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Named settings: paper (the paper's scale, for a GPU).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Do not draw the figures at the end.")] = False,
    workers: Annotated[Optional[int], typer.Option(help=DIST_HELP["workers"])] = None,
    dist_backend: Annotated[str, typer.Option(help=DIST_HELP["dist_backend"])] = "auto",
    dist_split: Annotated[str, typer.Option(help=DIST_HELP["dist_split"])] = "auto",
    dist_timeout: Annotated[float, typer.Option(help=DIST_HELP["dist_timeout"])] = 60.0,
):
    """Train a PINN on a problem file and write a run folder (with plots)."""
    from pinnzo.loop import Interrupted
    from pinnzo.pilots import overhead
    from pinnzo.pinn import default_run_dir, solve as solve_problem
    from pinnzo.problem import load_problem

    loaded = load_problem(problem)
    flags = dict(backend=backend, optimizer=optimizer, network=network, width=width, depth=depth, rank=rank,
                 steps=steps, batch=batch, lr=lr, sigma=sigma, seed=seed, dtype=dtype, device=device)
    settings = resolve_settings(loaded, preset, assignments or [], flags)
    from pinnzo.distributed import auto_split

    with _distributed(workers, dist_backend, dist_split, dist_timeout, settings.device,
                      auto_split(settings.optimizer)) as world:
        run_dir, resuming = _run_folder(resume, out, lambda: default_run_dir(loaded, settings))
        try:
            run = solve_problem(loaded, settings, out=run_dir, resume=resuming, quiet=quiet)
        except Interrupted:
            raise typer.Exit(130)
    if not world.writer:
        return
    summary = run.summary
    unknowns = "".join(f", {name} {record['value']:.6g}" + (f" (exact {record['exact']:g}, relative error "
                                                             f"{record['relative_error']:.2e})"
                                                             if "relative_error" in record else "")
                       for name, record in summary.get("unknowns", {}).items())
    seconds, queries = overhead(summary.get("pilots"))
    chosen = f"; activation {summary['activation']}, chosen by pilots" if summary.get("pilots") else ""
    measured = (f"relative L2 {summary['final_rel_l2']:.3e} (best {summary['best_rel_l2']:.3e}), "
                f"MSE {summary['final_mse']:.3e}" if run.problem.has_exact else
                f"loss {summary['final_loss']:.3e} (best {summary['best_loss']:.3e}; no exact solution to measure "
                f"the error against)")
    _report(f"{summary['problem']}: {measured}{unknowns}, {summary['total_queries'] + queries:,} loss queries, "
            f"{summary['wall_time_s'] + seconds:.0f} s{chosen}", run, run_dir, no_plots)


@app.command("mnist")
def mnist(
    network: Annotated[Optional[str], typer.Option(help="mlp | tt (default tt: 784=7x4x4x7, 1024=8x4x4x8, 10=1x5x2x1).")] = None,
    rank: Annotated[Optional[int], typer.Option(help="TT rank r (ranks [1, r, r, r, 1]; default 6).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help=f"{OPTIMIZER_HELP} (default adam). On the cross-entropy "
                                                          "zo-gn is the generalised Gauss-Newton; gn does not apply.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default 5).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Mini-batch size (default 64).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-3, x0.9 every 10 epochs).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Folder with the four MNIST IDX files (default $PINNZO_MNIST_DIR, then data/mnist).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default results/mnist/<time>-<network>-<optimizer>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the interrupted run in this folder.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="Any MNIST setting: --set key=value.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Do not draw the accuracy curves.")] = False,
    workers: Annotated[Optional[int], typer.Option(help=DIST_HELP["workers"])] = None,
    dist_backend: Annotated[str, typer.Option(help=DIST_HELP["dist_backend"])] = "auto",
    dist_split: Annotated[str, typer.Option(help=DIST_HELP["dist_split"])] = "auto",
    dist_timeout: Annotated[float, typer.Option(help=DIST_HELP["dist_timeout"])] = 60.0,
):
    """Classify MNIST with a (TT-)MLP trained by any optimizer (paper section 5.1)."""
    from pinnzo.loop import Interrupted
    from pinnzo.mnist import default_data_dir, default_run_dir, load_mnist, train_mnist
    from pinnzo.optim import OPTIMIZERS
    from pinnzo.settings import MnistSettings

    settings = MnistSettings().replace(_parse_assignments(assignments or []), "--set ")
    flags = dict(network=network, rank=rank, optimizer=optimizer, epochs=epochs, batch=batch, lr=lr, seed=seed,
                 device=device)
    settings = settings.replace({k: v for k, v in flags.items() if v is not None}, "--")
    OPTIMIZERS[settings.optimizer]
    if settings.optimizer == "gn":
        raise PinnzoError("--optimizer gn: Gauss-Newton with an autograd Jacobian needs a least-squares loss; the "
                          "MNIST loss is a cross-entropy (zo-gn trains it by the generalised Gauss-Newton)")
    folder = data_dir or default_data_dir()
    data = load_mnist(folder, settings.validation)
    from pinnzo.distributed import auto_split

    with _distributed(workers, dist_backend, dist_split, dist_timeout, settings.device,
                      auto_split(settings.optimizer, "mnist")) as world:
        run_dir, resuming = _run_folder(resume, out, lambda: default_run_dir(settings))
        try:
            summary = train_mnist(data, settings, run_dir, resume=resuming, quiet=quiet, data_dir=folder)
        except Interrupted:
            raise typer.Exit(130)
    if not world.writer:
        return
    last = summary.get("last_step_test_accuracy")
    _report(f"mnist {settings.network} ({summary['parameters']:,} parameters), {settings.optimizer}: "
            f"test accuracy {100 * summary['test_accuracy']:.2f}%"
            + ("" if last is None else f" (the parameters' moving average; the last step's: {100 * last:.2f}%)")
            + f", at the epoch of the best validation accuracy (step {summary['best_step']}) "
            f"{100 * summary['best_test_accuracy']:.2f}%, {summary['total_queries']:,} loss queries, "
            f"{summary['wall_time_s']:.0f} s", run_dir, run_dir, no_plots)


@app.command("plot")
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by pinnzo solve.")],
    format: Annotated[str, typer.Option("--format", help="png | pdf | svg.")] = "png",
    slice_axes: Annotated[Optional[str], typer.Option("--slice", help="Two variables of the 2-D slice, e.g. x1,t.")] = None,
    at: Annotated[Optional[list[str]], typer.Option("--at", help="Fix a variable of the slice: --at x2=0.5 (repeatable; default: the centre).")] = None,
):
    """Draw a run's figures into RUN_DIR/plots/ (each with a CSV of its numbers)."""
    from pinnzo.plots import plot_run

    for path in plot_run(run_dir, format, slice_axes, at or []):
        typer.echo(f"wrote {path}")


@app.command("compare")
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders of one problem.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for compare.md, compare.csv and the curves.")] = Path("results/compare"),
    format: Annotated[str, typer.Option("--format", help="png | pdf | svg.")] = "png",
):
    """Runs side by side: a table and overlaid error-vs-step / error-vs-queries curves."""
    from pinnzo.plots import compare_runs, terminal_table

    rows, written = compare_runs(run_dirs, out, format)
    typer.echo(terminal_table(rows))
    for path in written:
        typer.echo(f"wrote {path}")


@app.command("reproduce")
def reproduce(
    table: Annotated[str, typer.Argument(help="The paper's table: 1 | 2 (MNIST) | 4 | 5 | 6 (20-dim HJB) | all.")],
    scale: Annotated[str, typer.Option(help="cpu (this 2-core machine, minutes per cell) | paper (the paper's sizes, for a GPU).")] = "cpu",
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default: the scale's, cpu).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder of the tables and their runs (default results/reproduce/<scale>).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="MNIST IDX files for tables 1 and 2 (default $PINNZO_MNIST_DIR, then data/mnist).")] = None,
    problem: Annotated[Path, typer.Option(help="The HJB problem file of tables 4-6.")] = Path("problems/hjb20.yaml"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display inside each run.")] = False,
):
    """Run a table of the paper cell by cell (finished cells are skipped on a re-run) and write
    OUT/table-N.md with pinnzo's figures beside the published ones, plus the compare plots."""
    from pinnzo.reproduce import SCALES, TABLES, Context, reproduce as reproduce_table

    if scale not in SCALES:
        raise PinnzoError(f"--scale: unknown value {scale!r}; must be one of {', '.join(SCALES)}")
    numbers = TABLES.names() if table == "all" else [table]
    for number in numbers:
        TABLES[number]  # one "must be one of" error before any work
    from pinnzo.fileio import make_folder

    context = Context(SCALES[scale], make_folder(out or Path("results/reproduce") / scale), problem, data_dir,
                      device, quiet, typer.echo)
    from pinnzo.loop import Interrupted

    try:
        for number in numbers:
            for path in reproduce_table(number, context):
                typer.echo(f"wrote {path}")
    except Interrupted:
        typer.echo("interrupted; run the same command again to continue (finished cells are kept)", err=True)
        raise typer.Exit(130)


@data_app.command("make")
def data_make(
    problem: Annotated[Path, typer.Argument(help="Problem file (YAML) with an exact solution.")],
    out: Annotated[Path, typer.Option("--out", help="The data file to write: .csv or .npz (never overwritten).")],
    points: Annotated[int, typer.Option("--points", help="Measurements: uniform points of the domain.")] = 200,
    noise: Annotated[float, typer.Option("--noise", help="Noise standard deviation relative to the RMS of the exact "
                                                         "values (0.01: 1%).")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the points and the noise.")] = 0,
    value: Annotated[str, typer.Option("--value", help="What is measured, as a data condition's value: u or an "
                                                       "expression of its atoms, e.g. 'd(u, x1)'.")] = "u",
    column: Annotated[str, typer.Option("--column", help="The name of the column of measured values (the data "
                                                         "condition's column).")] = "u",
):
    """Synthetic measurements from the problem's exact solution: the points, and u (or --value, e.g. a
    derivative) plus Gaussian noise of standard deviation NOISE x the RMS of the exact values; the CSV's
    comment lines record the command and the deviation."""
    import keyword
    import shlex

    from pinnzo.data import make_measurements, measurements_csv, measurements_npz
    from pinnzo.fileio import atomic_write
    from pinnzo.problem import RESERVED, load_problem

    if out.exists():
        raise PinnzoError(f"--out {out}: the file exists; choose another name (data files are never overwritten)")
    if out.suffix.lower() not in (".csv", ".npz"):
        raise PinnzoError(f"--out {out}: expected a .csv or .npz file name")
    if points < 1:
        raise PinnzoError(f"--points: expected an integer >= 1; found {points}")
    if not (noise >= 0 and noise < float("inf")):
        raise PinnzoError(f"--noise: expected a finite number >= 0; found {noise}")
    if column != "u" and (not column.isidentifier() or keyword.iskeyword(column) or column.startswith("_")
                          or column in RESERVED):
        raise PinnzoError(f"--column: expected a plain identifier other than a function or constant name; "
                          f"found {column!r}")
    loaded = load_problem(problem)
    if column in loaded.columns:
        raise PinnzoError(f"--column: {column!r} is a variable; the measured values need a column of their own")
    X, values, sigma = make_measurements(loaded, points, noise, seed, value)
    if out.suffix.lower() == ".npz":
        content = measurements_npz(loaded.columns, X, values, column)
    else:
        measured = "" if (value, column) == ("u", "u") else f" --value {shlex.quote(value)} --column {column}"
        content = measurements_csv(loaded.columns, X, values, [
            f"made by: pinnzo data make {problem} --points {points} --noise {noise:g} --seed {seed}{measured} "
            f"--out {out}",
            f"{_short(value, 100)} of {loaded.name}'s exact solution {_short(loaded.exact, 200)} at uniform "
            f"points of the domain",
            f"plus Gaussian noise of standard deviation {sigma:.6g} ({noise:g} x the RMS of the exact values)"],
            column)
    try:
        atomic_write(out, content)
    except OSError as error:
        raise PinnzoError(f"--out {out}: cannot write ({error.strerror or error})") from None
    typer.echo(f"wrote {out}: {points} measurements of {_short(value, 60)}, noise standard deviation {sigma:.6g}")


@app.command("check")
def check(problem: Annotated[Path, typer.Argument(help="Problem file (YAML).")]):
    """Validate a problem file and show what pinnzo read from it."""
    from pinnzo.pinn import condition_scale, resolve_settings
    from pinnzo.problem import load_problem

    loaded = load_problem(problem)
    settings = resolve_settings(loaded, {})
    scale = condition_scale(loaded, settings)
    how = "automatic" if settings.condition_scale == 0 else "condition_scale"  # the file's solve: block may set it
    checks = None
    if loaded.has_exact:  # before any output: an error is the only line
        try:
            checks = loaded.exact_check()
        except (RuntimeError, ValueError, TypeError, ArithmeticError) as error:
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise PinnzoError(f"{loaded.path}: exact: cannot evaluate the equation or a condition at the exact "
                              f"solution ({reason})") from None
    box = [f"{c} in [{lo:g}, {hi:g}]" for c, lo, hi in zip(loaded.columns, loaded.lows, loaded.highs)]
    box = ", ".join(box if len(box) <= 4 else [box[0], "...", box[-1]])
    typer.echo(f"problem       {loaded.name}: {loaded.description}\n"
               f"inputs        {loaded.dim}: {box}\n"
               f"domain        {_domain_summary(loaded.domain)}\n"
               f"residual      {_short(loaded.residual)} = 0\n"
               f"atoms         {', '.join(sorted(_atom_name(a, loaded) for a in loaded.atoms))}\n"
               f"source        {'manufactured from the exact solution' if loaded.manufactured else 'as written'}\n"
               f"ansatz        {_short(loaded.ansatz) if loaded.ansatz is not None else 'none'}\n"
               f"exact         {_short(loaded.exact) if loaded.exact is not None else 'none'}")
    for unknown in loaded.unknowns:
        exact = f", exact {unknown.exact:g}" if unknown.exact is not None else ""
        typer.echo(f"unknown       {unknown.name}: initial {unknown.initial:g}, bounds {unknown.bounds_text()}{exact}")
    for condition in loaded.conditions:
        if condition.data is not None:
            noise = f", noise {condition.data.noise:g}" if condition.data.noise is not None else ""
            typer.echo(f"condition     {condition.name}: {_short(condition.value)} measured at "
                       f"{len(condition.data.points)} points of {condition.data.file}, weight {condition.weight:g}{noise}")
            continue
        coefficient = f", coefficient {_short(condition.coefficient)}" if condition.coefficient is not None else ""
        operator = f", operator {_short(condition.operator)}" if condition.operator is not None else ""
        weight = f"{condition.weight:g}" + (f" (x {scale:.4g} {how})" if scale != 1 else "")
        typer.echo(f"condition     {condition.name}: {condition.kind} at {condition.on}, "
                   f"weight {weight}{coefficient}{operator}, value {_short(condition.value)}")
    if checks is not None:
        at = "" if not loaded.unknowns else (" (unknowns at their initial values: no exact values given)"
                                             if loaded.exact_unknowns is None else " (unknowns at their exact values)")
        equation = checks.pop("residual")
        typer.echo(f"exact check   max |residual| of the exact solution at 256 points: {equation:.2e}{at}")
        for condition in loaded.conditions:
            what = "RMS misfit at the data points" if condition.data is not None else "max |residual| at 256 points"
            typer.echo(f"exact check   {condition.name}: {what}: {checks[condition.name]:.2e}")


def _domain_summary(domain) -> str:
    """Shape, measure (exact, or a Monte-Carlo estimate with its standard error) and bounding box."""
    measure = (f"{domain.measure:.6g}" if domain.measure_is_exact
               else f"{domain.measure:.5g} +- {domain.measure_error:.1g} (Monte Carlo estimate)")
    lows, highs = domain.bounds
    box = " x ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(lows, highs))
    box = box if domain.dim <= 4 else f"[{lows[0]:g}, {highs[0]:g}] x ... ({domain.dim} coordinates)"
    return f"{_short(domain.describe(), 120)}; measure {measure}; bounding box {box}"


def _short(expression, limit: int = 90) -> str:
    text = str(expression)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _atom_name(atom, problem) -> str:
    from pinnzo.atoms import atom_symbol

    return atom_symbol(atom, list(problem.columns)).name


@bench_app.command("quadrature")
def bench_quadrature(
    out: Annotated[Path, typer.Option("--out", help="JSON report to write.")] = Path("results/bench/quadrature.json"),
):
    """Build and cache-load times of the sparse grids (docs/method.md, "Sparse-grid rules")."""
    from pinnzo.bench import quadrature_benchmark, write_report

    write_report(out, quadrature_benchmark())
    typer.echo(f"wrote {out}")


@bench_app.command("derivatives")
def bench_derivatives(
    out: Annotated[Path, typer.Option("--out", help="JSON report to write.")] = Path("results/bench/derivatives.json"),
    width: Annotated[Optional[int], typer.Option(help="Network width (default: hjb20's).")] = None,
):
    """Per backend on hjb20: evaluations per point, loss and loss+gradient time, memory;
    sparse-grid against the paper's way of evaluating it."""
    from pinnzo.bench import derivatives_benchmark, write_report

    write_report(out, derivatives_benchmark(width))
    typer.echo(f"wrote {out}")


@bench_app.command("zo")
def bench_zo(
    out: Annotated[Path, typer.Option("--out", help="JSON report to write.")] = Path("results/bench/zo.json"),
    widths: Annotated[str, typer.Option(help="Comma-separated widths.")] = "32,512",
):
    """ZO steps on hjb20: time, queries/s, FLOP/s against a GEMM; batched vs looped queries."""
    from pinnzo.bench import write_report, zo_benchmark

    try:
        sizes = tuple(int(w) for w in widths.split(","))
    except ValueError:
        raise PinnzoError(f"--widths expects integers like 32,512; found {widths!r}") from None
    write_report(out, zo_benchmark(sizes))
    typer.echo(f"wrote {out}")


@bench_app.command("tt-layer")
def bench_tt_layer(
    out: Annotated[Path, typer.Option("--out", help="JSON report to write.")] = Path("results/bench/tt-layer.json"),
):
    """TT layer forward: rebuild + GEMM vs core by core vs a dense layer."""
    from pinnzo.bench import tt_layer_benchmark, write_report

    write_report(out, tt_layer_benchmark())
    typer.echo(f"wrote {out}")


@bench_app.command("distributed")
def bench_distributed(
    out: Annotated[Path, typer.Option("--out", help="JSON report to write.")] = Path("results/bench/distributed.json"),
    steps: Annotated[int, typer.Option(help="Training steps per run.")] = 20,
    data_dir: Annotated[Optional[Path], typer.Option(help="MNIST IDX files for the MNIST case (default: "
                                                          "$PINNZO_MNIST_DIR, then data/mnist; skipped if absent).")] = None,
):
    """Steps/s on 1 and 2 processes (1 thread each, torchrun, gloo) and bytes per step, for ZO-signRGE and
    zo-gn on hjb20, FO Adam and the MNIST hybrid."""
    from pinnzo.bench import write_report
    from pinnzo.bench_distributed import distributed_benchmark
    from pinnzo.mnist import default_data_dir

    if steps < 2:
        raise PinnzoError(f"--steps: expected an integer >= 2; found {steps}")
    folder = data_dir or default_data_dir()
    if data_dir is not None and not folder.is_dir():
        raise PinnzoError(f"--data-dir {folder}: no such folder")
    report = distributed_benchmark(steps, folder if folder.is_dir() else None, typer.echo)
    write_report(out, report)
    typer.echo(f"wrote {out}")


@bench_app.command("accuracy")
def bench_accuracy(
    budget: Annotated[float, typer.Option(help="Seconds of training per cell.")] = 300.0,
    problems: Annotated[Optional[str], typer.Option(help="Comma-separated problem files (default: every file "
                                                         "in problems/ with an exact solution).")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = "adam,adam-lbfgs,zo-signrge,hybrid,zo-gn",
    out: Annotated[Path, typer.Option(help="Folder of the cells' runs, accuracy.json and accuracy.md.")] = Path(
        "results/bench/accuracy"),
    device: Annotated[Optional[str], typer.Option(help="cpu | cuda (default cpu).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display inside each run.")] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Run nothing: write accuracy.json and "
                                                                     "accuracy.md from the finished cells, the "
                                                                     "others marked 'not run'.")] = False,
):
    """Every problem x method (adam, adam-lbfgs, zo-signrge, hybrid, zo-gn), each cell trained for a wall-time
    budget: relative L2, time to 1e-2 and 1e-3, loss queries. Resumable: finished cells are skipped."""
    from pinnzo.accuracy import METHODS, run_accuracy, shipped_problems
    from pinnzo.loop import Interrupted

    if not budget > 0:
        raise PinnzoError(f"--budget: expected a positive number of seconds; found {budget}")
    names = [name.strip() for name in methods.split(",") if name.strip()]
    for name in names:
        METHODS[name]  # one "must be one of" error before any work
    paths = [Path(p.strip()) for p in problems.split(",")] if problems else shipped_problems(Path("problems"))
    try:
        for path in run_accuracy(paths, names, budget, out, typer.echo, quiet, device, report_only):
            typer.echo(f"wrote {path}")
    except Interrupted:
        typer.echo("interrupted; run the same command again to continue (finished cells are kept)", err=True)
        raise typer.Exit(130)


@bench_app.command("all")
def bench_all(
    out: Annotated[Path, typer.Option("--out", help="The one JSON report to write.")] = Path("results/bench/report.json"),
):
    """Every suite (quadrature, derivatives, zo, tt-layer) into one JSON report with machine information."""
    from pinnzo.bench import SUITES, write_report

    report = {}
    for name, suite in SUITES.items():
        typer.echo(f"bench {name} ...")
        report[name] = suite()
    write_report(out, report)
    typer.echo(f"wrote {out}")


def main() -> None:
    app()
