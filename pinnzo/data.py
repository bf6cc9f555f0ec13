"""Measured data: the files of ``at: data`` conditions, and synthetic measurements (``pinnzo data make``).

A data file is CSV (a header of column names, then one row per measurement; lines
starting with ``#`` are comments) or NPZ (one 1-D array per column). It holds one
column per variable of the problem (the points) and one column of measured values
(named by the condition's ``column``, default ``u``), and nothing else.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pinnzo.errors import PinnzoError

MAX_DATA_BYTES = 64 << 20  # a data file is measurements, not a data set


@dataclass(frozen=True, eq=False)
class Measurements:
    """Points X (n, D) (columns in the problem's order) and measured values (n,), float64 on the CPU.

    file: the path as the problem file writes it; content: the file's bytes (a run folder keeps a
    copy); noise: the standard deviation of the measurement noise, when the problem file states it.
    """

    file: str
    points: torch.Tensor
    values: torch.Tensor
    noise: float | None
    content: bytes = field(repr=False)


def read_measurements(path: Path, file: str, columns: Sequence[str], column: str) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(points (n, D), values (n,), the file's bytes) from a CSV or NPZ file; ValueError with a one-line
    reason when it is unreadable, has other columns than ``columns`` + ``column``, no rows, or a value
    that is not a finite number."""
    if not path.is_file():
        raise ValueError(f"no such data file {file} (looked for {path})")
    if path.stat().st_size > MAX_DATA_BYTES:
        raise ValueError(f"{file} has {path.stat().st_size:,} bytes; a data file is at most {MAX_DATA_BYTES:,}")
    content = path.read_bytes()
    table = _npz_table(content, file) if path.suffix.lower() == ".npz" else _csv_table(content, file)
    expected = [*columns, column]
    if sorted(table) != sorted(expected):
        raise ValueError(f"{file} has columns {', '.join(table) or 'none'}; expected exactly "
                         f"{', '.join(expected)} (the variables, then the measured values)")
    arrays = [table[name] for name in expected]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"{file}: the columns have different lengths")
    if len(arrays[0]) == 0:
        raise ValueError(f"{file} has no rows")
    for name, array in zip(expected, arrays):
        bad = np.flatnonzero(~np.isfinite(array))
        if len(bad):
            raise ValueError(f"{file}: column {name} holds {array[bad[0]]} in row {bad[0] + 1}; every value "
                             f"must be a finite number")
    return np.stack(arrays[:-1], axis=1), arrays[-1], content


def _csv_table(content: bytes, file: str) -> dict[str, np.ndarray]:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{file} is not a CSV text file (UTF-8)") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    rows = list(csv.reader(lines))
    if not rows:
        raise ValueError(f"{file} is empty (expected a header of column names)")
    header = [name.strip() for name in rows[0]]
    if len(set(header)) != len(header):
        raise ValueError(f"{file}: a column name appears twice in the header {', '.join(header)}")
    values = np.full((len(rows) - 1, len(header)), np.nan)
    for number, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ValueError(f"{file}: row {number + 1} has {len(row)} values; the header has {len(header)}")
        for j, text in enumerate(row):
            try:
                values[number, j] = float(text)
            except ValueError:
                raise ValueError(f"{file}: row {number + 1}, column {header[j]}: not a number "
                                 f"({text.strip()[:40]!r})") from None
    return {name: values[:, j] for j, name in enumerate(header)}


def _npz_table(content: bytes, file: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            table = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{file} is not a readable NPZ file ({str(error).splitlines()[0][:120]})") from None
    for name, array in table.items():
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{file}: array {name} must be a 1-D array of numbers; found shape {array.shape}, "
                             f"{array.dtype}")
    return {name: array.astype(np.float64) for name, array in table.items()}


# ---------------------------------------------------------------- synthetic measurements

def make_measurements(problem, points: int, noise: float, seed: int,
                      value: str = "u") -> tuple[torch.Tensor, torch.Tensor, float]:
    """Synthetic measurements from the problem's exact solution: ``points`` uniform points of the domain
    (the problem's sampler, seeded by ``seed``) and the measured quantity there plus noise, the noise
    Gaussian with standard deviation sigma = ``noise`` x the RMS of the exact values. ``value``: what is
    measured, as a data condition writes it (u, or an expression of u's atoms such as ``d(u, x1)``).
    Returns X (n, D), values (n,), sigma (float64)."""
    if not problem.has_exact:
        raise PinnzoError(f"{problem.path or problem.name}: the problem has no exact solution to measure")
    measure = problem.exact_solution if value == "u" else problem.exact_quantity(value)
    generator = torch.Generator().manual_seed(seed)
    X = problem.sample_interior(points, generator, torch.float64)
    exact = measure(X)
    sigma = noise * exact.square().mean().sqrt().item()
    return X, exact + sigma * torch.randn(points, generator=generator, dtype=torch.float64), sigma


def measurements_csv(columns: Sequence[str], X: torch.Tensor, values: torch.Tensor, comments: Sequence[str],
                     column: str = "u") -> bytes:
    """A data file: ``# comment`` lines, the header (the variables, then ``column``), one row per point
    (17 significant digits: the file reads back exactly)."""
    buffer = io.StringIO()
    for comment in comments:
        buffer.write(f"# {comment}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, column])
    for row, value in zip(X.tolist(), values.tolist()):
        writer.writerow([repr(v) for v in (*row, value)])
    return buffer.getvalue().encode()


def measurements_npz(columns: Sequence[str], X: torch.Tensor, values: torch.Tensor, column: str = "u") -> bytes:
    """A data file as NPZ: one 1-D array per variable, and the values as ``column``."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: X[:, j].numpy() for j, name in enumerate(columns)}, **{column: values.numpy()})
    return buffer.getvalue()
