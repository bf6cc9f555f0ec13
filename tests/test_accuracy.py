"""pinnzo bench accuracy: every problem x method for a wall-time budget, resumable, JSON + Markdown."""

import csv
import json
from pathlib import Path

import pytest

from helpers import run_cli
from pinnzo import runs
from pinnzo.accuracy import METHODS, cell_settings, run_accuracy, shipped_problems, time_to
from pinnzo.errors import PinnzoError
from pinnzo.loop import Interrupted
from pinnzo.problem import load_problem

REPO = Path(__file__).resolve().parents[1]
POISSON = REPO / "problems" / "poisson2d.yaml"
BUDGET = 1.5


def metrics_rows(folder: Path) -> list[dict]:
    """metrics.csv's step, wall_s and val_rel_l2 columns, as numbers."""
    rows = csv.DictReader((folder / "metrics.csv").read_text().splitlines())
    return [{key: float(row[key]) for key in ("step", "wall_s", "val_rel_l2")} for row in rows]


def markdown_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def first_time_below(rows: list[dict], threshold: float):
    """Independent of pinnzo.accuracy: the first wall_s whose validation error is at most threshold."""
    for row in rows:
        if row["val_rel_l2"] <= threshold:
            return row["wall_s"]
    return None


def test_time_to_is_the_first_evaluation_at_or_below_the_threshold():
    rows = [{"wall_s": 1.0, "val_rel_l2": 0.5}, {"wall_s": 2.0, "val_rel_l2": 0.01},
            {"wall_s": 3.0, "val_rel_l2": 0.02}, {"wall_s": 4.0, "val_rel_l2": 1e-4}]
    assert time_to(rows, 1e-2) == 2.0  # at the threshold counts; a later rise does not move it
    assert time_to(rows, 1e-3) == 4.0
    assert time_to(rows, 1e-5) is None


def test_every_cell_trains_for_its_budget_is_recorded_then_skipped(tmp_path):
    out, lines = tmp_path / "accuracy", []
    written = run_accuracy([POISSON], ["adam", "zo-gn"], BUDGET, out, lines.append)
    assert written == [out / "accuracy.json", out / "accuracy.md"]
    assert [line.split(":")[0] for line in lines] == ["poisson2d / adam", "poisson2d / zo-gn"]
    assert all(": finished in " in line for line in lines)
    report = json.loads((out / "accuracy.json").read_text())
    assert report["budget_s"] == BUDGET and set(report["machine"]) >= {"cpu_count", "torch"}
    assert report["methods"]["zo-gn"]["back_propagation"] is False
    assert report["methods"]["adam"]["back_propagation"] is True
    for cell in report["cells"]:
        folder = Path(cell["run"])
        assert folder == out / "poisson2d" / cell["method"]
        summary = json.loads((folder / "summary.json").read_text())
        config = runs.read_config(folder)
        # the cell ran the method's recipe, on the problem's file, for the budget
        for key, value in METHODS[cell["method"]].changes.items():
            assert config["settings"][key] == value, key
        assert config["settings"]["time_budget"] == BUDGET
        assert summary["stopped_by"] in ("time budget", "converged")
        if summary["stopped_by"] == "time budget":
            assert summary["wall_time_s"] >= BUDGET
        for key in ("final_rel_l2", "best_rel_l2", "steps", "parameters"):
            assert cell[key] == summary[key]
        assert cell["queries"] == summary["total_queries"]
        rows = metrics_rows(folder)
        assert rows[-1]["step"] == summary["steps"]  # the last step is evaluated, whatever stopped it
        for threshold in (1e-2, 1e-3):
            assert cell[f"seconds_to_{threshold:g}"] == first_time_below(rows, threshold)
    header, *table = markdown_rows(out / "accuracy.md")
    assert header == ["problem", "adam", "zo-gn"]
    assert table[0][0] == "poisson2d"
    for text, cell in zip(table[0][1:], report["cells"]):
        assert text.startswith(f"{cell['final_rel_l2']:.1e} (")

    # a second run skips every finished cell and leaves its files alone
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("*/*/*")}
    lines.clear()
    run_accuracy([POISSON], ["adam", "zo-gn"], BUDGET, out, lines.append)
    assert all(": skipped, " in line for line in lines) and len(lines) == 2
    assert stamps == {path: path.stat().st_mtime_ns for path in out.glob("*/*/*")}
    without_status = lambda cells: [{k: v for k, v in cell.items() if k != "status"} for cell in cells]
    again = json.loads((out / "accuracy.json").read_text())["cells"]
    assert [cell["status"] for cell in again] == ["skipped", "skipped"]
    assert without_status(again) == without_status(report["cells"])

    # --report-only runs nothing: the finished cells as they are, the others "not run"
    lines.clear()
    run_accuracy([POISSON], ["zo-gn", "gn"], BUDGET, out, lines.append, report_only=True)
    assert lines == [lines[0], "poisson2d / gn: not run"] and ": skipped, " in lines[0]
    assert not (out / "poisson2d" / "gn").exists()
    header, row = markdown_rows(out / "accuracy.md")
    assert header == ["problem", "zo-gn", "gn"] and row[1] == table[0][2] and row[2] == "not run"
    assert [cell["status"] for cell in json.loads((out / "accuracy.json").read_text())["cells"]] == ["skipped",
                                                                                                    "not run"]

    # another budget is another experiment: the saved cell is refused, not silently reused
    with pytest.raises(PinnzoError, match="time_budget"):
        run_accuracy([POISSON], ["adam"], 2 * BUDGET, out, lines.append)


def test_an_interrupted_cell_resumes_with_the_rest_of_its_budget(tmp_path, monkeypatch):
    import pinnzo.pinn

    out, solve = tmp_path / "accuracy", pinnzo.pinn.solve

    def interrupted(*args, **kwargs):
        def interrupt(step, state):  # after the first step: callbacks run even on the step the budget ends
            if step == 0:
                raise KeyboardInterrupt
        return solve(*args, **kwargs, callbacks=[interrupt])

    monkeypatch.setattr(pinnzo.pinn, "solve", interrupted)
    with pytest.raises(Interrupted):  # at any load: step 3 could come after the 1.5 s budget on a busy machine
        run_accuracy([POISSON], ["adam"], BUDGET, out, print)
    folder = out / "poisson2d" / "adam"
    assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").is_file()
    monkeypatch.setattr(pinnzo.pinn, "solve", solve)
    lines = []
    run_accuracy([POISSON], ["adam"], BUDGET, out, lines.append)
    assert ": finished in " in lines[0]
    summary = json.loads((folder / "summary.json").read_text())
    # at least one step beyond the interrupted one (more at any load would make this a timed test: under
    # two other jobs on 2 cores the 1.5 s budget left room for 3 steps in all)
    assert summary["steps"] > 1 and summary["stopped_by"] == "time budget"
    assert summary["wall_time_s"] >= BUDGET
    steps = [row["step"] for row in metrics_rows(folder)]
    assert steps == sorted(set(steps))  # one history, continued, not restarted


def test_a_cell_refused_by_its_run_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    """gn's Jacobian at every stencil row does not fit in 1 MB: that cell is refused with the message,
    the next one runs, and a later run tries the refused cell again (nothing of it was kept)."""
    import pinnzo.accuracy as accuracy

    monkeypatch.setitem(accuracy.METHODS._items, "gn-tight", accuracy.Method(
        "gn in 1 MB", {**METHODS["gn"].changes, "memory_mb": 1}, True))
    out, lines = tmp_path / "accuracy", []
    run_accuracy([POISSON], ["gn-tight", "adam"], BUDGET, out, lines.append)
    assert lines[0].startswith("poisson2d / gn-tight: refused: gn: the Jacobian has ")
    assert "more than memory_mb = 1" in lines[0] and ": finished in " in lines[1]
    cells = json.loads((out / "accuracy.json").read_text())["cells"]
    assert [cell["status"] for cell in cells] == ["refused", "finished"] and "memory_mb" in cells[0]["message"]
    assert markdown_rows(out / "accuracy.md")[1][1] == "refused"
    lines.clear()
    run_accuracy([POISSON], ["gn-tight", "adam"], BUDGET, out, lines.append)
    assert ": refused: " in lines[0] and ": skipped, " in lines[1]


def test_the_grid_covers_exactly_the_problems_with_an_exact_solution(tmp_path):
    names = [path.name for path in shipped_problems(REPO / "problems")]
    assert "poisson2d.yaml" in names and "hjb20.yaml" in names
    for path in sorted((REPO / "problems").glob("*.yaml")):
        assert (path.name in names) == load_problem(path).has_exact
    # every method's recipe is valid settings on every shipped problem
    for path in shipped_problems(REPO / "problems"):
        problem = load_problem(path)
        for name in METHODS.names():
            method = METHODS[name]
            settings = cell_settings(problem, method, 300.0)
            assert settings.time_budget == 300.0 and settings.optimizer == method.changes["optimizer"]


def test_bench_accuracy_refuses_bad_input_with_one_line(tmp_path):
    result = run_cli(["bench", "accuracy", "--budget", "0", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--budget" in result.output
    result = run_cli(["bench", "accuracy", "--methods", "adam,newton", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "must be one of" in result.output
    no_exact = tmp_path / "no-exact.yaml"
    no_exact.write_text(POISSON.read_text().replace("exact: sin(pi * x1) * sin(pi * x2)\n", ""))
    result = run_cli(["bench", "accuracy", "--problems", str(no_exact), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "no exact solution" in result.output
    assert not (tmp_path / "a").exists()
    assert "Traceback" not in result.output


def test_a_cell_that_diverges_is_recorded_as_diverged_not_refused(tmp_path, monkeypatch):
    """A method whose loss becomes infinite (SGD with a step of 1e38: its parameters overflow) is a result of that method: the
    log, the JSON and the table say diverged, with the message, and a later run does not train it again."""
    import pinnzo.accuracy as accuracy

    monkeypatch.setitem(accuracy.METHODS._items, "sgd-huge", accuracy.Method(
        "sgd, lr 1e38", {**METHODS["adam"].changes, "optimizer": "sgd", "lr": 1e38}, True))
    out, lines = tmp_path / "accuracy", []
    run_accuracy([POISSON], ["sgd-huge"], BUDGET, out, lines.append)
    cells = json.loads((out / "accuracy.json").read_text())["cells"]
    assert cells[0]["status"] == "diverged" and "non-finite" in cells[0]["message"]
    assert lines[0].startswith("poisson2d / sgd-huge: diverged in ") and lines[0].endswith(f" s: {cells[0]['message']}")
    assert markdown_rows(out / "accuracy.md")[1][1] == "diverged"
    lines.clear()
    run_accuracy([POISSON], ["sgd-huge"], BUDGET, out, lines.append)
    assert lines[0] == f"poisson2d / sgd-huge: diverged: {cells[0]['message']}", lines


def test_the_sin_recipes_change_only_the_activation_of_their_base():
    # the README compares zo-gn-sin with zo-gn (and gn-sin with gn) as "the network's only change"
    for name, base in (("zo-gn-sin", "zo-gn"), ("gn-sin", "gn")):
        changes, reference = dict(METHODS[name].changes), dict(METHODS[base].changes)
        assert changes.pop("activation") == "sin" and reference.pop("activation") == "tanh"
        assert changes == reference
        assert METHODS[name].back_propagation == METHODS[base].back_propagation


def test_an_auto_cell_counts_its_losing_pilot_and_resumes_from_its_pilots(tmp_path, monkeypatch):
    import pinnzo.pinn

    out, solve, budget = tmp_path / "accuracy", pinnzo.pinn.solve, 2 * BUDGET

    def interrupted(*args, **kwargs):
        def interrupt(step, state):
            if step == 0:
                raise KeyboardInterrupt
        return solve(*args, **kwargs, callbacks=[interrupt])

    monkeypatch.setattr(pinnzo.pinn, "solve", interrupted)  # the first pilot is interrupted
    with pytest.raises(Interrupted):
        run_accuracy([POISSON], ["zo-gn-auto"], budget, out, print)
    folder = out / "poisson2d" / "zo-gn-auto"
    assert (folder / "pilots" / "tanh" / "checkpoint.pt").is_file() and not (folder / "config.yaml").exists()
    monkeypatch.setattr(pinnzo.pinn, "solve", solve)
    run_accuracy([POISSON], ["zo-gn-auto"], budget, out, print)
    cell = json.loads((out / "accuracy.json").read_text())["cells"][0]
    summary = json.loads((folder / "summary.json").read_text())
    record = summary["pilots"]
    loser = next(name for name in record["candidates"] if name != record["chosen"])
    assert cell["activation"] == record["chosen"] == summary["activation"]
    assert cell["wall_time_s"] == pytest.approx(summary["wall_time_s"] + record["seconds"][loser], abs=1e-9)
    assert cell["queries"] == summary["total_queries"] + record["queries"][loser]
    reached = first_time_below(metrics_rows(folder), 1e-2)
    assert cell["seconds_to_0.01"] == (None if reached is None else pytest.approx(reached + record["seconds"][loser]))
    assert markdown_rows(out / "accuracy.md")[-1][1].endswith(f", {record['chosen']})")


def test_the_auto_recipe_changes_only_the_activation_of_zo_gn():
    changes, reference = dict(METHODS["zo-gn-auto"].changes), dict(METHODS["zo-gn"].changes)
    assert changes.pop("activation") == "auto" and reference.pop("activation") == "tanh"
    assert changes == reference
