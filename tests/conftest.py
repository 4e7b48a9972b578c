"""Shared test fixtures. Tests use tiny models on CPU; two code paths must agree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"

# One thread: tiny models are faster single-threaded, and runs stay reproducible.
torch.set_num_threads(1)
os.environ.setdefault("EQIMG_NO_BUNDLED_DOWNLOAD", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts single-threaded, whatever an earlier test set: tiny ops on 2 busy shared
    cores spend their time spinning with a second intra-op thread (10x slower here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def official_dir() -> Path:
    return OFFICIAL
