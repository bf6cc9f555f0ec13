"""The ``pinnzo`` command line: thin typer commands that delegate to the library.

Every user error (a PinnzoError, a bad flag, a missing file) is printed as one
line ``pinnzo: error: ...`` with exit code 2 and no traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from pinnzo.errors import PinnzoError


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
    typer.echo(f"pinnzo: error: {message}", err=True)
    sys.exit(2)


app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Physics-informed neural networks trained without back-propagation.")
quadrature_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, rich_markup_mode=None,
                             help="Sparse-grid and cubature rules for Gaussian expectations.")
bench_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks that write JSON (ratios measured in one run).")
app.add_typer(quadrature_app, name="quadrature")
app.add_typer(bench_app, name="bench")

CacheDir = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Rule cache folder (default: $PINNZO_QUADRATURE_DIR, else ./quadrature).")]


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
        if out.suffix != ".npz":
            raise PinnzoError(f"--out must name an .npz file; found {out}")
        _write_atomically(out, lambda handle: np.savez(handle, nodes=rule.nodes, weights=rule.weights))
        typer.echo(f"wrote         {out}")


@quadrature_app.command("list")
def quadrature_list(cache_dir: CacheDir = None):
    """List the rules in the cache."""
    from pinnzo.quadrature.cache import default_cache_dir, list_cached

    folder = cache_dir or default_cache_dir()
    entries = list_cached(folder)
    typer.echo(f"{folder}: {len(entries)} rule file(s)")
    for path, header in entries:
        if header is None:
            typer.echo(f"  {path.name:<36} unreadable (rebuilt on next use)")
        else:
            typer.echo(f"  {header['family']:<14} dim {header['dim']:>4}  level {header['level']:>2}  "
                       f"nodes {header['size']:>8}  degree {header['degree']:>3}  {path.name}")


@app.command("check")
def check(problem: Annotated[Path, typer.Argument(help="Problem file (YAML).")]):
    """Validate a problem file and show what pinnzo read from it."""
    import torch

    from pinnzo.derivatives import Autodiff
    from pinnzo.problem import load_problem

    loaded = load_problem(problem)
    box = [f"{c} in [{lo:g}, {hi:g}]" for c, lo, hi in zip(loaded.columns, loaded.lows, loaded.highs)]
    box = ", ".join(box if len(box) <= 4 else [box[0], "...", box[-1]])
    typer.echo(f"problem       {loaded.name}: {loaded.description}\n"
               f"inputs        {loaded.dim}: {box}\n"
               f"residual      {_short(loaded.residual)} = 0\n"
               f"atoms         {', '.join(sorted(_atom_name(a, loaded) for a in loaded.atoms))}\n"
               f"source        {'manufactured from the exact solution' if loaded.manufactured else 'as written'}\n"
               f"ansatz        {_short(loaded.ansatz) if loaded.ansatz is not None else 'none'}\n"
               f"exact         {_short(loaded.exact) if loaded.exact is not None else 'none'}")
    for condition in loaded.conditions:
        typer.echo(f"condition     {condition.name}: {condition.kind} at {condition.on}, "
                   f"weight {condition.weight:g}, value {_short(condition.value)}")
    if loaded.has_exact:
        X = loaded.sample_interior(256, torch.Generator().manual_seed(0), torch.float64)
        atoms = Autodiff()(loaded.exact_solution, X, loaded.atoms, loaded.spatial)
        worst = loaded.residual_from_atoms(X, atoms).abs().max().item()
        typer.echo(f"exact check   max |residual| of the exact solution at 256 points: {worst:.2e}")


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
    """Build and cache-load times of the sparse grids (DESIGN.md section 2)."""
    from pinnzo.bench import quadrature_benchmark, write_report

    write_report(out, quadrature_benchmark())
    typer.echo(f"wrote {out}")


def _write_atomically(path: Path, write) -> None:
    """Call write(handle) on a temporary file next to ``path``, then rename it."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main() -> None:
    app()
