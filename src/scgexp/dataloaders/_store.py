"""Registered arrays held as tensors, gathered into dense minibatches by row index."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pandas as pd
import torch
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse

from scgexp._compat import registry_key_to_default_dtype
from scgexp.nn._tensors import as_tensor

if TYPE_CHECKING:
    from scvi.data import AnnDataManager

logger = logging.getLogger(__name__)

_BACKED = (CSRDataset, CSCDataset, h5py.Dataset)


def is_backed(array) -> bool:
    """Whether ``array`` lives on disk (a backed AnnData's ``X``)."""
    return isinstance(array, _BACKED)


class _CSRRows:
    """A CSR matrix whose ``rows(index)`` densifies only the rows asked for.

    On the CPU the matrix stays a scipy CSR (its compiled row gather is the fastest there); on
    an accelerator it becomes three tensors on the device and rows are gathered by torch ops.
    """

    def __init__(
        self, matrix: sparse.spmatrix, dtype: np.dtype, device: torch.device, on_host=None
    ):
        matrix = sparse.csr_matrix(matrix)
        if not matrix.has_canonical_format:
            matrix = matrix.copy()  # never touch the user's matrix
            matrix.sum_duplicates()
        self.shape = matrix.shape
        self.on_host = device.type == "cpu" if on_host is None else on_host
        if self.on_host:
            self.host = matrix.astype(dtype, copy=False)
            return
        as_index = lambda a: torch.as_tensor(a.astype(np.int64, copy=False), device=device)  # noqa: E731
        self.indptr, self.indices = as_index(matrix.indptr), as_index(matrix.indices)
        self.data = torch.as_tensor(matrix.data.astype(dtype, copy=False), device=device)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        if self.on_host:
            return torch.from_numpy(self.host[index.cpu().numpy()].toarray())
        start = self.indptr[index]
        counts = self.indptr[index + 1] - start
        n_rows, n_cols = len(index), self.shape[1]
        out = torch.zeros(n_rows * n_cols, dtype=self.data.dtype, device=self.data.device)
        first = torch.cumsum(counts, 0) - counts  # where each row starts in the output order
        source = torch.repeat_interleave(start - first, counts) + torch.arange(
            int(counts.sum()), device=index.device
        )
        row = torch.repeat_interleave(torch.arange(n_rows, device=index.device), counts)
        out[row * n_cols + self.indices[source]] = self.data[source]
        return out.view(n_rows, n_cols)


def _as_tensor(array, dtype: np.dtype, device: torch.device) -> torch.Tensor | _CSRRows:
    if sparse.issparse(array):
        return _CSRRows(array, dtype, device)
    if isinstance(array, pd.DataFrame):
        array = array.to_numpy()
    return as_tensor(np.asarray(array).astype(dtype, copy=False), device=device)


def registered_arrays(adata_manager: AnnDataManager) -> dict[str, tuple[object, np.dtype]]:
    """Every registered array (as stored in AnnData/MuData) with the dtype scvi loads it as."""
    arrays = {}
    for key in adata_manager.data_registry:
        array = adata_manager.get_from_registry(key)
        if isinstance(array, str):  # minified data's type marker, not an array
            continue
        arrays[key] = (array, registry_key_to_default_dtype(key))
    return arrays


def estimate_nbytes(adata_manager: AnnDataManager) -> int:
    """Bytes the registered arrays take as tensors (sparse ones as CSR)."""
    total = 0
    for array, dtype in registered_arrays(adata_manager).values():
        itemsize = np.dtype(dtype).itemsize
        if sparse.issparse(array) or isinstance(array, CSRDataset | CSCDataset):
            nnz = array.nnz if sparse.issparse(array) else array.group["data"].shape[0]
            total += nnz * (itemsize + 8) + (array.shape[0] + 1) * 8
        else:
            total += int(np.prod(array.shape)) * itemsize
    return total


class TensorStore:
    """All registered arrays of an AnnData/MuData, loaded once as tensors on one device.

    Sparse matrices stay sparse (scipy CSR on the CPU, CSR tensors on an accelerator);
    :meth:`batch` densifies only the rows of one minibatch, with the same dtypes and values
    scvi-tools' :class:`~scvi.data.AnnTorchDataset` would return. Arrays on disk (a backed
    AnnData's ``X``) are refused, or left out with ``skip_backed=True``, for
    :class:`~scgexp.dataloaders.StreamingDataLoader` to read.

    Parameters
    ----------
    adata_manager
        The manager of registered data.
    device
        Where the tensors live (the training device).
    skip_backed
        ``False``: an array on disk raises ``ValueError`` (load the data into memory first).
        ``True``: such arrays are left out (in :attr:`backed`), for streaming.

    Examples
    --------
    >>> store = TensorStore(model.adata_manager, torch.device("cpu"))
    >>> store.batch(torch.arange(128))["X"].shape  # 128 cells x the model's genes
    torch.Size([128, 500])
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        device: torch.device | str = "cpu",
        skip_backed: bool = False,
    ):
        self.device = torch.device(device)
        self.n_obs = adata_manager.adata.n_obs
        self.tensors: dict[str, torch.Tensor | _CSRRows] = {}
        self.backed: dict[str, tuple[object, np.dtype]] = {}
        for key, (array, dtype) in registered_arrays(adata_manager).items():
            if is_backed(array):
                if not skip_backed:
                    raise ValueError(f"{key!r} lives on disk; load the data into memory first.")
                self.backed[key] = (array, dtype)
            else:
                self.tensors[key] = _as_tensor(array, dtype, self.device)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense tensors of the rows ``index`` of every in-memory array."""
        index = index.to(self.device)
        return {
            key: tensor.rows(index) if isinstance(tensor, _CSRRows) else tensor[index]
            for key, tensor in self.tensors.items()
        }

    def read_backed(self, start: int, stop: int) -> dict[str, np.ndarray | sparse.spmatrix]:
        """Rows ``start:stop`` of each on-disk array, read as one contiguous block."""
        return {key: array[start:stop] for key, (array, _) in self.backed.items()}
