"""Hostile and broken input: every outcome is a result or one line ``pinnzo: error: ...`` with exit 2.

Table-driven: each case is a problem file's text (for ``pinnzo check``) or a
flag set (for ``pinnzo quadrature``), with a fragment of the expected message.
A seeded fuzz test mutates the shipped problem files and runs the check path.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import run_cli
from pinnzo.derivatives import BACKENDS
from pinnzo.errors import PinnzoError
from pinnzo.fileio import atomic_write
from pinnzo.optim import OPTIMIZERS
from pinnzo.quadrature import _cached_rule, build_rule, cache, get_rule, rule_path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "problems").glob("*.yaml"))

BASE = """variables:
  space: {name: x, dim: 2, domain: [0, 1]}
  time: {name: t, domain: [0, 1]}
equation: d(u, t) - lap(u)
"""
EXACT = BASE + "exact: exp(-t) * x1\n"
INVERSE = BASE.replace("- lap(u)", "- kappa * lap(u)") + "unknowns: {kappa: {initial: 0.5, bounds: [0, 1]}}\nconditions:\n"
DATA_FILES = {  # written beside every case's problem file
    "good.csv": "x1,x2,t,u\n0.1,0.2,0.3,1.0\n",
    "wrong-columns.csv": "x1,x2,t,v\n0.1,0.2,0.3,1.0\n",
    "nan.csv": "# a comment line\nx1,x2,t,u\n0.1,0.2,0.3,1.0\n0.1,0.2,0.4,nan\n",
}


def _alias_bomb() -> str:
    """Nine levels of nine aliases: 9^9 = 387 million strings from about 450 bytes."""
    items = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return BASE + "parameters:\n  a: [" + ", ".join(items) + "]\n"


def _alias_depth() -> str:
    """Each anchor nests the previous one 30 levels deeper: shallow as written, deep when expanded."""
    lines = ["  a0: &l0 " + "[" * 30 + "1" + "]" * 30]
    lines += [f"  a{i}: &l{i} " + "[" * 30 + f"*l{i - 1}" + "]" * 30 for i in range(1, 3)]
    return BASE + "parameters:\n" + "\n".join(lines) + "\n"


def _domain(domain: str, dim: int = 2, time: bool = True) -> str:
    """A problem on the given spatial domain (YAML flow text)."""
    text = f"variables:\n  space: {{name: x, dim: {dim}, domain: {domain}}}\n"
    text += "  time: {name: t, domain: [0, 1]}\nequation: d(u, t) - lap(u)\n" if time else "equation: lap(u)\n"
    return text


PROBLEM_CASES = [
    # 2. YAML bombs and depth: refused before anything is built, one short line
    ("alias-bomb", _alias_bomb(), "expands to more than 100,000 values"),
    ("alias-depth", _alias_depth(), "nested deeper than 64 levels (aliases expanded)"),
    ("recursive-alias", BASE + "parameters: &a {b: *a}\n", "an alias refers to a collection that contains it"),
    ("deep-flow", BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 64 levels"),
    ("deep-block", BASE + "description:\n" + "".join(" " * i + "- \n" for i in range(1, 200)),
     "nested deeper than 64 levels"),
    ("long-list", BASE + "description: [" + ", ".join(map(str, range(20000))) + "]\n",
     "description: expected a string; found a list [0, 1, 2, 3, ...]"),
    ("huge-integer", BASE + "parameters: {a: " + "9" * 5000 + "}\n", "a value cannot be read"),
    ("too-large-file", BASE + "description: '" + "x" * (1 << 20) + "'\n", "a problem file is at most"),
    # 3. duplicate keys
    ("duplicate-top-key", BASE + "equation: u\n", "duplicate key 'equation'"),
    ("duplicate-nested-key", BASE + "conditions:\n  c: {at: initial, value: 0}\n  c: {at: boundary, value: 0}\n",
     "duplicate key 'c'"),
    ("duplicate-inline-key", BASE.replace("dim: 2,", "dim: 2, dim: 3,"), "duplicate key 'dim'"),
    ("unhashable-key", BASE + "!!set a: 1\n", "found unhashable key"),
    # 4. the name is a folder name
    ("name-traversal", BASE + "name: ../../../x\n", "name: expected letters, digits"),
    ("name-absolute", BASE + "name: /etc/cron.d/x\n", "found '/etc/cron.d/x'"),
    ("name-separator", BASE + "name: a/b\n", "name: expected letters, digits"),
    ("name-backslash", BASE + "name: 'a\\b'\n", "name: expected letters, digits"),
    ("name-dotdot", BASE + "name: '..'\n", "name: expected letters, digits"),
    ("name-hidden", BASE + "name: .hidden\n", "not starting with '.'"),
    ("name-newline", BASE + 'name: "a\\nb"\n', "found 'a\\nb'"),
    ("name-empty", BASE + "name: ''\n", "name: expected letters, digits"),
    ("name-long", BASE + "name: " + "x" * 65 + "\n", "at most 64 characters"),
    ("name-not-a-string", BASE + "name: [1, 2]\n", "name: expected a string"),
    ("condition-name-residual", BASE + "conditions:\n  residual: {at: initial, value: 0}\n",
     "conditions.residual: expected a condition name"),
    ("condition-name-number", BASE + "conditions:\n  1: {at: initial, value: 0}\n",
     "conditions.1: expected a condition name"),
    # 8. constants that are not finite reals, reported under their own key
    ("exp-tower", BASE + "exact: exp(exp(exp(exp(10))))\n", "exact: the constant exp(exp(exp(exp(10)))) is not"),
    ("exact-log0", BASE + "exact: log(0) + x1\n", "exact: the constant zoo is not a finite real number"),
    ("exact-sqrt-1", BASE + "exact: sqrt(-1) * x1\n", "exact: the constant I is not"),
    ("condition-log0", BASE + "conditions:\n  c: {at: initial, value: log(0)}\n",
     "conditions.c.value: the constant zoo"),
    ("ansatz-sqrt-1", BASE + "ansatz: sqrt(-1) * N\n", "ansatz: the constant I"),
    ("equation-log0", BASE.replace("- lap(u)", "- log(0) * lap(u)"), "equation: the constant"),
    # 9. what solve would refuse, check refuses
    ("exact-acos2", BASE + "exact: acos(2)\n", "exact: the constant acos(2) is not a finite real number"),
    ("exact-exp1000", BASE + "exact: exp(1000)\n", "exact: the constant exp(1000) is not"),
    ("exact-nan-on-domain", BASE + "exact: sqrt(x1 - 2)\n", "exact: is nan at (x1="),
    ("exact-inf-on-domain", BASE + "exact: exp(1000 * x1)\n", "exact: is inf at"),
    ("condition-inf-on-set", BASE + "conditions:\n  c: {at: boundary, value: log(x1)}\n",
     "conditions.c.value: is -inf at (x1=0"),
    ("infinite-domain", BASE.replace("domain: [0, 1]}\n  time", "domain: [0, .inf]}\n  time"),
     "variables.space.domain[1]: expected a finite number; found inf"),
    ("nan-domain", BASE.replace("{name: t, domain: [0, 1]}", "{name: t, domain: [.nan, 1]}"),
     "variables.time.domain[0]: expected a finite number; found nan"),
    ("overflowing-domain", BASE.replace("domain: [0, 1]}\n  time", "domain: [-1.0e+308, 1.0e+308]}\n  time"),
     "expected an interval of finite length"),
    ("nan-parameter", BASE + "parameters: {nu: .nan}\n", "parameters.nu: expected a finite number; found nan"),
    ("inf-parameter", BASE + "parameters: {nu: -.inf}\n", "parameters.nu: expected a finite number; found -inf"),
    ("nan-weight", BASE + "conditions:\n  c: {at: initial, value: 0, weight: .nan}\n",
     "conditions.c.weight: expected a finite number"),
    ("inf-weight", BASE + "conditions:\n  c: {at: initial, value: 0, weight: .inf}\n",
     "conditions.c.weight: expected a finite number"),
    ("unknown-backend", BASE + "solve: {backend: magic}\n",
     "solve.backend: unknown backend 'magic'; must be one of " + ", ".join(BACKENDS.names())),
    ("unknown-optimizer", BASE + "solve: {optimizer: magic}\n",
     "solve.optimizer: unknown optimizer 'magic'; must be one of " + ", ".join(OPTIMIZERS.names())),
    ("unknown-rule", BASE + "solve: {rule: simpson}\n", "solve.rule: unknown quadrature family 'simpson'"),
    ("rule-needs-dim-2", "variables:\n  space: {name: x, dim: 1, domain: [0, 1]}\nequation: lap(u)\n"
     "solve: {backend: sparse-grid, rule: lu-darmofal}\n", "solve.rule: quadrature dim must be an integer >= 2"),
    ("rule-level", BASE + "solve: {backend: sparse-grid, level: 25}\n", "solve.level: quadrature level must be"),
    ("setting-is-a-list", BASE + "solve: {steps: [1, 2]}\n", "solve.steps: expected a number or a string"),
    ("huge-dim", BASE.replace("dim: 2", "dim: 100000000000"), "variables.space.dim: expected an integer <= 1000"),
    # domains beyond boxes: not simple, measure zero, wrong dimension, unknown shape, conditions without sense
    ("polygon-not-simple", _domain("{polygon: {vertices: [[0, 0], [3, 2], [3, 0], [0, 1]]}}"),
     "variables.space.domain.polygon.vertices: expected a simple polygon (no self-intersection); edges 0 and 2"),
    ("polygon-repeated-vertex", _domain("{polygon: {vertices: [[0, 0], [1, 0], [1, 1], [1, 0], [0, 1]]}}"),
     "polygon.vertices: expected a simple polygon (no self-intersection); vertices 1 and 3 coincide"),
    ("polygon-collinear", _domain("{polygon: {vertices: [[0, 0], [1, 1], [2, 2]]}}"),
     "variables.space.domain.polygon.vertices: the polygon has zero area"),
    ("polygon-dim-3", _domain("{polygon: {vertices: [[0, 0], [1, 0], [0, 1]]}}", dim=3),
     "variables.space.domain.polygon: a polygon is 2-D but dim is 3"),
    ("disk-dim-3", _domain("{disk: {center: [0, 0, 0], radius: 1}}", dim=3),
     "variables.space.domain.disk: a disk is 2-D but dim is 3; use ball"),
    ("disk-radius-0", _domain("{disk: {center: [0, 0], radius: 0}}"),
     "variables.space.domain.disk.radius: expected a radius > 0 (a domain of positive measure); found 0"),
    ("ball-center-short", _domain("{ball: {center: [0], radius: 1}}"),
     "variables.space.domain.ball.center: expected a point of 2 numbers (dim is 2)"),
    ("annulus-inner-outer", _domain("{annulus: {center: [0, 0], inner: 1, outer: 0.5}}"),
     "variables.space.domain.annulus: expected inner < outer"),
    ("box-lo-equals-hi", _domain("{box: {lows: [0, 1], highs: [1, 1]}}"),
     "variables.space.domain.box: expected lows < highs in every coordinate"),
    ("pairs-lo-equals-hi", _domain("[[0, 1], [2, 2]]"), "variables.space.domain[1]: expected low < high"),
    ("difference-removes-all", _domain("{difference: {of: {disk: {center: [0, 0], radius: 1}}, minus: [-2, 2]}}"),
     "variables.space.domain.difference: the difference has measure zero"),
    ("unknown-shape", _domain("{circle: {center: [0, 0], radius: 1}}"),
     "variables.space.domain: unknown domain shape 'circle'; must be one of box, ball, disk, annulus, polygon"),
    ("shape-unknown-key", _domain("{disk: {centre: [0, 0], radius: 1}}"),
     "variables.space.domain.disk.centre: unknown key; allowed keys: center, radius"),
    ("union-not-a-list", _domain("{union: {disk: {center: [0, 0], radius: 1}}}"),
     "variables.space.domain.union: expected a list of 1 to 64 shapes"),
    ("initial-without-time", _domain("{disk: {center: [0, 0], radius: 1}}", time=False)
     + "conditions:\n  c: {at: initial, value: 0}\n", "conditions.c.at: an initial condition needs a time variable"),
    ("terminal-without-time", _domain("{disk: {center: [0, 0], radius: 1}}", time=False)
     + "conditions:\n  c: {at: terminal, value: 0}\n", "conditions.c.at: an terminal condition needs a time"),
    ("neumann-at-initial", _domain("{disk: {center: [0, 0], radius: 1}}")
     + "conditions:\n  c: {at: initial, type: neumann, value: 0}\n",
     "conditions.c.type: neumann conditions apply on the boundary only"),
    # keys with newlines: escaped, one line
    ("newline-top-key", BASE + '"a\\nb": 1\n', "'a\\nb': unknown key"),
    ("newline-parameter", BASE + 'parameters: {"a\\nb": 1}\n', "parameters.'a\\nb': expected a plain identifier"),
    ("newline-condition", BASE + 'conditions:\n  "c\\n": {at: initial, value: 0}\n',
     "conditions.'c\\n': expected a condition name"),
    ("newline-setting", BASE + 'solve: {"steps\\r\\n": 1}\n', "solve.'steps\\r\\n': unknown key"),
    ("not-utf8", BASE.encode() + b"description: \xff\xfe\n", "not a text file"),
    # inverse problems: unknowns and data files (DATA_FILES lie beside the problem file)
    ("data-file-missing", INVERSE + "  m: {at: data, file: absent.csv}\n",
     "conditions.m.file: no such data file absent.csv"),
    ("data-file-wrong-columns", INVERSE + "  m: {at: data, file: wrong-columns.csv}\n",
     "conditions.m.file: wrong-columns.csv has columns x1, x2, t, v; expected exactly x1, x2, t, u"),
    ("data-file-nan", INVERSE + "  m: {at: data, file: nan.csv}\n",
     "conditions.m.file: nan.csv: column u holds nan in row 2"),
    ("data-file-outside-folder", INVERSE + "  m: {at: data, file: ../good.csv}\n",
     "conditions.m.file: expected a path relative to the problem file's folder"),
    ("data-measured-unknown-atom", INVERSE + "  m: {at: data, file: good.csv, value: \"d(u, y)\"}\n",
     "conditions.m.value: unknown name 'y'"),
    ("data-noise-negative", INVERSE + "  m: {at: data, file: good.csv, noise: -1}\n",
     "conditions.m.noise: expected the standard deviation of the noise"),
    ("unknown-bounds-reversed", INVERSE.replace("bounds: [0, 1]", "bounds: [2, 1]") + "  m: {at: data, file: good.csv}\n",
     "unknowns.kappa.bounds: expected low < high; found [2, 1]"),
    ("unknown-initial-outside", INVERSE.replace("initial: 0.5", "initial: 3") + "  m: {at: data, file: good.csv}\n",
     "unknowns.kappa.initial: expected a value strictly inside the bounds (0, 1); found 3"),
    ("unknown-initial-on-a-bound", INVERSE.replace("initial: 0.5", "initial: 1") + "  m: {at: data, file: good.csv}\n",
     "unknowns.kappa.initial: expected a value strictly inside the bounds"),
    ("unknown-unused", INVERSE.replace("kappa * lap(u)", "lap(u)") + "  m: {at: data, file: good.csv}\n",
     "unknowns.kappa: appears neither in the equation nor in a condition"),
    ("unknown-is-a-variable", INVERSE.replace("unknowns: {kappa:", "unknowns: {x1:"),
     "unknowns.x1: 'x1' is already a variable, a parameter or a derivative of u"),
    ("unknown-is-a-parameter", INVERSE.replace("unknowns: {kappa:", "parameters: {c: 1}\nunknowns: {c:"),
     "unknowns.c: 'c' is already a variable, a parameter"),
    ("unknown-is-reserved", INVERSE.replace("unknowns: {kappa:", "unknowns: {lap:"),
     "unknowns.lap: 'lap' is reserved"),
    ("unknown-is-a-metric", INVERSE.replace("unknowns: {kappa:", "unknowns: {loss:"),
     "unknowns.loss: 'loss' names a column of metrics.csv"),
    ("unknown-in-exact", INVERSE + "  m: {at: data, file: good.csv}\nexact: kappa * x1\n", "exact: unknown name 'kappa'"),
    ("unknown-manufactured", INVERSE + "  m: {at: data, file: good.csv}\nexact: x1\nsource: manufactured\n",
     "source: a manufactured source cannot be derived from an equation with unknowns"),
]


@pytest.mark.parametrize("text, needle", [case[1:] for case in PROBLEM_CASES], ids=[c[0] for c in PROBLEM_CASES])
def test_bad_problem_file_gives_one_line_and_exit_2(tmp_path, text, needle):
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for name, content in DATA_FILES.items():
        (tmp_path / name).write_text(content)
    started = time.perf_counter()
    result = run_cli(["check", str(path)])
    assert time.perf_counter() - started < 5, "refused too slowly"
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output[-2000:]
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pinnzo: error: {path}: "), result.output[-2000:]
    assert len(lines[0]) <= 1100
    assert needle in lines[0], lines[0]


def test_problem_name_defaults_to_a_safe_file_name(tmp_path):
    good = tmp_path / "my-problem_2.v1.yaml"
    good.write_text(EXACT)
    result = run_cli(["check", str(good)])
    assert result.exit_code == 0 and "problem       my-problem_2.v1:" in result.output, result.output
    bad = tmp_path / "my problem.yaml"
    bad.write_text(EXACT)
    result = run_cli(["check", str(bad)])
    assert result.exit_code == 2 and "name: no name given and the file name 'my problem'" in result.output


def test_shipped_problems_and_their_yaml_anchors_still_load():
    """black-scholes.yaml shares its exact price through an anchor: scalar aliases are fine."""
    for path in SHIPPED:
        result = run_cli(["check", str(path)])
        assert result.exit_code == 0, (path, result.output)


def test_shipped_exact_solutions_satisfy_their_equations_and_conditions():
    """The exact solutions are the shipped problems' (and docs/examples') self-verification: equation
    and conditions to rounding; measured data within a few noise levels."""
    from pinnzo.problem import load_problem

    examples = sorted((Path(__file__).resolve().parents[1] / "docs" / "examples").glob("*.yaml"))
    assert len(examples) == 14
    for path in [*SHIPPED, *examples]:
        problem = load_problem(path)
        if not problem.has_exact:
            continue
        checks = problem.exact_check()
        for condition in problem.conditions:
            if condition.data is not None:
                noise = condition.data.noise
                assert noise is not None and checks.pop(condition.name) < 3 * noise, (path, condition.name)
        assert max(checks.values()) < 1e-10, (path, checks)


# ---- quadrature: flags and the cache --------------------------------------

QUADRATURE_CASES = [
    # 5. memory guards count the n x D node matrix and cover lu-darmofal
    ("dim-20000-level-2", ["build", "--dim", "20000", "--level", "2"], "in 20000 dimensions needs about"),
    ("lu-darmofal-dim-500", ["build", "--dim", "500", "--level", "3", "--family", "lu-darmofal"],
     "lu-darmofal level 3 in 500 dimensions needs about"),
    ("many-equal-excesses", ["build", "--dim", "19", "--level", "20"], "GiB to build"),
    ("huge-dim", ["build", "--dim", "10000000000", "--level", "1"], "env PINNZO_QUADRATURE_MAX_BYTES"),
    # 7. flags checked before the build
    ("out-not-npz", ["build", "--dim", "3", "--level", "3", "--out", "r.txt"], "--out must name an .npz file"),
    ("out-is-folder", ["build", "--dim", "3", "--level", "3", "--out", "folder.npz"], "not a writable file path"),
    ("cache-dir-is-file", ["build", "--dim", "3", "--level", "3", "--cache-dir", "afile"],
     "--cache-dir afile: not a folder"),
    ("list-cache-dir-is-file", ["list", "--cache-dir", "afile"], "--cache-dir afile: not a folder"),
]


@pytest.mark.parametrize("args, needle", [case[1:] for case in QUADRATURE_CASES], ids=[c[0] for c in QUADRATURE_CASES])
def test_bad_quadrature_flags_give_one_line_before_any_build(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "folder.npz").mkdir()
    started = time.perf_counter()
    result = run_cli(["quadrature", *args])
    assert time.perf_counter() - started < 2, "the rule was built (or the guard is slow) before the refusal"
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnzo: error: "), result.output
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "quadrature-cache").exists(), "a rule was built and cached"


def test_bad_memory_limit_variable_is_one_line(monkeypatch):
    monkeypatch.setenv("PINNZO_QUADRATURE_MAX_BYTES", "lots")
    result = run_cli(["quadrature", "build", "--dim", "3", "--level", "3"])
    assert result.exit_code == 2 and "PINNZO_QUADRATURE_MAX_BYTES: expected a positive number" in result.output
    monkeypatch.setenv("PINNZO_QUADRATURE_MAX_BYTES", str(2**20))
    result = run_cli(["quadrature", "build", "--dim", "300", "--level", "3"])
    assert result.exit_code == 2 and "limit 0.000977 GiB" in result.output, result.output


@pytest.mark.parametrize("header", [b"[]", b"null", b"42", b'"text"', b"{}", b'{"format": 2}',
                                    b'{"format": 1, "family": [], "dim": "3"}', b"[" * 100_000])
def test_cache_header_of_any_json_is_rebuilt_in_build_and_unreadable_in_list(tmp_path, caplog, header):
    folder = tmp_path / "c"
    path = rule_path("gauss-hermite", 3, 3, folder)
    folder.mkdir()
    path.write_bytes(cache.MAGIC + header + b"\n" + bytes(40))
    with caplog.at_level(logging.WARNING, logger="pinnzo"):
        result = run_cli(["quadrature", "build", "--dim", "3", "--level", "3", "--cache-dir", str(folder)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "is invalid" in caplog.text and "rebuilding it" in caplog.text
    assert cache.load(path) is not None, "the bad file was not rewritten"
    path.write_bytes(cache.MAGIC + header + b"\n" + bytes(40))
    listing = run_cli(["quadrature", "list", "--cache-dir", str(folder)])
    assert listing.exit_code == 0 and "unreadable (rebuilt on next use)" in listing.output, listing.output


def test_every_bit_of_a_cache_file_is_checked(tmp_path):
    """1. Flip each bit of a whole file in turn, header included: the file is never trusted."""
    rule = build_rule("gauss-hermite", 2, 2)
    good = cache.encode(rule)
    assert cache.decode(good, ("gauss-hermite", 2, 2, 3)).nodes.tobytes() == rule.nodes.tobytes()
    accepted = []
    for position in range(len(good)):
        for bit in range(8):
            damaged = bytearray(good)
            damaged[position] ^= 1 << bit
            try:
                cache.decode(bytes(damaged), ("gauss-hermite", 2, 2, 3))
            except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                continue
            accepted.append((position, bit))
    assert not accepted, f"bit flips accepted at (byte, bit) {accepted[:5]}"


def _center_flipped(data: bytes) -> bytes:
    at = data.index(b'"center": ') + len(b'"center": ')
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def _format1(rule, **header_changes) -> bytes:
    """A file in format 1, whose checksum covers only the payload (as pinnzo wrote before)."""
    import hashlib
    import json

    table, index = np.unique(rule.nodes, return_inverse=True)
    parts = [table.astype("<f8"), index.reshape(rule.nodes.shape).astype("i1"),
             rule.weights.astype("<f8"), rule.mirror.astype("<i8")]
    payload = b"".join(p.tobytes() for p in parts)
    header = {"format": 1, "family": rule.family, "dim": rule.dim, "level": rule.level, "degree": rule.degree,
              "size": rule.size, "center": rule.center, "table": len(table), "index_dtype": "|i1",
              "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(), **header_changes}
    return cache.MAGIC + json.dumps(header).encode() + b"\n" + payload


def test_flipped_center_bit_is_rebuilt_with_a_warning(tmp_path, caplog):
    path = rule_path("gauss-hermite", 3, 3, tmp_path)
    good = get_rule("gauss-hermite", 3, 3, tmp_path)
    path.write_bytes(_center_flipped(path.read_bytes()))
    _cached_rule.cache_clear()
    with caplog.at_level(logging.WARNING, logger="pinnzo"):
        again = get_rule("gauss-hermite", 3, 3, tmp_path)
    assert "is invalid" in caplog.text
    assert again.center == good.center and not again.nodes[again.center].any()
    assert cache.load(path).center == good.center, "the damaged file was not rewritten"


@pytest.mark.parametrize("change, reason", [
    ({"center": 0}, "center"),
    ({"center": None}, "center"),
    ({"dim": 4}, "expected"),
    ({"level": 2}, "expected"),
    ({"family": "genz-keister"}, "expected"),
    ({"degree": 7}, "expected"),
    ({"size": 24}, "payload"),
    ({"table": 4}, "payload"),
])
def test_format1_header_that_disagrees_with_the_payload_is_rebuilt(tmp_path, caplog, change, reason):
    rule = build_rule("gauss-hermite", 3, 3)
    path = rule_path("gauss-hermite", 3, 3, tmp_path)
    path.write_bytes(_format1(rule))
    assert cache.load(path, ("gauss-hermite", 3, 3, 5)) is not None  # the legacy format is still read
    path.write_bytes(_format1(rule, **change))
    with caplog.at_level(logging.WARNING, logger="pinnzo"):
        assert cache.load(path, ("gauss-hermite", 3, 3, 5)) is None
    assert reason in caplog.text
    again = get_rule("gauss-hermite", 3, 3, tmp_path)
    assert again.nodes.tobytes() == rule.nodes.tobytes() and again.center == rule.center


def test_checksummed_file_with_inconsistent_center_or_mirror_is_rebuilt(tmp_path, caplog):
    from pinnzo.quadrature.rule import Rule

    rule = build_rule("gauss-hermite", 3, 3)
    wrong_center = Rule(rule.nodes.copy(), rule.weights.copy(), 3, 3, rule.family, rule.degree,
                        rule.mirror.copy(), (rule.center + 1) % rule.size)
    shifted = np.roll(rule.mirror, 1)
    wrong_mirror = Rule(rule.nodes.copy(), rule.weights.copy(), 3, 3, rule.family, rule.degree, shifted, rule.center)
    other_level = build_rule("gauss-hermite", 3, 2)
    path = rule_path("gauss-hermite", 3, 3, tmp_path)
    for bad, reason in [(wrong_center, "center"), (wrong_mirror, "mirror"), (other_level, "expected")]:
        path.write_bytes(cache.encode(bad))
        _cached_rule.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pinnzo"):
            again = get_rule("gauss-hermite", 3, 3, tmp_path)
        assert reason in caplog.text and "rebuilding it" in caplog.text
        assert again.center == rule.center and np.array_equal(again.mirror, rule.mirror)
        assert again.level == 3 and again.nodes.tobytes() == rule.nodes.tobytes()


def test_cache_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        get_rule("gauss-hermite", 3, 3, tmp_path)
        assert rule_path("gauss-hermite", 3, 3, tmp_path).stat().st_mode & 0o777 == 0o644
        atomic_write(tmp_path / "other.bin", b"x")
        assert (tmp_path / "other.bin").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        atomic_write(tmp_path / "group.bin", b"x")
        assert (tmp_path / "group.bin").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_unreadable_cache_file_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    path = rule_path("gauss-hermite", 4, 3, tmp_path)
    good = build_rule("gauss-hermite", 4, 3)
    cache.save(good, path)
    real_read = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with caplog.at_level(logging.WARNING, logger="pinnzo"):
        result = run_cli(["quadrature", "build", "--dim", "4", "--level", "3", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "cannot read quadrature cache file" in caplog.text and "Permission denied" in caplog.text
    monkeypatch.setattr(Path, "read_bytes", real_read)
    assert cache.load(path).nodes.tobytes() == good.nodes.tobytes()  # replaced by a readable file


def test_cache_that_cannot_be_replaced_leaves_the_rule_in_memory(tmp_path, monkeypatch, caplog):
    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "atomic_write", refuse)
    with caplog.at_level(logging.WARNING, logger="pinnzo"):
        rule = get_rule("gauss-hermite", 5, 3, tmp_path)
    assert rule.size == 2 * 25 + 10 + 1
    assert "could not write quadrature cache" in caplog.text and "using the rule from memory" in caplog.text


def test_cache_in_a_read_only_folder_with_an_unreadable_file(tmp_path, monkeypatch, caplog):
    """Both at once (simulated: this suite may run as root, who reads any file): the cached file cannot
    be read and the folder cannot be written; the rule is built and used from memory."""
    path = rule_path("gauss-hermite", 4, 3, tmp_path)
    get_rule("gauss-hermite", 4, 3, tmp_path)
    real_read = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    def refuse(target, data):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(cache, "atomic_write", refuse)
    _cached_rule.cache_clear()
    with caplog.at_level(logging.WARNING, logger="pinnzo"):
        result = run_cli(["quadrature", "build", "--dim", "4", "--level", "3", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "nodes         41" in result.output, result.output
    assert "cannot read" in caplog.text and "could not write" in caplog.text


def test_memory_estimate_bounds_the_measured_peak():
    """5. The guard's estimate is at least the traced peak of build + cache encode + decode."""
    import tracemalloc

    from pinnzo.quadrature.families import FAMILIES

    for family, dim, level in [("gauss-hermite", 400, 2), ("gauss-hermite", 40, 4), ("lu-darmofal", 60, 3),
                               ("genz-keister", 12, 4)]:
        tracemalloc.start()
        try:
            rule = FAMILIES[family].build(dim, level)
            data = cache.encode(rule)
            del rule
            cache.decode(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        estimate = FAMILIES[family].memory(dim, level)
        assert peak <= estimate, (family, dim, level, peak, estimate)


def test_raw_point_count_and_patterns_match_the_enumeration():
    """The guard counts without enumerating; the build enumerates without n! repeats."""
    import itertools
    import math

    from pinnzo.quadrature import smolyak as S
    from pinnzo.quadrature.rules1d import gauss_hermite_level

    for dim in range(1, 7):
        for level in range(1, 8):
            slow = [(c, e) for q in range(max(0, level - dim), level)
                    for c in [(-1) ** (level - 1 - q) * math.comb(dim - 1, level - 1 - q)]
                    for part in S._partitions(q) if len(part) <= dim
                    for e in sorted(set(itertools.permutations(part)))]
            assert list(S._excess_patterns(dim, level)) == slow
            assert S.raw_point_count(dim, level, gauss_hermite_level) == sum(
                math.comb(dim, len(e)) * math.prod(len(gauss_hermite_level(x + 1).nodes) for x in e) for _, e in slow)
    started = time.perf_counter()
    assert S.raw_point_count(20000, 20, gauss_hermite_level) > 10**60
    assert time.perf_counter() - started < 0.5


def test_check_request_refuses_before_allocating():
    from pinnzo.quadrature.families import check_request

    with pytest.raises(PinnzoError, match="GiB to build"):
        check_request("gauss-hermite", 20000, 2)
    with pytest.raises(PinnzoError, match="GiB to build"):
        check_request("lu-darmofal", 500, 3)
    check_request("lu-darmofal", 21, 3)


# ---- 10. fuzz: mutated shipped problems through the check path ------------

EXPRESSION_KEYS = ("equation", "exact", "ansatz", "value")
TOKENS = ["x", "x1", "x2", "t", "S", "u", "N", "nu", "pi", "e", "d(u, t)", "d(u, x1, x2)", "lap(u)", "gradsq(u)",
          "sum(x)", "prod(x)", "norm2(x)", "mean(sin(x))", "sin", "exp", "log", "sqrt", "acos", "max", "abs", "(",
          ")", "+", "-", "*", "/", "**", "=", ",", "0", "1", "2.5", "1e308", "1000", " ", "[", "]", ".", "'", "\n",
          "_", "__class__", "lambda", "if", "<", "u**3", "exp(1000)", "log(0)", "sqrt(-1)", "acos(2)", "1/0",
          "9**9**9", "d(u, t, t)", "1e"]
SCALARS = [None, True, 0, -1, 3, 10**30, 1.5, 1e308, float("inf"), float("nan"), "", "x", "../../x", "a\nb",
           "ad", "magic", "float64", "sparse-grid", "lu-darmofal", "boundary", "neumann", "manufactured",
           "x" * 300, "\x00", [], {}, [0, 1], [1, 0], [[0, 1]], {"a": 1}]
YAML_SNIPPETS = list("&*[]{}:-!|>'\"#%@`\t\n ,?") + ["&a ", "*a", "!!binary ", "!!set ", "!!float ", "!!int ", "<<: ", "\u2028"]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


def _at(node, path):
    for part in path:
        node = node[part]
    return node


def _mutate_document(document, rng: random.Random):
    """Random key deletions, type swaps, random expressions, extra keys."""
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        candidates = [path for path in _paths(document) if path]
        path = rng.choice(candidates)
        parent, last = _at(document, path[:-1]), path[-1]
        roll = rng.random()
        if roll < 0.25 and isinstance(parent, dict):
            del parent[last]
        elif roll < 0.55:
            parent[last] = copy.deepcopy(rng.choice(SCALARS))
        elif roll < 0.85:
            fields = [p for p in candidates if isinstance(p[-1], str) and p[-1] in EXPRESSION_KEYS]
            if fields:
                field = rng.choice(fields)
                _at(document, field[:-1])[field[-1]] = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 12)))
        elif isinstance(parent, dict):
            parent[rng.choice(["name", "dim", "domain", "weight", "at", "steps", "backend", "x1", "junk"])] = \
                copy.deepcopy(rng.choice(SCALARS))
    return yaml.safe_dump(document, allow_unicode=True)


def _mutate_text(text: str, rng: random.Random) -> str:
    """Random YAML characters inserted, spans deleted, lines duplicated."""
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(text))
        roll = rng.random()
        if roll < 0.4:
            text = text[:at] + rng.choice(YAML_SNIPPETS) + text[at:]
        elif roll < 0.7:
            text = text[:at] + text[at + rng.randint(1, 20):]
        else:
            lines = text.splitlines(True)
            lines.insert(rng.randrange(len(lines)), rng.choice(lines))
            text = "".join(lines)
    return text


def test_fuzzed_problem_files_give_a_result_or_one_line(tmp_path):
    """Seeded mutations of the shipped files through what ``pinnzo check`` runs, in-process:
    every outcome is a report or a one-line PinnzoError, never another exception."""
    import contextlib
    import io

    from pinnzo.cli import check

    rng = random.Random(18)  # with this seed the fuzz finds failures of the code before the fixes
    sources = [(path, path.read_text()) for path in SHIPPED]
    documents = [(path, yaml.safe_load(text)) for path, text in sources]
    outcomes = {"report": 0, "error": 0}
    started = time.perf_counter()
    for case in range(300):
        if rng.random() < 0.3:
            source, text = rng.choice(sources)
            text = _mutate_text(text, rng)
        else:
            source, document = rng.choice(documents)
            text = _mutate_document(document, rng)
        path = tmp_path / f"case{case}.yaml"
        path.write_text(text)
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), \
                    warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                check(path)
        except PinnzoError as error:
            message = str(error)
            assert "\n" not in message and "\r" not in message and len(message) <= 1000, (case, text, message)
            outcomes["error"] += 1
        except Exception as error:  # the report of a failure: the case that made it
            raise AssertionError(f"case {case} (from {source.name}):\n{text[:3000]}") from error
        else:
            outcomes["report"] += 1
        finally:  # e.g. "invalid decimal literal" from parsing an expression: a second line on the terminal
            syntax = [str(w.message) for w in caught if issubclass(w.category, SyntaxWarning)]
            assert not syntax, (case, text, syntax)
    assert outcomes["report"] > 20 and outcomes["error"] > 150, outcomes  # both outcomes are reached
    assert time.perf_counter() - started < 30


# ---- run folders, --out and resume: one line and exit 2, nothing written outside --out ----------------

SMALL_RUN = ["--steps", "2", "--batch", "8", "--set", "condition_batch=8", "--set", "eval_points=50",
             "--set", "eval_every=1", "--no-plots", "-q"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny PINN run and a finished tiny MNIST run (copied by each case before damaging it)."""
    from helpers import tiny_mnist

    root = tmp_path_factory.mktemp("finished")
    problem = REPO / "problems" / "poisson2d.yaml"
    assert run_cli(["solve", str(problem), *SMALL_RUN, "--out", str(root / "pinn")]).exit_code == 0
    data = tiny_mnist(root / "data")
    mnist = ["mnist", "--data-dir", str(data), "--epochs", "1", "--batch", "16", "--set", "steps_per_epoch=2",
             "--set", "validation=20", "--network", "mlp", "--set", "width=8", "-q"]
    assert run_cli([*mnist, "--out", str(root / "mnist")]).exit_code == 0
    return {"root": root, "problem": problem, "mnist": mnist}


def _truncate_lines(path: Path, lines: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:lines]))


def _truncate_bytes(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


# name, command (placeholders: {problem} {run} {mnist} {file} {mnist_args}), damage of the copied run, message
RUN_CASES = [
    ("solve-out-file", ["solve", "{problem}", *SMALL_RUN, "--out", "{file}"], None, "this is a file, not a folder"),
    ("solve-out-under-file", ["solve", "{problem}", *SMALL_RUN, "--out", "{file}/sub"], None,
     "cannot create the folder (Not a directory)"),
    ("solve-out-unwritable", ["solve", "{problem}", *SMALL_RUN, "--out", "/proc/pinnzo-run"], None,
     "cannot create the folder"),
    ("mnist-out-under-file", ["{mnist_args}", "--out", "{file}/sub"], None, "cannot create the folder"),
    ("compare-out-under-file", ["compare", "{run}", "{run}", "--out", "{file}/sub"], None, "cannot create the folder"),
    ("reproduce-out-under-file", ["reproduce", "4", "--out", "{file}/sub"], None, "cannot create the folder"),
    ("resume-empty-checkpoint", ["solve", "{problem}", *SMALL_RUN, "--resume", "{run}"],
     lambda run: (run / "checkpoint.pt").write_bytes(b""), "damaged checkpoint"),
    ("resume-truncated-config-lines", ["solve", "{problem}", *SMALL_RUN, "--resume", "{run}"],
     lambda run: _truncate_lines(run / "config.yaml", 12), "lacks the settings"),
    ("resume-truncated-config-bytes", ["solve", "{problem}", *SMALL_RUN, "--resume", "{run}"],
     lambda run: _truncate_bytes(run / "config.yaml", 100), "config.yaml: damaged"),
    ("plot-truncated-model", ["plot", "{run}"], lambda run: _truncate_bytes(run / "model.pt", 50), "model.pt"),
    ("plot-empty-summary", ["plot", "{run}"], lambda run: (run / "summary.json").write_text("{}"), "summary.json"),
    ("plot-metrics-wrong-columns", ["plot", "{run}"],
     lambda run: (run / "metrics.csv").write_text("a,b\n1,2\n"), "metrics.csv"),
    ("compare-two-mnist-runs", ["compare", "{mnist}", "{mnist}", "--out", "{root}/cmp"], None,
     "this command reads PINN runs"),
    ("mnist-resume-of-pinn-run", ["{mnist_args}", "--resume", "{run}"], None, "not a mnist run"),
    ("set-key-with-newline", ["solve", "{problem}", "--set", "a\nb=1"], None, "--set a\\nb: unknown setting"),
]


def _fill(command, values) -> list[str]:
    filled = []
    for item in command:
        if item == "{mnist_args}":
            filled += values["mnist_args"]
        else:
            filled.append(item.format(**values))
    return filled


def _listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command, damage, needle", [case[1:] for case in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_run_folder_or_out_gives_one_line_and_changes_nothing(finished, tmp_path, command, damage, needle):
    import shutil

    run, mnist = tmp_path / "run", tmp_path / "mnist"
    shutil.copytree(finished["root"] / "pinn", run)
    shutil.copytree(finished["root"] / "mnist", mnist)
    (tmp_path / "a-file").write_text("keep me")
    if damage:
        damage(run)
    before = _listing(tmp_path)
    values = {"problem": finished["problem"], "run": run, "mnist": mnist, "file": tmp_path / "a-file",
              "root": tmp_path, "mnist_args": finished["mnist"]}
    result = run_cli(_fill(command, values))
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output[-2000:]
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnzo: error:") and needle in lines[0], result.output[-2000:]
    after = _listing(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == \
        {k: v for k, v in before.items() if not k.endswith(".lock")}, "a refused command changed files"


def test_absurd_fd_step_diverges_with_a_truthful_line(tmp_path):
    out = tmp_path / "run"
    result = run_cli(["solve", str(REPO / "problems" / "poisson2d.yaml"), *SMALL_RUN, "--backend", "fd",
                      "--set", "fd_step=1e300", "--out", str(out)])
    assert "Traceback" not in result.output and result.exit_code == 2, result.output[-2000:]
    line = result.output.strip().splitlines()[-1]
    assert "the parameters became non-finite" in line and "the update was not" in line, line
    assert "No checkpoint was written yet" in line and sorted(p.name for p in out.iterdir() if p.name != ".lock") == \
        ["config.yaml", "problem.yaml"]


def test_a_setting_added_after_a_run_counts_as_its_default_when_resuming():
    from pinnzo.runs import compare_settings
    from pinnzo.settings import Settings

    current = Settings().replace({"steps": 7}).as_dict()
    older = {key: value for key, value in current.items() if key != "history"}  # written before `history` existed
    assert compare_settings(older, current, "pinn") == ([], [])
    assert compare_settings(older, {**current, "history": 3}, "pinn") == (["history"], [])  # not the default
    truncated = {key: current[key] for key in list(current)[:5]}
    missing, _ = compare_settings(truncated, current, "pinn")
    assert "steps" in missing  # a damaged config.yaml is still told apart
    assert compare_settings(current, {**current, "steps": 8}, "pinn") == ([], ["steps: saved 7, now 8"])
