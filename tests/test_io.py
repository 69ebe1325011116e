"""Saving and loading (scgexp._io), shared by every model; checked here with ZINBAutoencoder, and
the weights and buffers of a load with other cells with every model."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

from scgexp._io import _decode, _encode, _sha256
from scgexp.data import (
    InputError,
    simulate_bulk_expression,
    simulate_multiome,
    simulate_scatac,
    simulate_scrna,
)
from scgexp.model import DGEX, SAILER, MultiVAE
from scgexp.zinb import ZINBAutoencoder


def _model(seed=0, n_cells=120):
    adata = simulate_scrna(n_cells=n_cells, n_genes=40, n_batches=2, seed=seed)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    return model, adata


class _RunsCode:
    """Unpickling this would create a file: a stand-in for a malicious payload."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_prefix_lets_models_share_a_folder_and_registry_reads_the_safe_files(tmp_path, capsys):
    first, adata = _model(seed=0)
    second, second_adata = _model(seed=1)
    first.save(tmp_path, prefix="first_", save_anndata=True)
    second.save(tmp_path, prefix="second_")
    assert sorted(os.listdir(tmp_path)) == [
        "first_adata.h5ad",
        "first_attributes.json",
        "first_model.pt",
        "second_attributes.json",
        "second_model.pt",
    ]
    for model, data, prefix in ((first, adata, "first_"), (second, second_adata, "second_")):
        loaded = ZINBAutoencoder.load(tmp_path, adata=data.copy(), prefix=prefix)
        np.testing.assert_array_equal(
            loaded.get_latent_representation(), model.get_latent_representation()
        )
    assert ZINBAutoencoder.load(tmp_path, prefix="first_").adata.n_obs == adata.n_obs
    with pytest.raises(FileNotFoundError, match="prefix='first_' or 'second_'"):
        ZINBAutoencoder.load(tmp_path)
    registry = ZINBAutoencoder.load_registry(tmp_path, prefix="second_")
    assert registry["setup_args"]["batch_key"] == "batch"
    ZINBAutoencoder.view_setup_args(tmp_path, prefix="first_")
    assert "batch_key='batch'" in capsys.readouterr().out
    with pytest.raises(InputError, match="does not take save_kwargs"):
        first.save(tmp_path / "other", save_kwargs={"pickle_protocol": 4})
    first.save(tmp_path / "defaults", save_kwargs=None, legacy_mudata_format=False)  # scvi's
    # A model whose parameters differ (saved by another scgexp version) is named as such.
    state = torch.load(tmp_path / "second_model.pt", weights_only=True)
    state["old_buffer"] = torch.zeros(2)
    torch.save(state, tmp_path / "second_model.pt")
    attributes_file = tmp_path / "second_attributes.json"
    attributes = _decode(json.loads(attributes_file.read_text()))
    attributes["model_sha256"] = _sha256(tmp_path / "second_model.pt")  # saved as written
    attributes_file.write_text(json.dumps(_encode(attributes)))
    with pytest.raises(InputError, match=r"saved by another version of scgexp.*old_buffer"):
        ZINBAutoencoder.load(tmp_path, prefix="second_")
    query = adata.copy()
    query.obs["batch"] = query.obs["batch"].cat.rename_categories(["new_0", "new_1"])
    with pytest.raises(InputError, match=r"saved by another version of scgexp.*old_buffer"):
        ZINBAutoencoder.load_query_data(query, str(tmp_path), prefix="second_")
    with pytest.raises(InputError, match="only runs with save_anndata=True"):
        first.save(tmp_path / "other", compression="gzip")


def test_overwrite_refuses_a_data_file_of_an_earlier_model(tmp_path):
    first, _ = _model(seed=0)
    first.save(tmp_path, save_anndata=True)
    second, _ = _model(seed=1, n_cells=90)
    before = sorted(os.listdir(tmp_path))
    # load() would pair the earlier model's 120 cells with this model: refused, nothing written.
    with pytest.raises(ValueError, match=r"adata.h5ad from an earlier save"):
        second.save(tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == before
    assert ZINBAutoencoder.load(tmp_path).adata.n_obs == 120
    second.save(tmp_path, overwrite=True, save_anndata=True)  # replaces the data file
    assert ZINBAutoencoder.load(tmp_path).adata.n_obs == 90


def test_saving_with_data_never_replaces_a_data_file_without_overwrite(tmp_path):
    model, adata = _model(seed=0)
    adata[:7].copy().write_h5ad(tmp_path / "adata.h5ad")  # the user's own file, say
    with pytest.raises(ValueError, match=r"already holds adata\.h5ad\. Pass overwrite=True"):
        model.save(tmp_path, save_anndata=True)
    assert sorted(os.listdir(tmp_path)) == ["adata.h5ad"]
    assert anndata.read_h5ad(tmp_path / "adata.h5ad").n_obs == 7


def test_a_failed_overwrite_leaves_the_earlier_model_whole(tmp_path, monkeypatch):
    first, _ = _model(seed=0)
    first.save(tmp_path, save_anndata=True)
    expected = first.get_latent_representation()
    second, _ = _model(seed=1, n_cells=90)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)  # the weights fail after the attributes
    with pytest.raises(OSError, match="No space left"):
        second.save(tmp_path, overwrite=True, save_anndata=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["adata.h5ad", "attributes.json", "model.pt"]
    loaded = ZINBAutoencoder.load(tmp_path)
    assert loaded.adata.n_obs == 120
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, rtol=1e-5)


def test_saving_backed_data_keeps_its_file(tmp_path):
    adata = simulate_scrna(n_cells=100, n_genes=40, seed=0)
    adata.X = adata.layers["counts"].copy()
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    ZINBAutoencoder.setup_anndata(backed)
    model = ZINBAutoencoder(backed, n_hidden=16, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "model", save_anndata=True)
    assert backed.filename == tmp_path / "cells.h5ad"  # not the save's temporary file
    backed.file.close()
    backed.file.open()
    assert ZINBAutoencoder.load(tmp_path / "model").adata.n_obs == 100


def test_damaged_folders_give_clear_errors(tmp_path):
    model, adata = _model()
    model.save(tmp_path)
    model_file, attributes_file = tmp_path / "model.pt", tmp_path / "attributes.json"
    weights, attributes = model_file.read_bytes(), attributes_file.read_text()

    attributes_file.write_text(attributes[: len(attributes) // 2])
    with pytest.raises(InputError, match=r"damaged scgexp model.*attributes.json"):
        ZINBAutoencoder.load(tmp_path)
    attributes_file.write_text(attributes)

    model_file.write_bytes(b"")
    with pytest.raises(InputError, match=r"damaged scgexp model.*model.pt: empty file"):
        ZINBAutoencoder.load(tmp_path)
    model_file.write_bytes(weights[: len(weights) // 2])
    with pytest.raises(InputError, match=r"damaged scgexp model.*model.pt"):
        ZINBAutoencoder.load(tmp_path)
    corrupted = bytearray(weights)
    corrupted[len(weights) // 2 : len(weights) // 2 + 64] = bytes(64)  # zeroed on a bad disk
    model_file.write_bytes(bytes(corrupted))
    with pytest.raises(InputError, match=r"damaged scgexp model.*model.pt differs from the one"):
        ZINBAutoencoder.load(tmp_path)
    torch.save(torch.zeros(3), model_file)  # a torch file, but not a model's weights
    with pytest.raises(InputError, match=r"damaged scgexp model.*model.pt holds no weights"):
        ZINBAutoencoder.load(tmp_path)
    model_file.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(InputError, match=r"model.pt is not a saved torch file"):
        ZINBAutoencoder.load(tmp_path)
    model_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"model.pt is missing"):
        ZINBAutoencoder.load(tmp_path)

    # A pickled object is refused without running it, and the message names no unsafe way round.
    marker = tmp_path / "payload_ran"
    torch.save({"weights": _RunsCode(str(marker))}, model_file)
    with pytest.raises(InputError, match="more than tensors") as error:
        ZINBAutoencoder.load(tmp_path)
    assert not marker.exists()
    assert "weights_only=False" not in str(error.value)

    model_file.write_bytes(weights)
    (tmp_path / "mdata.h5mu").write_bytes(b"")
    adata.write(tmp_path / "adata.h5ad")
    with pytest.raises(InputError, match=r"both adata.h5ad and mdata.h5mu"):
        ZINBAutoencoder.load(tmp_path)
    loaded = ZINBAutoencoder.load(tmp_path, adata=adata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def test_model_loaded_without_data_cannot_train_nor_adopts_new_data(tmp_path):
    model, _ = _model()
    model.save(tmp_path)
    with pytest.raises(InputError, match="loaded without data and cannot train"):
        ZINBAutoencoder.load(tmp_path).train(max_epochs=1)
    # ... nor after it was given new data once (scvi-tools alone adopts them as its own)
    bare = ZINBAutoencoder.load(tmp_path)
    query = simulate_scrna(n_cells=30, n_genes=40, n_batches=2, seed=5)
    np.testing.assert_array_equal(
        bare.get_latent_representation(query), model.get_latent_representation(query.copy())
    )
    assert bare.adata is None
    with pytest.raises(InputError, match="loaded without data and cannot train"):
        bare.train(max_epochs=1)
    with pytest.raises(InputError, match="loaded without data; pass adata="):
        bare.get_latent_representation()
    np.testing.assert_array_equal(  # a copy of data given before is set up afresh
        bare.get_latent_representation(query.copy()), model.get_latent_representation(query)
    )
    other = simulate_scrna(n_cells=20, n_genes=40, n_batches=2, seed=6)
    assert bare.get_latent_representation(other).shape == (20, 4)


def test_registered_data_changed_after_setup_is_refused(tmp_path):
    model, adata = _model()
    expected = model.get_normalized_expression(return_numpy=True)
    # Genes reordered in place: scvi-tools would read them by position under the new names.
    adata._inplace_subset_var(adata.var_names[::-1])
    with pytest.raises(InputError, match="registered with this model changed after setup"):
        model.get_normalized_expression()
    with pytest.raises(InputError, match="changed after setup"):
        model.save(tmp_path, save_anndata=True)
    with pytest.raises(InputError, match="changed after setup"):
        model.train(max_epochs=1)
    assert not (tmp_path / "adata.h5ad").exists()
    # The same genes passed as a query in the model's order give the original values.
    query = adata[:, adata.var_names[::-1]].copy()
    np.testing.assert_allclose(
        model.get_normalized_expression(query, return_numpy=True), expected, rtol=1e-5
    )


def test_nan_written_into_dgex_data_after_setup_is_refused():
    # Not counts, so the counts check skipped it: training blamed the learning rate.
    from scgexp.data import simulate_bulk_expression
    from scgexp.model import DGEX

    bulk = simulate_bulk_expression(n_samples=100, n_landmarks=10, n_targets=20, seed=0)
    DGEX.setup_anndata(bulk)
    model = DGEX(bulk, n_hidden=16)
    bulk.X[3, 5] = np.inf
    with pytest.raises(InputError, match=r"X of the data registered .* NaN or infinite"):
        model.train(max_epochs=1, enable_progress_bar=False)


def test_renamed_categories_are_named_with_the_way_back():
    model, adata = _model()
    expected = model.get_normalized_expression(return_numpy=True)
    adata.obs["batch"] = adata.obs["batch"].cat.rename_categories(["Donor A", "Donor B"])
    # The general advice (pass a copy) would fail on the new names: say how to rename back.
    mapping = "{'Donor A': 'batch_0', 'Donor B': 'batch_1'}"
    with pytest.raises(InputError, match=re.escape(f".map({mapping})")) as refusal:
        model.get_normalized_expression()
    assert "'batch_0' → 'Donor A', 'batch_1' → 'Donor B'" in str(refusal.value)
    adata.obs["batch"] = adata.obs["batch"].map(
        {"Donor A": "batch_0", "Donor B": "batch_1"}
    )  # as the message says
    np.testing.assert_array_equal(model.get_normalized_expression(return_numpy=True), expected)
    # One category renamed: only that one is shown, the line maps both.
    adata.obs["batch"] = adata.obs["batch"].cat.rename_categories(["batch_0", "Donor B"])
    with pytest.raises(InputError, match="'batch_1' → 'Donor B'\\)") as refusal:
        model.get_normalized_expression()
    assert "'batch_0' →" not in str(refusal.value)
    adata.obs["batch"] = adata.obs["batch"].cat.rename_categories(["batch_0", "batch_1"])
    # Not renamings, and the usual refusal: a category split in two, a missing label, and cells
    # relabelled to a known category.
    split = adata.obs["batch"].astype(str).to_numpy(copy=True)
    split[np.flatnonzero(split == "batch_0")[::2]] = "A"
    split[split == "batch_0"] = "B"
    missing = adata.obs["batch"].astype(object).to_numpy(copy=True)
    missing[0] = np.nan
    for labels in (split, missing, "batch_0"):
        adata.obs["batch"] = labels
        with pytest.raises(InputError, match="changed after setup") as refusal:
            model.get_normalized_expression()
        assert "renamed" not in str(refusal.value)


def test_renamed_categories_of_a_modality_and_known_labels_of_another_type():
    from scgexp.data import simulate_multiome
    from scgexp.model import MultiVAE

    mdata = simulate_multiome(n_cells=60, n_genes=20, n_peaks=30, seed=0)
    modalities = {"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"}
    MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=modalities)
    model = MultiVAE(mdata, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, enable_progress_bar=False)
    expected = model.get_latent_representation()
    rna = mdata.mod["rna"]
    rna.obs["batch"] = rna.obs["batch"].astype(str).map({"batch_0": "A", "batch_1": "B"})
    column = "mdata.mod['rna'].obs['batch']"  # where the model reads it, not mdata.obs
    with pytest.raises(InputError, match=re.escape(f"`{column} = {column}.map(")):
        model.get_latent_representation()
    rna.obs["batch"] = rna.obs["batch"].map({"A": "batch_0", "B": "batch_1"})
    np.testing.assert_array_equal(model.get_latent_representation(), expected)

    # A query whose covariate holds the known integers as floats, then its batches swapped in
    # place: re-encoded as before, not taken for a renaming of the covariate.
    adata = simulate_scrna(n_cells=80, n_genes=30, seed=0)
    adata.obs["level"] = np.where(np.arange(80) % 2, 1, 2)
    ZINBAutoencoder.setup_anndata(
        adata, layer="counts", batch_key="batch", categorical_covariate_keys=["level"]
    )
    zinb = ZINBAutoencoder(adata, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zinb.train(max_epochs=1, enable_progress_bar=False)
    query = simulate_scrna(n_cells=40, n_genes=30, seed=2)
    query.var_names = adata.var_names
    query.obs["level"] = np.where(np.arange(40) % 2, 1.0, 2.0)
    zinb.get_latent_representation(query)
    query.obs["batch"] = (
        query.obs["batch"].astype(str).map({"batch_0": "batch_1", "batch_1": "batch_0"})
    )
    np.testing.assert_array_equal(
        zinb.get_normalized_expression(query, return_numpy=True),
        zinb.get_normalized_expression(query.copy(), return_numpy=True),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    adata = simulate_scrna(n_cells=120, n_genes=40, n_batches=2, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=16, n_latent=np.int64(4))  # e.g. from a grid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, enable_progress_bar=False)
    folder = tmp_path_factory.mktemp("zinb")
    model.save(folder, prefix="a_")
    return model, adata, folder


def test_loaded_attributes_keep_dtypes_history_and_numpy_integers(saved):
    """io02 (dtype inferred), io04 (numpy scalar -> float), io07 (history_ not saved)."""
    model, adata, folder = saved
    loaded = ZINBAutoencoder.load(folder, prefix="a_")
    for name in ("train_indices_", "validation_indices_", "test_indices_"):
        assert getattr(loaded, name).dtype == getattr(model, name).dtype, name
    adata[loaded.test_indices_]  # an empty int64 array indexes; an empty float64 one would not
    assert loaded.history_.keys() == model.history_.keys()
    for key, frame in model.history_.items():
        pd.testing.assert_frame_equal(loaded.history_[key], frame, check_dtype=False)
    assert type(loaded.init_params_["non_kwargs"]["n_latent"]) is int
    back = _decode(_encode({"f32": np.array([0.1, 2.5], np.float32), "i": np.int64(3)}))
    assert back["f32"].dtype == np.float32
    assert type(back["i"]) is int


def test_save_with_the_same_prefix_needs_overwrite(saved):
    """io18: the overwrite check must look at the prefixed model file."""
    model, _, folder = saved
    with pytest.raises(ValueError, match="already holds a saved model"):
        model.save(folder, prefix="a_")


def test_save_into_a_file_says_a_folder_is_needed(saved, tmp_path):
    model, _, _ = saved
    (tmp_path / "afile").write_text("the user's")
    with pytest.raises(InputError, match="afile is a file; save into a folder"):
        model.save(tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "the user's"


def test_load_with_the_wrong_class_names_the_right_one(saved):
    """io13: a ZINBAutoencoder folder loaded as SAILER."""
    _, _, folder = saved
    with pytest.raises(ValueError, match=r"holds a ZINBAutoencoder model.*ZINBAutoencoder.load"):
        SAILER.load(folder, prefix="a_")


def test_a_zip_that_is_not_a_torch_file_is_named_damaged(saved, tmp_path):
    """io10: torch raises RuntimeError for a zip without a torch archive in it."""
    model, _, _ = saved
    model.save(tmp_path)
    (tmp_path / "model.pt").unlink()
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:
        archive.writestr("readme.txt", "not weights")
    with pytest.raises(InputError, match=r"damaged scgexp model.*model.pt"):
        ZINBAutoencoder.load(tmp_path)


def test_damaged_registry_or_data_file_gives_clear_errors(saved, tmp_path):
    model, _, _ = saved
    model.save(tmp_path, save_anndata=True)
    data_file = tmp_path / "adata.h5ad"
    data_file.write_bytes(data_file.read_bytes()[:2000])  # an interrupted copy
    with pytest.raises(InputError, match=r"damaged scgexp model.*adata\.h5ad"):
        ZINBAutoencoder.load(tmp_path)
    data_file.unlink()
    attributes = _decode(json.loads((tmp_path / "attributes.json").read_text()))
    del attributes["attr_dict"]["registry_"]
    (tmp_path / "attributes.json").write_text(json.dumps(_encode(attributes)))
    with pytest.raises(
        InputError, match=r"damaged scgexp model.*attributes\.json has no registry"
    ):
        ZINBAutoencoder.load(tmp_path)


def test_scvi_tools_loading_extras_are_refused_by_name(saved, tmp_path, capsys):
    """A model loaded without data shows its saved setup; no route unpickles."""
    model, _, folder = saved
    bare = ZINBAutoencoder.load(folder, prefix="a_")
    bare.view_anndata_setup()
    shown = capsys.readouterr().out
    assert "loaded without data" in shown
    assert "'batch_key': 'batch'" in shown
    assert "n_vars: 40" in shown
    model.view_anndata_setup()  # with data: scvi-tools' own summary
    with pytest.raises(InputError, match=r"backup_url.*Download the folder first"):
        ZINBAutoencoder.load(folder, prefix="a_", backup_url="https://example.org/model.pt")
    with pytest.raises(InputError, match=r"backup_url.*Download the folder first"):
        MultiVAE.load(folder, prefix="a_", backup_url="https://example.org/model.pt")
    with pytest.raises(FileNotFoundError, match="local folder: download it first"):
        ZINBAutoencoder.load("https://example.org/model")
    legacy = tmp_path / "legacy"  # scvi-tools' converter would unpickle what it finds here
    legacy.mkdir()
    with open(legacy / "attr.pkl", "wb") as file:
        pickle.dump({"note": "pickled"}, file)
    with pytest.raises(InputError, match="no legacy save format to convert"):
        ZINBAutoencoder.convert_legacy_save(legacy, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def _setup_and_train(cls, data, setup, **model_kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peaks closed in every simulated cell
        getattr(cls, "setup_mudata" if cls is MultiVAE else "setup_anndata")(data, **setup)
        model = cls(data, **model_kwargs)
        model.train(max_epochs=2, enable_progress_bar=False)
    return model


def _zinb(seed):
    return simulate_scrna(n_cells=100, n_genes=40, n_batches=2, seed=seed)


def _sailer(seed):
    adata = simulate_scatac(n_cells=100, n_peaks=200, seed=seed)
    adata.obs["tss"] = np.random.default_rng(seed).normal(5.0, 1.0, adata.n_obs)
    return adata


def _dgex(seed):
    profiles = simulate_bulk_expression(n_samples=100, n_landmarks=10, n_targets=30, seed=0)
    return profiles[:80].copy() if seed == 0 else profiles[80:].copy()


def _multivae(seed):
    return simulate_multiome(n_cells=100, n_genes=30, n_peaks=100, n_proteins=6, seed=seed)


ROUND_TRIPS = {
    "zinb": (ZINBAutoencoder, _zinb, {"layer": "counts", "batch_key": "batch"}, {}),
    "dgex": (DGEX, _dgex, {}, {"n_hidden": 16, "loss": "gaussian"}),
    "sailer_poisson": (
        SAILER,
        _sailer,
        {"batch_key": "batch", "continuous_covariate_keys": ["tss"]},
        {"likelihood": "poisson", "invariance": "both"},
    ),
    "multivae": (
        MultiVAE,
        _multivae,
        {
            "batch_key": "batch",
            "modalities": {"rna_layer": "rna", "atac_layer": "atac", "protein_layer": "prot"},
        },
        {"invariance": "both"},
    ),
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_every_parameter_and_buffer_survives_a_load_with_other_cells(name, tmp_path):
    """Loading onto query cells keeps the training statistics (depth, size-factor, gene
    standardisation) the module holds as buffers, persistent or not, and every weight."""
    cls, make, setup, model_kwargs = ROUND_TRIPS[name]
    model = _setup_and_train(cls, make(0), setup, **model_kwargs)
    model.save(tmp_path / "model")
    query = make(1)
    loaded = cls.load(tmp_path / "model", query)
    assert loaded.adata is query
    assert not any(m.training for m in loaded.module.modules())  # dropout off, as scvi-tools

    def tensors(module):
        return dict(module.named_parameters()) | dict(module.named_buffers())

    expected, got = tensors(model.module), tensors(loaded.module)
    assert got.keys() == expected.keys()
    changed = [key for key in expected if not torch.equal(got[key].cpu(), expected[key].cpu())]
    assert not changed, changed


def test_categories_from_pd_cut_save_and_load_and_unsavable_ones_are_refused_at_setup(tmp_path):
    """A covariate binned with pd.cut (Interval categories) trained, then failed at save()."""
    adata = simulate_scrna(n_cells=100, n_genes=30, n_batches=2, seed=0)
    ages = np.random.default_rng(0).uniform(20, 80, adata.n_obs)
    adata.obs["age"] = pd.cut(ages, [0, 40, 60, 100])
    model = _setup_and_train(
        ZINBAutoencoder,
        adata,
        {"layer": "counts", "batch_key": "batch", "categorical_covariate_keys": ["age"]},
    )
    model.save(tmp_path / "model")
    query = adata[:40].copy()  # its categories listed in another order: matched by value
    query.obs["age"] = query.obs["age"].cat.reorder_categories(
        query.obs["age"].cat.categories[::-1]
    )
    loaded = ZINBAutoencoder.load(tmp_path / "model", adata=query)
    np.testing.assert_array_equal(
        loaded.get_normalized_expression(return_numpy=True),
        model.get_normalized_expression(adata[:40].copy(), return_numpy=True),
    )

    periods = pd.period_range("2020-01", periods=2, freq="M")
    adata.obs["month"] = periods[np.arange(adata.n_obs) % 2]
    with pytest.raises(InputError, match=re.escape("obs['month'] = obs['month'].astype(str)")):
        ZINBAutoencoder.setup_anndata(adata, layer="counts", categorical_covariate_keys=["month"])


@pytest.mark.parametrize("kind", ["anndata", "mudata"])
def test_a_view_given_to_a_getter_stays_a_view(kind):
    """scvi-tools turns a view into a copy in place; the caller's object must stay as it was."""
    if kind == "anndata":
        model = _setup_and_train(
            ZINBAutoencoder, _zinb(0), {"layer": "counts", "batch_key": "batch"}
        )
        parent = _zinb(1)
        parent.var_names = model.adata.var_names
    else:
        model = _setup_and_train(MultiVAE, _multivae(0), ROUND_TRIPS["multivae"][2])
        parent = _multivae(1)
    view = parent[:30]
    latent = model.get_latent_representation(view)
    assert view.is_view
    assert "_scvi_uuid" not in view.uns
    assert "_scvi_batch" not in view.obs
    np.testing.assert_allclose(latent, model.get_latent_representation(parent[:30].copy()))
