"""The Python API, as the README shows it: its example runs as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import pinnzo

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The README's Python API code block."""
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "problems").mkdir()
    shutil.copy(REPO / "problems" / "hjb20.yaml", tmp_path / "problems")
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    hjb = float(re.search(r"relative L2 (\S+) after", printed).group(1))
    line = float(re.search(r"poisson1d: relative L2 (\S+)", printed).group(1))
    assert hjb < 0.2 and line < 0.05, printed
    assert (tmp_path / "results" / "api-example" / "summary.json").is_file()


def test_a_problem_mapping_gets_the_file_validation():
    with pytest.raises(pinnzo.PinnzoError, match=r"<mapping>: equation: missing required key"):
        pinnzo.load_problem({"name": "x", "variables": {"space": {"name": "x", "dim": 1, "domain": [0, 1]}}})
    with pytest.raises(pinnzo.PinnzoError, match=r"<mapping>: name: missing required key"):
        pinnzo.load_problem({"variables": {"space": {"name": "x", "dim": 1, "domain": [0, 1]}}, "equation": "u"})
    with pytest.raises(pinnzo.PinnzoError, match=r"<mapping>: solve.colour: unknown key"):
        pinnzo.load_problem({"name": "x", "variables": {"space": {"name": "x", "dim": 1, "domain": [0, 1]}},
                             "equation": "u", "solve": {"colour": 1}})


def test_solve_returns_the_run_that_load_run_reads_back(tmp_path):
    problem = pinnzo.load_problem(REPO / "problems" / "poisson2d.yaml")
    run = pinnzo.solve(problem, steps=5, eval_every=5, eval_points=100, out=tmp_path / "r")
    again = pinnzo.load_run(tmp_path / "r")
    assert again.summary == run.summary and again.metrics == run.metrics
    X = problem.sample_interior(7, __import__("torch").Generator().manual_seed(1))
    assert (again.predict(X) == run.predict(X)).all()
    # the run folder keeps a copy of the problem, so it stays readable after the original moves
    assert (tmp_path / "r" / "problem.yaml").read_text() == (REPO / "problems" / "poisson2d.yaml").read_text()
