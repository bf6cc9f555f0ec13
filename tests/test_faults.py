"""Faults: a real `pinnzo solve` process interrupted by Ctrl-C (SIGINT) or killed (SIGKILL) at a
random moment, then resumed, ends with exactly the files of an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_solve import SMALL


def _solve(problem: Path, out: Path, optimizer: str, resume: bool = False) -> subprocess.Popen:
    # zo-signrge's steps are the cheapest: 150 of them took 0.36 s, within the random wait before the signal
    steps = "600" if optimizer == "zo-signrge" else "150"
    args = [sys.executable, "-m", "pinnzo", "solve", str(problem), "--optimizer", optimizer, "--steps", steps,
            "--set", "eval_every=4", "--set", "eval_points=200", "--no-plots", "-q",
            "--resume" if resume else "--out", str(out)]
    if optimizer == "adam":
        args += ["--backend", "ad"]
    if optimizer == "hybrid":
        args += ["--set", "switch_step=30"]
    # SIGINT restored in the child: a suite started in the background (nohup make test &) would pass
    # on an ignored SIGINT, which Python then never turns into a KeyboardInterrupt
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finished(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return out


def _records(run: Path) -> tuple[dict, list[str], dict]:
    summary = json.loads((run / "summary.json").read_text())
    for key in ("wall_time_s",):
        summary.pop(key)
    metrics = [line.rsplit(",", 1)[0] for line in (run / "metrics.csv").read_text().splitlines()]  # wall_s last
    return summary, metrics, torch.load(run / "model.pt", weights_only=True)


@pytest.mark.parametrize("kind", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
@pytest.mark.parametrize("optimizer", ["zo-signrge", "adam", "hybrid"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_files(tmp_path, optimizer, kind):
    problem = tmp_path / "small.yaml"
    problem.write_text(SMALL)
    _finished(_solve(problem, tmp_path / "straight", optimizer))
    broken = tmp_path / "broken"
    process = _solve(problem, broken, optimizer)
    deadline = time.monotonic() + 120
    while not (broken / "checkpoint.pt").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(f"{optimizer}{kind}").uniform(0.0, 0.4))  # a random step
    if process.poll() is None:
        process.send_signal(kind)
    process.communicate(timeout=120)
    assert process.returncode == (130 if kind == signal.SIGINT else -signal.SIGKILL)  # stopped mid-run
    assert not (broken / "summary.json").exists()
    _finished(_solve(problem, broken, optimizer, resume=True))
    straight, resumed = _records(tmp_path / "straight"), _records(broken)
    assert straight[0] == resumed[0]
    assert straight[1] == resumed[1]
    assert straight[2].keys() == resumed[2].keys()
    assert all(torch.equal(straight[2][key], resumed[2][key]) for key in straight[2])


def test_ctrl_c_during_an_evaluation_keeps_that_steps_row(tmp_path, monkeypatch):
    """Ctrl-C after a step was committed but before its metrics row was written: the checkpoint
    still gets the row, so the resumed run has every row of an uninterrupted one."""
    from pinnzo.loop import Interrupted
    from pinnzo.pinn import PINNTask, solve

    problem = tmp_path / "small.yaml"
    problem.write_text(SMALL)
    settings = dict(optimizer="zo-signrge", steps=12, eval_every=4, eval_points=100)
    solve(problem, out=tmp_path / "straight", **settings)
    evaluate, calls = PINNTask.evaluate, []

    def interrupted_at_step_8(self, theta, step, info, state):
        calls.append(step)
        if step == 7 and calls.count(7) == 1:
            raise KeyboardInterrupt
        return evaluate(self, theta, step, info, state)

    monkeypatch.setattr(PINNTask, "evaluate", interrupted_at_step_8)
    with pytest.raises(Interrupted):
        solve(problem, out=tmp_path / "broken", **settings)
    monkeypatch.setattr(PINNTask, "evaluate", evaluate)
    solve(problem, out=tmp_path / "broken", resume=True, **settings)
    straight, resumed = _records(tmp_path / "straight"), _records(tmp_path / "broken")
    assert [line.split(",")[0] for line in resumed[1]] == ["step", "1", "4", "8", "12"]
    assert straight[1] == resumed[1] and straight[0] == resumed[0]
