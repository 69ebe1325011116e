"""Landmark gene panels: mark them on AnnData, read them from LINCS tables, or design one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import linalg

from scgexp._warn import warn_user
from scgexp.data._checks import InputError, get_matrix
from scgexp.data._gct import is_gct_or_gctx, read_gene_table
from scgexp.data._matrix import dense, read_dense, row_chunks

if TYPE_CHECKING:
    from collections.abc import Iterable

    from anndata import AnnData

logger = logging.getLogger(__name__)


def mark_landmarks(
    adata: AnnData,
    genes: Iterable[str],
    key: str = "landmark",
    gene_column: str | None = None,
) -> int:
    """Mark landmark genes in ``adata.var[key]`` (``True``: input, ``False``: target).

    Parameters
    ----------
    adata
        Data whose genes are marked (only ``var[key]`` is written).
    genes
        Landmark gene identifiers.
    key
        Column of ``var`` to write.
    gene_column
        Match ``genes`` against this ``var`` column (e.g. gene symbols) instead of ``var_names``.

    Returns
    -------
    The number of ``var`` rows marked (a landmark listed twice in ``var`` counts twice).
    Landmarks that are absent are reported in a warning; an error is raised when none is
    present.

    Examples
    --------
    >>> n = scgexp.data.mark_landmarks(adata, ["GAPDH", "ACTB"], gene_column="symbol")
    """
    if gene_column is not None and gene_column not in adata.var:
        raise InputError(
            f"var has no column {gene_column!r}; columns: "
            f"{', '.join(adata.var.columns) or 'none'}."
        )
    if isinstance(genes, str):
        raise InputError(f"genes must be a list of identifiers: [{genes!r}].")
    if key == gene_column:
        raise InputError(
            f"key={key!r} would overwrite the gene_column it matches on; pass another key."
        )
    if key in adata.var and not pd.api.types.is_bool_dtype(adata.var[key]):
        raise InputError(
            f"var[{key!r}] holds other data ({adata.var[key].dtype}), which the marking would "
            "replace; pass key= naming another column, or drop that column first."
        )
    names = (adata.var_names if gene_column is None else adata.var[gene_column]).astype(str)
    wanted = pd.Index(pd.unique(pd.Series(list(genes), dtype=str)))
    is_landmark = np.asarray(pd.Index(names).isin(wanted))
    n_found = int(is_landmark.sum())
    if n_found == 0:
        where = "var_names" if gene_column is None else f"var[{gene_column!r}]"
        raise InputError(
            f"None of the {len(wanted)} landmark genes is in {where} (e.g. {list(wanted[:3])} "
            f"vs {list(names[:3])}). Pass gene_column= naming the column with matching IDs, or "
            "read other IDs from the landmark table (read_landmark_genes(id_column=...), e.g. "
            "pr_gene_id for Entrez IDs); check letter case and Ensembl version suffixes."
        )
    missing = wanted.difference(pd.Index(names))
    if len(missing):
        warn_user(
            f"{len(missing)} of {len(wanted)} landmark genes are not in the data "
            f"(e.g. {list(missing[:5])}); {n_found} marked.",
        )
    adata.var[key] = is_landmark
    return n_found


def read_landmark_genes(path: str, id_column: str | None = None) -> list[str]:
    """Read landmark genes from a LINCS ``gene_info`` table or the genes of a GCT/GCTX file.

    Rows marked as landmarks are kept: ``pr_is_lm`` 1 (GSE92742/GSE70138), ``pr_is_lmark``
    "Y", or ``feature_space`` "landmark" (LINCS 2020 ``geneinfo_beta.txt``). A table without
    such a column is a list of landmarks: every row is kept. A GCT or GCTX file (recognised by
    its contents) is read as the table of its rows: their metadata and, in column ``id``, their
    identifiers (for LINCS files, Entrez IDs); a GCTX's matrix is not read.

    Parameters
    ----------
    path
        The table (tab-separated), e.g. ``GSE92742_Broad_LINCS_gene_info.txt``, or a GCT/GCTX
        file, e.g. a LINCS Level 3 file.
    id_column
        Column with the identifiers to return. Default: ``pr_gene_symbol``, ``gene_symbol`` or
        ``symbol``, ``pr_gene_id``, ``gene_id``, then (GCT/GCTX) the row identifiers, the first
        that exists.

    Examples
    --------
    >>> genes = scgexp.data.read_landmark_genes("GSE92742_Broad_LINCS_gene_info.txt")
    >>> genes = scgexp.data.read_landmark_genes("level3_subset.gctx")
    """
    if is_gct_or_gctx(path):
        table = read_gene_table(path)
    else:
        table = pd.read_csv(
            path, sep="\t", dtype=str, encoding="utf-8-sig", encoding_errors="replace"
        )
    by_name = {str(c).strip().lower(): c for c in table.columns}  # "Symbol", "PR_IS_LM" too
    flags = {"pr_is_lm": {"1", "1.0", "TRUE", "Y"}, "pr_is_lmark": {"Y", "1", "TRUE"}}
    flags["feature_space"] = {"LANDMARK"}
    flag = next((c for c in flags if c in by_name), None)
    if flag is not None:
        column = by_name[flag]
        table = table[table[column].str.strip().str.upper().isin(flags[flag])]
        if table.empty:
            raise InputError(f"{path}: no row is marked as a landmark in column {column!r}.")
    if id_column is None:
        names = ("pr_gene_symbol", "gene_symbol", "symbol", "pr_gene_id", "gene_id", "rid", "id")
        candidates = [by_name[n] for n in names if n in by_name]
        if not candidates and table.shape[1] == 1 and "," in str(table.columns[0]):
            raise InputError(
                f"{path} looks comma-separated; gene_info tables are tab-separated. Read it with "
                "`pd.read_csv(path)` and take the landmark column, or save it with tabs."
            )
        if not candidates and table.shape[1] == 1:  # id_column= would drop its first gene
            raise InputError(
                f"{path} has one column, headed {table.columns[0]!r}: for a plain list of genes "
                "without a header, read it with `pd.read_csv(path, header=None)[0].tolist()`; "
                f"if {table.columns[0]!r} is its header, pass id_column={table.columns[0]!r}."
            )
        if not candidates:
            raise InputError(f"{path} has no gene column; pass id_column= (one of {list(table)}).")
        id_column = candidates[0]
    if id_column not in table:
        raise InputError(f"{path} has no column {id_column!r} (columns: {list(table)}).")
    genes = table[id_column].dropna().str.strip()
    if len(genes) < len(table):
        warn_user(
            f"{path}: {len(table) - len(genes)} of {len(table)} landmark rows have no "
            f"{id_column!r} and are left out; another id_column= may name them all."
        )
    return genes.tolist()


def _float_blocks(matrix):
    """``matrix`` (dense, sparse or backed) as float64 arrays, a block of rows at a time."""
    return (dense(chunk).astype(np.float64) for chunk in row_chunks(matrix))


def select_landmarks(
    adata: AnnData,
    n_landmarks: int,
    layer: str | None = None,
    n_components: int | None = None,
    key: str | None = "landmark",
) -> list[str]:
    """Design a landmark panel from data: the genes that best predict all the others.

    Method: greedy column subset selection :cite:p:`Farahat2011`. The genes are
    standardised; one after another, the gene is chosen that, added to those already chosen,
    most reduces what linear regression on the chosen genes leaves unexplained of all genes
    (the Frobenius norm of the residual). The residual is tracked in the top ``n_components``
    principal axes, so each step costs ``n_components × genes``. Genes whose variation the
    chosen ones already explain are never picked again. Such a panel predicts the other genes
    better than random panels of the same size, on simulated bulk and on real single-cell data
    alike (the DGEX notebook and tests compare them), and does not depend on the genes' units.
    Only when the axes are used up (a panel larger than the data's rank or ``n_components``)
    is the rest of the panel the most variable other genes, in the data's units; constant genes
    are never chosen (the panel is then shorter, with a warning). Memory: with
    fewer samples than genes the standardised samples × genes matrix is held (float64) for its
    SVD; otherwise a genes × genes matrix is accumulated a block of rows at a time (20,000
    genes: 3.2 GB) and decomposed.

    Parameters
    ----------
    adata
        Data (cells or samples × genes), in the units the model will use (e.g. log expression).
    n_landmarks
        Panel size.
    layer
        ``None`` for ``X``, else a layer.
    n_components
        Principal axes in which the residual is tracked; default ``max(2 * n_landmarks, 500)``
        (all axes of smaller data). More axes cost time and memory and change little.
    key
        If not ``None``, also write the panel into ``adata.var[key]`` (with a warning when it
        replaces another marking).

    Returns
    -------
    The selected gene names, in order of selection.

    Examples
    --------
    >>> panel = scgexp.data.select_landmarks(adata, n_landmarks=100)
    """
    matrix = get_matrix(adata, layer)
    if adata.n_obs < 2:
        raise InputError(f"A panel needs 2 or more cells or samples, not {adata.n_obs}.")
    if isinstance(n_landmarks, bool) or not (
        isinstance(n_landmarks, int | np.integer) and 0 < n_landmarks < adata.n_vars
    ):
        raise InputError(f"n_landmarks must be a whole number from 1 to {adata.n_vars - 1}.")
    if n_components is not None and (
        isinstance(n_components, bool)
        or not (isinstance(n_components, int | np.integer) and n_components > 0)
    ):
        raise InputError(f"n_components must be a positive whole number, not {n_components!r}.")
    n_obs, n_vars = matrix.shape
    total = np.zeros(n_vars)
    for block in _float_blocks(matrix):
        if not np.isfinite(block).all():
            raise InputError("The data hold NaN or infinite values; fill or drop them first.")
        total += block.sum(0)
    mean = total / n_obs
    std = np.sqrt(sum(((block - mean) ** 2).sum(0) for block in _float_blocks(matrix)) / n_obs)
    std[std <= 1e-10 * np.abs(mean)] = 0.0  # constant genes keep a rounding residue
    scale = np.where(std > 0, std, 1.0)
    n_components = min(n_components or max(2 * n_landmarks, 500), n_obs, n_vars)
    if n_obs < n_vars:  # samples × genes is the smaller matrix: its SVD
        scaled = (read_dense(matrix).astype(np.float64) - mean) / scale
        _, singular_values, vt = linalg.svd(scaled, full_matrices=False)
        loadings = vt[:n_components] * singular_values[:n_components, None]
    else:  # the genes' Gram matrix, a block of rows at a time (never all rows densified)
        gram = np.zeros((n_vars, n_vars))
        for block in _float_blocks(matrix):
            scaled = (block - mean) / scale
            gram += scaled.T @ scaled
        eigenvalues, eigenvectors = linalg.eigh(gram)
        order = np.argsort(-eigenvalues)[:n_components]
        # eigenvalues (squared singular values) at rounding level are axes of no variation
        top = eigenvalues[order[0]] if n_components else 0.0
        kept = eigenvalues[order] > top * n_vars * np.finfo(float).eps
        singular_values = np.sqrt(np.where(kept, eigenvalues[order], 0.0))
        loadings = eigenvectors[:, order].T * singular_values[:, None]
    outside = np.where(std > 0, n_obs, 0.0) - (loadings**2).sum(0)  # energy beyond the axes
    chosen = _greedy_column_subset(loadings, np.maximum(outside, 0.0), n_landmarks)
    taken = set(chosen)
    varying = [g for g in np.argsort(-std, kind="stable") if std[g] > 0 and g not in taken]
    chosen += varying[: n_landmarks - len(chosen)]
    if not chosen:
        raise InputError("No gene varies across the cells or samples: there is no panel.")
    if len(chosen) < n_landmarks:
        warn_user(
            f"Only {len(chosen)} genes vary in the data, so the panel holds {len(chosen)} genes, "
            f"not {n_landmarks}: a constant gene predicts nothing."
        )
    names = adata.var_names[chosen].tolist()
    if key is None and not adata.var_names.is_unique:
        shared = sorted(set(names) & set(adata.var_names[adata.var_names.duplicated()]))
        if shared:
            raise InputError(
                f"The panel holds genes whose names repeat in var_names ({shared[:5]}), so the "
                "names cannot tell them apart; pass key= to mark the panel by position, or call "
                "adata.var_names_make_unique() first."
            )
    if key is not None:
        panel = np.isin(np.arange(adata.n_vars), chosen)  # by position
        if key in adata.var and not np.array_equal(adata.var[key].to_numpy(), panel):
            warn_user(
                f"var[{key!r}] held another marking and now holds the selected panel; pass "
                "key= naming another column (or key=None) to keep both."
            )
        adata.var[key] = panel
    return names


def _greedy_column_subset(loadings: np.ndarray, outside: np.ndarray, n_columns: int) -> list[int]:
    """Greedy column subset selection on ``loadings`` (axes × genes, scaled by singular value).

    With ``r_j`` a column's residual after projecting out the chosen columns' directions, its
    score ``r_j.T M r_j / (||r_j||**2 + outside_j)`` (``M``: the residual loadings' Gram
    matrix) is how much choosing it removes from the residual of all columns; ``outside`` is
    each column's energy beyond the axes (its own, as if uncorrelated with the others), without
    which a column of tiny loadings would score by their direction alone. The loadings' rows
    are orthogonal, so numerator and denominator change by rank-one terms computed from the
    unchanged loadings: a step reads them once (``axes × genes``). Stops early when the
    residual has no direction left.
    """
    axis_energy = (loadings**2).sum(1)  # squared singular values
    norms = (loadings**2).sum(0)
    explained = axis_energy @ loadings**2
    floor = norms.max(initial=0.0) * 1e-10  # residual norms at rounding level: explained
    basis = np.zeros((loadings.shape[0], n_columns))  # orthonormal directions chosen so far
    chosen: list[int] = []
    while len(chosen) < n_columns:
        usable = norms > floor
        usable[chosen] = False
        if not usable.any():
            break
        scores = np.where(usable, explained / np.where(usable, norms + outside, 1), -np.inf)
        best = int(np.argmax(scores))
        taken = basis[:, : len(chosen)]
        direction = loadings[:, best].copy()
        for _ in range(2):  # Gram-Schmidt, twice for orthogonality in floating point
            direction -= taken @ (taken.T @ direction)
        direction /= np.linalg.norm(direction)
        along = axis_energy * direction  # M @ direction
        along -= taken @ (taken.T @ along)
        weights, projected = (loadings.T @ np.column_stack([direction, along])).T
        explained -= 2 * weights * projected - (direction @ along) * weights**2
        norms -= weights**2
        basis[:, len(chosen)] = direction
        chosen.append(best)
    return chosen
