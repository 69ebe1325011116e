"""Readers for the Connectivity Map's GCT (text) and GCTX (HDF5) formats.

GCT 1.2/1.3 and GCTX store a gene × sample matrix with row (gene) and column (sample)
metadata. The readers return AnnData oriented samples × genes, as scverse expects.
"""

from __future__ import annotations

import gzip
from functools import partial

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData

from scgexp.data._checks import InputError


def _decode(values) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "S" or values.dtype.kind == "O":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values


# pandas' default missing-value markers, applied to the matrix only (identifiers stay text).
_MISSING = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"]
_MISSING += ["1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _without_trailing_tab(table: pd.DataFrame) -> pd.DataFrame:
    """Drop the unnamed, empty last column that a tab at the end of every line adds."""
    last = table.columns[-1]
    unnamed = not isinstance(last, str) or last.startswith("Unnamed:")
    if unnamed and (table[last].str.strip() == "").all():
        return table.iloc[:, :-1]
    return table


def read_gct(path: str) -> AnnData:
    """Read a GCT file (version 1.2 or 1.3, plain or gzipped) as samples × genes.

    Identifiers are read as text (``00123`` stays ``00123``); the matrix must match the size
    on the file's second line, so a truncated file is refused.

    Examples
    --------
    >>> adata = scgexp.data.read_gct("profiles.gct.gz")
    """
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"\x89HDF"):
        raise InputError(f"{path} is a GCTX (HDF5) file; read it with read_gctx.")
    compression = "gzip" if magic.startswith(b"\x1f\x8b") else None
    opener = gzip.open if compression else open
    with opener(path, "rt") as handle:
        version = handle.readline().strip()
        dims = handle.readline().strip().split("\t")
    if version not in ("#1.2", "#1.3"):
        raise InputError(f"{path} is not a GCT file (first line {version!r}, not '#1.2'/'#1.3').")
    n_sizes = 2 if version == "#1.2" else 4
    if len(dims) < n_sizes or not all(d.strip().isdigit() for d in dims[:n_sizes]):
        raise InputError(
            f"{path}: a GCT {version[1:]} file's second line holds {n_sizes} sizes separated by "
            f"tabs (rows, columns{', row and column metadata fields' * (n_sizes == 4)}), not "
            f"{chr(9).join(dims)!r}."
        )
    # All text first: identifiers stay as written; only the matrix becomes numbers.
    read = partial(
        pd.read_csv,
        path,
        sep="\t",
        skiprows=2,
        compression=compression,
        dtype=str,
        keep_default_na=False,
    )
    if version == "#1.2":
        table = _without_trailing_tab(read())
        table = table.set_index(table.columns[0])
        var = table.iloc[:, :1].rename(columns=lambda c: c.lower())
        matrix = table.iloc[:, 1:]
        obs = pd.DataFrame(index=matrix.columns.astype(str))
    else:
        n_row_meta, n_col_meta = int(dims[2]), int(dims[3])
        raw = _without_trailing_tab(read(header=None))
        header = raw.iloc[0].tolist()
        sample_ids = header[1 + n_row_meta :]
        col_meta = raw.iloc[1 : 1 + n_col_meta]
        obs = pd.DataFrame(
            {row.iloc[0]: row.iloc[1 + n_row_meta :].to_numpy() for _, row in col_meta.iterrows()},
            index=pd.Index(sample_ids, dtype=str),
        )
        body = raw.iloc[1 + n_col_meta :]
        var = pd.DataFrame(
            body.iloc[:, 1 : 1 + n_row_meta].to_numpy(),
            index=body.iloc[:, 0].astype(str).to_numpy(),
            columns=header[1 : 1 + n_row_meta],
        )
        matrix = body.iloc[:, 1 + n_row_meta :]
        matrix.index = var.index
    try:
        values = matrix.mask(matrix.isin(_MISSING)).to_numpy(dtype=np.float32).T
        declared = [int(n) for n in dims[:2]]
    except ValueError as error:
        raise InputError(f"{path} holds a value that is not a number: {error}") from None
    if declared != list(values.shape[::-1]):
        raise InputError(
            f"{path} declares {dims[0]} genes × {dims[1]} samples on its second line but holds "
            f"{values.shape[1]} × {values.shape[0]} (truncated?)."
        )
    var.index = var.index.astype(str)
    return AnnData(X=values, obs=obs, var=var)


def read_gctx(path: str) -> AnnData:
    """Read a GCTX (HDF5) file, such as LINCS Level 3–5 data, as samples × genes.

    The layout is ``/0/DATA/0/matrix`` (samples × genes, as stored by cmapPy) with row metadata
    in ``/0/META/ROW`` and column metadata in ``/0/META/COL`` (each holding an ``id`` dataset).
    The whole matrix is read into memory (float32): the full GSE92742 Level 5 file needs about
    23 GB, Level 3 about 60 GB; subset such files first (e.g. cmapPy's ``parse(rid=, cid=)``).

    Examples
    --------
    >>> adata = scgexp.data.read_gctx("level3_subset.gctx")
    """
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path} is not a GCTX (HDF5) file: {error}") from error
    with handle:
        if "0/DATA/0/matrix" not in handle:
            raise InputError(f"{path} has no /0/DATA/0/matrix dataset; is it a GCTX file?")
        matrix = np.asarray(handle["0/DATA/0/matrix"], dtype=np.float32)
        tables = {}
        for side in ("ROW", "COL"):
            if f"0/META/{side}/id" not in handle:
                raise InputError(f"{path} has no /0/META/{side}/id dataset; is it a GCTX file?")
            group = handle[f"0/META/{side}"]
            ids = _decode(group["id"][()])
            columns = {k: _decode(group[k][()]) for k in group if k != "id"}
            tables[side] = pd.DataFrame(columns, index=pd.Index(ids.astype(str)))
    var, obs = tables["ROW"], tables["COL"]
    if matrix.shape != (len(obs), len(var)):
        if matrix.shape == (len(var), len(obs)):
            matrix = matrix.T
        else:
            raise InputError(
                f"{path}: matrix shape {matrix.shape} fits neither {len(obs)} samples × "
                f"{len(var)} genes nor its transpose."
            )
    return AnnData(X=matrix, obs=obs, var=var)
