"""Run folders: one place that writes and reads them (solve, mnist, reproduce, plot, compare).

A run folder holds

    config.yaml    the task ("pinn" | "mnist"), resolved settings, and for a PINN the
                   problem's absolute path and the sha256 of its text
    problem.yaml   a copy of the problem (PINN runs), so the run stays readable after
                   the original file moves; data/ holds copies of its data files
    metrics.csv    one row per evaluation
    checkpoint.pt  everything to resume bit-identically: theta, optimizer state,
                   every generator's state, metrics (torch.load(..., weights_only=True))
    model.pt       final state dict; best.pt: the best evaluated one (PINN)
    summary.json   final and best figures, wall time, versions

Every file is written atomically (fileio.atomic_write).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pinnzo.errors import PinnzoError
from pinnzo.fileio import atomic_write, make_folder

CONFIG, PROBLEM_COPY, METRICS, CHECKPOINT = "config.yaml", "problem.yaml", "metrics.csv", "checkpoint.pt"
MODEL, BEST, SUMMARY, LOCK = "model.pt", "best.pt", "summary.json", ".lock"


def torch_bytes(obj) -> bytes:
    """``obj`` as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def text_digest(text: str) -> str:
    return bytes_digest(text.encode())


def bytes_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def numbered_run_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    path, suffix = base, 2
    while path.exists():
        path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    return path


def default_run_dir(group: str, label: str, root: Path = Path("results")) -> Path:
    """results/<group>/<date-time>-<label>, numbered if taken."""
    return numbered_run_dir(root / group / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}")


def refuse_nonempty(run_dir: Path) -> None:
    """A new run needs an empty (or missing) folder: nothing a user had is overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        raise PinnzoError(f"--out {run_dir}: this is a file, not a folder; choose another")
    if run_dir.exists() and any(path.name != LOCK for path in run_dir.iterdir()):
        raise PinnzoError(f"--out {run_dir}: the folder exists and is not empty; choose another "
                          f"(or --resume it)")


def open_run_dir(run_dir: Path, config: dict, resume: bool, files: dict[str, str | bytes] | None = None) -> None:
    """Prepare a run folder: write config.yaml (and ``files``: name -> text or bytes) for a new run,
    refusing a non-empty folder; or check that a resumed run's config.yaml matches ``config``."""
    run_dir = Path(run_dir)
    if not resume:
        refuse_nonempty(run_dir)
        make_folder(run_dir)
        for name, text in (files or {}).items():
            atomic_write(run_dir / name, text if isinstance(text, bytes) else text.encode())
        write_config(run_dir, config)
        return
    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / CONFIG).is_file():
        raise PinnzoError(f"--resume {run_dir}: no checkpoint.pt and config.yaml there; nothing to resume")
    saved = read_config(run_dir)
    if saved.get("task", "pinn") != config.get("task"):
        raise PinnzoError(f"--resume {run_dir}: it is a {saved.get('task', 'pinn')} run, not a "
                          f"{config.get('task')} run")
    differences = []
    if saved.get("problem_sha256") != config.get("problem_sha256"):
        differences.append(f"the problem differs from the one the run used ({saved.get('problem')})")
    missing, changed = compare_settings(saved["settings"], config["settings"], config.get("task"))
    if missing:
        raise PinnzoError(f"{run_dir / CONFIG}: damaged or written by an older pinnzo: it lacks the settings "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; the run cannot be resumed")
    differences += changed
    if differences:
        raise PinnzoError(f"--resume {run_dir}: the configuration does not match the saved run: "
                          + "; ".join(differences))


def compare_settings(saved: dict, current: dict, task: str | None) -> tuple[list[str], list[str]]:
    """(settings the saved run lacks, differences "key: saved X, now Y") between a run folder's
    settings and the current ones. A setting added to pinnzo after the run was written is missing
    from its config.yaml: the run used that setting's default, so it counts as the default (and is
    "missing" only when the current value differs from it, as for a damaged config.yaml)."""
    from pinnzo.settings import MnistSettings, Settings

    defaults = (MnistSettings if task == "mnist" else Settings)().as_dict()
    missing = [key for key, value in current.items()
               if key not in saved and (key not in defaults or defaults[key] != value)]
    changed = [f"{key}: saved {saved[key]!r}, now {value!r}" for key, value in current.items()
               if key in saved and saved[key] != value]
    return missing, changed


@contextlib.contextmanager
def writer_lock(run_dir: Path):
    """Hold an advisory lock on the run folder (fcntl.flock on RUN_DIR/.lock) while writing it:
    a second process that tries to write the same folder is refused with one line."""
    path = Path(run_dir) / LOCK
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PinnzoError(f"{run_dir}: another pinnzo process is writing this run folder; wait for it to "
                              f"finish (or stop it) before resuming") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())


def read_config(run_dir: Path) -> dict:
    """config.yaml as a mapping; PinnzoError when missing or damaged."""
    path = Path(run_dir) / CONFIG
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PinnzoError(f"{run_dir}: no config.yaml; not a pinnzo run folder") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PinnzoError(f"{path}: damaged ({type(error).__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("settings"), dict):
        raise PinnzoError(f"{path}: damaged (expected a mapping with settings)")
    return config


def run_task(run_dir: Path) -> str:
    """The task of a run folder: "pinn" or "mnist" (older PINN folders record none)."""
    return read_config(run_dir).get("task", "pinn")


def write_checkpoint(run_dir: Path, checkpoint: dict[str, Any], rows: list[dict], fields: list[str]) -> None:
    """checkpoint.pt and metrics.csv, atomically."""
    atomic_write(Path(run_dir) / CHECKPOINT, torch_bytes(checkpoint))
    write_metrics(run_dir, rows, fields)


def read_checkpoint(run_dir: Path, device) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except Exception as error:  # a truncated or foreign file: torch raises several types
        raise PinnzoError(f"{path}: damaged checkpoint ({type(error).__name__}); the run cannot be resumed "
                          f"from it") from None


def write_metrics(run_dir: Path, rows: list[dict], fields: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(Path(run_dir) / METRICS, buffer.getvalue().encode())


def read_metrics(run_dir: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """metrics.csv rows with numbers parsed; PinnzoError when missing, empty or lacking a column."""
    path = Path(run_dir) / METRICS
    try:
        with open(path) as file:
            reader = csv.DictReader(file)
            rows = [{k: _number(v) for k, v in row.items()} for row in reader]
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise PinnzoError(f"{run_dir}: no metrics.csv") from None
    missing = [name for name in required if name not in columns]
    if missing:
        raise PinnzoError(f"{path}: missing column(s) {', '.join(missing)}")
    if not rows:
        raise PinnzoError(f"{path}: no rows")
    return rows


def json_safe(value):
    """``value`` with every NaN or infinite float (nested in dicts and lists) replaced by None, so
    that it is strict JSON (null): a problem with no exact solution has no error to report."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, strict JSON (``json_safe``)."""
    atomic_write(Path(run_dir) / SUMMARY, json.dumps(json_safe(summary), indent=2, allow_nan=False).encode())


def read_summary(run_dir: Path, required: tuple[str, ...] = ()) -> dict:
    """summary.json; PinnzoError when missing, damaged or lacking a field."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        hint = (" (the run did not finish: continue it with --resume)" if (Path(run_dir) / CHECKPOINT).is_file()
                else "")
        raise PinnzoError(f"{run_dir}: not a finished pinnzo run: no summary.json{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PinnzoError(f"{path}: damaged ({type(error).__name__})") from None
    missing = [key for key in required if not isinstance(summary, dict) or key not in summary]
    if missing:
        raise PinnzoError(f"{path}: missing field(s) {', '.join(missing)}")
    return summary


def write_model(run_dir: Path, name: str, state_dict: dict) -> None:
    atomic_write(Path(run_dir) / name, torch_bytes(state_dict))


def read_model(run_dir: Path, name: str = MODEL) -> dict:
    path = Path(run_dir) / name
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise PinnzoError(f"{run_dir}: not a finished pinnzo run: no {name}") from None
    except Exception as error:  # truncated or foreign: torch raises several types
        raise PinnzoError(f"{path}: damaged ({type(error).__name__})") from None


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text
