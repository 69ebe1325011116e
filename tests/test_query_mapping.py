"""scArches reference mapping: ``load_query_data`` for ZINBAutoencoder, SAILER and MultiVAE."""

from __future__ import annotations

import copy
import pickle
import warnings

import anndata
import lightning.pytorch as pl
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scvi
import torch
from scipy import sparse as scipy_sparse
from scipy.stats import pearsonr

from scgexp.data import (
    InputError,
    simulate_bulk_expression,
    simulate_multiome,
    simulate_scatac,
    simulate_scrna,
)
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

RNA_ATAC = {"rna_layer": "rna", "atac_layer": "atac"}


def _train(model, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(enable_progress_bar=False, **kwargs)


def _split(data, query_batch: str = "batch_2"):
    """Reference (the other batches) and query (``query_batch``) copies of ``data``."""
    in_query = (data.obs["batch"] == query_batch).to_numpy()
    reference, query = data[~in_query].copy(), data[in_query].copy()
    for frame in [reference.obs, *(m.obs for m in getattr(reference, "mod", {}).values())]:
        frame["batch"] = frame["batch"].astype(str).astype("category")
    return reference, query


def _state(model) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.module.state_dict().items()}


def _changed(reference: dict, query_model) -> dict[str, str]:
    """Which of the reference's tensors the query model holds changed, and how."""
    changed = {}
    for key, old in reference.items():
        new = query_model.module.state_dict()[key]
        if new.shape != old.shape:
            kept = new[tuple(slice(0, size) for size in old.shape)]
            changed[key] = "grown" if torch.equal(kept, old) else "grown, old part changed"
        elif not torch.equal(new, old):
            changed[key] = "changed"
    return changed


def _denoising_correlation(model, adata) -> float:
    """Median over cells of the correlation of log denoised and log true expression."""
    denoised = model.get_normalized_expression(adata, library_size=1.0, return_numpy=True)
    truth = adata.layers["true_mean"] / adata.layers["true_mean"].sum(1, keepdims=True)
    return float(
        np.median(
            [pearsonr(np.log(d), np.log(t))[0] for d, t in zip(denoised, truth, strict=True)]
        )
    )


@pytest.fixture(scope="module")
def zinb_split():
    scvi.settings.seed = 0
    reference, query = _split(simulate_scrna(n_cells=900, n_genes=150, n_batches=3, seed=1))
    ZINBAutoencoder.setup_anndata(reference, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(reference, n_hidden=32, n_latent=8)
    _train(model, max_epochs=40)
    return model, query


def test_zinb_query_learns_its_batch_and_leaves_the_reference(zinb_split, tmp_path):
    reference_model, query = zinb_split
    before = _state(reference_model)
    relabelled = query.copy()
    relabelled.obs["batch"] = "batch_0"  # the mapping without scArches: a known batch
    baseline = _denoising_correlation(reference_model, relabelled)
    reference_model.save(tmp_path / "reference")

    scvi.settings.seed = 0
    model = ZINBAutoencoder.load_query_data(query, str(tmp_path / "reference"))
    assert not model.is_trained_
    assert list(model.adata_manager.get_state_registry("batch")["categorical_mapping"]) == [
        "batch_0",
        "batch_1",
        "batch_2",
    ]
    trainable = [name for name, p in model.module.named_parameters() if p.requires_grad]
    assert trainable == ["decoder.fc_layers.Layer 0.0.weight"]
    _train(model, max_epochs=60, lr=1e-2)

    # Only the new batch's column moved; the reference model is as it was.
    assert _changed(before, model) == {"decoder.fc_layers.Layer 0.0.weight": "grown"}
    assert model.module.state_dict()["decoder.fc_layers.Layer 0.0.weight"][:, -1].abs().sum() > 0
    assert _changed(before, reference_model) == {}
    # The encoder does not read the batch: the latent is the reference's.
    np.testing.assert_array_equal(
        model.get_latent_representation(), reference_model.get_latent_representation(relabelled)
    )
    # Denoised values of the query's batch follow its own batch effect (measured: 0.94 against
    # 0.92; the model trained on every batch reaches 0.98).
    assert _denoising_correlation(model, query) > baseline + 0.01


def test_query_model_decodes_reference_batches_as_the_reference_did(zinb_split):
    reference_model, query = zinb_split
    model = ZINBAutoencoder.load_query_data(query.copy(), reference_model)
    _train(model, max_epochs=5)
    reference_cells = reference_model.adata.copy()
    for output in (
        lambda m: m.get_normalized_expression(reference_cells, return_numpy=True),
        lambda m: m.get_latent_representation(reference_cells),
    ):
        np.testing.assert_allclose(output(model), output(reference_model), rtol=1e-5, atol=1e-7)


def test_query_model_round_trips(zinb_split, tmp_path):
    reference_model, query = zinb_split
    model = ZINBAutoencoder.load_query_data(query.copy(), reference_model)
    _train(model, max_epochs=3)
    model.save(tmp_path / "query", save_anndata=True)
    loaded = ZINBAutoencoder.load(str(tmp_path / "query"))
    np.testing.assert_array_equal(
        loaded.get_normalized_expression(return_numpy=True),
        model.get_normalized_expression(return_numpy=True),
    )


def test_unfrozen_query_trains_every_weight(zinb_split):
    reference_model, query = zinb_split
    model = ZINBAutoencoder.load_query_data(query.copy(), reference_model, unfrozen=True)
    assert all(p.requires_grad for p in model.module.parameters())
    before = _state(reference_model)
    _train(model, max_epochs=2, weight_decay=1e-4)
    assert "encoder.fc_layers.Layer 0.0.weight" in _changed(before, model)


def test_query_mapping_refuses_what_would_mislead(zinb_split):
    reference_model, query = zinb_split
    untrained = ZINBAutoencoder(reference_model.adata)
    with pytest.raises(InputError, match="was not trained"):
        ZINBAutoencoder.load_query_data(query.copy(), untrained)
    with pytest.raises(InputError, match="must be a trained ZINBAutoencoder"):
        ZINBAutoencoder.load_query_data(query.copy(), object())
    with pytest.raises(InputError, match=r"must be a trained SAILER .* not ZINBAutoencoder"):
        SAILER.load_query_data(query.copy(), reference_model)
    with pytest.raises(InputError, match="in another order"):
        ZINBAutoencoder.load_query_data(query[:, ::-1].copy(), reference_model)
    # scvi-tools' arguments say what does their work here.
    with pytest.raises(InputError, match=r"ZINBAutoencoder.prepare_query_anndata\(query"):
        ZINBAutoencoder.load_query_data(query, reference_model, inplace_subset_query_vars=True)
    ZINBAutoencoder.load_query_data(query.copy(), reference_model, inplace_subset_query_vars=False)
    with pytest.raises(InputError, match="unfrozen=True trains every weight"):
        ZINBAutoencoder.load_query_data(query, reference_model, freeze_expression=False)


def test_single_batch_reference_keeps_decoding_its_batch():
    scvi.settings.seed = 0
    reference, query = _split(
        simulate_scrna(n_cells=300, n_genes=40, n_batches=2, seed=2), "batch_1"
    )
    ZINBAutoencoder.setup_anndata(reference, layer="counts", batch_key="batch")
    reference_model = ZINBAutoencoder(reference, n_hidden=16, n_latent=4)
    _train(reference_model, max_epochs=3)
    model = ZINBAutoencoder.load_query_data(query, reference_model)
    _train(model, max_epochs=3)
    reference_cells = reference.copy()
    np.testing.assert_allclose(
        model.get_normalized_expression(reference_cells, return_numpy=True),
        reference_model.get_normalized_expression(reference_cells, return_numpy=True),
        rtol=1e-5,
    )


def _sailer_reference(n_cells: int, n_peaks: int, seed: int, invariance, epochs: int):
    """A SAILER trained on two of three simulated batches, its data and the third batch."""
    scvi.settings.seed = 0
    data = simulate_scatac(n_cells=n_cells, n_peaks=n_peaks, n_batches=3, seed=seed)
    sc.pp.filter_cells(data, min_counts=1)
    reference, query = _split(data)
    SAILER.setup_anndata(reference, batch_key="batch")
    reference_model = SAILER(reference, n_latent=4, invariance=invariance)
    _train(reference_model, max_epochs=epochs)
    return reference_model, reference, query


@pytest.mark.parametrize("invariance", ["both", None])
def test_sailer_query_trains_decoder_batch_weights_and_adversary(invariance):
    reference_model, reference, query = _sailer_reference(500, 120, 1, invariance, epochs=5)
    before = _state(reference_model)
    model = SAILER.load_query_data(query, reference_model)
    _train(model, max_epochs=5)
    changed = _changed(before, model)
    decoder = {
        "decoder.fc_layers.Layer 0.0.weight": "grown",
        "decoder.fc_layers.Layer 1.0.weight": "grown",
    }
    assert {k: v for k, v in changed.items() if not k.startswith("invariance.")} == decoder
    if invariance is not None:  # the adversary learns to tell the new batch too
        assert changed["invariance.classifiers.0.4.weight"] == "grown, old part changed"
    reference_cells = reference.copy()
    np.testing.assert_allclose(
        model.get_normalized_accessibility(reference_cells, return_numpy=True),
        reference_model.get_normalized_accessibility(reference_cells, return_numpy=True),
        rtol=1e-5,
        atol=1e-7,
    )


def test_multivae_query_with_batch_aware_encoder():
    scvi.settings.seed = 0
    reference, query = _split(
        simulate_multiome(n_cells=450, n_genes=40, n_peaks=60, n_batches=3, seed=1)
    )
    MultiVAE.setup_mudata(reference, batch_key="batch", modalities=RNA_ATAC)
    reference_model = MultiVAE(reference, n_latent=4, encode_covariates=True)
    _train(reference_model, max_epochs=5)
    before = _state(reference_model)
    model = MultiVAE.load_query_data(query, reference_model)
    with pytest.warns(UserWarning, match="ends before the KL weight is full"):  # it trains
        model.train(max_epochs=5, enable_progress_bar=False)
    changed = {k: v for k, v in _changed(before, model).items() if "invariance." not in k}
    assert set(changed.values()) == {"grown"}  # the covariate columns, of encoders too
    assert {k for k in changed if k.startswith("encoders.")} == {
        f"encoders.{modality}.trunk.fc_layers.Layer {layer}.0.weight"
        for modality in ("rna", "atac")
        for layer in (0, 1)
    }
    reference_cells = reference.copy()
    np.testing.assert_allclose(
        model.get_latent_representation(reference_cells),
        reference_model.get_latent_representation(reference_cells),
        rtol=1e-5,
        atol=1e-6,
    )


def test_batch_and_covariate_columns_keep_their_categories():
    """A new batch widens the batch block; the covariate block after it moves, weights intact."""
    scvi.settings.seed = 0
    data = simulate_scrna(n_cells=600, n_genes=40, n_batches=3, seed=3)
    data.obs["donor"] = pd.Categorical(np.where(np.arange(data.n_obs) % 2, "d0", "d1"))
    reference, query = _split(data)
    reference = reference[reference.obs["donor"] == "d0"].copy()
    reference.obs["donor"] = reference.obs["donor"].astype(str).astype("category")
    query.obs["batch"] = query.obs["batch"].cat.add_categories("batch_0")
    query.obs.iloc[:50, query.obs.columns.get_loc("batch")] = "batch_0"  # a known batch too
    reference.obs["donor2"] = pd.Categorical(np.where(np.arange(reference.n_obs) % 3, "x", "y"))
    query.obs["donor2"] = pd.Categorical(np.where(np.arange(query.n_obs) % 3, "x", "y"))
    keys = ["donor2", "donor"]
    ZINBAutoencoder.setup_anndata(
        reference, layer="counts", batch_key="batch", categorical_covariate_keys=keys
    )
    reference_model = ZINBAutoencoder(reference, n_hidden=16, n_latent=4)
    _train(reference_model, max_epochs=3)
    model = ZINBAutoencoder.load_query_data(query, reference_model)
    key = "decoder.fc_layers.Layer 0.0.weight"
    old, new = reference_model.module.state_dict()[key], model.module.state_dict()[key]
    # [latent 4 | batch 2 → 3 | donor2 2 | donor 1 (no columns) → 2]
    np.testing.assert_array_equal(new[:, :6], old[:, :6])
    np.testing.assert_array_equal(new[:, 7:9], old[:, 6:8])
    assert not new[:, [6, 9, 10]].any()
    _train(model, max_epochs=5, lr=1e-2)
    new = model.module.state_dict()[key]
    np.testing.assert_array_equal(new[:, 7:10], torch.cat([old[:, 6:8], new[:, 9:10] * 0], 1))
    assert new[:, 6].abs().sum() > 0  # the new categories learnt
    assert new[:, 10].abs().sum() > 0
    # The reference's cells, and the query's cells of the known batch, decode as before.
    reference_cells = reference.copy()
    np.testing.assert_allclose(
        model.get_normalized_expression(reference_cells, return_numpy=True),
        reference_model.get_normalized_expression(reference_cells, return_numpy=True),
        rtol=1e-5,
    )


def test_query_that_adds_nothing_is_refused_and_labels_typed_otherwise_too(zinb_split):
    reference_model, query = zinb_split
    known_only = reference_model.adata[:50].copy()
    unregistered = known_only.copy()
    unregistered.obs = unregistered.obs.drop(columns="_scvi_batch")
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        del unregistered.uns[key]
    for data in (known_only, unregistered):  # the refused call leaves the data as it was
        obs, uns = data.obs.copy(), {k: v for k, v in data.uns.items() if k.startswith("_scvi")}
        with pytest.raises(InputError, match="nothing to learn"):
            ZINBAutoencoder.load_query_data(data, reference_model)
        pd.testing.assert_frame_equal(data.obs, obs)
        assert {k: v for k, v in data.uns.items() if k.startswith("_scvi")} == uns
    model = ZINBAutoencoder.load_query_data(known_only, reference_model, unfrozen=True)
    assert all(p.requires_grad for p in model.module.parameters())

    numbered = query.copy()
    numbered.obs["batch"] = pd.Categorical(np.where(np.arange(numbered.n_obs) % 2, 0, 1))
    relabelled = reference_model.adata.copy()
    relabelled.obs["batch"] = relabelled.obs["batch"].cat.rename_categories([0, 1])
    ZINBAutoencoder.setup_anndata(relabelled, layer="counts", batch_key="batch")
    numbered_model = ZINBAutoencoder(relabelled, n_hidden=8, n_latent=2)
    _train(numbered_model, max_epochs=1)
    texts = query.copy()
    texts.obs["batch"] = pd.Categorical(np.where(np.arange(texts.n_obs) % 2, "0", "1"))
    columns = list(texts.obs.columns)
    with pytest.raises(InputError, match="of another type than the model's categories"):
        ZINBAutoencoder.load_query_data(texts, numbered_model)
    assert list(texts.obs.columns) == columns  # nothing registered in the user's data
    texts.obs["batch"] = pd.Categorical(np.where(np.arange(texts.n_obs) % 2, "1", "new"))
    with pytest.raises(InputError, match=r"holds 'new', '1', of another type"):  # and a new one
        ZINBAutoencoder.load_query_data(texts, numbered_model)
    numbered.obs["batch"] = pd.Categorical(np.full(numbered.n_obs, 7))
    with pytest.raises(InputError, match="holds 7, of another type"):  # numbers among text
        ZINBAutoencoder.load_query_data(numbered, reference_model)


def test_single_batch_sailer_reference_with_adversary():
    scvi.settings.seed = 0
    data = simulate_scatac(n_cells=300, n_peaks=80, n_batches=2, seed=4)
    sc.pp.filter_cells(data, min_counts=1)
    reference, query = _split(data, "batch_1")
    SAILER.setup_anndata(reference, batch_key="batch")
    reference_model = SAILER(reference, n_latent=4, invariance="both")
    _train(reference_model, max_epochs=2)
    model = SAILER.load_query_data(query, reference_model)
    _train(model, max_epochs=2)
    assert model.module.invariance.classifiers[0][-1].out_features == 2  # now a batch head


def _protein_reference(n_batches: int):
    """A MultiVAE (RNA + protein, mixture) trained on batches 0 and 1; the other batches."""
    scvi.settings.seed = 0
    data = simulate_multiome(
        n_cells=450, n_genes=40, n_peaks=60, n_proteins=5, n_batches=n_batches
    )
    data = md.MuData({"rna": data["rna"].copy(), "prot": data["prot"].copy()})
    data.obs["batch"] = data["rna"].obs["batch"].to_numpy()
    known = data.obs["batch"].isin(["batch_0", "batch_1"]).to_numpy()
    reference, query = data[known].copy(), data[~known].copy()
    MultiVAE.setup_mudata(
        reference, batch_key="batch", modalities={"rna_layer": "rna", "protein_layer": "prot"}
    )
    reference_model = MultiVAE(reference, n_latent=4, protein_likelihood="mixture")
    _train(reference_model, max_epochs=3)
    return reference_model, query


def test_multivae_protein_background_of_a_new_batch_learns():
    reference_model, query = _protein_reference(n_batches=3)
    old = reference_model.module.protein_log_background.detach().clone()
    model = MultiVAE.load_query_data(query, reference_model)
    background = model.module.protein_log_background
    start = background.detach()[:, 2].clone()  # the query's low quantile, not zero
    assert background.requires_grad
    assert start.abs().sum() > 0
    _train(model, max_epochs=3)
    np.testing.assert_array_equal(background.detach()[:, :2], old)
    assert not torch.equal(background.detach()[:, 2], start)


def test_multivae_new_batch_without_protein_takes_the_reference_background():
    # Nothing in the query trains its background: from its zero counts it stayed at 1 count
    # and its denoised protein came out about 25 times too low (real CITE-seq, 5k onto 10k).
    reference_model, query = _protein_reference(n_batches=4)
    query["prot"].X[(query.obs["batch"] == "batch_3").to_numpy()] = 0  # batch_2 has protein
    mean = reference_model.module.protein_log_background.detach().mean(1)
    model = MultiVAE.load_query_data(query, reference_model)
    background = model.module.protein_log_background.detach()
    torch.testing.assert_close(background[:, 3], mean)
    assert not torch.allclose(background[:, 2], mean)  # from its own counts
    _train(model, max_epochs=2)
    torch.testing.assert_close(background[:, 3], mean)


def _multivae_reference():
    """A MultiVAE (RNA + ATAC) trained for 2 epochs on two batches, and a third batch."""
    scvi.settings.seed = 0
    reference, query = _split(
        simulate_multiome(n_cells=300, n_genes=30, n_peaks=40, n_batches=3, seed=2)
    )
    MultiVAE.setup_mudata(reference, batch_key="batch", modalities=RNA_ATAC)
    reference_model = MultiVAE(reference, n_latent=4)
    _train(reference_model, max_epochs=2)
    return reference_model, query


def test_multivae_query_without_one_modality_trains(tmp_path):
    reference_model, query = _multivae_reference()
    query["atac"].X = query["atac"].X * 0  # RNA-only query cells
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's, on statistics of no cell
        model = MultiVAE.load_query_data(query, reference_model)
    with warnings.catch_warnings():  # a frozen encoder: the KL weight changes nothing
        warnings.filterwarnings("error", message=".*KL weight is full.*")
        model.train(max_epochs=2, enable_progress_bar=False)
    assert model.is_trained_
    untrained = MultiVAE.load_query_data(query, reference_model)
    untrained.save(tmp_path / "query_model")  # loaded again, it trains (in full)
    loaded = MultiVAE.load(tmp_path / "query_model", adata=query)
    _train(loaded, max_epochs=1)
    assert loaded.is_trained_


@pytest.mark.parametrize("route", ["deepcopy", "pickle", "weight decay", "AdamW"])
def test_reference_entries_stay_through_copies_and_optimisers(zinb_split, route):
    """Copies (as for spawned processes) and decaying optimisers keep the reference's weights."""
    reference_model, query = zinb_split
    model = ZINBAutoencoder.load_query_data(query.copy(), reference_model)
    kwargs = {"max_epochs": 3, "lr": 1e-2}
    if route == "deepcopy":
        model = copy.deepcopy(model)
    elif route == "pickle":
        model.module = pickle.loads(pickle.dumps(model.module))
    elif route == "weight decay":
        kwargs["weight_decay"] = 1e-2
    else:
        kwargs["plan_kwargs"] = {
            "optimizer": "Custom",
            "optimizer_creator": lambda params: torch.optim.AdamW(params, lr=1e-2),
        }
    _train(model, **kwargs)
    key = "decoder.fc_layers.Layer 0.0.weight"
    old, new = reference_model.module.state_dict()[key], model.module.state_dict()[key]
    np.testing.assert_array_equal(new[:, :-1], old)
    assert new[:, -1].abs().sum() > 0


class _RecordGradients(pl.Callback):
    """At each optimiser step: the largest frozen-entry gradient and the total gradient norm."""

    def __init__(self, reference_entries: dict):
        self.reference_entries = reference_entries
        self.frozen, self.norms = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        parameters = dict(pl_module.module.named_parameters())
        self.frozen.append(
            max(
                float(parameters[name].grad[~new].abs().max())
                for name, (new, _) in self.reference_entries.items()
            )
        )
        grads = [p.grad for p in optimizer.param_groups[0]["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat([g.ravel() for g in grads]))))


def test_clipping_sees_only_the_new_entries_also_under_manual_optimisation():
    """SAILER's plan clips its own gradients: the frozen ones must be zero by then."""
    reference_model, _, query = _sailer_reference(400, 60, 5, invariance=None, epochs=2)
    model = SAILER.load_query_data(query, reference_model)
    record = _RecordGradients(model._reference_entries)
    _train(model, max_epochs=2, gradient_clip_val=1e-3, callbacks=[record])
    assert max(record.frozen) == 0
    np.testing.assert_allclose(record.norms, 1e-3, rtol=1e-3)  # the clip binds on new entries


def test_wrong_model_folder_names_the_right_loader(zinb_split, tmp_path):
    reference_model, query = zinb_split
    bulk = simulate_bulk_expression(n_samples=40, n_landmarks=5, n_targets=10)
    DGEX.setup_anndata(bulk)
    dgex = DGEX(bulk)
    _train(dgex, max_epochs=1)
    dgex.save(tmp_path / "dgex")
    reference_model.save(tmp_path / "zinb")
    with pytest.raises(InputError, match=r"holds a DGEX model.*DGEX\.load\(\.\.\.\)"):
        ZINBAutoencoder.load_query_data(query.copy(), str(tmp_path / "dgex"))
    with pytest.raises(InputError, match=r"ZINBAutoencoder\.load_query_data\(\.\.\.\)"):
        SAILER.load_query_data(query.copy(), str(tmp_path / "zinb"))
    with pytest.raises(InputError, match=r"ZINBAutoencoder\.prepare_query_anndata\(\.\.\.\)"):
        MultiVAE.prepare_query_mudata(md.MuData({"rna": query.copy()}), str(tmp_path / "zinb"))
    multivae, _ = _multivae_reference()
    multivae.save(tmp_path / "multivae")
    with pytest.raises(InputError, match=r"MultiVAE\.prepare_query_mudata\(\.\.\.\)"):
        ZINBAutoencoder.prepare_query_anndata(query.copy(), str(tmp_path / "multivae"))


def _dropout_rates(model) -> list[float]:
    return [layer.p for layer in model.module.modules() if isinstance(layer, torch.nn.Dropout)]


def test_freeze_dropout_switches_dropout_off_in_the_query_model_only(zinb_split):
    reference_model, query = zinb_split
    assert _dropout_rates(reference_model)
    assert min(_dropout_rates(reference_model)) > 0
    model = ZINBAutoencoder.load_query_data(query.copy(), reference_model, freeze_dropout=True)
    assert set(_dropout_rates(model)) == {0.0}
    assert min(_dropout_rates(reference_model)) > 0  # the reference is left as it was
    default = ZINBAutoencoder.load_query_data(query.copy(), reference_model)
    assert _dropout_rates(default) == _dropout_rates(reference_model)


def test_query_model_starts_in_eval_mode_as_load_leaves_it(zinb_split):
    reference_model, query = zinb_split
    model = ZINBAutoencoder.load_query_data(query.copy(), reference_model)
    assert not model.module.training


def test_query_is_refused_as_a_view(zinb_split):
    reference_model, query = zinb_split
    with pytest.raises(InputError, match="a view cannot hold"):
        ZINBAutoencoder.load_query_data(query[:50], reference_model)


def test_single_category_covariate_last_in_both_reference_and_query():
    """A covariate of one category (no columns) after the batch block, in both data sets."""
    scvi.settings.seed = 0
    reference, query = _split(simulate_scrna(n_cells=300, n_genes=30, n_batches=3, seed=6))
    for data in (reference, query):
        data.obs["site"] = pd.Categorical(["s0"] * data.n_obs)
    ZINBAutoencoder.setup_anndata(
        reference, layer="counts", batch_key="batch", categorical_covariate_keys=["site"]
    )
    reference_model = ZINBAutoencoder(reference, n_hidden=8, n_latent=3)
    _train(reference_model, max_epochs=2)
    model = ZINBAutoencoder.load_query_data(query, reference_model)
    key = "decoder.fc_layers.Layer 0.0.weight"
    old, new = reference_model.module.state_dict()[key], model.module.state_dict()[key]
    np.testing.assert_array_equal(new[:, :-1], old)  # [latent 3 | batch 2 → 3 | site: none]
    assert not new[:, -1].any()
    # A refused query (known categories only) gets no scvi-tools entries, in obsm neither.
    known = anndata.AnnData(
        reference.X[:40].copy(), obs=reference.obs[["batch", "site"]].iloc[:40].copy(),
        var=reference.var.copy(), layers={"counts": reference.layers["counts"][:40].copy()},
    )  # fmt: skip
    with pytest.raises(InputError, match="nothing to learn"):
        ZINBAutoencoder.load_query_data(known, reference_model)
    assert not [key for key in (*known.obs, *known.obsm, *known.uns) if key.startswith("_scvi")]


def test_every_layer_that_reads_the_categories_keeps_their_columns():
    """With n_layers=2 both decoder layers read [hidden | batch | donor]: the donor block moves."""
    scvi.settings.seed = 0
    data = simulate_scrna(n_cells=300, n_genes=30, n_batches=3, seed=5)
    data.obs["donor"] = pd.Categorical(np.where(np.arange(data.n_obs) % 2, "d0", "d1"))
    reference, query = _split(data)
    ZINBAutoencoder.setup_anndata(
        reference, layer="counts", batch_key="batch", categorical_covariate_keys=["donor"]
    )
    reference_model = ZINBAutoencoder(reference, n_hidden=8, n_latent=3, n_layers=2)
    _train(reference_model, max_epochs=2)
    model = ZINBAutoencoder.load_query_data(query, reference_model)
    for layer in (0, 1):
        key = f"decoder.fc_layers.Layer {layer}.0.weight"
        old, new = reference_model.module.state_dict()[key], model.module.state_dict()[key]
        n = old.shape[1] - 4  # [input n | batch 2 → 3 | donor 2]
        np.testing.assert_array_equal(new[:, : n + 2], old[:, : n + 2])
        assert not new[:, n + 2].any()  # the new batch's column starts at zero
        np.testing.assert_array_equal(new[:, n + 3 :], old[:, n + 2 :])


def test_the_whole_adversary_trains():
    reference_model, _, query = _sailer_reference(300, 60, 1, "both", epochs=1)
    model = SAILER.load_query_data(query, reference_model)
    adversary = {n: p for n, p in model.module.named_parameters() if n.startswith("invariance.")}
    assert len(adversary) > 2
    assert all(p.requires_grad for p in adversary.values())


def test_reference_folder_may_be_a_path(zinb_split, tmp_path):
    reference_model, query = zinb_split
    reference_model.save(tmp_path / "reference")
    model = ZINBAutoencoder.load_query_data(query.copy(), tmp_path / "reference")  # a Path
    assert model.module.decoder.n_cat_list == [3]


def _query_with_other_features(query, n_missing: int = 10):
    """``query`` with its features shuffled, the first ``n_missing`` dropped and two added."""
    order = np.random.default_rng(0).permutation(query.n_vars)[n_missing:]
    kept = query[:, order].copy()
    extra = sc.AnnData(
        np.ones((query.n_obs, 2), dtype=kept.X.dtype),
        obs=pd.DataFrame(index=query.obs_names),
        var=pd.DataFrame(index=["extra_a", "extra_b"]),
        layers={
            key: np.ones((query.n_obs, 2), dtype=v.dtype)
            for key, v in kept.layers.items()
            if key is not None  # anndata >= 0.13 lists X under None
        },
    )
    other = sc.concat([kept, extra], axis=1, merge="first", uns_merge="first")
    other.layers["counts"] = scipy_sparse.csr_matrix(other.layers["counts"])
    other.var["marker"] = np.arange(other.n_vars) % 2 == 0
    other.var["position"] = np.arange(other.n_vars)
    other.varm["loadings"] = np.arange(other.n_vars * 2, dtype=float).reshape(-1, 2)
    other.varp["pairs"] = scipy_sparse.csr_array(np.ones((other.n_vars, other.n_vars)))
    other.varm["sparse"] = scipy_sparse.csc_array(np.ones((other.n_vars, 3)))
    other.uns["note"] = {"kept": True}
    other.varm["frame"] = pd.DataFrame({"score": np.arange(other.n_vars)}, index=other.var_names)
    other.raw = other
    return other


def test_prepare_query_anndata_puts_features_in_order_and_pads_the_missing(zinb_split, tmp_path):
    reference_model, query = zinb_split
    reference_model.save(tmp_path / "reference")
    names = pd.Index(reference_model.training_var_names)
    other = _query_with_other_features(query)
    before = other.copy()
    with pytest.warns(UserWarning, match=r"10 of the model's 150 features are not in the query"):
        prepared = ZINBAutoencoder.prepare_query_anndata(
            other, str(tmp_path / "reference"), inplace=False
        )
    # The user's data is as it was; the copy has the model's features, values found by name.
    assert other.var_names.equals(before.var_names)
    np.testing.assert_array_equal(
        other.layers["counts"].toarray(), before.layers["counts"].toarray()
    )
    assert prepared.var_names.equals(names)
    missing = ~names.isin(other.var_names)
    assert missing.sum() == 10
    counts = prepared.layers["counts"]
    assert isinstance(counts, scipy_sparse.csr_matrix)
    assert counts.dtype == other.layers["counts"].dtype
    np.testing.assert_array_equal(counts[:, missing].toarray(), 0)
    np.testing.assert_array_equal(
        counts[:, ~missing].toarray(), other[:, names[~missing]].layers["counts"].toarray()
    )
    np.testing.assert_array_equal(
        _dense(prepared.X[:, ~missing]), _dense(other[:, names[~missing]].X)
    )
    assert (
        prepared.var["marker"][~missing].tolist() == other.var["marker"][names[~missing]].tolist()
    )
    assert prepared.var["marker"].dtype == bool  # a mask scanpy can use
    assert not prepared.var["marker"][missing].any()
    assert prepared.var["position"][missing].isna().all()
    assert np.isnan(prepared.varm["loadings"][missing]).all()
    np.testing.assert_array_equal(
        prepared.varm["loadings"][~missing], other[:, names[~missing]].varm["loadings"]
    )
    assert isinstance(prepared.varp["pairs"], scipy_sparse.csr_array)
    assert isinstance(prepared.varm["sparse"], scipy_sparse.csc_array)
    assert prepared.varp["pairs"][missing].sum() == 0
    assert prepared.varp["pairs"][:, missing].sum() == 0
    assert prepared.varp["pairs"].sum() == (~missing).sum() ** 2
    assert prepared.uns["note"] == {"kept": True}
    assert prepared.raw.n_vars == other.n_vars
    assert prepared.varm["frame"].index.equals(names)
    assert prepared.varm["frame"]["score"][missing].isna().all()
    prepared.obs["added"] = 1  # the copy shares nothing with the query
    prepared.uns["note"]["kept"] = False
    assert "added" not in other.obs
    assert other.uns["note"] == {"kept": True}

    # The model reads the prepared query as it reads the complete one (a feature in the wrong
    # column would break this): latents agree.
    # (The encoder does not read the batch: the latent is the reference's.)
    complete, padded = query.copy(), prepared.copy()
    complete.obs["batch"] = padded.obs["batch"] = "batch_0"
    correlations = [
        pearsonr(a, b)[0]
        for a, b in zip(
            reference_model.get_latent_representation(complete).T,
            reference_model.get_latent_representation(padded).T,
            strict=True,
        )
    ]
    assert min(correlations) > 0.9, correlations

    # In place, as scvi-tools: the same result; the reference's features alone on request.
    assert ZINBAutoencoder.prepare_query_anndata(other, reference_model) is None
    assert other.var_names.equals(names)
    np.testing.assert_array_equal(other.layers["counts"].toarray(), counts.toarray())
    returned = ZINBAutoencoder.prepare_query_anndata(
        other, reference_model, return_reference_var_names=True
    )
    assert returned.equals(names)
    query_model = ZINBAutoencoder.load_query_data(other, reference_model)
    _train(query_model, max_epochs=2)
    assert query_model.get_latent_representation().shape == (other.n_obs, 8)


def test_a_dense_querys_missing_genes_are_zeros_in_x_and_layers(zinb_split):
    model, query = zinb_split
    names = pd.Index(model.training_var_names)
    query = query[:30, 5:].copy()  # the first 5 genes missing
    query.X = query.X.toarray()
    query.layers["counts"] = query.layers["counts"].toarray()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing genes are named
        prepared = ZINBAutoencoder.prepare_query_anndata(query, model, inplace=False)
    missing = ~names.isin(query.var_names)
    assert missing.sum() == 5
    for matrix in (prepared.X, prepared.layers["counts"]):
        assert isinstance(matrix, np.ndarray)
        np.testing.assert_array_equal(matrix[:, missing], 0)
    np.testing.assert_array_equal(
        prepared.layers["counts"][:, ~missing], query[:, names[~missing]].layers["counts"]
    )


def test_prepare_query_refusals_say_what_to_do(zinb_split, tmp_path):
    reference_model, query = zinb_split
    missing = query[:, 5:].copy()
    with pytest.raises(InputError, match=r"ZINBAutoencoder\.prepare_query_anndata\(data, model\)"):
        ZINBAutoencoder.load_query_data(missing, reference_model)
    renamed = query.copy()
    renamed.var_names = [f"ENSG{i}" for i in range(renamed.n_vars)]
    with pytest.raises(InputError, match="none of the model's 150 features"):
        ZINBAutoencoder.prepare_query_anndata(renamed, reference_model, inplace=False)
    repeated = sc.concat([query[:, :3], query], axis=1, merge="first")
    with pytest.raises(InputError, match="more than once"):
        ZINBAutoencoder.prepare_query_anndata(repeated, reference_model, inplace=False)
    # numpy's IndexError before: no features, or none with a name of its own
    with pytest.raises(InputError, match="has no features"):
        ZINBAutoencoder.prepare_query_anndata(query[:, :0].copy(), reference_model, inplace=False)
    unnamed = query.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: names not unique
        unnamed.var_names = ["gene"] * unnamed.n_vars
    with pytest.raises(InputError, match="none of the model's 150 features"):
        ZINBAutoencoder.prepare_query_anndata(unnamed, reference_model, inplace=False)
    with pytest.raises(InputError, match="view"):
        ZINBAutoencoder.prepare_query_anndata(query[:10], reference_model)
    with pytest.raises(
        InputError, match=r"reads AnnData; use ZINBAutoencoder\.prepare_query_anndata"
    ):
        ZINBAutoencoder.prepare_query_mudata(md.MuData({"rna": query}), reference_model)
    with pytest.raises(InputError, match="SAILER or the folder"):
        SAILER.prepare_query_anndata(query, reference_model)
    reference_model.save(tmp_path / "reference")
    with pytest.raises(InputError, match="holds a ZINBAutoencoder model, not a SAILER"):
        SAILER.prepare_query_anndata(query, str(tmp_path / "reference"))
    query.write_h5ad(tmp_path / "query.h5ad")
    backed = anndata.read_h5ad(tmp_path / "query.h5ad", backed="r")
    with pytest.raises(InputError, match="into memory"):
        ZINBAutoencoder.prepare_query_anndata(backed, reference_model, inplace=False)
    backed.file.close()
    assert query.n_vars == 150


def test_prepare_query_anndata_edge_cases(zinb_split):
    reference_model, query = zinb_split
    # Already the model's features: a copy, not the query itself, with inplace=False.
    assert (
        ZINBAutoencoder.prepare_query_anndata(query, reference_model, inplace=False) is not query
    )
    # A feature the model does not use may be repeated; it is dropped.
    extra = sc.AnnData(
        np.ones((query.n_obs, 2), dtype=query.X.dtype),
        obs=pd.DataFrame(index=query.obs_names),
        var=pd.DataFrame(index=["extra", "extra"]),
        layers={"counts": np.ones((query.n_obs, 2), dtype=query.X.dtype)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: names not unique
        doubled = sc.concat([query, extra], axis=1, merge="first")
    prepared = ZINBAutoencoder.prepare_query_anndata(doubled, reference_model, inplace=False)
    assert prepared.var_names.equals(query.var_names)
    # Below 80% of the features the warning adds that the mapping may be poor, not above.
    with pytest.warns(UserWarning, match="may be poor"):
        ZINBAutoencoder.prepare_query_anndata(query[:, 40:].copy(), reference_model, inplace=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ZINBAutoencoder.prepare_query_anndata(query[:, 10:].copy(), reference_model, inplace=False)
    assert not any("may be poor" in str(w.message) for w in caught)


def test_prepare_query_mudata_pads_each_modality(tmp_path):
    reference_model, query = _multivae_reference()
    with pytest.raises(InputError, match=r"reads MuData; use MultiVAE\.prepare_query_mudata"):
        MultiVAE.prepare_query_anndata(query["rna"], reference_model)
    rna, atac = query["rna"], query["atac"]
    rna_only = md.MuData({"rna": rna.copy()})
    rna_only.obs["batch"] = query.obs["batch"].to_numpy()
    with pytest.warns(UserWarning, match=r"no modality 'atac'.*all-zero rows"):
        added = MultiVAE.prepare_query_mudata(rna_only, reference_model, inplace=False)
    assert list(rna_only.mod) == ["rna"]  # left as it was
    assert added["atac"].var_names.equals(pd.Index(reference_model.training_var_names["atac"]))
    assert added["atac"].obs_names.equals(added.obs_names)
    assert added["atac"].X.nnz == 0
    rna_only_model = MultiVAE.load_query_data(added, reference_model)
    _train(rna_only_model, max_epochs=2)
    np.testing.assert_allclose(  # the cells' latent from their RNA alone
        rna_only_model.get_latent_representation(),
        rna_only_model.get_latent_representation(query, modality="rna"),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(InputError, match="view of another MuData"):
        MultiVAE.prepare_query_mudata(query[:10], reference_model)
    no_peaks = md.MuData({"rna": rna.copy(), "atac": atac[:, :0].copy()})
    with pytest.raises(InputError, match=r"'atac': the query has no features.*without it"):
        MultiVAE.prepare_query_mudata(no_peaks, reference_model, inplace=False)
    partial = query.copy()
    partial.mod["rna"], partial.mod["atac"] = rna[:, 3:].copy(), atac[:, ::-1].copy()
    partial.update()
    partial.var["selected"] = True  # a mask of the MuData's own: still one after preparing
    copy = MultiVAE.prepare_query_mudata(partial, reference_model, inplace=False)
    assert copy["rna"].n_vars == 30
    assert partial["rna"].n_vars == 27  # left as it was
    with pytest.warns(UserWarning, match=r"modality 'rna': 3 of the model's 30 features"):
        assert MultiVAE.prepare_query_mudata(partial, reference_model) is None
    names = reference_model.training_var_names
    assert partial["rna"].var_names.equals(pd.Index(names["rna"]))
    assert partial["atac"].var_names.equals(pd.Index(names["atac"]))
    np.testing.assert_array_equal(_dense(partial["atac"].X), _dense(atac.X))
    np.testing.assert_array_equal(_dense(partial["rna"].X)[:, :3], 0)
    np.testing.assert_array_equal(_dense(partial["rna"].X)[:, 3:], _dense(rna.X)[:, 3:])
    assert partial.var["selected"].dtype == bool
    assert partial.var["selected"].sum() == partial.n_vars - 3
    partial.write(tmp_path / "prepared.h5mu")
    model = MultiVAE.load_query_data(partial, reference_model)
    _train(model, max_epochs=2)
    assert model.get_latent_representation().shape == (partial.n_obs, 4)


def test_prepare_query_mudata_flags_an_added_modality_missing():
    scvi.settings.seed = 0
    reference, query = _split(
        simulate_multiome(n_cells=300, n_genes=30, n_peaks=40, n_batches=3, seed=2)
    )
    presence_keys = {"rna": "has_rna", "atac": "has_atac"}
    MultiVAE.setup_mudata(
        reference, batch_key="batch", modalities=RNA_ATAC, presence_keys=presence_keys
    )
    reference_model = MultiVAE(reference, n_latent=4)
    _train(reference_model, max_epochs=2)
    rna_only = md.MuData({"rna": query["rna"].copy()})
    rna_only.obs["batch"] = query.obs["batch"].to_numpy()
    rna_only.obs["has_atac"] = True  # e.g. copied from the reference's obs: wrong here
    misnamed = md.MuData({"gex": query["rna"].copy()})
    with pytest.raises(InputError, match=r"none of the model's modalities \['rna', 'atac'\]"):
        MultiVAE.prepare_query_mudata(misnamed, reference_model)  # else encoded from nothing
    with pytest.warns(UserWarning, match="no modality 'atac'"):
        MultiVAE.prepare_query_mudata(rna_only, reference_model)
    assert not rna_only.obs["has_atac"].any()
    has_counts = np.asarray(query["rna"].X.sum(1)).ravel() > 0  # the flag setup would ask for
    np.testing.assert_array_equal(rna_only.obs["has_rna"].to_numpy(), has_counts)
    model = MultiVAE.load_query_data(rna_only, reference_model)
    _train(model, max_epochs=2)
    assert model.get_latent_representation().shape == (rna_only.n_obs, 4)
    flagged_anew = rna_only.copy()  # every added all-zero row flagged as measured
    flagged_anew.obs["has_atac"] = True
    with pytest.warns(UserWarning, match=r"\d+ cells flagged present have an all-zero row"):
        model.get_latent_representation(flagged_anew)
    assert flagged_anew.n_obs >= 10
    shallow = flagged_anew[:1].copy()  # one cell without peak reads: a shallow cell, quiet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.get_latent_representation(shallow)
    assert not [w for w in caught if "flagged present" in str(w.message)]


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if scipy_sparse.issparse(matrix) else np.asarray(matrix)


def test_a_model_whose_features_share_a_name_is_matched_by_position_only():
    adata = simulate_scrna(n_cells=150, n_genes=30, n_batches=2, seed=0)
    names = list(adata.var_names)
    names[1] = names[0]  # read_10x_h5 without var_names_make_unique()
    adata.var_names = names
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=8, n_latent=2)
    _train(model, max_epochs=1)
    query = anndata.AnnData(
        obs=adata.obs[["batch"]], var=adata.var[[]], layers={"counts": adata.layers["counts"]}
    )
    prepared = ZINBAutoencoder.prepare_query_anndata(query, model, inplace=False)
    np.testing.assert_array_equal(  # the two genes keep their own counts
        prepared.layers["counts"].toarray(), adata.layers["counts"].toarray()
    )
    query.var_names_make_unique()  # what the query's own check advises
    with pytest.raises(InputError, match="features that share a name"):
        ZINBAutoencoder.prepare_query_anndata(query, model, inplace=False)


def test_prepare_query_mudata_gives_an_added_modality_the_columns_read_there():
    scvi.settings.seed = 0
    data = simulate_multiome(n_cells=300, n_genes=30, n_peaks=40, n_batches=3, seed=2)
    data.obs["sf"] = np.asarray(data["rna"].X.sum(1)).ravel()
    data["rna"].obs["sf"] = data.obs["sf"].to_numpy()
    reference, query = _split(data)
    reference["rna"].obs["batch"] = reference.obs["batch"].to_numpy()
    modalities = {**RNA_ATAC, "batch_key": "rna", "size_factor_key": "rna"}
    MultiVAE.setup_mudata(
        reference, batch_key="batch", size_factor_key="sf", modalities=modalities
    )
    reference_model = MultiVAE(reference, n_latent=4)
    _train(reference_model, max_epochs=2)

    atac_only = md.MuData({"atac": query["atac"].copy()})  # its batch in the ATAC obs only
    atac_only["atac"].obs["batch"] = query.obs["batch"].to_numpy()
    with pytest.warns(UserWarning, match="no modality 'rna'"):
        MultiVAE.prepare_query_mudata(atac_only, reference_model)
    assert (atac_only["rna"].obs["batch"] == "batch_2").all()
    assert (atac_only["rna"].obs["sf"] == 1.0).all()  # not read for cells without RNA
    model = MultiVAE.load_query_data(atac_only, reference_model)
    _train(model, max_epochs=1)
    assert np.isfinite(model.get_latent_representation()).all()

    in_mdata_obs = query.copy()  # the column where the model does not read it
    del in_mdata_obs["rna"].obs["batch"]
    with pytest.raises(InputError, match=r"`mdata\['rna'\].obs\['batch'\] = mdata.obs"):
        MultiVAE.load_query_data(in_mdata_obs, reference_model)


def test_size_factors_of_cells_without_rna_may_be_any_positive_number(warnings_as_errors):
    scvi.settings.seed = 0
    data = simulate_multiome(n_cells=300, n_genes=30, n_peaks=40, n_batches=3, seed=2)
    totals = np.asarray(data["rna"].X.sum(1), dtype=float).ravel()
    data.obs["sf"] = totals + 0.5  # not whole numbers, which mudata 0.4's copy() makes int64
    reference, query = _split(data)
    MultiVAE.setup_mudata(reference, batch_key="batch", size_factor_key="sf", modalities=RNA_ATAC)
    reference_model = MultiVAE(reference, n_latent=4)
    _train(reference_model, max_epochs=2)
    known = query.copy()
    known.obs["batch"] = "batch_0"
    known["rna"].X[:10] = 0  # ten cells without RNA, and no size factor
    known.obs.loc[known.obs_names[:10], "sf"] = 0.0
    with pytest.raises(InputError, match=r"10 cells without RNA counts\. It is not read for them"):
        reference_model.get_latent_representation(known)
    known.obs.loc[known.obs_names[:3], "sf"] = np.inf
    with pytest.raises(InputError, match="10 cells without RNA") as refused:
        reference_model.get_latent_representation(known)
    line = refused.value.args[0].split("`")[1]  # the fix the message gives, run on known.obs
    exec(line.replace("obs[", "known.obs["))
    with warnings_as_errors():  # the median size factor is that of cells with RNA
        latent = reference_model.get_latent_representation(known)
    known.obs.loc[known.obs_names[:10], "sf"] = 1e6
    np.testing.assert_array_equal(reference_model.get_latent_representation(known), latent)
    atac_only = md.MuData({"atac": query["atac"].copy()})  # size factor added: 1
    atac_only.obs["batch"] = "batch_0"
    with pytest.warns(UserWarning, match="no modality 'rna'"):
        MultiVAE.prepare_query_mudata(atac_only, reference_model)
    assert (atac_only.obs["sf"] == 1.0).all()
    assert reference_model.get_latent_representation(atac_only).shape == (atac_only.n_obs, 4)


def test_covariates_far_from_the_training_values_warn(tmp_path, warnings_as_errors):
    scvi.settings.seed = 0
    data = simulate_scatac(n_cells=300, n_peaks=100, n_batches=2, seed=1)
    sc.pp.filter_cells(data, min_counts=1)
    data.obs["tss"] = np.random.default_rng(0).normal(10, 2, data.n_obs)
    SAILER.setup_anndata(data, batch_key="batch", continuous_covariate_keys=["tss"])
    model = SAILER(data, n_latent=4)
    _train(model, max_epochs=1)
    query = data[:50].copy()
    with warnings_as_errors():  # the training cells' own values: quiet
        model.get_latent_representation(query)
    query.obs["tss"] *= 100  # e.g. from another tool, in other units
    far = r"obs\['tss'\] has median .* training standard dev"
    with pytest.warns(UserWarning, match=far):
        model.get_normalized_accessibility(query)
    model.save(tmp_path / "model")
    with pytest.warns(UserWarning, match=far):
        SAILER.load(tmp_path / "model", adata=query.copy())
    query.obs["batch"] = "new"
    with pytest.warns(UserWarning, match=far):
        SAILER.load_query_data(query, model)


def test_query_messages_name_the_model_the_order_and_the_modality_names():
    reference_model, query = _multivae_reference()
    with pytest.raises(InputError, match=r"`MultiVAE\.load_query_data\(query, model\)`"):
        reference_model.get_latent_representation(query)
    order = np.random.default_rng(0).permutation(query.n_obs)
    reordered = md.MuData({"rna": query["rna"].copy(), "atac": query["atac"][order].copy()})
    with pytest.raises(
        InputError,
        match=r"'atac' .* do not match the MuData's \(the same cells in another order\)",
    ):
        MultiVAE.load_query_data(reordered, reference_model)
    misnamed = md.MuData({"gex": query["rna"].copy(), "atac": query["atac"].copy()})
    with pytest.warns(
        UserWarning, match=r"The query's 'gex' is not read\. .*mdata\.mod\[\"rna\"\]"
    ):
        MultiVAE.prepare_query_mudata(misnamed, reference_model)
    one_cell = MultiVAE.load_query_data(query[:1].copy(), reference_model)
    with pytest.raises(InputError, match="Train on at least 2 cells"):
        one_cell.train(max_epochs=1)


def test_prepare_query_mudata_flags_cells_without_counts_absent():
    """An added presence flag is True only for the cells with counts in that modality."""
    reference = simulate_multiome(n_cells=80, n_genes=20, n_peaks=30, n_batches=2, seed=2)
    MultiVAE.setup_mudata(
        reference,
        batch_key="batch",
        modalities={"rna_layer": "rna", "atac_layer": "atac"},
        presence_keys={"rna": "has_rna", "atac": "has_atac"},
    )
    model = MultiVAE(reference, n_latent=2)  # only its registry is read
    query = simulate_multiome(n_cells=40, n_genes=20, n_peaks=30, n_batches=2, seed=3)
    rna = query["rna"].copy()
    rna.X = scipy_sparse.csr_matrix(rna.X)
    rna.X[:5] = 0  # five cells without RNA reads
    rna.X.eliminate_zeros()
    rna_only = md.MuData({"rna": rna})
    rna_only.obs["batch"] = query.obs["batch"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MultiVAE.prepare_query_mudata(rna_only, model)
    expected = np.asarray(rna.X.sum(1)).ravel() > 0
    assert not expected[:5].any()
    assert expected[5:].all()
    np.testing.assert_array_equal(rna_only.obs["has_rna"].to_numpy(dtype=bool), expected)


def test_an_added_modality_takes_the_querys_own_obs_column_first():
    """The MuData's own obs column wins over another modality's (the documented order)."""
    reference = simulate_multiome(n_cells=80, n_genes=20, n_peaks=30, n_batches=2, seed=2)
    MultiVAE.setup_mudata(
        reference,
        batch_key="batch",
        modalities={"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"},
    )
    model = MultiVAE(reference, n_latent=2)  # only its registry is read
    query = simulate_multiome(n_cells=30, n_genes=20, n_peaks=30, n_batches=2, seed=3)
    atac_only = md.MuData({"atac": query["atac"].copy()})
    atac_only["atac"].obs["batch"] = "batch_0"  # e.g. left from an earlier annotation
    atac_only.obs["batch"] = "batch_1"  # the query's own column
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MultiVAE.prepare_query_mudata(atac_only, model)
    assert (atac_only["rna"].obs["batch"] == "batch_1").all()


def test_prepared_query_takes_the_right_columns_after_a_repeated_unused_feature():
    """A repeated feature the model does not use, before the model's features, shifts none."""
    reference = simulate_scrna(n_cells=60, n_genes=20, n_batches=2, seed=0)
    ZINBAutoencoder.setup_anndata(reference, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(reference, n_hidden=8, n_latent=2)  # only its registry is read
    query = simulate_scrna(n_cells=30, n_genes=20, n_batches=2, seed=1)
    counts = np.hstack(
        [np.full((query.n_obs, 2), 7, dtype=np.float32), query.layers["counts"].toarray()]
    )
    doubled = anndata.AnnData(
        X=counts.copy(),
        obs=query.obs.copy(),
        var=pd.DataFrame(index=["extra", "extra", *query.var_names]),
        layers={"counts": counts},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: names not unique
        prepared = ZINBAutoencoder.prepare_query_anndata(doubled, model, inplace=False)
    assert prepared.var_names.equals(query.var_names)
    layer = prepared.layers["counts"]
    layer = layer.toarray() if scipy_sparse.issparse(layer) else np.asarray(layer)
    np.testing.assert_array_equal(layer, counts[:, 2:])
