from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsRegressor

from scgexp.data import InputError, simulate_scatac
from scgexp.sailer import SAILER

N_CELLS, N_PEAKS = 300, 300


@pytest.fixture
def adata():
    return simulate_scatac(n_cells=N_CELLS, n_peaks=N_PEAKS, seed=0)


def _train(adata, max_epochs=3, setup_kwargs=None, **model_kwargs):
    setup_kwargs = {"batch_key": "batch", **(setup_kwargs or {})}
    SAILER.setup_anndata(adata, **setup_kwargs)
    model = SAILER(adata, **model_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=max_epochs,
            enable_progress_bar=False,
            n_epochs_warmup=1,
            n_epochs_kl_warmup=max_epochs // 3,
        )
    return model


def test_invariance_removes_depth():
    """Invariance on (defaults) vs off (a plain conditional VAE on the raw binarised peaks).

    Most of the depth removed here comes from the depth-normalised encoder input. The penalty
    alone (same input, ``"both"`` vs ``None``) shows in the whole latent: how well 15 nearest
    neighbours predict log depth (R² 0.10 against 0.27 here; 0.14–0.19 against 0.26–0.29 on
    two other simulations), while the mean over single dimensions (the paper's metric) moves
    little on data this small (see docs/models/sailer.md).
    """
    adata = simulate_scatac(n_cells=800, n_peaks=600, n_batches=3, seed=1)
    log_depth = np.log((adata.X > 0).sum(1).A1)
    scores = {}
    for invariance, normalize_input in ((None, False), (None, True), ("both", True)):
        model = _train(
            adata, max_epochs=60, invariance=invariance, normalize_input=normalize_input
        )
        info = model.confounder_information()
        floor = model.confounder_information(shuffle=True)
        latent = model.get_latent_representation()
        scores[invariance, normalize_input] = (
            info["log_open_peaks"],
            silhouette_score(latent, adata.obs.cell_type),
            floor["log_open_peaks"],
            cross_val_score(KNeighborsRegressor(15), latent, log_depth, cv=5).mean(),
        )
    off, on = scores[None, False], scores["both", True]
    assert on[0] < 0.5 * off[0]
    # Shuffled depth: the estimator's floor, far below what the plain VAE's latent holds.
    assert off[2] < 0.2 * off[0]
    assert on[2] < on[0]
    assert on[1] > off[1] - 0.02
    assert on[1] > 0.3
    # The penalty, same input: a no-op penalty would leave the R² where it is.
    assert on[3] < 0.7 * scores[None, True][3]


def test_lsi_encoder_input_is_scikit_learns_lsi_and_learns(tmp_path):
    """``encoder_input="lsi"``: the encoder reads the training cells' LSI, kept on save."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    adata = simulate_scatac(n_cells=800, n_peaks=600, n_batches=3, seed=1)
    model = _train(adata, max_epochs=40, encoder_input="lsi", n_lsi_components=10)
    binary = (adata.X > 0).astype(np.float32)
    tfidf = TfidfTransformer().fit(binary)
    expected = TruncatedSVD(11, random_state=0).fit_transform(tfidf.transform(binary))[:, 1:]
    lsi = model.module.lsi(torch.as_tensor(adata.X.toarray(), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(np.abs(lsi), np.abs(expected), atol=1e-4)  # signs are arbitrary
    assert model.module.encoder.fc_layers[0][0].in_features == 10
    latent = model.get_latent_representation()
    assert silhouette_score(latent, adata.obs.cell_type) > 0.3

    model.save(tmp_path / "model")
    query = adata[:100].copy()
    loaded = SAILER.load(tmp_path / "model", adata=query)
    np.testing.assert_array_equal(
        loaded.module.lsi_components.numpy(), model.module.lsi_components.numpy()
    )
    np.testing.assert_allclose(loaded.get_latent_representation(), latent[:100], atol=1e-5)
    with pytest.warns(UserWarning, match="fewer than 3 cells"):  # too few cells for an LSI
        few = SAILER.load(tmp_path / "model", adata=adata[:5].copy())
    np.testing.assert_allclose(few.get_latent_representation(), latent[:5], atol=1e-5)

    with pytest.raises(InputError, match="needs more than 21 cells and peaks"):
        _train(adata[:15].copy(), encoder_input="lsi")
    SAILER.setup_anndata(adata, batch_key="batch")
    with pytest.raises(InputError, match='n_lsi_components applies only with encoder_input="l'):
        SAILER(adata, n_lsi_components=5)
    with pytest.raises(InputError, match="encoder_input must be 'peaks' or 'lsi'"):
        SAILER(adata, encoder_input="svd")
    with pytest.raises(InputError, match="n_lsi_components must be a positive integer, not 0"):
        SAILER(adata, encoder_input="lsi", n_lsi_components=0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_likelihoods(adata, likelihood):
    model = _train(adata, likelihood=likelihood)
    history = {key: frame.to_numpy(dtype=float).ravel() for key, frame in model.history.items()}
    assert np.isfinite(history["elbo_train"]).all()
    assert history["kl_weight"][0] == 0  # reconstruction warm-up
    # The loss trained on is the ELBO with the KL weighted (0 in the warm-up, 1 at the end),
    # plus the invariance penalty after the warm-up; else kl_weight or the penalty is ignored.
    np.testing.assert_allclose(
        history["train_loss"][0], history["reconstruction_loss_train"][0], rtol=1e-5
    )
    assert history["kl_weight"][-1] == 1
    assert history["invariance_penalty_train"][-1] > 1
    np.testing.assert_allclose(
        history["train_loss"][-1],
        history["elbo_train"][-1] + history["invariance_penalty_train"][-1],
        rtol=1e-5,
    )
    latent = model.get_latent_representation()
    assert latent.shape == (N_CELLS, 10)
    accessibility = model.get_normalized_accessibility(return_numpy=True)
    assert accessibility.shape == (N_CELLS, N_PEAKS)
    assert np.isfinite(accessibility).all()
    assert (accessibility >= 0).all()
    if likelihood == "bernoulli":
        assert accessibility.max() <= 1
    frame = model.get_normalized_accessibility(indices=[0, 1], transform_batch="batch_0")
    assert list(frame.index) == list(adata.obs_names[:2])
    # transform_batch decodes every cell as the named batch: as their own for its cells.
    in_batch_0 = (adata.obs["batch"] == "batch_0").to_numpy()
    as_0 = model.get_normalized_accessibility(transform_batch="batch_0", return_numpy=True)
    as_1 = model.get_normalized_accessibility(transform_batch="batch_1", return_numpy=True)
    np.testing.assert_allclose(as_0[in_batch_0], accessibility[in_batch_0], rtol=1e-5)
    assert not np.allclose(as_0, as_1, rtol=1e-3)
    # Several batches: the mean of the values decoded as each (as ZINBAutoencoder, MultiVAE).
    averaged = model.get_normalized_accessibility(transform_batch=["batch_0", "batch_1"])
    np.testing.assert_allclose(averaged, (as_0 + as_1) / 2, rtol=1e-5, atol=1e-7)
    with_own = model.get_normalized_accessibility(transform_batch=["batch_1", None])  # own last
    np.testing.assert_allclose(with_own, (accessibility + as_1) / 2, rtol=1e-5, atol=1e-7)
    deep = model.get_normalized_accessibility(
        indices=[0, 1], depth=adata.n_vars, return_numpy=True
    )
    shallow = model.get_normalized_accessibility(indices=[0, 1], depth=5, return_numpy=True)
    assert not np.allclose(deep, shallow)
    print(model)
    assert "SAILER" in model._model_summary_string


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_output_starts_at_each_peaks_marginal_rate(adata, likelihood):
    SAILER.setup_anndata(adata, batch_key="batch")
    bias = SAILER(adata, likelihood=likelihood).module.output.bias.detach().numpy()
    counts = adata.X.toarray()
    if likelihood == "bernoulli":
        np.testing.assert_allclose(1 / (1 + np.exp(-bias)), (counts > 0).mean(0), atol=1e-5)
    else:  # expected counts at each cell's total, summed over cells
        totals = counts.sum(1)
        exposure = (totals / np.exp(np.log(totals).mean())).sum()
        np.testing.assert_allclose(np.exp(bias) * exposure, counts.sum(0), rtol=1e-4)


def test_poisson_rate_is_proportional_to_the_cells_total_count(adata):
    """The cell's total count enters the Poisson rate as an offset: twice the total, twice
    the rate of every peak (else depth is left for the latent to explain)."""
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=16, n_latent=4, likelihood="poisson")
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(adata, batch_size=64)))
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    generative_inputs = module._get_generative_input(tensors, inference_outputs)
    generative_inputs["z"] = inference_outputs["qz"].loc
    log_rate = module.generative(**generative_inputs)["px"]
    generative_inputs["log_total"] = generative_inputs["log_total"] + np.log(2.0)
    doubled = module.generative(**generative_inputs)["px"]
    torch.testing.assert_close(doubled - log_rate, torch.full_like(log_rate, np.log(2.0)))


@pytest.mark.parametrize("invariance", [None, "mi", "adversarial"])
def test_categorical_and_continuous_confounders(adata, invariance):
    adata.obs["tss"] = np.random.default_rng(0).normal(5, 1, N_CELLS)
    adata.obs["donor"] = np.where(np.arange(N_CELLS) % 3 == 0, "d0", "d1")
    model = _train(
        adata,
        setup_kwargs={
            "categorical_covariate_keys": ["donor"],
            "continuous_covariate_keys": ["tss"],
        },
        invariance=invariance,
    )
    assert model.confounder_names == ["log_open_peaks", "tss", "batch", "donor"]
    if invariance == "adversarial":
        assert "discriminator_loss_train" in model.history
        assert "invariance_adversarial_validation" in model.history
    info = model.confounder_information(max_cells=200)
    assert list(info.index) == model.confounder_names
    assert (info >= 0).all()
    mask = np.arange(adata.n_obs) % 2 == 0  # a boolean mask, subsampled
    assert list(model.confounder_information(indices=mask, max_cells=100).index) == list(
        info.index
    )


def test_save_load_and_query(adata, tmp_path):
    model = _train(adata)
    latent = model.get_latent_representation()
    accessibility = model.get_normalized_accessibility(return_numpy=True)
    model.save(tmp_path / "model", save_anndata=True)
    loaded = SAILER.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    np.testing.assert_array_equal(
        loaded.get_normalized_accessibility(return_numpy=True), accessibility
    )

    # query mapping: new cells, same peaks and batches; depth standardised with training stats
    query = adata[:50].copy()
    query.obs_names = [f"query_{i}" for i in range(50)]
    mapped = SAILER.load(tmp_path / "model", adata=query)
    np.testing.assert_allclose(mapped.get_latent_representation(), latent[:50], atol=1e-5)
    np.testing.assert_array_equal(
        mapped.module.confounder_mean.numpy(), model.module.confounder_mean.numpy()
    )
    unknown = adata[:20].copy()
    unknown.obs["batch"] = "batch_9"
    with pytest.raises(InputError, match="batch_9"):
        SAILER.load(tmp_path / "model", adata=unknown)
    unknown = adata[:20].copy()
    unknown.obs["batch"] = "batch_9"
    with pytest.raises(InputError, match="batch_9"):
        model.get_latent_representation(unknown)
    for depth in (0, -5, float("inf"), float("nan"), "mean", True):
        with pytest.raises(InputError, match="depth must be a positive number"):
            model.get_normalized_accessibility(indices=[0], depth=depth)
    with pytest.raises(InputError, match=f"at most the {adata.n_vars} peaks"):
        model.get_normalized_accessibility(indices=[0], depth=adata.n_vars + 1)


def test_bad_inputs(adata):
    # PEAKVI's arguments named the module's __init__ in a TypeError.
    SAILER.setup_anndata(adata, batch_key="batch")
    with pytest.raises(InputError, match=r"SAILER has no argument 'n_layers_encoder'"):
        SAILER(adata, n_layers_encoder=2)
    with pytest.raises(InputError, match=r"'n_laten'; did you mean 'n_latent'\? Its arg"):
        SAILER(adata, n_laten=5)
    with pytest.raises(InputError, match="n_batch is set from the data registered by SAILER's"):
        SAILER(adata, n_batch=3)
    logged = adata.copy()
    logged.X = logged.X.log1p()
    with pytest.raises(InputError, match="non-integer"):
        SAILER.setup_anndata(logged)
    adata.obs["frip"] = 0.5
    adata.obs.loc[adata.obs_names[3], "frip"] = np.nan
    with pytest.raises(InputError, match="NaN"):
        SAILER.setup_anndata(adata, continuous_covariate_keys=["frip"])
    adata.obs["frip"] = 0.5
    # A key named twice: a numpy broadcasting error at init, or one confounder counted twice.
    with pytest.raises(InputError, match=r"'frip' is named twice \(continuous_covariate_keys, "):
        SAILER.setup_anndata(adata, continuous_covariate_keys=["frip", "frip"])
    with pytest.raises(InputError, match=r"'batch' is named twice \(batch_key, categorical_"):
        SAILER.setup_anndata(adata, batch_key="batch", categorical_covariate_keys=["batch"])
    # One string was read letter by letter ("obs has no column 'f'").
    with pytest.raises(InputError, match=r"pass continuous_covariate_keys=\['frip'\], not"):
        SAILER.setup_anndata(adata, continuous_covariate_keys="frip")
    with pytest.raises(InputError, match="likelihood must be 'bernoulli' or 'poisson'"):
        SAILER.setup_anndata(adata) or SAILER(adata, likelihood="nb")
    # Named as the model's arguments (the shared component's "method" read as another name).
    with pytest.raises(InputError, match=r"^invariance must be None, 'mi', 'adversarial' or"):
        SAILER(adata, invariance="MI")
    with pytest.raises(InputError, match="invariance_weight must be 0 or more"):
        SAILER(adata, invariance_weight=-1.0)
    # invariance_kwargs went to the component unchecked: a bare TypeError, or ignored.
    with pytest.raises(InputError, match=r"cannot set 'weight': the model's invariance_weight="):
        SAILER(adata, invariance_kwargs={"weight": 2.0})
    with pytest.raises(InputError, match=r"'adversarial_wieght'; did you mean 'adversarial_w"):
        SAILER(adata, invariance_kwargs={"adversarial_wieght": 2.0})
    for invariance in (None, "mi"):
        with pytest.raises(InputError, match=r"set the adversary, which invariance=.* does not"):
            SAILER(adata, invariance=invariance, invariance_kwargs={"adversarial_weight": 2.0})
    SAILER(adata, invariance="adversarial", invariance_kwargs={"n_hidden": 8})


def test_transform_batch_without_batch_key_says_so(adata):
    model = _train(adata, setup_kwargs={"batch_key": None})
    with pytest.raises(InputError, match=r"set up without batch_key.*transform_batch=None"):
        model.get_normalized_accessibility(transform_batch="batch_0")


def test_expression_points_to_accessibility(adata):
    SAILER.setup_anndata(adata)
    with pytest.raises(NotImplementedError, match="get_normalized_accessibility"):
        SAILER(adata).get_normalized_expression()


def test_single_batch_warns_and_trains(adata):
    adata.obs["batch"] = "only"
    with pytest.warns(UserWarning, match="single category"):
        SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, invariance="both")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, enable_progress_bar=False, n_epochs_warmup=0)
    assert model.confounder_information()["batch"] == 0.0


def test_poisson_on_dense_counts(adata):
    """Dense count matrices work too (set-up statistics are read in chunks of either kind)."""
    adata.X = adata.X.toarray()
    model = _train(adata, likelihood="poisson")
    assert np.isfinite(model.get_latent_representation()).all()


def test_accessibility_arguments_apply_to_the_chosen_cells(adata):
    model = _train(adata)
    cells = [5, 3, 250]
    full = model.get_normalized_accessibility(return_numpy=True)
    frame = model.get_normalized_accessibility(indices=cells)
    assert list(frame.index) == list(adata.obs_names[cells])  # labels of these cells
    np.testing.assert_allclose(frame.to_numpy(), full[cells], rtol=1e-5, atol=1e-7)
    as_1 = model.get_normalized_accessibility(transform_batch="batch_1", return_numpy=True)
    part = model.get_normalized_accessibility(
        indices=cells, transform_batch="batch_1", return_numpy=True
    )
    assert isinstance(part, np.ndarray)
    np.testing.assert_allclose(part, as_1[cells], rtol=1e-5, atol=1e-7)
    peaks = [adata.var_names[9], adata.var_names[2]]  # PEAKVI's region_list, in this order
    chosen = model.get_normalized_accessibility(indices=cells, region_list=peaks)
    assert list(chosen.columns) == peaks
    np.testing.assert_allclose(chosen.to_numpy(), full[cells][:, [9, 2]], rtol=1e-5, atol=1e-7)
    with pytest.raises(InputError, match="1 peaks the model does not have: chrX"):
        model.get_normalized_accessibility(region_list=[peaks[0], "chrX"])
    with pytest.raises(InputError, match="not a mask"):
        model.get_normalized_accessibility(region_list=np.ones(adata.n_vars, bool))
    # use_z_mean=False decodes one posterior sample per cell: around the mean, not at it.
    torch.manual_seed(0)
    samples = np.stack(
        [model.get_normalized_accessibility(use_z_mean=False, return_numpy=True) for _ in range(8)]
    )
    assert np.abs(samples[0] - samples[1]).mean() > 1e-3
    one_off, average_off = (np.abs(s - full).mean() for s in (samples[0], samples.mean(0)))
    assert average_off < 0.6 * one_off


def test_depth_is_a_number_of_open_peaks(adata):
    """A cell decoded at its own number of open peaks is decoded as it is; "median" is the
    typical training cell's depth (the geometric mean of open peaks), given as a number."""
    model = _train(adata)
    cells = [0, 1, 2]
    own = model.get_normalized_accessibility(indices=cells, return_numpy=True)
    n_open = np.asarray((adata.X[cells] > 0).sum(1)).ravel()
    for cell, depth in zip(cells, n_open, strict=True):
        at_own = model.get_normalized_accessibility(indices=[cell], depth=int(depth))
        np.testing.assert_allclose(at_own.to_numpy()[0], own[cell], rtol=1e-5, atol=1e-7)
    typical = float(np.exp(np.log((adata.X > 0).sum(1)).mean()))
    np.testing.assert_allclose(
        model.get_normalized_accessibility(indices=cells, depth="median", return_numpy=True),
        model.get_normalized_accessibility(indices=cells, depth=typical, return_numpy=True),
        rtol=1e-4,
        atol=1e-6,
    )


def test_a_depth_holds_continuous_covariates_at_their_training_means(adata):
    # Covariates such as FRiP follow depth: each cell's own values brought its depth back
    # (real SNARE-seq, a depth-like covariate: row sums at depth="median" 20 to 76).
    n_open = np.asarray((adata.X > 0).sum(1)).ravel()
    adata.obs["log_fragments"] = np.log(n_open) + np.random.default_rng(0).normal(0, 0.1, N_CELLS)
    model = _train(adata, setup_kwargs={"continuous_covariate_keys": ["log_fragments"]})
    other = adata.copy()
    other.obs["log_fragments"] = other.obs["log_fragments"].to_numpy()[::-1]
    for depth in ("median", 20):
        np.testing.assert_allclose(
            model.get_normalized_accessibility(other, depth=depth, return_numpy=True),
            model.get_normalized_accessibility(adata, depth=depth, return_numpy=True),
            rtol=1e-5,
        )
    assert not np.allclose(  # each cell's own depth: its own covariates too
        model.get_normalized_accessibility(other, return_numpy=True),
        model.get_normalized_accessibility(adata, return_numpy=True),
    )
    # The covariate at its training mean: a cell whose own value is that mean decodes alike.
    at_mean = adata[:1].copy()
    at_mean.obs["log_fragments"] = float(model.module.confounder_mean[1])
    np.testing.assert_allclose(
        model.get_normalized_accessibility(at_mean, depth=int(n_open[0]), return_numpy=True),
        model.get_normalized_accessibility(at_mean, return_numpy=True),
        rtol=1e-5,
        atol=1e-7,
    )


def test_poisson_accessibility_follows_depth(adata):
    """Poisson output: expected counts at each cell's own total count (depth=None, as for the
    decoder's depth covariate), or at a typical training cell's total scaled with depth. (The
    total was always the typical one, so depth hardly changed the output.)"""
    model = _train(adata, likelihood="poisson")
    module = model.module.eval()
    cells = [0, 1, 2, 3]
    tensors = next(iter(model._make_data_loader(adata, indices=cells)))

    def expected(log_total=None, log_depth=None):
        with torch.inference_mode():
            inference_outputs = module.inference(**module._get_inference_input(tensors))
            inputs = module._get_generative_input(tensors, inference_outputs)
            inputs["z"] = inference_outputs["qz"].loc
            if log_depth is not None:
                inputs["cont_confounders"][:, 0] = log_depth
                inputs["log_total"] = torch.full_like(inputs["log_total"], float(log_total))
            return module.generative(**inputs)["px"].exp().numpy()

    own = model.get_normalized_accessibility(indices=cells, return_numpy=True)
    np.testing.assert_allclose(own, expected(), rtol=1e-5)
    every_cell = model.get_normalized_accessibility(return_numpy=True).sum(1)
    assert np.corrcoef(every_cell, np.asarray(adata.X.sum(1)).ravel())[0, 1] > 0.9
    typical_depth, typical_total = module.confounder_mean[0], module.mean_log_total
    median = model.get_normalized_accessibility(indices=cells, depth="median", return_numpy=True)
    np.testing.assert_allclose(median, expected(typical_total, typical_depth), rtol=1e-5)
    deeper = model.get_normalized_accessibility(
        indices=cells, depth=4 * float(typical_depth.exp()), return_numpy=True
    )
    log4 = float(np.log(4.0))
    np.testing.assert_allclose(
        deeper, expected(typical_total + log4, typical_depth + log4), rtol=1e-4
    )
    assert (deeper.sum(1) > 2 * median.sum(1)).all()


def test_confounder_information_indices_are_those_cells(adata):
    """indices give the same estimate as a copy of those cells (all cells kept: max_cells=None)."""
    model = _train(adata)
    # some cells, in shuffled order (each cell's latent must meet its own confounders)
    cells = np.random.default_rng(0).permutation(np.flatnonzero(np.arange(adata.n_obs) % 3))
    subset = model.confounder_information(indices=cells, max_cells=None)
    copied = model.confounder_information(adata[cells].copy(), max_cells=None)
    np.testing.assert_allclose(subset.to_numpy(), copied.to_numpy(), rtol=1e-6, atol=1e-9)
    assert not np.allclose(subset, model.confounder_information(max_cells=None))


def test_differential_accessibility_finds_cell_type_peaks_and_not_depth():
    adata = simulate_scatac(n_cells=600, n_peaks=300, n_cell_types=2, seed=2)
    model = _train(adata, max_epochs=60)
    types = adata.obs["cell_type"].to_numpy()
    rate_0, rate_1 = (adata.layers["true_open"][types == t].mean(0) for t in ("type_0", "type_1"))
    differs = np.abs(rate_1 - rate_0) > 0.1
    da = model.differential_accessibility(
        groupby="cell_type", group1=["type_0"], group2="type_1", silent=True
    )
    assert list(da.columns[:-3]) == [
        "prob_da",
        "is_da_fdr",
        "bayes_factor",
        "effect_size",
        "emp_effect",
        "est_prob1",
        "est_prob2",
        "emp_prob1",
        "emp_prob2",
    ]
    assert set(da.columns[-3:]) == {"comparison", "group1", "group2"}
    da = da.loc[adata.var_names]
    assert roc_auc_score(differs, da["effect_size"].abs()) > 0.85
    assert roc_auc_score(differs, da["prob_da"]) > 0.85
    assert np.corrcoef(da["effect_size"], rate_1 - rate_0)[0, 1] > 0.7
    # Cells of one type, sequenced deeper or shallower: decoded at one depth, they do not differ.
    depth = adata.obs["depth"].to_numpy()
    one_type = types == "type_0"
    deep = one_type & (depth > np.median(depth[one_type]))
    shallow = one_type & ~deep
    fixed = model.differential_accessibility(idx1=deep, idx2=shallow, silent=True)
    own = model.differential_accessibility(idx1=deep, idx2=shallow, depth=None, silent=True)
    assert fixed["is_da_fdr"].mean() < 0.01 < 0.05 < own["is_da_fdr"].mean()
    assert fixed["effect_size"].abs().mean() < 0.25 * own["effect_size"].abs().mean()
    vanilla = model.differential_accessibility(
        idx1=deep, idx2=shallow, mode="vanilla", silent=True
    )
    assert vanilla["is_da_fdr"].isna().all()
    each = model.differential_accessibility(groupby="cell_type", all_stats=False, silent=True)
    assert each.groupby("comparison").size().to_dict() == {
        "type_0 vs Rest": adata.n_vars,
        "type_1 vs Rest": adata.n_vars,
    }
    assert "emp_effect" not in each
    # Cells are drawn before decoding: no call decodes more than n_samples_overall of them.
    decode, sizes = model.get_normalized_accessibility, []

    def recorded(*args, indices=None, **kwargs):
        sizes.append(len(indices))
        return decode(*args, indices=indices, **kwargs)

    model.get_normalized_accessibility = recorded
    model.differential_accessibility(groupby="cell_type", n_samples_overall=40, silent=True)
    assert sizes == [40] * 4  # two comparisons of two groups
    assert list(fixed.columns) == list(da.columns[:-3])  # no groups: no comparison columns


def test_early_stopping_waits_for_the_warmups_given_in_plan_kwargs(adata, training_arguments):
    """Patience grows by the warm-ups the plan runs, also when ``plan_kwargs`` sets them."""
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata)
    model.train(max_epochs=400, early_stopping_patience=20)
    assert training_arguments["early_stopping_patience"] == 20 + 10 + 50
    model.train(
        max_epochs=400,
        early_stopping_patience=20,
        plan_kwargs={"n_epochs_warmup": 5, "n_epochs_kl_warmup": 100},
    )
    assert training_arguments["early_stopping_patience"] == 20 + 5 + 100
    assert training_arguments["plan_kwargs"]["n_epochs_kl_warmup"] == 100


def test_default_budget_anneals_in_full_on_large_data(training_arguments, warnings_as_errors):
    """From 40,000 cells the budget (2e6 / cells, at least 50) ended inside the annealing."""
    adata = simulate_scatac(n_cells=45_000, n_peaks=200, seed=0)
    adata = adata[adata.X.sum(1).A1 > 0].copy()
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=8)
    with warnings_as_errors():  # no advice about settings the user never chose
        model.train()
    assert training_arguments["max_epochs"] == 10 + 50 + 20
    model.train(n_epochs_kl_warmup=100)
    assert training_arguments["max_epochs"] == 10 + 100 + 20


def test_training_inside_the_warmup_says_no_penalty_applies(adata):
    """Not "partly annealed" (with no annealing asked for): nothing but reconstruction ran."""
    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata, n_hidden=16, invariance="both")
    with pytest.warns(UserWarning, match="within the 10 reconstruction-only warm-up epochs"):
        model.train(max_epochs=2, n_epochs_kl_warmup=None, enable_progress_bar=False)
    history = model.history
    np.testing.assert_allclose(
        history["train_loss"].to_numpy(dtype=float),
        history["reconstruction_loss_train"].to_numpy(dtype=float),
    )


def test_confounder_information_is_scikit_learns_estimate_and_shuffling_gives_its_floor(
    adata, monkeypatch
):
    """On a latent planted to hold the batch (dimension 0) and log depth (dimension 1): the
    values are scikit-learn's estimators on jittered depth, and shuffle=True drops them all."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    SAILER.setup_anndata(adata, batch_key="batch")
    model = SAILER(adata)
    noise = np.random.default_rng(1).normal(scale=0.05, size=(adata.n_obs, 2))
    batch = adata.obs["batch"].cat.codes.to_numpy()
    n_open = (adata.X > 0).sum(1).A1
    latent = np.column_stack([batch, np.log(n_open)]) + noise
    monkeypatch.setattr(
        model, "get_latent_representation", lambda adata=None, indices=None: latent[indices]
    )
    info = model.confounder_information(max_cells=None, random_state=3)

    rng = np.random.default_rng(3)  # the depth's jitter, drawn in row order
    jittered = np.log(n_open + rng.uniform(0, 1, size=adata.n_obs))
    kwargs = {"n_neighbors": 3, "random_state": 3}
    expected = [
        np.mean(mutual_info_regression(latent, jittered, **kwargs)),
        np.mean(mutual_info_classif(latent, batch, **kwargs)),
    ]
    np.testing.assert_allclose(info.to_numpy(), expected, rtol=1e-6)
    assert (info > 0.3).all()
    floor = model.confounder_information(max_cells=None, random_state=3, shuffle=True)
    assert (floor < 0.2 * info).all(), (info, floor)


def test_a_categorical_covariate_with_one_category_warns(adata):
    adata.obs["donor"] = "d0"
    with pytest.warns(UserWarning, match=r"obs\['donor'\] has a single category"):
        SAILER.setup_anndata(adata, batch_key="batch", categorical_covariate_keys=["donor"])


@pytest.mark.parametrize(("scale", "nan"), [(1 / 100, False), (1.0, True)])
def test_query_covariates_far_below_the_training_values_warn_and_nan_is_refused(scale, nan):
    """A covariate as fractions where training had percents (25 SDs below) warns; a query
    cell without its value is refused (its decoded outputs would be NaN)."""
    data = simulate_scatac(n_cells=120, n_peaks=60, n_batches=1, seed=1)
    data = data[np.asarray(data.X.sum(1)).ravel() > 0].copy()
    data.obs["tss"] = np.random.default_rng(0).normal(50, 2, data.n_obs)  # in percent
    SAILER.setup_anndata(data, continuous_covariate_keys=["tss"])
    model = SAILER(data, n_latent=2)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = data[:30].copy()
    query.obs["tss"] *= scale
    if nan:
        query.obs.loc[query.obs_names[3], "tss"] = np.nan
        with pytest.raises(InputError, match=r"obs\['tss'\] has NaN or infinite"):
            model.get_normalized_accessibility(query)
    else:
        with pytest.warns(UserWarning, match=r"obs\['tss'\] has median .* training standard dev"):
            model.get_latent_representation(query)
