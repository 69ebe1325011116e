"""The simulators produce the structure their docstrings describe and honour their parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scgexp
from scgexp.data._simulate import _bulk_parameters


def test_bulk_expression_follows_the_documented_model():
    n_samples, n_landmarks, n_targets, n_programs, n_tissues = 400, 20, 80, 12, 4
    kwargs = {
        "n_samples": n_samples,
        "n_landmarks": n_landmarks,
        "n_targets": n_targets,
        "n_programs": n_programs,
        "n_tissues": n_tissues,
        "seed": 3,
    }
    low = scgexp.data.simulate_bulk_expression(noise_sd=0.1, **kwargs)
    high = scgexp.data.simulate_bulk_expression(noise_sd=0.6, **kwargs)
    n_genes = n_landmarks + n_targets
    params = _bulk_parameters(np.random.default_rng(3), n_samples, n_genes, n_programs, n_tissues)
    activity = params["activity"]
    np.testing.assert_allclose(low.obsm["program_activity"], activity, rtol=1e-6)
    # a_sk = mu_tk + 0.5 N(0, 1): tissues differ, samples scatter with sd 0.5 around them
    tissue = params["tissue"]
    np.testing.assert_array_equal(low.obs["tissue"].to_numpy(), [f"tissue_{t}" for t in tissue])
    residual = activity - params["tissue_means"][tissue]
    assert abs(residual.std() - 0.5) < 0.03
    group_means = pd.DataFrame(activity).groupby(tissue).mean().to_numpy()
    assert group_means.std(0).mean() > 0.5
    # 1-4 regulating programs per gene, weights N(0, 2²)
    n_regulators = (params["weights"] != 0).sum(1)
    assert n_regulators.min() == 1
    assert n_regulators.max() == 4
    assert abs(params["weights"][params["weights"] != 0].std() - 2.0) < 0.3
    # log2 expression = b + sum_k w f(a) + noise_sd N(0,1), f the Hill response of the doc
    a = activity[:, None, :]
    hill = 1.0 / (1.0 + np.exp(-params["slope"] * (a - params["threshold"])))
    clean = params["baseline"] + np.einsum("sgk,gk->sg", hill, params["weights"])
    for adata, noise_sd in ((low, 0.1), (high, 0.6)):
        assert abs((adata.X - clean).std() - noise_sd) < 0.05 * noise_sd
    # landmarks are a random subset, not the first genes
    landmark = low.var["landmark"].to_numpy()
    assert landmark.sum() == n_landmarks
    assert not landmark[:n_landmarks].all()


def test_scrna_structure_and_parameters():
    adata = scgexp.data.simulate_scrna(
        n_cells=600, n_genes=200, n_batches=2, library_log_mean=6.0, dropout=0.0, seed=2
    )
    mean = adata.layers["true_mean"]
    library = adata.obs["library_size"].to_numpy()
    # proportions per cell times the library: rows of the mean sum to the library size
    np.testing.assert_allclose(mean.sum(1), library, rtol=1e-4)
    assert abs(np.log(library).mean() - 6.0) < 0.1
    assert abs(np.log(library).std() - 0.5) < 0.05
    # cell types: centres apart, cells within 0.3 of them
    state = adata.obsm["true_state"]
    types = adata.obs["cell_type"].to_numpy()
    centres = pd.DataFrame(state).groupby(types).mean()
    within = state - centres.loc[types].to_numpy()
    assert abs(within.std() - 0.3) < 0.03
    assert centres.to_numpy().std(0).mean() > 0.8
    # a gene-wise batch shift of sd 0.5 in log proportions (beyond what the cell types explain)
    log_prop = np.log(mean / library[:, None])
    batch = adata.obs["batch"].to_numpy()
    residual = log_prop - pd.DataFrame(log_prop).groupby(types).transform("mean").to_numpy()
    shift = residual[batch == "batch_1"].mean(0) - residual[batch == "batch_0"].mean(0)
    assert 0.4 < shift.std() < 1.0
    # negative binomial: overdispersed relative to Poisson
    counts = adata.layers["counts"].toarray()
    assert ((counts - mean) ** 2).sum() / mean.sum() > 2.0


def test_scrna_dropout_removes_low_means_with_probability_dropout_over_one_plus_mean():
    kwargs = {"n_cells": 400, "n_genes": 300, "library_log_mean": 6.0, "seed": 1}
    full = scgexp.data.simulate_scrna(dropout=0.0, **kwargs)
    dropped = scgexp.data.simulate_scrna(dropout=0.8, **kwargs)
    before = full.layers["counts"].toarray()
    after = dropped.layers["counts"].toarray()
    kept = after == before
    assert kept[before == 0].all()  # the same draws; dropout only zeroes counts
    mean = full.layers["true_mean"][before > 0]
    lost = ~kept[before > 0]
    expected = 0.8 / (1.0 + mean)
    assert abs(lost.mean() - expected.mean()) < 0.01
    low, high = mean < 1, mean > 10
    assert lost[low].mean() > 5 * lost[high].mean()


def test_scatac_depth_batch_effect_and_fragments():
    adata = scgexp.data.simulate_scatac(
        n_cells=800, n_peaks=500, n_batches=2, depth_range=(0.05, 0.2), seed=0
    )
    depth = adata.obs["depth"].to_numpy()
    batch = adata.obs["batch"].to_numpy()
    log_depth = np.log(depth)
    # log-uniform in the range, about 2x deeper in batch_1
    in_0 = batch == "batch_0"
    assert log_depth[in_0].min() >= np.log(0.05) - 1e-9
    assert log_depth[in_0].max() <= np.log(0.2) + 1e-9
    shift = log_depth[~in_0].mean() - log_depth[in_0].mean()
    assert abs(shift - np.log(2.0)) < 0.1
    # captured peaks grow with depth (within a batch)
    n_open = np.asarray((adata.X > 0).sum(1)).ravel()
    assert np.corrcoef(np.log(n_open[in_0] + 1), log_depth[in_0])[0, 1] > 0.6
    # captured peaks carry 1 + Poisson(0.3 d) fragments
    counts = adata.X.toarray()
    extra = (counts[counts > 0] - 1).mean()
    expected = (0.3 * np.repeat(depth, (counts > 0).sum(1))).mean()
    assert abs(extra - expected) < 0.2 * expected
    # a peak-wise batch shift of the open probability's logit
    open_prob = adata.layers["true_open"]
    logit = np.log(open_prob / (1 - open_prob))
    types = adata.obs["cell_type"].to_numpy()
    residual = logit - pd.DataFrame(logit).groupby(types).transform("mean").to_numpy()
    peak_shift = residual[~in_0].mean(0) - residual[in_0].mean(0)
    assert 0.4 < peak_shift.std() < 1.0


def test_multiome_missing_halves_and_shared_cell_types(warnings_as_errors):
    with warnings_as_errors():  # mudata's notices are not the user's business
        mdata = scgexp.data.simulate_multiome(
            n_cells=300, n_genes=200, n_peaks=400, n_proteins=6, missing_fraction=0.3, seed=0
        )
    has_rna = mdata.obs["has_rna"].to_numpy()
    has_atac = mdata.obs["has_atac"].to_numpy()
    assert (~has_atac).sum() == 45
    assert (~has_rna).sum() == 45
    assert (has_rna | has_atac).all()  # no cell misses both
    assert mdata["rna"].X[~has_rna].sum() == 0
    assert mdata["atac"].X[~has_atac].sum() == 0
    assert (np.asarray(mdata["rna"].X[has_rna].sum(1)).ravel() > 0).all()
    types = mdata.obs["cell_type"].to_numpy()
    for name, rows in (("rna", has_rna), ("atac", has_atac), ("prot", np.ones_like(has_rna))):
        x = mdata[name].X.toarray()[rows]
        x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e3)
        centres = pd.DataFrame(x).groupby(types[rows]).mean()
        distance = ((x[:, None, :] - centres.to_numpy()[None]) ** 2).sum(-1)
        accuracy = (centres.index.to_numpy()[distance.argmin(1)] == types[rows]).mean()
        assert accuracy > 0.9, (name, accuracy)


@pytest.mark.parametrize(
    ("simulator", "kwargs", "message"),
    [
        ("simulate_bulk_expression", {"noise_sd": float("nan")}, "noise_sd must be a number"),
        ("simulate_bulk_expression", {"noise_sd": "0.3"}, "noise_sd must be a number"),
        ("simulate_scrna", {"library_log_mean": 50}, "library_log_mean must be a number from 0"),
        ("simulate_scrna", {"library_log_mean": float("nan")}, "library_log_mean must be"),
        ("simulate_scrna", {"dropout": "0.3"}, "dropout must be a number from 0 to 1"),
        ("simulate_scrna", {"seed": -1}, "seed must be a non-negative whole number"),
        ("simulate_scrna", {"seed": 1.5}, "seed must be a non-negative whole number"),
        ("simulate_scatac", {"depth_range": "ab"}, "depth_range must be"),
        ("simulate_multiome", {"missing_fraction": True}, "missing_fraction must be a number"),
    ],
)
def test_simulator_arguments_are_checked_by_name(simulator, kwargs, message):
    with pytest.raises(scgexp.data.InputError, match=message):
        getattr(scgexp.data, simulator)(**kwargs)


def test_scatac_shifted_depths_are_capped_at_one():
    adata = scgexp.data.simulate_scatac(n_cells=400, n_peaks=50, n_batches=4, seed=0)
    depth = adata.obs["depth"].to_numpy()
    batch = adata.obs["batch"].to_numpy()
    assert depth.max() <= 1.0
    assert (depth[batch == "batch_3"] == 1.0).mean() > 0.2  # 8 × (0.02, 0.3): about 1/3 capped
    assert (depth[np.isin(batch, ["batch_0", "batch_1"])] < 1.0).all()


def test_multiome_atac_depth_is_not_tied_to_batch():
    mdata = scgexp.data.simulate_multiome(n_cells=1000, n_genes=50, n_peaks=1000, seed=0)
    log_open = np.log(np.asarray((mdata["atac"].X > 0).sum(1)).ravel())
    by_batch = pd.Series(log_open).groupby(mdata.obs["batch"].to_numpy()).mean()
    assert abs(by_batch["batch_1"] - by_batch["batch_0"]) < 0.2


def test_multiome_protein_truth_is_a_shared_background_plus_a_typed_foreground():
    mdata = scgexp.data.simulate_multiome(
        n_cells=200, n_genes=20, n_peaks=40, n_proteins=5, seed=0
    )
    foreground = mdata["prot"].layers["true_foreground"]
    background = mdata["prot"].layers["true_mean"] - foreground
    assert (foreground > 0).all()
    assert (background > 0).all()
    np.testing.assert_allclose(
        background, np.broadcast_to(background[:1], background.shape), rtol=1e-4
    )
    types = mdata.obs["cell_type"].to_numpy()
    assert pd.DataFrame(np.log(foreground)).groupby(types).mean().std(axis=0).min() > 0.1


def test_multiome_true_means_are_kept_for_cells_missing_a_modality():
    mdata = scgexp.data.simulate_multiome(
        n_cells=200, n_genes=50, n_peaks=40, missing_fraction=0.4, seed=0
    )
    no_rna = ~mdata.obs["has_rna"].to_numpy()
    no_atac = ~mdata.obs["has_atac"].to_numpy()
    assert no_rna.any()
    assert no_atac.any()
    assert (mdata["rna"].layers["true_mean"][no_rna] > 0).all()
    assert (mdata["atac"].layers["true_open"][no_atac] > 0).all()


def test_scrna_batches_are_drawn_independently_of_cell_type():
    adata = scgexp.data.simulate_scrna(n_cells=2000, n_genes=20, seed=0)
    share = pd.crosstab(adata.obs["cell_type"], adata.obs["batch"], normalize="index")
    assert share["batch_1"].between(0.4, 0.6).all(), share
