from __future__ import annotations

import re
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import sparse

from scgexp.data import InputError, simulate_scrna
from scgexp.zinb import ZINBAutoencoder

N_CELLS, N_GENES = 300, 120


@pytest.fixture
def adata():
    return simulate_scrna(n_cells=N_CELLS, n_genes=N_GENES, seed=0)


def _train(adata, batch_key="batch", max_epochs=3, **model_kwargs):
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key=batch_key)
    model = ZINBAutoencoder(adata, **model_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=max_epochs, enable_progress_bar=False)
    return model


def _cell_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = np.log1p(a / a.sum(1, keepdims=True) * 1e4)
    b = np.log1p(b / b.sum(1, keepdims=True) * 1e4)
    return float(np.mean([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]))


def test_learns_true_means():
    adata = simulate_scrna(n_cells=400, n_genes=200, seed=1)
    model = _train(adata, max_epochs=100)
    denoised = model.get_normalized_expression(library_size="latent", return_numpy=True)
    truth = adata.layers["true_mean"]
    raw = adata.layers["counts"].toarray()
    assert _cell_correlation(denoised, truth) > _cell_correlation(raw, truth) + 0.03
    # library_size="latent" keeps each cell's scale
    totals = np.asarray(raw.sum(1)).ravel()
    assert np.corrcoef(denoised.sum(1), totals)[0, 1] > 0.9


@pytest.mark.parametrize(
    ("likelihood", "dispersion"),
    [
        ("zinb", "gene"),
        ("zinb", "gene-cell"),
        ("nb", "gene"),
        ("nb", "gene-cell"),
        ("poisson", "gene"),
    ],
)
def test_likelihoods_and_dispersions(adata, likelihood, dispersion):
    model = _train(adata, likelihood=likelihood, dispersion=dispersion, max_epochs=2)
    assert np.isfinite(model.history["validation_loss"].to_numpy(dtype=float)).all()
    latent = model.get_latent_representation()
    assert latent.shape == (N_CELLS, 32)
    expression = model.get_normalized_expression()
    assert isinstance(expression, pd.DataFrame)
    assert expression.shape == (N_CELLS, N_GENES)
    assert list(expression.columns) == list(adata.var_names)
    assert np.isfinite(expression.to_numpy()).all()
    scaled = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(scaled.sum(1), 1e4, rtol=1e-3)
    params = model.get_likelihood_parameters()
    assert params["mean"].shape == (N_CELLS, N_GENES)
    assert ("dispersions" in params) == (likelihood != "poisson")
    assert ("dropout" in params) == (likelihood == "zinb")
    for value in params.values():
        assert np.isfinite(value).all()
    if likelihood == "zinb":
        assert ((params["dropout"] >= 0) & (params["dropout"] <= 1)).all()
    samples = model.posterior_predictive_sample(n_samples=2)
    assert samples.shape == (N_CELLS, N_GENES, 2)
    dense = samples.todense()
    assert (dense >= 0).all()
    np.testing.assert_array_equal(dense, np.round(dense))


def test_transform_batch(adata):
    model = _train(adata, max_epochs=100)
    as_0 = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    as_1 = model.get_normalized_expression(transform_batch="batch_1", return_numpy=True)
    assert not np.allclose(as_0, as_1)
    # Cells of batch 0 decoded as batch 0 are what the model gives for them anyway.
    own = model.get_normalized_expression(return_numpy=True)
    in_0 = (adata.obs["batch"] == "batch_0").to_numpy()
    np.testing.assert_allclose(own[in_0], as_0[in_0], rtol=1e-5)
    # The switch moves genes in the direction of the simulated batch effect: the log ratio of
    # the outputs correlates with the true batch_1 / batch_0 ratio of expression proportions.
    truth = adata.layers["true_mean"] / adata.layers["true_mean"].sum(1, keepdims=True)
    true_ratio = np.log(truth[~in_0].mean(0)) - np.log(truth[in_0].mean(0))
    fitted_ratio = np.log(as_1).mean(0) - np.log(as_0).mean(0)
    assert np.corrcoef(true_ratio, fitted_ratio)[0, 1] > 0.6
    with pytest.raises(InputError, match="not a batch"):
        model.get_likelihood_parameters(transform_batch="batch_7")


def test_gene_list_order_and_single_batch_samples(adata):
    model = _train(adata, max_epochs=1)
    full = model.get_normalized_expression()
    genes = [adata.var_names[30], adata.var_names[2], adata.var_names[30]]
    frame = model.get_normalized_expression(gene_list=genes)
    assert list(frame.columns) == genes
    np.testing.assert_allclose(frame.to_numpy(), full[genes].to_numpy(), rtol=1e-5)
    array = model.get_normalized_expression(gene_list=genes, return_numpy=True)
    np.testing.assert_allclose(array, full[genes].to_numpy(), rtol=1e-5)
    samples = model.posterior_predictive_sample(gene_list=genes, n_samples=2)
    assert samples.shape == (adata.n_obs, 3, 2)
    np.testing.assert_array_equal(samples[:, 0].todense(), samples[:, 2].todense())
    with pytest.raises(InputError, match="single transform_batch"):
        model.posterior_predictive_sample(transform_batch=["batch_0", "batch_1"])


def test_no_batch_key_ignores_transform_batch(adata):
    model = _train(adata, batch_key=None, max_epochs=1)
    (only,) = model.adata_manager.get_state_registry("batch").categorical_mapping
    own = model.get_normalized_expression(return_numpy=True)
    switched = model.get_normalized_expression(transform_batch=only, return_numpy=True)
    np.testing.assert_allclose(own, switched)


def test_covariates_and_size_factor(adata):
    adata.obs["donor"] = pd.Categorical(np.where(np.arange(N_CELLS) % 3 == 0, "d0", "d1"))
    adata.obs["sf"] = np.asarray(adata.X.sum(1)).ravel() / 500.0
    ZINBAutoencoder.setup_anndata(
        adata, batch_key="batch", size_factor_key="sf", categorical_covariate_keys=["donor"]
    )
    model = ZINBAutoencoder(adata, encode_covariates=True)
    # The input statistics are taken on counts divided by the registered size factors too.
    logged = np.log1p(adata.X.toarray() / adata.obs["sf"].to_numpy()[:, None])
    np.testing.assert_allclose(model.module.input_mean.numpy(), logged.mean(0), rtol=1e-4)
    model.train(max_epochs=1, enable_progress_bar=False)
    params = model.get_likelihood_parameters()
    assert np.isfinite(params["mean"]).all()
    # μ follows the registered size factor (which also scales the encoder's input).
    adata.obs["sf"] *= 2.0
    doubled = model.get_likelihood_parameters(adata=adata.copy())["mean"]
    ratio = doubled.sum(1) / params["mean"].sum(1)
    np.testing.assert_allclose(ratio, 2.0, rtol=0.2)
    # encode_covariates: the encoder reads the covariates, so relabelled cells encode otherwise.
    assert model.module.encode_covariates
    relabelled = adata.copy()
    relabelled.obs["donor"] = relabelled.obs["donor"].map({"d0": "d1", "d1": "d0"})
    assert not np.allclose(
        model.get_latent_representation(relabelled), model.get_latent_representation(), atol=1e-4
    )


def test_standardisation_stats_sparse_equals_dense(adata):
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    sparse_model = ZINBAutoencoder(adata)
    dense = adata.copy()
    dense.layers["counts"] = dense.layers["counts"].toarray()
    ZINBAutoencoder.setup_anndata(dense, layer="counts")
    dense_model = ZINBAutoencoder(dense)
    for name in ("input_mean", "input_scale", "median_total"):
        torch.testing.assert_close(
            getattr(sparse_model.module, name), getattr(dense_model.module, name)
        )
    counts = adata.layers["counts"].toarray()
    size_factor = counts.sum(1, keepdims=True) / np.median(counts.sum(1))
    logged = np.log1p(counts / size_factor)
    np.testing.assert_allclose(sparse_model.module.input_mean.numpy(), logged.mean(0), rtol=1e-4)
    np.testing.assert_allclose(sparse_model.module.input_scale.numpy(), logged.std(0), rtol=1e-4)
    assert sparse.issparse(adata.layers["counts"])  # the data is left as it was


def test_standardisation_stats_of_deep_float16_counts(adata):
    # Per-cell totals above 65,504 overflow a float16 sum; statistics must match float32's.
    counts = np.minimum(adata.layers["counts"].toarray() * 200, 2000).astype(np.float16)
    assert (counts.astype(np.float64).sum(1) > 65_504).any()
    stats = []
    for dtype in (np.float16, np.float32):
        adata.layers["counts"] = counts.astype(dtype)
        ZINBAutoencoder.setup_anndata(adata, layer="counts")
        module = ZINBAutoencoder(adata).module
        stats.append([module.input_mean, module.input_scale, module.median_total])
    for half, single in zip(*stats, strict=True):
        torch.testing.assert_close(half, single)


def test_deep_libraries_are_not_capped(adata):
    # DCA's mean bound (1e6 per cell of median depth) capped a gene with 30% of 3e6-8e6 counts.
    rng = np.random.default_rng(0)
    counts = adata.layers["counts"].toarray()
    totals = rng.uniform(3e6, 8e6, size=(adata.n_obs, 1))
    counts = np.round(counts / counts.sum(1, keepdims=True) * totals * 0.7)
    counts[:, 0] = np.round(totals[:, 0] * 0.3)
    adata.layers["counts"] = sparse.csr_matrix(counts.astype(np.float32))
    model = _train(adata, batch_key=None, max_epochs=5, likelihood="nb")
    mean = model.get_likelihood_parameters()["mean"][:, 0]
    assert mean.mean() == pytest.approx(counts[:, 0].mean(), rel=0.1)
    share = model.get_normalized_expression(library_size=1e4, return_numpy=True)[:, 0] / 1e4
    assert share.mean() == pytest.approx(0.3, abs=0.05)  # capped: 0.21


def test_differential_expression_finds_the_true_fold_changes(adata):
    first, second = adata.obs["cell_type"].cat.categories[:2]
    # The first type sequenced four times as deep: depth must not enter the fold changes
    # (taken on proportions; on the denoised counts the median would be about 2).
    counts = adata.layers["counts"].toarray()
    counts[(adata.obs["cell_type"] == first).to_numpy()] *= 4
    adata.layers["counts"] = sparse.csr_matrix(counts)
    model = _train(adata, max_epochs=30)
    truth = adata.layers["true_mean"] / adata.layers["true_mean"].sum(1, keepdims=True)
    types = adata.obs["cell_type"].to_numpy()
    true_lfc = pd.Series(
        np.log2(truth[types == first].mean(0) / truth[types == second].mean(0)),
        index=adata.var_names,
    )
    de = model.differential_expression(
        groupby="cell_type", group1=first, group2=second, mode="change", silent=True
    )
    assert np.corrcoef(de["lfc_mean"], true_lfc[de.index])[0, 1] > 0.8
    assert abs(np.median(de["lfc_mean"] - true_lfc[de.index])) < 1.0
    found = de.index[de["is_de_fdr_0.05"]]
    assert len(found) > 10
    assert (true_lfc[found].abs() > 0.5).mean() > 0.8
    vanilla = model.differential_expression(groupby="cell_type", group1=first, silent=True)
    assert set(vanilla["comparison"]) == {f"{first} vs Rest"}
    # scvi-tools' other RNA methods work on the autoencoder too (they crashed or misled).
    totals = np.asarray(adata.layers["counts"].sum(1)).ravel()
    np.testing.assert_allclose(model.get_latent_library_size().ravel(), totals, rtol=1e-5)
    correlation = model.get_feature_correlation_matrix(correlation_type="pearson")
    assert list(correlation.index) == list(adata.var_names)
    np.testing.assert_allclose(np.diag(correlation), 1.0, rtol=1e-5)
    true_correlation = np.corrcoef(np.log1p(adata.layers["true_mean"]), rowvar=False)
    upper = np.triu_indices(adata.n_vars, 1)
    spearman = model.get_feature_correlation_matrix().to_numpy()
    assert np.corrcoef(spearman[upper], true_correlation[upper])[0, 1] > 0.5
    with pytest.raises(InputError, match="correlation_type"):
        model.get_feature_correlation_matrix(correlation_type="kendall")
    for size in (0, "latent"):  # "latent" gave each cell's own scale; 0 named library_size
        with pytest.raises(InputError, match=r"^rna_size_factor must be a positive number"):
            model.get_feature_correlation_matrix(rna_size_factor=size)
    with pytest.raises(NotImplementedError, match="VAE"):
        model.get_importance_weights()


def test_save_load_and_query(tmp_path, capsys):
    full = simulate_scrna(n_cells=N_CELLS + 150, n_genes=N_GENES, seed=0)
    adata, query = full[:N_CELLS].copy(), full[N_CELLS:].copy()
    model = _train(adata, max_epochs=2)
    print(model)
    assert "ZINBAutoencoder" in capsys.readouterr().out
    before = model.get_normalized_expression(return_numpy=True)
    latent = model.get_latent_representation()
    model.save(tmp_path / "model", save_anndata=True)

    loaded = ZINBAutoencoder.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.get_normalized_expression(return_numpy=True), before)
    np.testing.assert_allclose(loaded.get_latent_representation(), latent)

    again = ZINBAutoencoder.load(tmp_path / "model", adata=adata.copy())
    np.testing.assert_allclose(again.get_latent_representation(), latent)

    # New cells from the same simulator: the model is applied as trained (stats not refitted).
    mapped = ZINBAutoencoder.load(tmp_path / "model", adata=query)
    torch.testing.assert_close(mapped.module.input_mean, model.module.input_mean.cpu())
    out = mapped.get_normalized_expression(return_numpy=True)
    assert out.shape == (150, N_GENES)
    assert np.isfinite(out).all()
    # ... and through the trained model directly
    direct = model.get_normalized_expression(adata=query.copy(), return_numpy=True)
    np.testing.assert_allclose(direct, out, rtol=1e-5)


def test_refuses_log_normalised_and_negative(adata):
    lognorm = adata.copy()
    lognorm.X = lognorm.X.copy()
    lognorm.X.data = np.log1p(lognorm.X.data / 3.0)
    with pytest.raises(InputError, match="layer=") as refused:
        ZINBAutoencoder.setup_anndata(lognorm)
    assert "adata.raw" not in str(refused.value)
    model = _train(adata.copy(), batch_key=None, max_epochs=1)
    query = lognorm.copy()
    query.layers["counts"] = query.X
    with pytest.raises(InputError, match="The model reads layer 'counts': store the raw counts"):
        model.get_latent_representation(query)  # the layer is the model's: no layer= to pass
    query.raw = adata
    with pytest.raises(InputError, match=r"copy them first: adata.layers\['counts'\] = adata"):
        model.get_latent_representation(query)
    lognorm.raw = adata  # scanpy's usual place for the counts
    with pytest.raises(InputError, match=r"adata.layers\['counts'\] = adata.raw\[:, adata"):
        ZINBAutoencoder.setup_anndata(lognorm)
    negative = adata.copy()
    negative.X = negative.X.toarray()
    negative.X[0, 0] = -1.0
    with pytest.raises(InputError, match="negative"):
        ZINBAutoencoder.setup_anndata(negative)
    nan = adata.copy()
    nan.X = nan.X.toarray()
    nan.X[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ZINBAutoencoder.setup_anndata(nan)
    array = adata.copy()
    array.X = sparse.csr_array(array.X)  # scvi-tools' count check fails on sparse arrays
    with pytest.raises(InputError, match=r"adata.X = scipy.sparse.csr_matrix\(adata.X\)"):
        ZINBAutoencoder.setup_anndata(array)


def test_refuses_empty_cells_and_missing_keys(adata, warnings_as_errors):
    empty = adata.copy()
    empty.X = empty.X.toarray()
    empty.X[3] = 0.0
    with pytest.raises(InputError, match="no counts"):
        ZINBAutoencoder.setup_anndata(empty)
    with pytest.raises(InputError, match="no column 'plate'"):
        ZINBAutoencoder.setup_anndata(adata, batch_key="plate")
    with pytest.raises(InputError, match=r"pass categorical_covariate_keys=\['batch'\]"):
        ZINBAutoencoder.setup_anndata(adata, categorical_covariate_keys="batch")
    unlabelled = adata.copy()
    unlabelled.obs["batch"] = unlabelled.obs["batch"].astype(object)
    unlabelled.obs.loc[unlabelled.obs_names[:2], "batch"] = None
    with pytest.raises(InputError, match="has missing values") as refused:
        ZINBAutoencoder.setup_anndata(unlabelled, batch_key="batch")
    assert "MuData" not in str(refused.value)  # MultiVAE's advice for padded cells
    names = {"adata": unlabelled}
    exec(re.search(r"`(.+)`", str(refused.value))[1], names)  # the advice, as pasted
    ZINBAutoencoder.setup_anndata(names["adata"], batch_key="batch")
    assert names["adata"].n_obs == adata.n_obs - 2
    adata.obs["sf"] = -1.0
    with pytest.raises(InputError, match="positive"):
        ZINBAutoencoder.setup_anndata(adata, size_factor_key="sf")
    adata.obs["sf"] = np.asarray(adata.layers["counts"].sum(1)).ravel()  # scvi-tools' kind
    with pytest.warns(UserWarning, match="looks like library sizes in counts"):
        ZINBAutoencoder.setup_anndata(adata, size_factor_key="sf")
    adata.obs["sf"] /= adata.obs["sf"].median()
    with warnings_as_errors():
        ZINBAutoencoder.setup_anndata(adata, size_factor_key="sf")


def test_library_sizes_as_size_factors_warn_on_new_data_too(adata, warnings_as_errors):
    totals = np.asarray(adata.layers["counts"].sum(1)).ravel()
    adata.obs["sf"] = totals / np.median(totals)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch", size_factor_key="sf")
    model = ZINBAutoencoder(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    query = anndata.AnnData(
        obs=adata.obs[["batch"]].assign(sf=totals), var=adata.var[[]], layers=dict(adata.layers)
    )
    with pytest.warns(UserWarning, match=r"training cells' median total count.*/ \d"):
        model.get_latent_representation(query)
    query.obs["sf"] /= np.median(totals)
    with warnings_as_errors():
        model.get_latent_representation(query)


def test_genes_without_counts_warn_in_training_data_only(adata, tmp_path, warnings_as_errors):
    counts = adata.layers["counts"].toarray()
    counts[:, :2] = 0
    adata.layers["counts"] = sparse.csr_matrix(counts)
    with pytest.warns(UserWarning, match=r"has 2 features that are zero in every cell.*filter_"):
        model = _train(adata, max_epochs=1)
    model.save(tmp_path / "model")
    with warnings_as_errors():  # new cells may lack a gene
        ZINBAutoencoder.load(tmp_path / "model", adata=adata[:40].copy())


def test_scvi_tools_helpers_and_de_weights(adata):
    model = _train(adata, max_epochs=1)
    model.view_anndata_setup()  # scvi-tools' table (needs rich.pretty loaded)
    with pytest.raises(InputError, match="importance weights need a posterior"):
        model.differential_expression(groupby="cell_type", weights="importance")
    table = model.differential_expression(groupby="cell_type", group1="type_0", weights="uniform")
    assert table["bayes_factor"].notna().all()


def test_refuses_unknown_batch_in_query(adata, tmp_path):
    model = _train(adata, max_epochs=1)
    model.save(tmp_path / "model")
    query = simulate_scrna(n_cells=50, n_genes=N_GENES, seed=3)
    query.obs["batch"] = pd.Categorical(["batch_9"] * 50)
    with pytest.raises(InputError, match="not trained with: 'batch_9'"):
        ZINBAutoencoder.load(tmp_path / "model", adata=query)
    with pytest.raises(InputError, match="not trained with"):
        model.get_latent_representation(adata=query)
    bad_counts = simulate_scrna(n_cells=50, n_genes=N_GENES, seed=3)
    bad_counts.layers["counts"].data += 0.5
    with pytest.raises(InputError, match="The model reads layer 'counts': store the raw"):
        model.get_normalized_expression(adata=bad_counts)
    with pytest.raises(InputError, match=r"not a batch of this model; batches: \['batch_0'"):
        model.get_normalized_expression(transform_batch="batch_9")
    with pytest.raises(InputError, match="not a batch of this model"):
        model.posterior_predictive_sample(transform_batch="batch_9")
    for library_size in (0, -1.0, float("inf"), "total"):
        with pytest.raises(InputError, match="library_size must be 'latent' or a positive"):
            model.get_normalized_expression(library_size=library_size)


def test_bad_options(adata):
    ZINBAutoencoder.setup_anndata(adata)
    with pytest.raises(InputError, match=r"^likelihood must be 'zinb', 'nb' or 'poisson'"):
        ZINBAutoencoder(adata, likelihood="gaussian")  # the argument's name, not the module's
    with pytest.raises(ValueError, match="dispersion"):
        ZINBAutoencoder(adata, dispersion="gene-batch")
    with pytest.raises(InputError, match="likelihood=, not gene_likelihood="):
        ZINBAutoencoder(adata, gene_likelihood="nb")  # scvi-tools' name: a TypeError
    with pytest.raises(InputError, match="ridge_lambda must be 0 or more"):
        ZINBAutoencoder(adata, ridge_lambda=-1.0)
    # Settings a likelihood has no use for were accepted, ignored and shown in the summary.
    with pytest.raises(InputError, match="likelihood='poisson' has no dispersion"):
        ZINBAutoencoder(adata, likelihood="poisson", dispersion="gene-cell")
    with pytest.raises(InputError, match="which likelihood='nb' does not have"):
        ZINBAutoencoder(adata, likelihood="nb", ridge_lambda=1.0)
    summary = str(ZINBAutoencoder(adata, likelihood="poisson"))
    assert "dispersion" not in summary
    assert "ridge" not in summary
    model = ZINBAutoencoder(adata)
    with pytest.raises(ValueError, match="optimizer"):
        model.train(max_epochs=1, optimizer="SGD")


def test_ridge_penalises_the_dropout_probability(adata):
    """DCA's ridge ``λ π²`` is in the loss (else ridge_lambda would not lower the dropout)."""
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4, ridge_lambda=10.0)
    tensors = next(iter(model._make_data_loader(adata, batch_size=64)))
    _, generative_outputs, loss_output = model.module.eval().forward(tensors)
    dropout = generative_outputs["px"].zi_probs
    torch.testing.assert_close(
        loss_output.loss - loss_output.reconstruction_loss["reconstruction_loss"].mean(),
        10.0 * dropout.pow(2).sum(-1).mean(),
    )


def test_rmsprop_and_seeded(adata):
    results = []
    for _ in range(2):
        scvi.settings.seed = 0
        model = _train(adata.copy(), max_epochs=2)
        results.append(model.get_latent_representation())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    ZINBAutoencoder.setup_anndata(adata)
    model = ZINBAutoencoder(adata)
    model.train(max_epochs=2, optimizer="RMSprop", enable_progress_bar=False)
    assert np.isfinite(model.history["validation_loss"].to_numpy(dtype=float)).all()
    # plan_kwargs' learning rate and weight decay reach RMSprop (they were ignored)
    model = ZINBAutoencoder(adata)
    plan_kwargs = {"lr": 0.02, "weight_decay": 0.5}
    model.train(
        max_epochs=1, optimizer="RMSprop", plan_kwargs=plan_kwargs, enable_progress_bar=False
    )
    (group,) = model.trainer.optimizers[0].param_groups
    assert isinstance(model.trainer.optimizers[0], torch.optim.RMSprop)
    assert group["lr"] == 0.02
    assert group["weight_decay"] == 0.5


@pytest.mark.parametrize("linear_bottleneck", [True, False])
def test_bottleneck(adata, tmp_path, linear_bottleneck):
    model = _train(adata, max_epochs=2, n_latent=8, linear_bottleneck=linear_bottleneck)
    latent = model.get_latent_representation()
    assert latent.shape == (N_CELLS, 8)
    # The linear bottleneck is signed; DCA's (batch norm and ReLU) is not.
    assert (latent.min() < 0) == linear_bottleneck
    assert ("linear bottleneck" in model._model_summary_string) == linear_bottleneck
    model.save(tmp_path / "model")
    loaded = ZINBAutoencoder.load(tmp_path / "model", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), latent, rtol=1e-5)


def test_indices_and_transform_batch_reach_every_output(adata):
    """indices pick these cells (in this order) and transform_batch is applied, in each output."""
    model = _train(adata, max_epochs=1)
    cells = [7, 2, 250]
    latent = model.get_latent_representation()
    np.testing.assert_allclose(
        model.get_latent_representation(indices=cells), latent[cells], rtol=1e-5, atol=1e-6
    )
    # scvi-tools' arguments: the same deterministic values, or a refusal saying why.
    np.testing.assert_array_equal(model.get_latent_representation(give_mean=False), latent)
    with pytest.raises(InputError, match="no distribution to return"):
        model.get_latent_representation(return_dist=True)
    full = model.get_normalized_expression()
    pd.testing.assert_frame_equal(model.get_normalized_expression(n_samples=5), full)
    with pytest.raises(InputError, match="every sample would be the same"):
        model.get_normalized_expression(n_samples=5, return_mean=False)
    part = model.get_normalized_expression(indices=cells)
    assert list(part.index) == list(adata.obs_names[cells])
    np.testing.assert_allclose(part.to_numpy(), full.to_numpy()[cells], rtol=1e-5)
    params = model.get_likelihood_parameters()
    np.testing.assert_allclose(
        model.get_likelihood_parameters(indices=cells)["mean"], params["mean"][cells], rtol=1e-5
    )
    # scvi-tools' arguments (a TypeError before); the mean of samples is the one value.
    averaged = model.get_likelihood_parameters(n_samples=3, give_mean=True)
    np.testing.assert_array_equal(averaged["mean"], params["mean"])
    with pytest.raises(InputError, match="every sample would be the same"):
        model.get_likelihood_parameters(n_samples=3)
    # μ decoded as batch_1 is the denoised expression decoded as batch_1.
    as_1 = model.get_normalized_expression(transform_batch="batch_1", return_numpy=True)
    np.testing.assert_allclose(
        model.get_likelihood_parameters(transform_batch="batch_1")["mean"], as_1, rtol=1e-5
    )
    samples = model.posterior_predictive_sample(indices=cells, n_samples=2)
    assert samples.shape == (len(cells), N_GENES, 2)


def test_posterior_predictive_sample_uses_transform_batch(adata):
    model = _train(adata, max_epochs=1)
    in_0 = np.flatnonzero((adata.obs["batch"] == "batch_0").to_numpy())[:20]

    def draw(**kwargs):
        torch.manual_seed(0)
        return model.posterior_predictive_sample(indices=in_0, n_samples=5, **kwargs).todense()

    own = draw()
    np.testing.assert_array_equal(draw(transform_batch="batch_0"), own)  # same seed, same draws
    assert not np.array_equal(draw(transform_batch="batch_1"), own)


def test_reconstruction_error_ranks_likelihoods_on_held_out_cells(adata):
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    with pytest.raises(RuntimeError, match="train the model first"):
        ZINBAutoencoder(adata).get_reconstruction_error()
    # The simulator's counts are overdispersed: NB fits held-out cells better than Poisson.
    errors = {}
    for likelihood in ("nb", "poisson"):
        scvi.settings.seed = 0
        model = _train(adata, likelihood=likelihood, max_epochs=20)
        held_out = model.validation_indices
        error = model.get_reconstruction_error(indices=held_out)["reconstruction_loss"]
        errors[likelihood] = float(error)
        # The validation loss Lightning logged is this value (no ridge without dropout).
        logged = model.history["reconstruction_loss_validation"].to_numpy(dtype=float)[-1, 0]
        np.testing.assert_allclose(errors[likelihood], logged, rtol=1e-5)
        per_cell = model.get_reconstruction_error(return_mean=False)["reconstruction_loss"]
        assert per_cell.shape == (N_CELLS,)
        assert torch.isfinite(per_cell).all()
    assert errors["nb"] < 0.8 * errors["poisson"], errors


@pytest.mark.parametrize(
    ("likelihood", "dispersion"),  # (Poisson with "gene-cell" is refused)
    [
        ("zinb", "gene"),
        ("zinb", "gene-cell"),
        ("nb", "gene"),
        ("nb", "gene-cell"),
        ("poisson", "gene"),
    ],
)
def test_every_parameter_is_trained_as_ddp_requires(adata, likelihood, dispersion):
    # Plain DDP stops when a parameter gets no gradient: Poisson had an unused dispersion.
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, likelihood=likelihood, dispersion=dispersion)
    tensors = next(iter(model._make_data_loader(adata, batch_size=64)))
    _, _, losses = model.module(tensors)
    losses.loss.backward()
    unused = [n for n, p in model.module.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_likelihood_parameters_are_the_dispersion_and_dropout_probability(adata):
    """Users export θ and π: θ itself (not 1/θ), π the probability of a dropout (not 1 − π)."""
    model = _train(adata, max_epochs=1)
    theta = torch.linspace(0.5, 20.0, N_GENES)
    with torch.no_grad():
        model.module.px_r.copy_(torch.log(torch.expm1(theta)))  # softplus(px_r) = θ
        model.module.dropout_head.weight.zero_()
        model.module.dropout_head.bias.fill_(-2.0)
    params = model.get_likelihood_parameters()
    np.testing.assert_allclose(
        params["dispersions"], np.broadcast_to(theta.numpy(), (N_CELLS, N_GENES)), rtol=1e-4
    )
    np.testing.assert_allclose(params["dropout"], 1.0 / (1.0 + np.exp(2.0)), rtol=1e-5)
    assert model.trainer.gradient_clip_val == 5.0  # the documented default reaches Lightning
