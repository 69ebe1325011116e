from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
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


@pytest.fixture
def copy_on_write(monkeypatch):
    """``with copy_on_write() as writable:`` runs with pandas' copy-on-write on.

    Copy-on-write is pandas 3's only mode, in which obs columns are read-only views; it is
    turned on under pandas 2 too. ``writable`` records, for every numpy array handed to
    ``torch.as_tensor`` in the block, whether it is writable: torch warns on read-only ones.
    """

    @contextmanager
    def watch():
        writable = []
        as_tensor = torch.as_tensor

        def recording(data, *args, **kwargs):
            if isinstance(data, np.ndarray):
                writable.append(data.flags.writeable)
            return as_tensor(data, *args, **kwargs)

        with ExitStack() as stack, monkeypatch.context() as patch:
            patch.setattr(torch, "as_tensor", recording)
            if int(pd.__version__.split(".")[0]) < 3:
                stack.enter_context(pd.option_context("mode.copy_on_write", True))
            yield writable

    return watch
