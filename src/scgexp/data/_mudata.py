"""MuData whose modalities hold different cells, made into the layout multimodal models read."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from scgexp.data._checks import InputError


def _rows_at(matrix, positions: np.ndarray):
    """``matrix``'s rows at ``positions``, and rows of zeros where a position is -1."""
    present = positions >= 0
    if sparse.issparse(matrix):
        rows = sparse.csr_matrix(matrix)[np.where(present, positions, 0)]
        return sparse.csr_matrix(sparse.diags(present.astype(rows.dtype)) @ rows)
    matrix = np.asarray(matrix)
    padded = np.zeros((len(positions), *matrix.shape[1:]), dtype=matrix.dtype)
    padded[present] = matrix[positions[present]]
    return padded


def _padded_modality(adata: AnnData, cells: pd.Index) -> AnnData:
    positions = adata.obs_names.get_indexer(cells)
    obsm = {}
    for key, value in adata.obsm.items():  # embeddings of absent cells are unknown: NaN
        if isinstance(value, pd.DataFrame):
            obsm[key] = value.reindex(cells)
        else:
            values = np.asarray(value.toarray() if sparse.issparse(value) else value, float)
            obsm[key] = np.full((len(cells), *values.shape[1:]), np.nan)
            obsm[key][positions >= 0] = values[positions[positions >= 0]]
    return AnnData(
        X=_rows_at(adata.X, positions),
        obs=adata.obs.reindex(cells),
        var=adata.var.copy(),
        layers={key: _rows_at(value, positions) for key, value in adata.layers.items()},
        obsm=obsm,
        varm=dict(adata.varm),
        uns=dict(adata.uns),
    )


def pad_modalities(mdata: MuData, flag_prefix: str | None = "has_") -> MuData:
    """A copy of ``mdata`` in which every modality holds every cell, in ``mdata``'s order.

    Multimodal data often keep each modality's own cells (mosaic data: some cells profiled for
    RNA only, some for ATAC only). :class:`~scgexp.model.MultiVAE`, like scvi-tools' MULTIVI,
    reads the modalities row by row, so a cell missing a modality needs an all-zero row there.
    This adds those rows to ``X`` and every layer (sparse stays sparse), reindexes each
    modality's ``obs`` (missing values for the added cells) and ``obsm`` (NaN rows); ``obsp``
    graphs, which would be wrong for the new cells, are not carried over. ``mdata`` itself is
    not changed.

    Parameters
    ----------
    mdata
        MuData whose ``obs_names`` are the union of its modalities' cells (as MuData builds).
    flag_prefix
        Adds a boolean ``obs[f"{flag_prefix}{modality}"]`` column per modality, ``True`` where
        the cell has it, to pass as MultiVAE's ``presence_keys``; ``None``: no flags (MultiVAE
        then counts a cell with an all-zero row as missing that modality).

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
        raise InputError(f"pad_modalities takes a MuData, not a {type(mdata).__name__}.")
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
    modalities = {name: _padded_modality(adata, cells) for name, adata in mdata.mod.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        padded = MuData(modalities)
        padded.obs = mdata.obs.copy()
    # (obsm[<modality>] is MuData's own map of which cells each modality holds)
    padded.obsm.update({k: v for k, v in mdata.obsm.items() if k not in mdata.mod})
    padded.uns.update(dict(mdata.uns))
    if flag_prefix is not None:
        for name, adata in mdata.mod.items():
            padded.obs[f"{flag_prefix}{name}"] = cells.isin(adata.obs_names)
    return padded
