"""New data must carry the trained features by name and in order; column-major data works."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from scgexp.data import InputError, simulate_multiome, simulate_scatac, simulate_scrna
from scgexp.model import SAILER, MultiVAE, ZINBAutoencoder


def _quiet_train(model) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, enable_progress_bar=False)


@pytest.fixture(scope="module")
def zinb():
    adata = simulate_scrna(n_cells=240, n_genes=40, seed=0)
    train, query = adata[:160].copy(), adata[160:].copy()
    ZINBAutoencoder.setup_anndata(train, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(train, n_hidden=16, n_latent=4)
    _quiet_train(model)
    return model, query


def test_reordered_genes_are_refused_not_read_by_position(zinb, tmp_path):
    model, query = zinb
    reordered = query[:, query.var_names[::-1]].copy()
    for call in (model.get_latent_representation, model.get_normalized_expression):
        with pytest.raises(InputError, match="another order"):
            call(reordered)
    # Selecting the model's features in its order is the documented fix.
    fixed = reordered[:, model.adata.var_names].copy()
    np.testing.assert_allclose(
        model.get_latent_representation(fixed), model.get_latent_representation(query)
    )
    model.save(tmp_path / "zinb")
    with pytest.raises(
        InputError,
        match=r"another order.*ZINBAutoencoder.load\(dir\).training_var_names.*"
        r"ZINBAutoencoder\.prepare_query_anndata\(data, model\)",
    ):
        ZINBAutoencoder.load(tmp_path / "zinb", adata=query[:, query.var_names[::-1]].copy())
    # The message's recipe, for a saved model and a query with extra genes in another order.
    names = ZINBAutoencoder.load(tmp_path / "zinb").training_var_names
    assert names == list(model.adata.var_names)
    loaded = ZINBAutoencoder.load(tmp_path / "zinb", adata=reordered[:, names].copy())
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(query)
    )


def test_missing_genes_are_named(zinb, tmp_path):
    model, query = zinb
    subset = query[:, query.var_names[3:]].copy()
    with pytest.raises(InputError, match=r"3 of the model's 40 features are missing.*gene00000"):
        model.get_latent_representation(subset)
    model.save(tmp_path / "zinb")
    with pytest.raises(InputError, match="features are missing"):
        ZINBAutoencoder.load(tmp_path / "zinb", adata=subset)


def test_names_in_another_letter_case_are_told_so(zinb):
    model, query = zinb
    upper = query.copy()
    upper.var_names = upper.var_names.str.upper()
    with pytest.raises(InputError, match=r"differ in letter case.*str\.upper\(\)"):
        model.get_latent_representation(upper)
    other = query.copy()
    other.var_names = [f"ENSG{i:011d}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="gene symbols against Ensembl IDs"):
        model.get_latent_representation(other)


def test_load_refuses_a_view_with_the_fix(zinb, tmp_path):
    model, query = zinb
    model.save(tmp_path / "zinb")
    with pytest.raises(InputError, match=r"copy\(\)"):
        ZINBAutoencoder.load(tmp_path / "zinb", adata=query[:50])
    assert ZINBAutoencoder.load(tmp_path / "zinb", adata=query[:50].copy()).adata.n_obs == 50


def test_dgex_missing_landmarks_message_names_no_query_preparation():
    from scgexp.data import simulate_bulk_expression
    from scgexp.data._checks import check_feature_names
    from scgexp.model import DGEX

    bulk = simulate_bulk_expression(n_samples=40, n_landmarks=5, n_targets=10, seed=0)
    DGEX.setup_anndata(bulk)
    model = DGEX(bulk, n_hidden=8)
    with pytest.raises(InputError, match="features are missing") as refusal:
        check_feature_names(bulk[:, 2:].copy(), model.registry_)
    assert "prepare_query" not in str(refusal.value)  # DGEX has fill_missing instead


def test_gene_subset_with_column_major_layer_trains():
    adata = simulate_scrna(n_cells=150, n_genes=40, seed=1)
    adata.layers["counts"] = adata.layers["counts"].toarray()
    subset = adata[:, adata.var_names[:30]].copy()  # anndata makes the layer column-major
    subset.layers["counts"] = np.asfortranarray(subset.layers["counts"])
    values = subset.layers["counts"].copy()
    with pytest.warns(UserWarning, match="row-major"):
        ZINBAutoencoder.setup_anndata(subset, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(subset, n_hidden=16, n_latent=4)
    _quiet_train(model)
    assert np.isfinite(model.get_latent_representation()).all()
    np.testing.assert_array_equal(subset.layers["counts"], values)  # same values


def test_sailer_reordered_peaks_are_refused():
    adata = simulate_scatac(n_cells=160, n_peaks=120, seed=0)
    train, query = adata[:100].copy(), adata[100:].copy()
    SAILER.setup_anndata(train, batch_key="batch")
    model = SAILER(train, n_hidden=32, n_latent=4)
    _quiet_train(model)
    with pytest.raises(InputError, match="another order"):
        model.get_latent_representation(query[:, query.var_names[::-1]].copy())
    assert model.get_latent_representation(query).shape == (60, 4)
    # Peaks named chr:start-end for a model of chr_start_end: the message gives the renaming.
    renamed = query.copy()
    renamed.var_names = renamed.var_names.str.replace(r"_(\d+)_", r":\1-", regex=True)
    for call in (
        model.get_latent_representation,
        lambda a: SAILER.prepare_query_anndata(a, model),
    ):
        with pytest.raises(InputError, match="none of the model's 120 features") as refused:
            call(renamed)
        fix = re.search(r"`adata.var_names = (.+?)`", str(refused.value))[1]
        adata = renamed  # the fix, as a user pastes it
        renamed.var_names = eval(fix)
        assert renamed.var_names.equals(query.var_names)
        renamed.var_names = renamed.var_names.str.replace(r"_(\d+)_", r":\1-", regex=True)


def test_multivae_reordered_modality_is_refused_and_predict_reads_column_major():
    mdata = simulate_multiome(n_cells=160, n_genes=30, n_peaks=60, seed=0)
    MultiVAE.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "atac_layer": "atac"}
    )
    model = MultiVAE(mdata, n_latent=4)
    _quiet_train(model)
    query = mdata[:40].copy()
    reference = model.get_latent_representation(query)
    rna = query.mod["rna"]
    query.mod["rna"] = rna[:, rna.var_names[::-1]].copy()
    with pytest.raises(InputError, match=r"modality 'rna'.*another order") as refusal:
        model.get_latent_representation(query)
    # The message's recipe, with the real modality and class (it printed `mdata.mod[...]`).
    recipe = "`mdata.mod['rna'] = mdata.mod['rna'][:, names].copy(); mdata.update()`"
    assert recipe in str(refusal.value)
    assert "MultiVAE.load(dir).training_var_names['rna']" in str(refusal.value)
    fixed = query.copy()
    names = model.training_var_names["rna"]
    fixed.mod["rna"] = fixed.mod["rna"][:, names].copy()
    fixed.update()
    np.testing.assert_allclose(model.get_latent_representation(fixed), reference, rtol=1e-5)
    with pytest.raises(InputError, match="needs a MuData"):
        model.get_latent_representation(rna.copy())
    # predict matches features by name and reads any memory order.
    atac = mdata.mod["atac"][:40].copy()
    dense = atac.copy()
    dense.X = np.asfortranarray(np.asarray(dense.X.todense()))
    expected = model.predict(atac, source="atac", target="rna").X
    np.testing.assert_allclose(
        model.predict(dense, source="atac", target="rna").X, expected, rtol=1e-5, atol=1e-6
    )
    assert reference.shape == (40, 4)
