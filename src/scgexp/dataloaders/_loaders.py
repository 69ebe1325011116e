"""Minibatch loaders that skip per-batch AnnData slicing: in memory, or streamed from disk."""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse
from scvi.data import AnnTorchDataset
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from scgexp.data._checks import InputError
from scgexp.data._matrix import dense
from scgexp.dataloaders._store import TensorStore
from scgexp.nn._tensors import as_tensor

if TYPE_CHECKING:
    from collections.abc import Iterator


def _replicas() -> tuple[int, int]:
    """``(rank, world_size)`` of the running distributed job, or ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_loader_arguments(kwargs: dict) -> None:
    """Refuse loader arguments that neither scvi-tools' nor torch's loader takes (typos).

    scvi-tools' own loader refuses them; the scgexp loaders ignore the ones they do not use.
    """
    from scvi.dataloaders import AnnDataLoader

    known = {
        *inspect.signature(AnnDataLoader.__init__).parameters,
        *inspect.signature(DataLoader.__init__).parameters,
    }
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(
            f"Unknown data loader argument(s) {unknown} (from datasplitter_kwargs?). The "
            "streaming loader takes block_rows and buffer_blocks; the others, scvi-tools' "
            "AnnDataLoader's (e.g. batch_size, num_workers)."
        )


class _StoreRows(Dataset):
    """Map-style dataset over ``indices``; ``dataset[positions]`` is one whole minibatch."""

    def __init__(self, store: TensorStore, indices: np.ndarray):
        self.store = store
        self.indices = as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        return self.store.batch(self.indices[torch.as_tensor(positions, dtype=torch.long)])


class InMemoryDataLoader(DataLoader):
    """Serves minibatches from a :class:`~scgexp.dataloaders.TensorStore` by index.

    The drop-in replacement for :class:`scvi.dataloaders.AnnDataLoader` when the data fit in
    memory: the same samplers draw the same indices for the same seed, so training gives the
    same result, but a minibatch is one tensor gather on the training device instead of an
    AnnData slice, a scipy densification and a host-to-device copy.

    Parameters
    ----------
    store
        The registered arrays, already on the training device.
    indices
        Rows of the data this loader serves (e.g. the training split).
    batch_size
        Minibatch size (per device under distributed training).
    shuffle
        Draw the rows in a new random order each epoch.
    drop_last
        Drop the last, incomplete minibatch.
    distributed_sampler
        Give each process of a distributed job its own shard of ``indices``
        (:class:`scvi.dataloaders.BatchDistributedSampler`, as scvi-tools does).
    **kwargs
        Accepted for compatibility with :class:`scvi.dataloaders.AnnDataLoader` and ignored
        (``num_workers``, ``pin_memory``, ``load_sparse_tensor``: there is nothing to load).

    Examples
    --------
    >>> store = TensorStore(model.adata_manager)
    >>> loader = InMemoryDataLoader(store, np.arange(store.n_obs), batch_size=256, shuffle=True)
    >>> next(iter(loader))["X"].shape  # 256 cells x the model's genes
    torch.Size([256, 500])
    """

    def __init__(
        self,
        store: TensorStore,
        indices: np.ndarray,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        **kwargs,
    ):
        from scvi.dataloaders import BatchDistributedSampler

        check_loader_arguments(kwargs)
        dataset = _StoreRows(store, indices)
        if distributed_sampler:
            sampler = BatchDistributedSampler(
                dataset, batch_size=batch_size, drop_last=drop_last, shuffle=shuffle
            )
        else:
            order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
            sampler = BatchSampler(order, batch_size=batch_size, drop_last=drop_last)
        super().__init__(dataset, sampler=sampler, batch_size=None, num_workers=0)


class _BlockStream(IterableDataset):
    """Reads contiguous row blocks from disk and yields shuffled minibatches from a buffer."""

    def __init__(
        self,
        store: TensorStore,
        indices: np.ndarray,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        block_rows: int,
        buffer_blocks: int,
        distributed: bool,
    ):
        self.store = store
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.buffer_blocks = buffer_blocks if shuffle else 1
        self.rank, self.world = _replicas() if distributed else (0, 1)
        indices = np.sort(np.asarray(indices))
        # Blocks of the file that hold at least one of our rows, with the rows they hold.
        block_of = indices // block_rows
        starts = np.flatnonzero(np.diff(block_of, prepend=-1))
        self.blocks = [
            (int(b) * block_rows, rows)
            for b, rows in zip(block_of[starts], np.split(indices, starts[1:]), strict=True)
        ]
        self.block_rows = block_rows
        self.epoch = 0
        self.per_rank = math.ceil(len(indices) / self.world)
        rounding = math.floor if drop_last else math.ceil
        self.n_batches = max(1, rounding(self.per_rank / batch_size))

    def __len__(self) -> int:
        return self.n_batches

    def _my_blocks(self, generator: np.random.Generator | None) -> list[tuple[int, np.ndarray]]:
        """The process's share of the rows, in blocks: the rank-th run of ``per_rank`` rows.

        Processes draw the same block order; a block on a boundary is read by both, each
        taking its own rows, so every row is served once an epoch.
        """
        order = np.arange(len(self.blocks))
        if generator is not None:
            order = generator.permutation(order)
        blocks = [self.blocks[i] for i in order]
        ends = np.cumsum([len(rows) for _, rows in blocks])
        first, last = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        mine = []
        for (start, rows), end in zip(blocks, ends, strict=True):
            begin = end - len(rows)
            if begin < last and end > first:
                mine.append((start, rows[max(first - begin, 0) : min(last, end) - begin]))
        return mine or blocks[:1]  # (more processes than rows: re-read one block)

    def _read(self, block: tuple[int, np.ndarray]) -> tuple[np.ndarray, dict]:
        start, rows = block
        stop = min(start + self.block_rows, self.store.n_obs)
        on_disk = self.store.read_backed(start, stop)
        return rows, {key: value[rows - start] for key, value in on_disk.items()}

    def _minibatch(self, rows: np.ndarray, parts: dict) -> dict[str, torch.Tensor]:
        batch = self.store.batch(torch.as_tensor(rows, dtype=torch.long))
        for key, value in parts.items():
            dtype = self.store.backed[key][1]
            batch[key] = torch.as_tensor(dense(value).astype(dtype, copy=False))
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = None
        if self.shuffle:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = np.random.default_rng(seed + self.epoch)
            self.epoch += 1
        blocks = self._my_blocks(generator)
        reads = map(self._read, blocks)
        rows, parts, offset, served = np.empty(0, dtype=np.int64), {}, 0, 0
        for _ in range(self.n_batches):
            if len(rows) - offset < self.batch_size:
                # Pool the next few blocks (enough for a batch) with what is left, and shuffle
                # them together once.
                rows, parts = rows[offset:], {k: v[offset:] for k, v in parts.items()}
                offset, n_read = 0, 0
                while n_read < self.buffer_blocks or len(rows) < self.batch_size:
                    new = next(reads, None)
                    if new is None:
                        if self.world == 1 or len(rows) or not blocks:
                            break
                        # A process short of its share (the last one) re-reads its blocks, once
                        # all its rows are served, so all processes make equal steps.
                        reads = map(self._read, blocks)
                        continue
                    rows = np.concatenate([rows, new[0]])
                    parts = {k: _concat(parts.get(k), v) for k, v in new[1].items()}
                    n_read += 1
                if generator is not None:
                    permutation = generator.permutation(len(rows))
                    rows = rows[permutation]
                    parts = {k: v[permutation] for k, v in parts.items()}
            # At most this process's share: cycling re-reads rows only to make up for it.
            take = min(self.batch_size, len(rows) - offset, self.per_rank - served)
            if take <= 0 or (self.drop_last and take < self.batch_size):
                return
            window = slice(offset, offset + take)
            yield self._minibatch(rows[window], {k: v[window] for k, v in parts.items()})
            offset += take
            served += take


def _concat(first, second):
    if first is None:
        return second
    if sparse.issparse(second):
        return sparse.vstack([first, second], format="csr")
    return np.concatenate([first, second])


class StreamingDataLoader(DataLoader):
    """Streams minibatches of a backed AnnData from disk, with memory that does not grow.

    Rows are read in contiguous blocks (one fast sequential read each, never a random
    per-row access), a few blocks are pooled in a buffer and shuffled together, and
    minibatches are cut from the buffer. Block order is reshuffled every epoch; under
    distributed training each process serves its own share of the rows. Everything registered
    besides the on-disk matrix (batch, covariates) is small and served from memory.

    Parameters
    ----------
    store
        Built with ``skip_backed=True``: its in-memory arrays plus the on-disk ones.
    indices
        Rows this loader serves.
    batch_size
        Minibatch size (per device under distributed training).
    shuffle
        Shuffle blocks and rows within the buffer each epoch.
    drop_last
        Drop the last, incomplete minibatch.
    distributed_sampler
        Shard blocks across the processes of a distributed job.
    block_rows
        Rows per contiguous read.
    buffer_blocks
        Blocks pooled and shuffled together; memory peaks at about twice
        ``block_rows * buffer_blocks`` rows (the pool and its shuffled copy). Rows mix only
        within the pool: for a file grouped by sample or cell type, raise ``buffer_blocks``
        (or write the file in a shuffled order).
    **kwargs
        Accepted for compatibility with :class:`scvi.dataloaders.AnnDataLoader` and ignored;
        names neither it nor torch's ``DataLoader`` takes (typos) are refused.

    Examples
    --------
    >>> adata = anndata.read_h5ad("atlas.h5ad", backed="r")
    >>> ZINBAutoencoder.setup_anndata(adata)
    >>> model = ZINBAutoencoder(adata)
    >>> model.train(data_mode="stream")  # uses this loader
    """

    def __init__(
        self,
        store: TensorStore,
        indices: np.ndarray,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        distributed_sampler: bool = False,
        block_rows: int = 4096,
        buffer_blocks: int = 8,
        **kwargs,
    ):
        check_loader_arguments(kwargs)
        for name, value in (("block_rows", block_rows), ("buffer_blocks", buffer_blocks)):
            if not (isinstance(value, int | np.integer) and value >= 1):
                raise InputError(f"{name} must be a whole number of at least 1, not {value!r}.")
        stream = _BlockStream(
            store,
            indices,
            batch_size,
            shuffle,
            drop_last,
            block_rows,
            buffer_blocks,
            distributed_sampler,
        )
        super().__init__(stream, batch_size=None, num_workers=0)


class RequestedOrderDataset(AnnTorchDataset):
    """scvi-tools' dataset, with backed rows returned in the order they were asked for.

    For backed data scvi-tools sorts each minibatch's indices (h5py reads increasing indices
    only) and returns the rows sorted, so outputs for unsorted ``indices`` came back in another
    order than their labels. Here rows are read sorted and once each, then put back in the
    requested order (repeats included).
    """

    def __getitem__(self, indexes):
        if isinstance(indexes, int | slice) or not self.adata_manager.adata.isbacked:
            return super().__getitem__(indexes)
        indexes = np.asarray(indexes)
        if np.all(np.diff(indexes) > 0):
            return super().__getitem__(indexes)
        unique, inverse = np.unique(indexes, return_inverse=True)
        return {key: value[inverse] for key, value in super().__getitem__(unique).items()}


def in_requested_order(loader):
    """``loader``, its scvi-tools dataset made a :class:`RequestedOrderDataset`."""
    dataset = getattr(loader, "dataset", None)  # scvi-tools gives no loader for an empty split
    while not isinstance(dataset, AnnTorchDataset) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # torch's Subset over the indices
    if type(dataset) is AnnTorchDataset:
        dataset.__class__ = RequestedOrderDataset
    return loader
