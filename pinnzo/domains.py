"""Spatial domains: boxes, balls, annuli, polygons, and their unions and differences.

A shape knows its dimension ``dim``, its ``measure`` (volume, area, length), its
bounding box ``bounds``, a signed distance ``sdf`` (negative inside; for
composites a function with the right sign and zero set, not the exact
distance), ``contains``, exact uniform interior sampling ``sample`` and uniform
boundary sampling ``sample_boundary`` (uniform in surface measure: arc length
in 2-D) with outward unit normals. All samples are (n, dim) tensors.

Primitives (box, ball, annulus, polygon) sample directly, with no rejection.
Composites (union, difference) sample by rejection from primitives whose
measures are known exactly, with a bounded number of rounds (see
``_rejection``). ``parse_domain`` turns the ``variables.space.domain`` block of
a problem file into a shape; bad input raises ``DomainError`` naming the key.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from pinnzo.errors import PinnzoError
from pinnzo.registry import Registry

TOLERANCE = 1e-9  # "on the boundary", relative to the bounding box's diameter
PROBE = 1e-7  # step along the normal that tells the inside of a composite's boundary from its outside
MAX_ROUNDS = 32  # rejection rounds of one composite sample
ESTIMATE_POINTS = 1 << 14  # candidates that estimate a composite's acceptance fraction at construction
MEASURE_POINTS = 1 << 20  # candidates of the Monte-Carlo estimate of a composite's measure
MIN_FRACTION = 0.01  # a composite keeping less of the primitives it is sampled from is refused (measure ~zero)
MAX_VERTICES = 256  # of one polygon (ear clipping is quadratic to cubic in them)
MAX_MEMBERS = 64  # of one union


class DomainError(PinnzoError):
    """A domain block that is malformed: ``key`` is its key path, ``message`` what was wrong."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _to(X: torch.Tensor) -> torch.Tensor:
    return X.to(torch.float64)


def _unit_vectors(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """n directions uniform on the unit sphere S^(dim-1) (normalised Gaussians): (n, dim)."""
    g = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    norm = g.norm(dim=1, keepdim=True)
    first = torch.zeros(dim, dtype=torch.float64)
    first[0] = 1.0
    return torch.where(norm > 0, g / norm.clamp_min(1e-300), first)  # g = 0 has probability zero


def _ball_measure(dim: int, radius: float) -> float:
    """pi^(d/2) / Gamma(d/2 + 1) r^d, in logarithms (inf when it overflows, 0 when it underflows)."""
    try:
        return math.exp(dim / 2 * math.log(math.pi) - math.lgamma(dim / 2 + 1) + dim * math.log(radius))
    except OverflowError:
        return math.inf


def _choose(weights: list[float], n: int, generator: torch.Generator) -> torch.Tensor:
    """n i.i.d. indices with probabilities proportional to ``weights`` (inverse CDF): (n,)."""
    cumulative = torch.tensor(weights, dtype=torch.float64).cumsum(0)
    u = torch.rand(n, generator=generator, dtype=torch.float64) * cumulative[-1]
    return torch.searchsorted(cumulative, u, right=True).clamp_max(len(weights) - 1)


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


class Shape:
    """A bounded set in R^dim with uniform samplers (the interface; see the module docstring)."""

    dim: int
    kind: str

    @property
    def measure(self) -> float:
        raise NotImplementedError

    @property
    def measure_is_exact(self) -> bool:
        return True

    @property
    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(lows, highs) of the bounding box."""
        raise NotImplementedError

    @property
    def diameter(self) -> float:
        lows, highs = self.bounds
        return math.dist(lows, highs)

    def sdf(self, X: torch.Tensor) -> torch.Tensor:
        """Signed distance (n,) of points X (n, dim) in float64: < 0 inside, 0 on the boundary."""
        raise NotImplementedError

    def contains(self, X: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
        """(n,) bool: X (n, dim) lies in the shape grown by ``tolerance`` x diameter (closed)."""
        return self.sdf(_to(X)) <= tolerance * self.diameter

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """n i.i.d. points uniform in the shape: (n, dim)."""
        raise NotImplementedError

    def sample_boundary(self, n: int, generator: torch.Generator,
                        dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """n i.i.d. points uniform on the boundary (surface measure) and outward unit normals: (n, dim) each."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # composites sample from primitives: which pieces cover the shape, which carry its boundary
    def envelope(self) -> list["Primitive"]:
        raise NotImplementedError

    def boundary_pieces(self) -> list[tuple["Primitive", float]]:
        """(primitive, orientation +1 or -1) whose boundaries cover this shape's boundary."""
        raise NotImplementedError


class Primitive(Shape):
    """A shape with closed-form measure and direct (rejection-free) samplers."""

    boundary_measure: float

    def envelope(self) -> list["Primitive"]:
        return [self]

    def boundary_pieces(self) -> list[tuple["Primitive", float]]:
        return [(self, 1.0)]

    def normal_at(self, X: torch.Tensor) -> torch.Tensor:
        """The outward unit normal (n, dim) of the nearest boundary part to points X near the boundary."""
        raise NotImplementedError


# ------------------------------------------------------------------ primitives

class Box(Primitive):
    """prod [low_i, high_i]."""

    kind = "box"

    def __init__(self, lows, highs):
        self.lows, self.highs = tuple(map(float, lows)), tuple(map(float, highs))
        self.dim = len(self.lows)
        sides = [h - l for l, h in zip(self.lows, self.highs)]
        self.face_measures = [math.prod(sides[:i] + sides[i + 1:]) for i in range(self.dim) for _ in range(2)]
        self.boundary_measure = sum(self.face_measures)

    @property
    def measure(self) -> float:
        return math.prod(h - l for l, h in zip(self.lows, self.highs))

    @property
    def bounds(self):
        return self.lows, self.highs

    def _centred(self, X):
        lows, highs = torch.tensor(self.lows, dtype=torch.float64), torch.tensor(self.highs, dtype=torch.float64)
        return _to(X) - (lows + highs) / 2, (highs - lows) / 2

    def sdf(self, X):
        offset, half = self._centred(X)
        q = offset.abs() - half
        return q.clamp_min(0).norm(dim=1) + q.max(dim=1).values.clamp_max(0)

    def normal_at(self, X):
        offset, half = self._centred(X)
        axis = (offset.abs() - half).argmax(dim=1)
        normals = torch.zeros_like(offset)
        normals[torch.arange(len(X)), axis] = torch.sign(offset[torch.arange(len(X)), axis])
        return normals

    def sample(self, n, generator, dtype=torch.float64):
        lows, highs = torch.tensor(self.lows, dtype=dtype), torch.tensor(self.highs, dtype=dtype)
        return lows + (highs - lows) * torch.rand(n, self.dim, generator=generator, dtype=dtype)

    def faces(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n faces, each with probability proportional to its measure: (axis (n,), upper (n,) bool).

        When all faces have one measure (a cube, an interval) this is the one call
        randint(0, 2 dim) that boxes always made, so their samples stay the same.
        """
        if max(self.face_measures) == min(self.face_measures):
            face = torch.randint(0, 2 * self.dim, (n,), generator=generator)
        else:
            face = _choose(self.face_measures, n, generator)
        return face // 2, (face % 2).bool()

    def place_on_faces(self, X: torch.Tensor, columns: torch.Tensor, axis: torch.Tensor, upper: torch.Tensor):
        """Move row k of X onto face (axis[k], upper[k]) (column columns[k] of X); the normals (n, dim)."""
        n = len(X)
        lows, highs = torch.tensor(self.lows, dtype=X.dtype), torch.tensor(self.highs, dtype=X.dtype)
        X[torch.arange(n), columns] = torch.where(upper, highs[axis], lows[axis])
        normals = torch.zeros(n, self.dim, dtype=X.dtype)
        normals[torch.arange(n), axis] = torch.where(upper, 1.0, -1.0).to(X.dtype)
        return normals

    def sample_boundary(self, n, generator, dtype=torch.float64):
        X = self.sample(n, generator, dtype)
        axis, upper = self.faces(n, generator)
        return X, self.place_on_faces(X, axis, axis, upper)

    def describe(self):
        if self.dim > 1 and len(set(self.lows)) == 1 and len(set(self.highs)) == 1:
            return f"box [{self.lows[0]:g}, {self.highs[0]:g}]^{self.dim}"
        return "box " + " x ".join(f"[{l:g}, {h:g}]" for l, h in zip(self.lows, self.highs))


class Ball(Primitive):
    """{x : |x - center| <= radius} in any dimension (a disk in 2-D, an interval in 1-D)."""

    kind = "ball"

    def __init__(self, center, radius: float):
        self.center, self.radius = tuple(map(float, center)), float(radius)
        self.dim = len(self.center)
        self.boundary_measure = self.dim * self.measure / self.radius

    @property
    def measure(self):
        return _ball_measure(self.dim, self.radius)

    @property
    def bounds(self):
        return tuple(c - self.radius for c in self.center), tuple(c + self.radius for c in self.center)

    def _offset(self, X):
        return _to(X) - torch.tensor(self.center, dtype=torch.float64)

    def sdf(self, X):
        return self._offset(X).norm(dim=1) - self.radius

    def normal_at(self, X):
        offset = self._offset(X)
        return offset / offset.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def sample(self, n, generator, dtype=torch.float64):
        """Gaussian direction x radius R U^(1/d): P(|x - c| <= r) = (r / R)^d, the volume fraction."""
        directions = _unit_vectors(n, self.dim, generator)
        radii = self.radius * torch.rand(n, 1, generator=generator, dtype=torch.float64) ** (1 / self.dim)
        return (torch.tensor(self.center, dtype=torch.float64) + radii * directions).to(dtype)

    def sample_boundary(self, n, generator, dtype=torch.float64):
        directions = _unit_vectors(n, self.dim, generator)
        X = torch.tensor(self.center, dtype=torch.float64) + self.radius * directions
        return X.to(dtype), directions.to(dtype)

    def describe(self):
        name = "disk" if self.dim == 2 else "ball"
        return f"{name} center {_numbers(self.center)} radius {self.radius:g}"


class Annulus(Primitive):
    """{x : inner <= |x - center| <= outer} (a spherical shell when dim >= 3)."""

    kind = "annulus"

    def __init__(self, center, inner: float, outer: float):
        self.center, self.inner, self.outer = tuple(map(float, center)), float(inner), float(outer)
        self.dim = len(self.center)
        self.ratio = self.inner / self.outer
        self.boundary_measure = self.dim * _ball_measure(self.dim, self.outer) / self.outer * (
            1 + self.ratio ** (self.dim - 1))

    @property
    def measure(self):
        return _ball_measure(self.dim, self.outer) * (1 - self.ratio**self.dim)

    @property
    def bounds(self):
        return tuple(c - self.outer for c in self.center), tuple(c + self.outer for c in self.center)

    def _offset(self, X):
        return _to(X) - torch.tensor(self.center, dtype=torch.float64)

    def sdf(self, X):
        r = self._offset(X).norm(dim=1)
        return torch.maximum(r - self.outer, self.inner - r)

    def normal_at(self, X):
        offset = self._offset(X)
        r = offset.norm(dim=1, keepdim=True).clamp_min(1e-300)
        outer = (r - self.outer).abs() <= (r - self.inner).abs()
        return torch.where(outer, offset / r, -offset / r)

    def sample(self, n, generator, dtype=torch.float64):
        """Radius by inverting the volume fraction P(|x - c| <= r) = (r^d - a^d) / (b^d - a^d):
        r = b (rho^d + U (1 - rho^d))^(1/d) with rho = a / b, times a Gaussian direction."""
        directions = _unit_vectors(n, self.dim, generator)
        u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        rho_d = self.ratio**self.dim
        radii = self.outer * (rho_d + u * (1 - rho_d)) ** (1 / self.dim)
        return (torch.tensor(self.center, dtype=torch.float64) + radii * directions).to(dtype)

    def sample_boundary(self, n, generator, dtype=torch.float64):
        """The inner sphere with probability a^(d-1) / (a^(d-1) + b^(d-1)), its normal pointing to the centre."""
        directions = _unit_vectors(n, self.dim, generator)
        inner = _choose([1.0, self.ratio ** (self.dim - 1)], n, generator).bool().unsqueeze(1)
        radii = torch.where(inner, torch.tensor(self.inner, dtype=torch.float64), self.outer)
        X = torch.tensor(self.center, dtype=torch.float64) + radii * directions
        return X.to(dtype), torch.where(inner, -directions, directions).to(dtype)

    def describe(self):
        return f"annulus center {_numbers(self.center)} radii {self.inner:g} to {self.outer:g}"


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def signed_area(vertices) -> float:
    """Shoelace formula: > 0 for counter-clockwise vertices."""
    return sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(vertices, vertices[1:] + vertices[:1])) / 2


def _segments_meet(p, q, r, s) -> bool:
    """Do the closed segments pq and rs share a point?"""
    d1, d2, d3, d4 = _cross(r, s, p), _cross(r, s, q), _cross(p, q, r), _cross(p, q, s)
    if ((d1 > 0 and d2 < 0) or (d1 < 0 and d2 > 0)) and ((d3 > 0 and d4 < 0) or (d3 < 0 and d4 > 0)):
        return True

    def on_segment(a, b, c):  # c collinear with ab: is it between a and b?
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    return ((d1 == 0 and on_segment(r, s, p)) or (d2 == 0 and on_segment(r, s, q))
            or (d3 == 0 and on_segment(p, q, r)) or (d4 == 0 and on_segment(p, q, s)))


def simplicity_defect(vertices) -> str | None:
    """Why the closed polygon is not simple (None when it is): repeated vertices,
    an edge folding back on the previous one, or two edges that meet elsewhere than at a shared vertex."""
    n = len(vertices)
    for i in range(n):
        for j in range(i + 1, n):
            if vertices[i] == vertices[j]:
                return f"vertices {i} and {j} coincide"
    edges = [(vertices[i], vertices[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        a, b, c = vertices[i - 1], vertices[i], vertices[(i + 1) % n]
        if _cross(a, b, c) == 0 and (b[0] - a[0]) * (c[0] - b[0]) + (b[1] - a[1]) * (c[1] - b[1]) < 0:
            return f"the edges at vertex {i} fold back on each other"
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # adjacent through the closing edge
            if _segments_meet(*edges[i], *edges[j]):
                return f"edges {i} and {j} intersect"
    return None


def ear_clipping(vertices) -> list[tuple[int, int, int]]:
    """Triangles (vertex indices) of a simple counter-clockwise polygon, by clipping ears.

    An ear is a convex vertex whose triangle with its two neighbours holds no other
    remaining vertex (on its edges included); every simple polygon with more than
    three vertices has one (the two-ears theorem). Straight-angle vertices are
    dropped first: they change neither the area nor the boundary.
    """
    remaining = list(range(len(vertices)))
    triangles = []
    while len(remaining) > 3:
        m = len(remaining)
        for k in range(m):
            a, b, c = (vertices[remaining[(k + s) % m]] for s in (-1, 0, 1))
            turn = _cross(a, b, c)
            if turn == 0:  # straight angle (simple polygons have no fold-backs)
                del remaining[k]
                break
            if turn < 0:
                continue
            others = (vertices[i] for i in remaining if vertices[i] not in (a, b, c))
            if any(_cross(a, b, p) >= 0 and _cross(b, c, p) >= 0 and _cross(c, a, p) >= 0 for p in others):
                continue
            triangles.append((remaining[(k - 1) % m], remaining[k], remaining[(k + 1) % m]))
            del remaining[k]
            break
        else:
            raise ValueError("no ear found: the polygon is not simple")
    if _cross(*(vertices[i] for i in remaining)) > 0:
        triangles.append(tuple(remaining))
    return triangles


class Polygon(Primitive):
    """A simple polygon in 2-D, its vertices in either orientation (stored counter-clockwise)."""

    kind = "polygon"

    def __init__(self, vertices):
        vertices = [(float(x), float(y)) for x, y in vertices]
        if signed_area(vertices) < 0:
            vertices.reverse()
        self.vertices, self.dim = vertices, 2
        self.triangles = ear_clipping(vertices)
        self.triangle_areas = [_cross(*(vertices[i] for i in t)) / 2 for t in self.triangles]
        V = torch.tensor(vertices, dtype=torch.float64)
        self._starts, self._ends = V, V.roll(-1, dims=0)
        edges = self._ends - self._starts
        self.edge_lengths = edges.norm(dim=1)
        self._normals = torch.stack([edges[:, 1], -edges[:, 0]], dim=1) / self.edge_lengths[:, None]
        self.boundary_measure = float(self.edge_lengths.sum())

    @property
    def measure(self):
        return signed_area(self.vertices)

    @property
    def bounds(self):
        xs, ys = zip(*self.vertices)
        return (min(xs), min(ys)), (max(xs), max(ys))

    def _edge_distances(self, X):
        """Distances (n, edges) from X to each edge."""
        X = _to(X)[:, None, :]
        edges = self._ends - self._starts
        t = (((X - self._starts) * edges).sum(-1) / (edges * edges).sum(-1)).clamp(0, 1)
        return (X - (self._starts + t[..., None] * edges)).norm(dim=-1)

    def sdf(self, X):
        X = _to(X)
        x, y = X[:, :1], X[:, 1:]
        (x0, y0), (x1, y1) = self._starts.T, self._ends.T
        crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + (y1 == y0)) + x0)
        inside = crosses.sum(dim=1) % 2 == 1  # even-odd rule
        distance = self._edge_distances(X).min(dim=1).values
        return torch.where(inside, -distance, distance)

    def normal_at(self, X):
        return self._normals[self._edge_distances(X).argmin(dim=1)]

    def sample(self, n, generator, dtype=torch.float64):
        """A triangle with probability proportional to its area, then a uniform point in it
        (two uniforms reflected into the triangle: a + u (b - a) + v (c - a) with u + v <= 1)."""
        which = _choose(self.triangle_areas, n, generator)
        corners = torch.tensor(self.vertices, dtype=torch.float64)[torch.tensor(self.triangles)[which]]
        u, v = torch.rand(2, n, 1, generator=generator, dtype=torch.float64)
        folded = (u + v) > 1
        u, v = torch.where(folded, 1 - u, u), torch.where(folded, 1 - v, v)
        a, b, c = corners.unbind(1)
        return (a + u * (b - a) + v * (c - a)).to(dtype)

    def sample_boundary(self, n, generator, dtype=torch.float64):
        which = _choose(self.edge_lengths.tolist(), n, generator)
        t = torch.rand(n, 1, generator=generator, dtype=torch.float64)
        X = self._starts[which] + t * (self._ends[which] - self._starts[which])
        return X.to(dtype), self._normals[which].to(dtype)

    def describe(self):
        return f"polygon of {len(self.vertices)} vertices"


# ------------------------------------------------------------------ composites

def _rejection(n: int, propose: Callable, fraction: float, generator: torch.Generator, what: str):
    """The first n accepted of i.i.d. candidates: the tensors (n, ...) that ``propose`` returns.

    ``propose(m, generator)`` gives m i.i.d. candidates (tensors of m rows) and a mask
    (m,) of the accepted ones. Accepted candidates are i.i.d. with the wanted law, so
    the first n of them, in candidate order, are too: the result is exact whatever
    the number of rounds. It terminates: a round draws ceil(2 missing / fraction) + 64
    candidates, ``fraction`` being the accepted share estimated at construction
    (at least ``MIN_FRACTION``), so the accepted count has a mean of at least
    2 x missing (1.6 x missing if the estimate were 25% too high) and a round
    falls short with probability below 1/4 (a Poisson tail); after ``MAX_ROUNDS``
    rounds (32 short rounds in a row: probability below 4^-32 = 5e-20) an error is
    raised, never a biased sample. Memory is bounded by 2 n / MIN_FRACTION + 64 rows.
    """
    parts, have = [], 0
    for _ in range(MAX_ROUNDS):
        if have >= n and parts:
            break
        missing = n - have
        *candidates, accepted = propose(math.ceil(2 * missing / fraction) + 64 if missing else 0, generator)
        parts.append([c[accepted][:missing] for c in candidates])
        have += len(parts[-1][0])
    if have < n:
        raise PinnzoError(f"could not draw {n} {what} in {MAX_ROUNDS} rounds of rejection sampling")
    return tuple(torch.cat(columns) for columns in zip(*parts))


class Composite(Shape):
    """A union or difference, sampled by rejection from the primitives of its envelope.

    Interior: a candidate is drawn from envelope primitive E_i with probability
    |E_i| / sum |E_j|, uniformly in E_i, and accepted when it lies in the shape and in
    no E_j with j < i. Its accepted law has density proportional to
    sum_i 1[x in E_i] 1[i = first j with x in E_j] 1[x in S] = 1[x in S]: uniform on
    S, exactly (the measures of primitives are closed forms). Boundary: likewise
    from the boundary pieces (primitive, orientation) weighted by boundary measure:
    a point x of piece k with normal n = orientation x n_k(x) is kept when x - PROBE n
    is inside the shape and x + PROBE n outside (x is on the shape's boundary with
    outward normal n), and no earlier piece carries x with the same normal (faces
    shared by two pieces are counted once). Only points within PROBE x diameter of a
    corner can be misjudged, a share of order 1e-7 of the boundary.
    """

    def __init__(self):
        self.lows_highs = self._bounds()
        self._envelope = self.envelope()
        self._pieces = self.boundary_pieces()
        self._envelope_measure = sum(e.measure for e in self._envelope)
        generator = torch.Generator().manual_seed(0)
        accepted = self._propose_interior(ESTIMATE_POINTS, generator)[1]
        self.interior_fraction = accepted.double().mean().item()
        if self.interior_fraction < MIN_FRACTION:
            raise ValueError("measure zero")
        accepted = self._propose_boundary(ESTIMATE_POINTS, generator)[2]
        self.boundary_fraction = accepted.double().mean().item()
        if self.boundary_fraction < MIN_FRACTION:
            raise ValueError("boundary")

    @property
    def bounds(self):
        return self.lows_highs

    @functools.cached_property
    def _measure_estimate(self) -> tuple[float, float]:
        """(measure, standard error) by Monte Carlo with a fixed seed: sum |E_i| x accepted share."""
        accepted = self._propose_interior(MEASURE_POINTS, torch.Generator().manual_seed(1))[1].double()
        share = accepted.mean().item()
        return self._envelope_measure * share, self._envelope_measure * math.sqrt(share * (1 - share) / len(accepted))

    @property
    def measure(self):
        return self._measure_estimate[0]

    @property
    def measure_error(self) -> float:
        return self._measure_estimate[1]

    @property
    def measure_is_exact(self):
        return False

    def _propose_interior(self, m, generator):
        which = _choose([e.measure for e in self._envelope], m, generator)
        X = torch.empty(m, self.dim, dtype=torch.float64)
        for i, piece in enumerate(self._envelope):
            rows = (which == i).nonzero().squeeze(1)
            X[rows] = piece.sample(len(rows), generator)
        accepted = self.sdf(X) <= 0
        for j, piece in enumerate(self._envelope[:-1]):
            accepted &= ~((which > j) & piece.contains(X))
        return X, accepted

    def _propose_boundary(self, m, generator):
        which = _choose([p.boundary_measure for p, _ in self._pieces], m, generator)
        X = torch.empty(m, self.dim, dtype=torch.float64)
        normals = torch.empty(m, self.dim, dtype=torch.float64)
        for k, (piece, orientation) in enumerate(self._pieces):
            rows = (which == k).nonzero().squeeze(1)
            X[rows], piece_normals = piece.sample_boundary(len(rows), generator)
            normals[rows] = orientation * piece_normals
        step = PROBE * self.diameter
        accepted = (self.sdf(X - step * normals) < 0) & (self.sdf(X + step * normals) > 0)
        for j, (piece, orientation) in enumerate(self._pieces[:-1]):
            on_j = piece.sdf(X).abs() <= TOLERANCE * piece.diameter
            same = (orientation * piece.normal_at(X) * normals).sum(dim=1) > 0.5
            accepted &= ~((which > j) & on_j & same)
        return X, normals, accepted

    def sample(self, n, generator, dtype=torch.float64):
        (X,) = _rejection(n, self._propose_interior, self.interior_fraction, generator, "interior points")
        return X.to(dtype)

    def sample_boundary(self, n, generator, dtype=torch.float64):
        X, normals = _rejection(n, self._propose_boundary, self.boundary_fraction, generator, "boundary points")
        return X.to(dtype), normals.to(dtype)


class Difference(Composite):
    """``kept`` minus ``removed``."""

    kind = "difference"

    def __init__(self, kept: Shape, removed: Shape):
        self.kept, self.removed, self.dim = kept, removed, kept.dim
        super().__init__()

    def _bounds(self):
        return self.kept.bounds

    def sdf(self, X):
        return torch.maximum(self.kept.sdf(X), -self.removed.sdf(X))

    def envelope(self):
        return self.kept.envelope()

    def boundary_pieces(self):
        return self.kept.boundary_pieces() + [(p, -s) for p, s in self.removed.boundary_pieces()]

    @property
    def measure(self):
        if isinstance(self.kept, Box) and isinstance(self.removed, Box):  # |A| - |A n B|, exactly
            overlap = [max(0.0, min(h1, h2) - max(l1, l2)) for l1, h1, l2, h2 in
                       zip(self.kept.lows, self.kept.highs, self.removed.lows, self.removed.highs)]
            return self.kept.measure - math.prod(overlap)
        return super().measure

    @property
    def measure_is_exact(self):
        return isinstance(self.kept, Box) and isinstance(self.removed, Box)

    def describe(self):
        return f"difference of ({self.kept.describe()}) minus ({self.removed.describe()})"


class Union(Composite):
    """The union of shapes of one dimension."""

    kind = "union"

    def __init__(self, members: list[Shape]):
        self.members, self.dim = list(members), members[0].dim
        super().__init__()

    def _bounds(self):
        lows = tuple(min(m.bounds[0][i] for m in self.members) for i in range(self.dim))
        highs = tuple(max(m.bounds[1][i] for m in self.members) for i in range(self.dim))
        return lows, highs

    def sdf(self, X):
        return torch.stack([m.sdf(X) for m in self.members]).min(dim=0).values

    def envelope(self):
        return [e for m in self.members for e in m.envelope()]

    def boundary_pieces(self):
        return [piece for m in self.members for piece in m.boundary_pieces()]

    def describe(self):
        return "union of " + ", ".join(f"({m.describe()})" for m in self.members)


# ------------------------------------------------------------------ the YAML block

SHAPES: Registry[Callable] = Registry("domain shape")


def parse_domain(spec: Any, dim: int, key: str) -> Shape:
    """A ``variables.space.domain`` value -> a shape of dimension ``dim``; DomainError naming the key.

    Forms: [low, high] (the cube), a list of dim [low, high] pairs (a box), or a
    mapping with one shape name: box, ball, disk, annulus, polygon, union, difference.
    """
    if isinstance(spec, list):
        return _box_from_pairs(spec, dim, key)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise DomainError(key, f"expected [low, high], a list of {dim} [low, high] pairs, or a mapping with one "
                               f"shape ({', '.join(SHAPES.names())}); found {_kind(spec)}")
    (name, value), = spec.items()
    if not isinstance(name, str):
        raise DomainError(key, f"expected a shape name; found {_kind(name)}")
    try:
        build = SHAPES[name]
    except PinnzoError as error:
        raise DomainError(key, str(error)) from None
    return build(value, dim, f"{key}.{name}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"a mapping {text}" if isinstance(value, dict) else f"{type(value).__name__} {text}"


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DomainError(key, f"expected a number; found {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise DomainError(key, f"expected a finite number; found {repr(value)[:60]}")
    return number


def _point(value: Any, dim: int, key: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != dim:
        raise DomainError(key, f"expected a point of {dim} numbers (dim is {dim}); found {_kind(value)}")
    return tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(value))


def _fields(value: Any, key: str, required: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise DomainError(key, f"expected a mapping with keys {', '.join(required)}; found {_kind(value)}")
    for name in value:
        if name not in required:
            raise DomainError(f"{key}.{name}", f"unknown key; allowed keys: {', '.join(required)}")
    for name in required:
        if name not in value:
            raise DomainError(f"{key}.{name}", "missing required key")
    return value


def _interval(value: Any, key: str) -> tuple[float, float]:
    if not isinstance(value, list) or len(value) != 2:
        raise DomainError(key, f"expected [low, high]; found {_kind(value)}")
    low, high = _number(value[0], f"{key}[0]"), _number(value[1], f"{key}[1]")
    if not low < high:
        raise DomainError(key, f"expected low < high (a box of positive measure); found [{low:g}, {high:g}]")
    if not math.isfinite(high - low):
        raise DomainError(key, f"expected an interval of finite length; found [{low:g}, {high:g}]")
    return low, high


def _box_from_pairs(value: list, dim: int, key: str) -> Box:
    if len(value) == 2 and not isinstance(value[0], list):
        low, high = _interval(value, key)
        return _finite(Box([low] * dim, [high] * dim), key)
    if not all(isinstance(pair, list) for pair in value):
        raise DomainError(key, f"expected [low, high] or a list of {dim} [low, high] pairs; found {_kind(value)}")
    if len(value) != dim:
        raise DomainError(key, f"expected {dim} [low, high] pairs (dim is {dim}); found {len(value)}")
    pairs = [_interval(pair, f"{key}[{i}]") for i, pair in enumerate(value)]
    return _finite(Box([p[0] for p in pairs], [p[1] for p in pairs]), key)


@SHAPES.register("box")
def _box(value, dim, key):
    spec = _fields(value, key, ("lows", "highs"))
    lows, highs = _point(spec["lows"], dim, f"{key}.lows"), _point(spec["highs"], dim, f"{key}.highs")
    for i, (low, high) in enumerate(zip(lows, highs)):
        if not low < high:
            raise DomainError(key, f"expected lows < highs in every coordinate (a box of positive measure); "
                                   f"found [{low:g}, {high:g}] in coordinate {i + 1}")
    return _finite(Box(lows, highs), key)


def _finite(shape: Primitive, key: str) -> Primitive:
    """The shape, when its bounding box has a finite diameter."""
    if not math.isfinite(shape.diameter):
        raise DomainError(key, "the domain is too large: its bounding box has no finite diameter")
    return shape


def _radius(value, key, what="radius") -> float:
    radius = _number(value, key)
    if not radius > 0:
        raise DomainError(key, f"expected a {what} > 0 (a domain of positive measure); found {radius:g}")
    return radius


@SHAPES.register("ball")
def _ball(value, dim, key):
    spec = _fields(value, key, ("center", "radius"))
    return _finite(Ball(_point(spec["center"], dim, f"{key}.center"), _radius(spec["radius"], f"{key}.radius")), key)


@SHAPES.register("disk")
def _disk(value, dim, key):
    if dim != 2:
        raise DomainError(key, f"a disk is 2-D but dim is {dim}; use ball for other dimensions")
    return _ball(value, dim, key)


@SHAPES.register("annulus")
def _annulus(value, dim, key):
    if dim < 2:
        raise DomainError(key, "an annulus needs dim >= 2; found dim 1 (use a union of two intervals)")
    spec = _fields(value, key, ("center", "inner", "outer"))
    center = _point(spec["center"], dim, f"{key}.center")
    inner = _number(spec["inner"], f"{key}.inner")
    if inner < 0:
        raise DomainError(f"{key}.inner", f"expected a radius >= 0; found {inner:g}")
    outer = _radius(spec["outer"], f"{key}.outer", "radius")
    if not inner < outer:
        raise DomainError(key, f"expected inner < outer (a domain of positive measure); found inner {inner:g}, "
                               f"outer {outer:g}")
    return _finite(Annulus(center, inner, outer), key)


@SHAPES.register("polygon")
def _polygon(value, dim, key):
    if dim != 2:
        raise DomainError(key, f"a polygon is 2-D but dim is {dim}")
    spec = _fields(value, key, ("vertices",))
    vertices = spec["vertices"]
    if not isinstance(vertices, list) or not 3 <= len(vertices) <= MAX_VERTICES:
        raise DomainError(f"{key}.vertices", f"expected a list of 3 to {MAX_VERTICES} [x, y] points; "
                                             f"found {_kind(vertices)}")
    points = [_point(v, 2, f"{key}.vertices[{i}]") for i, v in enumerate(vertices)]
    xs, ys = zip(*points)
    scale = max(max(xs) - min(xs), max(ys) - min(ys))
    if not math.isfinite(scale * scale):
        raise DomainError(key, "the domain is too large: its bounding box has no finite diameter")
    far = max(points, key=lambda p: math.dist(p, points[0]))
    if max(abs(_cross(points[0], far, p)) for p in points) <= 1e-12 * scale**2:
        raise DomainError(f"{key}.vertices", "the polygon has zero area: its vertices are collinear (a domain "
                                             "needs positive measure)")
    defect = simplicity_defect(points)
    if defect:
        raise DomainError(f"{key}.vertices", f"expected a simple polygon (no self-intersection); {defect}")
    if abs(signed_area(points)) <= 1e-12 * scale**2:
        raise DomainError(f"{key}.vertices", "the polygon has zero area (a domain needs positive measure)")
    try:
        return _finite(Polygon(points), key)
    except ValueError:  # no ear: only rounding in a nearly degenerate polygon gets here
        raise DomainError(f"{key}.vertices", "expected a simple polygon; it cannot be triangulated") from None


def _composite(build: Callable[[], Composite], key: str, what: str) -> Composite:
    try:
        return build()
    except ValueError as error:
        if str(error) == "boundary":
            raise DomainError(key, f"less than {MIN_FRACTION:.0%} of its shapes' boundaries is the {what}'s "
                                   f"boundary; too little to sample it (merge the overlapping shapes)") from None
        raise DomainError(key, f"the {what} has measure zero or nearly: it keeps less than {MIN_FRACTION:.0%} of "
                               f"the shapes it is sampled from (a domain needs positive measure)") from None


@SHAPES.register("difference")
def _difference(value, dim, key):
    spec = _fields(value, key, ("of", "minus"))
    kept, removed = parse_domain(spec["of"], dim, f"{key}.of"), parse_domain(spec["minus"], dim, f"{key}.minus")
    return _composite(lambda: Difference(kept, removed), key, "difference")


@SHAPES.register("union")
def _union(value, dim, key):
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MEMBERS:
        raise DomainError(key, f"expected a list of 1 to {MAX_MEMBERS} shapes; found {_kind(value)}")
    members = [parse_domain(member, dim, f"{key}[{i}]") for i, member in enumerate(value)]
    return _composite(lambda: Union(members), key, "union")
