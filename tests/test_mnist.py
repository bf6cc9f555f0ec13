"""MNIST: IDX reading (files written here with struct), TT-MLP sizes, short trainings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import IMAGE_MAGIC, LABEL_MAGIC, run_cli, tiny_mnist, write_idx
from pinnzo.errors import PinnzoError
from pinnzo.mnist import (MnistData, MnistDataError, build_classifier, evaluate, load_mnist,
                          read_idx, train_mnist)
from pinnzo.settings import MnistSettings


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(1).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    path = write_idx(tmp_path / "images", images, IMAGE_MAGIC, compress)
    np.testing.assert_array_equal(read_idx(path, IMAGE_MAGIC, (28, 28)), images)
    labels = np.arange(7, dtype=np.uint8)
    path = write_idx(tmp_path / "labels", labels, LABEL_MAGIC, compress)
    np.testing.assert_array_equal(read_idx(path, LABEL_MAGIC, ()), labels)


def test_malformed_idx_files_are_named_with_what_was_expected(tmp_path):
    images = np.zeros((5, 28, 28), np.uint8)
    wrong_magic = write_idx(tmp_path / "a", images, 2049)
    with pytest.raises(MnistDataError, match=r"a: magic number 2049 \(0x00000801\); expected 2051 \(0x00000803\)"):
        read_idx(wrong_magic, IMAGE_MAGIC, (28, 28))
    truncated = tmp_path / "b"
    truncated.write_bytes(write_idx(tmp_path / "full", images, IMAGE_MAGIC).read_bytes()[:-100])
    with pytest.raises(MnistDataError, match=r"b: 3820 data bytes; the header promises 5 items = 3920 bytes \(truncated\)"):
        read_idx(truncated, IMAGE_MAGIC, (28, 28))
    shape = write_idx(tmp_path / "c", np.zeros((5, 27, 28), np.uint8), IMAGE_MAGIC)
    with pytest.raises(MnistDataError, match=r"c: item shape \(27, 28\); expected \(28, 28\)"):
        read_idx(shape, IMAGE_MAGIC, (28, 28))
    (tmp_path / "d").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(MnistDataError, match="d: damaged gzip data"):
        read_idx(tmp_path / "d", IMAGE_MAGIC, (28, 28))
    with pytest.raises(MnistDataError, match="e: file not found"):
        read_idx(tmp_path / "e", IMAGE_MAGIC, (28, 28))
    # a valid gzip header whose deflate stream is corrupted (zlib's own error type)
    good = bytearray(write_idx(tmp_path / "g", images, IMAGE_MAGIC, compress=True).read_bytes())
    good[20:40] = b"\xff" * 20
    (tmp_path / "f").write_bytes(bytes(good))
    with pytest.raises(MnistDataError, match="f: damaged gzip data"):
        read_idx(tmp_path / "f", IMAGE_MAGIC, (28, 28))


def test_an_empty_validation_split_is_refused():
    with pytest.raises(PinnzoError, match="validation: expected an integer >= 1; found 0"):
        MnistSettings().replace({"validation": 0}, "--set ")


def test_mismatched_counts_and_missing_files(tmp_path):
    folder = tiny_mnist(tmp_path / "m")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(39, np.uint8), LABEL_MAGIC, True)
    with pytest.raises(MnistDataError, match="test set has 40 images but 39 labels"):
        load_mnist(folder, validation=20)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistDataError, match="t10k-labels-idx1-ubyte.gz: file not found"):
        load_mnist(folder, validation=20)
    result = run_cli(["mnist", "--data-dir", str(folder), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "file not found" in result.output
    result = run_cli(["mnist", "--data-dir", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "MNIST folder not found" in result.output
    result = run_cli(["mnist", "--data-dir", str(folder), "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs: expected an integer >= 1; found 0" in result.output


def test_loader_reads_raw_and_gzip_and_holds_out_validation(tmp_path):
    for compress in (True, False):
        data = load_mnist(tiny_mnist(tmp_path / str(compress), compress=compress), validation=20)
        assert data.train_x.shape == (100, 784) and data.val_x.shape == (20, 784) and data.test_x.shape == (40, 784)
        assert data.train_y.dtype == torch.int64 and int(data.train_y.max()) <= 9


@pytest.mark.parametrize("r", [1, 2, 6, 10])
def test_tt_mlp_parameter_counts_follow_the_papers_formula(r):
    model = build_classifier(MnistSettings(rank=r))
    assert sum(p.numel() for p in model.parameters()) == 128 * r + 60 * r * r + 1034
    assert model(torch.zeros(3, 784)).shape == (3, 10)
    dense = build_classifier(MnistSettings(network="mlp"))
    assert sum(p.numel() for p in dense.parameters()) == 814_090


def _separable(n=600, seed=0) -> MnistData:
    """Well separated Gaussian blobs in 784 dimensions, labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 784, generator=g)
    def make(count):
        y = torch.randint(0, 10, (count,), generator=g)
        return centres[y] + 0.5 * torch.randn(count, 784, generator=g), y
    (tx, ty), (vx, vy), (sx, sy) = make(n), make(200), make(200)
    return MnistData(tx, ty, vx, vy, sx, sy)


@pytest.mark.parametrize("optimizer, changes, accuracy", [
    ("adam", {"lr": 0.01}, 0.95),
    ("zo-signrge", {"lr": 0.01, "mu": 0.01, "directions": 20}, 0.9),
])
def test_short_training_on_separable_data_reaches_the_stated_accuracy(tmp_path, optimizer, changes, accuracy):
    settings = MnistSettings(optimizer=optimizer, rank=2, epochs=3, batch=32, seed=0).replace(changes)
    summary = train_mnist(_separable(), settings, tmp_path / "run", quiet=True)
    assert summary["test_accuracy"] >= accuracy, summary["test_accuracy"]
    assert summary["total_queries"] == 3 * (600 // 32) * (1 if optimizer == "adam" else 21)
    # the saved model, rebuilt independently, has the reported test accuracy
    data = _separable()
    model = build_classifier(settings)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    with torch.no_grad():
        correct = (model(data.test_x).argmax(1) == data.test_y).double().mean().item()
    assert correct == pytest.approx(summary["test_accuracy"], abs=1e-12)


def test_best_pt_is_the_epoch_of_the_best_validation_accuracy_and_has_the_reported_test_accuracy(tmp_path):
    """Adam at lr 0.02 peaks at epoch 5 (validation 100%) and ends at 99.5%: best.pt is that epoch's model
    (the first best), not the final one, and the summary's best figures are its own."""
    settings = MnistSettings(optimizer="adam", lr=0.02, rank=2, epochs=10, steps_per_epoch=2, batch=32, seed=0)
    summary = train_mnist(_separable(), settings, tmp_path / "run", quiet=True)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").read_text().splitlines()))
    best = max(rows, key=lambda row: float(row["val_accuracy"]))
    assert (summary["best_step"], summary["best_val_accuracy"]) == (int(best["step"]), float(best["val_accuracy"]))
    assert summary["best_step"] < summary["steps"] and summary["best_val_accuracy"] > summary["final_val_accuracy"]
    data, model = _separable(), build_classifier(settings)
    model.load_state_dict(torch.load(tmp_path / "run" / "best.pt", weights_only=True))
    with torch.no_grad():
        assert evaluate(model, data.val_x, data.val_y)[1] == summary["best_val_accuracy"]
        correct = (model(data.test_x).argmax(1) == data.test_y).double().mean().item()
    assert correct == pytest.approx(summary["best_test_accuracy"], abs=1e-12)
    assert summary["best_test_accuracy"] != summary["test_accuracy"]


def test_average_reports_the_parameters_moving_average_and_resumes_to_the_same_numbers(tmp_path):
    """With average = beta the reported model is a <- beta a + (1 - beta) theta over every step's parameters
    (recomputed here from the steps), its validation and test accuracy are its own, the last step's test
    accuracy is reported beside it, and an interrupted run resumes to the same averaged model."""
    from pinnzo.loop import Interrupted
    from pinnzo.optim import Objective

    settings = MnistSettings(optimizer="adam", lr=0.02, rank=2, epochs=4, steps_per_epoch=3, batch=32, seed=0,
                             average=0.8)
    thetas = []
    summary = train_mnist(_separable(), settings, tmp_path / "a", quiet=True,
                          callbacks=[lambda step, state: thetas.append(state.theta.clone())])
    expected = thetas[0]
    for theta in thetas[1:]:
        expected = 0.8 * expected + 0.2 * theta
    data, model = _separable(), build_classifier(settings)
    objective = Objective(model, None)
    model.load_state_dict(torch.load(tmp_path / "a" / "model.pt", weights_only=True))
    torch.testing.assert_close(objective.flatten(), expected, rtol=1e-5, atol=1e-6)
    assert (objective.flatten() - thetas[-1]).norm() > 1e-2 * thetas[-1].norm()  # not the last step's
    with torch.no_grad():
        assert evaluate(model, data.val_x, data.val_y)[1] == summary["final_val_accuracy"]
        assert evaluate(model, data.test_x, data.test_y)[1] == summary["test_accuracy"]
        objective.load(thetas[-1])
    assert summary["last_step_test_accuracy"] == evaluate(model, data.test_x, data.test_y)[1]

    def stop(step, state):
        if step == 7:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted):
        train_mnist(_separable(), settings, tmp_path / "b", quiet=True, callbacks=[stop])
    train_mnist(_separable(), settings, tmp_path / "b", resume=True, quiet=True)
    for name in ("model.pt", "best.pt"):
        saved = [torch.load(tmp_path / run / name, weights_only=True) for run in ("a", "b")]
        assert all(torch.equal(saved[0][key], saved[1][key]) for key in saved[0]), name
    with pytest.raises(PinnzoError, match="average"):
        MnistSettings().replace({"average": 1.0})


def test_mnist_run_folder_resume_and_plot(tmp_path):
    folder = tiny_mnist(tmp_path / "data", n_train=300)
    common = ["mnist", "--data-dir", str(folder), "--rank", "2", "--epochs", "4", "--batch", "16",
              "--set", "validation=50", "--optimizer", "zo-signrge", "-q"]
    straight = run_cli([*common, "--out", str(tmp_path / "a")])
    assert straight.exit_code == 0, straight.output
    run = tmp_path / "a"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.csv", "summary.json", "model.pt",
                                               "checkpoint.pt", "plots"}
    assert (run / "plots" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 4
    # interrupt after epoch 2 (the checkpoint), resume, and end with the same numbers
    from pinnzo.mnist import load_mnist as load
    data = load(folder, 50)
    settings = MnistSettings(rank=2, epochs=4, batch=16, validation=50, optimizer="zo-signrge")

    def stop(step, state):
        if step == 2 * (250 // 16) + 3:
            raise KeyboardInterrupt
    from pinnzo.loop import Interrupted
    with pytest.raises(Interrupted):
        train_mnist(data, settings, tmp_path / "b", quiet=True, callbacks=[stop])
    resumed = train_mnist(data, settings, tmp_path / "b", resume=True, quiet=True)
    assert resumed["test_accuracy"] == json.loads((run / "summary.json").read_text())["test_accuracy"]
    drop = lambda path: [line.rsplit(",", 1)[0] for line in (path / "metrics.csv").read_text().splitlines()]
    assert drop(tmp_path / "b") == drop(run)
    with pytest.raises(PinnzoError, match="does not match the saved run: rank: saved 2, now 3"):
        train_mnist(data, settings.replace({"rank": 3}), tmp_path / "b", resume=True, quiet=True)


def test_float64_runs_and_a_time_budget_stops_after_its_step(tmp_path):
    folder = tiny_mnist(tmp_path / "data", n_train=300)
    result = run_cli(["mnist", "--data-dir", str(folder), "--rank", "2", "--epochs", "3", "--batch", "16",
                      "--set", "validation=50", "--set", "dtype=float64", "--set", "time_budget=1e-9", "-q",
                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dtype"] == "float64" and summary["steps"] == 1 and summary["stopped_by"] == "time budget"
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(tensor.dtype == torch.float64 for tensor in model.values())
