"""Shared pieces of the models' differential expression and accessibility (scvi-tools' DE)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import sparse

from scgexp._compat import _de_core
from scgexp.data._checks import InputError, cell_positions

logger = logging.getLogger(__name__)

_TEMP_KEY = "_scvi_temp_de"  # scvi-tools' column for cells given by idx1/idx2


def draw_indices(indices, n_samples_overall: int | None, rng):
    """``n_samples_overall`` of ``indices`` drawn with replacement, as scvi-tools does.

    Drawn before decoding, so that each draw gets its own posterior sample and memory holds
    ``n_samples_overall`` rows, not the whole group. ``None``: ``indices`` as given.
    """
    if n_samples_overall is None:
        return indices
    return rng.choice(np.asarray(indices), n_samples_overall)


_DE_ARGUMENTS = (
    "groupby",
    "group1",
    "group2",
    "idx1",
    "idx2",
    "all_stats",
    "mode",
    "batchid1",
    "batchid2",
    "delta",
    "batch_correction",
    "silent",
)


def groups_with_cells(obs: pd.DataFrame, arguments: dict) -> dict:
    """A DE method's ``arguments`` with its groups checked against ``obs``.

    scvi-tools fails deep inside (``a cannot be empty``) on a group without cells, e.g. an
    unused category that a MuData subset keeps: without ``group1``, only the ``groupby``
    categories that have cells are compared; named groups and ``idx1``/``idx2`` without cells
    are refused by name.
    """
    arguments = dict(arguments)
    batches_named = arguments["batchid1"] is not None or arguments["batchid2"] is not None
    if batches_named and not arguments["batch_correction"]:  # scvi: "Inconsistent batch policy"
        raise InputError(
            "batchid1 / batchid2 name the batches each group is decoded in, which needs "
            "batch_correction=True; pass it, or leave them out (each cell in its own batch)."
        )
    for name in ("idx1", "idx2"):
        cells = arguments[name]
        if isinstance(cells, str):  # a query, e.g. "cell_type == 'B'", as scvi-tools reads it
            cells = np.flatnonzero(obs.index.isin(obs.query(cells).index))
        if cells is not None:
            arguments[name] = cell_positions(cells, len(obs), name)
    if arguments["idx1"] is not None:
        cells, others = np.unique(arguments["idx1"]), arguments["idx2"]
        if others is None and len(cells) == len(obs):
            raise InputError("idx1 selects every cell: no others to compare with.")
        shared = 0 if others is None else len(np.intersect1d(cells, others))
        if shared:
            raise InputError(
                f"idx1 and idx2 share {shared} cells; a cell belongs to one group only (it "
                "would be counted in idx2 alone). Pass two groups without cells in common."
            )
        return arguments
    groupby, group1, group2 = arguments["groupby"], arguments["group1"], arguments["group2"]
    if groupby is None:
        raise InputError("Give groupby= (an obs column of groups) or idx1= (a group's cells).")
    if groupby not in obs:
        raise InputError(
            f"groupby={groupby!r} is not a column of obs (of a MuData's own obs: "
            "`mdata.pull_obs()` copies its modalities' columns there)."
        )
    sizes = obs[groupby].value_counts()
    categories = obs[groupby].astype("category").cat.categories
    with_cells = [group for group in categories if sizes.get(group, 0) > 0]
    if group1 is None:
        if len(with_cells) < 2:
            raise InputError(
                f"obs[{groupby!r}] has cells in {len(with_cells)} group only: "
                "differential expression compares two or more."
            )
        if group2 is not None and group2 not in with_cells:
            raise InputError(
                f"No cell has obs[{groupby!r}] == {group2!r}; groups with cells: "
                f"{', '.join(repr(g) for g in with_cells)}."
            )
        if len(with_cells) < len(categories):
            logger.info(
                "Groups without cells skipped: %s.",
                ", ".join(str(g) for g in categories if g not in with_cells),
            )
        # each group against group2, not group2 against itself
        return dict(arguments, group1=[g for g in with_cells if g != group2])
    named = [group1] if isinstance(group1, str) or not isinstance(group1, Iterable) else group1
    if group2 is not None and group2 in named:
        raise InputError(
            f"group2={group2!r} is also in group1: a group compared with itself finds nothing."
        )
    for group in [*named, *([] if group2 is None else [group2])]:
        if sizes.get(group, 0) == 0:
            raise InputError(
                f"No cell has obs[{groupby!r}] == {group!r}; groups with cells: "
                f"{', '.join(repr(g) for g in with_cells)}."
            )
        if group2 is None and sizes[group] == len(obs):
            raise InputError(
                f"Every cell has obs[{groupby!r}] == {group!r}: no others to compare with."
            )
    return arguments


def differential(
    adata_manager, model_fn, all_stats_fn, col_names, arguments: dict, representation_fn=None
) -> pd.DataFrame:
    """scvi-tools' ``_de_core`` with a DE method's ``arguments`` (its ``locals()``).

    scvi-tools writes ``_scvi_temp_de`` into ``obs`` for ``idx1``/``idx2`` and deletes it
    on success only; afterwards ``obs`` holds what it held before, whatever happened.
    Repeated feature names (``read_10x_h5`` without ``var_names_make_unique``) are kept:
    scvi-tools' FDR step cannot align them, so it works on positions and the names return after.
    """
    obs = adata_manager.adata.obs
    arguments = groups_with_cells(obs, arguments)
    saved = obs[_TEMP_KEY].copy() if _TEMP_KEY in obs else None
    names = pd.Index(col_names)
    try:
        result = _de_core(
            adata_manager=adata_manager,
            model_fn=model_fn,
            representation_fn=representation_fn,
            all_stats_fn=all_stats_fn,
            col_names=names if names.is_unique else pd.RangeIndex(len(names)),
            fdr=arguments["fdr_target"],
            **{key: arguments[key] for key in _DE_ARGUMENTS},
            **arguments["kwargs"],
        )
    finally:
        obs = adata_manager.adata.obs
        if saved is not None:
            obs[_TEMP_KEY] = saved
        elif _TEMP_KEY in obs:
            del obs[_TEMP_KEY]
    if not names.is_unique:
        result.index = names[result.index]
    return result


def read_rows(matrix, cells):
    """Rows ``cells`` (a boolean mask or indices) of a registered matrix, in memory or backed.

    Backed matrices (h5py datasets, anndata's sparse datasets) are read by increasing index.
    """
    cells = np.asarray(cells)
    cells = np.flatnonzero(cells) if cells.dtype == bool else np.sort(cells)
    return matrix[cells]


def column_means(rows) -> np.ndarray:
    """Mean of each column over ``rows`` (NaN without rows)."""
    if rows.shape[0] == 0:
        return np.full(rows.shape[1], np.nan)
    return np.asarray(rows.mean(0)).ravel()


def per_10k(rows):
    """Count rows scaled to 10,000 counts per row (rows without counts stay 0)."""
    totals = np.asarray(rows.sum(1), dtype=float).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    if sparse.issparse(rows):
        return sparse.diags(scale) @ rows
    return np.asarray(rows) * scale[:, None]


def count_statistics(rows1, rows2, normalized: bool = True) -> dict[str, np.ndarray]:
    """scvi-tools' ``scrna_raw_counts_properties`` of two groups' count rows.

    From the rows alone: no pass over the whole matrix (which backed data cannot sum) and no
    ``obs["_scvi_raw_norm_scaling"]`` written into the user's data. ``normalized=False``
    leaves out the means per 10,000 counts (TOTALVI's protein statistics).
    """
    statistics = {"raw_mean": lambda rows: rows, "non_zeros_proportion": lambda rows: rows != 0}
    if normalized:
        statistics["raw_normalized_mean"] = per_10k
    return {
        f"{name}{number}": column_means(transform(rows))
        for name, transform in statistics.items()
        for number, rows in enumerate((rows1, rows2), start=1)
    }


def difference(scales_1: np.ndarray, scales_2: np.ndarray, pseudocounts=None) -> np.ndarray:
    """Change in accessibility between two groups' samples, in probability (as PEAKVI had)."""
    return scales_1 - scales_2


def accessibility_change(kwargs: dict) -> dict:
    """Differential accessibility's change: the difference, unless the user gives ``change_fn``.

    Earlier scvi-tools releases' PEAKVI and MULTIVI passed this difference; 1.4's leave the
    default, the log2 fold change, for which their ``delta=0.05`` (5 points of probability
    before) lets nearly every peak pass.
    """
    kwargs = dict(kwargs)
    if kwargs.setdefault("change_fn", difference) is difference:
        kwargs.setdefault("pseudocounts", 0.0)  # unused by the difference; not estimated
    return kwargs


def accessibility_table(result: pd.DataFrame, mode: str, fdr_target: float) -> pd.DataFrame:
    """scvi-tools' DE table as PEAKVI's differential accessibility table.

    The columns telling stacked comparisons apart (``comparison``, ``group1``, ``group2``),
    which PEAKVI drops, are kept; without ``all_stats`` the observed rates are left out.
    """
    change = mode == "change"
    table = {
        "prob_da": result["proba_de"] if change else result["proba_m1"],
        "is_da_fdr": result[f"is_de_fdr_{fdr_target}"] if change else None,  # as PEAKVI
        "bayes_factor": result["bayes_factor"],
        "effect_size": result["scale2"] - result["scale1"],
    }
    observed = "emp_mean1" in result
    if observed:
        table["emp_effect"] = result["emp_mean2"] - result["emp_mean1"]
    table.update(est_prob1=result["scale1"], est_prob2=result["scale2"])
    if observed:
        table.update(emp_prob1=result["emp_mean1"], emp_prob2=result["emp_mean2"])
    table.update({key: result[key] for key in ("comparison", "group1", "group2") if key in result})
    return pd.DataFrame(table)
