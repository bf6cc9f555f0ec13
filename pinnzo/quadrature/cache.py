"""On-disk cache of standard-normal rules: one file per (family, dim, level).

File layout (format version 1)::

    PINNZO-RULE\n
    {json header}\n          family, dim, level, degree, size, center, dtypes,
                              payload length and its sha256
    payload                  coordinate table (float64), node -> table index,
                              weights (float64), mirror (int64)

Nodes are stored as indices into the table of their distinct coordinate
values, so a round trip is bit-identical and files stay small. A file whose
magic, header, length or checksum is wrong is never trusted: the rule is
rebuilt and the file rewritten. Writes go to a temporary file in the same
folder and are renamed into place, so concurrent builders cannot leave a
half-written file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from pinnzo.fileio import atomic_write
from pinnzo.quadrature.rule import Rule

FORMAT_VERSION = 1
MAGIC = b"PINNZO-RULE\n"
ENV_VAR = "PINNZO_QUADRATURE_DIR"
_log = logging.getLogger("pinnzo")


def default_cache_dir() -> Path:
    """``$PINNZO_QUADRATURE_DIR``, else the repository's ``quadrature/`` folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    repo_folder = Path(__file__).resolve().parents[2] / "quadrature"
    if repo_folder.is_dir():
        return repo_folder
    return Path.home() / ".cache" / "pinnzo" / "quadrature"


def cache_path(cache_dir: Path, family: str, dim: int, level: int) -> Path:
    return Path(cache_dir) / f"{family}-d{dim}-l{level}.rule"


def encode(rule: Rule) -> bytes:
    """The file contents for ``rule``."""
    table, index = np.unique(rule.nodes, return_inverse=True)
    index_dtype = np.dtype("i1" if len(table) < 2**7 else "<i2" if len(table) < 2**15 else "<i4")
    parts = [table.astype("<f8"), index.reshape(rule.nodes.shape).astype(index_dtype),
             rule.weights.astype("<f8"), rule.mirror.astype("<i8")]
    payload = b"".join(p.tobytes() for p in parts)
    header = {
        "format": FORMAT_VERSION, "family": rule.family, "dim": rule.dim, "level": rule.level,
        "degree": rule.degree, "size": rule.size, "center": rule.center, "table": len(table),
        "index_dtype": index_dtype.str, "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return MAGIC + json.dumps(header).encode() + b"\n" + payload


def decode(data: bytes) -> Rule:
    """Parse file contents; raise ValueError on any corruption."""
    if not data.startswith(MAGIC):
        raise ValueError("bad magic")
    end = data.index(b"\n", len(MAGIC))
    header = json.loads(data[len(MAGIC):end])
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {header.get('format')} != {FORMAT_VERSION}")
    payload = data[end + 1:]
    if len(payload) != header["payload_bytes"] or hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise ValueError("checksum mismatch (truncated or corrupted)")
    n, dim, count = header["size"], header["dim"], header["table"]
    index_dtype = np.dtype(header["index_dtype"])
    offsets = np.cumsum([0, 8 * count, index_dtype.itemsize * n * dim, 8 * n, 8 * n])
    table = np.frombuffer(payload, "<f8", count, offsets[0])
    index = np.frombuffer(payload, index_dtype, n * dim, offsets[1]).reshape(n, dim)
    weights = np.frombuffer(payload, "<f8", n, offsets[2]).astype(np.float64)
    mirror = np.frombuffer(payload, "<i8", n, offsets[3]).astype(np.int64)
    return Rule(table[index], weights, dim, header["level"], header["family"], header["degree"],
                mirror, header["center"])


def load(path: Path) -> Rule | None:
    """The rule stored at ``path``, or None when missing or not trustworthy."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode(data)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        _log.warning("quadrature cache file %s is invalid (%s); rebuilding it", path, error)
        return None


def save(rule: Rule, path: Path) -> None:
    """Write ``rule`` to ``path`` atomically (temporary file + rename)."""
    atomic_write(path, encode(rule))


def list_cached(cache_dir: Path) -> list[tuple[Path, dict | None]]:
    """(path, header or None if unreadable) for every rule file in ``cache_dir``."""
    found = []
    for path in sorted(Path(cache_dir).glob("*.rule")):
        try:
            with open(path, "rb") as file:
                head = file.read(len(MAGIC))
                header = json.loads(file.readline()) if head == MAGIC else None
        except (OSError, ValueError):
            header = None
        found.append((path, header))
    return found
