"""Quadrature: node counts, polynomial exactness (and its limit), symmetry, cache, CLI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import gaussian_moment, run_cli
from pinnzo.quadrature import build_rule, cache, get_rule, rule_path
from pinnzo.quadrature.rules1d import gauss_hermite, genz_keister

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dim", range(2, 26))
def test_level3_gauss_hermite_has_2d2_2d_1_nodes(dim):
    assert build_rule("gauss-hermite", dim, 3).size == 2 * dim**2 + 2 * dim + 1


def test_paper_rule_d21_has_925_nodes_and_designs_weights():
    rule = build_rule("gauss-hermite", 21, 3)
    assert rule.size == 925
    assert rule.weights.max() == pytest.approx(204.0, abs=1e-9)
    assert rule.weights.min() == pytest.approx(-10.0, abs=1e-12)
    assert rule.abs_weight_sum == pytest.approx(2 * 21**2 - 2 * 21 + 1, rel=1e-12)


@pytest.mark.parametrize("level", range(1, 8))
def test_dim1_is_the_plain_gauss_hermite_rule(level):
    rule = build_rule("gauss-hermite", 1, level)
    # the 1-D sparse grid *is* the level-point rule (2D^2+2D+1 = 5 counts
    # the +-1 nodes of V_2, whose coefficient C(0, 1) is 0 when D = 1)
    plain = np.polynomial.hermite_e.hermegauss(level)
    order = np.argsort(rule.nodes[:, 0])
    np.testing.assert_allclose(rule.nodes[order, 0], plain[0], atol=1e-13)
    np.testing.assert_allclose(rule.weights[order], plain[1] / plain[1].sum(), rtol=1e-12)


def _worst_error(rule, total_degree: int) -> float:
    """Largest relative error over all monomials of exactly ``total_degree``."""
    powers = [rule.nodes**a for a in range(total_degree + 1)]
    worst = 0.0
    for combo in itertools.combinations_with_replacement(range(rule.dim), total_degree):
        exponents = np.bincount(combo, minlength=rule.dim)
        active = np.flatnonzero(exponents)
        values = np.prod([powers[exponents[i]][:, i] for i in active], axis=0) if len(active) else 1.0
        exact = gaussian_moment(exponents)
        worst = max(worst, abs(np.dot(rule.weights, values * np.ones(rule.size)) - exact) / max(1.0, exact))
    return worst


EXACTNESS_CASES = [
    ("gauss-hermite", 2, 2), ("gauss-hermite", 2, 4), ("gauss-hermite", 3, 3), ("gauss-hermite", 4, 4),
    ("gauss-hermite", 5, 3), ("gauss-hermite", 3, 5), ("gauss-hermite", 21, 3),
    ("genz-keister", 2, 3), ("genz-keister", 3, 3), ("genz-keister", 3, 4), ("genz-keister", 21, 3),
    ("lu-darmofal", 2, 3), ("lu-darmofal", 3, 3), ("lu-darmofal", 6, 3), ("lu-darmofal", 21, 3),
]


@pytest.mark.parametrize("family, dim, level", EXACTNESS_CASES)
def test_rule_is_exact_to_its_degree_and_no_further(family, dim, level):
    rule = build_rule(family, dim, level)
    if family == "gauss-hermite":
        assert rule.degree == 2 * level - 1
    for degree in range(rule.degree + 1):
        assert _worst_error(rule, degree) < 1e-12, f"degree {degree} not exact"
    assert _worst_error(rule, rule.degree + 1) > 1e-6, "degree is understated"


@pytest.mark.parametrize("family, dim, level", [("genz-keister", 21, 3), ("lu-darmofal", 21, 3)])
def test_degree5_alternatives_have_fewer_nodes_and_less_amplification(family, dim, level):
    paper = build_rule("gauss-hermite", dim, level)
    rule = build_rule(family, dim, level)
    assert rule.degree == paper.degree == 5
    assert rule.size < paper.size
    assert rule.abs_weight_sum < paper.abs_weight_sum / 10
    expected = {"genz-keister": 2 * dim**2 + 1, "lu-darmofal": dim**2 + 3 * dim + 3}[family]
    assert rule.size == expected


def test_genz_keister_1d_rules_are_nested_with_stated_degrees():
    sizes = [len(genz_keister(i).nodes) for i in range(5)]
    assert sizes == [1, 3, 9, 19, 35]
    assert [genz_keister(i).degree for i in range(5)] == [1, 5, 15, 29, 51]
    for small, large in zip(range(4), range(1, 5)):
        for x in genz_keister(small).nodes:
            assert np.min(np.abs(genz_keister(large).nodes - x)) < 1e-13
    rule = genz_keister(3)
    for k in range(0, 31, 2):  # odd powers vanish by symmetry; 30 is the first one missed
        exact = gaussian_moment([k])
        error = abs(np.dot(rule.weights, rule.nodes**k) - exact) / max(1.0, exact)
        assert (error < 1e-10) if k <= 29 else (error > 1e-6)


@pytest.mark.parametrize("family, dim, level", [("gauss-hermite", 7, 4), ("genz-keister", 5, 4),
                                                ("lu-darmofal", 9, 3), ("gauss-hermite", 1, 2)])
def test_symmetry_mirror_and_center(family, dim, level):
    rule = build_rule(family, dim, level)
    np.testing.assert_array_equal(rule.nodes[rule.mirror], -rule.nodes)
    np.testing.assert_array_equal(rule.weights[rule.mirror], rule.weights)
    assert rule.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert len({row.tobytes() for row in rule.nodes}) == rule.size, "duplicate nodes"
    if rule.center is None:
        assert np.all(np.abs(rule.nodes).sum(axis=1) > 0)
    else:
        assert not rule.nodes[rule.center].any()
        assert int((~rule.nodes.any(axis=1)).sum()) == 1, "more than one origin"


def test_scaled_rule_integrates_the_scaled_gaussian():
    rule = build_rule("gauss-hermite", 4, 3)
    sigma = 0.1
    x = rule.scaled(sigma)
    np.testing.assert_allclose(rule.weights @ x**2, sigma**2, rtol=1e-12)
    np.testing.assert_allclose(rule.weights @ x[:, 0] ** 4, 3 * sigma**4, rtol=1e-12)


def test_rules_are_immutable():
    rule = build_rule("gauss-hermite", 3, 3)
    with pytest.raises(ValueError):
        rule.nodes[0, 0] = 1.0
    with pytest.raises(AttributeError):
        rule.level = 4


def test_gauss_hermite_1d_weights_sum_to_one():
    for points in range(1, 12):
        assert gauss_hermite(points).weights.sum() == pytest.approx(1.0, abs=1e-14)


# ---- cache ---------------------------------------------------------------

def test_cache_round_trip_is_bit_identical(tmp_path):
    for family, dim, level in [("gauss-hermite", 21, 3), ("genz-keister", 4, 4), ("lu-darmofal", 21, 3)]:
        rule = build_rule(family, dim, level)
        path = tmp_path / f"{family}.rule"
        cache.save(rule, path)
        loaded = cache.load(path)
        assert loaded.nodes.tobytes() == rule.nodes.tobytes()
        assert loaded.weights.tobytes() == rule.weights.tobytes()
        np.testing.assert_array_equal(loaded.mirror, rule.mirror)
        assert (loaded.center, loaded.degree, loaded.family) == (rule.center, rule.degree, rule.family)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupted_cache_file_is_rebuilt(tmp_path, damage):
    path = rule_path("gauss-hermite", 6, 3, tmp_path)
    good = get_rule("gauss-hermite", 6, 3, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-20] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "garbage":
        data = bytearray(b"PINNZO-RULE\n{not json\n" + bytes(50))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    assert cache.load(path) is None
    rebuilt = get_rule("gauss-hermite", 6, 3, tmp_path / "other-name")  # fresh lookup
    np.testing.assert_array_equal(rebuilt.weights, good.weights)
    from pinnzo.quadrature import _cached_rule
    _cached_rule.cache_clear()
    again = get_rule("gauss-hermite", 6, 3, tmp_path)
    np.testing.assert_array_equal(again.nodes, good.nodes)
    assert cache.load(path) is not None, "the damaged file was not rewritten"


def test_two_processes_building_the_same_rule_leave_one_valid_file(tmp_path):
    code = "from pinnzo.quadrature import get_rule; print(get_rule('gauss-hermite', 60, 3).size)"
    env = {**os.environ, "PINNZO_QUADRATURE_DIR": str(tmp_path)}
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert outputs == [str(2 * 60**2 + 2 * 60 + 1)] * 3
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["gauss-hermite-d60-l3.rule"], files  # no temporary files left behind
    assert cache.load(tmp_path / files[0]).size == 7321


def test_shipped_rules_load_from_the_repository_without_a_build():
    shipped = sorted((REPO / "quadrature").glob("*.rule"))
    assert any(p.name == "gauss-hermite-d21-l3.rule" for p in shipped)
    for path in shipped:
        loaded = cache.load(path)
        assert loaded is not None, path
        fresh = build_rule(loaded.family, loaded.dim, loaded.level)
        # the same rule to the last bits that numpy's releases may change (with numpy 2.4.6 lu-darmofal's
        # nodes moved by 1.3e-15 from the shipped file's); a wrong node or weight is far above this
        np.testing.assert_allclose(loaded.nodes, fresh.nodes, rtol=0, atol=1e-14, err_msg=str(path))
        np.testing.assert_allclose(loaded.weights, fresh.weights, rtol=1e-14, atol=0, err_msg=str(path))
        assert loaded.nodes.shape == fresh.nodes.shape and loaded.degree == fresh.degree


# ---- CLI -----------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--dim", "0", "--level", "3"], "dim must be an integer >= 1"),
    (["--dim", "3", "--level", "0"], "level must be an integer in 1..20"),
    (["--dim", "3", "--level", "-1"], "level must be an integer in 1..20"),
    (["--dim", "3", "--level", "3", "--family", "simpson"], "must be one of gauss-hermite, genz-keister, lu-darmofal"),
    (["--dim", "100", "--level", "6"], "GiB to build"),
    (["--dim", "3", "--level", "2", "--family", "lu-darmofal"], "only level(s) 3"),
    (["--dim", "three", "--level", "3"], "--dim"),
])
def test_bad_quadrature_input_gives_one_line_and_exit_2(args, needle):
    result = run_cli(["quadrature", "build", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pinnzo: error: "), result.output
    assert needle in lines[0]
    assert "Traceback" not in result.output


def test_cli_build_writes_npz_and_list_shows_it(tmp_path):
    out = tmp_path / "rule.npz"
    result = run_cli(["quadrature", "build", "--dim", "21", "--level", "3", "--out", str(out),
                      "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "925" in result.output and "841" in result.output
    with np.load(out) as data:
        assert data["nodes"].shape == (925, 21) and data["weights"].shape == (925,)
        np.testing.assert_array_equal(data["weights"], build_rule("gauss-hermite", 21, 3).weights)
    listing = run_cli(["quadrature", "list", "--cache-dir", str(tmp_path / "c")])
    assert "gauss-hermite-d21-l3.rule" in listing.output and "925" in listing.output
