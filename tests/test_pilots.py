"""activation auto: pilot runs choose the activation, and the winner's run goes on (pinnzo/pilots.py)."""

from __future__ import annotations

import pytest
import torch
import yaml

from helpers import LINE, run_cli
from pinnzo import pilots
from pinnzo.errors import PinnzoError
from pinnzo.loop import Interrupted
from pinnzo.pinn import load_run, solve

# 20 steps with pilots of 5 (a quarter each): the winner's pilot is the first quarter of its run
AUTO = dict(optimizer="zo-gn", backend="fd", activation="auto", pilot_share=0.25, steps=20)


def _model(folder):
    return torch.load(folder / "model.pt", weights_only=True)


def _same_models(a, b) -> bool:
    a, b = _model(a), _model(b)
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_the_pilots_choose_the_activation_with_the_lower_loss_on_fresh_points_and_its_run_goes_on(tmp_path):
    run = solve(LINE, out=tmp_path / "auto", **AUTO)
    record = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["pilots"]
    losses = record["held_out_loss"]
    chosen, other = sorted(losses, key=losses.get)
    assert record["chosen"] == chosen and losses[chosen] < losses[other]
    assert run.summary["activation"] == chosen and run.summary["pilots"] == record and run.summary["steps"] == 20
    # the asked settings stay in config.yaml; the run folder rebuilds the chosen network
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["settings"]["activation"] == "auto"
    assert load_run(tmp_path / "auto").settings.activation == chosen
    # the losing pilot stays, finished after its 5 steps; its recorded score is its final parameters' loss
    loser = tmp_path / "auto" / "pilots" / other
    assert sorted(path.name for path in (tmp_path / "auto" / "pilots").iterdir()) == [other]
    assert load_run(loser).summary["steps"] == 5
    assert pilots.held_out_loss(load_run(loser)) == losses[other]
    assert record["queries"][other] == load_run(loser).summary["total_queries"]
    # the winner's run is exactly a plain run of its activation: the pilot was its first 5 steps
    plain = solve(LINE, out=tmp_path / "plain", **{**AUTO, "activation": chosen, "pilot_share": 0.1})
    assert _same_models(tmp_path / "auto", tmp_path / "plain")
    drop = lambda rows: [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]
    assert drop(run.metrics) == drop(plain.metrics)


def test_an_activation_auto_run_resumes_from_its_pilots_and_from_its_continued_run(tmp_path):
    solve(LINE, out=tmp_path / "straight", **AUTO)
    chosen = yaml.safe_load((tmp_path / "straight" / "config.yaml").read_text())["pilots"]["chosen"]
    # a pilot interrupted half-way (its folder as a killed auto run leaves it): --resume finishes it
    broken = tmp_path / "broken"

    def interrupt_at(at):
        def callback(step, state):
            if step == at:
                raise KeyboardInterrupt
        return callback
    first = pilots.CANDIDATES[0]
    with pytest.raises(Interrupted):
        solve(LINE, out=broken / "pilots" / first, callbacks=[interrupt_at(2)],
              **{**AUTO, "activation": first, "steps": 5, "forward_finish": 0.0})  # a pilot's settings
    # then the continued run interrupted in turn
    with pytest.raises(Interrupted):
        solve(LINE, out=broken, resume=True, callbacks=[interrupt_at(12)], **AUTO)
    assert yaml.safe_load((broken / "config.yaml").read_text())["pilots"]["chosen"] == chosen
    solve(LINE, out=broken, resume=True, **AUTO)
    assert _same_models(tmp_path / "straight", broken)


def test_a_budgeted_auto_run_gives_each_pilot_its_share_and_the_winner_the_rest(tmp_path):
    run = solve(LINE, out=tmp_path / "run", **{**AUTO, "steps": 100_000, "time_budget": 2.0})
    record = run.summary["pilots"]
    other = next(name for name in pilots.CANDIDATES if name != record["chosen"])
    pilot = load_run(tmp_path / "run" / "pilots" / other).summary
    assert pilot["stopped_by"] == "time budget" and 0.5 <= pilot["wall_time_s"] < 2.0
    assert record["time_budget"] == pytest.approx(2.0 - record["seconds"][other], abs=1e-12)
    assert run.summary["stopped_by"] == "time budget" and run.summary["steps"] < 100_000


def test_auto_is_refused_where_it_does_not_apply(tmp_path):
    line = tmp_path / "line.yaml"
    line.write_text(yaml.safe_dump(LINE))
    result = run_cli(["solve", str(line), "--set", "pilot_share=0.2", "--steps", "2", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "applies to activation auto only" in result.output
    result = run_cli(["solve", str(line), "--set", "activation=auto", "--set", "pilot_share=0.5",
                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "expected a number in (0, 0.5)" in result.output
    solve(LINE, out=tmp_path / "plain", optimizer="zo-gn", steps=2)
    with pytest.raises(PinnzoError, match="not a run started with activation auto"):
        solve(LINE, out=tmp_path / "plain", resume=True, **AUTO)
    with pytest.raises(PinnzoError, match="exists and is not empty"):
        solve(LINE, out=tmp_path / "plain", **AUTO)
    from pinnzo.mnist import build_classifier
    from pinnzo.settings import MnistSettings
    with pytest.raises(PinnzoError, match="activation auto .* is for pinnzo solve"):
        build_classifier(MnistSettings().replace({"activation": "auto"}))


def test_solve_reports_the_chosen_activation_and_counts_the_losing_pilot(tmp_path):
    line = tmp_path / "line.yaml"
    line.write_text(yaml.safe_dump(LINE))
    result = run_cli(["solve", str(line), "--optimizer", "zo-gn", "--steps", "20", "--set", "activation=auto",
                      "--set", "pilot_share=0.25", "--no-plots", "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = load_run(tmp_path / "run").summary
    record = summary["pilots"]
    other = next(name for name in pilots.CANDIDATES if name != record["chosen"])
    queries = summary["total_queries"] + record["queries"][other]
    assert f"{queries:,} loss queries" in result.output
    assert f"activation {record['chosen']}, chosen by pilots" in result.output


def test_a_diverged_pilot_loses_and_is_not_trained_again_on_resume(tmp_path, monkeypatch):
    import pinnzo.pinn
    from pinnzo.loop import Diverged

    solve_for_real, calls = pinnzo.pinn.solve, []

    def sin_diverges(problem, settings=None, **kwargs):
        calls.append(settings.activation if settings is not None else kwargs.get("activation"))
        if settings is not None and settings.activation == "sin":
            raise Diverged("the loss became NaN at step 3")
        return solve_for_real(problem, settings, **kwargs)

    monkeypatch.setattr(pinnzo.pinn, "solve", sin_diverges)
    run = solve_for_real(LINE, out=tmp_path / "run", **AUTO)
    record = run.summary["pilots"]
    # a diverged pilot has no held-out loss: null in summary.json (strict JSON), None here
    assert record["chosen"] == "tanh" and record["held_out_loss"]["sin"] is None
    assert (tmp_path / "run" / "pilots" / "sin" / "diverged.json").is_file()
    assert pilots.overhead(record)[1] == 0  # a diverged pilot's queries are not known, not counted
    calls.clear()
    solve_for_real(LINE, out=tmp_path / "run", resume=True, **AUTO)  # the choice stands, no pilot trains
    assert calls == []
