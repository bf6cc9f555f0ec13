"""Small helpers shared by the tests."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np


def gaussian_moment(exponents) -> float:
    """E[prod_i z_i^a_i] for z ~ N(0, I): prod (a_i - 1)!! when all a_i are even, else 0."""
    exponents = np.asarray(exponents)
    if (exponents % 2).any():
        return 0.0
    return float(math.prod(math.prod(range(int(a) - 1, 0, -2)) for a in exponents))


# -u'' = pi^2 sin(pi x) on [0, 1] with a weighted boundary term: a small, fast PINN for Gauss-Newton
LINE = {
    "name": "poisson1d",
    "variables": {"space": {"name": "x", "dim": 1, "domain": [0, 1]}},
    "equation": "d(u, x, x) = -pi**2 * sin(pi * x)",
    "exact": "sin(pi * x)",
    "conditions": {"ends": {"at": "boundary", "value": 0, "weight": 3.0}},
    "solve": {"network": "mlp", "width": 8, "activation": "tanh", "dtype": "float64", "batch": 200,
              "condition_batch": 10, "eval_every": 5, "eval_points": 500},
}


def run_cli(args: list[str]):
    """Invoke the pinnzo CLI in-process with typer's CliRunner; returns the Result."""
    from typer.testing import CliRunner

    from pinnzo.cli import app

    return CliRunner().invoke(app, args)


class SineNet:
    """f(z) = sum_k a_k sin(w_k . z + b_k): a random smooth network with a
    closed-form Gaussian smoothing E f(z + delta) = sum_k a_k exp(-sigma^2 |w_k|^2 / 2) sin(w_k . z + b_k).

    Shapes: W (K, D), b (K,), a (K,); __call__: (B, D) -> (B,).
    """

    def __init__(self, dim: int, units: int = 16, seed: int = 0, dtype=None):
        import torch

        dtype = dtype or torch.float64
        generator = torch.Generator().manual_seed(seed)
        self.W = torch.randn(units, dim, generator=generator, dtype=dtype) / dim**0.5
        self.b = torch.rand(units, generator=generator, dtype=dtype) * 6.28
        self.a = torch.randn(units, generator=generator, dtype=dtype) / units**0.5

    def __call__(self, Z):
        import torch

        return torch.sin(Z @ self.W.T + self.b) @ self.a

    def smoothed(self, sigma: float) -> "SineNet":
        import torch

        smooth = SineNet.__new__(SineNet)
        smooth.W, smooth.b = self.W, self.b
        smooth.a = self.a * torch.exp(-0.5 * sigma**2 * (self.W**2).sum(1))
        return smooth


# IDX magic numbers, written here independently of pinnzo.mnist
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool = False, dims=None) -> Path:
    """An IDX file: big-endian magic, dimensions, then the bytes (independent of pinnzo)."""
    dims = array.shape if dims is None else dims
    data = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def tiny_mnist(folder: Path, n_train=120, n_test=40, compress=True, seed=0) -> Path:
    """Separable fake digits: class k lights a 4x4 block at a class-dependent place."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, k in enumerate(labels):
            row, col = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
            images[i, row:row + 4, col:col + 4] = 255
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, IMAGE_MAGIC, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, LABEL_MAGIC, compress)
    return folder


def interrupted_and_straight(problem, settings, folder: Path, at_step: int):
    """Run ``settings`` straight, and again interrupted (Ctrl-C after step ``at_step``) then resumed;
    returns (metrics rows without wall_s, model tensors) of (straight, resumed)."""
    import csv

    import pytest
    import torch

    from pinnzo.loop import Interrupted
    from pinnzo.pinn import solve

    solve(problem, settings, out=folder / "straight")

    def interrupt(step, state):
        if step == at_step:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        solve(problem, settings, out=folder / "broken", callbacks=[interrupt])
    solve(problem, settings, out=folder / "broken", resume=True)
    rows = [[{k: v for k, v in row.items() if k != "wall_s"}
             for row in csv.DictReader((folder / name / "metrics.csv").read_text().splitlines())]
            for name in ("straight", "broken")]
    models = [torch.load(folder / name / "model.pt", weights_only=True) for name in ("straight", "broken")]
    return rows, models
