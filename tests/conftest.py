from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import scvi
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _seeded_single_thread():
    """Seed everything; train on one thread (small networks run faster so, on a busy CPU too)."""
    scvi.settings.seed = 0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(previous)


# Module-scoped fixtures (models trained once per file) are set up before any function-scoped
# fixture, so the same seeding runs per module too: without it they trained unseeded.
_seed_module = pytest.fixture(autouse=True, scope="module")(_seeded_single_thread)
_seed_and_threads = pytest.fixture(autouse=True)(_seeded_single_thread)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the project; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def training_arguments(monkeypatch) -> dict:
    """What a model's ``train`` hands on to ``TrainingMixin.train``, which then trains nothing."""
    from scgexp.train import TrainingMixin

    passed = {}
    monkeypatch.setattr(TrainingMixin, "train", lambda self, **kwargs: passed.update(kwargs))
    return passed


@pytest.fixture
def warnings_as_errors():
    """A context in which any warning fails the test, as a user would see it.

    Other packages' DeprecationWarnings are hidden from users by Python's default filters, so
    they are ignored here too (e.g. anndata 0.13's own under pandas 3); one attributed to a line
    of scgexp's code (as pandas attributes its own) still fails.
    """

    @contextmanager
    def escalate():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for notice in (DeprecationWarning, PendingDeprecationWarning):
                warnings.filterwarnings("ignore", category=notice, module=r"(?!scgexp)")
            yield

    return escalate
