"""Shared pieces of the models' differential expression and accessibility (scvi-tools' DE)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scgexp._compat import _de_core

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


def differential(
    adata_manager, model_fn, all_stats_fn, col_names, arguments: dict, representation_fn=None
) -> pd.DataFrame:
    """scvi-tools' ``_de_core`` with a DE method's ``arguments`` (its ``locals()``).

    scvi-tools writes ``_scvi_temp_de`` into ``obs`` for ``idx1``/``idx2`` and deletes it
    on success only; afterwards ``obs`` holds what it held before, whatever happened.
    """
    obs = adata_manager.adata.obs
    saved = obs[_TEMP_KEY].copy() if _TEMP_KEY in obs else None
    try:
        return _de_core(
            adata_manager=adata_manager,
            model_fn=model_fn,
            representation_fn=representation_fn,
            all_stats_fn=all_stats_fn,
            col_names=col_names,
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
        "is_da_fdr": result[f"is_de_fdr_{fdr_target}"] if change else None,
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
