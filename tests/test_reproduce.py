"""pinnzo reproduce: the table runner on tiny grids (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run_cli, tiny_mnist
from pinnzo.errors import PinnzoError
from pinnzo.nets import build_mlp
from pinnzo.reproduce import SCALES, TABLES, Context, Scale, cell_settings, dense_width, reproduce, run_cell
from pinnzo.settings import Settings
from pinnzo.loop import Diverged

REPO = Path(__file__).resolve().parents[1]

TINY = Scale(
    name="tiny", description="test", width=8, ranks=(2, 1),
    pinn={"depth": 2, "activation": "sin", "batch": 4, "steps": 2, "eval_every": 1, "eval_points": 16,
          "rule": "gauss-hermite", "level": 3, "sigma": 0.1, "samples": 8, "dtype": "float32", "seed": 0,
          "condition_batch": 4},
    fo={"optimizer": "adam", "lr": 1e-3}, zo={"optimizer": "zo-signrge", "lr": 1e-3, "directions": 2},
    mnist_ranks=(3, 2, 1), mnist={"epochs": 1, "steps_per_epoch": 2, "batch": 8, "validation": 20},
    mnist_fo={"optimizer": "sgd", "lr": 0.01}, mnist_zo={"lr": 1e-3, "directions": 2},
    mnist_hybrid={"switch_step": 1, "coordinates": 3},
)


# The paper's tables as printed (section 5), typed from the paper itself, row by row in the
# paper's own layout: parameter count, then the figures column by column ("-": an empty field,
# "no convergence"). The tables in pinnzo/reproduce.py must quote exactly these.
PAPER = {
    "1": [(814090, 97.43, "-", "-"), (7940, 93.69, 61.51, 86.47), (3962, 97.16, 88.48, 96.64),
          (4089, 86.36, 83.39, 92.24)],
    "2": [(814090, 97.43, "-", "-", "-"), (8314, 97.33, 85.14, 87.87, 96.77), (3962, 97.16, 87.72, 88.48, 96.64),
          (2698, 96.47, 89.67, 89.01, 95.83)],
    "4": [(608257, 3.58e-4, 5.97e-5, 8.98e-4, 4.27e-4), (7745, 4.28e-5, 4.90e-5, 2.28e-4, 7.14e-5),
          (3209, 1.63e-5, 4.56e-5, 3.82e-4, 4.49e-5)],
    "5": [(608257, 3.58e-4, 9.23e-2, "diverge", 1.62e-1), (7745, 4.28e-5, 3.79e-4, 4.35e-4, 4.79e-5),
          (3209, 1.63e-5, 3.82e-4, 2.75e-4, 1.44e-5)],
    "6": [(608257, 3.58e-4, 1.62e-1), (7800, 1.52e-2, 4.35e-2), (7700, 6.55e-4, 1.00e-2), (7745, 4.25e-5, 4.79e-5),
          (7603, 1.54e-9, 6.29e-5)],
}


@pytest.mark.parametrize("number", sorted(PAPER))
def test_every_published_figure_is_the_papers(number):
    from pinnzo.reproduce import NO_CONVERGENCE

    table = TABLES[number](SCALES["cpu"])
    quoted = [(row.paper_params, *[NO_CONVERGENCE if f == "-" else f for f in paper])
              for row, (_, *paper) in zip(table.rows, PAPER[number])]
    assert [(row.paper_params, *row.paper) for row in table.rows] == quoted
    assert [row.paper_params for row in table.rows] == [paper[0] for paper in PAPER[number]]


def markdown_rows(path: Path) -> list[list[str]]:
    """The table's rows (header first) as lists of cell texts."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def context(tmp_path, lines, **changes) -> Context:
    return Context(TINY, tmp_path / "out", REPO / "problems" / "hjb20.yaml", quiet=True, echo=lines.append,
                   **changes)


def test_table5_runs_every_cell_then_skips_them_and_quotes_the_paper(tmp_path):
    lines: list[str] = []
    written = reproduce("5", context(tmp_path, lines))
    assert len(lines) == 3 * 6 and all(": finished in" in line for line in lines)
    markdown = tmp_path / "out" / "table-5.md"
    assert markdown in written and (tmp_path / "out" / "table-5" / "compare.md") in written
    header, *rows = markdown_rows(markdown)
    assert header == ["Network", "Params (pinnzo / paper)", "FO+AD", "ZO+FD", "ZO+SE", "ZO+SG",
                      "ZO+SG, Lu-Darmofal rule *", "ZO+SG, float64 *"]
    assert [row[0] for row in rows] == ["MLP", "TT-MLP", "TT-MLP"]
    # the published figures, as the paper prints them (PAPER above), then "—" for pinnzo's own columns
    published = [[f"{f:.2e}" if isinstance(f, float) else f for f in paper[1:]] + ["—", "—"] for paper in PAPER["5"]]
    assert [[cell.split(" / ")[1] for cell in row[2:]] for row in rows] == published
    assert [row[1].split(" / ")[1] for row in rows] == ["608,257", "7,745", "3,209"]
    # pinnzo's figures are the runs' final validation MSE and parameter counts
    record = json.loads((tmp_path / "out" / "table-5.json").read_text())
    for cell in record["cells"]:
        summary = json.loads((Path(cell["run"]) / "summary.json").read_text())
        assert cell["pinnzo"] == summary["final_mse"] and cell["parameters"] == summary["parameters"]
    mlp = json.loads((tmp_path / "out" / "hjb20" / "mlp--zo-sg-f64" / "summary.json").read_text())
    assert mlp["parameters"] == 21 * 8 + 8 + 8 * 8 + 8 + 8 + 1 and mlp["dtype"] == "float64"
    assert rows[0][1] == f"{mlp['parameters']:,} / 608,257"

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "hjb20").glob("*/summary.json")}
    lines.clear()
    reproduce("5", context(tmp_path, lines))
    assert len(lines) == 18 and all(": skipped, " in line for line in lines)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "hjb20").glob("*/summary.json")}
    # Table 4 shares its FO+AD column with Table 5: those three cells are not run again
    lines.clear()
    reproduce("4", context(tmp_path, lines))
    assert sum(": skipped, " in line for line in lines) == 3 and sum(": finished in" in line for line in lines) == 12


def test_mnist_table1_runs_the_grid_and_marks_what_pinnzo_cannot_build(tmp_path):
    data = tiny_mnist(tmp_path / "mnist", n_train=80, n_test=20)
    lines: list[str] = []
    reproduce("1", context(tmp_path, lines, data_dir=data))
    assert len(lines) == 3 * 3
    header, *rows = markdown_rows(tmp_path / "out" / "table-1.md")
    assert header[2:] == ["FO", "ZO-signRGE", "Hybrid ZO"]
    assert [[c.split(" / ")[1] for c in row[2:]] for row in rows] == [
        [f"{f:.2f}" if isinstance(f, float) else "no conv." for f in paper[1:]] for paper in PAPER["1"]]
    assert rows[2][1] == "3,962 / 3,962"  # the paper's TT-MLP, r = 6
    assert rows[3][0] == "SP-MLP (pruned) †" and rows[3][1] == "— / 4,089"
    assert [cell.split(" / ")[0] for cell in rows[3][2:]] == ["—", "—", "—"]
    assert "† not reproduced: pinnzo has no pruned (GraSP) networks." in (tmp_path / "out" / "table-1.md").read_text()
    record = json.loads((tmp_path / "out" / "table-1.json").read_text())
    hybrid = next(c for c in record["cells"] if c["row"].startswith("TT") and c["column"] == "Hybrid ZO")
    summary = json.loads((Path(hybrid["run"]) / "summary.json").read_text())
    assert hybrid["pinnzo"] == pytest.approx(100 * summary["test_accuracy"])
    assert any("switched from signRGE to CGE" in e["event"] for e in summary["events"])
    assert (tmp_path / "out" / "table-1" / "compare-accuracy.png").is_file()


def test_table2_rows_follow_the_scale_ranks():
    table = TABLES["2"](SCALES["cpu"])
    assert [row.key for row in table.rows] == ["mlp-w1024", "tt-r10", "tt-r6", "tt-r4"]
    assert [c.label for c in table.columns] == ["FO", "ZO-RGE", "ZO-signRGE", "Hybrid ZO"]


def _settings(**changes) -> Settings:
    return Settings().replace(changes)


def test_a_cell_that_diverged_is_recorded_and_not_run_again(tmp_path):
    folder = tmp_path / "cell"
    settings = _settings(steps=3)

    def diverge(resume):
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump({"settings": settings.as_dict()}))
        raise Diverged("the loss became nan at step 2")

    assert run_cell(settings, folder, diverge).status == "diverged"

    def must_not_run(resume):
        raise AssertionError("a recorded cell was run again")

    again = run_cell(settings, folder, must_not_run)
    assert again.status == "diverged" and "nan" in again.summary["message"]
    with pytest.raises(PinnzoError, match="holds a run with other settings .*steps: saved 3, now 4"):
        run_cell(_settings(steps=4), folder, must_not_run)


def test_a_cell_killed_before_its_first_checkpoint_starts_over_and_a_stray_folder_is_refused(tmp_path):
    folder = tmp_path / "cell"
    folder.mkdir()
    (folder / "config.yaml").write_text("settings: {}\n")
    calls = []
    result = run_cell(_settings(), folder, lambda resume: calls.append(resume) or {"parameters": 1})
    assert calls == [False] and result.status == "finished" and not (folder / "config.yaml").exists()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(PinnzoError, match="not empty and holds no checkpoint"):
        run_cell(_settings(), folder, lambda resume: {})
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "checkpoint.pt").write_bytes(b"")
    calls.clear()
    run_cell(_settings(), folder, lambda resume: calls.append(resume) or {})
    assert calls == [True]


def test_dense_width_matches_the_parameter_count():
    for depth, width in ((2, 78), (1, 320), (2, 7)):
        sizes = [21] + [width] * depth + [1]
        count = sum(p.numel() for p in build_mlp(sizes, "mlp").parameters())
        assert dense_width(count, depth) == width


def test_reproduce_cli_refuses_unknown_tables_and_scales(tmp_path):
    result = run_cli(["reproduce", "3", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown table '3'; must be one of 1, 2, 4, 5, 6" in result.output
    result = run_cli(["reproduce", "4", "--scale", "huge", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "must be one of cpu, paper" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_cell_of_every_table_has_valid_settings_at_both_scales(scale):
    """The paper scale only runs on a GPU: at least its settings are checked here."""
    context = Context(SCALES[scale], Path("unused"), REPO / "problems" / "hjb20.yaml")
    for number in TABLES.names():
        table = TABLES[number](context.scale)
        for row in table.rows:
            for column in table.columns:
                if row.changes is None:
                    continue
                settings = cell_settings(table, row, column, context)
                assert settings.network == row.changes["network"] and settings.optimizer == (
                    column.changes.get("optimizer") or settings.optimizer)
                if table.task == "hjb20":
                    assert settings.backend == column.changes["backend"] and settings.rule in (
                        "gauss-hermite", "lu-darmofal")
    paper = TABLES["5"](SCALES["paper"])
    settings = cell_settings(paper, paper.rows[1], paper.columns[3], Context(SCALES["paper"], Path("unused"),
                                                                             REPO / "problems" / "hjb20.yaml"))
    assert (settings.width, settings.rank, settings.steps, settings.rule, settings.mu) == (
        768, 8, 10000, "gauss-hermite", 0.1)


def test_paper_scale_networks_have_the_sizes_the_readme_quotes():
    from pinnzo.pinn import build
    from pinnzo.problem import load_problem

    context = Context(SCALES["paper"], Path("unused"), REPO / "problems" / "hjb20.yaml")
    table = TABLES["4"](context.scale)
    sizes = [build(load_problem(context.problem_path), cell_settings(table, row, table.columns[0], context))
             .objective.dim for row in table.rows]
    assert sizes == [608257, 8161, 3391]  # the paper's MLP exactly; its TT-MLPs have 7,745 and 3,209
