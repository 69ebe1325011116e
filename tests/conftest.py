from __future__ import annotations

import logging
from pathlib import Path

import pytest
import scvi
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Seed everything; train on one thread (small networks run faster so, on a busy CPU too)."""
    scvi.settings.seed = 0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA
