"""MNIST with (TT-)MLPs: the paper's secondary task (section 5.1, Tables 1-3).

Reuses the TT layers (pinnzo.nets), the flat-parameter Objective, every
optimizer of the registry (pinnzo.optim), the training loop (loop.py) and the
run folders (runs.py): results/mnist/<time>-<network>-<optimizer>/ with
config.yaml, metrics.csv (one row per epoch), summary.json (the test accuracy of the final model,
model.pt, and of the epoch with the best validation accuracy, best.pt), checkpoint.pt (resumable)
and plots/.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pinnzo import loop, runs
from pinnzo.derivatives.memory import BATCH_ROWS
from pinnzo.errors import PinnzoError
from pinnzo.nets import build_mlp
from pinnzo.optim import Objective, make_optimizer
from pinnzo.optim.ggn import generalised
from pinnzo.pinn import DTYPES, device_of
from pinnzo.settings import MnistSettings

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # 0x00000803 / 0x00000801: unsigned bytes, 3 / 1 dimensions
ENV_VAR = "PINNZO_MNIST_DIR"
SHAPES = [(7, 4, 4, 7), (8, 4, 4, 8), (1, 5, 2, 1)]  # 784, 1024, 10 (paper)
MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels in [0, 1]
DIAGONAL_CHUNK = 2**22  # Jacobian values a chunk of curvature_diagonal (its temporaries: 16 MB in float32)
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
        except (OSError, EOFError, zlib.error) as error:
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
    if settings.activation == "auto":
        raise PinnzoError("activation auto (pilot runs choose it) is for pinnzo solve; pinnzo mnist takes one of "
                          "sin, tanh, relu, gelu")
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

    layered = True

    def inputs(self, batch) -> torch.Tensor:
        return batch[0]

    def criterion(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """logits (..., B, 10) -> mean cross-entropy (...); for a rank's shard of the mini-batch
        (images, labels, whole batch size) its part of the mean, sum / whole batch size."""
        labels = batch[1].expand(logits.shape[:-1])
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   reduction="none").reshape(labels.shape)
        return losses.mean(-1) if len(batch) < 3 else losses.sum(-1) / batch[2]

    def __call__(self, network, batch) -> torch.Tensor:
        return self.criterion(network(self.inputs(batch)), batch)

    outputs = 10  # C: logits per image

    def curvature(self, logits: torch.Tensor, batch):
        """The criterion at logits F (B, C), its gradient in F (B, C) and its Hessian in F as a product
        (B, C) -> (B, C): with p_b = softmax(F_b) and y_b the one-hot label, over the whole batch size N,

            l = sum_b CE(F_b, y_b) / N,   grad = (p_b - y_b) / N,   H u = (p_b * u_b - p_b (p_b . u_b)) / N,

        H_b = diag(p_b) - p_b p_b^T being positive semi-definite (the generalised Gauss-Newton's
        output curvature, optim/ggn.py)."""
        whole = batch[2] if len(batch) > 2 else len(batch[1])
        p = torch.softmax(logits, -1)
        gradient = p.clone()
        gradient[torch.arange(len(p)), batch[1]] -= 1
        product = lambda u: (p * u - p * (p * u).sum(-1, keepdim=True)) / whole
        return self.criterion(logits, batch), gradient / whole, product

    def curvature_diagonal(self, jacobian: torch.Tensor, logits: torch.Tensor, batch) -> torch.Tensor:
        """diag(J^T H J) (d,) for the outputs' Jacobian (d, B, C): sum_b (sum_c p_bc J_bc^2 -
        (sum_c p_bc J_bc)^2) / N."""
        whole = batch[2] if len(batch) > 2 else len(batch[1])
        p = torch.softmax(logits, -1).to(jacobian.dtype)
        rows = max(1, DIAGONAL_CHUNK // max(1, p.numel()))  # Jacobian rows a chunk: its temporaries stay small
        return torch.cat([((block.square() * p).sum((1, 2)) - (block * p).sum(2).square().sum(1)).double()
                          for block in jacobian.split(rows)]) / whole


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

class MnistTask:
    """MNIST classification as a task of the training loop: an epoch is a fresh shuffle of
    the training split in mini-batches; evaluation on the validation split after each."""

    kind = "mnist"
    generator_names = ("shuffle", "zo")
    metric_fields = METRIC_FIELDS
    progress_metric = ("val acc", "val_accuracy")

    def __init__(self, data: MnistData, settings: MnistSettings):
        self.settings, self.data = settings, data
        self.time_budget = settings.time_budget
        self.device = device_of(settings.device)
        self.dtype = DTYPES[settings.dtype]
        model = build_classifier(settings, self.dtype).to(self.device)
        self.steps_per_epoch = settings.steps_per_epoch or len(data.train_y) // settings.batch
        if self.steps_per_epoch < 1:
            raise PinnzoError(f"batch {settings.batch} is larger than the training split ({len(data.train_y)} images)")
        if self.steps_per_epoch * settings.batch > len(data.train_y):
            raise PinnzoError(f"steps_per_epoch: {self.steps_per_epoch} steps of {settings.batch} images need "
                              f"{self.steps_per_epoch * settings.batch} images; the training split has "
                              f"{len(data.train_y)} (at most {len(data.train_y) // settings.batch} steps per epoch)")
        self.steps = settings.epochs * self.steps_per_epoch
        self.average = settings.average  # the loop's moving average of the parameters (loop.commit)
        self.optimizer = make_optimizer(settings.optimizer, **{
            **settings.as_dict(), "decay_every": max(1, settings.decay_epochs * self.steps_per_epoch)})
        if settings.optimizer == "zo-gn":  # on a cross-entropy: the generalised Gauss-Newton
            self.optimizer = generalised(self.optimizer, settings.cg_iterations, settings.damping_floor)
        # Loss queries of a TT classifier run one by one: vmap over per-query TT cores is
        # slower than a loop on the CPU; dense layers batch well (one bmm per layer).
        per_chunk = 1 if settings.network == "tt" else max(1, BATCH_ROWS // settings.batch)
        self.objective = Objective(model, cross_entropy, per_chunk)
        if settings.optimizer == "zo-gn" and self.objective.world.size > 1:
            raise PinnzoError("zo-gn on MNIST (the generalised Gauss-Newton) runs in one process")
        self.train_x, self.train_y = data.train_x.to(self.device, self.dtype), data.train_y.to(self.device)
        self.order = None

    def describe(self) -> str:
        s = self.settings
        return (f"pinnzo mnist: {s.network} 784-{s.width}-10 ({self.objective.dim:,} parameters), {s.optimizer}, "
                f"{s.epochs} epochs of {self.steps_per_epoch} steps x {s.batch}")

    def refresh(self) -> bool:
        return False  # every step already takes the next mini-batch

    def take_events(self) -> list[str]:
        return []  # sample() only takes the next mini-batch

    def constrain(self, theta: torch.Tensor) -> torch.Tensor:
        return theta  # nothing is held

    def sample(self, step: int, generators, theta=None, done: float = 0.0):
        k = step % self.steps_per_epoch
        if k == 0 or self.order is None:
            self.order = torch.randperm(len(self.train_y), generator=generators["shuffle"]).to(self.device)
        index = self.order[k * self.settings.batch:(k + 1) * self.settings.batch]
        world = self.objective.world
        if world.sharded:
            index = index[world.shard(len(index))]
            return self.train_x[index], self.train_y[index], self.settings.batch
        return self.train_x[index], self.train_y[index]

    def should_evaluate(self, step: int) -> bool:
        return (step + 1) % self.steps_per_epoch == 0

    def evaluate(self, theta, step: int, info, state) -> dict:
        network = self.objective.network(theta)
        val_loss, accuracy = evaluate(network, self.data.val_x.to(self.device, self.dtype),
                                      self.data.val_y.to(self.device))
        return {"epoch": (step + 1) // self.steps_per_epoch, "step": step + 1, "queries": state.queries,
                "train_loss": float(np.mean(state.window)), "val_loss": val_loss, "val_accuracy": accuracy,
                "lr": self.optimizer.schedule(step), "stage": info.stage}

    def score(self, row: dict) -> float:
        """The validation accuracy, negated (lower is better): the loop keeps the parameters of the best
        epoch, whose test accuracy the summary reports beside the final model's (model selection on the
        validation split, which no step trains on; the test split chooses nothing)."""
        return -row["val_accuracy"]

    def state_dict(self) -> dict:
        return {"order": self.order}

    def load_state_dict(self, saved: dict) -> None:
        self.order = saved.get("order")

    def finish(self, state, run_dir: Path) -> dict:
        s = self.settings
        test = lambda theta: evaluate(self.objective.network(theta), self.data.test_x.to(self.device, self.dtype),
                                      self.data.test_y.to(self.device))
        best_theta = state.best_theta if state.best_theta is not None else state.result
        test_loss, test_accuracy = test(state.result)
        best = max(state.metrics, key=lambda row: row["val_accuracy"])  # the first best, as the loop keeps it
        runs.write_model(run_dir, runs.MODEL, self.objective.state_dict(state.result))
        runs.write_model(run_dir, runs.BEST, self.objective.state_dict(best_theta))
        return {
            "task": "mnist", "network": s.network, "rank": s.rank, "optimizer": s.optimizer,
            "parameters": self.objective.dim,
            "parameters_per_layer": [list(r) for r in self.objective.model.parameter_table()],
            "epochs": state.step // self.steps_per_epoch, "test_accuracy": test_accuracy, "test_loss": test_loss,
            "final_val_accuracy": state.metrics[-1]["val_accuracy"],
            "best_val_accuracy": best["val_accuracy"], "best_step": best["step"],
            "best_test_accuracy": test(best_theta)[1],
            **({"last_step_test_accuracy": test(state.theta)[1]} if state.average is not None else {}),
            "dtype": s.dtype, "seed": s.seed,
        }


def default_run_dir(settings: MnistSettings, root: Path = Path("results")) -> Path:
    return runs.default_run_dir("mnist", f"{settings.network}-{settings.optimizer}", root)


def train_mnist(data: MnistData, settings: MnistSettings, run_dir: Path, resume: bool = False,
                quiet: bool = False, data_dir: str = "", callbacks=()) -> dict:
    """Train a classifier with any optimizer of the registry; returns the summary."""
    settings = settings.concrete()
    task = MnistTask(data, settings)
    config = {"data_dir": str(data_dir), "settings": settings.as_dict()}
    summary, _ = loop.train(task, run_dir, config, resume, quiet, callbacks, seed=settings.seed)
    return summary
