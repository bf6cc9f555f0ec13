"""MNIST with (TT-)MLPs: the paper's secondary task (section 5.1, Tables 1-3).

Reuses the TT layers (pinnzo.nets), the flat-parameter Objective and every
optimizer of the registry (pinnzo.optim), and the run-folder conventions of
``pinnzo solve``: results/mnist/<time>-<network>-<optimizer>/ with config.yaml,
metrics.csv (one row per epoch), summary.json (test accuracy), model.pt,
checkpoint.pt (resumable) and plots/.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pinnzo.errors import PinnzoError
from pinnzo.fileio import atomic_write
from pinnzo.nets import build_mlp
from pinnzo.optim import Objective, learning_rate, make_optimizer
from pinnzo.settings import MnistSettings
from pinnzo.train import (BATCH_ROWS, DTYPES, Diverged, Interrupted, Progress, _torch_bytes, numbered_run_dir,
                          open_run_dir, write_checkpoint)

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # 0x00000803 / 0x00000801: unsigned bytes, 3 / 1 dimensions
ENV_VAR = "PINNZO_MNIST_DIR"
SHAPES = [(7, 4, 4, 7), (8, 4, 4, 8), (1, 5, 2, 1)]  # 784, 1024, 10 (paper)
MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels in [0, 1]
METRIC_FIELDS = ["epoch", "step", "queries", "train_loss", "val_loss", "val_accuracy", "lr", "stage", "wall_s"]


class MnistDataError(PinnzoError):
    """A missing or malformed MNIST file."""


# ---------------------------------------------------------------- IDX files

def read_idx(path: Path, magic: int, shape_tail: tuple[int, ...]) -> np.ndarray:
    """An IDX file (gzip or raw) as uint8 array (count, *shape_tail); validated.

    Checks the magic number, the dimensions in the header and that the data
    length matches them; raises MnistDataError naming the file otherwise.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MnistDataError(f"{path}: file not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise MnistDataError(f"{path}: damaged gzip data ({error})") from None
    ndim = 1 + len(shape_tail)
    if len(raw) < 4 + 4 * ndim:
        raise MnistDataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise MnistDataError(f"{path}: magic number {found} (0x{found:08x}); expected {magic} (0x{magic:08x})")
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    if tuple(dims[1:]) != shape_tail:
        raise MnistDataError(f"{path}: item shape {tuple(dims[1:])}; expected {shape_tail}")
    expected = math.prod(dims)
    data = raw[4 + 4 * ndim:]
    if len(data) != expected:
        raise MnistDataError(f"{path}: {len(data)} data bytes; the header promises {dims[0]} items = {expected} bytes"
                             + (" (truncated)" if len(data) < expected else ""))
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise MnistDataError(f"{data_dir / (stem + '.gz')}: file not found (nor {stem}); point --data-dir "
                         f"(or ${ENV_VAR}) at a folder with the four MNIST IDX files")


@dataclass
class MnistData:
    """Images as float (N, 784) standardised, labels int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def default_data_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or "data/mnist")


def load_mnist(data_dir: Path, validation: int = 5000, dtype=torch.float32) -> MnistData:
    """The four files of ``data_dir``; the last ``validation`` training images are held out."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MnistDataError(f"{data_dir}: MNIST folder not found; point --data-dir (or ${ENV_VAR}) at it")
    arrays = {}
    for key, stem in FILES.items():
        path = _find(data_dir, stem)
        images = key.endswith("images")
        arrays[key] = read_idx(path, IMAGE_MAGIC if images else LABEL_MAGIC, (28, 28) if images else ())
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise MnistDataError(f"{data_dir}: {split} set has {n_images} images but {n_labels} labels")
        if arrays[f"{split}_labels"].max(initial=0) > 9:
            raise MnistDataError(f"{data_dir}: {split} labels outside 0..9")
    if not 0 <= validation < len(arrays["train_images"]):
        raise PinnzoError(f"validation: expected 0 <= validation < {len(arrays['train_images'])}; found {validation}")

    def images(a):
        return ((torch.from_numpy(a.reshape(len(a), -1).astype(np.float32)) / 255 - MEAN) / STD).to(dtype)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))
    cut = len(arrays["train_images"]) - validation
    return MnistData(images(arrays["train_images"][:cut]), labels(arrays["train_labels"][:cut]),
                     images(arrays["train_images"][cut:]), labels(arrays["train_labels"][cut:]),
                     images(arrays["test_images"]), labels(arrays["test_labels"]))


# ---------------------------------------------------------------- model and loss

def build_classifier(settings: MnistSettings, dtype=torch.float32) -> torch.nn.Module:
    """Dense 784 -> width -> 10, or the paper's TT-MLP (all layers TT, ranks [1, r, r, r, 1])."""
    sizes = [784, settings.width, 10]
    shapes = SHAPES if settings.network == "tt" and settings.width == 1024 else None
    return build_mlp(sizes, settings.network, settings.activation, settings.rank, tt_output=True, shapes=shapes,
                     dtype=dtype, seed=settings.seed, squeeze=False)


class CrossEntropy:
    """The mean cross-entropy of a network on a batch (images (B, 784), labels (B,)).

    Split into ``inputs`` and ``criterion`` so that ZO-CGE can query all
    coordinates while re-running only the layers after each perturbed one
    (optim/coordinates.py).
    """

    def inputs(self, batch) -> torch.Tensor:
        return batch[0]

    def criterion(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """logits (..., B, 10) -> mean cross-entropy (...)."""
        labels = batch[1].expand(logits.shape[:-1])
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   reduction="none")
        return losses.reshape(labels.shape).mean(-1)

    def __call__(self, network, batch) -> torch.Tensor:
        return self.criterion(network(self.inputs(batch)), batch)


cross_entropy = CrossEntropy()


def evaluate(network, images: torch.Tensor, labels: torch.Tensor, chunk: int = 5000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a data set."""
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for x, y in zip(torch.split(images, chunk), torch.split(labels, chunk)):
            logits = network(x)
            total_loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


# ---------------------------------------------------------------- training

@dataclass
class MnistState:
    theta: torch.Tensor
    optimizer: dict
    epoch: int = 0  # next epoch to run
    queries: int = 0
    metrics: list = field(default_factory=list)
    elapsed: float = 0.0
    events: list = field(default_factory=list)
    generators: dict = field(default_factory=dict)


def default_run_dir(settings: MnistSettings, root: Path = Path("results")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return numbered_run_dir(root / "mnist" / f"{stamp}-{settings.network}-{settings.optimizer}")


def train_mnist(data: MnistData, settings: MnistSettings, run_dir: Path, resume: bool = False,
                quiet: bool = False, data_dir: str = "", on_step=None) -> dict:
    """Train a classifier with any optimizer of the registry; returns the summary."""
    dtype = DTYPES[settings.dtype]
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PinnzoError("--device cuda: CUDA is not available on this machine")
    model = build_classifier(settings, dtype).to(device)
    steps_per_epoch = settings.steps_per_epoch or len(data.train_y) // settings.batch
    if steps_per_epoch < 1:
        raise PinnzoError(f"batch {settings.batch} is larger than the training split ({len(data.train_y)} images)")
    optimizer_settings = settings.optimizer_settings(steps_per_epoch)
    optimizer = make_optimizer(optimizer_settings)
    # Loss queries of a TT classifier run one by one: vmap over per-query TT cores is
    # 2.5x slower than a loop on the CPU (measured: 4.8 vs 1.9 ms per 64-row query);
    # dense layers batch well (one bmm per layer).
    per_chunk = 1 if settings.network == "tt" else max(1, BATCH_ROWS // settings.batch)
    objective = Objective(model, cross_entropy, per_chunk)
    config = {"task": "mnist", "data_dir": str(data_dir), "settings": settings.as_dict()}
    run_dir = Path(run_dir)
    open_run_dir(run_dir, config, resume)
    if resume:
        state = MnistState(**torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location=device))
    else:
        theta = objective.flatten()
        state = MnistState(theta=theta, optimizer=optimizer.init(theta))
    generators = {name: torch.Generator().manual_seed(settings.seed + offset)
                  for name, offset in (("shuffle", 0), ("zo", 1))}
    for name, saved_state in state.generators.items():
        generators[name].set_state(saved_state)
    objective.queries = state.queries
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    total_steps = settings.epochs * steps_per_epoch
    progress = Progress(total_steps, quiet, metric="val acc")
    progress.message(f"pinnzo mnist: {settings.network} 784-{settings.width}-10 ({objective.dim:,} parameters), "
                     f"{settings.optimizer}, {settings.epochs} epochs of {steps_per_epoch} steps x {settings.batch}")
    started = time.perf_counter() - state.elapsed
    accuracy = state.metrics[-1]["val_accuracy"] if state.metrics else None
    try:
        for epoch in range(state.epoch, settings.epochs):
            order = torch.randperm(len(train_y), generator=generators["shuffle"]).to(device)
            losses = []
            for k in range(steps_per_epoch):
                step = epoch * steps_per_epoch + k
                index = order[k * settings.batch:(k + 1) * settings.batch]
                objective.batch = (train_x[index], train_y[index])
                theta, optimizer_state, info = optimizer.step(step, state.theta, state.optimizer, objective,
                                                              generators["zo"])
                if not math.isfinite(info.loss) or not torch.isfinite(theta).all():
                    raise Diverged(f"the loss became {info.loss} at step {step + 1} (epoch {epoch + 1}); "
                                   f"stopped, the last good checkpoint (epoch {state.epoch}) is kept in {run_dir}")
                state.theta, state.optimizer = theta, optimizer_state
                losses.append(info.loss)
                for event in info.events:
                    state.events.append({"step": step + 1, "event": event})
                    progress.message(event)
                progress.update(step, info.loss, objective.queries, accuracy)
                if on_step is not None:
                    on_step(step)
            val_loss, accuracy = evaluate(objective.network(state.theta), data.val_x.to(device), data.val_y.to(device))
            state.metrics.append({"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                                  "queries": objective.queries, "train_loss": float(np.mean(losses)),
                                  "val_loss": val_loss, "val_accuracy": accuracy,
                                  "lr": learning_rate(optimizer_settings, step), "stage": info.stage,
                                  "wall_s": time.perf_counter() - started})
            state.epoch = epoch + 1
            write_checkpoint(run_dir, state, generators, objective.queries, started, METRIC_FIELDS)
            progress.update(step, info.loss, objective.queries, accuracy, force=True)
    except KeyboardInterrupt:
        progress.message(f"interrupted during epoch {state.epoch + 1}; the checkpoint of epoch {state.epoch} "
                         f"is in {run_dir}; continue with --resume {run_dir}")
        raise Interrupted(str(run_dir)) from None
    finally:
        progress.close()
    return _finish(run_dir, settings, model, objective, state, data, device, started)


def _finish(run_dir, settings, model, objective, state, data, device, started) -> dict:
    test_loss, test_accuracy = evaluate(objective.network(state.theta), data.test_x.to(device), data.test_y.to(device))
    objective.load(state.theta)
    atomic_write(run_dir / "model.pt", _torch_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()}))
    summary = {
        "task": "mnist", "network": settings.network, "rank": settings.rank, "optimizer": settings.optimizer,
        "parameters": objective.dim, "parameters_per_layer": [list(r) for r in model.parameter_table()],
        "epochs": state.epoch, "steps": state.epoch * (state.metrics[-1]["step"] // max(1, state.metrics[-1]["epoch"])),
        "total_queries": objective.queries, "test_accuracy": test_accuracy, "test_loss": test_loss,
        "final_val_accuracy": state.metrics[-1]["val_accuracy"],
        "best_val_accuracy": max(row["val_accuracy"] for row in state.metrics), "events": state.events,
        "wall_time_s": time.perf_counter() - started, "device": str(device), "dtype": settings.dtype,
        "seed": settings.seed, "versions": {"torch": torch.__version__}, "status": "finished",
    }
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    return summary
