"""Shared test fixtures. Tests use tiny models on CPU; two code paths must agree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"

# Keep runs reproducible and leave a core free for the machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("EQIMG_NO_BUNDLED_DOWNLOAD", "1")


@pytest.fixture
def official_dir() -> Path:
    return OFFICIAL
