"""MuData whose modalities hold different cells, made into the layout multimodal models read."""

from __future__ import annotations

import warnings
from copy import deepcopy

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from scgexp.data._checks import InputError
from scgexp.data._matrix import named_layers


def _rows_at(matrix, positions: np.ndarray, fill=0):
    """``matrix``'s rows at ``positions``, and rows of ``fill`` where a position is -1.

    One ``fill`` row is stacked under the matrix and indexed for the missing ones, so sparse
    stays sparse and every dtype is kept (NaN ``fill`` makes integers float).
    """
    positions = np.where(positions >= 0, positions, matrix.shape[0])
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        empty = sparse.csr_matrix((1, matrix.shape[1]), dtype=matrix.dtype)
        return sparse.vstack([matrix, empty], format="csr")[positions]
    matrix = np.asarray(matrix)
    dtype = matrix.dtype if fill == 0 else np.promote_types(matrix.dtype, np.float32)
    extra = np.full((1, *matrix.shape[1:]), fill, dtype=dtype)
    return np.concatenate([matrix.astype(dtype, copy=False), extra])[positions]


def _in_order(value, order: np.ndarray, both: bool = False):
    """A copy of ``value`` with its rows (``both``: and columns) at ``order``; format kept."""
    if np.array_equal(order, np.arange(len(order))):
        return value.copy()
    if isinstance(value, pd.DataFrame):
        return value.iloc[order].copy()
    if sparse.issparse(value):
        rows = value.tocsr()[order]
        return (rows.tocsc()[:, order] if both else rows).asformat(value.format)
    rows = value[order]  # arrays of any kind: fancy indexing copies
    return rows[:, order] if both else rows


def _reindexed_obs(obs: pd.DataFrame, cells: pd.Index) -> pd.DataFrame:
    """``obs`` at ``cells``, missing for new cells; boolean columns stay writable (nullable)."""
    booleans = [column for column in obs.columns if obs[column].dtype == bool]
    return obs.astype(dict.fromkeys(booleans, "boolean")).reindex(cells)


def _padded_modality(adata: AnnData, cells: pd.Index) -> AnnData:
    positions = adata.obs_names.get_indexer(cells)
    obsm = {}
    for key, value in adata.obsm.items():  # embeddings of absent cells are unknown: NaN
        if isinstance(value, pd.DataFrame):
            obsm[key] = value.reindex(cells)
        else:
            obsm[key] = _rows_at(value, positions, fill=0 if sparse.issparse(value) else np.nan)
    raw = None
    if adata.raw is not None:  # rows of the same cells, so padded the same way
        raw = {"X": _rows_at(adata.raw.X, positions), "var": adata.raw.var.copy()}
        raw["varm"] = {key: value.copy() for key, value in adata.raw.varm.items()}
    return AnnData(
        X=None if adata.X is None else _rows_at(adata.X, positions),
        obs=_reindexed_obs(adata.obs, cells),
        var=adata.var.copy(),
        layers={key: _rows_at(value, positions) for key, value in named_layers(adata).items()},
        obsm=obsm,
        varm={key: value.copy() for key, value in adata.varm.items()},
        uns=deepcopy(dict(adata.uns)),
        raw=raw,
    )


def _presence_flag(obs: pd.DataFrame, key: str, data_type: str) -> np.ndarray:
    """A ``presence_keys`` column as booleans (above 0.5, as in training); unreadable: refused."""
    column = obs[key]
    if not pd.api.types.is_numeric_dtype(column):  # bool and nullable boolean are numeric
        raise InputError(
            f"obs[{key!r}] must be boolean (True where the cell has {data_type} data), not "
            f"{column.dtype}. If it holds True/False values, convert them with "
            f"`obs[{key!r}] = obs[{key!r}].astype(bool)` (text such as 'False' would become "
            "True: map it first)."
        )
    values = column.astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    if not np.isfinite(values).all():
        raise InputError(
            f"obs[{key!r}] has missing values (or infinite ones); set each cell's flag to True or "
            "False first."
        )
    return values > 0.5


def _is_membership_mask(value) -> bool:
    """Whether an ``obsm`` / ``varm`` entry looks like MuData's map of a modality's members."""
    shape = np.shape(value)
    is_bool = isinstance(value, np.ndarray) and value.dtype == np.bool_
    return is_bool and (len(shape) == 1 or shape[1:] == (1,))


def _feature_order(mdata: MuData) -> np.ndarray | None:
    """Rows of ``mdata.var`` holding the modalities' features in turn; None where they differ.

    A new MuData lists them so; mudata >= 0.4's ``update()`` appends a modality's new features
    after the other modalities'. Its ``varmap`` (each row's 1-based position in a modality)
    places every row, also of names that modalities share.
    """
    order = []
    for name, adata in mdata.mod.items():
        positions = np.asarray(mdata.varmap[name]).ravel() if name in mdata.varmap else None
        if positions is None or len(positions) != mdata.n_vars:
            return None
        rows = np.flatnonzero(positions)
        rows = rows[np.argsort(positions[rows])]
        if not mdata.var_names[rows].equals(adata.var_names):
            return None  # features changed without update()
        order.append(rows)
    order = np.concatenate([np.zeros(0, dtype=int), *order])
    return order if np.array_equal(np.sort(order), np.arange(mdata.n_vars)) else None


def pad_modalities(mdata: MuData, flag_prefix: str | None = "has_") -> MuData:
    """A copy of ``mdata`` in which every modality holds every cell, in ``mdata``'s order.

    Multimodal data often keep each modality's own cells (mosaic data: some cells profiled for
    RNA only, some for ATAC only). :class:`~scgexp.model.MultiVAE`, like scvi-tools' MULTIVI,
    reads the modalities row by row, so a cell missing a modality needs an all-zero row there.
    This adds those rows to ``X`` and every layer (sparse stays sparse, dtypes are kept),
    reindexes each modality's ``obs`` (missing values for the added cells; boolean columns
    become pandas' nullable ``"boolean"``) and ``obsm`` (NaN rows, zero rows if sparse);
    the modalities' ``obsp`` and ``varp`` graphs, which would be wrong for the new cells, are not
    carried over (the MuData's own are: its cells do not change). ``mdata`` itself is not
    changed, and the copy shares no arrays with it.

    Parameters
    ----------
    mdata
        MuData whose ``obs_names`` are the union of its modalities' cells (as MuData builds).
    flag_prefix
        Adds a boolean ``obs[f"{flag_prefix}{modality}"]`` column per modality, ``True`` where
        the cell has it, to pass as MultiVAE's ``presence_keys``; ``None``: no flags (MultiVAE
        then counts a cell with an all-zero row as missing that modality). Where ``mdata``
        already has such a column (data padded before), a cell keeps it only if it was
        ``True`` there too.

    Returns
    -------
    The padded copy.

    Examples
    --------
    >>> padded = scgexp.data.pad_modalities(mdata)
    >>> MultiVAE.setup_mudata(
    ...     padded,
    ...     modalities={"rna_layer": "rna", "atac_layer": "atac"},
    ...     presence_keys={"rna": "has_rna", "atac": "has_atac"},
    ... )
    """
    if not isinstance(mdata, MuData):
        raise InputError(f"pad_modalities takes a MuData; got {type(mdata).__name__}.")
    if mdata.isbacked or any(adata.isbacked for adata in mdata.mod.values()):
        raise InputError(
            "pad_modalities needs the MuData in memory; read it with `mudata.read_h5mu(path)` "
            "(not backed)."
        )
    cells = mdata.obs_names
    for name, adata in [(None, mdata), *mdata.mod.items()]:
        if not adata.obs_names.is_unique:
            where = "The MuData" if name is None else f"Modality {name!r}"
            raise InputError(
                f"{where} has repeated cell names; make them unique first "
                "(`obs_names_make_unique()`), so each cell's rows can be matched."
            )
    for name, adata in mdata.mod.items():
        unknown = adata.obs_names.difference(cells)
        if len(unknown):
            raise InputError(
                f"Modality {name!r} has {len(unknown)} cells the MuData does not list (e.g. "
                f"{list(unknown[:3])}); call `mdata.update()` first."
            )
    flags = {}
    for name, adata in mdata.mod.items() if flag_prefix is not None else ():
        key, flags[name] = f"{flag_prefix}{name}", cells.isin(adata.obs_names)
        if key in mdata.obs:  # read as MultiVAE reads it; missing or text values are refused
            flags[name] &= _presence_flag(mdata.obs, key, name)
    order = _feature_order(mdata)
    if order is None:
        raise InputError(
            "The MuData's features differ from its modalities' (changed after it was built); "
            "call `mdata.update()` first."
        )
    # MuData's maps of which cells and features each modality holds are its own; those of a
    # modality deleted before (kept by update(), in obsm and varm alike) are left out.
    stale = {
        key
        for key in mdata.obsm
        if key not in mdata.mod
        and key in mdata.varm
        and _is_membership_mask(mdata.obsm[key])
        and _is_membership_mask(mdata.varm[key])
    }
    modalities = {name: _padded_modality(adata, cells) for name, adata in mdata.mod.items()}
    with warnings.catch_warnings():  # mudata's notice of a future default
        warnings.filterwarnings("ignore", r"From 0\.4 \.update\(\)", FutureWarning)
        padded = MuData(modalities)
        padded.obs = mdata.obs.copy()
        padded.var = mdata.var.iloc[order].copy()
    kept = [key for key in mdata.obsm if key not in mdata.mod and key not in stale]
    padded.obsm.update({key: mdata.obsm[key].copy() for key in kept})
    kept = [key for key in mdata.varm if key not in mdata.mod and key not in stale]
    padded.varm.update({key: _in_order(mdata.varm[key], order) for key in kept})
    padded.obsp.update({key: value.copy() for key, value in mdata.obsp.items()})
    padded.varp.update({key: _in_order(v, order, both=True) for key, v in mdata.varp.items()})
    padded.uns.update(deepcopy(dict(mdata.uns)))
    for name, flag in flags.items():
        padded.obs[f"{flag_prefix}{name}"] = flag
    return padded
