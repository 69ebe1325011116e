"""New data's cells, obs columns and values are checked and matched by value or name."""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest

from scgexp.data import (
    InputError,
    mark_landmarks,
    simulate_bulk_expression,
    simulate_multiome,
    simulate_scatac,
    simulate_scrna,
)
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

RNA_ATAC = {"rna_layer": "rna", "atac_layer": "atac"}


def _quiet_train(model, max_epochs: int = 3) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=max_epochs, enable_progress_bar=False)


def _with_donor(adata):
    adata.obs["donor"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3 == 0, "d0", "d1"))
    return adata


def _reordered_donor(adata):
    query = adata.copy()
    query.obs["donor"] = query.obs["donor"].cat.reorder_categories(["d1", "d0"])
    return query


@pytest.fixture(scope="module")
def zinb():
    adata = _with_donor(simulate_scrna(n_cells=200, n_genes=40, seed=0))
    adata.obs["size_factor"] = 1.0
    ZINBAutoencoder.setup_anndata(
        adata,
        layer="counts",
        batch_key="batch",
        size_factor_key="size_factor",
        categorical_covariate_keys=["donor"],
    )
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    _quiet_train(model)
    return model


@pytest.fixture(scope="module")
def multivae():
    mdata = simulate_multiome(n_cells=160, n_genes=30, n_peaks=60, seed=0)
    _with_donor(mdata)
    MultiVAE.setup_mudata(
        mdata, batch_key="batch", categorical_covariate_keys=["donor"], modalities=RNA_ATAC
    )
    model = MultiVAE(mdata, n_latent=4)
    _quiet_train(model)
    return model


def test_covariate_categories_in_another_order_are_matched_by_value(zinb, tmp_path):
    # scvi-tools 1.4 alone would keep the query's codes and decode d0 cells as d1.
    query = _reordered_donor(zinb.adata)
    reference = zinb.get_normalized_expression(zinb.adata.copy(), return_numpy=True)
    np.testing.assert_allclose(
        zinb.get_normalized_expression(query, return_numpy=True), reference, rtol=1e-5
    )
    zinb.save(tmp_path / "zinb")
    loaded = ZINBAutoencoder.load(tmp_path / "zinb", adata=_reordered_donor(zinb.adata))
    np.testing.assert_allclose(
        loaded.get_normalized_expression(return_numpy=True), reference, rtol=1e-5
    )
    assert list(query.obs["donor"].cat.categories) == ["d1", "d0"]  # the user's obs untouched


def test_sailer_and_multivae_match_covariate_categories_by_value(multivae):
    adata = _with_donor(simulate_scatac(n_cells=160, n_peaks=300, seed=0))
    SAILER.setup_anndata(adata, batch_key="batch", categorical_covariate_keys=["donor"])
    sailer = SAILER(adata, n_hidden=32, n_latent=4)
    _quiet_train(sailer)
    np.testing.assert_allclose(
        sailer.get_normalized_accessibility(_reordered_donor(adata), return_numpy=True),
        sailer.get_normalized_accessibility(adata.copy(), return_numpy=True),
        rtol=1e-5,
    )
    mdata = multivae.adata
    query = mdata.copy()
    query.obs["donor"] = query.obs["donor"].cat.reorder_categories(["d1", "d0"])
    np.testing.assert_allclose(
        multivae.get_normalized_expression(query, return_numpy=True),
        multivae.get_normalized_expression(mdata.copy(), return_numpy=True),
        rtol=1e-5,
    )


def test_labels_changed_in_place_are_read_again_or_refused(multivae):
    """scvi-tools encodes batch and covariate labels once, when data are registered."""
    mdata = multivae.adata
    query = mdata.copy()
    multivae.get_normalized_expression(query, return_numpy=True)  # registers the query
    query.obs["batch"] = mdata.obs["batch"].iloc[0]  # every cell in the first cell's batch
    query.obs["donor"] = query.obs["donor"].map({"d0": "d1", "d1": "d0"}).astype("category")
    fresh = md.MuData({name: mod.copy() for name, mod in query.mod.items()})
    fresh.obs = query.obs.copy()
    np.testing.assert_allclose(
        multivae.get_normalized_expression(query, return_numpy=True),
        multivae.get_normalized_expression(fresh, return_numpy=True),
        rtol=1e-5,
    )
    training = mdata.obs["donor"].copy()
    mdata.obs["donor"] = query.obs["donor"].to_numpy()
    try:
        with pytest.raises(InputError, match=r"obs\['donor'\] of the data registered"):
            multivae.get_latent_representation()
    finally:
        mdata.obs["donor"] = training
    multivae.get_latent_representation()  # labels restored: accepted again


def test_another_setup_on_the_same_data_keeps_each_model_s_encoding(tmp_path):
    """scvi-tools re-registers data set up again since from scratch (batch order, landmarks)."""
    adata = simulate_scrna(n_cells=120, n_genes=30, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    _quiet_train(model, max_epochs=2)
    before = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    adata.obs["batch"] = adata.obs["batch"].cat.reorder_categories(["batch_1", "batch_0"])
    ZINBAutoencoder.setup_anndata(adata, layer="counts")  # e.g. for a second model
    after = model.get_normalized_expression(transform_batch="batch_0", return_numpy=True)
    np.testing.assert_allclose(after, before, rtol=1e-5)
    assert list(
        model.registry_["field_registries"]["batch"]["state_registry"]["categorical_mapping"]
    ) == ["batch_0", "batch_1"]
    labels = adata.obs["batch"].copy()
    adata.obs["batch"] = adata.obs["batch"].cat.add_categories("batch_9")
    adata.obs.iloc[:5, adata.obs.columns.get_loc("batch")] = "batch_9"
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    with pytest.raises(InputError, match=r"changed after setup: obs\['batch'\] has categories"):
        model.get_latent_representation()
    adata.obs["batch"] = labels  # as the error says: the model works again
    np.testing.assert_allclose(
        model.get_normalized_expression(transform_batch="batch_0", return_numpy=True),
        before,
        rtol=1e-5,
    )

    bulk = simulate_bulk_expression(n_samples=120, n_landmarks=10, n_targets=20, seed=0)
    DGEX.setup_anndata(bulk)
    dgex = DGEX(bulk, n_hidden=16)
    _quiet_train(dgex, max_epochs=1)
    landmarks = list(dgex.landmark_names)
    mark_landmarks(bulk, list(bulk.var_names[-10:]))  # another landmark set, for a second model
    DGEX.setup_anndata(bulk)
    dgex.save(tmp_path / "dgex")
    loaded = DGEX.load(tmp_path / "dgex")
    assert list(loaded.landmark_names) == landmarks
    assert list(loaded.target_names) == list(dgex.target_names)
    with pytest.raises(InputError, match=r"marks other landmarks.*landmark_key='landmark_2'"):
        dgex.train(max_epochs=1)
    mark_landmarks(bulk, landmarks)  # as the error says
    _quiet_train(dgex, max_epochs=1)
    dgex.save(tmp_path / "dgex", overwrite=True)
    assert list(DGEX.load(tmp_path / "dgex", adata=bulk).landmark_names) == landmarks
    # Or, as it also says, the second model marks its own column: both then train.
    mark_landmarks(bulk, list(bulk.var_names[-10:]), key="landmark_2")
    DGEX.setup_anndata(bulk, landmark_key="landmark_2")
    second = DGEX(bulk, n_hidden=16)
    _quiet_train(second, max_epochs=1)
    _quiet_train(dgex, max_epochs=1)
    assert list(dgex.landmark_names) == landmarks
    assert list(second.landmark_names) == list(bulk.var_names[-10:])


def test_a_modality_set_up_for_another_model_keeps_each_model_s_encoding():
    """Both models write obs['_scvi_batch'] of the modality; each must read its own codes."""
    mdata = simulate_multiome(n_cells=120, n_genes=30, n_peaks=60, n_batches=3, seed=0)
    rna = mdata["rna"]
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities={**RNA_ATAC, "batch_key": "rna"})
    ZINBAutoencoder.setup_anndata(rna, batch_key="cell_type")  # before MultiVAE's init
    multivae = MultiVAE(mdata, n_latent=4)
    _quiet_train(multivae, max_epochs=2)
    before = multivae.get_latent_representation()
    zinb = ZINBAutoencoder(rna, n_hidden=16, n_latent=4)
    _quiet_train(zinb, max_epochs=2)
    expression = zinb.get_normalized_expression(transform_batch="type_0", return_numpy=True)
    np.testing.assert_allclose(multivae.get_latent_representation(), before, rtol=1e-5)
    np.testing.assert_allclose(
        zinb.get_normalized_expression(transform_batch="type_0", return_numpy=True),
        expression,
        rtol=1e-5,
    )
    import scvi  # scvi-tools' own models on the modality notice the rewrite too

    scvi.model.SCVI.setup_anndata(rna, batch_key="cell_type")
    scvi_model = scvi.model.SCVI(rna, n_hidden=8, n_latent=2)
    codes = rna.obs["_scvi_batch"].to_numpy().copy()
    multivae.get_latent_representation()
    assert not np.array_equal(rna.obs["_scvi_batch"], codes)
    scvi_model._validate_anndata()
    np.testing.assert_array_equal(rna.obs["_scvi_batch"], codes)
    rna.obs["batch"] = rna.obs["batch"].cat.rename_categories(lambda label: label + "x")
    with pytest.raises(InputError, match=r"changed after setup: obs\['batch'\] has categories"):
        multivae.get_latent_representation()  # relabelled in place, by the user: refused


def test_multivae_reads_labels_and_counts_where_it_was_set_up():
    """Batch labels from one modality's obs; counts checked in each modality."""
    mdata = simulate_multiome(n_cells=120, n_genes=30, n_peaks=40, seed=0)
    mdata["rna"].obs["plate"] = np.where(np.arange(mdata.n_obs) % 2, "p1", "p2")
    modalities = {**RNA_ATAC, "batch_key": "rna"}
    MultiVAE.setup_mudata(mdata, batch_key="plate", modalities=modalities)
    model = MultiVAE(mdata, n_hidden=16, n_latent=4)
    _quiet_train(model, max_epochs=1)  # labels unchanged: accepted
    mdata["rna"].obs["plate"] = np.where(np.arange(mdata.n_obs) % 2, "p2", "p1")
    with pytest.raises(InputError, match=r"obs\['plate'\] of the data registered"):
        model.get_latent_representation()
    mdata["rna"].obs["plate"] = np.where(np.arange(mdata.n_obs) % 2, "p1", "p2")
    rna = mdata["rna"].X
    rna.data = np.log1p(rna.data / 2.0)
    with pytest.raises(InputError, match="modality 'rna' X of the data registered"):
        model.get_latent_representation()


def test_registered_counts_normalised_in_place_are_refused():
    adata = simulate_scrna(n_cells=120, n_genes=30, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    _quiet_train(model, max_epochs=1)
    counts = adata.layers["counts"]
    counts.data = np.log1p(counts.data / 2.0)  # as sc.pp.log1p(adata, layer="counts") would
    with pytest.raises(InputError, match="no longer holds raw counts"):
        model.train(max_epochs=1)
    with pytest.raises(InputError, match="no longer holds raw counts"):
        model.get_latent_representation()


def test_query_obs_columns_are_checked(zinb, tmp_path):
    query = zinb.adata.copy()
    del query.obs["batch"]
    with pytest.raises(InputError, match="no column 'batch'"):
        zinb.get_latent_representation(query)
    zinb.save(tmp_path / "model")
    with pytest.raises(InputError, match=r"'batch', which the model was trained with \(its batch"):
        ZINBAutoencoder.load(tmp_path / "model", adata=query)
    with pytest.raises(
        InputError, match=r"the model was trained with \(its batch_key\)\. Add"
    ) as e:
        ZINBAutoencoder.load_query_data(query, tmp_path / "model")
    assert "load_query_data" not in str(e.value)  # the call running: no advice to make it
    query = zinb.adata.copy()
    query.obs["donor"] = "d9"  # a covariate category the decoder has no input for
    with pytest.raises(InputError, match="not trained with: 'd9'"):
        zinb.get_latent_representation(query)
    query = zinb.adata.copy()
    query.obs["size_factor"] = 0.0
    with pytest.raises(InputError, match="positive size factors"):
        zinb.get_normalized_expression(query)
    query.obs["size_factor"] = np.nan
    with pytest.raises(InputError, match="NaN"):
        zinb.get_normalized_expression(query)
    # Positive but 0 in float32 (inf counts, then a "lower the learning rate" divergence),
    # or True read as 1.0.
    query.obs["size_factor"] = 1e-40
    with pytest.raises(InputError, match=r"below 1\.2e-38, which float32 cannot divide by"):
        zinb.get_normalized_expression(query)
    query.obs["size_factor"] = True
    with pytest.raises(InputError, match="holds True/False, not size factors"):
        zinb.get_normalized_expression(query)
    del query.obs["size_factor"]
    with pytest.raises(InputError, match="no column 'size_factor'"):
        zinb.get_normalized_expression(query)


def _relabelled(data, key: str, value: str):
    query = data.copy()
    query.obs[key] = value
    return query


def test_cells_of_a_new_batch_are_embedded_under_any_known_batch(zinb, multivae):
    # The error for a new batch says that any known category gives these cells' latent
    # representation when the encoder does not read the batch: hold each model to that.
    adata = _with_donor(simulate_scatac(n_cells=160, n_peaks=300, seed=0))
    SAILER.setup_anndata(adata, batch_key="batch", categorical_covariate_keys=["donor"])
    sailer = SAILER(adata, n_hidden=32, n_latent=4)
    _quiet_train(sailer)
    for model in (zinb, sailer, multivae):
        new_batch = _relabelled(model.adata, "batch", "new_site")
        with pytest.raises(
            InputError, match=r"for the latent representation any will do, e\.g\. "
        ):
            model.get_latent_representation(new_batch)
        for key in ("batch", "donor"):
            latents = [
                model.get_latent_representation(_relabelled(model.adata, key, value))
                for value in pd.unique(model.adata.obs[key])[:2]
            ]
            assert np.abs(latents[0] - latents[1]).max() == 0, (type(model).__name__, key)
    adata = simulate_scrna(n_cells=100, n_genes=40, seed=1)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    encoding = ZINBAutoencoder(adata, n_hidden=16, n_latent=4, encode_covariates=True)
    _quiet_train(encoding, max_epochs=1)
    one, other = (
        encoding.get_latent_representation(_relabelled(adata, "batch", value))
        for value in pd.unique(adata.obs["batch"])[:2]
    )
    assert np.abs(one - other).max() > 1e-4
    with pytest.raises(InputError, match="not trained with") as refused:
        encoding.get_latent_representation(_relabelled(adata, "batch", "new_site"))
    assert "any will do" not in str(refused.value)


def test_new_batch_advice_names_the_modality_that_holds_the_column():
    mdata = simulate_multiome(n_cells=120, n_genes=30, n_peaks=60, seed=0)
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities={**RNA_ATAC, "batch_key": "rna"})
    model = MultiVAE(mdata, n_latent=4)
    _quiet_train(model, max_epochs=1)
    query = mdata.copy()
    query["rna"].obs["batch"] = "new_site"
    with pytest.raises(
        InputError, match=r"`query = query.copy\(\); query\['rna'\]\.obs\['batch'\] = "
    ):
        model.get_latent_representation(query)
    query = query.copy()
    query["rna"].obs["batch"] = "batch_0"  # the advice, followed
    np.testing.assert_array_equal(
        model.get_latent_representation(query),
        model.get_latent_representation(_relabelled(mdata, "batch", "batch_1")),
    )
    with pytest.raises(InputError, match=r"pass a known batch as transform_batch \(e.g. 'batch_"):
        model.predict(_relabelled(mdata["atac"], "batch", "new_site"), source="atac", target="rna")


def test_categories_stored_as_another_type_are_named():
    adata = simulate_scrna(n_cells=120, n_genes=30, seed=0)
    adata.obs["plate"] = np.arange(adata.n_obs) % 2  # integer batch labels
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="plate")
    model = ZINBAutoencoder(adata, n_hidden=8, n_latent=2)
    _quiet_train(model, max_epochs=1)
    query = adata.copy()
    query.obs["plate"] = query.obs["plate"].astype(str)
    with pytest.raises(InputError, match=r"Only the type differs.*astype\('int64'\)"):
        model.get_latent_representation(query)
    query.obs["plate"] = query.obs["plate"].astype("int64")
    np.testing.assert_allclose(
        model.get_latent_representation(query), model.get_latent_representation(), rtol=1e-6
    )


def test_model_loaded_without_data_asks_for_it(zinb, tmp_path):
    zinb.save(tmp_path / "zinb")
    loaded = ZINBAutoencoder.load(tmp_path / "zinb")
    with pytest.raises(InputError, match="loaded without data"):
        loaded.get_latent_representation()
    assert loaded.get_latent_representation(zinb.adata.copy()).shape == (200, 4)


def test_bad_requests_are_named(zinb):
    with pytest.raises(InputError, match="does not have: nope"):
        zinb.get_normalized_expression(gene_list=["nope"])
    with pytest.raises(InputError, match="single category"):
        zinb.get_likelihood_parameters(transform_batch=["batch_0", "batch_1"])
    adata = simulate_scatac(n_cells=120, n_peaks=300, seed=1)
    SAILER.setup_anndata(adata, batch_key="batch")
    sailer = SAILER(adata, n_hidden=16, n_latent=4)
    _quiet_train(sailer, max_epochs=1)
    with pytest.raises(InputError, match="'median' or None"):
        sailer.get_normalized_accessibility(depth="mean")


def test_multivae_query_cells_must_line_up(multivae):
    mdata = multivae.adata
    permutation = np.random.default_rng(0).permutation(40)
    query = md.MuData(
        {"rna": mdata["rna"][:40].copy(), "atac": mdata["atac"][:40][permutation].copy()}
    )
    query.obs["batch"] = mdata.obs["batch"][:40].to_numpy()
    query.obs["donor"] = mdata.obs["donor"][:40].to_numpy()
    with pytest.raises(InputError, match="cells do not match"):
        multivae.get_latent_representation(query)
    # predict reads the source modality's cells and matches obs to them by name.
    expected = multivae.predict(mdata[:40].copy(), source="atac", target="rna")
    predicted = multivae.predict(query, source="atac", target="rna")
    assert list(predicted.obs_names) == list(query["atac"].obs_names)
    np.testing.assert_allclose(
        predicted.X, expected[query["atac"].obs_names].X, rtol=1e-5, atol=1e-7
    )
    # A MuData whose source modality holds only some of its cells (not padded).
    partial = md.MuData({"rna": mdata["rna"][:40].copy(), "atac": mdata["atac"][10:40].copy()})
    partial.obs["batch"] = mdata.obs["batch"][:40].to_numpy()
    partial.obs["donor"] = mdata.obs["donor"][:40].to_numpy()
    predicted = multivae.predict(partial, source="atac", target="rna")
    np.testing.assert_allclose(predicted.X, expected[10:40].X, rtol=1e-5, atol=1e-7)


def test_multivae_query_values_are_checked(multivae, tmp_path):
    mdata = multivae.adata

    def query(change):
        copy = mdata[:40].copy()
        change(copy)
        return copy

    def nan_rna(q):
        q["rna"].X = q["rna"].X.toarray()
        q["rna"].X[0, 0] = np.nan

    def log_rna(q):
        q["rna"].X = np.log1p(q["rna"].X.toarray())

    def unknown_batch(q):
        q.obs["batch"] = "new_lab"

    def no_batch(q):
        del q.obs["batch"]

    cases = [
        (nan_rna, "NaN"),
        (log_rna, "The model reads X: store the raw counts there"),
        (unknown_batch, "not trained with"),
        (no_batch, "no column 'batch'"),
    ]
    for change, message in cases:
        with pytest.raises(InputError, match=message):
            multivae.get_latent_representation(query(change))
    multivae.save(tmp_path / "mv")
    with pytest.raises(InputError, match="not trained with"):
        MultiVAE.load(tmp_path / "mv", mdata=query(unknown_batch))


def test_dgex_reads_only_landmarks_and_names_empty_requests():
    adata = simulate_bulk_expression(
        n_samples=300, n_landmarks=20, n_targets=40, n_programs=5, seed=0
    )
    train, test = adata[:250].copy(), adata[250:].copy()
    DGEX.setup_anndata(train)
    model = DGEX(train, n_hidden=32)
    _quiet_train(model)
    reference = model.predict(test).X
    test.X[:, np.flatnonzero(~test.var["landmark"].to_numpy())[0]] = np.nan  # unmeasured target
    np.testing.assert_allclose(model.predict(test).X, reference)
    targets_only = test[:, ~test.var["landmark"].to_numpy()].copy()
    with pytest.raises(InputError, match="None of the 20 landmark genes"):
        model.predict(targets_only, fill_missing=True)
    with pytest.raises(InputError, match="no samples"):
        model.predict(test[:0].copy())
    with pytest.raises(InputError, match="batch_size"):
        model.predict(test, batch_size=0)


def test_setup_names_bad_flags():
    adata = simulate_bulk_expression(n_samples=50, n_landmarks=10, n_targets=20, seed=0)
    adata.var["landmark"] = adata.var["landmark"].astype("boolean")
    adata.var.loc[adata.var_names[0], "landmark"] = pd.NA
    with pytest.raises(InputError, match="1 missing values"):
        DGEX.setup_anndata(adata)
    mdata = simulate_multiome(n_cells=60, n_genes=20, n_peaks=40, seed=0)
    mdata.obs["has_rna"] = "yes"
    with pytest.raises(InputError, match="must be boolean"):
        MultiVAE.setup_mudata(mdata, presence_keys={"rna": "has_rna"}, modalities=RNA_ATAC)


def test_presence_flags_that_contradict_the_data_are_reported():
    mdata = simulate_multiome(n_cells=80, n_genes=20, n_peaks=200, seed=0)
    mdata.obs["has_rna"] = True
    mdata.obs["has_atac"] = True
    mdata.obs.loc[mdata.obs_names[:3], "has_atac"] = False  # these cells do hold ATAC counts
    with pytest.warns(UserWarning, match="3 cells flagged missing hold counts"):
        MultiVAE.setup_mudata(
            mdata, presence_keys={"rna": "has_rna", "atac": "has_atac"}, modalities=RNA_ATAC
        )


def test_multivae_predict_checks_continuous_covariates_and_encodes_empty_query_cells(
    copy_on_write,
):
    mdata = simulate_multiome(n_cells=120, n_genes=20, n_peaks=200, seed=1)
    mdata.obs["qc"] = np.random.default_rng(0).normal(size=mdata.n_obs)
    MultiVAE.setup_mudata(mdata, continuous_covariate_keys=["qc"], modalities=RNA_ATAC)
    model = MultiVAE(mdata, n_latent=4)
    _quiet_train(model, max_epochs=1)
    atac = mdata["atac"][:30].copy()
    atac.obs["qc"] = mdata.obs["qc"][:30].to_numpy()
    assert np.isfinite(model.predict(atac, source="atac", target="rna").X).all()
    atac.obs.loc[atac.obs_names[0], "qc"] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        model.predict(atac, source="atac", target="rna")
    # pandas 3 hands out read-only views of obs columns: copied before torch, which warns on them
    atac.obs["qc"] = mdata.obs["qc"][:30].to_numpy()
    with copy_on_write() as writable:
        model.predict(atac, source="atac", target="rna")
    assert writable
    assert all(writable)
    # A query cell without any data is encoded (from nothing), not refused as in training.
    query = mdata[:30].copy()
    for name in ("rna", "atac"):
        matrix = query[name].X.toarray()
        matrix[0] = 0
        query[name].X = matrix
    assert np.isfinite(model.get_latent_representation(query)).all()


def test_setup_refuses_misnamed_arguments_and_missing_columns():
    mdata = simulate_multiome(n_cells=60, n_genes=20, n_peaks=40, seed=0)
    with pytest.raises(InputError, match="no argument 'layer'; did you mean 'rna_layer'"):
        MultiVAE.setup_mudata(mdata, modalities=RNA_ATAC, layer="counts")
    adata = simulate_bulk_expression(n_samples=30, n_landmarks=5, n_targets=10, seed=0)
    from scgexp.data import mark_landmarks

    with pytest.raises(InputError, match="no column 'symbol'"):
        mark_landmarks(adata, ["g1"], gene_column="symbol")


def _with_unused_donor(data):
    data.obs["donor"] = data.obs["donor"].cat.add_categories(["d9"])
    return data


def test_training_categories_without_cells_are_refused_queries_accept_them(
    zinb, multivae, tmp_path
):
    # scvi-tools registers a category without cells; the model would decode it untrained.
    message = r"obs\['donor'\] has categories without cells: \['d9'\]"
    adata = _with_unused_donor(_with_donor(simulate_scrna(n_cells=60, n_genes=40, seed=1)))
    with pytest.raises(InputError, match=message):
        ZINBAutoencoder.setup_anndata(adata, layer="counts", categorical_covariate_keys=["donor"])
    peaks = _with_unused_donor(_with_donor(simulate_scatac(n_cells=60, n_peaks=100, seed=1)))
    with pytest.raises(InputError, match=message):
        SAILER.setup_anndata(peaks, batch_key="batch", categorical_covariate_keys=["donor"])
    mdata = _with_unused_donor(_with_donor(simulate_multiome(n_cells=60, n_genes=30, seed=1)))
    with pytest.raises(InputError, match=message):
        MultiVAE.setup_mudata(mdata, categorical_covariate_keys=["donor"], modalities=RNA_ATAC)
    assert list(adata.obs["donor"].cat.categories) == ["d0", "d1", "d9"]  # left as it was
    # A query holding only some of the trained categories is fine.
    for model in (zinb, multivae):
        query = model.adata[model.adata.obs["donor"] == "d1"].copy()
        query.obs["donor"] = pd.Categorical(query.obs["donor"], categories=["d0", "d1"])
        assert model.get_latent_representation(query).shape[0] == query.n_obs
    zinb.save(tmp_path / "zinb")
    query = zinb.adata[zinb.adata.obs["donor"] == "d1"].copy()
    query.obs["donor"] = pd.Categorical(query.obs["donor"], categories=["d0", "d1"])
    assert ZINBAutoencoder.load(tmp_path / "zinb", adata=query).adata.n_obs == query.n_obs


def test_continuous_covariates_changed_in_place_are_read_again_or_refused():
    """scvi-tools copies continuous covariates once, when data are registered."""
    adata = simulate_scatac(n_cells=160, n_peaks=300, seed=0)
    adata.obs["tss"] = np.random.default_rng(0).normal(5, 1, adata.n_obs)
    SAILER.setup_anndata(adata, batch_key="batch", continuous_covariate_keys=["tss"])
    model = SAILER(adata, n_hidden=32, n_latent=4)
    _quiet_train(model, max_epochs=1)
    query = adata.copy()
    model.get_normalized_accessibility(query, return_numpy=True)  # registers the query
    query.obs["tss"] *= 2
    np.testing.assert_allclose(
        model.get_normalized_accessibility(query, return_numpy=True),
        model.get_normalized_accessibility(query.copy(), return_numpy=True),
        rtol=1e-5,
    )
    adata.obs["tss"] += 1
    with pytest.raises(InputError, match=r"obs\['tss'\] of the data registered"):
        model.get_latent_representation()


def test_covariates_of_mixed_types_are_read_once_and_relabelling_is_refused():
    adata = simulate_scatac(n_cells=120, n_peaks=300, seed=0)
    adata.obs["frip"] = np.linspace(0.2, 0.6, adata.n_obs)
    adata.obs["doublet"] = np.arange(adata.n_obs) % 7 == 0  # float and bool: an object array
    SAILER.setup_anndata(adata, batch_key="batch", continuous_covariate_keys=["frip", "doublet"])
    model = SAILER(adata, n_latent=4)
    _quiet_train(model, max_epochs=1)
    manager = model.adata_manager
    model.get_latent_representation()
    codes = manager.written_codes
    model.get_latent_representation()
    assert manager.written_codes == codes  # no re-registration on every call
    swapped = {"batch_0": "batch_1", "batch_1": "batch_0"}
    adata.obs["batch"] = adata.obs["batch"].map(swapped).astype("category")
    with pytest.raises(InputError, match=r"obs\['batch'\] of the data registered"):
        model.get_latent_representation()
