"""Domains: measures against closed forms, uniformity of the samplers (chi-square on cells),
boundary points with outward unit normals, and problems posed on them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from pinnzo.derivatives import Autodiff
from pinnzo.domains import Ball, Box, DomainError, ear_clipping, parse_domain, signed_area, simplicity_defect
from pinnzo.problem import load_problem

REPO = Path(__file__).resolve().parents[1]

DISK = {"disk": {"center": [0.5, -0.25], "radius": 1.5}}
BALL3 = {"ball": {"center": [0, 0, 0], "radius": 1}}
ANNULUS = {"annulus": {"center": [0, 0], "inner": 0.4, "outer": 1}}
ARROW = {"polygon": {"vertices": [[0, 0], [2, 0], [2, 2], [1, 1], [0, 2]]}}  # non-convex, area 3
L_SHAPE = {"difference": {"of": [[-1, 1], [-1, 1]], "minus": [[0, 1], [-1, 0]]}}
TWO_DISKS = {"union": [{"disk": {"center": [0, 0], "radius": 1}}, {"disk": {"center": [1, 0], "radius": 1}}]}
T_SHAPE = {"union": [[[0, 3], [1, 2]], [[1, 2], [0, 2]]]}  # two boxes sharing the top edge y = 2 on [1, 2]
HOLED = {"difference": {"of": [[0, 2], [0, 1]], "minus": {"disk": {"center": [1, 0.5], "radius": 0.3}}}}

SHAPES = {"disk": (DISK, 2), "ball3": (BALL3, 3), "annulus": (ANNULUS, 2), "polygon": (ARROW, 2),
          "l-shape": (L_SHAPE, 2), "union": (TWO_DISKS, 2), "t-shape": (T_SHAPE, 2), "holed": (HOLED, 2)}
LENS = 2 * math.pi / 3 - math.sqrt(3) / 2  # the overlap of two unit disks one apart
MEASURES = {"disk": math.pi * 1.5**2, "ball3": 4 / 3 * math.pi, "annulus": math.pi * (1 - 0.4**2), "polygon": 3.0,
            "l-shape": 3.0, "union": 2 * math.pi - LENS, "t-shape": 4.0, "holed": 2 - math.pi * 0.09}
PERIMETERS = {"disk": 3 * math.pi, "annulus": 2 * math.pi * 1.4, "polygon": 6 + 2 * math.sqrt(2), "l-shape": 8.0,
              "union": 2 * 2 * (math.pi - math.pi / 3), "t-shape": 10.0, "holed": 6 + 2 * math.pi * 0.3}


def shape(name):
    spec, dim = SHAPES[name]
    return parse_domain(spec, dim, "domain")


def _cell_probabilities(domain, cells: int, fine: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's share of the domain's measure, by the midpoint rule on a fine grid
    (membership only, independent of the samplers), and the cell edges per axis."""
    lows, highs = np.array(domain.bounds[0]), np.array(domain.bounds[1])
    axes = [np.linspace(lo, hi, cells * fine + 1) for lo, hi in zip(lows, highs)]
    midpoints = [(a[1:] + a[:-1]) / 2 for a in axes]
    grid = np.stack(np.meshgrid(*midpoints, indexing="ij"), axis=-1).reshape(-1, domain.dim)
    inside = domain.contains(torch.tensor(grid)).numpy().reshape([cells * fine] * domain.dim)
    for axis in range(domain.dim):
        inside = np.add.reduceat(inside, np.arange(0, cells * fine, fine), axis=axis)
    return inside.ravel() / inside.sum(), [a[::fine] for a in axes]


def chi_square_p_value(points: np.ndarray, probabilities: np.ndarray, edges) -> float:
    """Pearson's chi-square of the counts per cell against n x probability (cells expecting >= 5)."""
    counts = np.histogramdd(points, bins=edges)[0].ravel()
    expected = len(points) * probabilities
    assert counts[expected == 0].sum() == 0, "points in cells outside the domain"
    used = expected >= 5
    observed = np.append(counts[used], counts[~used].sum())
    expected = np.append(expected[used], expected[~used].sum())
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    return stats.chi2.sf(statistic, keep.sum() - 1)


@pytest.mark.parametrize("name", list(SHAPES))
def test_interior_samples_are_uniform_by_a_chi_square_test_on_cells(name):
    domain = shape(name)
    cells = 12 if domain.dim == 2 else 6
    probabilities, edges = _cell_probabilities(domain, cells, fine=40 if domain.dim == 2 else 12)
    X = domain.sample(20000, torch.Generator().manual_seed(7))
    assert X.shape == (20000, domain.dim) and X.dtype == torch.float64
    assert domain.contains(X, tolerance=1e-12).all()
    assert chi_square_p_value(X.numpy(), probabilities, edges) > 1e-3


def test_the_chi_square_test_rejects_a_disk_sampled_with_uniform_radius():
    domain = shape("disk")
    probabilities, edges = _cell_probabilities(domain, 12, fine=40)
    generator = torch.Generator().manual_seed(7)
    angle = 2 * math.pi * torch.rand(20000, generator=generator, dtype=torch.float64)
    radius = 1.5 * torch.rand(20000, generator=generator, dtype=torch.float64)  # crowds the centre
    X = torch.stack([0.5 + radius * angle.cos(), -0.25 + radius * angle.sin()], dim=1)
    assert chi_square_p_value(X.numpy(), probabilities, edges) < 1e-10


@pytest.mark.parametrize("name", list(SHAPES))
def test_boundary_points_lie_on_the_boundary_with_outward_unit_normals(name):
    domain = shape(name)
    X, normals = domain.sample_boundary(4000, torch.Generator().manual_seed(3))
    assert X.shape == normals.shape == (4000, domain.dim)
    np.testing.assert_allclose(normals.norm(dim=1).numpy(), 1.0, atol=1e-12)
    assert domain.sdf(X).abs().max().item() < 1e-9
    step = 1e-6 * domain.diameter
    assert (domain.sdf(X - step * normals) < 0).all(), "x - eps n must be inside"
    assert (domain.sdf(X + step * normals) > 0).all(), "x + eps n must be outside"


@pytest.mark.parametrize("name", list(SHAPES))
def test_measures_match_closed_forms(name):
    domain = shape(name)
    if domain.measure_is_exact:
        assert domain.measure == pytest.approx(MEASURES[name], rel=1e-12)
    else:  # Monte Carlo with 2^20 points: within 4 standard errors
        assert abs(domain.measure - MEASURES[name]) < 4 * domain.measure_error
        assert domain.measure_error < 3e-3 * MEASURES[name]


def test_closed_form_measures_of_primitives_in_other_dimensions():
    assert Ball([0] * 5, 2.0).measure == pytest.approx(8 * math.pi**2 / 15 * 32, rel=1e-12)
    assert Ball([0] * 3, 2.0).boundary_measure == pytest.approx(16 * math.pi, rel=1e-12)
    shell = parse_domain({"annulus": {"center": [0, 0, 0], "inner": 0.5, "outer": 1}}, 3, "d")
    assert shell.measure == pytest.approx(4 / 3 * math.pi * (1 - 0.125), rel=1e-12)
    assert shell.boundary_measure == pytest.approx(4 * math.pi * 1.25, rel=1e-12)
    box = Box([0, 0, 0], [1, 2, 3])
    assert box.measure == 6 and box.boundary_measure == 2 * (2 + 3 + 6)


@pytest.mark.parametrize("name", ["disk", "annulus", "polygon", "l-shape", "union", "t-shape"])
def test_boundary_samples_are_uniform_in_arc_length(name):
    """Cells of the boundary: the share of the perimeter in each cell of a 12 x 12 grid,
    from an independent fine polyline of the boundary, against the sample counts."""
    domain = shape(name)
    X, _ = domain.sample_boundary(20000, torch.Generator().manual_seed(5))
    lows, highs = domain.bounds
    edges = [np.linspace(lo - 1e-9, hi + 1e-9, 13) for lo, hi in zip(lows, highs)]
    reference, lengths = _boundary_polyline(name)
    assert lengths.sum() == pytest.approx(PERIMETERS[name], rel=1e-6)
    probabilities = np.histogramdd(reference, bins=edges, weights=lengths)[0].ravel() / lengths.sum()
    assert chi_square_p_value(X.numpy(), probabilities, edges) > 1e-3


def _boundary_polyline(name):
    """Midpoints and lengths of a fine subdivision of the boundary, written out by hand."""
    def circle(center, radius, start=0.0, stop=2 * math.pi, k=200000):
        t = np.linspace(start, stop, k + 1)
        t = (t[1:] + t[:-1]) / 2
        return (np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], 1),
                np.full(k, radius * (stop - start) / k))

    def polyline(vertices, k=20000):
        points, lengths = [], []
        for a, b in zip(vertices, vertices[1:] + vertices[:1]):
            a, b = np.array(a, float), np.array(b, float)
            s = (np.arange(k) + 0.5) / k
            points.append(a + s[:, None] * (b - a))
            lengths.append(np.full(k, np.linalg.norm(b - a) / k))
        return np.concatenate(points), np.concatenate(lengths)

    pieces = {
        "disk": lambda: [circle((0.5, -0.25), 1.5)],
        "annulus": lambda: [circle((0, 0), 1), circle((0, 0), 0.4)],
        "polygon": lambda: [polyline(ARROW["polygon"]["vertices"])],
        "l-shape": lambda: [polyline([[-1, -1], [0, -1], [0, 0], [1, 0], [1, 1], [-1, 1]])],
        "union": lambda: [circle((0, 0), 1, math.pi / 3, 5 * math.pi / 3), circle((1, 0), 1, -2 * math.pi / 3,
                                                                                  2 * math.pi / 3)],
        "t-shape": lambda: [polyline([[0, 1], [1, 1], [1, 0], [2, 0], [2, 1], [3, 1], [3, 2], [0, 2]])],
    }[name]()
    return np.concatenate([p for p, _ in pieces]), np.concatenate([w for _, w in pieces])


def test_cube_faces_are_the_historical_randint_and_other_boxes_weigh_faces_by_measure():
    cube = Box([0, 0, 0], [2, 2, 2])
    axis, upper = cube.faces(1000, torch.Generator().manual_seed(0))
    face = torch.randint(0, 6, (1000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(axis, face // 2) and torch.equal(upper, (face % 2).bool())
    slab = Box([0, 0], [10, 1])  # faces x = 0, 10 have length 1, faces y = 0, 1 length 10
    axis, _ = slab.faces(40000, torch.Generator().manual_seed(0))
    assert (axis == 1).double().mean().item() == pytest.approx(20 / 22, abs=0.01)


def test_ear_clipping_tiles_random_star_polygons():
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(4, 40))
        angles = 2 * np.pi * (np.arange(k) + 0.8 * rng.uniform(size=k)) / k  # gaps below pi: star-shaped
        radii = rng.uniform(0.2, 1.0, k)
        vertices = [(float(r * np.cos(a)), float(r * np.sin(a))) for r, a in zip(radii, angles)]
        assert simplicity_defect(vertices) is None
        triangles = ear_clipping(vertices)
        assert len(triangles) == k - 2
        areas = [signed_area([vertices[i] for i in t]) for t in triangles]
        assert min(areas) > 0 and sum(areas) == pytest.approx(signed_area(vertices), rel=1e-10)


@pytest.mark.parametrize("spec, dim, needle", [
    ({"polygon": {"vertices": [[0, 0], [1, 1], [1, 0], [0, 1]]}}, 2, "domain.polygon.vertices: expected a simple "
                                                                     "polygon (no self-intersection); edges 0 and 2"),
    ({"polygon": {"vertices": [[0, 0], [1, 0], [2, 0]]}}, 2, "the polygon has zero area"),
    ({"polygon": {"vertices": [[0, 0], [1, 0], [1, 1]]}}, 3, "domain.polygon: a polygon is 2-D but dim is 3"),
    ({"disk": {"center": [0, 0, 0], "radius": 1}}, 3, "domain.disk: a disk is 2-D but dim is 3"),
    ({"ball": {"center": [0, 0], "radius": 0}}, 2, "domain.ball.radius: expected a radius > 0"),
    ({"annulus": {"center": [0, 0], "inner": 1, "outer": 1}}, 2, "domain.annulus: expected inner < outer"),
    ({"box": {"lows": [0, 0], "highs": [1, 0]}}, 2, "domain.box: expected lows < highs"),
    ({"difference": {"of": [[0, 1], [0, 1]], "minus": {"disk": {"center": [0.5, 0.5], "radius": 1}}}}, 2,
     "domain.difference: the difference has measure zero"),
    ({"circle": {"center": [0, 0], "radius": 1}}, 2, "domain: unknown domain shape 'circle'; must be one of box, "
                                                     "ball, disk, annulus, polygon, difference, union"),
    ({"union": [{"disk": {"center": [0, 0], "radius": 1}}, {"disk": {"center": [0], "radius": 1}}]}, 2,
     "domain.union[1].disk.center: expected a point of 2 numbers (dim is 2)"),
])
def test_bad_domains_name_their_key(spec, dim, needle):
    with pytest.raises(DomainError) as error:
        parse_domain(spec, dim, "domain")
    assert needle in str(error.value)


# ---- problems on such domains --------------------------------------------------

DISK_HEAT = """
variables:
  space: {name: x, dim: 2, domain: {disk: {center: [0, 0], radius: 2}}}
  time: {name: t, domain: [0, 0.5]}
equation: d(u, t) - lap(u)
exact: exp(-t) * x1 + t * 4 + x1**2 + x2**2 - 4 * t
conditions:
  start: {at: initial, value: x1 + x1**2 + x2**2}
  flux: {at: boundary, type: neumann, value: exp(-t) * x1 / 2 + 4}
"""


def test_space_time_problem_on_a_disk_samples_the_cylinder(tmp_path):
    path = tmp_path / "heat-disk.yaml"
    path.write_text(DISK_HEAT)
    problem = load_problem(path)
    assert problem.lows == (-2, -2, 0) and problem.highs == (2, 2, 0.5)
    generator = torch.Generator().manual_seed(0)
    X = problem.sample_interior(5000, generator, torch.float64)
    assert (X[:, :2].norm(dim=1) <= 2).all() and (X[:, 2] >= 0).all() and (X[:, 2] <= 0.5).all()
    assert X[:, 2].mean().item() == pytest.approx(0.25, abs=0.01)
    start, flux = problem.conditions
    Xs, normals = problem.sample_condition(start, 100, generator, torch.float64)
    assert normals is None and (Xs[:, 2] == 0).all() and (Xs[:, :2].norm(dim=1) <= 2).all()
    Xb, normals = problem.sample_condition(flux, 500, generator, torch.float64)
    np.testing.assert_allclose(Xb[:, :2].norm(dim=1).numpy(), 2.0, rtol=1e-12)
    np.testing.assert_allclose(normals.numpy(), Xb[:, :2].numpy() / 2, atol=1e-12)
    # the exact solution's normal derivative (x . grad u / 2) is the Neumann value
    values = Autodiff()(problem.exact_solution, Xb, problem.condition_atoms(flux), problem.spatial)
    assert problem.condition_residual(flux, Xb, normals, values).abs().max().item() < 1e-12


def test_box_domains_keep_their_samples():
    """The list form and the box form of one cube draw exactly what boxes always drew."""
    problem = load_problem(REPO / "problems" / "poisson2d.yaml")
    generator = torch.Generator().manual_seed(11)
    X = problem.sample_interior(50, generator, torch.float32)
    expected = torch.rand(50, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float32)
    assert torch.equal(X, expected)
    text = (REPO / "problems" / "poisson2d.yaml").read_text().replace(
        "domain: [0, 1]}", "domain: {box: {lows: [0, 0], highs: [1, 1]}}}")
    boxed = load_problem({**__import__("yaml").safe_load(text)})
    for one in (problem, boxed):
        Xc, normals = one.sample_condition(one.conditions[0], 64, torch.Generator().manual_seed(2))
        reference = torch.rand(64, 2, generator=(g := torch.Generator().manual_seed(2)))
        face = torch.randint(0, 4, (64,), generator=g)
        reference[torch.arange(64), face // 2] = (face % 2).float()
        assert torch.equal(Xc, reference)


def test_validation_points_of_the_l_shape_avoid_the_removed_quadrant():
    problem = load_problem(REPO / "problems" / "poisson-lshape.yaml")
    X = problem.sample_interior(4000, torch.Generator().manual_seed(3), torch.float64)
    assert not ((X[:, 0] > 0) & (X[:, 1] < 0)).any()
    assert ((X[:, 0] < 0) & (X[:, 1] < 0)).double().mean().item() == pytest.approx(1 / 3, abs=0.03)
    # the exact solution vanishes on the two edges at the re-entrant corner
    edges = torch.tensor([[0.5, 0.0], [0.0, -0.5], [0.9, 0.0], [0.0, -0.9]], dtype=torch.float64)
    assert problem.exact_solution(edges).abs().max().item() < 1e-15
    r, theta = 0.5, 3 * math.pi / 4  # u = r^(2/3) sin(2 theta / 3)
    point = torch.tensor([[r * math.cos(theta), r * math.sin(theta)]], dtype=torch.float64)
    assert problem.exact_solution(point).item() == pytest.approx(r ** (2 / 3) * math.sin(math.pi / 2), rel=1e-12)
