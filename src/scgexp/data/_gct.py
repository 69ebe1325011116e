"""Readers for the Connectivity Map's GCT (text) and GCTX (HDF5) formats.

GCT 1.2/1.3 and GCTX store a gene × sample matrix with row (gene) and column (sample)
metadata. The readers return AnnData oriented samples × genes, as scverse expects.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

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


# pandas' default missing-value markers and cmapPy's -666, applied to the matrix only.
_MISSING = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"]
_MISSING += ["1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
_MISSING += ["-666", "-666.0"]


def _metadata_missing_as_nan(table: pd.DataFrame) -> pd.DataFrame:
    """The Connectivity Map's missing-value marker -666 (text or number) as NaN, as cmapPy does."""
    return table.mask(table.isin(["-666", "-666.0", -666]))


def _file_start(path: str, compression: str | None, size: int = 4) -> bytes:
    """The first ``size`` bytes of the file (decompressed with ``compression``)."""
    opener = gzip.open if compression else open
    with opener(path, "rb") as handle:
        return handle.read(size)


def read_gct(path: str) -> AnnData:
    """Read a GCT file (version 1.2 or 1.3, plain or gzipped) as samples × genes.

    Fields are read as written (GCT has no quoting); identifiers stay text (``00123`` stays
    ``00123``); the Connectivity Map's missing-value marker -666 becomes NaN, in the matrix and
    in the metadata, as cmapPy reads it. The matrix must match the sizes on the file's second
    line, so a truncated file is refused.

    Parameters
    ----------
    path
        The ``.gct`` or gzipped ``.gct.gz`` file.

    Returns
    -------
    AnnData of samples × genes (float32 ``X``), with the column metadata in ``obs`` and the row
    metadata in ``var`` (GCT 1.2: ``var["description"]``), all as text.

    Examples
    --------
    >>> adata = scgexp.data.read_gct("profiles.gct.gz")
    """
    compression = "gzip" if _file_start(path, None).startswith(b"\x1f\x8b") else None
    if _file_start(path, compression).startswith(b"\x89HDF"):
        gunzip = " after gunzipping it" if compression else ""
        raise InputError(f"{path} is a GCTX (HDF5) file; read it with read_gctx{gunzip}.")
    opener = gzip.open if compression else open
    # utf-8-sig: Excel's byte-order mark; undecodable bytes do not change the tab counts.
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
        version = handle.readline().strip()
        dims = handle.readline().strip().split("\t")
        if version not in ("#1.2", "#1.3"):
            raise InputError(
                f"{path} is not a GCT file (first line {version!r}, not '#1.2'/'#1.3')."
            )
        n_sizes = 2 if version == "#1.2" else 4
        if len(dims) < n_sizes or not all(d.strip().isdigit() for d in dims[:n_sizes]):
            sizes = "rows, columns" + (", row and column metadata fields" if n_sizes == 4 else "")
            raise InputError(
                f"{path}: a GCT {version[1:]} file's second line holds {n_sizes} sizes separated "
                f"by tabs ({sizes}), not {chr(9).join(dims)!r}."
            )
        n_genes, n_samples = int(dims[0]), int(dims[1])
        n_row_meta, n_col_meta = (1, 0) if version == "#1.2" else (int(dims[2]), int(dims[3]))
        width = 1 + n_row_meta + n_samples
        blank = []  # lines of spaces or tabs only, as Excel leaves (0-based, for pandas)
        for number, line in enumerate(handle, start=3):
            line = line.rstrip("\r\n")
            if not line.strip():
                blank.append(number - 1)
                continue
            n_fields = line.count("\t") + 1
            if line.endswith("\t") and n_fields == width + 1:
                n_fields = width  # a tab ending the line
            if n_fields != width:
                raise InputError(
                    f"{path}: line {number} holds {n_fields} fields, not the {width} that line 2 "
                    f"declares (an identifier, {n_row_meta} metadata field(s), {n_samples} "
                    "values)."
                )
    # All text first (identifiers stay as written; only the matrix becomes numbers), with a
    # spare column for the tab that may end a line.
    raw = pd.read_csv(
        path,
        sep="\t",
        skiprows=[0, 1, *blank],
        header=None,
        names=range(width + 1),
        index_col=False,
        compression=compression,
        dtype=str,
        keep_default_na=False,
        quoting=csv.QUOTE_NONE,
        encoding="utf-8-sig",
        encoding_errors="replace",  # as the first pass: e.g. a Latin-1 "µ" in a description
    ).iloc[:, :width]
    if raw.empty:
        raise InputError(f"{path} ends after its sizes: line 3 should name the samples.")
    header = raw.iloc[0].tolist()
    row_fields = header[1 : 1 + n_row_meta]
    col_fields = raw.iloc[1 : 1 + n_col_meta, 0].tolist()
    for kind, fields in (("row", row_fields), ("column", col_fields)):
        repeated = sorted({f for f in fields if fields.count(f) > 1})
        if repeated:
            raise InputError(
                f"{path} names the {kind} metadata field(s) {repeated} more than once; one of "
                "each would be lost. Rename them in the file so that each name is unique."
            )
    obs = pd.DataFrame(
        {
            row.iloc[0]: row.iloc[1 + n_row_meta :].to_numpy()
            for _, row in raw.iloc[1 : 1 + n_col_meta].iterrows()
        },
        index=pd.Index(header[1 + n_row_meta :], dtype=str),
    )
    body = raw.iloc[1 + n_col_meta :]
    var = pd.DataFrame(
        body.iloc[:, 1 : 1 + n_row_meta].to_numpy(),
        index=pd.Index(body.iloc[:, 0].to_numpy(), dtype=str),
        columns=row_fields,
    )
    if version == "#1.2":
        var = var.rename(columns=str.lower)  # "Description"
    if len(body) != n_genes:
        raise InputError(
            f"{path} declares {n_genes} genes on line 2 but holds {len(body)} gene lines: is the "
            "file complete, and are the sizes on line 2 right?"
        )
    matrix = body.iloc[:, 1 + n_row_meta :]
    try:
        values = matrix.mask(matrix.isin(_MISSING)).to_numpy(dtype=np.float32, copy=True).T
    except ValueError as error:
        hint = " (are the metadata sizes on line 2 right?)" if version == "#1.3" else ""
        raise InputError(f"{path} holds a value that is not a number{hint}: {error}") from None
    return AnnData(X=values, obs=_metadata_missing_as_nan(obs), var=_metadata_missing_as_nan(var))


def read_gctx(path: str) -> AnnData:
    """Read a GCTX (HDF5) file, such as LINCS Level 3–5 data, as samples × genes.

    The layout is ``/0/DATA/0/matrix`` (samples × genes, as stored by cmapPy) with row metadata
    in ``/0/META/ROW`` and column metadata in ``/0/META/COL`` (each holding an ``id`` dataset).
    The whole matrix is read into memory (float32): the full GSE92742 Level 5 file needs about
    23 GB, Level 3 about 60 GB; subset such files first (e.g. cmapPy's ``parse(rid=, cid=)``).
    A square matrix is read as stored (samples × genes); -666 in the metadata becomes NaN.

    Parameters
    ----------
    path
        The ``.gctx`` file (gunzipped).

    Returns
    -------
    AnnData of samples × genes (float32 ``X``), with the column metadata in ``obs`` and the row
    metadata in ``var``.

    Examples
    --------
    >>> adata = scgexp.data.read_gctx("level3_subset.gctx")
    """
    with _open_gctx(path) as handle:
        if "0/DATA/0/matrix" not in handle:
            raise InputError(f"{path} has no /0/DATA/0/matrix dataset; is it a GCTX file?")
        matrix = np.asarray(handle["0/DATA/0/matrix"], dtype=np.float32)
        var, obs = (_gctx_metadata(handle, side, path) for side in ("ROW", "COL"))
    if matrix.shape != (len(obs), len(var)):
        if matrix.shape == (len(var), len(obs)):
            matrix = matrix.T
        else:
            raise InputError(
                f"{path}: matrix shape {matrix.shape} fits neither {len(obs)} samples × "
                f"{len(var)} genes nor its transpose."
            )
    return AnnData(X=matrix, obs=_metadata_missing_as_nan(obs), var=_metadata_missing_as_nan(var))


def _open_gctx(path: str) -> h5py.File:
    if not Path(path).is_file():
        raise FileNotFoundError(f"No file {path}.")
    if _file_start(path, None).startswith(b"\x1f\x8b"):
        raise InputError(f"{path} is gzipped: gunzip it first (GCTX files are HDF5).")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path} is not a GCTX (HDF5) file: {error}") from error


def _gctx_metadata(handle: h5py.File, side: str, path: str) -> pd.DataFrame:
    """Row (``"ROW"``, genes) or column (``"COL"``, samples) metadata, indexed by ``id``."""
    if f"0/META/{side}/id" not in handle:
        raise InputError(f"{path} has no /0/META/{side}/id dataset; is it a GCTX file?")
    group = handle[f"0/META/{side}"]
    ids = _decode(group["id"][()])
    columns = {k: _decode(group[k][()]) for k in group if k != "id"}
    return pd.DataFrame(columns, index=pd.Index(ids.astype(str)))


def is_gct_or_gctx(path) -> bool:
    """Whether ``path`` is a local file (gzipped or not) that starts as GCT or GCTX files do.

    URLs and open files are not (pandas reads those).
    """
    if not isinstance(path, str | os.PathLike) or not Path(path).is_file():
        return False
    compression = "gzip" if _file_start(path, None).startswith(b"\x1f\x8b") else None
    start = _file_start(path, compression, size=7).removeprefix(b"\xef\xbb\xbf")  # Excel's BOM
    return start.startswith((b"\x89HDF", b"#1.2", b"#1.3"))


def read_gene_table(path: str) -> pd.DataFrame:
    """The genes (rows) of a GCT or GCTX file and their metadata; a GCTX's matrix is not read.

    Returns a table with the row identifiers in column ``id`` (``rid`` where a metadata column
    is named id) and the row metadata, all as text (-666 as NaN), as ``read_landmark_genes``
    reads a ``gene_info`` table. Whole numbers stay whole (Entrez ID 5720, not 5720.0, also in
    a column where -666 made the others floats).
    """
    if _file_start(path, None).startswith(b"\x89HDF"):
        with _open_gctx(path) as handle:
            var = _metadata_missing_as_nan(_gctx_metadata(handle, "ROW", path))
    else:
        var = read_gct(path).var
    text = pd.DataFrame(index=var.index)
    for name, column in var.items():
        if column.dtype.kind == "f" and (column.dropna() % 1 == 0).all():
            column = column.astype("Int64")
        text[name] = column.astype(str).where(column.notna(), np.nan)  # 1 and "1" alike
    clash = any(str(name).strip().lower() == "id" for name in text.columns)
    return text.rename_axis("rid" if clash else "id").reset_index()
