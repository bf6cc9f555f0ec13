"""Scale-out on torch.distributed: the split of a step, and runs under torchrun (gloo, CPU) that must
give the numbers of one process, survive a killed worker, and refuse mismatched ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pinnzo.distributed import ROW_BLOCKS, World, _pairwise, auto_split, row_blocks
from pinnzo.problem import load_problem
from pinnzo.residual import sample_batch

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# ---------------------------------------------------------------- the split, in one process

@pytest.mark.parametrize("size", [1, 2, 4])
def test_row_blocks_of_the_ranks_cover_every_row_once_in_block_order(size):
    counts = (37, 5, 16)  # interior and two conditions: rows of each term are concatenated per rank
    covered = []
    for rank in range(size):
        world = World(rank, size)
        offsets, local = [], 0
        for count in counts:
            offsets.append(local)
            local += len(range(count)[world.shard(count)])
        starts = [world.shard(count).start for count in counts]
        for block in row_blocks(counts, world):
            for term, part in enumerate(block):
                # back to (term, row of the whole step)
                covered += [(term, row - offsets[term] + starts[term]) for row in range(part.start, part.stop)]
    expected = sorted((term, row) for term, count in enumerate(counts) for row in range(count))
    assert sorted(covered) == expected and len(covered) == len(expected)


def test_blocks_dealt_to_ranks_sum_bit_for_bit_like_one_process():
    generator = torch.Generator().manual_seed(0)
    parts = [torch.randn(7, 7, dtype=torch.float64, generator=generator) * 10 ** (i % 5) for i in range(ROW_BLOCKS)]
    alone = _pairwise([part.clone() for part in parts])  # (it adds into its parts)
    assert torch.equal(alone, _levels(parts))
    for size in (2, 4, 8):
        per_rank = [_pairwise([p.clone() for p in parts[ROW_BLOCKS * r // size:ROW_BLOCKS * (r + 1) // size]])
                    for r in range(size)]
        assert torch.equal(_pairwise(per_rank), alone)


def _levels(parts: list[torch.Tensor]) -> torch.Tensor:
    """The pairwise sum level by level, each level's leftover carried up (what _pairwise streams)."""
    while len(parts) > 1:
        parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 7, 11, 13, 16, 23, 32, 37])
def test_the_streamed_pairwise_sum_is_the_level_by_level_one_bit_for_bit(count):
    generator = torch.Generator().manual_seed(count)
    parts = [torch.randn(50, dtype=torch.float64, generator=generator) * 10.0 ** torch.randint(-8, 8, (50,),
             generator=generator) for _ in range(count)]
    reference = _levels(parts)
    streamed = _pairwise(iter([part.clone() for part in parts]))
    assert torch.equal(streamed, reference)
    if count > 3:  # the order matters: a plain left-to-right sum differs in its last bits
        assert not torch.equal(sum(parts[1:], parts[0].clone()), reference)


def test_auto_split_takes_the_queries_only_for_mnist_coordinate_optimizers():
    assert [auto_split(name, "mnist") for name in ("hybrid", "zo-cge", "zo-signrge", "adam")] == \
        ["queries", "queries", "points", "points"]
    assert {auto_split(name) for name in ("hybrid", "zo-cge", "zo-gn", "zo-signrge", "adam")} == {"points"}


def test_shards_of_a_batch_concatenate_to_the_batch():
    problem = load_problem(REPO / "problems" / "poisson2d.yaml")
    batch = sample_batch(problem, 11, 6, torch.Generator().manual_seed(1))
    shards = [batch.shard(World(rank, 3)) for rank in range(3)]
    assert torch.equal(torch.cat([s.interior for s in shards]), batch.interior)
    for c in range(len(batch.conditions)):
        assert torch.equal(torch.cat([s.conditions[c][0] for s in shards]), batch.conditions[c][0])
    assert all(s.sizes == (11, 6) for s in shards)


# ---------------------------------------------------------------- runs under torchrun

def _torchrun(arguments: list[str], processes: int = 2, extra: tuple[str, ...] = (), **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               *extra, "-m", "pinnzo", *arguments]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, **kwargs)


def _alone(arguments: list[str]):
    return subprocess.run([sys.executable, "-m", "pinnzo", *arguments], env=ENV, capture_output=True, text=True,
                          timeout=300)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


TT_SPARSE_GRID = ["--network", "tt", "--backend", "sparse-grid", "--set", "activation=sin"]
TINY = ["--steps", "4", "--dtype", "float64", "--set", "eval_every=2", "--set", "eval_points=300", "--no-plots", "-q"]
EQUIVALENCE = {
    "zo-signrge": ["solve", "problems/hjb20.yaml", "--batch", "10", "--width", "8", *TINY],
    # the file's TT-MLP and sparse grid (its block is the paper's method's, so zo-gn would take its own)
    "zo-gn": ["solve", "problems/hjb20.yaml", "--optimizer", "zo-gn", *TT_SPARSE_GRID, "--batch", "40", "--width", "8",
              *TINY],
    # measured data: each rank's shard of the data points takes their own measurements. One step: the
    # unknown's column is a difference of black-box residuals, whose last bits depend on the rows a
    # forward takes together, amplified by 1 / mu (~1e8); LM's first steps then amplify them further
    "zo-gn-inverse": ["solve", "problems/burgers1d-inverse.yaml", "--batch", "100", *TINY, "--steps", "1"],
    "adam": ["solve", "problems/poisson2d.yaml", "--batch", "64", "--set", "condition_batch=32", *TINY],
    # activation auto: two pilots of one step, scored on every rank, the choice and its record rank 0's
    "zo-gn-auto": ["solve", "problems/hjb20.yaml", "--optimizer", "zo-gn", "--network", "tt", "--backend",
                   "sparse-grid", "--batch", "40", "--width", "8",
                   "--set", "activation=auto", "--set", "pilot_share=0.25", *TINY],
}


@pytest.mark.parametrize("name", list(EQUIVALENCE))
def test_two_processes_give_the_numbers_of_one(tmp_path, name):
    arguments = [a.replace("problems/", f"{REPO}/problems/") for a in EQUIVALENCE[name]]
    alone, pair = tmp_path / "alone", tmp_path / "pair"
    assert _alone([*arguments, "--out", str(alone)]).returncode == 0
    done = _torchrun([*arguments, "--out", str(pair)])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _summary(alone), _summary(pair)
    assert two["world_size"] == 2 and two["dist_backend"] == "gloo" and one["world_size"] == 1
    # zo-gn included: its layered Jacobian computes each network row by itself (series order per row,
    # sums over units in a fixed order), so a shard's columns are the whole batch's rows bit for bit
    assert abs(two["final_rel_l2"] - one["final_rel_l2"]) <= (1e-6 if "inverse" in name else 1e-10) \
        * one["final_rel_l2"]
    if "inverse" in name:
        assert two["unknowns"]["nu"]["value"] == pytest.approx(one["unknowns"]["nu"]["value"], rel=1e-6)
    assert two["total_queries"] == one["total_queries"]
    assert two["activation"] == one["activation"] and ("pilots" in two) == (name == "zo-gn-auto")
    assert two["bytes_per_step"] > 0 and one["bytes_per_step"] == 0
    if name == "zo-signrge":  # N + 1 = 11 loss values (and the stop flag): far below 1 KiB
        assert two["bytes_per_step"] <= 1024
    # only rank 0 wrote: one progress-free report line set, one run folder
    assert done.stdout.count("results in") == 1


@pytest.mark.parametrize("split, expected", [("auto", "queries"), ("points", "points")])
def test_mnist_on_two_workers_has_the_accuracy_of_one(tmp_path, split, expected):
    """auto splits the hybrid's step by its queries (hundreds of coordinates on one mini-batch)."""
    from helpers import tiny_mnist

    data = tiny_mnist(tmp_path / "data", n_train=200)
    arguments = ["mnist", "--data-dir", str(data), "--network", "mlp", "--set", "width=16", "--epochs", "2",
                 "--batch", "32", "--set", "validation=40", "--optimizer", "hybrid", "--set", "switch_step=6",
                 "--no-plots", "-q"]
    assert _alone([*arguments, "--out", str(tmp_path / "one")]).returncode == 0
    done = _alone([*arguments, "--out", str(tmp_path / "two"), "--workers", "2",  # torch's launcher, not by hand
                   "--dist-split", split])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert two["world_size"] == 2 and two["dist_split"] == expected
    assert two["test_accuracy"] == one["test_accuracy"]
    assert abs(two["test_loss"] - one["test_loss"]) <= 1e-6 * abs(one["test_loss"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ranks_started_with_different_settings_are_refused(tmp_path):
    port = _free_port()
    problem = str(REPO / "problems" / "poisson2d.yaml")
    workers = []
    for rank, steps in ((0, "3"), (1, "4")):  # two hosts' commands that differ
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        workers.append(subprocess.Popen([sys.executable, "-m", "pinnzo", "solve", problem, "--steps", steps,
                                         "--no-plots", "-q", "--out", str(tmp_path / "run")], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 2, err[-2000:]
        assert "different problem files or settings" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


LONG = ["solve", str(REPO / "problems" / "poisson2d.yaml"), "--optimizer", "zo-signrge", "--backend", "fd",
        "--network", "mlp", "--width", "8", "--lr", "0.003", "--steps", "150", "--batch", "16", "--dtype", "float64",
        "--set", "condition_batch=8", "--set", "eval_every=5", "--set", "eval_points=100", "--no-plots", "-q"]


def _kill_a_worker_after_a_checkpoint(launcher: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint"
        time.sleep(0.2)
    workers = _children(launcher.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted one-process run the interrupted ones must reproduce."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    assert _alone([*LONG, "--out", str(folder)]).returncode == 0
    return folder


def test_killed_worker_stops_both_and_resume_on_one_process_finishes(tmp_path, reference):
    run = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", "-m", "pinnzo", *LONG, "--out", str(run), "--dist-timeout", "20"], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_a_worker_after_a_checkpoint(launcher, run)
    started = time.monotonic()
    launcher.communicate(timeout=60)  # both end: no hang
    assert launcher.returncode != 0 and time.monotonic() - started < 60
    assert not (run / "summary.json").exists() and torch.load(run / "checkpoint.pt", weights_only=False)
    resumed = _alone([*LONG, "--resume", str(run)])  # on one process: another world size
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert abs(_summary(run)["final_rel_l2"] - _summary(reference)["final_rel_l2"]) <= 1e-10
    assert _summary(run)["total_queries"] == _summary(reference)["total_queries"]


def test_torchrun_restart_resumes_from_the_last_checkpoint(tmp_path, reference):
    # more than one restart allowed: right after a kill, gloo's re-connection of the new workers can
    # be refused while the old ones are still going away; torchrun then simply restarts again
    run = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", "--max-restarts", "3", "-m", "pinnzo", *LONG, "--out", str(run)], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_a_worker_after_a_checkpoint(launcher, run)
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-3000:]
    summary = _summary(run)
    assert summary["world_size"] == 2 and summary["total_queries"] == _summary(reference)["total_queries"]
    assert abs(summary["final_rel_l2"] - _summary(reference)["final_rel_l2"]) <= 1e-10
