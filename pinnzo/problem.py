"""Problem files: YAML + sympy -> a validated ``Problem`` with compiled torch functions.

See docs/problems.md for the file format. Every malformed file is rejected
with ``<file>: <key path>: <what was expected>; found <what was found>``.
"""

from __future__ import annotations

import functools
import keyword
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import sympy
import torch
import yaml

from pinnzo import atoms as A
from pinnzo.data import Measurements, read_measurements
from pinnzo.domains import Box, DomainError, Shape, parse_domain
from pinnzo.errors import PinnzoError, one_line
from pinnzo.expr import SCALAR_FUNCTIONS, CONSTANTS, VECTOR_REDUCTIONS, ExpressionError, Scope, compile_torch, parse
from pinnzo.settings import Settings
from pinnzo.unknowns import Unknown

CONDITION_SETS = ("initial", "terminal", "boundary", "data")
CONDITION_TYPES = ("dirichlet", "neumann", "robin", "rate", "operator")
# the key each condition type needs besides at, value and weight (and only it takes)
TYPE_KEYS = {"robin": "coefficient", "operator": "operator"}
RESERVED = {"u", "N", "d", "lap", "gradsq", *SCALAR_FUNCTIONS, *CONSTANTS, *VECTOR_REDUCTIONS}


class ProblemError(PinnzoError):
    """A problem file that is malformed; the message names file and key path.

    The message is always one line of bounded length: control characters
    (newlines in keys or values) are escaped and a long message is cut.
    """

    def __init__(self, message: str):
        super().__init__(one_line(str(message)))


@dataclass(frozen=True)
class Condition:
    """A soft penalty term: weight * mean((B[u] - value)^2) on a set of points.

    on: "initial" (t = t0), "terminal" (t = T), "boundary" (of the spatial domain) or "data" (the
    points of a data file, whose measured values are the targets).
    kind: "dirichlet" (B[u] = u), "neumann" (B[u] = du/dn, outward normal, on the boundary), "robin"
    (B[u] = du/dn + coefficient u, on the boundary: a heat transfer or impedance condition), "rate"
    (B[u] = du/dt, at the initial or terminal time: a wave equation's initial velocity), "operator"
    (B[u] = ``operator``, an expression of u's atoms ``atoms``, e.g. d(u, x, x) for a beam's free
    moment) or, for data, "measured" (B[u] = ``value``, an expression of u's atoms ``atoms``).
    coefficient: a robin condition's factor of u, an expression of the variables, the parameters
    and the unknowns (None for the other kinds).
    """

    name: str
    on: str
    kind: str
    value: sympy.Expr
    weight: float
    value_fn: Callable = field(repr=False, compare=False)
    data: Measurements | None = field(default=None, repr=False, compare=False)
    atoms: frozenset = frozenset()  # the atoms of a measured value
    coefficient: sympy.Expr | None = None  # robin: du/dn + coefficient u = value
    coefficient_fn: Callable | None = field(default=None, repr=False, compare=False)
    operator: sympy.Expr | None = None  # operator: B[u], an expression of u's atoms
    operator_fn: Callable | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, eq=False)
class Problem:
    """A PDE on a spatial domain (a box, ball, polygon, ...; ``domain``), optionally times t in [t0, T].

    ``lows`` and ``highs`` bound the inputs: the domain's bounding box, then the
    time interval (for a box domain, the box itself).

    Inputs are batches X of shape (B, D) whose columns are the spatial
    coordinates, then time (``columns``). ``residual`` is the equation in the
    form residual = 0, a sympy expression in the columns, the parameters
    (substituted) and the atom symbols of ``atoms``.
    """

    name: str
    path: Path | None  # the file it was read from (None: built from a mapping)
    text: str  # the problem as YAML text (a run folder keeps a copy)
    description: str
    columns: tuple[str, ...]
    spatial: tuple[int, ...]  # column indices of the spatial coordinates
    time_index: int | None
    lows: tuple[float, ...]
    highs: tuple[float, ...]
    residual: sympy.Expr
    atoms: frozenset
    conditions: tuple[Condition, ...]
    exact: sympy.Expr | None
    ansatz: sympy.Expr | None
    manufactured: bool
    solve: Mapping[str, Any]  # the file's solve: block (validated setting names and values)
    _residual_fn: Callable = field(repr=False)
    _exact_fn: Callable | None = field(repr=False)
    _ansatz_fn: Callable | None = field(repr=False)
    _ansatz_affine: tuple[Callable, Callable] | None = field(repr=False, default=None)
    domain: Shape | None = None  # the spatial domain; None: the box lows x highs
    unknowns: tuple[Unknown, ...] = ()  # unknown parameters, trained with the network (unknowns.py)
    _forcing_fn: Callable | None = field(repr=False, default=None)  # the residual's terms of the points alone

    def __post_init__(self):
        if self.domain is None:
            spatial = list(self.spatial)
            object.__setattr__(self, "domain", Box([self.lows[i] for i in spatial], [self.highs[i] for i in spatial]))

    @property
    def dim(self) -> int:
        """Number of input columns D (spatial dimension plus one for time)."""
        return len(self.columns)

    def values(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """Column name -> X[:, j]."""
        return {name: X[..., j] for j, name in enumerate(self.columns)}

    def solution(self, network: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """u(X) (B, D) -> (B,): the network output N passed through the ansatz."""
        if self._ansatz_fn is None:
            return network
        return lambda X: self.apply_ansatz(X, network(X))

    def ansatz_coefficients(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(a, b) (B,) with u = a + b N at X, when the ansatz is affine in N (else None)."""
        if self._ansatz_affine is None:
            return None
        values = self.values(X)
        return tuple(torch.broadcast_to(fn(values), X.shape[:-1]) for fn in self._ansatz_affine)

    @property
    def affine_ansatz(self) -> bool:
        """Whether the ansatz is u = a + b N with a, b functions of the points alone."""
        return self._ansatz_affine is not None

    def ansatz_offset_parts(self, X: torch.Tensor, atoms) -> dict[A.Atom, torch.Tensor]:
        """The elementary atoms (value, d1 ... d4) of the affine ansatz's offset a (u = a + b N) at X:
        {atom: (B,)}, exact (derived symbolically)."""
        values, compiled = self.values(X), self._offset_derivatives
        for atom in atoms:
            if atom not in compiled:
                symbols = [sympy.Symbol(name, real=True) for name in self.columns]
                offset = self.ansatz.subs(sympy.Symbol("N", real=True), 0)
                derivative = offset if atom.kind == "value" else sympy.diff(offset, *(symbols[i] for i in atom.index))
                compiled[atom] = compile_torch(derivative, dict(zip(symbols, self.columns)))
        return {atom: torch.broadcast_to(compiled[atom](values), X.shape[:-1]) for atom in atoms}

    @functools.cached_property
    def _offset_derivatives(self) -> dict:
        """Atom -> the compiled derivative of the ansatz's offset a (the ansatz at N = 0), as needed."""
        return {}

    def apply_ansatz(self, X: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
        """u from the network values N (..., B) at X (B, D) (N itself without an ansatz)."""
        if self._ansatz_fn is None:
            return N
        return self._ansatz_fn({**self.values(X), "N": N})

    @functools.cached_property
    def _atom_names(self) -> dict:
        """Atom -> the name its tensor has in the compiled residual (computed once)."""
        return {atom: A.atom_symbol(atom, list(self.columns)).name for atom in self.atoms}

    def unknown_values(self, like: torch.Tensor, given: Mapping[str, torch.Tensor | float] | None = None) -> dict:
        """Name -> value of every unknown: ``given``, else the initial value (tensors of ``like``'s dtype
        and device, or the given tensors as they are: batched under vmap)."""
        given = given or {}
        return {unknown.name: torch.as_tensor(given.get(unknown.name, unknown.initial), dtype=like.dtype,
                                              device=like.device) for unknown in self.unknowns}

    @property
    def exact_unknowns(self) -> dict[str, float] | None:
        """The exact values of the unknowns when the problem file states all of them (else None)."""
        if any(unknown.exact is None for unknown in self.unknowns):
            return None
        return {unknown.name: unknown.exact for unknown in self.unknowns}

    @property
    def data_files(self) -> dict[str, bytes]:
        """The data files of the data conditions: path as written -> content."""
        return {c.data.file: c.data.content for c in self.conditions if c.data is not None}

    def residual_from_atoms(self, X: torch.Tensor, atom_values: Mapping[A.Atom, torch.Tensor],
                            unknowns: Mapping[str, torch.Tensor | float] | None = None,
                            forcing: torch.Tensor | None = None) -> torch.Tensor:
        """The equation's residual (B,) from the atoms a backend computed at X; ``unknowns``: name ->
        value of the unknowns (default: their initial values); ``forcing``: ``self.forcing(X)``, when
        the caller has it already."""
        values = self.values(X) | self.unknown_values(X, unknowns)
        for atom, name in self._atom_names.items():
            values[name] = atom_values[atom]
        residual = self._residual_fn(values)
        if self._forcing_fn is None:
            return residual
        return residual + (self.forcing(X) if forcing is None else forcing)

    def forcing(self, X: torch.Tensor) -> torch.Tensor | None:
        """The residual's terms that depend on the points alone (B,): its source, which a loss may
        compute once per point set; None when there are none (the rest is ``_residual_fn``)."""
        if self._forcing_fn is None:
            return None
        return torch.broadcast_to(self._forcing_fn(self.values(X)), X.shape[:-1])

    def condition_target(self, condition: Condition, X: torch.Tensor) -> torch.Tensor | None:
        """The value a condition prescribes at its points X (B,), when it depends on them alone (not on
        unknowns, not measured data), else None."""
        if condition.kind == "measured" or condition.value.free_symbols & self._unknown_symbols:
            return None
        return torch.broadcast_to(condition.value_fn(self.values(X)), X.shape[:-1])

    def measurements(self, condition: Condition, X: torch.Tensor, start: int = 0) -> torch.Tensor:
        """A data condition's measured values (B,) at its points X (B, D), the data points from
        ``start`` on in the file's order (a shard or part of a step takes a contiguous run of them)."""
        return condition.data.values[start:start + len(X)].to(X.dtype).to(X.device)

    @functools.cached_property
    def _unknown_symbols(self) -> set:
        return {sympy.Symbol(unknown.name, real=True) for unknown in self.unknowns}

    def exact_solution(self, X: torch.Tensor) -> torch.Tensor:
        """The exact solution (B,) at X; ProblemError when the file declares none."""
        if self._exact_fn is None:
            raise ProblemError(f"{self.path or self.name}: exact: the problem declares no exact solution")
        return self._exact_fn(self.values(X))

    @property
    def has_exact(self) -> bool:
        return self._exact_fn is not None

    def exact_quantity(self, value: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """X (B, D) -> (B,): the quantity ``value`` of the exact solution, written as a data condition's
        measured value (u or an expression of u's atoms and the variables, e.g. ``d(u, x1)``), its
        derivatives taken symbolically. ProblemError ``--value: ...`` for a malformed expression."""
        if self.exact is None:
            raise ProblemError(f"{self.path or self.name}: exact: the problem declares no exact solution")
        loader = _Loader(self.path, self.text, where="--value")
        space = loader.variables(yaml.safe_load(self.text))
        if not isinstance(value, str) or "=" in value:
            loader.fail("", f"expected the measured quantity, e.g. u or d(u, x1), not an equation; found {_show(value)}")
        measured, atoms = loader.equation(value, space.scope, space.columns, space.symbols, space.time_index,
                                          space.dim, "")
        exact = _apply_atoms(measured, atoms, self.exact, space.columns, space.symbols, list(range(space.dim)))
        function = loader.compiled(exact, space.names, "")
        return lambda X: torch.broadcast_to(function(self.values(X)), X.shape[:-1])

    def condition_atoms(self, condition: Condition) -> frozenset:
        if condition.kind in ("measured", "operator"):
            return condition.atoms
        if condition.kind == "dirichlet":
            return frozenset({A.VALUE})
        if condition.kind == "rate":
            return frozenset({A.d1(self.time_index)})
        normal = frozenset(A.d1(i) for i in self.spatial)
        return normal | {A.VALUE} if condition.kind == "robin" else normal

    def condition_residual(self, condition: Condition, X: torch.Tensor, normals: torch.Tensor | None,
                           atom_values: Mapping[A.Atom, torch.Tensor],
                           unknowns: Mapping[str, torch.Tensor | float] | None = None,
                           target: torch.Tensor | None = None) -> torch.Tensor:
        """B[u] - value at the condition's points (B,); for data, the measured quantity minus the
        measurements (X: the data points, in the file's order). ``target``: the value,
        ``condition_target(condition, X)``, when the caller has it already; for data, the
        measurements at X (``measurements``: X may be a part of the data points)."""
        values = self.values(X) | self.unknown_values(X, unknowns)
        for atom in condition.atoms:  # a measured value's or an operator's atoms, by their names
            values[A.atom_symbol(atom, list(self.columns)).name] = atom_values[atom]
        if condition.kind == "measured":
            return condition.value_fn(values) - (self.measurements(condition, X) if target is None else target)
        if target is None:
            target = condition.value_fn(values)
        if condition.kind == "operator":
            return condition.operator_fn(values) - target
        if condition.kind == "dirichlet":
            return atom_values[A.VALUE] - target
        if condition.kind == "rate":
            return atom_values[A.d1(self.time_index)] - target
        gradient = torch.stack([atom_values[A.d1(i)] for i in self.spatial], dim=-1)
        flux = (gradient * normals).sum(-1)
        if condition.kind == "robin":
            flux = flux + condition.coefficient_fn(values) * atom_values[A.VALUE]
        return flux - target

    def exact_check(self, points: int = 256, seed: int = 0) -> dict[str, float]:
        """How well the exact solution satisfies the problem, by autodiff in float64: max |residual| of
        the equation ("residual") and of each condition at ``points`` random points of its set; for
        measured data, the RMS misfit over all the data points (about the noise, when it is noisy)."""
        from pinnzo.derivatives import Autodiff

        generator, autodiff = torch.Generator().manual_seed(seed), Autodiff()
        unknowns = self.exact_unknowns
        X = self.sample_interior(points, generator, torch.float64)
        atoms = autodiff(self.exact_solution, X, self.atoms, self.spatial)
        checks = {"residual": self.residual_from_atoms(X, atoms, unknowns).abs().max().item()}
        for condition in self.conditions:
            X, normals = self.sample_condition(condition, points, generator, torch.float64)
            atoms = autodiff(self.exact_solution, X, self.condition_atoms(condition), self.spatial)
            residual = self.condition_residual(condition, X, normals, atoms, unknowns)
            checks[condition.name] = (residual.square().mean().sqrt() if condition.data is not None
                                      else residual.abs().max()).item()
        return checks

    # ---- sampling -----------------------------------------------------------

    def sample_interior(self, n: int, generator: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """n uniform points in the domain x time interval: (n, D).

        A box draws space and time in one call, as it always did (the same points
        for the same seed); other domains draw space (pinnzo.domains), then time.
        """
        if isinstance(self.domain, Box):
            lows, highs = torch.tensor(self.lows, dtype=dtype), torch.tensor(self.highs, dtype=dtype)
            X = lows + (highs - lows) * torch.rand(n, self.dim, generator=generator, dtype=dtype)
            return X.to(device)
        return self._with_time(self.domain.sample(n, generator, dtype), generator).to(device)

    def _with_time(self, space: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Spatial points (n, d), then a uniform time column when the problem has time: (n, D)."""
        if self.time_index is None:
            return space
        t0, t1 = self.lows[self.time_index], self.highs[self.time_index]
        t = t0 + (t1 - t0) * torch.rand(len(space), 1, generator=generator, dtype=space.dtype)
        return torch.cat([space, t], dim=1)

    def sample_condition(self, condition: Condition, n: int, generator: torch.Generator,
                         dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """n uniform points of the condition's set: X (n, D), outward unit normals (n, d) or None.

        The boundary is the spatial domain's boundary (uniform in its surface
        measure) times the time interval; a box places interior points on faces
        chosen by measure (for a cube, one randint call, as it always did). A data
        condition's points are the data file's, all of them (n is ignored).
        """
        if condition.data is not None:
            return condition.data.points.to(dtype).to(device), None
        if condition.on in ("initial", "terminal"):
            X = self.sample_interior(n, generator, dtype)
            X[:, self.time_index] = self.lows[self.time_index] if condition.on == "initial" else self.highs[self.time_index]
            return X.to(device), None
        if isinstance(self.domain, Box):
            X = self.sample_interior(n, generator, dtype)
            axis, upper = self.domain.faces(n, generator)
            normals = self.domain.place_on_faces(X, torch.tensor(self.spatial)[axis], axis, upper)
            return X.to(device), normals.to(device)
        points, normals = self.domain.sample_boundary(n, generator, dtype)
        return self._with_time(points, generator).to(device), normals.to(device)


# ------------------------------------------------------------------ loading

TOP_KEYS = {"name", "description", "variables", "parameters", "unknowns", "equation", "conditions", "exact",
            "ansatz", "source", "solve"}
REQUIRED_KEYS = {"variables", "equation"}
# The problem's name is a folder name (results/<name>/...): no separators, no
# leading dot (no "..", no hidden folder), no control characters, bounded.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "letters, digits, '-', '_' and '.', not starting with '.', at most 64 characters"
MAX_FILE_BYTES = 1 << 20  # a problem file is a page of YAML
MAX_YAML_DEPTH = 64  # nesting of YAML collections, aliases followed
MAX_YAML_NODES = 100_000  # YAML nodes after expanding aliases (a billion-laughs file needs 10^9)
MAX_DIM = 1000  # spatial dimensions (every coordinate is a sympy symbol)
CHECK_POINTS = 256  # points at which the exact solution and the condition values must be finite


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys, deep nesting and alias bombs.

    Depth is bounded while composing (PyYAML composes recursively: 5,000
    levels would be a RecursionError); the composed node graph, aliases
    followed, is bounded in size and depth before any Python object is built.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable (a !!set key): the base class refuses it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {_show(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root) -> None:
    """ComposerError when the node graph, aliases expanded, is too large, too deep or cyclic."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, expanded height)
    active: set[int] = set()

    def walk(node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a collection that contains it",
                                              node.start_mark)
        if key not in sizes:
            if depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels (aliases expanded)", node.start_mark)
            active.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else []
            count, height = 1, 0
            for child in children:
                child_count, child_height = walk(child, depth + 1)
                count, height = count + child_count, max(height, child_height + 1)
                if count > MAX_YAML_NODES:
                    raise yaml.composer.ComposerError(
                        None, None, f"the document expands to more than {MAX_YAML_NODES:,} values "
                        "(aliases repeat what they refer to)", node.start_mark)
            active.discard(key)
            sizes[key] = count, height
        count, height = sizes[key]
        if depth + height > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels (aliases expanded)", node.start_mark)
        return sizes[key]

    if root is not None:
        walk(root, 1)


def load_problem(source: str | Path | Mapping, data_dir: str | Path | None = None) -> Problem:
    """Read, validate and compile a problem file, or a problem given as a mapping (the
    same keys as a file, the same validation). Data files are read relative to ``data_dir``,
    by default the problem file's folder (for a mapping: the working directory)."""
    data_dir = Path(data_dir) if data_dir is not None else None
    if isinstance(source, Mapping):
        try:
            text = yaml.safe_dump(dict(source), sort_keys=False)
        except yaml.YAMLError as error:
            raise ProblemError(f"<mapping>: not representable as YAML: {error}") from None
        return _Loader(None, text, data_dir).load(dict(source))
    path = Path(source)
    if not path.is_file():
        raise ProblemError(f"{path}: problem file not found")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProblemError(f"{path}: the file has {path.stat().st_size:,} bytes; a problem file "
                               f"is at most {MAX_FILE_BYTES:,}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ProblemError(f"{path}: not a text file (UTF-8)") from None
    except OSError as error:
        raise ProblemError(f"{path}: cannot read the problem file ({error.strerror or error})") from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or getattr(error, "context", None) or type(error).__name__
        raise ProblemError(f"{path}: not valid YAML{where}: {reason}") from None
    except RecursionError:
        raise ProblemError(f"{path}: not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as error:  # e.g. an integer of 5,000 digits, a date 2001-13-45
        raise ProblemError(f"{path}: not valid YAML: a value cannot be read ({str(error)[:200]})") from None
    return _Loader(path, text, data_dir).load(document)


@dataclass(frozen=True)
class _Space:
    """What the variables: block declares."""

    columns: list[str]
    dim: int
    time_index: int | None
    boxes: list[tuple[float, float]]  # the bounding box of the domain, then the time interval
    domain: Shape
    symbols: dict[str, sympy.Symbol]
    scope: Scope
    names: dict[sympy.Symbol, str]


class _Loader:
    def __init__(self, path: Path | None, text: str, data_dir: Path | None = None, where: str | None = None):
        self.path, self.text, self.data_dir = path, text, data_dir
        self.where = where or (str(path) if path is not None else "<mapping>")

    def fail(self, key: str, message: str):
        raise ProblemError(f"{self.where}: {key}: {message}" if key else f"{self.where}: {message}")

    def mapping(self, value: Any, key: str, required: set[str], allowed: set[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(key or "(top level)", f"expected a mapping; found {_kind(value)}")
        for name in value:
            if not isinstance(name, str):
                self.fail(_subkey(key, name), f"keys must be names; found {_kind(name)} (quote it in YAML)")
            if name not in allowed:
                self.fail(_subkey(key, name), f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
        for name in sorted(required - set(value)):
            self.fail(f"{key}.{name}" if key else name, "missing required key")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"expected a number; found {_kind(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            self.fail(key, f"expected a finite number; found {_show(value)}")
        return number

    def string(self, value: Any, key: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string; found {_kind(value)}")
        if choices and value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}; found {_show(value)}")
        return value

    def identifier(self, value: Any, key: str) -> str:
        name = self.string(value, key)
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            self.fail(key, f"expected a plain identifier; found {_show(name)}")
        if name in RESERVED:
            self.fail(key, f"{name!r} is reserved (a function, constant or the unknown)")
        return name

    def problem_name(self, doc: dict) -> str:
        """The problem's name: a safe folder name (results/<name>/...)."""
        if "name" not in doc:
            if self.path is None:
                self.fail("name", "missing required key (a problem given as a mapping needs a name)")
            if not NAME_PATTERN.fullmatch(self.path.stem):
                self.fail("name", f"no name given and the file name {_show(self.path.stem)} is not a usable "
                                  f"name; add name: with {NAME_RULE}")
            return self.path.stem
        name = self.string(doc["name"], "name")
        if not NAME_PATTERN.fullmatch(name):
            self.fail("name", f"expected {NAME_RULE} (it names the results folder); found {_show(name)}")
        return name

    def interval(self, value: Any, key: str) -> tuple[float, float]:
        if not isinstance(value, list) or len(value) != 2:
            self.fail(key, f"expected [low, high]; found {_kind(value)}")
        low, high = self.number(value[0], f"{key}[0]"), self.number(value[1], f"{key}[1]")
        if not low < high:
            self.fail(key, f"expected low < high; found [{low}, {high}]")
        if not math.isfinite(high - low):
            self.fail(key, f"expected an interval of finite length; found [{low}, {high}]")
        return low, high

    def expression(self, text: Any, key: str, scope: Scope) -> sympy.Expr:
        try:
            return parse(text, scope)
        except ExpressionError as error:
            self.fail(key, str(error))

    # ---- the document -------------------------------------------------------

    def load(self, document: Any) -> Problem:
        doc = self.mapping(document, "", REQUIRED_KEYS, TOP_KEYS)
        name = self.problem_name(doc)
        description = self.string(doc.get("description", ""), "description")
        space = self.variables(doc)
        columns, dim, time_index, symbols = space.columns, space.dim, space.time_index, space.symbols
        unknowns = self.unknowns(doc.get("unknowns", {}), space)
        # the equation and the conditions may use the unknowns (exact and ansatz may not)
        unknown_symbols = {unknown.name: sympy.Symbol(unknown.name, real=True) for unknown in unknowns}
        scope = Scope({**space.scope.symbols, **unknown_symbols}, space.scope.vector_name, space.scope.vector)
        names = {**space.names, **{symbol: name for name, symbol in unknown_symbols.items()}}
        residual, atoms = self.equation(doc["equation"], scope, columns, symbols, time_index, dim)
        exact = self.expression(doc["exact"], "exact", space.scope) if "exact" in doc else None
        exact_fn = self.compiled(exact, space.names, "exact") if exact is not None else None
        manufactured = self.source(doc.get("source"), exact)
        if manufactured and residual.free_symbols & set(unknown_symbols.values()):
            self.fail("source", "a manufactured source cannot be derived from an equation with unknowns")
        if manufactured:
            residual = residual - _apply_atoms(residual, atoms, exact, columns, symbols, list(range(dim)))
        ansatz = self.ansatz(doc, space)
        conditions = self.conditions(doc.get("conditions", {}), scope, names, time_index, space)
        self.check_used(unknowns, unknown_symbols, residual, conditions)
        solve = self.settings(doc.get("solve", {}), len(columns))
        atom_names = {A.atom_symbol(atom, columns): A.atom_symbol(atom, columns).name for atom in atoms}
        dependent, forcing = _split_forcing(residual, set(atom_names) | set(unknown_symbols.values()))
        residual_fn = self.compiled(dependent, {**names, **atom_names}, "equation")
        forcing_fn = self.compiled(forcing, names, "equation") if forcing != 0 else None
        ansatz_fn = (self.compiled(ansatz, {**space.names, sympy.Symbol("N", real=True): "N"}, "ansatz")
                     if ansatz is not None else None)
        ansatz_affine = self.compiled_affine(ansatz, space.names) if ansatz is not None else None
        problem = Problem(
            name=name, path=self.path, text=self.text, description=description,
            columns=tuple(columns), spatial=tuple(range(dim)), time_index=time_index,
            lows=tuple(b[0] for b in space.boxes), highs=tuple(b[1] for b in space.boxes),
            residual=residual, atoms=frozenset(atoms), conditions=tuple(conditions), exact=exact,
            ansatz=ansatz, manufactured=manufactured, solve=solve, _residual_fn=residual_fn,
            _exact_fn=exact_fn, _ansatz_fn=ansatz_fn, _ansatz_affine=ansatz_affine, domain=space.domain,
            unknowns=tuple(unknowns), _forcing_fn=forcing_fn)
        self.check_finite(problem)
        return problem

    def variables(self, doc: dict) -> "_Space":
        """The variables: box, columns (spatial, then time), their symbols and the expression scope."""
        variables = self.mapping(doc["variables"], "variables", {"space"}, {"space", "time"})
        space = self.mapping(variables["space"], "variables.space", {"name", "dim", "domain"},
                             {"name", "dim", "domain"})
        space_name = self.identifier(space["name"], "variables.space.name")
        dim = space["dim"]
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            self.fail("variables.space.dim", f"expected an integer >= 1; found {_show(dim)}")
        if dim > MAX_DIM:
            self.fail("variables.space.dim", f"expected an integer <= {MAX_DIM}; found {_show(dim)}")
        try:
            domain = parse_domain(space["domain"], dim, "variables.space.domain")
        except DomainError as error:
            self.fail(error.key, error.message)
        boxes = list(zip(*domain.bounds))
        coordinates = [space_name] if dim == 1 else [f"{space_name}{i + 1}" for i in range(dim)]
        columns = list(coordinates)
        time_index = None
        if "time" in variables:
            time = self.mapping(variables["time"], "variables.time", {"name", "domain"}, {"name", "domain"})
            time_name = self.identifier(time["name"], "variables.time.name")
            if time_name in coordinates or time_name == space_name:
                self.fail("variables.time.name", f"{time_name!r} is already a spatial coordinate")
            boxes.append(self.interval(time["domain"], "variables.time.domain"))
            columns.append(time_name)
            time_index = dim
        symbols = {c: sympy.Symbol(c, real=True) for c in columns}
        parameters = self.parameters(doc.get("parameters", {}), set(columns) | {space_name})
        base = {**symbols, **{k: sympy.Float(v) if not float(v).is_integer() else sympy.Integer(int(v))
                              for k, v in parameters.items()}}
        scope = Scope(base, space_name, tuple(symbols[c] for c in coordinates))
        return _Space(columns, dim, time_index, boxes, domain, symbols, scope, {symbols[c]: c for c in columns})

    def ansatz(self, doc: dict, space: "_Space") -> sympy.Expr | None:
        if "ansatz" not in doc:
            return None
        network = sympy.Symbol("N", real=True)
        scope = space.scope
        ansatz = self.expression(doc["ansatz"], "ansatz", Scope({**scope.symbols, "N": network}, scope.vector_name,
                                                                scope.vector))
        if network not in ansatz.free_symbols:
            self.fail("ansatz", "the ansatz must use the network output N")
        return ansatz

    def compiled(self, expression: sympy.Expr, names, key: str):
        try:
            return compile_torch(expression, names)
        except ExpressionError as error:
            self.fail(key, str(error))

    def compiled_affine(self, ansatz: sympy.Expr, names):
        try:
            return _affine_parts(ansatz, names)
        except ExpressionError as error:
            self.fail("ansatz", str(error))

    def settings(self, value: Any, dim: int) -> dict[str, Any]:
        """The solve: block, checked as solve checks it (types, ranges, registry names)."""
        from pinnzo.derivatives import BACKENDS
        from pinnzo.optim import OPTIMIZERS
        from pinnzo.quadrature import FAMILIES
        from pinnzo.quadrature.families import check_request

        solve = self.mapping(value, "solve", set(), set(Settings.names()))
        for key, setting in solve.items():
            if isinstance(setting, bool) or not isinstance(setting, (str, int, float)):
                self.fail(f"solve.{key}", f"expected a number or a string; found {_kind(setting)}")
        try:
            settings = Settings().replace(solve, f"{self.where}: solve.")
        except PinnzoError as error:
            raise ProblemError(str(error)) from None
        for key, registry in (("backend", BACKENDS), ("optimizer", OPTIMIZERS), ("rule", FAMILIES)):
            try:
                registry[getattr(settings, key)]
            except PinnzoError as error:
                self.fail(f"solve.{key}", str(error))
        if settings.backend == "sparse-grid" and {"backend", "rule", "level"} & set(solve):
            try:
                check_request(settings.rule, dim, settings.level)
            except PinnzoError as error:
                self.fail("solve.level" if "level" in str(error) else "solve.rule", str(error))
        return dict(solve)

    def check_finite(self, problem: Problem) -> None:
        """The exact solution (inside the domain) and the condition values (on their
        sets) must be finite numbers: NaN there makes every loss and error NaN."""
        generator = torch.Generator().manual_seed(0)
        checks = []
        if problem.has_exact:
            X = problem.sample_interior(CHECK_POINTS, generator, torch.float64)
            checks.append(("exact", problem._exact_fn, X))
        for condition in problem.conditions:
            if condition.data is None:  # data files are checked when read
                X, _ = problem.sample_condition(condition, CHECK_POINTS, generator, torch.float64)
                checks.append((f"conditions.{_key_text(condition.name)}.value", condition.value_fn, X))
                if condition.coefficient_fn is not None:
                    checks.append((f"conditions.{_key_text(condition.name)}.coefficient", condition.coefficient_fn, X))
        for key, function, X in checks:
            try:
                values = function(problem.values(X) | problem.unknown_values(X))
            except (RuntimeError, ValueError, TypeError, ArithmeticError) as error:
                self.fail(key, f"cannot be evaluated on the domain ({str(error).splitlines()[0][:200]})")
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                at = X[bad[0, 0]]
                point = ", ".join(f"{c}={float(v):.4g}" for c, v in zip(problem.columns[:4], at))
                point += ", ..." if problem.dim > 4 else ""
                self.fail(key, f"is {float(values[bad[0, 0]])} at ({point}); it must be a finite real "
                               f"number everywhere on the domain")

    def parameters(self, value: Any, taken: set[str]) -> dict[str, float]:
        if not isinstance(value, dict):
            self.fail("parameters", f"expected a mapping of name: number; found {_kind(value)}")
        parameters = {}
        for name, number in value.items():
            key = _subkey("parameters", name)
            name = self.identifier(name, key)
            if name in taken:
                self.fail(key, f"{name!r} is already a variable")
            parameters[name] = self.number(number, key)
        return parameters

    def equation(self, text: Any, scope: Scope, columns, symbols, time_index, dim, key: str = "equation"):
        """Parse 'lhs' or 'lhs = rhs' into residual = lhs - rhs with atom symbols (``key``: where the
        text is, for errors: the equation, or the measured value of a data condition)."""
        found: set[A.Atom] = set()
        index_of = {symbols[c]: j for j, c in enumerate(columns)}
        u_symbol = A.atom_symbol(A.VALUE, columns)

        def use(atom: A.Atom) -> sympy.Symbol:
            found.add(atom)
            return A.atom_symbol(atom, columns)

        def derivative(*args):
            if not 2 <= len(args) <= A.MAX_ORDER + 1 or args[0] != u_symbol:
                raise ExpressionError(f"d() is written d(u, v), d(u, v, w), ... up to {A.MAX_ORDER} variables "
                                      "(a fourth derivative) among " + ", ".join(columns))
            indices = []
            for arg in args[1:]:
                if arg not in index_of:
                    raise ExpressionError(f"d(u, ...) differentiates by a variable ({', '.join(columns)}); found {arg}")
                indices.append(index_of[arg])
            return use(A.partial(*indices))

        def spatial_operator(atom):
            def call(*args):
                if len(args) != 1 or args[0] != u_symbol:
                    raise ExpressionError(f"{atom.kind}() takes the unknown: {atom.kind}(u)")
                return use(atom)
            return call

        equation_scope = Scope({**scope.symbols, "u": u_symbol}, scope.vector_name, scope.vector,
                               {"d": derivative, "lap": spatial_operator(A.LAPLACIAN),
                                "gradsq": spatial_operator(A.GRADIENT_SQUARED)})
        if not isinstance(text, str):
            self.fail(key, f"expected an expression string; found {_kind(text)}")
        sides = text.split("=")
        if len(sides) > 2 or any(s.strip() == "" for s in sides) or any(c in text for c in "<>!"):
            self.fail(key, "expected 'expression' (= 0) or 'left = right'")
        parts = [self.expression(side, key, equation_scope) for side in sides]
        residual = parts[0] - parts[1] if len(parts) == 2 else parts[0]
        if u_symbol in residual.free_symbols:
            found.add(A.VALUE)
        found = {atom for atom in found if A.atom_symbol(atom, columns) in residual.free_symbols}
        if not found:
            what = "equation" if key == "equation" else "operator" if key.endswith(".operator") else "measured value"
            self.fail(key, f"the {what} does not involve the unknown u")
        if time_index is None and any(time_index in atom.index for atom in found):
            self.fail(key, "the equation uses a time derivative but no time variable is declared")
        return residual, found

    def source(self, value: Any, exact: sympy.Expr | None) -> bool:
        if value is None:
            return False
        self.string(value, "source", ("manufactured",))
        if exact is None:
            self.fail("source", "a manufactured source needs an 'exact' solution")
        return True

    def conditions(self, value: Any, scope: Scope, names, time_index, space: "_Space") -> list[Condition]:
        if not isinstance(value, dict):
            self.fail("conditions", f"expected a mapping of name: condition; found {_kind(value)}")
        conditions = []
        for name, spec in value.items():
            key = _subkey("conditions", name)
            if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name == "residual":
                self.fail(key, f"expected a condition name of {NAME_RULE}, other than 'residual' "
                               f"(it names a term of the loss); found {_show(name)}")
            if isinstance(spec, dict) and spec.get("at") == "data":
                conditions.append(self.data_condition(str(name), spec, key, scope, names, space))
                continue
            spec = self.mapping(spec, key, {"at", "value"}, {"at", "type", "value", "weight", *TYPE_KEYS.values()})
            on = self.string(spec["at"], f"{key}.at", CONDITION_SETS)
            kind = self.string(spec.get("type", "dirichlet"), f"{key}.type", CONDITION_TYPES)
            for needs, extra in TYPE_KEYS.items():
                if kind == needs and extra not in spec:
                    self.fail(key, f"{_a(kind)} condition needs {_a(extra)} ({_TYPE_FORMS[kind]})")
                if kind != needs and extra in spec:
                    self.fail(f"{key}.{extra}", f"only {needs} conditions take {_a(extra)}; this one is {kind}")
            if on != "boundary" and time_index is None:
                self.fail(f"{key}.at", f"an {on} condition needs a time variable")
            if kind in ("neumann", "robin") and on != "boundary":
                self.fail(f"{key}.type", f"{kind} conditions apply on the boundary only")
            if kind == "rate" and on not in ("initial", "terminal"):
                self.fail(f"{key}.type", "rate conditions (du/dt) apply at the initial or terminal time only")
            weight = self.number(spec.get("weight", 1.0), f"{key}.weight")
            if weight < 0:
                self.fail(f"{key}.weight", f"expected a weight >= 0; found {weight}")
            expression = self.expression(spec["value"], f"{key}.value", scope)
            compiled = self.compiled(expression, names, f"{key}.value")
            coefficient = self.expression(spec["coefficient"], f"{key}.coefficient", scope) if kind == "robin" else None
            coefficient_fn = (self.compiled(coefficient, names, f"{key}.coefficient")
                              if coefficient is not None else None)
            operator, atoms, operator_fn = None, frozenset(), None
            if kind == "operator":
                operator, atoms, operator_fn = self.operator(spec["operator"], f"{key}.operator", scope, names, space)
            conditions.append(Condition(str(name), on, kind, expression, weight, compiled, atoms=atoms,
                                        coefficient=coefficient, coefficient_fn=coefficient_fn,
                                        operator=operator, operator_fn=operator_fn))
        return conditions

    def operator(self, text: Any, key: str, scope: Scope, names, space: "_Space"):
        """An operator condition's B[u]: (expression, its atoms, compiled over the atoms' names too)."""
        if "=" in str(text):
            self.fail(key, "expected the quantity the condition prescribes, e.g. d(u, x, x), not an equation")
        expression, atoms = self.equation(text, scope, space.columns, space.symbols, space.time_index, space.dim, key)
        atom_names = {A.atom_symbol(atom, space.columns): A.atom_symbol(atom, space.columns).name for atom in atoms}
        return expression, frozenset(atoms), self.compiled(expression, {**names, **atom_names}, key)

    def data_condition(self, name: str, spec: dict, key: str, scope: Scope, names, space: "_Space") -> Condition:
        """``at: data``: the measured quantity (``value``, u or an expression of its atoms, default u) at
        the points of a CSV / NPZ file (``file``, relative to the problem file) against its ``column``."""
        spec = self.mapping(spec, key, {"at", "file"}, {"at", "file", "value", "column", "noise", "weight"})
        columns = space.columns
        if "=" in str(spec.get("value", "")):
            self.fail(f"{key}.value", "expected the measured quantity, e.g. u or d(u, x1), not an equation")
        measured, atoms = self.equation(spec.get("value", "u"), scope, columns, space.symbols, space.time_index,
                                        space.dim, f"{key}.value")
        atom_names = {A.atom_symbol(atom, columns): A.atom_symbol(atom, columns).name for atom in atoms}
        compiled = self.compiled(measured, {**names, **atom_names}, f"{key}.value")
        weight = self.number(spec.get("weight", 1.0), f"{key}.weight")
        if weight < 0:
            self.fail(f"{key}.weight", f"expected a weight >= 0; found {weight}")
        noise = self.number(spec["noise"], f"{key}.noise") if "noise" in spec else None
        if noise is not None and noise <= 0:
            self.fail(f"{key}.noise", f"expected the standard deviation of the noise, a number > 0; found {noise}")
        column = spec.get("column", "u")
        if column != "u":
            column = self.identifier(column, f"{key}.column")
        if column in columns:
            self.fail(f"{key}.column", f"{column!r} is a variable; the measured values need a column of their own")
        return Condition(name, "data", "measured", measured, weight, compiled,
                         self.measurements(spec["file"], f"{key}.file", columns, column, noise), frozenset(atoms))

    def measurements(self, file: Any, key: str, columns: list[str], column: str, noise: float | None) -> Measurements:
        """The data file ``file``: a relative path below the problem file's folder."""
        file = self.string(file, key)
        relative = Path(file)
        if not file or relative.is_absolute() or ".." in relative.parts:
            self.fail(key, f"expected a path relative to the problem file's folder, without '..'; found {_show(file)}")
        folder = self.data_dir or (self.path.parent if self.path is not None else Path.cwd())
        try:
            points, values, content = read_measurements(folder / relative, file, columns, column)
        except ValueError as error:
            self.fail(key, str(error))
        except OSError as error:
            self.fail(key, f"cannot read {file} ({error.strerror or error})")
        return Measurements(file, torch.from_numpy(points), torch.from_numpy(values), noise, content)

    def unknowns(self, value: Any, space: "_Space") -> list[Unknown]:
        """unknowns: {name: {initial: v, bounds: [low, high], exact: v}}; a bound may be null (open)."""
        from pinnzo.pinn import METRIC_FIELDS  # an unknown names a column of metrics.csv

        if not isinstance(value, dict):
            self.fail("unknowns", f"expected a mapping of name: {{initial: value, bounds: [low, high]}}; "
                                  f"found {_kind(value)}")
        taken = set(space.scope.symbols) | {space.scope.vector_name}
        unknowns = []
        for name, spec in value.items():
            key = _subkey("unknowns", name)
            name = self.identifier(name, key)
            if name in taken or name.startswith("u_"):
                self.fail(key, f"{name!r} is already a variable, a parameter or a derivative of u")
            if name in METRIC_FIELDS:
                self.fail(key, f"{name!r} names a column of metrics.csv; choose another name")
            spec = self.mapping(spec, key, {"initial"}, {"initial", "bounds", "exact"})
            low, high = self.bounds(spec.get("bounds"), f"{key}.bounds")
            unknown = Unknown(name, self.number(spec["initial"], f"{key}.initial"), low, high,
                              self.number(spec["exact"], f"{key}.exact") if "exact" in spec else None)
            if not unknown.contains(unknown.initial):
                self.fail(f"{key}.initial", f"expected a value strictly inside the bounds {unknown.bounds_text()}; "
                                            f"found {unknown.initial:g}")
            unknowns.append(unknown)
        return unknowns

    def bounds(self, value: Any, key: str) -> tuple[float, float]:
        """[low, high] with null (or -.inf / .inf) for an open side; low < high."""
        if value is None:
            return -math.inf, math.inf
        if not isinstance(value, list) or len(value) != 2:
            self.fail(key, f"expected [low, high] (null for an open side); found {_kind(value)}")
        low, high = value
        low = -math.inf if low is None or low == -math.inf else self.number(low, f"{key}[0]")
        high = math.inf if high is None or high == math.inf else self.number(high, f"{key}[1]")
        if not low < high:
            self.fail(key, f"expected low < high; found [{low:g}, {high:g}]")
        return low, high

    def check_used(self, unknowns: list[Unknown], symbols: dict, residual: sympy.Expr,
                   conditions: list[Condition]) -> None:
        """Every unknown appears in the equation or in a condition (else nothing could identify it)."""
        used = residual.free_symbols.union(*(condition.value.free_symbols for condition in conditions),
                                           *(part.free_symbols for condition in conditions
                                             for part in (condition.coefficient, condition.operator)
                                             if part is not None))
        for unknown in unknowns:
            if symbols[unknown.name] not in used:
                self.fail(f"unknowns.{unknown.name}", "appears neither in the equation nor in a condition")


_TYPE_FORMS = {"robin": "du/dn + coefficient u = value", "operator": "operator = value, e.g. d(u, x, x) = 0"}


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _affine_parts(ansatz: sympy.Expr | None, names) -> tuple[Callable, Callable] | None:
    """Compiled (a, b) when ansatz = a + b N with a, b free of N (else None)."""
    if ansatz is None:
        return None
    network = sympy.Symbol("N", real=True)
    slope = sympy.diff(ansatz, network)
    if network in slope.free_symbols:
        return None
    return compile_torch(ansatz.subs(network, 0), names), compile_torch(slope, names)


def _split_forcing(residual: sympy.Expr, symbols: set) -> tuple[sympy.Expr, sympy.Expr]:
    """residual = dependent + forcing, forcing the sum of the terms free of ``symbols`` (the atoms and
    unknowns): a function of the points alone, which a loss computes once per point set."""
    terms = sympy.Add.make_args(residual)
    forcing = [term for term in terms if not term.free_symbols & symbols]
    return sympy.Add(*[term for term in terms if term.free_symbols & symbols]), sympy.Add(*forcing)


def _apply_atoms(residual, atoms, exact, columns, symbols, spatial) -> sympy.Expr:
    """The residual with u and its derivatives replaced by those of ``exact``."""
    variables = [symbols[c] for c in columns]
    replacements = {}
    for atom in atoms:
        if atom.kind == "value":
            value = exact
        elif atom.kind in ("d1", "d2", "d3", "d4"):
            value = sympy.diff(exact, *(variables[i] for i in atom.index))
        elif atom.kind == "lap":
            value = sympy.Add(*[sympy.diff(exact, variables[i], 2) for i in spatial])
        else:
            value = sympy.Add(*[sympy.diff(exact, variables[i]) ** 2 for i in spatial])
        replacements[A.atom_symbol(atom, columns)] = value
    return residual.xreplace(replacements)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 4, 4, 3, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def _show(value: Any) -> str:
    """A bounded repr: reprlib never builds the repr of a whole large structure."""
    return _REPR.repr(value)[:100]


def _key_text(name: Any) -> str:
    """A mapping key as it appears in a key path: escaped and bounded."""
    text = name if isinstance(name, str) else _show(name)
    if not text.isprintable() or len(text) > 60:
        text = _show(text)
    return text


def _subkey(key: str, name: Any) -> str:
    return f"{key}.{_key_text(name)}" if key else _key_text(name)


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {_show(value)}"[:80]
    return f"{type(value).__name__} {_show(value)}"[:80]
