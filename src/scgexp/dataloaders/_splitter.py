"""A DataSplitter that picks the fastest data path that fits: in memory, streamed, or standard."""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Literal

import torch
from scvi import settings
from scvi.dataloaders import DataSplitter as ScviDataSplitter

from scgexp.dataloaders._loaders import (
    InMemoryDataLoader,
    StreamingDataLoader,
    in_requested_order,
)
from scgexp.dataloaders._store import (
    TensorStore,
    estimate_nbytes,
    is_backed,
    registered_arrays,
)

logger = logging.getLogger(__name__)

#: How ``train(data_mode=...)`` reads the data: ``"memory"`` (tensors loaded once),
#: ``"stream"`` (minibatches read from a backed file), ``"standard"`` (scvi-tools' loader) or
#: ``"auto"`` (stream for backed data, else memory when it fits, else standard).
DataMode = Literal["auto", "memory", "stream", "standard"]
_MODES = ("auto", "memory", "stream", "standard")


def _free_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (host RAM for the CPU), or ``None`` if it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_data_mode(adata_manager, mode: DataMode, device: torch.device) -> str:
    """The data path ``mode`` stands for, given the data and the training device.

    Parameters
    ----------
    adata_manager
        The manager of the registered data.
    mode
        A :data:`DataMode`; only ``"auto"`` is resolved, the others are checked and returned.
    device
        The training device.

    Returns
    -------
    ``"memory"``, ``"stream"`` or ``"standard"``. For ``"auto"``: ``"stream"`` when the
    registered matrix lives on disk (a backed AnnData); ``"memory"`` when the registered arrays
    take at most half the free memory of ``device``; otherwise ``"standard"`` (scvi-tools'
    :class:`~scvi.dataloaders.AnnDataLoader`).

    Examples
    --------
    >>> resolve_data_mode(model.adata_manager, "auto", torch.device("cpu"))
    'memory'
    """
    if mode not in _MODES:
        raise ValueError(f"data_mode must be one of {_MODES}, not {mode!r}.")
    backed = any(is_backed(a) for a, _ in registered_arrays(adata_manager).values())
    if mode == "memory" and backed:
        load = (
            "`mdata = mudata.read_h5mu(path)`"  # a MuData has no to_memory()
            if hasattr(adata_manager.adata, "mod")
            else "`adata.to_memory()`"
        )
        raise ValueError(
            "data_mode='memory' needs the data in memory, but it is backed on disk. Use "
            f"data_mode='stream', or load it first with {load}."
        )
    if mode != "auto":
        return mode
    if backed:
        return "stream"
    free = _free_bytes(device)
    if free is None or estimate_nbytes(adata_manager) <= free // 2:
        return "memory"
    return "standard"


class DataSplitter(ScviDataSplitter):
    """scvi-tools' :class:`~scvi.dataloaders.DataSplitter` with faster data paths.

    The split into training, validation and test cells is scvi-tools' own (same seed, same
    cells). Only the loaders change, by ``data_mode``:

    - ``"memory"``: the registered arrays are loaded once as (sparse) tensors on the training
      device and minibatches are gathered by index (:class:`InMemoryDataLoader`); the same
      cells are drawn in the same order as with the standard loader.
    - ``"stream"``: a backed AnnData is read from disk in contiguous blocks
      (:class:`StreamingDataLoader`); memory stays flat however many cells there are.
    - ``"standard"``: scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader`.
    - ``"auto"`` (default): ``"stream"`` for backed data, else ``"memory"`` when the data take
      at most half of the device's free memory, else ``"standard"``.

    Parameters
    ----------
    adata_manager
        The model's data manager.
    data_mode
        See above.
    block_rows, buffer_blocks
        Read size and shuffle buffer of the streaming loader.
    **kwargs
        Passed to :class:`scvi.dataloaders.DataSplitter`.

    Examples
    --------
    Models use it through ``train(data_mode=...)``; on its own:

    >>> splitter = DataSplitter(model.adata_manager, data_mode="memory", batch_size=256)
    >>> splitter.setup()
    >>> next(iter(splitter.train_dataloader()))["X"].shape  # 256 cells x the model's genes
    torch.Size([256, 500])
    """

    def __init__(
        self,
        adata_manager,
        data_mode: DataMode = "auto",
        block_rows: int = 4096,
        buffer_blocks: int = 8,
        **kwargs,
    ):
        with warnings.catch_warnings():  # a one-cell last minibatch is dropped below instead
            warnings.filterwarnings("ignore", message="Last batch will have a small size of 1 ")
            super().__init__(adata_manager, **kwargs)
        self.drop_last_requested = self.drop_last
        if data_mode not in _MODES:
            raise ValueError(f"data_mode must be one of {_MODES}, not {data_mode!r}.")
        self.data_mode = data_mode
        self.stream_kwargs = {"block_rows": block_rows, "buffer_blocks": buffer_blocks}
        self.store: TensorStore | None = None

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def setup(self, stage: str | None = None):
        """Split the cells, then load the data once for the chosen path."""
        super().setup(stage)
        # Batch normalisation cannot train on one cell: leave a one-cell last minibatch out
        # (another cell each epoch, as the cells are reshuffled), counted per process.
        trainer = getattr(self, "trainer", None)
        world = max(1, int(getattr(trainer, "world_size", 1) or 1))
        if world > 1:  # scvi-tools shards by the strategy's name: devices=2 alone picks DDP too
            self.data_loader_kwargs["distributed_sampler"] = True
        per_process = math.ceil(len(self.train_idx) / world)
        batch_size = self.data_loader_kwargs.get("batch_size") or settings.batch_size
        one_cell_left = per_process > batch_size and per_process % batch_size == 1
        self.drop_last = self.drop_last_requested or one_cell_left
        device = self._device()
        self.resolved_mode = resolve_data_mode(self.adata_manager, self.data_mode, device)
        logger.info("Data path: %s (device %s).", self.resolved_mode, device)
        if self.resolved_mode == "memory" and self.store is None:
            self.store = TensorStore(self.adata_manager, device)
        elif self.resolved_mode == "stream" and self.store is None:
            # Only small in-memory arrays go to the device; streamed blocks follow per batch.
            self.store = TensorStore(self.adata_manager, "cpu", skip_backed=True)

    def teardown(self, stage: str | None = None):
        """Free the data loaded for training (on a GPU, the whole in-memory copy)."""
        self.store = None

    def _loader(self, indices, shuffle: bool, drop_last: bool):
        cls = InMemoryDataLoader if self.resolved_mode == "memory" else StreamingDataLoader
        extra = self.stream_kwargs if self.resolved_mode == "stream" else {}
        return cls(
            self.store, indices, shuffle=shuffle, drop_last=drop_last,
            **extra, **self.data_loader_kwargs,
        )  # fmt: skip

    def train_dataloader(self):
        """Training minibatches, reshuffled each epoch."""
        if self.resolved_mode == "standard":
            return in_requested_order(super().train_dataloader())
        return self._loader(self.train_idx, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self):
        """Validation minibatches, in a fixed order."""
        if self.resolved_mode == "standard" or len(self.val_idx) == 0:
            return in_requested_order(super().val_dataloader())
        return self._loader(self.val_idx, shuffle=False, drop_last=False)

    def test_dataloader(self):
        """Test minibatches, in a fixed order."""
        if self.resolved_mode == "standard" or len(self.test_idx) == 0:
            return in_requested_order(super().test_dataloader())
        return self._loader(self.test_idx, shuffle=False, drop_last=False)
