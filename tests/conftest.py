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


@pytest.fixture
def official_dir() -> Path:
    return OFFICIAL
