"""Shared fixtures: every test gets a private quadrature cache and results folder."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("PINNZO_QUADRATURE_DIR", str(tmp_path / "quadrature-cache"))
    torch.manual_seed(0)
    yield
