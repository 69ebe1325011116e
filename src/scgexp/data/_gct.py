"""Readers for the Connectivity Map's GCT (text) and GCTX (HDF5) formats.

GCT 1.2/1.3 and GCTX store a gene × sample matrix with row (gene) and column (sample)
metadata. The readers return AnnData oriented samples × genes, as scverse expects.
"""

from __future__ import annotations

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


def read_gct(path: str) -> AnnData:
    """Read a GCT file (version 1.2 or 1.3) as samples × genes.

    Examples
    --------
    >>> adata = scgexp.data.read_gct("profiles.gct")
    """
    with open(path) as handle:
        version = handle.readline().strip()
        dims = handle.readline().strip().split("\t")
    if version not in ("#1.2", "#1.3"):
        raise InputError(f"{path} is not a GCT file (first line {version!r}, not '#1.2'/'#1.3').")
    if version == "#1.2":
        table = pd.read_csv(path, sep="\t", skiprows=2, index_col=0)
        var = table.iloc[:, :1].rename(columns=lambda c: c.lower())
        matrix = table.iloc[:, 1:]
        obs = pd.DataFrame(index=matrix.columns.astype(str))
    else:
        n_row_meta, n_col_meta = int(dims[2]), int(dims[3])
        raw = pd.read_csv(path, sep="\t", skiprows=2, header=None, dtype=str)
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
        matrix = body.iloc[:, 1 + n_row_meta :].astype(np.float32)
        matrix.index = var.index
    var.index = var.index.astype(str)
    return AnnData(X=matrix.to_numpy(dtype=np.float32).T, obs=obs, var=var)


def read_gctx(path: str) -> AnnData:
    """Read a GCTX (HDF5) file, such as LINCS Level 3–5 data, as samples × genes.

    The layout is ``/0/DATA/0/matrix`` (samples × genes, as stored by cmapPy) with row metadata
    in ``/0/META/ROW`` and column metadata in ``/0/META/COL`` (each holding an ``id`` dataset).

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
