from __future__ import annotations

import re
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import sparse
from sklearn.metrics import silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from torch.distributions import Normal, kl_divergence

import scgexp.multivae._model as multivae_model_module
from scgexp.data import InputError, pad_modalities, simulate_multiome
from scgexp.multivae import MultiVAE
from scgexp.multivae._module import PoissonDetection

RNA_ATAC = {"rna_layer": "rna", "atac_layer": "atac"}
RNA_PROT = {"rna_layer": "rna", "protein_layer": "prot"}
ALL_THREE = {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"}
PRESENCE = {"rna": "has_rna", "atac": "has_atac"}


def _mdata(n_cells=200, n_proteins=0, missing_fraction=0.0, seed=0, **kwargs):
    return simulate_multiome(
        n_cells=n_cells,
        n_genes=kwargs.pop("n_genes", 80),
        n_peaks=kwargs.pop("n_peaks", 150),
        n_proteins=n_proteins,
        missing_fraction=missing_fraction,
        seed=seed,
        **kwargs,
    )


def _train(mdata, modalities=RNA_ATAC, max_epochs=2, setup_kwargs=None, **model_kwargs):
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=modalities, **(setup_kwargs or {}))
    model = MultiVAE(mdata, n_latent=model_kwargs.pop("n_latent", 8), **model_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=max_epochs, enable_progress_bar=False)
    return model


def _knn_accuracy(latent: np.ndarray, labels: np.ndarray) -> float:
    return float(cross_val_score(KNeighborsClassifier(15), latent, labels, cv=5).mean())


def test_joint_latent_beats_each_modality():
    # Few features per modality, so that neither alone pins down the cell state.
    mdata = _mdata(n_cells=600, n_genes=40, n_peaks=400, n_cell_types=6, seed=0)
    model = _train(mdata, max_epochs=40, n_latent=10)
    latents = {m: model.get_latent_representation(modality=m) for m in (None, "rna", "atac")}
    both = ~np.isnan(latents["rna"]).any(1) & ~np.isnan(latents["atac"]).any(1)
    labels = mdata.obs["cell_type"].to_numpy()[both]
    separation = {m: silhouette_score(z[both], labels) for m, z in latents.items()}
    assert separation[None] > separation["rna"] + 0.01, separation
    assert separation[None] > separation["atac"] + 0.01, separation
    assert _knn_accuracy(latents[None][both], labels) > 0.9


def test_mosaic_cells_train_on_what_they_have():
    mdata = _mdata(missing_fraction=0.3)
    model = _train(mdata, setup_kwargs={"presence_keys": PRESENCE})
    has_rna = mdata.obs["has_rna"].to_numpy()
    history = model.history
    assert history["fraction_with_rna_train"].iloc[-1, 0] < 1.0
    assert np.isfinite(history["validation_loss"].to_numpy(dtype=float)).all()
    joint = model.get_latent_representation()
    assert np.isfinite(joint).all()
    rna_only = model.get_latent_representation(modality="rna")
    np.testing.assert_array_equal(np.isnan(rna_only).any(1), ~has_rna)
    # MULTIVI's call: the modality second, by position and by MULTIVI's name.
    np.testing.assert_array_equal(model.get_latent_representation(None, "expression"), rna_only)
    # Flagged-missing rows are ignored: garbage counts there change neither latent nor loss.
    altered = mdata.copy()
    rna = altered["rna"].X.toarray()
    rna[~has_rna] = np.random.default_rng(0).poisson(5.0, size=rna[~has_rna].shape)
    altered["rna"].X = sparse.csr_matrix(rna)
    with pytest.warns(UserWarning, match="flagged missing hold counts"):  # queries warn too
        np.testing.assert_allclose(model.get_latent_representation(altered), joint, rtol=1e-5)
    # RNA is imputed for the cells without it.
    expression = model.get_normalized_expression(return_numpy=True)
    assert np.isfinite(expression[~has_rna]).all()
    unflagged = mdata.copy()
    del unflagged.obs["has_rna"]
    with pytest.raises(InputError, match=r"presence_keys\['rna'\]\). Add it: True for cells"):
        model.get_latent_representation(unflagged)
    # predict reads the flags as training does: unreadable ones are refused, not read as present.
    for flags, message in (
        (altered.obs["has_rna"].astype(str), "must be boolean"),
        (altered.obs["has_rna"].astype(float).where(has_rna, np.nan), "missing values"),
    ):
        query = altered.copy()
        query.obs["has_rna"] = flags
        with pytest.raises(InputError, match=message):
            model.predict(query, source="rna", target="atac", n_samples=0)


def test_rows_flagged_missing_do_not_change_the_initial_model():
    """Counts in rows flagged missing leave the data-driven initial state untouched."""
    mdata = _mdata(n_proteins=10, missing_fraction=0.3)
    mdata.obs["has_protein"] = mdata.obs["has_rna"].to_numpy()  # measured with the RNA
    presence = {**PRESENCE, "protein": "has_protein"}
    altered = mdata.copy()
    rng = np.random.default_rng(0)
    for name, key in (("rna", "has_rna"), ("atac", "has_atac"), ("prot", "has_protein")):
        missing = ~mdata.obs[key].to_numpy()
        for data in (mdata, altered):
            values = data[name].X.toarray()
            values[missing] = (
                0 if data is mdata else rng.poisson(20.0, (missing.sum(), values.shape[1]))
            )
            data[name].X = sparse.csr_matrix(values)
    states = []
    for data in (mdata, altered):
        MultiVAE.setup_mudata(
            data, batch_key="batch", modalities=ALL_THREE, presence_keys=presence
        )
        scvi.settings.seed = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            states.append(MultiVAE(data, protein_likelihood="mixture").module.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, msg=name)


def test_refuses_arguments_of_other_models():
    mdata = _mdata(n_cells=50)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    with pytest.raises(InputError, match=r"MultiVAE has no argument 'n_genes'\. Its arguments: "):
        MultiVAE(mdata, n_genes=80)


def test_refuses_a_modality_no_training_cell_has():
    mdata = _mdata()
    mdata.obs["has_atac"] = False
    MultiVAE.setup_mudata(
        mdata, batch_key="batch", modalities=RNA_ATAC, presence_keys={"atac": "has_atac"}
    )
    with pytest.raises(InputError, match="No training cell has 'atac' data"):
        MultiVAE(mdata).train(max_epochs=1)


def test_all_zero_rows_count_as_missing_without_flags():
    mdata = _mdata(missing_fraction=0.3)
    model = _train(mdata)
    n_without = int((~mdata.obs["has_atac"]).sum())
    with pytest.warns(UserWarning, match=f"^{n_without} cells have no atac data; their rows are"):
        atac_only = model.get_latent_representation(modality="atac")
    np.testing.assert_array_equal(np.isnan(atac_only).any(1), ~mdata.obs["has_atac"].to_numpy())


@pytest.mark.parametrize(
    ("modalities", "protein_likelihood"),
    [
        (RNA_ATAC, "mixture"),
        (RNA_PROT, "mixture"),
        (RNA_PROT, "nb"),
        ({"atac_layer": "atac", "protein_layer": "prot"}, "mixture"),
        (ALL_THREE, "mixture"),
        ({"rna_layer": "rna"}, "mixture"),
    ],
)
def test_modality_combinations(modalities, protein_likelihood, capsys):
    mdata = _mdata(n_proteins=12)
    model = _train(mdata, modalities=modalities, protein_likelihood=protein_likelihood)
    print(model)
    summary = " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert "MultiVAE" in summary
    # Each modality's likelihood, and none for a modality the model lacks.
    assert (f"protein {protein_likelihood}" in summary) == ("protein_layer" in modalities)
    assert ("RNA zinb" in summary) == ("rna_layer" in modalities)
    assert model.get_latent_representation().shape == (200, 8)
    outputs = {
        "rna_layer": (model.get_normalized_expression, "rna"),
        "atac_layer": (model.get_normalized_accessibility, "atac"),
        "protein_layer": (model.get_normalized_protein, "prot"),
    }
    for key, (method, name) in outputs.items():
        if key not in modalities:
            with pytest.raises(InputError, match="not a data type"):
                method()
            continue
        frame = method()
        assert isinstance(frame, pd.DataFrame)
        assert frame.shape == (200, mdata[name].n_vars)
        assert list(frame.columns) == list(mdata[name].var_names)
        assert np.isfinite(frame.to_numpy()).all()
        assert (frame.to_numpy() >= 0).all()
    if "rna_layer" in modalities:
        scaled = model.get_normalized_expression(library_size=1e4, return_numpy=True)
        np.testing.assert_allclose(scaled.sum(1), 1e4, rtol=1e-3)
    assert list(mdata.mod) == ["rna", "atac", "prot"]  # never reordered


def test_modality_order_is_left_alone():
    sim = _mdata()
    mdata = md.MuData({"atac": sim["atac"].copy(), "rna": sim["rna"].copy()})
    mdata.obs["batch"] = sim.obs["batch"].to_numpy()
    model = _train(mdata)
    assert list(mdata.mod) == ["atac", "rna"]
    assert model.get_normalized_expression().shape == (200, sim["rna"].n_vars)


@pytest.mark.parametrize(("source", "target"), [("atac", "rna"), ("rna", "atac")])
def test_predict_both_directions(source, target):
    full = _mdata(n_cells=260)
    train, query = full[:200].copy(), full[200:].copy()
    model = _train(train, max_epochs=20)
    name = {"rna": "rna", "atac": "atac"}
    prediction = model.predict(query, source=source, target=target, n_samples=5)
    assert isinstance(prediction, ad.AnnData)
    assert prediction.shape == (60, full[name[target]].n_vars)
    assert list(prediction.var_names) == list(full[name[target]].var_names)
    assert list(prediction.obs_names) == list(query.obs_names)
    assert prediction.obs["batch"].equals(query.obs["batch"])  # for scanpy's groupby / colour
    assert np.isfinite(prediction.X).all()
    assert (prediction.layers["std"] > 0).all()  # 0: not a spread over posterior draws
    if target == "rna":
        np.testing.assert_allclose(prediction.X.sum(1), 1e4, rtol=1e-3)
    else:
        assert ((prediction.X >= 0) & (prediction.X <= 1)).all()
    # Only the source is read: an AnnData of it alone, features in another order, works.
    alone = query[name[source]].copy()
    shuffled = alone[:, np.random.default_rng(0).permutation(alone.n_vars)].copy()
    again = model.predict(shuffled, source=source, target=target, n_samples=0)
    np.testing.assert_allclose(again.X, prediction.X, rtol=1e-4)
    assert "std" not in again.layers
    # Predictions follow the cell states: correlated with the truth across cells.
    truth = query[name[target]].X.toarray()
    truth = truth / np.maximum(truth.sum(1, keepdims=True), 1) if target == "rna" else truth > 0
    correlation = np.corrcoef(prediction.X.ravel(), np.asarray(truth, dtype=float).ravel())
    assert correlation[0, 1] > 0.2
    with pytest.raises(InputError, match=r"lacks 10 of the.*model.training_var_names\["):
        model.predict(alone[:, 10:].copy(), source=source, target=target)


def test_save_load_round_trip(tmp_path):
    mdata = _mdata(n_proteins=8, missing_fraction=0.2)
    model = _train(mdata, modalities=ALL_THREE, setup_kwargs={"presence_keys": PRESENCE})
    latent = model.get_latent_representation()
    expression = model.get_normalized_expression(return_numpy=True)
    prediction = model.predict(mdata, source="atac", target="protein", n_samples=0).X
    model.save(tmp_path / "model", save_anndata=True)

    loaded = MultiVAE.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)
    np.testing.assert_array_equal(loaded.get_normalized_expression(return_numpy=True), expression)
    again = MultiVAE.load(tmp_path / "model", mdata=mdata)
    np.testing.assert_array_equal(again.get_latent_representation(), latent)
    assert list(mdata.mod) == ["rna", "atac", "prot"]

    model.save(tmp_path / "no_data")
    bare = MultiVAE.load(tmp_path / "no_data")
    assert bare.adata is None
    np.testing.assert_array_equal(
        bare.predict(mdata, source="atac", target="protein", n_samples=0).X, prediction
    )


@pytest.mark.parametrize("invariance", ["mi", "adversarial"])
def test_invariance_trains(invariance, tmp_path):
    mdata = _mdata()
    model = _train(mdata, invariance=invariance, max_epochs=3)
    history = model.history
    assert np.isfinite(history["validation_loss"].to_numpy(dtype=float)).all()
    assert "invariance_penalty_train" in history
    if invariance == "adversarial":
        assert "discriminator_loss_train" in history
    latent = model.get_latent_representation()
    model.save(tmp_path / "model", prefix="mv_")
    loaded = MultiVAE.load(tmp_path / "model", mdata=mdata, prefix="mv_")
    np.testing.assert_array_equal(loaded.get_latent_representation(), latent)


def test_default_invariance_is_adversarial_on_batch_when_batches_differ():
    mdata = _mdata()
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    module = MultiVAE(mdata).module
    assert module.invariance is not None
    assert module.invariance.method == "adversarial"
    assert module.invariance.n_continuous == 0  # batch only, as MULTIVI
    assert MultiVAE(mdata, invariance=None).module.invariance is None
    module = MultiVAE(mdata, invariance="mi").module
    assert module.invariance.n_continuous == 2  # + depth
    # ATAC depth as its decoder sees it: open regions, not fragments (counts go up to 4 here).
    n_open = np.asarray((mdata["atac"].X > 0).sum(1)).ravel()
    assert float(module.depth_mean[1]) == pytest.approx(np.log1p(n_open[n_open > 0]).mean())
    one_batch = _mdata()
    MultiVAE.setup_mudata(one_batch, modalities=RNA_ATAC)
    assert MultiVAE(one_batch).module.invariance is None
    # The mixture's protein decoder is not given the protein depth: not a confounder then.
    with_protein = _mdata(n_proteins=10)
    MultiVAE.setup_mudata(with_protein, batch_key="batch", modalities=RNA_PROT)
    for likelihood, n_continuous in (("mixture", 1), ("nb", 2)):
        model = MultiVAE(with_protein, invariance="mi", protein_likelihood=likelihood)
        assert model.module.invariance.n_continuous == n_continuous
    model = _train(with_protein, RNA_PROT, invariance="both", protein_likelihood="mixture")
    assert np.isfinite(model.history["validation_loss"].to_numpy(dtype=float)).all()


def test_continuous_covariates_are_standardised():
    # In raw units (e.g. percent mitochondrial reads) a covariate drowned the latent input.
    latents = []
    for scale, shift in ((1.0, 0.0), (1000.0, 50.0)):
        mdata = _mdata()
        mdata.obs["mito"] = np.random.default_rng(0).normal(size=mdata.n_obs) * scale + shift
        scvi.settings.seed = 0
        model = _train(mdata, setup_kwargs={"continuous_covariate_keys": ["mito"]})
        latents.append(model.get_latent_representation())
    np.testing.assert_allclose(latents[0], latents[1], rtol=1e-4, atol=1e-5)


def _untrained_module(**model_kwargs):
    """An untrained module (eval mode) and a minibatch of 64 cells."""
    mdata = _mdata(n_cells=64, n_genes=40, n_peaks=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # features closed in every simulated cell
        MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
        model = MultiVAE(mdata, n_hidden=16, n_latent=4, **model_kwargs)
    tensors = next(iter(model._make_data_loader(mdata, batch_size=64)))
    return model.module.eval(), tensors


@pytest.fixture(scope="module")
def untrained():
    """An untrained module and a minibatch of 64 cells, to check the terms of the loss."""
    return _untrained_module()


def test_rna_means_sum_to_the_observed_library(untrained):
    """The RNA likelihood is at each cell's total count, not at proportions."""
    module, tensors = untrained
    _, generative_outputs = module.forward(tensors, compute_loss=False)
    totals = tensors[scvi.REGISTRY_KEYS.X_KEY].sum(-1).clamp(min=1.0)
    torch.testing.assert_close(generative_outputs["p_rna"].mu.sum(-1), totals, rtol=1e-4, atol=0)


def test_poisson_detection_matches_its_definition_at_every_rate():
    """log p and its gradient as 1 - exp(-exp(log_rate)) in float64, rare and common regions."""
    log_rate = torch.linspace(-35.0, 20.0, 221).repeat(2, 1).requires_grad_()
    detected = torch.stack([torch.zeros(221), torch.ones(221)])
    reference_rate = log_rate.detach().double().requires_grad_()
    rate = torch.exp(reference_rate.clamp(-30.0, 15.0))
    p = -torch.expm1(-rate)
    reference = torch.where(detected.bool(), torch.log(p), -rate)
    reference.sum().backward()
    distribution = PoissonDetection(log_rate)
    log_prob = distribution.log_prob(detected)
    log_prob.sum().backward()
    torch.testing.assert_close(log_prob.double(), reference.detach(), rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(log_rate.grad.double(), reference_rate.grad, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(distribution.probs.double(), p.detach(), rtol=1e-5, atol=1e-12)
    draws = distribution.sample((3,))  # scored as a batch of draws, as torch's Bernoulli does
    assert distribution.log_prob(draws).shape == (3, 2, 221)


def test_expected_open_regions_follow_depth():
    """Shallow cells must not be decoded as deep ones (a saturating logistic depth response)."""
    mdata = _mdata(n_cells=300, n_genes=50, n_peaks=200)  # about 15% of regions open per cell
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    model = MultiVAE(mdata, n_hidden=32, n_latent=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=20, enable_progress_bar=False)
    with torch.no_grad():
        expected = torch.cat(
            [
                model.module(tensors, compute_loss=False)[1]["p_atac"].probs.sum(-1)
                for tensors in model._make_data_loader(mdata, batch_size=300)
            ]
        ).numpy()
    observed = np.asarray((mdata["atac"].X > 0).sum(1)).ravel()
    shallow, *_, deep = np.array_split(np.argsort(observed), 5)

    def ratio(cells):
        return expected[cells].sum() / observed[cells].sum()

    assert ratio(shallow) / ratio(deep) < 1.3  # logistic link, slope 1: 1.35-1.41


def test_alignment_term_is_in_the_loss(untrained, monkeypatch):
    """The loss rises by alignment_weight × the alignment of the experts (else unaligned)."""
    module, tensors = untrained
    inference_outputs, generative_outputs = module.forward(tensors, compute_loss=False)
    losses = {}
    for weight in (0.0, 1.0):
        monkeypatch.setattr(module, "alignment_weight", weight)
        torch.manual_seed(0)  # the same cross-reconstruction draws
        losses[weight] = module.loss(tensors, inference_outputs, generative_outputs)
    alignment = losses[1.0].extra_metrics["alignment"]
    assert alignment > 0
    difference = losses[1.0].loss - losses[0.0].loss  # of float32 losses in the hundreds
    torch.testing.assert_close(difference, alignment, rtol=1e-3, atol=1e-3)


def test_cross_reconstruction_reads_only_the_other_modalities(untrained):
    """RNA is reconstructed from the ATAC expert alone: its own expert would make it easy."""
    module, tensors = untrained
    assert module.cross_reconstruction_targets == ["rna"]
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    losses = []
    for shift in (0.0, 5.0):
        means = {**inference_outputs["means"]}
        means["rna"] = means["rna"] + shift
        torch.manual_seed(0)
        losses.append(
            module.cross_reconstruction_loss(tensors, {**inference_outputs, "means": means}, 1.0)
        )
    torch.testing.assert_close(losses[0], losses[1])


def test_default_cross_reconstruction_skips_the_widest_modality():
    mdata = _mdata(n_genes=80, n_peaks=150, n_proteins=10)
    MultiVAE.setup_mudata(mdata, modalities=ALL_THREE)
    assert MultiVAE(mdata).module.cross_reconstruction_targets == ["rna", "protein"]
    MultiVAE.setup_mudata(mdata, modalities=RNA_PROT)
    assert MultiVAE(mdata).module.cross_reconstruction_targets == ["protein"]
    module = MultiVAE(mdata, cross_reconstruction_targets=["rna", "protein"]).module
    assert module.cross_reconstruction_targets == ["rna", "protein"]


def test_seeded():
    results = []
    for _ in range(2):
        scvi.settings.seed = 0
        results.append(_train(_mdata()).get_latent_representation())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


# -- bad inputs ---------------------------------------------------------------------------------
def test_a_modality_reordered_after_setup_is_refused():
    # Registered data is read by position: ATAC rows reordered in place paired each cell's RNA
    # with another cell's ATAC, silently (a cut modality crashed inside scipy).
    mdata = _mdata()
    model = _train(mdata)
    order = np.random.default_rng(1).permutation(mdata.n_obs)
    for changed in (mdata["atac"][order].copy(), mdata["atac"][10:].copy()):
        mdata.mod["atac"] = changed
        with pytest.raises(InputError, match=r"changed after setup.*cells do not match"):
            model.get_latent_representation()


def test_a_key_only_in_a_modality_says_how_to_read_it():
    import mudata as md

    mdata = _mdata()
    rna, atac = mdata["rna"].copy(), mdata["atac"].copy()
    rna.obs["plate"] = mdata.obs["batch"].to_numpy()
    joined = md.MuData({"rna": rna, "atac": atac})  # mudata names it 'rna:plate' globally
    with pytest.raises(InputError, match=r"modalities=\{\.\.\., 'batch_key': 'rna'\}"):
        MultiVAE.setup_mudata(joined, batch_key="plate", modalities=RNA_ATAC)
    joined.obs["plate"] = joined["rna"].obs["plate"]  # the message's other fix
    MultiVAE.setup_mudata(joined, batch_key="plate", modalities=RNA_ATAC)
    model = MultiVAE(joined, n_latent=4)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = md.MuData({"rna": rna, "atac": atac})  # again with 'plate' in rna's obs only
    with pytest.raises(InputError, match=r"`mdata.obs\['plate'\] = mdata\['rna'\]"):
        model.predict(query, source="rna", target="atac")


def test_data_not_set_up_is_refused_naming_setup_mudata():
    mdata = _mdata()
    with pytest.raises(InputError, match="obs has no column 'nope'"):
        MultiVAE.setup_mudata(mdata, batch_key="nope", modalities=RNA_ATAC)
    with pytest.raises(InputError, match=r"MuData with MultiVAE.setup_mudata first"):
        MultiVAE(mdata)


def test_refuses_mismatched_obs():
    sim = _mdata()
    mdata = md.MuData({"rna": sim["rna"][:150].copy(), "atac": sim["atac"].copy()})
    with pytest.raises(InputError, match="cells do not match"):
        MultiVAE.setup_mudata(mdata, modalities=RNA_ATAC)
    shuffled = md.MuData({"rna": sim["rna"][::-1].copy(), "atac": sim["atac"].copy()})
    with pytest.raises(InputError, match="cells do not match"):
        MultiVAE.setup_mudata(shuffled, modalities=RNA_ATAC)


def test_refuses_modalities_without_paired_cells():
    """Without cells measured in both, nothing ties the modalities' encoders together."""
    sim = _mdata(n_cells=60, n_proteins=4)
    atac = sim["atac"].copy()
    atac.obs_names = "x" + atac.obs_names  # the same cells under other names
    renamed = md.MuData({"rna": sim["rna"].copy(), "atac": atac})
    with pytest.raises(
        InputError, match=r"no cell name .*'cell00000' vs 'xcell00000'.*strip a prefix"
    ):
        MultiVAE.setup_mudata(renamed, modalities=RNA_ATAC)
    with pytest.raises(InputError, match=r"No cell has 'atac' \('atac'\) together with any of"):
        MultiVAE.setup_mudata(pad_modalities(renamed), modalities=RNA_ATAC)
    # New cells may have one modality each: those are padded, not renamed.
    model = _train(_mdata(n_cells=60), max_epochs=1)
    with pytest.raises(InputError, match=r"cells do not match.*pad_modalities"):
        model.get_latent_representation(renamed)
    padded = pad_modalities(renamed)
    padded.obs["batch"] = padded["rna"].obs["batch"].combine_first(padded["atac"].obs["batch"])
    assert model.get_latent_representation(padded).shape == (120, 8)
    # RNA + ATAC in some cells, RNA + protein in others: ATAC and protein meet through RNA.
    bridged = sim.copy()
    bridged.obs["has_atac"] = np.arange(60) < 30
    bridged.obs["has_prot"] = ~bridged.obs["has_atac"]
    presence = {"rna": "has_rna", "atac": "has_atac", "protein": "has_prot"}
    MultiVAE.setup_mudata(bridged, modalities=ALL_THREE, presence_keys=presence)
    bridged.obs["has_rna"] = False
    bridged.obs.loc[bridged.obs_names[:10], "has_rna"] = True  # ATAC-only cells 10-29
    with pytest.raises(InputError, match=r"No cell has 'protein' \('prot'\) together"):
        MultiVAE.setup_mudata(bridged, modalities=ALL_THREE, presence_keys=presence)


def test_one_protein_needs_the_mixture_likelihood():
    mdata = _mdata(n_cells=100, n_proteins=3)
    mdata.mod["prot"] = mdata["prot"][:, :1].copy()
    mdata.update()
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_PROT)
    with pytest.raises(InputError, match="with one protein every cell would get the same"):
        MultiVAE(mdata)
    model = _train(mdata, modalities=RNA_PROT, protein_likelihood="mixture")
    assert np.ptp(model.get_normalized_protein(return_numpy=True)) > 0


def test_warns_about_a_protein_one_batch_did_not_measure(warnings_as_errors):
    mdata = _mdata(n_cells=120, n_proteins=4)
    with warnings_as_errors():
        MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_PROT)
    first = (mdata.obs["batch"] == mdata.obs["batch"].iloc[0]).to_numpy()
    counts = mdata["prot"].X.toarray()
    counts[first, 2] = 0  # e.g. a panel without that antibody
    # A rare protein: in about 12% of the other batch's cells, under 10 expected here.
    counts[:, 3] = 0
    counts[np.flatnonzero(~first)[: int(0.11 * (~first).sum()) + 1], 3] = 5
    mdata["prot"].X = sparse.csr_matrix(counts)
    batch = mdata.obs["batch"].iloc[0]
    with pytest.warns(UserWarning, match=rf"expected in this batch\): 'CD2' in '{batch}'\. "):
        MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_PROT)


def test_one_protein_models_saved_before_the_refusal_still_load(tmp_path):
    mdata = _mdata(n_cells=100, n_proteins=3)
    mdata.mod["prot"] = mdata["prot"][:, :1].copy()
    mdata.update()
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_PROT)
    registry = MultiVAE._get_most_recent_anndata_manager(mdata).registry
    old = MultiVAE(mdata, registry=registry)  # as load() builds it: not refused
    old.is_trained_ = True
    old.save(tmp_path / "model")
    MultiVAE.load(tmp_path / "model", adata=mdata)


def test_empty_modality_is_refused_as_unaligned():
    sim = _mdata(n_cells=60)
    empty = md.MuData({"rna": sim["rna"].copy(), "atac": sim["atac"][:0].copy()})
    with pytest.raises(InputError, match="cells do not match"):
        MultiVAE.setup_mudata(empty, modalities=RNA_ATAC)


def test_padded_modalities_train_and_keep_the_original(tmp_path):
    sim = _mdata()
    rna, atac = sim["rna"][30:].copy(), sim["atac"][:170].copy()
    rna.obsm["X_pca"] = np.arange(rna.n_obs * 2, dtype=float).reshape(-1, 2)
    atac.X = atac.X.toarray()  # dense stays dense, sparse stays sparse
    mosaic = md.MuData({"rna": rna, "atac": atac})
    with pytest.raises(InputError, match=r"scgexp\.data\.pad_modalities"):
        MultiVAE.setup_mudata(mosaic, modalities=RNA_ATAC)
    padded = pad_modalities(mosaic)
    assert mosaic["rna"].n_obs == 170  # the input is left as it is
    assert mosaic.obsm["rna"].sum() == 170
    assert padded.obs_names.equals(mosaic.obs_names)
    for name, own in (("rna", rna), ("atac", atac)):
        flags = padded.obs[f"has_{name}"].to_numpy()
        assert flags.sum() == 170
        assert padded[name].obs_names.equals(mosaic.obs_names)
        assert sparse.issparse(padded[name].X) == sparse.issparse(own.X)
        values = padded[name].X.toarray() if sparse.issparse(own.X) else padded[name].X
        expected = own.X.toarray() if sparse.issparse(own.X) else own.X
        np.testing.assert_array_equal(
            values[padded.obs_names.get_indexer(own.obs_names)], expected
        )
        assert not values[~flags].any()
    pca = padded["rna"][~padded.obs["has_rna"].to_numpy()].obsm["X_pca"]
    assert pca.shape == (30, 2)
    assert np.isnan(pca).all()
    np.testing.assert_array_equal(padded["rna"][rna.obs_names].obsm["X_pca"], rna.obsm["X_pca"])
    # Each modality's obs holds its own cells' batch (padded cells: missing); the fix given
    # combines them rather than inventing a batch for the padded cells.
    with pytest.raises(InputError, match="modality 'rna', 'atac' have: copy it") as refused:
        MultiVAE.setup_mudata(padded, batch_key="batch", modalities=RNA_ATAC)
    fix = "mdata['rna'].obs['batch'].combine_first(mdata['atac'].obs['batch'])"
    assert fix in str(refused.value)
    padded.obs["batch"] = padded["rna"].obs["batch"].combine_first(padded["atac"].obs["batch"])
    assert (padded.obs["batch"] == sim.obs["batch"].loc[padded.obs_names]).all()
    presence = {"rna": "has_rna", "atac": "has_atac"}
    model = _train(padded, setup_kwargs={"presence_keys": presence}, n_latent=4)
    latent = model.get_latent_representation(modality="rna")
    assert (np.isnan(latent).any(axis=1) == ~padded.obs["has_rna"].to_numpy()).all()
    # Dtypes are kept; boolean obs columns become nullable, so the copy can be written.
    rna.layers["counts"] = sparse.csr_matrix(rna.X, dtype=np.int32)
    rna.obs["doublet"] = np.arange(rna.n_obs) % 5 == 0
    rna.varm["loadings"] = np.ones((rna.n_vars, 2))
    padded = pad_modalities(md.MuData({"rna": rna, "atac": atac}))
    assert padded["rna"].layers["counts"].dtype == np.int32
    assert padded["rna"].obs["doublet"].dtype == "boolean"
    padded.write(tmp_path / "padded.h5mu")
    padded["rna"].varm["loadings"][0, 0] = 5  # shares no arrays with the input
    assert rna.varm["loadings"][0, 0] == 1
    # Padding again keeps each cell's flags; what the cells' rows hold elsewhere is kept too.
    again = pad_modalities(padded)
    for name in ("rna", "atac"):
        assert (again.obs[f"has_{name}"] == padded.obs[f"has_{name}"]).all()
        assert not again.obs[f"has_{name}"].all()
    mosaic = md.MuData({"rna": rna.copy(), "atac": atac})
    mosaic["rna"].raw = mosaic["rna"].copy()
    mosaic["rna"].layers["counts_only"] = mosaic["rna"].X.copy()
    mosaic["rna"].X = None  # counts in a layer only
    mosaic.mod["gone"] = atac[:10].copy()
    mosaic.update()
    del mosaic.mod["gone"]
    mosaic.update()  # mudata keeps obsm["gone"], its map of that modality's cells
    assert "gone" in mosaic.obsm
    mosaic.obsp["graph"] = sparse.identity(mosaic.n_obs, format="csr")
    mosaic.varm["weights"] = np.ones((mosaic.n_vars, 2))
    mosaic.var["selected"] = True
    padded = pad_modalities(mosaic)
    assert padded["rna"].X is None
    assert padded["rna"].raw.shape == (padded.n_obs, rna.n_vars)
    assert (padded.obsp["graph"] != mosaic.obsp["graph"]).nnz == 0
    np.testing.assert_array_equal(padded.varm["weights"], mosaic.varm["weights"])
    assert padded.var["selected"].all()
    assert "gone" not in padded.obsm
    assert "gone" not in padded.varm
    padded.obsm["is_doublet"] = np.zeros((padded.n_obs, 1), dtype=bool)  # a user's, kept
    padded.obs["has_rna"] = padded.obs["has_rna"].astype(int)  # read as MultiVAE reads flags
    assert (pad_modalities(padded).obs["has_rna"] == padded.obs["has_rna"].astype(bool)).all()
    assert "is_doublet" in pad_modalities(padded).obsm
    padded.obs["has_rna"] = padded.obs["has_rna"].astype("boolean")
    padded.obs.loc[padded.obs_names[:3], "has_rna"] = pd.NA
    with pytest.raises(InputError, match="has missing values"):
        pad_modalities(padded)
    padded.obs["has_rna"] = "yes"
    with pytest.raises(InputError, match="must be boolean"):
        pad_modalities(padded)
    del padded.obs["has_rna"]
    padded.mod["rna"] = padded["rna"][:, 1:].copy()  # a feature removed, no update()
    with pytest.raises(InputError, match=r"call `mdata.update\(\)` first"):
        pad_modalities(padded)
    with pytest.raises(InputError, match="takes a MuData; got AnnData"):
        pad_modalities(rna)
    backed = md.read_h5mu(tmp_path / "padded.h5mu", backed=True)
    with pytest.raises(InputError, match="needs the MuData in memory"):
        pad_modalities(backed)
    rna.obs_names = [*rna.obs_names[:-1], rna.obs_names[0]]
    with pytest.raises(InputError, match="repeated cell names"):
        pad_modalities(md.MuData({"rna": rna, "atac": atac}))


def test_padding_matches_the_mudata_features_by_name():
    sim = _mdata()
    mosaic = md.MuData({"rna": sim["rna"][30:].copy(), "atac": sim["atac"][:170].copy()})
    # mudata >= 0.4's update() lists a modality's new features after the other modalities'
    # (and its varmap says where each one is): the layout of an RNA feature added last.
    moved = np.r_[1 : mosaic.n_vars, 0]
    mosaic.var = mosaic.var.iloc[moved].copy()
    for name in mosaic.mod:
        mosaic.varmap[name] = np.asarray(mosaic.varmap[name])[moved]
    position = mosaic.var_names.map(
        {name: i for i, name in enumerate([*sim["rna"].var_names, *sim["atac"].var_names])}
    ).to_numpy(dtype=float)
    mosaic.var["position"] = position
    mosaic.varm["weights"] = np.c_[position, -position]
    mosaic.varp["self"] = sparse.diags(position, format="csr")
    padded = pad_modalities(mosaic)
    in_turn = np.arange(mosaic.n_vars)
    assert padded.var_names.equals(pd.Index([*sim["rna"].var_names, *sim["atac"].var_names]))
    np.testing.assert_array_equal(padded.var["position"], in_turn)
    np.testing.assert_array_equal(padded.varm["weights"], np.c_[in_turn, -in_turn])
    assert sparse.issparse(padded.varp["self"])
    np.testing.assert_array_equal(padded.varp["self"].toarray(), np.diag(in_turn))
    assert mosaic.var_names[0] == sim["rna"].var_names[1]  # the input is left as it is
    # Names that modalities share (a gene and its protein, in CITE-seq) are placed by mudata's
    # varmap after update(), which lists a modality's new feature last from mudata 0.4.
    rna = sim["rna"][:, :4].copy()
    prot = ad.AnnData(np.ones((sim.n_obs, 2), dtype=np.float32))
    prot.obs_names, prot.var_names = sim.obs_names, [rna.var_names[1], "p2"]
    shared = md.MuData({"rna": rna[:, :3].copy(), "prot": prot})
    shared.mod["rna"] = rna
    shared.update()
    at = {name: np.asarray(shared.varmap[name]).ravel() for name in ("rna", "prot")}
    pairs = zip(at["rna"], at["prot"], strict=True)
    shared.var["label"] = [f"rna{r}" if r else f"prot{p}" for r, p in pairs]
    labels = pad_modalities(shared).var["label"].tolist()
    assert labels == ["rna1", "rna2", "rna3", "rna4", "prot1", "prot2"]


def test_elbo_and_reconstruction_error_match_training_history():
    mdata = _mdata(n_cells=300, missing_fraction=0.2)
    model = _train(mdata, max_epochs=3, n_latent=4)
    history = model.history["elbo_validation"].iloc[-1, 0]
    elbo = float(model.get_elbo(indices=model.validation_indices))
    assert elbo < 0
    assert abs(-elbo - history) < 0.02 * history  # posterior draws differ
    errors = model.get_reconstruction_error(indices=model.validation_indices)
    assert set(errors) == {"reconstruction_rna", "reconstruction_atac"}
    assert all(float(value) > 0 for value in errors.values())


def test_refuses_bad_modalities():
    mdata = _mdata()
    with pytest.raises(InputError, match="no modality 'protein'"):
        MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "protein"})
    with pytest.raises(InputError, match="unknown keys"):
        MultiVAE.setup_mudata(mdata, modalities={"rna": "rna"})
    with pytest.raises(InputError, match="modalities="):
        MultiVAE.setup_mudata(mdata)
    with pytest.raises(InputError, match="names no data"):
        MultiVAE.setup_mudata(mdata, modalities={"batch_key": "rna"})
    with pytest.raises(InputError, match="MuData"):
        MultiVAE.setup_mudata(mdata["rna"], modalities=RNA_ATAC)
    with pytest.raises(InputError, match="setup_mudata"):
        MultiVAE.setup_anndata(mdata["rna"])
    with pytest.raises(InputError, match="has no argument 'layer'"):  # not scvi-tools' TypeError
        MultiVAE.setup_mudata(mdata, layer="counts", extend_categories=False, modalities=RNA_ATAC)
    with pytest.raises(InputError, match="no column 'plate'"):
        MultiVAE.setup_mudata(mdata, batch_key="plate", modalities=RNA_ATAC)
    # TOTALVI's order (rna_layer, protein_layer): the protein layer was read from X instead.
    rna_protein = {"rna_layer": "rna", "protein_layer": "atac"}
    with pytest.raises(InputError, match=r"atac_layer='counts': given.*protein_layer='counts'"):
        MultiVAE.setup_mudata(mdata, "counts", "counts", modalities=rna_protein)
    with pytest.raises(InputError, match="presence_keys"):
        MultiVAE.setup_mudata(mdata, presence_keys={"protein": "has_rna"}, modalities=RNA_ATAC)
    MultiVAE.setup_mudata(mdata, modalities=RNA_ATAC)
    for targets in ("rna", ["RNA"]):  # were read as ['r', 'n', 'a'] / silently ignored
        with pytest.raises(InputError, match="cross_reconstruction_targets must list some of"):
            MultiVAE(mdata, cross_reconstruction_targets=targets)


def test_refuses_bad_matrices():
    sim = _mdata(n_proteins=6)
    empty = md.MuData(
        {"rna": sim["rna"].copy(), "atac": ad.AnnData(np.zeros((200, 0)), obs=sim.obs.copy())}
    )
    with pytest.raises(InputError, match="no features"):
        MultiVAE.setup_mudata(empty, modalities=RNA_ATAC)
    prot = sim["prot"].copy()
    prot.X = np.log1p(prot.X.toarray())
    lognorm = md.MuData({"rna": sim["rna"].copy(), "prot": prot})
    with pytest.raises(InputError, match="non-integer") as refused:
        MultiVAE.setup_mudata(lognorm, modalities=RNA_PROT)
    assert "Pass protein_layer= naming the layer with raw counts" in str(refused.value)
    rna = sim["rna"].copy()
    rna.X = rna.X.toarray()
    rna.X[0, 0] = np.nan
    with_nan = md.MuData({"rna": rna, "atac": sim["atac"].copy()})
    with pytest.raises(InputError, match="NaN"):
        MultiVAE.setup_mudata(with_nan, modalities=RNA_ATAC)
    nothing = _mdata(missing_fraction=0.2)
    nothing["atac"].X = sparse.csr_matrix(nothing["atac"].shape, dtype=np.float32)
    with pytest.raises(InputError, match="none of the modalities"):
        MultiVAE.setup_mudata(nothing, modalities=RNA_ATAC)


def test_query_cells_without_data_are_encoded_by_get_and_load(tmp_path):
    model = _train(_mdata(), max_epochs=1)
    model.save(tmp_path / "model")
    query = _mdata(missing_fraction=0.2, seed=1)
    query["atac"].X = sparse.csr_matrix(query["atac"].shape, dtype=np.float32)
    expected = model.get_latent_representation(query.copy())
    loaded = MultiVAE.load(tmp_path / "model", adata=query)
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, rtol=1e-5)


def test_size_factor_is_a_library_size_and_relative_factors_warn(warnings_as_errors):
    mdata = _mdata()
    totals = np.asarray(mdata["rna"].X.sum(1)).ravel()
    mdata.obs["library"] = totals
    mdata.obs["relative"] = totals / np.median(totals)
    with warnings_as_errors():
        warnings.filterwarnings("ignore", "modality 'atac' .* zero in every cell")  # 200 cells
        MultiVAE.setup_mudata(mdata, size_factor_key="library", modalities=RNA_ATAC)
    with pytest.warns(UserWarning, match="size factor is the library size in counts"):
        MultiVAE.setup_mudata(mdata, size_factor_key="relative", modalities=RNA_ATAC)


def test_refuses_bad_requests():
    mdata = _mdata()
    model = _train(mdata, max_epochs=1)
    for library_size in ("latent", 0, -1.0, float("nan")):
        with pytest.raises(InputError, match="library_size must be a positive number"):
            model.get_normalized_expression(library_size=library_size)
    with pytest.raises(InputError, match="not a data type"):
        model.get_latent_representation(modality="protein")
    with pytest.raises(InputError, match="same data type"):
        model.predict(mdata, source="rna", target="rna")
    with pytest.raises(InputError, match="no modality 'atac'"):
        model.predict(md.MuData({"rna": mdata["rna"].copy()}), source="atac", target="rna")
    with pytest.raises(InputError, match="not a batch"):
        model.get_normalized_expression(transform_batch="batch_9")
    with pytest.raises(InputError, match="takes one batch, not list"):
        model.predict(mdata, source="rna", target="atac", transform_batch=["batch_0"])
    # Several batches: the mean of the values decoded as each (as MULTIVI).
    each = [model.get_normalized_accessibility(transform_batch=b) for b in ("batch_0", "batch_1")]
    averaged = model.get_normalized_accessibility(transform_batch=["batch_0", "batch_1"])
    np.testing.assert_allclose(averaged, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-7)
    assert not np.allclose(each[0], each[1])
    with pytest.raises(InputError, match="transform_batch is an empty list"):
        model.get_normalized_accessibility(transform_batch=[])
    with pytest.raises(InputError, match=r"^gene_list must be a list of names: \['gene_0'\]"):
        model.get_normalized_expression(gene_list="gene_0")
    with pytest.raises(InputError, match=r"model.training_var_names\['atac'\]"):
        model.get_normalized_accessibility(region_list=["nope"])
    query = mdata["atac"].copy()
    query.obs["batch"] = "batch_9"
    with pytest.raises(InputError, match=r"not trained with.*Relabel those.*load_query_data"):
        model.predict(query, source="atac", target="rna")
    query.obs["batch"] = pd.Series(["batch_0", None] * (query.n_obs // 2), dtype="category").values
    with pytest.raises(InputError, match=r"obs\['batch'\] is missing for \d+ cells") as refused:
        model.predict(query, source="atac", target="rna")
    names = {"adata": query}
    exec(re.search(r"`(.+)`", str(refused.value))[1], names)  # the advice, as pasted
    assert model.predict(names["adata"], source="atac", target="rna").n_obs == query.n_obs // 2
    with pytest.raises(ValueError, match="joint"):
        MultiVAE(mdata, joint="sum")
    with pytest.raises(ValueError, match="invariance"):
        MultiVAE(mdata, invariance="gan")
    assert torch.get_num_threads() == 1


def test_predict_names_a_batch_column_of_another_type():
    mdata = _mdata(n_cells=120)
    mdata.obs["batch"] = pd.Categorical(mdata.obs["batch"]).codes.astype(int)
    model = _train(mdata, max_epochs=1)
    query = _mdata(n_cells=40, seed=1)
    query.obs["batch"] = pd.Categorical(query.obs["batch"]).codes.astype(str)
    # It advised relabelling or load_query_data, which refuses them too.
    with pytest.raises(InputError, match="Only the type differs") as refused:
        model.predict(query, source="atac", target="rna")
    names = {"query": query}
    exec(re.search(r"`(.+)`", str(refused.value))[1], names)  # the advice, as pasted
    assert model.predict(query, source="atac", target="rna").n_obs == query.n_obs
    # Cells are encoded with their own batch: transform_batch (the decoder's) does not cover it.
    query.obs["batch"] = query.obs["batch"].astype(str)
    with pytest.raises(InputError, match="Only the type differs"):
        model.predict(query, source="atac", target="rna", transform_batch=0)
    # Read from a modality: the advice names it in a MuData, the AnnData's own obs otherwise.
    mdata = _mdata(n_cells=120)
    mdata["rna"].obs["batch"] = pd.Categorical(mdata.obs["batch"]).codes.astype(int)
    model = _train(mdata, modalities={**RNA_ATAC, "batch_key": "rna"}, max_epochs=1)
    atac = query["atac"].copy()
    atac.obs["batch"] = query.obs["batch"].to_numpy()
    with pytest.raises(InputError, match=r"`query\.obs\['batch'\] = ") as refused:
        model.predict(atac, source="atac", target="rna")
    exec(re.search(r"`(.+)`", str(refused.value))[1], {"query": atac})
    assert model.predict(atac, source="atac", target="rna").n_obs == atac.n_obs
    unnamed = atac.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: names not unique
        unnamed.var_names = ["peak"] * unnamed.n_vars
    with pytest.raises(InputError, match="lacks 150 of the 150 features"):  # numpy's IndexError
        model.predict(unnamed, source="atac", target="rna")


def test_a_saved_setup_from_before_the_unread_layer_check_still_loads(tmp_path):
    mdata = _mdata(n_cells=100)
    model = _train(mdata, max_epochs=1)
    model.save(tmp_path / "model")
    attributes = tmp_path / "model" / "attributes.json"
    saved = attributes.read_text()  # as saved with TOTALVI's order before the check
    attributes.write_text(saved.replace('["protein_layer", null]', '["protein_layer", "counts"]'))
    loaded = MultiVAE.load(tmp_path / "model", mdata=_mdata(n_cells=60, seed=1))
    assert loaded.registry_["setup_args"]["protein_layer"] == "counts"
    assert loaded.get_latent_representation().shape == (60, 8)


def test_predict_gives_nan_for_cells_without_the_source():
    mdata = _mdata(missing_fraction=0.3)
    model = _train(mdata, setup_kwargs={"presence_keys": PRESENCE})
    has_atac = mdata.obs["has_atac"].to_numpy()
    with pytest.warns(UserWarning, match=f"{int((~has_atac).sum())} cells have no atac data"):
        prediction = model.predict(mdata, source="atac", target="rna", n_samples=3)
    np.testing.assert_array_equal(np.isnan(prediction.X).all(1), ~has_atac)
    np.testing.assert_array_equal(np.isnan(prediction.layers["std"]).all(1), ~has_atac)
    assert np.isfinite(prediction.X[has_atac]).all()
    # Without flags (an AnnData of the source alone), cells without counts are the ones missing.
    alone = mdata["atac"].copy()
    with pytest.warns(UserWarning, match="cells have no atac data"):
        without_flags = model.predict(alone, source="atac", target="rna", n_samples=0)
    np.testing.assert_array_equal(np.isnan(without_flags.X).all(1), ~has_atac)
    # Flags win over counts, read as in training (present above 0.5), from the MuData's obs or
    # from the source AnnData's own obs.
    flagged = mdata.copy()
    atac = flagged["atac"].X.toarray()
    atac[~has_atac] = 1.0
    flagged["atac"].X = sparse.csr_matrix(atac)
    flagged.obs["has_atac"] = np.where(has_atac, 1.0, 0.2)
    alone = flagged["atac"].copy()
    alone.obs["has_atac"] = flagged.obs["has_atac"].to_numpy()
    for data in (flagged, alone):
        with pytest.warns(UserWarning, match=f"{int((~has_atac).sum())} cells have no atac"):
            result = model.predict(data, source="atac", target="rna", n_samples=0)
        np.testing.assert_array_equal(np.isnan(result.X).all(1), ~has_atac)


def test_model_loaded_without_data_predicts_resaves_and_transforms_batch(tmp_path):
    mdata = _mdata(n_cells=160)
    model = _train(mdata)
    # transform_batch decodes every cell as the named batch: as their own for its cells.
    in_batch_0 = (mdata.obs["batch"] == "batch_0").to_numpy()
    own = model.get_normalized_expression(return_numpy=True)
    as_0 = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    as_1 = model.get_normalized_expression(transform_batch="batch_1", return_numpy=True)
    np.testing.assert_allclose(as_0[in_batch_0], own[in_batch_0], rtol=1e-5)
    assert not np.allclose(as_0, as_1, rtol=1e-3)
    own = model.predict(mdata, source="atac", target="rna", n_samples=0).X
    as_0, as_1 = (
        model.predict(mdata, source="atac", target="rna", n_samples=0, transform_batch=batch).X
        for batch in ("batch_0", "batch_1")
    )
    np.testing.assert_allclose(as_0[in_batch_0], own[in_batch_0], rtol=1e-5)
    assert not np.allclose(as_0, as_1, rtol=1e-3)
    query = _mdata(n_cells=40, seed=1)
    expected = model.predict(
        query, source="atac", target="rna", n_samples=0, transform_batch="batch_1"
    )
    model.save(tmp_path / "bare")
    bare = MultiVAE.load(tmp_path / "bare")
    bare.save(tmp_path / "again")  # a model without data saves its training features too
    again = MultiVAE.load(tmp_path / "again")
    for loaded in (bare, again):
        prediction = loaded.predict(
            query, source="atac", target="rna", n_samples=0, transform_batch="batch_1"
        )
        np.testing.assert_array_equal(prediction.X, expected.X)
        assert list(prediction.var_names) == list(expected.var_names)
        expression = loaded.get_normalized_expression(
            query, transform_batch="batch_1", return_numpy=True
        )
        assert np.isfinite(expression).all()


def test_features_are_named_as_in_training_after_the_registered_data_changes(tmp_path):
    mdata = _mdata(n_cells=160)
    model = _train(mdata)
    query = _mdata(n_cells=40, seed=1)["atac"].copy()
    expected = model.predict(query, source="atac", target="rna", n_samples=0).to_df()
    # The user reorders the genes and peaks of the registered MuData after training.
    for name in ("rna", "atac"):
        mdata.mod[name] = mdata[name][:, mdata[name].var_names[::-1]].copy()
    prediction = model.predict(query, source="atac", target="rna", n_samples=0).to_df()
    pd.testing.assert_frame_equal(prediction, expected)
    model.save(tmp_path / "model")
    loaded = MultiVAE.load(tmp_path / "model").predict(query, "atac", "rna", n_samples=0)
    pd.testing.assert_frame_equal(loaded.to_df(), expected)
    with pytest.raises(InputError, match="changed after setup"):
        model.get_latent_representation()


def test_predict_reads_a_backed_dense_source_in_any_feature_order(tmp_path):
    mdata = _mdata(n_cells=160)
    model = _train(mdata)
    atac = _mdata(n_cells=40, seed=1)["atac"].copy()
    expected = model.predict(atac, source="atac", target="rna", n_samples=0).X
    reversed_peaks = atac[:, atac.var_names[::-1]].copy()
    reversed_peaks.X = np.asarray(reversed_peaks.X.toarray())
    reversed_peaks.write_h5ad(tmp_path / "atac.h5ad")
    backed = ad.read_h5ad(tmp_path / "atac.h5ad", backed="r")
    prediction = model.predict(backed, source="atac", target="rna", n_samples=0).X
    np.testing.assert_allclose(prediction, expected, rtol=1e-5)
    # Extra features may repeat a name (unmade-unique symbols); trained ones may not.
    extra = ad.AnnData(sparse.csr_matrix((atac.n_obs, 2)), obs=atac.obs)
    extra.var_names = ["extra", "extra"]
    with_extra = ad.concat([atac, extra], axis=1, merge="first")
    with_extra.obs = atac.obs
    prediction = model.predict(with_extra, source="atac", target="rna", n_samples=0).X
    np.testing.assert_allclose(prediction, expected, rtol=1e-5)
    twice = ad.concat([atac, atac[:, :1]], axis=1, merge="first")
    twice.obs = atac.obs
    with pytest.raises(InputError, match="holds trained features more than once"):
        model.predict(twice, source="atac", target="rna")


def test_backed_sparse_mudata_with_protein_matches_in_memory(tmp_path):
    mdata = _mdata(n_cells=120, n_proteins=10)
    for modality in mdata.mod.values():
        modality.X = sparse.csr_matrix(modality.X)
    mdata.write(tmp_path / "cells.h5mu")
    backed = md.read_h5mu(tmp_path / "cells.h5mu", backed=True)
    models = []
    for data in (mdata, backed):
        scvi.settings.seed = 0
        models.append(
            _train(data, ALL_THREE, max_epochs=1, n_latent=4, protein_likelihood="mixture")
        )
    in_memory, on_disk = models
    for name in ("protein_median_total", "protein_log_background"):
        torch.testing.assert_close(getattr(on_disk.module, name), getattr(in_memory.module, name))
    # Training streams a backed MuData in blocks (another minibatch order): compare inference.
    on_disk.module.load_state_dict(in_memory.module.state_dict())
    np.testing.assert_allclose(
        on_disk.get_normalized_protein(), in_memory.get_normalized_protein(), rtol=1e-5
    )


@pytest.fixture(scope="module")
def untrained_mosaic():
    """An untrained module and a 64-cell minibatch where some cells miss RNA or ATAC (flags)."""
    mdata = _mdata(n_cells=64, n_genes=40, n_peaks=80, missing_fraction=0.4)
    # Garbage counts in the rows flagged missing: the model must never read them.
    rng = np.random.default_rng(0)
    for name in ("rna", "atac"):
        values = mdata[name].X.toarray()
        missing = ~mdata.obs[f"has_{name}"].to_numpy()
        values[missing] = rng.poisson(3.0, size=values[missing].shape)
        mdata[name].X = sparse.csr_matrix(values)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC, presence_keys=PRESENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MultiVAE(mdata, n_hidden=16, n_latent=4, invariance="mi")
    tensors = next(iter(model._make_data_loader(mdata, batch_size=64)))
    return model.module.eval(), tensors


def _flags(tensors):
    return {m: tensors[f"has_{m}"].reshape(-1) > 0.5 for m in ("rna", "atac")}


def test_missing_modalities_leave_no_trace_in_the_loss(untrained_mosaic):
    """Flagged-missing rows: no reconstruction term, no cross-reconstruction, no alignment."""
    module, tensors = untrained_mosaic
    has = _flags(tensors)
    assert (~has["rna"]).any()
    assert (~has["atac"]).any()
    inference_outputs, generative_outputs = module.forward(tensors, compute_loss=False)
    losses = module.loss(tensors, inference_outputs, generative_outputs)
    for m in ("rna", "atac"):
        term = losses.reconstruction_loss[f"reconstruction_{m}"]
        assert (term[~has[m]] == 0).all(), m
        assert (term[has[m]] > 0).all(), m
    single = ~(has["rna"] & has["atac"])
    for alignment in ("joint", "pairwise"):
        module.alignment = alignment
        try:
            value = module.alignment_loss(inference_outputs)
        finally:
            module.alignment = "joint"
        assert (value[single] == 0).all(), alignment
        assert (value[~single] > 0).all(), alignment
    cross = module.cross_reconstruction_loss(tensors, inference_outputs, 1.0)
    assert (cross[single] == 0).all()
    assert (cross[~single] > 0).all()


def test_missing_rows_never_reach_the_encoders_batch_norm_in_training(untrained_mosaic):
    """In training, batch norm takes its statistics from the minibatch: from present cells only,
    whatever the absent rows hold; a single present cell uses the running statistics."""
    module, tensors = untrained_mosaic
    has = _flags(tensors)["rna"]
    x = tensors[scvi.REGISTRY_KEYS.X_KEY]
    norm = module.encoders["rna"].trunk.fc_layers[0][1]

    def posterior(rna, rows=slice(None)):
        batch = {
            k: v[rows] if torch.is_tensor(v) and len(v) == len(x) else v
            for k, v in tensors.items()
        }
        batch[scvi.REGISTRY_KEYS.X_KEY] = rna[rows]
        with torch.no_grad():
            out = module.inference(**module._get_inference_input(batch))
        return out["qzm"], out["means"]["rna"]

    state = {k: v.clone() for k, v in module.state_dict().items()}
    dropouts = [layer for layer in module.modules() if isinstance(layer, torch.nn.Dropout)]
    rates = [layer.p for layer in dropouts]
    module.train()
    try:
        for layer in dropouts:  # to compare outputs; batch norm stays in training mode
            layer.p = 0.0
        joint, rna_expert = posterior(x)  # absent rows hold garbage (fixture)
        zeros = x.clone()
        zeros[~has] = 0.0
        torch.testing.assert_close(posterior(zeros)[0], joint, rtol=0, atol=0)
        present = has.nonzero().reshape(-1)
        _, alone = posterior(x, present)  # the same cells in a minibatch without the others
        torch.testing.assert_close(alone, rna_expert[present], rtol=1e-5, atol=1e-6)
        running = norm.running_mean.clone()
        _, single = posterior(x, torch.cat([present[:1], (~has).nonzero().reshape(-1)]))
        assert torch.isfinite(single).all()
        assert norm.training
        torch.testing.assert_close(norm.running_mean, running, rtol=0, atol=0)
    finally:
        for layer, rate in zip(dropouts, rates, strict=True):
            layer.p = rate
        module.load_state_dict(state)
        module.eval()


def test_cross_reconstruction_uses_the_library_and_the_kl_weight(untrained):
    """-log p(x_rna | z ~ q(z | atac)) at the observed library + kl_weight × KL(q(z|atac) ‖ p)."""
    module, tensors = untrained
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    losses = {}
    for kl_weight in (0.0, 1.0):
        torch.manual_seed(0)
        losses[kl_weight] = module.cross_reconstruction_loss(tensors, inference_outputs, kl_weight)
    mean, var = module.combine(
        {"atac": inference_outputs["means"]["atac"]},
        {"atac": inference_outputs["variances"]["atac"]},
        {"atac": inference_outputs["masks"]["atac"]},
    )
    qz = Normal(mean, var.sqrt())
    kl = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(losses[1.0] - losses[0.0], kl, rtol=1e-4, atol=1e-3)
    torch.manual_seed(0)
    z = qz.rsample()
    p_rna = module.generative(
        z, inference_outputs["library"], tensors[scvi.REGISTRY_KEYS.BATCH_KEY], modalities=["rna"]
    )["p_rna"]
    nll = -p_rna.log_prob(tensors[scvi.REGISTRY_KEYS.X_KEY]).sum(-1)
    torch.testing.assert_close(losses[0.0], nll, rtol=1e-4, atol=1e-3)


def test_kl_term_is_the_kl_of_the_joint_posterior_summed_over_latent_dims(untrained):
    module, tensors = untrained
    inference_outputs, generative_outputs = module.forward(tensors, compute_loss=False)
    losses = module.loss(tensors, inference_outputs, generative_outputs)
    mean, var = inference_outputs["qzm"], inference_outputs["qzv"]
    expected = 0.5 * (mean**2 + var - 1.0 - torch.log(var)).sum(-1)
    torch.testing.assert_close(losses.kl_local["kl_z"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("joint", ["poe", "mixture"])
def test_joint_posterior_of_one_expert(untrained, joint, monkeypatch):
    """A cell with one modality: the expert itself (mixture) or expert × prior (poe)."""
    module, _ = untrained
    monkeypatch.setattr(module, "joint", joint)
    gen = torch.Generator().manual_seed(0)
    means = {m: torch.randn(6, 4, generator=gen) for m in ("rna", "atac")}
    variances = {m: torch.rand(6, 4, generator=gen) + 0.1 for m in ("rna", "atac")}
    only_rna = {"rna": torch.ones(6, dtype=torch.bool), "atac": torch.zeros(6, dtype=torch.bool)}
    mean, var = module.combine(means, variances, only_rna)
    if joint == "mixture":
        torch.testing.assert_close(mean, means["rna"])
        torch.testing.assert_close(var, variances["rna"])
    else:
        precision = 1.0 + 1.0 / variances["rna"]
        torch.testing.assert_close(var, 1.0 / precision)
        torch.testing.assert_close(mean, means["rna"] / variances["rna"] / precision)
    # Two experts in the mixture: the moments of the equal-weight mixture.
    both = {"rna": only_rna["rna"], "atac": only_rna["rna"]}
    mean, var = module.combine(means, variances, both)
    if joint == "mixture":
        expected_mean = (means["rna"] + means["atac"]) / 2
        second = sum(variances[m] + means[m] ** 2 for m in means) / 2
        torch.testing.assert_close(mean, expected_mean)
        torch.testing.assert_close(var, second - expected_mean**2)


def test_atac_cell_factor_is_relative_to_the_median_cell(untrained):
    """The cell factor is log(open regions / training median): 0 for a median cell."""
    module, tensors = untrained
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    n_open = (tensors[scvi.REGISTRY_KEYS.ATAC_X_KEY] > 0).float().sum(-1, keepdim=True)
    assert float(module.atac_median_open) > 1
    torch.testing.assert_close(
        inference_outputs["library"]["atac"], torch.log(n_open / module.atac_median_open)
    )


def test_rna_library_is_the_registered_size_factor():
    mdata = _mdata(n_cells=64, n_genes=40, n_peaks=80)
    totals = np.asarray(mdata["rna"].X.sum(1)).ravel()
    mdata.obs["library"] = 2.0 * totals  # within the 10x that does not warn
    MultiVAE.setup_mudata(mdata, batch_key="batch", size_factor_key="library", modalities=RNA_ATAC)
    model = MultiVAE(mdata, n_hidden=16, n_latent=4)
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(mdata, batch_size=64)))
    _, generative_outputs = module.forward(tensors, compute_loss=False)
    expected = tensors[scvi.REGISTRY_KEYS.SIZE_FACTOR_KEY].reshape(-1)
    torch.testing.assert_close(generative_outputs["p_rna"].mu.sum(-1), expected, rtol=1e-4, atol=0)


def test_depth_statistics_and_invariance_inputs_skip_missing_cells(untrained_mosaic):
    """Depth mean/scale from cells with data; missing cells get depth 0 in the penalty inputs."""
    module, tensors = untrained_mosaic
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    depth = module.invariance_inputs(tensors, inference_outputs).continuous
    has = _flags(tensors)
    for i, m in enumerate(("rna", "atac")):
        assert (depth[~has[m], i] == 0).all(), m
        assert (depth[has[m], i] != 0).all(), m
    x = tensors[scvi.REGISTRY_KEYS.ATAC_X_KEY][has["atac"]]
    log_open = torch.log1p((x > 0).float().sum(-1)).double()
    assert float(module.depth_mean[1]) == pytest.approx(float(log_open.mean()), rel=1e-5)


def test_region_factors_match_the_detection_rate_of_cells_with_atac():
    mdata = _mdata(n_cells=100, n_genes=40, n_peaks=80, missing_fraction=0.4)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC, presence_keys=PRESENCE)
    module = MultiVAE(mdata, n_hidden=16, n_latent=4).module
    has_atac = mdata.obs["has_atac"].to_numpy()
    frequency = np.clip((mdata["atac"].X[has_atac].toarray() > 0).mean(0), 1e-5, 1 - 1e-5)
    probability = -np.expm1(-np.exp(module.region_factor.detach().numpy().astype(float)))
    np.testing.assert_allclose(probability, frequency, rtol=1e-4)


def test_normalized_nb_protein_is_at_the_median_protein_library():
    mdata = _mdata(n_cells=100, n_proteins=8)
    model = _train(mdata, modalities=RNA_PROT, max_epochs=1, protein_likelihood="nb")
    median = np.median(np.asarray(mdata["prot"].X.sum(1)).ravel())
    assert float(model.module.protein_median_total) == pytest.approx(median)
    proteins = model.get_normalized_protein(return_numpy=True)
    np.testing.assert_allclose(proteins.sum(1), median, rtol=1e-4)


def test_mixture_protein_background_is_per_batch_and_removed():
    mdata = _mdata(n_cells=100, n_proteins=8)
    model = _train(mdata, modalities=RNA_PROT, max_epochs=1, protein_likelihood="mixture")
    module = model.module
    with torch.no_grad():
        module.protein_log_background[:, 1] += 2.0  # batch_1 has more background
    tensors = next(iter(model._make_data_loader(mdata, batch_size=100)))
    _, outputs = module.forward(tensors, compute_loss=False)
    batch = tensors[scvi.REGISTRY_KEYS.BATCH_KEY].reshape(-1).long()
    expected = torch.exp(module.protein_log_background.detach()[:, batch].T)
    torch.testing.assert_close(outputs["p_protein"].mu1, expected)
    # All background (mixture logits → +∞): nothing left once the background is removed.
    with torch.no_grad():
        module.protein_mixing.bias.fill_(30.0)
    assert np.abs(model.get_normalized_protein(return_numpy=True)).max() < 1e-6
    with torch.no_grad():
        module.protein_mixing.bias.fill_(-30.0)
    assert (model.get_normalized_protein(return_numpy=True) > 0.1).all()


def test_outputs_follow_indices_gene_list_n_samples_and_give_mean():
    mdata = _mdata(n_cells=100)
    model = _train(mdata, max_epochs=1)
    full = model.get_normalized_expression()
    genes = [full.columns[7], full.columns[2]]
    cells = [9, 3, 50]
    subset = model.get_normalized_expression(indices=cells, gene_list=genes)
    pd.testing.assert_frame_equal(subset, full.iloc[cells][genes], rtol=1e-5)
    regions = model.get_normalized_accessibility(return_numpy=True)
    picked = model.get_normalized_accessibility(indices=cells, return_numpy=True)
    np.testing.assert_allclose(picked, regions[cells], rtol=1e-5)
    latent = model.get_latent_representation()
    np.testing.assert_allclose(
        model.get_latent_representation(indices=cells), latent[cells], rtol=1e-5, atol=1e-6
    )
    # give_mean=False: a posterior draw, a new one on each call.
    draw = model.get_latent_representation(give_mean=False)
    assert np.isfinite(draw).all()
    assert not np.allclose(draw, latent)
    assert not np.allclose(model.get_latent_representation(give_mean=False), draw)
    # scvi-tools' return_dist and MULTIVI's modality names.
    means, variances = model.get_latent_representation(indices=cells, return_dist=True)
    np.testing.assert_allclose(means, latent[cells], rtol=1e-5, atol=1e-6)
    assert (variances > 0).all()
    np.testing.assert_array_equal(model.get_latent_representation(modality="joint"), latent)
    np.testing.assert_array_equal(
        model.get_latent_representation(modality="accessibility"),
        model.get_latent_representation(modality="atac"),
    )
    with pytest.raises(InputError, match=r"\['rna', 'atac'\] \(None: all of them\)"):
        model.get_latent_representation(modality="protein")
    # n_samples > 1: an average over posterior draws, not the decoded mean.
    torch.manual_seed(0)
    averaged = model.get_normalized_expression(n_samples=10, return_numpy=True)
    assert not np.allclose(averaged, full.to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(averaged.sum(1), 1.0, rtol=1e-4)


def test_predict_finds_cells_without_source_in_every_block():
    mdata = _mdata(missing_fraction=0.3)
    model = _train(mdata, max_epochs=1)
    has_atac = mdata.obs["has_atac"].to_numpy()
    alone = mdata["atac"].copy()
    with pytest.warns(UserWarning, match=f"{int((~has_atac).sum())} cells have no atac data"):
        prediction = model.predict(alone, source="atac", target="rna", n_samples=0, batch_size=16)
    np.testing.assert_array_equal(np.isnan(prediction.X).all(1), ~has_atac)


def test_predict_gives_the_decoders_the_continuous_covariates():
    mdata = _mdata(n_cells=100)
    mdata.obs["mito"] = np.random.default_rng(0).normal(size=mdata.n_obs)
    model = _train(mdata, max_epochs=1, setup_kwargs={"continuous_covariate_keys": ["mito"]})
    before = model.predict(mdata, source="atac", target="rna", n_samples=0).X
    shifted = mdata.copy()
    shifted.obs["mito"] = shifted.obs["mito"] + 3.0
    after = model.predict(shifted, source="atac", target="rna", n_samples=0).X
    assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()


def test_train_uses_the_learning_rate():
    mdata = _mdata(n_cells=100)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    model = MultiVAE(mdata, n_hidden=16, n_latent=4, invariance=None)
    before = {k: v.detach().clone() for k, v in model.module.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, lr=1e-9, weight_decay=0.0, enable_progress_bar=False)
    after = dict(model.module.named_parameters())
    change = max(float((after[k].detach() - v).abs().max()) for k, v in before.items())
    assert change < 1e-6


def test_predict_transform_batch_changes_the_decoder_only():
    mdata = _mdata(n_cells=100, n_genes=40, n_peaks=80)
    model = _train(mdata, max_epochs=2, n_hidden=16, n_latent=4, encode_covariates=True)
    prediction = model.predict(
        mdata, source="atac", target="rna", n_samples=0, transform_batch="batch_0"
    ).X
    # Expected: the ATAC posterior of each cell given its own batch, decoded as batch_0.
    z = torch.as_tensor(model.get_latent_representation(modality="atac"))
    module = model.module.eval()
    with torch.no_grad():
        p_rna = module.generative(
            z, {}, torch.zeros(len(z), 1, dtype=torch.long), modalities=["rna"]
        )["p_rna"]
    expected = (p_rna.scale * 1e4).numpy()
    np.testing.assert_allclose(prediction, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_differential_expression_and_accessibility_find_cell_type_features():
    mdata = _mdata(n_cells=600, n_genes=60, n_peaks=150, n_cell_types=2, missing_fraction=0.2)
    model = _train(mdata, max_epochs=40, setup_kwargs={"presence_keys": PRESENCE})
    types = mdata.obs["cell_type"].to_numpy()
    one_type = np.flatnonzero(types == "type_0")
    halves = np.zeros((2, mdata.n_obs), dtype=bool)  # two random halves of one cell type
    halves[0, one_type[::2]] = halves[1, one_type[1::2]] = True
    for target, method in (
        ("rna", model.differential_expression),
        ("atac", model.differential_accessibility),
    ):
        counts = mdata[target].X.toarray() if sparse.issparse(mdata[target].X) else mdata[target].X
        has = mdata.obs[f"has_{target}"].to_numpy()
        by_type = method(groupby="cell_type", group1=["type_0"], group2="type_1", silent=True)
        by_type = by_type.loc[mdata[target].var_names]
        observed = [(counts[(types == t) & has] > 0).mean(0) for t in ("type_0", "type_1")]
        if target == "rna":  # log fold change of the mean normalised expression
            norm = counts / counts.sum(1, keepdims=True).clip(1)
            means = [norm[(types == t) & has].mean(0) for t in ("type_0", "type_1")]
            truth, estimate = np.log(means[0] + 1e-4) - np.log(means[1] + 1e-4), by_type.lfc_mean
            called = by_type["is_de_fdr_0.05"]
            assert called.mean() > 0.5
            np.testing.assert_allclose(by_type["non_zeros_proportion1"], observed[0], rtol=1e-6)
        else:
            truth, estimate = observed[1] - observed[0], by_type["effect_size"]
            called = by_type["is_da_fdr"]
            np.testing.assert_allclose(by_type["emp_prob1"], observed[0], rtol=1e-6)
        assert np.corrcoef(truth, estimate)[0, 1] > 0.8, target
        # Two random halves of one cell type: nothing is called, and far less is likely.
        split = method(idx1=halves[0], idx2=halves[1], silent=True)
        fdr, probability = called.name, "proba_de" if target == "rna" else "prob_da"
        assert split[fdr].mean() < 0.05, target
        assert split[probability].mean() < 0.5 * by_type[probability].mean(), target
    # the log2 fold change asked for: pseudocounts are not estimated from X, which holds RNA
    log_fold = model.differential_accessibility(
        idx1=halves[0], idx2=halves[1], change_fn="log-fold", silent=True
    )
    assert np.isfinite(log_fold["prob_da"]).all()
    with pytest.raises(InputError, match=r"differential_accessibility needs atac data; .*'rna'"):
        _train(_mdata(n_proteins=5), modalities=RNA_PROT).differential_accessibility(
            groupby="cell_type"
        )


def test_differential_protein_finds_cell_type_proteins():
    mdata = _mdata(n_cells=600, n_genes=60, n_proteins=30, n_cell_types=2)
    model = _train(mdata, modalities=RNA_PROT, max_epochs=40)
    types = mdata.obs["cell_type"].to_numpy()
    by_type = model.differential_protein(groupby="cell_type", group1=["type_0"], silent=True)
    by_type = by_type.loc[mdata["prot"].var_names]
    # The default "nb" likelihood: expected counts at the group's protein library size.
    true_mean = mdata["prot"].layers["true_mean"]
    truth = np.log2(true_mean[types == "type_0"].mean(0) / true_mean[types == "type_1"].mean(0))
    assert np.corrcoef(truth, by_type["lfc_mean"])[0, 1] > 0.95
    assert np.abs(truth - by_type["lfc_mean"]).mean() < 0.5  # shares of the library: 7
    assert by_type["is_de_fdr_0.05"].mean() > 0.2
    counts = mdata["prot"].X.toarray()
    np.testing.assert_allclose(by_type["raw_mean1"], counts[types == "type_0"].mean(0), rtol=1e-6)
    # Two random halves of one cell type: nothing is called, and far less is likely.
    one_type = np.flatnonzero(types == "type_0")
    halves = np.zeros((2, mdata.n_obs), dtype=bool)
    halves[0, one_type[::2]] = halves[1, one_type[1::2]] = True
    split = model.differential_protein(idx1=halves[0], idx2=halves[1], silent=True)
    assert split["is_de_fdr_0.05"].mean() < 0.05
    assert split["proba_de"].mean() < 0.6 * by_type["proba_de"].mean()
    # The prior count is added to the decoded values, as TOTALVI's: a large one hides any change.
    assert by_type["lfc_mean"].abs().max() > 1
    flat = model.differential_protein(
        groupby="cell_type", group1=["type_0"], protein_prior_count=1e9, silent=True
    )
    assert flat["lfc_mean"].abs().max() < 0.05
    assert flat["scale1"].min() > 1e9
    for count in (-1, np.nan, np.inf, None):
        with pytest.raises(InputError, match="protein_prior_count must be a number, 0 or more"):
            model.differential_protein(groupby="cell_type", protein_prior_count=count)
    np.testing.assert_allclose(
        by_type["non_zeros_proportion1"], (counts[types == "type_0"] > 0).mean(0), rtol=1e-6
    )
    # Cells without protein data (all-zero rows) have no library size to compare counts at.
    mosaic = _mdata(n_proteins=5)
    without = np.arange(mosaic.n_obs) < 50
    protein = mosaic["prot"].X.toarray()
    protein[without] = 0
    mosaic["prot"].X = sparse.csr_matrix(protein)
    mosaic_model = _train(mosaic, modalities=RNA_PROT)
    with pytest.raises(InputError, match="holds no cell with protein data"):
        mosaic_model.differential_protein(idx1=without, idx2=~without, silent=True)
    with pytest.raises(InputError, match=r"differential_protein needs protein data; .*'rna'"):
        _train(_mdata()).differential_protein(groupby="cell_type")


def test_differential_expression_leaves_the_data_as_it_was(monkeypatch):
    mdata = _mdata(n_cells=120, missing_fraction=0.2)
    model = _train(mdata, setup_kwargs={"presence_keys": PRESENCE})
    columns = list(mdata.obs.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no 1 / 0 for cells without RNA
        model.differential_expression(groupby="cell_type", silent=True)
    mask = np.arange(mdata.n_obs) < 50
    with pytest.raises(ValueError, match="needs batch_correction=True"):  # scvi: "Inconsistent"
        model.differential_accessibility(idx1=mask, batchid1=["batch_0"], silent=True)
    assert list(mdata.obs.columns) == columns
    # scvi-tools' temporary column would replace a column of that name: it is put back.
    mdata.obs["_scvi_temp_de"] = "mine"
    model.differential_expression(idx1=mask, silent=True)
    with pytest.raises(ValueError, match="needs batch_correction=True"):
        model.differential_expression(idx1=mask, batchid1=["batch_0"], silent=True)
    assert (mdata.obs["_scvi_temp_de"] == "mine").all()

    def fails_after_writing(*args, **kwargs):  # as scvi-tools does on an error
        mdata.obs["_scvi_temp_de"] = "scvi's"
        raise ValueError("failed inside scvi-tools")

    with monkeypatch.context() as patch:
        patch.setattr("scgexp._differential._de_core", fails_after_writing)
        with pytest.raises(ValueError, match="inside scvi-tools"):
            model.differential_expression(idx1=mask, silent=True)
    assert (mdata.obs["_scvi_temp_de"] == "mine").all()
    # A group without RNA: its observed statistics are NaN, the rest is computed.
    no_rna = ~mdata.obs["has_rna"].to_numpy()
    de = model.differential_expression(idx1=no_rna, idx2=~no_rna, silent=True)
    assert de["raw_mean1"].isna().all()
    assert de["raw_mean2"].notna().all()
    assert de["lfc_mean"].notna().all()
    no_atac = ~mdata.obs["has_atac"].to_numpy()
    da = model.differential_accessibility(idx1=~no_atac, idx2=no_atac, silent=True)
    assert da["emp_prob2"].isna().all()
    assert da["emp_prob1"].notna().all()


def test_differential_protein_scales_at_the_mean_library_of_cells_with_protein():
    mdata = simulate_multiome(n_cells=200, n_genes=40, n_peaks=50, n_proteins=6, seed=0)
    protein = mdata["prot"].X.toarray()
    protein[:50] = 0  # no protein data
    mdata["prot"].X = sparse.csr_matrix(protein)
    MultiVAE.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "prot"}
    )
    model = MultiVAE(mdata, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    # Decoded values of 1: the test's values are the library factor plus the prior count.
    model._decoded = lambda target, data, indices, *args, **kwargs: np.ones((len(indices), 6))
    totals = protein.sum(1)
    median = float(model.module.protein_median_total)
    idx1 = np.arange(200) < 100  # 50 cells without protein, 50 with
    de = model.differential_protein(idx1=idx1, idx2=~idx1, protein_prior_count=0.3, silent=True)
    np.testing.assert_allclose(de["scale1"], totals[50:100].mean() / median + 0.3, rtol=1e-5)
    np.testing.assert_allclose(de["scale2"], totals[100:].mean() / median + 0.3, rtol=1e-5)
    np.testing.assert_allclose(de["raw_mean1"], protein[50:100].mean(0), rtol=1e-6)
    np.testing.assert_allclose(de["non_zeros_proportion2"], (protein[100:] > 0).mean(0), rtol=1e-6)


def test_differential_protein_mixture_is_not_rescaled():
    mdata = simulate_multiome(n_cells=120, n_genes=30, n_peaks=40, n_proteins=5, seed=0)
    MultiVAE.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "prot"}
    )
    model = MultiVAE(mdata, n_latent=4, protein_likelihood="mixture")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    model._decoded = lambda target, data, indices, *args, **kwargs: np.ones((len(indices), 5))
    idx1 = np.arange(120) < 60
    de = model.differential_protein(idx1=idx1, idx2=~idx1, silent=True)
    np.testing.assert_allclose(de[["scale1", "scale2"]], 1.1, rtol=1e-6)


def test_model_arguments_reach_the_module_and_trainer(training_arguments):
    mdata = _mdata(n_cells=64, n_genes=40, n_peaks=80)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    model = MultiVAE(mdata, alignment_weight=0.25, invariance="mi", invariance_weight=0.3)
    assert model.module.alignment_weight == 0.25
    assert model.module.invariance.weight == 0.3
    model.train(max_epochs=50, early_stopping_patience=3)
    assert training_arguments["early_stopping_patience"] == 3


def test_joint_alignment_leaves_the_joint_posterior_alone():
    """Each encoder learns to reach the joint posterior; the joint is not pulled to its view."""
    mdata = _mdata(n_cells=64, n_genes=40, n_peaks=80)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    model = MultiVAE(mdata, alignment="joint", invariance=None)
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(mdata, batch_size=64)))
    outputs = module.inference(**module._get_inference_input(tensors))
    outputs["qzm"] = outputs["qzm"].detach().requires_grad_()
    outputs["qzv"] = outputs["qzv"].detach().requires_grad_()
    module.alignment_loss(outputs).sum().backward()
    assert outputs["qzm"].grad is None
    assert outputs["qzv"].grad is None
    assert any(p.grad is not None for p in module.parameters())  # the encoders do learn


def test_differential_abundance_scores_cells_highest_under_their_own_type():
    """scvi-tools' VAEMixin method on the joint posterior: each cell's log density under each
    cell type's aggregated posterior, highest for its own type."""
    mdata = _mdata(n_cells=300)
    model = _train(mdata, max_epochs=30)
    model.differential_abundance(sample_key="cell_type")
    log_probs = mdata.obsm["da_log_probs"]
    assert log_probs.shape == (300, mdata.obs["cell_type"].nunique())
    best = log_probs.idxmax(axis=1).to_numpy()
    assert np.mean(best == mdata.obs["cell_type"].to_numpy()) > 0.8


def test_repeated_cell_names_are_refused_as_such():
    mdata = simulate_multiome(n_cells=60, n_genes=30, n_peaks=40, seed=0)
    for mod in mdata.mod.values():
        mod.obs_names = [f"c{i // 2}" for i in range(mod.n_obs)]
    mdata.update()  # mudata leaves obs["batch"] all NaN: the error blamed missing values
    with pytest.raises(InputError, match=r"cell names \(obs_names\) repeat.*obs_names_make_u"):
        MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)


def test_kl_weight_scales_the_kl_of_the_joint_posterior(untrained, monkeypatch):
    module, tensors = untrained
    monkeypatch.setattr(module, "cross_reconstruction_weight", 0.0)
    with torch.no_grad():
        inference_outputs, generative_outputs = module.forward(tensors, compute_loss=False)
        losses = {
            w: module.loss(tensors, inference_outputs, generative_outputs, kl_weight=w)
            for w in (0.0, 1.0)
        }
    kl = losses[1.0].kl_local["kl_z"]
    assert float(kl.mean()) > 0.1
    # the loss sums terms a thousand times the KL: float32 keeps about 1e-4 of it
    torch.testing.assert_close(losses[1.0].loss - losses[0.0].loss, kl.mean(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("invariance", ["auto", "mi", "both"])
def test_invariance_penalises_the_posterior_the_encoders_make(invariance):
    """The penalty must see the joint posterior itself, not a detached copy, or the encoders
    would never be pushed towards invariance; ATAC depth is its number of open regions."""
    module, tensors = _untrained_module(invariance=invariance)
    inference_outputs = module.inference(**module._get_inference_input(tensors))
    inputs = module.invariance_inputs(tensors, inference_outputs)
    assert inputs.qz is inference_outputs["qz"]
    if invariance != "auto":  # batch only; the pairwise KL has a gradient from the first step
        module.invariance.penalty(inputs)["penalty"].backward()
        grads = [p.grad for p in module.encoders.parameters() if p.grad is not None]
        assert grads
        assert sum(float(g.abs().sum()) for g in grads) > 0
        atac = tensors[scvi.REGISTRY_KEYS.ATAC_X_KEY]
        assert (atac > 1).any()  # fragment counts: their sum is not the open regions
        i = module.modalities.index("atac")
        n_open = (atac > 0).float().sum(-1)
        expected = (torch.log1p(n_open) - module.depth_mean[i]) / module.depth_scale[i]
        depth_column = module.depth_modalities.index("atac")
        torch.testing.assert_close(inputs.continuous[:, depth_column], expected)


@pytest.mark.parametrize("n_samples", [2, 5])
def test_predict_std_is_the_sample_standard_deviation_of_the_draws(n_samples, monkeypatch):
    """With the k-th draw decoded as k² (the posterior mean first, as it is), layers["std"] is
    np.std of the draws with ddof=1, for any n_samples > 1."""
    mdata = _mdata(n_cells=100)
    model = _train(mdata, max_epochs=1)
    decode, calls = model._decode, []

    def draws_as_squares(target, z, *covariates):
        out = decode(target, z, *covariates)
        calls.append(len(calls))
        return out if len(calls) == 1 else torch.full_like(out, float(calls[-1]) ** 2)

    monkeypatch.setattr(model, "_decode", draws_as_squares)
    prediction = model.predict(
        mdata, source="atac", target="rna", n_samples=n_samples, batch_size=1000
    )
    draws = np.arange(1, n_samples + 1, dtype=float) ** 2 * 1e4  # RNA scaled to 10,000
    np.testing.assert_allclose(prediction.layers["std"], np.std(draws, ddof=1), rtol=1e-5)


def test_default_max_epochs_follows_the_number_of_cells(training_arguments):
    """max_epochs=None: 2e6 / n_cells epochs, between 50 and 500 (as documented)."""
    mdata = _mdata(n_cells=5000, n_genes=10, n_peaks=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=RNA_ATAC)
    model = MultiVAE(mdata, n_hidden=8, n_latent=2)
    model.train()
    assert training_arguments["max_epochs"] == 400


def test_two_samples_average_draws_not_the_mean():
    mdata = _mdata()
    model = _train(mdata)
    mean = model.get_normalized_expression(return_numpy=True)
    two = model.get_normalized_expression(n_samples=2, return_numpy=True)
    assert not np.allclose(two, mean, rtol=1e-4)


def test_differential_passes_user_pseudocounts_and_documented_delta(monkeypatch):
    mdata = _mdata()
    model = _train(mdata)
    seen = []
    monkeypatch.setattr(
        multivae_model_module, "differential", lambda *args: seen.append(args[-1]) or args[-1]
    )
    monkeypatch.setattr(multivae_model_module, "accessibility_table", lambda result, *a: result)
    model.differential_expression(groupby="cell_type", group1="type_0", pseudocounts=0.5)
    model.differential_accessibility(groupby="cell_type", group1="type_0")
    assert seen[0]["kwargs"]["pseudocounts"] == 0.5
    assert seen[1]["delta"] == 0.05


def test_differential_accessibility_uses_the_fdr_target():
    mdata = _mdata()
    model = _train(mdata)
    da = model.differential_accessibility(
        groupby="cell_type", group1="type_0", fdr_target=0.2, silent=True
    )
    assert da["is_da_fdr"].dtype == bool
    assert len(da) == mdata["atac"].n_vars


def test_predict_matches_cells_by_name_when_the_source_is_in_another_order():
    sim = _mdata(missing_fraction=0.3)
    model = _train(sim, setup_kwargs={"presence_keys": PRESENCE})
    order = np.random.default_rng(0).permutation(sim.n_obs)
    shuffled = md.MuData({"rna": sim["rna"].copy(), "atac": sim["atac"][order].copy()})
    for key in ("batch", "has_atac"):
        shuffled.obs[key] = sim.obs[key]  # aligned by cell name
    assert not shuffled.obs_names.equals(shuffled["atac"].obs_names)
    with pytest.warns(UserWarning, match="cells have no atac data"):
        expected = model.predict(sim, source="atac", target="rna", n_samples=0)
    with pytest.warns(UserWarning, match="cells have no atac data"):
        result = model.predict(shuffled, source="atac", target="rna", n_samples=0)
    assert result.obs_names.equals(sim.obs_names[order])
    np.testing.assert_allclose(result.X, expected[result.obs_names].X, rtol=1e-5)
    assert (result.obs["batch"] == sim.obs["batch"].loc[result.obs_names]).all()


def test_padding_shares_no_mudata_level_arrays_with_the_input():
    """pad_modalities' copy "shares no arrays" with the input: also the MuData's varm / varp."""
    sim = _mdata()
    mosaic = md.MuData({"rna": sim["rna"][30:].copy(), "atac": sim["atac"][:70].copy()})
    mosaic.varm["weights"] = np.ones((mosaic.n_vars, 2))
    mosaic.varp["graph"] = sparse.identity(mosaic.n_vars, format="csr")
    padded = pad_modalities(mosaic)
    padded.varm["weights"][0, 0] = 5
    padded.varp["graph"].data[0] = 7
    assert mosaic.varm["weights"][0, 0] == 1
    assert mosaic.varp["graph"].data[0] == 1


def test_differential_expression_observed_statistics_skip_rows_flagged_missing():
    mdata = _mdata(missing_fraction=0.4)
    has = mdata.obs["has_rna"].to_numpy()
    values = mdata["rna"].X.toarray()
    values[~has] = 50.0  # counts in rows flagged missing: never to be read
    mdata["rna"].X = sparse.csr_matrix(values)
    model = _train(mdata, setup_kwargs={"presence_keys": PRESENCE})
    idx1 = np.arange(mdata.n_obs) < 50
    assert (idx1 & ~has).any()
    assert (~idx1 & ~has).any()
    de = model.differential_expression(idx1=idx1, idx2=~idx1, silent=True)
    de = de.loc[mdata["rna"].var_names]
    np.testing.assert_allclose(de["raw_mean1"], values[idx1 & has].mean(0), rtol=1e-5)
    np.testing.assert_allclose(de["raw_mean2"], values[~idx1 & has].mean(0), rtol=1e-5)


def test_multivae_rna_expert_sees_proportions_not_sequencing_depth():
    """The RNA encoder reads log1p counts per 10k, so a cell sequenced 3x deeper maps alike."""
    mdata = simulate_multiome(n_cells=150, n_genes=40, n_peaks=80, seed=0)
    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    module = MultiVAE(mdata, n_hidden=16, n_latent=4).module.eval()
    x = torch.poisson(torch.full((6, 40), 3.0))
    batch = torch.zeros(6, 1, dtype=torch.long)
    with torch.no_grad():
        shallow = module.inference(batch_index=batch, x_rna=x)["qzm"]
        deep = module.inference(batch_index=batch, x_rna=3 * x)["qzm"]
    torch.testing.assert_close(deep, shallow, rtol=1e-4, atol=1e-5)


def test_multivae_atac_rate_follows_the_cell_factor_by_the_learned_slope():
    """Log rate = decoder + region factor + slope * cell factor, slope learned per region."""
    mdata = simulate_multiome(n_cells=150, n_genes=40, n_peaks=80, seed=0)
    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    module = MultiVAE(mdata, n_hidden=16, n_latent=4).module.eval()
    slope = torch.linspace(0.2, 1.5, module.n_features["atac"])
    with torch.no_grad():
        module.atac_depth_slope.copy_(slope)
        library = {"atac": torch.tensor([[0.0], [1.0]])}  # the median cell and one e times deeper
        out = module.generative(torch.zeros(2, 4), library, torch.zeros(2, 1), modalities=["atac"])
    log_rate = out["p_atac"].rate.log()
    torch.testing.assert_close(log_rate[1] - log_rate[0], slope, rtol=1e-4, atol=1e-5)
