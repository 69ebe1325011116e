"""Reading matrices in row chunks, in memory or backed on disk, and small array helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Iterator

_CHUNK_ROWS = 10_000


def take_columns(matrix, positions: np.ndarray):
    """``matrix[:, positions]``, also for a backed dense matrix (h5py needs increasing indices)."""
    if isinstance(matrix, h5py.Dataset):
        unique, inverse = np.unique(positions, return_inverse=True)
        return matrix[:, unique][:, inverse]
    return matrix[:, positions]


def dense(block) -> np.ndarray:
    """A block of rows as a numpy array (densifies a sparse block)."""
    return block.toarray() if sparse.issparse(block) else np.asarray(block)


def read_dense(matrix) -> np.ndarray:
    """A whole (small) matrix as a numpy array, read in row chunks, also when backed on disk."""
    chunks = [dense(chunk) for chunk in row_chunks(matrix)]
    return np.vstack(chunks) if chunks else np.zeros(matrix.shape)


def row_chunks(matrix, chunk_rows: int = _CHUNK_ROWS) -> Iterator[np.ndarray | sparse.spmatrix]:
    """Blocks of ``chunk_rows`` rows, as stored (dense, sparse, or read from a backed matrix).

    Examples
    --------
    >>> [block.shape for block in row_chunks(np.zeros((5, 2)), chunk_rows=2)]
    [(2, 2), (2, 2), (1, 2)]
    """
    for start in range(0, matrix.shape[0], chunk_rows):
        yield matrix[start : start + chunk_rows]


def row_and_column_sums(
    matrix, binary: bool = False, log1p: bool = False, column_rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column sums of a matrix, read in row chunks (in memory or backed on disk).

    Parameters
    ----------
    matrix
        A numpy array, scipy sparse matrix, or a backed AnnData's ``X``.
    binary
        Sum ``matrix > 0`` instead of the values (e.g. open peaks per cell).
    log1p
        Sum ``log1p(matrix)`` instead of the values.
    column_rows
        Boolean mask of the rows that the column sums count (default: all rows). Row sums are
        returned for every row.

    Returns
    -------
    ``(row_sums, column_sums)`` as float64 arrays.

    Examples
    --------
    >>> n_open, cells_open = row_and_column_sums(atac.X, binary=True)
    """
    rows, columns, start = [], np.zeros(matrix.shape[1]), 0
    for chunk in row_chunks(matrix):
        if binary:
            chunk = chunk > 0
        elif log1p:
            chunk = chunk.log1p() if sparse.issparse(chunk) else np.log1p(chunk)
        # Sums in float64: float16 counts would round, and overflow to inf past 65,504.
        rows.append(np.asarray(chunk.sum(axis=1, dtype=np.float64)).ravel())
        if column_rows is not None:
            chunk = chunk[np.asarray(column_rows[start : start + chunk.shape[0]], dtype=bool)]
        start += rows[-1].shape[0]
        columns += np.asarray(chunk.sum(axis=0, dtype=np.float64)).ravel()
    return np.concatenate(rows) if rows else np.zeros(0), columns


def all_finite(matrix) -> bool:
    """Whether a matrix (dense, sparse or backed) holds no NaN or infinite value, read in chunks.

    Examples
    --------
    >>> all_finite(adata.X)
    True
    """
    return all(np.isfinite(stored_values(chunk)).all() for chunk in row_chunks(matrix))


def stored_values(chunk) -> np.ndarray:
    """The values a block stores: a sparse block's non-zero entries, else all of them.

    Examples
    --------
    >>> stored_values(sparse.csr_matrix([[0.0, 2.0], [0.0, 0.0]]))
    array([2.])
    """
    if sparse.issparse(chunk):
        return np.asarray(chunk.data)
    return np.asarray(chunk)


def mean_and_scale(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of ``values`` (scale 1 where a column is constant).

    Examples
    --------
    >>> mean_and_scale(np.array([[1.0, 5.0], [3.0, 5.0]]))
    (array([2., 5.]), array([1., 1.]))
    """
    values = np.asarray(values, dtype=np.float64)
    mean, std = values.mean(0), values.std(0)
    # (constant columns keep a rounding residue of about 1e-16 × their value)
    return mean, np.where(std > 1e-9 * np.abs(mean), std, 1.0)


def positions_among(present: pd.Index, kept: np.ndarray, names) -> np.ndarray:
    """Column of each of ``names`` in ``present``, among the columns ``kept`` marks (-1: none).

    Examples
    --------
    >>> positions_among(pd.Index(["a", "b", "a", "c"]), np.array([1, 1, 0, 1], bool), ["c", "x"])
    array([ 3, -1])
    """
    positions = present[kept].get_indexer(names)
    found = positions >= 0  # (np.where would index an empty array with -1)
    positions[found] = np.flatnonzero(kept)[positions[found]]
    return positions


def named_layers(adata) -> dict:
    """``adata.layers`` by name: without the ``None`` entry (``X``) of anndata ≥ 0.13.

    Examples
    --------
    >>> adata = scgexp.data.simulate_scrna(n_cells=5, n_genes=3)
    >>> list(named_layers(adata))
    ['counts', 'true_mean']
    """
    return {key: value for key, value in adata.layers.items() if key is not None}
