"""On-disk cache of standard-normal rules: one file per (family, dim, level).

File layout (format version 2)::

    PINNZO-RULE\n
    {json header}\n          family, dim, level, degree, size, center, table
                              size, index dtype, payload length
    payload                  coordinate table (float64), node -> table index,
                              weights (float64), mirror (int64)
    sha256                   32 bytes: the digest of everything before it

Nodes are stored as indices into the table of their distinct coordinate
values, so a round trip is bit-identical and files stay small. The checksum
covers every byte before it, header included. A file is trusted only when its
magic, checksum and layout are right *and* its header agrees with its payload
and with the request: the origin is node ``center``, ``mirror`` pairs every
node with its negation, the weights sum to 1, and family, dim, level and
degree are the ones asked for. Anything else is rebuilt (with a warning) and
the file rewritten. Format 1 files (the payload's checksum in the header) are
still read; their header is covered by the same consistency checks. Writes go
to a temporary file in the same folder and are renamed into place, so
concurrent builders cannot leave a half-written file. A file that cannot be
read (permissions) is treated as missing; one that cannot be replaced leaves
the rule in memory only (a warning says so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from pinnzo.fileio import atomic_write
from pinnzo.quadrature.rule import Rule, find_center

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MAGIC = b"PINNZO-RULE\n"
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 1 << 16
INDEX_DTYPES = ("|i1", "<i2", "<i4")
ENV_VAR = "PINNZO_QUADRATURE_DIR"
_CHUNK = 1 << 20  # node-matrix entries handled at once by encode and decode
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


def _row_chunks(nodes: np.ndarray):
    rows = max(1, _CHUNK // max(1, nodes.shape[1]))
    for start in range(0, len(nodes), rows):
        yield nodes[start:start + rows]


def encode(rule: Rule) -> bytes:
    """The file contents for ``rule``."""
    # np.unique(nodes, return_inverse=True) chunk by chunk: a few bytes per
    # node-matrix entry on top of the nodes instead of ~40
    table = np.unique(np.concatenate([np.unique(chunk) for chunk in _row_chunks(rule.nodes)]))
    index_dtype = np.dtype("i1" if len(table) < 2**7 else "<i2" if len(table) < 2**15 else "<i4")
    index = np.concatenate([np.searchsorted(table, chunk).astype(index_dtype)
                            for chunk in _row_chunks(rule.nodes)])
    parts = [table.astype("<f8"), index, rule.weights.astype("<f8"), rule.mirror.astype("<i8")]
    payload = b"".join(p.tobytes() for p in parts)
    header = {
        "format": FORMAT_VERSION, "family": rule.family, "dim": rule.dim, "level": rule.level,
        "degree": rule.degree, "size": rule.size, "center": rule.center, "table": len(table),
        "index_dtype": index_dtype.str, "payload_bytes": len(payload),
    }
    body = MAGIC + json.dumps(header).encode() + b"\n" + payload
    return body + hashlib.sha256(body).digest()


def _integer(header: dict, name: str, minimum: int) -> int:
    value = header.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"header field {name!r} is not an integer >= {minimum}")
    return value


def _header_and_payload(data: bytes) -> tuple[dict, bytes]:
    """The JSON header and the checksummed payload of a rule file; ValueError when damaged."""
    if not data.startswith(MAGIC):
        raise ValueError("bad magic")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_BYTES)
    if end < 0:
        raise ValueError("no header line")
    header = json.loads(data[len(MAGIC):end])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    version = header.get("format")
    if version == 2:
        if len(data) < end + 1 + DIGEST_BYTES or \
                hashlib.sha256(data[:-DIGEST_BYTES]).digest() != data[-DIGEST_BYTES:]:
            raise ValueError("checksum mismatch (truncated or corrupted)")
        return header, data[end + 1:-DIGEST_BYTES]
    if version == 1:
        payload = data[end + 1:]
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise ValueError("checksum mismatch (truncated or corrupted)")
        return header, payload
    raise ValueError(f"format {str(version)[:20]} is not one of {READABLE_FORMATS}")


def _check_rule(nodes: np.ndarray, weights: np.ndarray, mirror: np.ndarray, center, rows: int) -> None:
    """ValueError unless the weights sum to 1, the mirror pairs each node with its negation and the
    header's center is the origin node."""
    n = len(nodes)
    if not np.isfinite(weights).all() or \
            abs(weights.sum() - 1.0) > 1e-9 * max(1.0, float(np.abs(weights).sum())):
        raise ValueError("the weights are not finite or do not sum to 1")
    if mirror.min() < 0 or mirror.max() >= n or not np.array_equal(mirror[mirror], np.arange(n)) \
            or not all(np.array_equal(nodes[mirror[start:start + rows]], -nodes[start:start + rows])
                       for start in range(0, n, rows)):
        raise ValueError("the mirror does not pair every node with its negation")
    if find_center(nodes) != center:
        raise ValueError(f"the header's center {center} is not the payload's origin node {find_center(nodes)}")


def decode(data: bytes, expect: tuple | None = None) -> Rule:
    """Parse file contents; raise ValueError on any corruption or inconsistency.

    ``expect``: (family, dim, level) or (family, dim, level, degree) the file
    must hold.
    """
    header, payload = _header_and_payload(data)
    family, center = header.get("family"), header.get("center")
    if not isinstance(family, str):
        raise ValueError("header field 'family' is not a string")
    dim, level = _integer(header, "dim", 1), _integer(header, "level", 1)
    degree, n, count = _integer(header, "degree", 0), _integer(header, "size", 1), _integer(header, "table", 1)
    if header.get("index_dtype") not in INDEX_DTYPES:
        raise ValueError("header field 'index_dtype' is not one of " + ", ".join(INDEX_DTYPES))
    if center is not None and (isinstance(center, bool) or not isinstance(center, int)):
        raise ValueError("header field 'center' is not an integer or null")
    if expect is not None:
        found = (family, dim, level, degree)[:len(expect)]
        if found != tuple(expect):
            raise ValueError(f"the header holds {found}, expected {tuple(expect)}")
    index_dtype = np.dtype(header["index_dtype"])
    sizes = [8 * count, index_dtype.itemsize * n * dim, 8 * n, 8 * n]
    if len(payload) != sum(sizes) or header.get("payload_bytes") != len(payload):
        raise ValueError(f"the payload has {len(payload)} bytes; the header's sizes need {sum(sizes)}")
    offsets = np.cumsum([0] + sizes)
    table = np.frombuffer(payload, "<f8", count, int(offsets[0]))
    index = np.frombuffer(payload, index_dtype, n * dim, int(offsets[1])).reshape(n, dim)
    weights = np.frombuffer(payload, "<f8", n, int(offsets[2])).astype(np.float64)
    mirror = np.frombuffer(payload, "<i8", n, int(offsets[3])).astype(np.int64)
    if not (np.isfinite(table).all() and (np.diff(table) > 0).all()):
        raise ValueError("the coordinate table is not finite and increasing")
    if index.min() < 0 or index.max() >= count:
        raise ValueError("a node index points outside the coordinate table")
    nodes = np.empty((n, dim))
    rows = max(1, _CHUNK // dim)  # table[index] in chunks: no n x D int64 copy of the index
    for start in range(0, n, rows):
        nodes[start:start + rows] = table[index[start:start + rows]]
    _check_rule(nodes, weights, mirror, center, rows)
    return Rule(nodes, weights, dim, level, family, degree, mirror, center)


def load(path: Path, expect: tuple | None = None) -> Rule | None:
    """The rule stored at ``path``, or None when missing or not trustworthy.

    ``expect``: what the file must hold, as for ``decode``.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:  # unreadable (permissions), a folder, ...: like a missing file
        _log.warning("cannot read quadrature cache file %s (%s); rebuilding the rule",
                     path, error.strerror or error)
        return None
    try:
        return decode(data, expect)
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError) as error:
        _log.warning("quadrature cache file %s is invalid (%s); rebuilding it", path, str(error)[:200])
        return None


def save(rule: Rule, path: Path) -> None:
    """Write ``rule`` to ``path`` atomically (temporary file + rename)."""
    atomic_write(path, encode(rule))


def read_header(path: Path) -> dict | None:
    """The header of the rule file at ``path`` when it is readable and well-formed, else None."""
    try:
        with open(path, "rb") as file:
            if file.read(len(MAGIC)) != MAGIC:
                return None
            header = json.loads(file.readline(MAX_HEADER_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("family"), str):
        return None
    for name in ("dim", "level", "size", "degree"):
        if isinstance(header.get(name), bool) or not isinstance(header.get(name), int):
            return None
    return header


def list_cached(cache_dir: Path) -> list[tuple[Path, dict | None]]:
    """(path, header or None if unreadable) for every rule file in ``cache_dir``."""
    return [(path, read_header(path)) for path in sorted(Path(cache_dir).glob("*.rule"))]
