from __future__ import annotations

import dataclasses
import os
import shutil
import warnings
from pathlib import Path

import anndata as ad
import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import scgexp
from scgexp.cli import main
from scgexp.cli._specs import MODELS
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder


@pytest.fixture
def bulk_file(tmp_path):
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=200, n_landmarks=20, n_targets=60, n_programs=5, seed=0
    )
    path = tmp_path / "bulk.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture
def counts_file(tmp_path):
    path = tmp_path / "counts.h5ad"
    scgexp.data.simulate_scrna(n_cells=150, n_genes=60, seed=0).write_h5ad(path)
    return path


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_fit_and_predict_dgex(bulk_file, tmp_path):
    import scanpy as sc

    with_graph = ad.read_h5ad(bulk_file)
    sc.pp.neighbors(with_graph, n_neighbors=5, use_rep="X")
    with_graph.write_h5ad(bulk_file)
    out = tmp_path / "fitted.h5ad"
    result = _invoke("fit", "dgex", bulk_file, "--out", out, "--epochs", "2")
    assert result.exit_code == 0, result.output
    fitted = ad.read_h5ad(out)
    # The same samples: their neighbour graph comes along, so scanpy can use it.
    assert (fitted.obsp["connectivities"] != with_graph.obsp["connectivities"]).nnz == 0
    sc.tl.umap(fitted, maxiter=5)
    assert fitted.obsm["X_dgex"].shape[0] == 200
    assert fitted.var["landmark"].sum() == 20
    assert not [key for key in fitted.uns if key.startswith("_scvi")]  # a new AnnData
    # The saved model's own predictions and their std: the targets' columns.
    model_dir = tmp_path / "fitted_dgex_model"
    targets = ~fitted.var["landmark"].to_numpy()
    own = DGEX.load(model_dir).predict(ad.read_h5ad(bulk_file), return_std=True)
    np.testing.assert_allclose(fitted.X[:, targets], own.X, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.layers["dgex_std"][:, targets], own.layers["std"], rtol=1e-4)

    # New data with only the landmark genes, in another order: the whole transcriptome comes back.
    new = ad.read_h5ad(bulk_file)
    new = new[:50, new.var["landmark"].to_numpy()][:, ::-1].copy()
    new_path = tmp_path / "landmarks_only.h5ad"
    new.write_h5ad(new_path)
    predicted_path = tmp_path / "predicted.h5ad"
    result = _invoke("predict", model_dir, new_path, "--out", predicted_path)
    assert result.exit_code == 0, result.output
    predicted = ad.read_h5ad(predicted_path)
    assert predicted.shape == (50, 80)
    np.testing.assert_allclose(predicted.X, fitted.X[:50], rtol=1e-4, atol=1e-4)

    # A landmark missing: refused by name, or filled with its training mean on request.
    missing = new.var_names[0]
    new[:, 1:].copy().write_h5ad(new_path)
    result = _invoke("predict", model_dir, new_path, "--out", predicted_path, "--overwrite")
    assert result.exit_code != 0
    assert missing in result.output
    result = _invoke(
        "predict", model_dir, new_path, "--out", predicted_path, "--fill-missing", "--overwrite"
    )
    assert result.exit_code == 0, result.output
    filled = ad.read_h5ad(predicted_path)
    assert filled.var_names[filled.var["filled"]].tolist() == [missing]
    assert list(filled.uns["dgex"]["filled_landmarks"]) == [missing]
    assert filled.uns["dgex"]["n_landmarks"] == 20
    assert np.isfinite(filled.X).all()
    assert np.ptp(filled[:, missing].X) == 0
    model = DGEX.load(model_dir)
    training_std = model.module.landmark_scale[model.landmark_names.get_loc(missing)].item()
    np.testing.assert_allclose(filled[:, missing].layers["dgex_std"], training_std, rtol=1e-6)
    assert (
        filled[:, filled.var["landmark"] & ~filled.var["filled"]].layers["dgex_std"] == 0
    ).all()

    # Another platform (a monotone distortion): with --rank-map every column of X, landmarks
    # included, is in the training units, as the targets are.
    shifted = new.copy()
    shifted.X = shifted.X * 3 + 10
    shifted.write_h5ad(new_path)
    result = _invoke(
        "predict", "--rank-map", model_dir, new_path, "--out", predicted_path, "--overwrite"
    )
    assert result.exit_code == 0, result.output
    mapped = ad.read_h5ad(predicted_path)
    assert mapped.uns["dgex"]["rank_map"] == "gene"
    landmarks = mapped.var["landmark"].to_numpy()
    training = fitted[:, landmarks].X
    assert abs(mapped[:, landmarks].X.mean() - training.mean()) < 0.2 * training.std()
    result = _invoke(
        "predict",
        model_dir,
        new_path,
        "--out",
        predicted_path,
        "--overwrite",
        "--rank-map-sample",
    )
    assert result.exit_code == 0, result.output
    per_sample = ad.read_h5ad(predicted_path)
    assert per_sample.uns["dgex"]["rank_map"] == "sample"
    assert abs(per_sample[:, landmarks].X.mean() - training.mean()) < 0.2 * training.std()


def test_fit_and_predict_sailer(tmp_path):
    path = tmp_path / "atac.h5ad"
    scgexp.data.simulate_scatac(n_cells=200, n_peaks=150, seed=0).write_h5ad(path)
    out, model_dir = tmp_path / "sailer.h5ad", tmp_path / "sailer_model"
    args = ("--batch-key", "batch", "--model-dir", model_dir, "--epochs", "2")
    result = _invoke("fit", "sailer", path, "--out", out, "--data-mode", "standard", *args)
    assert result.exit_code == 0, result.output
    fitted = ad.read_h5ad(out)
    assert fitted.obsm["X_sailer"].shape == (200, 10)
    assert set(fitted.uns["sailer"]["confounder_information_nats"]) == {
        "log_open_peaks",
        "batch",
    }
    result = _invoke("predict", model_dir, path, "--out", tmp_path / "again.h5ad")
    assert result.exit_code == 0, result.output
    again = ad.read_h5ad(tmp_path / "again.h5ad")
    np.testing.assert_allclose(again.obsm["X_sailer"], fitted.obsm["X_sailer"], rtol=1e-5)
    refused = tmp_path / "refused.h5ad"  # a DGEX-only option is refused, not ignored
    result = CliRunner().invoke(
        main, ["predict", str(model_dir), str(path), "--out", str(refused), "--rank-map"]
    )
    assert result.exit_code != 0
    assert "--rank-map and --rank-map-sample apply to DGEX models only" in result.output
    result = CliRunner().invoke(
        main, ["predict", str(model_dir), str(path), "--out", str(refused), "--layer", "counts"]
    )
    assert "--layer applies to DGEX models only; a SAILER reads the layer it" in result.output
    assert not refused.exists()


def test_fit_and_predict_multivae(tmp_path):
    import mudata

    path = tmp_path / "multiome.h5mu"
    scgexp.data.simulate_multiome(n_cells=150, n_genes=40, n_peaks=80, seed=0).write(path)
    out, model_dir = tmp_path / "joint.h5mu", tmp_path / "multivae_model"
    result = _invoke(
        "fit", "multivae", path, "--out", out, "--model-dir", model_dir, "--epochs", "2"
    )
    assert result.exit_code == 0, result.output
    fitted = mudata.read_h5mu(out)
    assert fitted.obsm["X_multivae"].shape == (150, 20)
    assert fitted.obsm["X_multivae_atac"].shape == (150, 20)
    assert fitted["rna"].layers["multivae_normalized"].shape == (150, 40)
    assert fitted["atac"].layers["multivae_accessibility"].shape == (150, 80)
    # The saved model's own outputs: each modality's latent from its expert alone.
    model = MultiVAE.load(model_dir, mdata=mudata.read_h5mu(path))
    for key, modality in (
        ("X_multivae", None),
        ("X_multivae_rna", "rna"),
        ("X_multivae_atac", "atac"),
    ):
        own = model.get_latent_representation(modality=modality)
        np.testing.assert_allclose(fitted.obsm[key], own, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fitted.obsm["X_multivae_atac"], fitted.obsm["X_multivae"])
    np.testing.assert_allclose(  # expression per 10k counts, as scanpy normalises
        fitted["rna"].layers["multivae_normalized"],
        model.get_normalized_expression(library_size=1e4, return_numpy=True),
        rtol=1e-5,
    )
    np.testing.assert_allclose(fitted["rna"].layers["multivae_normalized"].sum(1), 1e4, rtol=1e-4)
    result = _invoke("predict", model_dir, path, "--out", tmp_path / "again.h5mu")
    assert result.exit_code == 0, result.output
    again = mudata.read_h5mu(tmp_path / "again.h5mu")
    np.testing.assert_allclose(again.obsm["X_multivae"], fitted.obsm["X_multivae"], rtol=1e-5)
    lean = tmp_path / "lean.h5mu"
    assert _invoke("predict", model_dir, path, "--out", lean, "--latent-only").exit_code == 0
    lean_data = mudata.read_h5mu(lean)
    assert not [k for mod in lean_data.mod.values() for k in mod.layers if k and "multivae" in k]
    np.testing.assert_allclose(lean_data.obsm["X_multivae_rna"], fitted.obsm["X_multivae_rna"])
    # Modalities under other names: renaming is the fix, not --fill-missing.
    data = mudata.read_h5mu(path)
    mudata.MuData({"GeneExpr": data["rna"], "Peaks": data["atac"]}).write(tmp_path / "x.h5mu")
    for extra in ((), ("--fill-missing",)):
        result = _invoke(
            "predict", model_dir, tmp_path / "x.h5mu", "--out", tmp_path / "y.h5mu", *extra
        )
        assert result.exit_code == 1
        assert 'rename them: `mdata.mod["rna"] = mdata.mod.pop(' in result.output
        assert "is `--fill-missing`" not in result.output
    renamed = mudata.read_h5mu(tmp_path / "x.h5mu")  # as the message says
    renamed.mod["rna"] = renamed.mod.pop("GeneExpr")
    renamed.mod["atac"] = renamed.mod.pop("Peaks")
    renamed.update()
    renamed.write(tmp_path / "renamed.h5mu")
    result = _invoke("predict", model_dir, tmp_path / "renamed.h5mu", "--out", tmp_path / "r.h5mu")
    assert result.exit_code == 0, result.output
    # An AnnData is refused for MultiVAE, and a modality that does not exist is named.
    result = CliRunner().invoke(
        main,
        [
            "fit",
            "multivae",
            str(path).replace(".h5mu", ".h5ad"),
            "--out",
            str(tmp_path / "x.h5ad"),
        ],
    )
    assert result.exit_code == 1
    assert "takes MuData" in result.output
    result = CliRunner().invoke(
        main,
        [
            "fit",
            "multivae",
            str(path),
            "--out",
            str(out),
            "--atac-mod",
            "chromatin",
            "--overwrite",
        ],
    )
    assert result.exit_code == 1
    assert "no modality 'chromatin'" in result.output


def test_map_rna_only_cells_onto_a_multiome_model(tmp_path, monkeypatch):
    import mudata

    data = scgexp.data.simulate_multiome(n_cells=300, n_genes=40, n_peaks=80, n_batches=3)
    new = (data.obs["batch"] == "batch_2").to_numpy()
    data[~new].copy().write(tmp_path / "reference.h5mu")
    rna_only = mudata.MuData({"rna": data[new]["rna"].copy()})  # the usual file: no ATAC at all
    rna_only.obs["batch"] = "batch_2"
    rna_only.write(tmp_path / "query.h5mu")
    model_dir = tmp_path / "model"
    fit = ["fit", "multivae", tmp_path / "reference.h5mu", "--out", tmp_path / "r.h5mu"]
    result = _invoke(*fit, "--model-dir", model_dir, "--batch-key", "batch", "--epochs", 2)
    assert result.exit_code == 0, result.output
    output = tmp_path / "q.h5mu"
    result = _invoke("map", model_dir, tmp_path / "query.h5mu", "--out", output, "--epochs", 2)
    assert result.exit_code == 1
    assert "no modality 'atac'" in result.output
    assert "prepare_query_mudata is `--fill-missing`" in result.output

    def not_for_added(*args, **kwargs):
        raise AssertionError("the added modality's layer is left out, so not computed")

    monkeypatch.setattr(MultiVAE, "get_normalized_accessibility", not_for_added)
    with pytest.warns(UserWarning, match="no modality 'atac'"):
        result = _invoke(
            "map",
            model_dir,
            tmp_path / "query.h5mu",
            "--out",
            output,
            "--epochs",
            2,
            "--fill-missing",
        )
    assert result.exit_code == 0, result.output
    mapped = mudata.read_h5mu(output)
    assert mapped.obsm["X_multivae"].shape == (new.sum(), 20)
    assert mapped.mod.keys() == {"rna"}  # the added all-zero ATAC is not written as data
    assert set(mapped.obsm) == {"rna", "X_multivae", "X_multivae_rna"}  # no mask for ATAC
    assert set(mapped.varm) == {"rna"}
    assert "X_multivae_atac" not in mapped.obsm
    assert mapped.uns["multivae"]["modalities"] == {"rna_layer": "rna"}
    assert mapped["rna"].layers["multivae_normalized"].shape == (new.sum(), 40)
    assert mapped.obs.columns.equals(rna_only.obs.columns)
    rna_only.obs["batch"] = "batch_0"  # a known batch: predict, as map, leaves out the ATAC
    rna_only.write(tmp_path / "known.h5mu")
    predicted = tmp_path / "p.h5mu"
    result = _invoke(
        "predict", model_dir, tmp_path / "known.h5mu", "--out", predicted, "--fill-missing"
    )
    assert result.exit_code == 0, result.output
    predicted = mudata.read_h5mu(predicted)
    assert predicted.mod.keys() == {"rna"}
    assert "atac" not in predicted.obsm
    for adata in (mapped, *mapped.mod.values(), mudata.read_h5mu(tmp_path / "r.h5mu")):
        assert "_scvi_batch" not in adata.obs  # scvi-tools' setup bookkeeping
        assert "_scvi_uuid" not in adata.uns


def test_fit_and_predict_zinb(counts_file, tmp_path):
    out = tmp_path / "denoised.h5ad"
    model_dir = tmp_path / "zinb_model"
    result = _invoke(
        "fit",
        "zinb",
        counts_file,
        "--out",
        out,
        "--batch-key",
        "batch",
        "--model-dir",
        model_dir,
        "--epochs",
        "2",
    )
    assert result.exit_code == 0, result.output
    fitted = ad.read_h5ad(out)
    assert fitted.obsm["X_zinb"].shape == (150, 32)
    # The saved model's own denoised counts (at each cell's library size).
    model = ZINBAutoencoder.load(model_dir, adata=ad.read_h5ad(counts_file))
    np.testing.assert_allclose(
        fitted.layers["zinb_denoised"],
        model.get_normalized_expression(return_numpy=True),
        rtol=1e-5,
    )
    result = _invoke("predict", model_dir, counts_file, "--out", tmp_path / "again.h5ad")
    assert result.exit_code == 0, result.output
    again = ad.read_h5ad(tmp_path / "again.h5ad")
    np.testing.assert_allclose(again.obsm["X_zinb"], fitted.obsm["X_zinb"], rtol=1e-5)
    upper = tmp_path / "COUNTS.H5AD"  # suffixes in capitals, as some systems write them
    shutil.copy(counts_file, upper)
    result = _invoke("predict", model_dir, upper, "--out", tmp_path / "AGAIN.H5AD")
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(tmp_path / "AGAIN.H5AD").obsm["X_zinb"].shape == (150, 32)
    # --latent-only leaves out the dense cells x genes layer.
    lean = tmp_path / "lean.h5ad"
    result = _invoke("predict", model_dir, counts_file, "--out", lean, "--latent-only")
    assert result.exit_code == 0, result.output
    lean_data = ad.read_h5ad(lean)
    assert "zinb_denoised" not in lean_data.layers
    np.testing.assert_allclose(lean_data.obsm["X_zinb"], fitted.obsm["X_zinb"], rtol=1e-5)
    # On an earlier run's output, the layer it leaves is named as not this run's.
    with pytest.warns(UserWarning, match=r"layers\['zinb_denoised'\] from an earlier run"):
        result = _invoke("predict", model_dir, out, "--out", lean, "--latent-only", "--overwrite")
    assert result.exit_code == 0, result.output


def _zinb_reference(tmp_path, n_cells: int, n_genes: int, n_batches: int, epochs: int):
    """A ZINB model fitted by the command line on every batch but the last, and that batch.

    Returns the model folder and the file of the last batch's cells (the query).
    """
    data = scgexp.data.simulate_scrna(
        n_cells=n_cells, n_genes=n_genes, n_batches=n_batches, seed=0
    )
    is_query = (data.obs["batch"] == f"batch_{n_batches - 1}").to_numpy()
    reference = data[~is_query].copy()
    reference.obs["batch"] = reference.obs["batch"].cat.remove_unused_categories()
    reference.write_h5ad(tmp_path / "reference.h5ad")
    query_file = tmp_path / "query.h5ad"
    data[is_query].copy().write_h5ad(query_file)
    reference_dir = tmp_path / "reference_model"
    fit = ["fit", "zinb", tmp_path / "reference.h5ad", "--out", tmp_path / "fitted.h5ad"]
    result = _invoke(
        *fit, "--batch-key", "batch", "--model-dir", reference_dir, "--epochs", epochs
    )
    assert result.exit_code == 0, result.output
    return reference_dir, query_file


def test_outputs_leave_out_scvi_tools_covariate_bookkeeping(tmp_path):
    data = scgexp.data.simulate_scatac(n_cells=150, n_peaks=100, seed=0)
    data.obs["tss"] = np.random.default_rng(0).normal(10, 2, data.n_obs)
    data.obs["kit"] = np.where(np.arange(data.n_obs) % 2, "v1", "v2")
    path = tmp_path / "atac.h5ad"
    data.write_h5ad(path)
    SAILER.setup_anndata(
        data,
        batch_key="batch",
        categorical_covariate_keys=["kit"],
        continuous_covariate_keys=["tss"],
    )
    model = SAILER(data, n_latent=4)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "model")
    data.obs["batch"] = "new"  # for map
    data.write_h5ad(tmp_path / "new.h5ad")
    for command, file, *options in (
        ("predict", path),
        ("map", tmp_path / "new.h5ad", "--epochs", 1),
    ):
        out = tmp_path / f"{command}.h5ad"
        result = _invoke(command, tmp_path / "model", file, "--out", out, *options)
        assert result.exit_code == 0, result.output
        written = ad.read_h5ad(out)
        assert set(written.obsm) == {"X_sailer"}  # not obsm["_scvi_extra_continuous_covs"]
        assert not [c for c in written.obs if c.startswith("_scvi")]


def test_map_trains_a_new_batch_and_leaves_the_reference(tmp_path):
    reference_dir, query_file = _zinb_reference(tmp_path, 240, 50, n_batches=3, epochs=3)
    reference = ad.read_h5ad(tmp_path / "reference.h5ad")
    saved = {path.name: path.read_bytes() for path in reference_dir.iterdir()}

    # predict refuses the new batch and names the command that maps it.
    result = _invoke("predict", reference_dir, query_file, "--out", tmp_path / "p.h5ad")
    assert result.exit_code == 1
    assert "'batch_2'" in result.output
    assert "`scgexp map`" in result.output

    out = tmp_path / "mapped.h5ad"
    result = _invoke("map", reference_dir, query_file, "--out", out, "--epochs", 5)
    assert result.exit_code == 0, result.output
    assert {path.name: path.read_bytes() for path in reference_dir.iterdir()} == saved
    query = ad.read_h5ad(query_file)
    query_model = ZINBAutoencoder.load(tmp_path / "mapped_zinb_query_model", adata=query)
    mapped = ad.read_h5ad(out)
    np.testing.assert_allclose(
        mapped.obsm["X_zinb"], query_model.get_latent_representation(), rtol=1e-5
    )
    assert mapped.layers["zinb_denoised"].shape == query.shape
    # The new batch's decoder columns trained; the reference's weights are as saved.
    reference_model = ZINBAutoencoder.load(reference_dir, adata=reference)
    before = reference_model.module.state_dict()
    changed = []
    for name, value in query_model.module.state_dict().items():
        if value.shape == before[name].shape:
            np.testing.assert_array_equal(value.numpy(), before[name].numpy(), err_msg=name)
        else:
            changed.append(value.abs().sum() > 0)
    assert changed
    assert all(changed)
    # The query model knows batch_2: predict applies it.
    again = tmp_path / "again.h5ad"
    result = _invoke("predict", tmp_path / "mapped_zinb_query_model", query_file, "--out", again)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        ad.read_h5ad(again).obsm["X_zinb"], mapped.obsm["X_zinb"], rtol=1e-5
    )

    # Data without a new batch: nothing to map; the message gives the commands that apply.
    result = _invoke(
        "map", reference_dir, tmp_path / "reference.h5ad", "--out", tmp_path / "r.h5ad"
    )
    assert result.exit_code == 1
    assert "--unfrozen" in result.output
    assert "`scgexp predict`" in result.output
    # The reference's folder is never the query model's.
    result = _invoke(
        "map",
        reference_dir,
        query_file,
        "--out",
        tmp_path / "q.h5ad",
        "--model-dir",
        reference_dir,
        "--overwrite",
    )
    assert result.exit_code == 1
    assert "--model-dir must lie outside REFERENCE_DIR" in result.output
    inside = ("--model-dir", reference_dir / "query"), ("--out", reference_dir / "q.h5ad")
    for flag, path in inside:
        result = _invoke(
            "map", reference_dir, query_file, "--out", tmp_path / "q.h5ad", flag, path
        )
        assert result.exit_code == 1
        assert f"{flag} must lie outside REFERENCE_DIR" in result.output
    # Nor predict's results: load() would take them for the model's data.
    result = _invoke("predict", reference_dir, query_file, "--out", reference_dir / "adata.h5ad")
    assert result.exit_code == 1
    assert "--out must lie outside MODEL_DIR" in result.output
    assert {path.name: path.read_bytes() for path in reference_dir.iterdir()} == saved
    # Genes in another order: refused, with no advice to predict.
    reordered = tmp_path / "reordered.h5ad"
    query[:, ::-1].copy().write_h5ad(reordered)
    result = _invoke("map", reference_dir, reordered, "--out", tmp_path / "o.h5ad")
    assert result.exit_code == 1
    assert "training_var_names" in result.output
    assert "scgexp predict" not in result.output
    assert "prepare_query_anndata is `--fill-missing`" in result.output
    # With --fill-missing: in the model's order, missing genes as zeros; also for predict.
    partial = tmp_path / "partial.h5ad"
    query[:, query.var_names[::-1][:-3]].copy().write_h5ad(partial)
    result = _invoke("map", reference_dir, partial, "--out", tmp_path / "o.h5ad", "--epochs", 2)
    assert result.exit_code == 1
    assert "3 of the model's 50 features are missing" in result.output
    with pytest.warns(UserWarning, match="3 of the model's 50 features are not in the query"):
        result = _invoke(
            "map",
            reference_dir,
            partial,
            "--out",
            tmp_path / "o.h5ad",
            "--fill-missing",
            "--epochs",
            2,
        )
    assert result.exit_code == 0, result.output
    filled = ad.read_h5ad(tmp_path / "o.h5ad")
    assert filled.var_names.equals(reference.var_names)
    assert filled.layers["zinb_denoised"].shape == (query.n_obs, 50)
    assert filled[:, reference.var_names[:3]].layers["counts"].sum() == 0
    np.testing.assert_array_equal(
        filled[:, reference.var_names[3:]].layers["counts"].toarray(),
        query[:, reference.var_names[3:]].layers["counts"].toarray(),
    )
    query_dir = tmp_path / "o_zinb_query_model"
    result = _invoke("predict", query_dir, partial, "--out", tmp_path / "p.h5ad", "--fill-missing")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(
        ad.read_h5ad(tmp_path / "p.h5ad").obsm["X_zinb"], filled.obsm["X_zinb"], rtol=1e-5
    )


def test_dgex_refuses_latent_only_and_map(bulk_file, tmp_path):
    out = tmp_path / "fitted.h5ad"
    result = CliRunner().invoke(
        main, ["fit", "dgex", str(bulk_file), "--out", str(out), "--latent-only"]
    )
    assert result.exit_code == 1
    assert "--latent-only does not apply to dgex" in result.output
    assert _invoke("fit", "dgex", bulk_file, "--out", out, "--epochs", "1").exit_code == 0
    model_dir = tmp_path / "fitted_dgex_model"
    again = ["predict", str(model_dir), str(bulk_file), "--out", str(tmp_path / "p.h5ad")]
    result = CliRunner().invoke(main, [*again, "--latent-only"])
    assert result.exit_code == 1
    assert "--latent-only does not apply to dgex" in result.output
    # DGEX reads no batches: nothing to map.
    result = _invoke("map", model_dir, bulk_file, "--out", tmp_path / "m.h5ad")
    assert result.exit_code == 1
    assert "use `scgexp predict`" in result.output


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "scgexp", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout


def test_help_imports_no_scvi_tools():
    # scvi-tools and torch take about 9 s to import: --help and usage errors need neither.
    import subprocess
    import sys

    code = "import sys; from scgexp.cli import main; print({'scvi', 'torch'} & set(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "set()", result.stderr


def test_every_public_subpackage_loads_on_first_use():
    # A fresh `import scgexp` loads none of them, yet each documented path resolves.
    import subprocess
    import sys

    code = (
        "import sys, scgexp; assert 'scvi' not in sys.modules; "
        "print(scgexp.train.TrainingDivergedError.__name__, scgexp.nn.Invariance.__name__, "
        "scgexp.dataloaders.DataSplitter.__name__, scgexp.sailer.SAILERModule.__name__, "
        "scgexp.dgex.DGEXModule.__name__, scgexp.zinb.ZINBAutoencoderModule.__name__, "
        "scgexp.multivae.MultiVAEModule.__name__, scgexp.model.DGEX.__name__, "
        "'train' in dir(scgexp))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == [
        "TrainingDivergedError", "Invariance", "DataSplitter", "SAILERModule", "DGEXModule",
        "ZINBAutoencoderModule", "MultiVAEModule", "DGEX", "True",
    ], result.stderr  # fmt: skip


def test_fit_log_has_no_library_notices(bulk_file, tmp_path):
    """Lightning's cloud advert and internal deprecation are no news to a pipeline's log."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "scgexp", "fit", "dgex", bulk_file, "--epochs", "1"]
    result = subprocess.run(
        [*map(str, command), "--out", str(tmp_path / "out.h5ad")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout + result.stderr
    assert "Tip:" not in result.stderr
    assert "LeafSpec" not in result.stderr


def test_an_error_after_seeding_is_one_line(bulk_file, tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "scgexp", "fit", "dgex", bulk_file, "--epochs", "1"]
    command += ["--out", tmp_path / "out.h5ad", "--model-arg", "n_hiden=16"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # "Seed set to 0" came first
    assert lines[0].startswith("Error: DGEX has no argument 'n_hiden'; did you mean 'n_hidden'?")


def test_fit_is_seeded(counts_file, tmp_path):
    # Unseeded, two identical runs trained from different random starts.
    latents = []
    for run, seed in enumerate([0, 0, 1]):
        out = tmp_path / f"run{run}.h5ad"
        result = _invoke("fit", "zinb", counts_file, "--out", out, "--epochs", "1", "--seed", seed)
        assert result.exit_code == 0, result.output
        latents.append(ad.read_h5ad(out).obsm["X_zinb"])
    np.testing.assert_array_equal(latents[0], latents[1])
    assert not np.allclose(latents[0], latents[2])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "zinb", "{missing}", "--out", "{out}"], "does not exist"),
        (["fit", "zinb", "{txt}", "--out", "{out}"], "neither .h5ad nor .h5mu"),
        (["fit", "zinb", "{counts}", "--out", "{counts}"], "never overwrites its input"),
        (
            ["fit", "zinb", "{counts}", "--out", "{out}", "--batch-key", "plate"],
            "no column 'plate'",
        ),
        (
            ["fit", "zinb", "{counts}", "--out", "{out}", "--layer", "raw"],
            "layer 'raw' does not exist (layers: 'counts', 'true_mean'). Pass layer= naming an "
            "existing layer. (On the command line, layer= is --layer.)",
        ),
        (["fit", "dgex", "{counts}", "--out", "{out}"], "line, landmark_key= is --landmark-key"),
        (
            [
                "fit",
                "zinb",
                "{counts}",
                "--out",
                "{out}",
                "--landmark-key",
                "lm",
                "--rna-mod",
                "r",
            ],
            "--landmark-key, --rna-mod do not apply to zinb",
        ),
        (
            ["fit", "dgex", "{counts}", "--out", "{out}", "--batch-key", "b"],
            "--batch-key does not apply to dgex",
        ),
        (["predict", "{tmp}", "{counts}", "--out", "{out}"], "holds no saved scgexp model"),
        (["predict", "{missing}", "{counts}", "--out", "{out}"], "does not exist; give the"),
        (["fit", "zinb", "{folder}", "--out", "{out}"], "is a folder; INPUT must be a .h5ad file"),
        (["fit", "zinb", "{counts}", "--out", "{existing}"], "exists; pass --overwrite"),
        (["fit", "zinb", "{mudata}", "--out", "{out_mu}"], "take AnnData (.h5ad)"),
        (["fit", "multivae", "{counts}", "--out", "{out_mu}"], "mudata.MuData({'rna': rna"),
        (["fit", "zinb", "{mudata_as_h5ad}", "--out", "{out}"], "a MuData: for multivae, rename"),
        (["fit", "multivae", "{mudata_as_h5ad}", "--out", "{out_mu}"], "rename it to mudata.h5mu"),
        (["fit", "multivae", "{anndata_as_h5mu}", "--out", "{out_mu}"], "holds an AnnData: for"),
        (["fit", "zinb", "{counts}", "--out", "{txt}/out.h5ad"], "cannot be written to"),
        (
            ["fit", "zinb", "{counts}", "--out", "{tmp}/m/adata.h5ad", "--model-dir", "{tmp}/m"],
            "--out must lie outside the model folder",
        ),
        (["fit", "zinb", "{counts}", "--out", "{link}"], "never overwrites its input"),
        (
            ["fit", "zinb", "{counts}", "--out", "{out}", "--batch-key", "library"],
            "holds continuous values",
        ),
    ],
)
def test_errors_are_one_line_and_leave_input_untouched(counts_file, tmp_path, args, message):
    import mudata

    (tmp_path / "table.txt").write_text("not data")
    names = {
        "missing": tmp_path / "nope.h5ad",
        "out": tmp_path / "out.h5ad",
        "counts": counts_file,
        "txt": tmp_path / "table.txt",
        "tmp": tmp_path,
        "mudata": tmp_path / "x.h5mu",
        "out_mu": tmp_path / "out.h5mu",
        "folder": tmp_path / "folder.h5ad",
        "existing": tmp_path / "existing.h5ad",
    }
    names["folder"].mkdir()
    names["existing"].write_text("a file of the user's")
    names["link"] = tmp_path / "hard_link.h5ad"
    names["link"].hardlink_to(counts_file)  # another name for the input file
    adata = ad.read_h5ad(counts_file)
    names["mudata_as_h5ad"] = tmp_path / "mudata.h5ad"
    mudata.MuData({"rna": adata}).write(names["mudata_as_h5ad"])
    names["anndata_as_h5mu"] = tmp_path / "anndata.h5mu"
    adata.write_h5ad(names["anndata_as_h5mu"])
    adata.obs["library"] = np.asarray(adata.X.sum(1)).ravel() / 7.0
    adata.write_h5ad(counts_file)
    before = counts_file.read_bytes()
    result = CliRunner().invoke(main, [a.format(**names) for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert result.output.strip().count("\n") == 0
    assert counts_file.read_bytes() == before
    assert names["existing"].read_text() == "a file of the user's"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_that_cannot_be_written_is_found_before_training(counts_file, tmp_path):
    """os.access says yes to root, and on /proc: the check makes a file there."""
    for flag, out, model_dir in (
        ("--out", "/proc/out.h5ad", tmp_path / "model"),
        ("--model-dir", tmp_path / "z.h5ad", "/proc/scgexp_model"),
    ):
        result = _invoke(
            "fit", "zinb", counts_file, "--layer", "counts", "--out", out, "--model-dir", model_dir
        )
        assert result.exit_code == 1
        assert f"cannot be written to; choose another {flag}." in result.output
        assert "Epoch" not in result.output


def test_failed_write_leaves_no_model_and_says_why(counts_file, tmp_path, monkeypatch):
    """A full disk: a one-line reason with the file, and a rerun that needs no --overwrite."""
    import errno

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.EFBIG, "Driver write request failed (file write failed: time =\n...")

    out = tmp_path / "z.h5ad"
    args = ["fit", "zinb", counts_file, "--out", out, "--layer", "counts", "--epochs", "1"]
    with monkeypatch.context() as patched:
        patched.setattr(ad.AnnData, "write", full_disk)
        result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1
    assert f"{out}: File too large" in result.output
    assert not (tmp_path / "z_zinb_model").exists()
    assert _invoke(*args).exit_code == 0


def test_model_dir_is_checked_before_training(counts_file, bulk_file, tmp_path, monkeypatch):
    folder = tmp_path / "models"
    result = _invoke(
        "fit",
        "dgex",
        bulk_file,
        "--out",
        tmp_path / "d.h5ad",
        "--epochs",
        "1",
        "--model-dir",
        folder,
    )
    assert result.exit_code == 0, result.output

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the model folder was checked")

    monkeypatch.setattr(MODELS["zinb"].cls, "train", no_training)
    out = tmp_path / "z.h5ad"
    scvi_tools_model = tmp_path / "scvi_model"  # scvi-tools' save without data: model.pt alone
    scvi_tools_model.mkdir()
    (scvi_tools_model / "model.pt").write_bytes(b"the user's model")
    cases = [
        (folder, "holds a saved DGEX model, which would be replaced"),
        (out, "--model-dir must differ from --out"),
        (scvi_tools_model, "holds a model.pt that is not a saved scgexp model"),
    ]
    args = ["fit", "dgex", bulk_file, "--out", tmp_path / "d2.h5ad", "--model-dir", folder]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "holds a saved DGEX model; pass --overwrite to replace it" in result.output
    for model_dir, message in cases:
        result = CliRunner().invoke(
            main,
            ["fit", "zinb", str(counts_file), "--out", str(out), "--model-dir", str(model_dir)],
        )
        assert result.exit_code != 0
        assert message in result.output, result.output
    assert (scvi_tools_model / "model.pt").read_bytes() == b"the user's model"
    (folder / "attributes.json").write_text("{not json")
    result = CliRunner().invoke(main, ["predict", str(folder), str(bulk_file), "--out", str(out)])
    assert "holds a damaged scgexp model" in result.output
    args = ["fit", "zinb", str(counts_file), "--out", str(out), "--model-dir", str(folder)]
    assert "remove it or choose another --model-dir" in CliRunner().invoke(main, args).output
    assert result.output.strip().count("\n") == 0


def test_seed_out_of_numpy_range_is_refused_by_name(counts_file, tmp_path):
    result = _invoke("fit", "zinb", counts_file, "--out", tmp_path / "o.h5ad", "--seed", -1)
    assert result.exit_code == 2
    assert "Invalid value for '--seed'" in result.output


def test_unknown_model_is_refused(counts_file, tmp_path):
    result = CliRunner().invoke(main, ["fit", "scvi", str(counts_file), "--out", "x.h5ad"])
    assert result.exit_code == 2
    assert "'scvi' is not one of" in result.output


def test_command_line_knows_every_model():
    from scgexp.cli._main import MODEL_NAMES
    from scgexp.cli._specs import MODELS

    assert MODEL_NAMES == list(MODELS)
    assert {spec.cls.__name__ for spec in MODELS.values()} == set(scgexp.model.__all__)


def test_multivae_layer_option_names_every_modalitys_counts(tmp_path):
    import mudata

    mdata = scgexp.data.simulate_multiome(n_cells=120, n_genes=30, n_peaks=80, seed=0)
    for name in ("rna", "atac"):
        mdata[name].layers["counts"] = mdata[name].X.copy()
        mdata[name].X = np.log1p(mdata[name].X.toarray())
    path = tmp_path / "lognorm.h5mu"
    mdata.write(path)
    out = tmp_path / "joint.h5mu"
    result = _invoke("fit", "multivae", path, "--out", out, "--layer", "counts", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert mudata.read_h5mu(out).obsm["X_multivae"].shape[0] == 120
    assert not list(tmp_path.glob(".*partial*"))  # written through a temporary file, renamed
    # Counts in a layer of one modality and in X of the other: --layer applies where it exists
    # (it was required of every modality, an error a command-line user could not fix).
    mdata["atac"].X = mdata["atac"].layers.pop("counts")
    mdata.write(path)
    again = ("--epochs", "1", "--overwrite")
    result = _invoke("fit", "multivae", path, "--out", out, "--layer", "counts", *again)
    assert result.exit_code == 0, result.output
    result = _invoke("fit", "multivae", path, "--out", out, "--layer", "raw", *again)
    assert result.exit_code == 1
    assert "No modality has a layer 'raw' (--layer)" in result.output


def test_failed_write_leaves_no_output(counts_file, tmp_path, monkeypatch):
    def write_then_fail(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"truncated")  # a disk that fills up half-way
        raise OSError("No space left on device")

    monkeypatch.setattr(ad.AnnData, "write", write_then_fail)
    out = tmp_path / "out.h5ad"
    result = CliRunner().invoke(
        main, ["fit", "zinb", str(counts_file), "--out", str(out), "--epochs", "1"]
    )
    assert result.exit_code != 0
    assert "No space left" in result.output
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("model_name", ["sailer", "zinb"])
def test_stream_mode_leaves_the_input_on_disk(model_name, counts_file, tmp_path, monkeypatch):
    path = counts_file
    if model_name == "sailer":
        path = tmp_path / "atac.h5ad"
        scgexp.data.simulate_scatac(n_cells=200, n_peaks=150, seed=0).write_h5ad(path)
    spec, backed = MODELS[model_name], []

    def results(model, data, options):
        backed.append(data.isbacked)
        return spec.results(model, data, options)

    monkeypatch.setitem(MODELS, model_name, dataclasses.replace(spec, results=results))
    out = tmp_path / "streamed.h5ad"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _invoke(
            "fit", model_name, path, "--out", out, "--epochs", "1", "--data-mode", "stream"
        )
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "IterableDataset" in str(w.message)]  # loads in-process
    assert backed == [True]
    streamed, original = ad.read_h5ad(out), ad.read_h5ad(path)
    assert f"X_{model_name}" in streamed.obsm
    np.testing.assert_array_equal(streamed.X.toarray(), original.X.toarray())


@pytest.mark.slow
def test_fit_on_two_processes_writes_once(counts_file, tmp_path):
    """With --devices 2 Lightning runs the command in two processes; only the first writes."""
    import subprocess
    import sys

    out = tmp_path / "out.h5ad"
    command = [str(Path(sys.executable).with_name("scgexp")), "fit", "zinb", str(counts_file)]
    command += ["--out", str(out), "--layer", "counts", "--epochs", "1", "--accelerator", "cpu"]
    command += ["--devices", "2", "--strategy", "ddp_find_unused_parameters_true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ad.read_h5ad(out).obsm["X_zinb"].shape[0] == ad.read_h5ad(counts_file).n_obs
    assert result.stdout.count("Wrote") == 1
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("model_name", ["dgex", "zinb", "sailer", "multivae"])
def test_results_that_replace_input_entries_are_named(
    model_name, bulk_file, counts_file, tmp_path
):
    data = {
        "dgex": lambda: ad.read_h5ad(bulk_file),
        "zinb": lambda: ad.read_h5ad(counts_file),
        "sailer": lambda: scgexp.data.simulate_scatac(n_cells=150, n_peaks=100, seed=0),
        "multivae": lambda: scgexp.data.simulate_multiome(
            n_cells=150, n_genes=40, n_peaks=80, seed=0
        ),
    }[model_name]()
    suffix = ".h5mu" if model_name == "multivae" else ".h5ad"
    data.obsm["X_user"] = np.zeros((data.n_obs, 2))
    data.uns["user"] = {"note": 1}
    for adata in getattr(data, "mod", {None: data}).values():
        adata.layers["user"] = adata.X.copy()

    def fit(run: str) -> list[str]:
        path = tmp_path / f"{run}{suffix}"
        data.write(path) if model_name == "multivae" else data.write_h5ad(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = tmp_path / f"{run}_out{suffix}"
            result = _invoke("fit", model_name, path, "--out", out, "--epochs", "1")
        assert result.exit_code == 0, result.output
        return [str(w.message) for w in caught if "already has" in str(w.message)]

    assert fit("unrelated") == []  # the user's other entries stay and are not mentioned
    data.obsm[f"X_{model_name}"] = np.zeros((data.n_obs, 2))
    (message,) = fit("same_name")
    assert f"obsm['X_{model_name}']" in message
    assert "user" not in message


def test_fit_passes_the_learning_rate_and_errors_name_it(counts_file, tmp_path, monkeypatch):
    from scgexp.cli._main import _with_flags

    seen = {}
    original = ZINBAutoencoder.train

    def train(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(ZINBAutoencoder, "train", train)
    out = tmp_path / "o.h5ad"
    result = _invoke("fit", "zinb", counts_file, "--out", out, "--epochs", "1", "--lr", "0.01")
    assert result.exit_code == 0, result.output
    assert seen["lr"] == 0.01
    # Several processes make scvi-tools write the history to disk: not into the working folder.
    assert Path(seen["log_save_dir"]).name.startswith("scgexp_logs_")
    assert not Path(seen["log_save_dir"]).exists()
    # The divergence advice names train(lr=...); on the command line that is --lr.
    message = "Lower the learning rate (train(lr=...); it is 0.01 now)."
    assert _with_flags(message).endswith("(On the command line, lr= is --lr.)")


def test_existing_outputs_are_replaced_only_with_overwrite(counts_file, tmp_path):
    out, model_dir = tmp_path / "out.h5ad", tmp_path / "model"
    fit = ["fit", "zinb", counts_file, "--out", out, "--model-dir", model_dir, "--epochs", "1"]
    assert _invoke(*fit).exit_code == 0
    first = ad.read_h5ad(out).obsm["X_zinb"]
    assert _invoke(*fit, "--overwrite", "--seed", "1").exit_code == 0
    assert not np.allclose(ad.read_h5ad(out).obsm["X_zinb"], first)
    predicted = tmp_path / "predicted.h5ad"
    predicted.write_text("a file of the user's")
    result = CliRunner().invoke(
        main, ["predict", str(model_dir), str(counts_file), "--out", str(predicted)]
    )
    assert result.exit_code != 0
    assert predicted.read_text() == "a file of the user's"
    result = _invoke("predict", model_dir, counts_file, "--out", predicted, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "X_zinb" in ad.read_h5ad(predicted).obsm


def test_warnings_are_one_line_naming_the_command_s_flags():
    from scgexp.cli._main import _run, _with_flags, predict
    from scgexp.train._plans import warn_if_annealing_unfinished

    formatted, formatwarning = [], warnings.formatwarning

    def warn():
        message = UserWarning("Pass lr= or unfrozen= to change it.")
        formatted.append(warnings.formatwarning(message, UserWarning, "deep/file.py", 7))

    with click.Context(predict):  # predict has neither --lr nor --unfrozen
        _run(warn)
    _run(warn)  # outside a command: every flag is named
    assert formatted == [
        "UserWarning: Pass lr= or unfrozen= to change it. (On the command line, `scgexp "
        "predict` has no flag for lr= or unfrozen=: use the Python API.)\n",
        "UserWarning: Pass lr= or unfrozen= to change it. (On the command line, lr= is --lr; "
        "unfrozen= is --unfrozen.)\n",
    ]
    assert warnings.formatwarning is formatwarning  # restored
    assert _with_flags("lr=") == "lr= (On the command line, lr= is --lr.)"
    with click.Context(main.commands["predict"]):  # DGEX's advice for few samples
        assert _with_flags("rank_map=True needs 10; pass rank_map='sample'").endswith(
            "(On the command line, rank_map= is --rank-map; rank_map='sample' is "
            "--rank-map-sample.)"
        )
    with click.Context(main.commands["fit"]):  # a CSC file on disk: read it into memory
        assert _with_flags("or load it with `adata.to_memory()`.").endswith(
            "(On the command line, `adata.to_memory()` is --data-mode memory.)"
        )
    with pytest.warns(UserWarning, match="KL weight") as record:  # the KL annealing advice
        warn_if_annealing_unfinished(2, {"n_epochs_kl_warmup": 50})
    with click.Context(main.commands["fit"]):
        assert _with_flags(str(record[0].message)).endswith(
            "(On the command line, max_epochs= is --epochs; `scgexp fit` has no flag for "
            "n_epochs_kl_warmup=: use the Python API.)"
        )
    with pytest.warns(UserWarning, match="warm-up") as record:  # ends inside the warm-up
        warn_if_annealing_unfinished(2, {"n_epochs_warmup": 10})
    with click.Context(main.commands["fit"]):
        assert _with_flags(str(record[0].message)).endswith(
            "`scgexp fit` has no flag for n_epochs_warmup=: use the Python API.)"
        )


def test_device_errors_point_to_the_device_flags(counts_file, tmp_path, monkeypatch):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    def no_gpu(self, **kwargs):
        raise MisconfigurationException("No supported gpu backend found!")

    monkeypatch.setattr(ZINBAutoencoder, "train", no_gpu)
    args = ["fit", "zinb", str(counts_file), "--out", str(tmp_path / "o.h5ad")]
    result = CliRunner().invoke(main, [*args, "--accelerator", "gpu"])
    assert result.exit_code == 1
    assert "No supported gpu backend found! (Check --accelerator, --devices" in result.output


def test_multivae_on_modalities_with_different_cells(tmp_path, caplog):
    import logging

    import mudata

    sim = scgexp.data.simulate_multiome(n_cells=150, n_genes=40, n_peaks=80, seed=0)
    mosaic = mudata.MuData({"rna": sim["rna"][20:].copy(), "atac": sim["atac"][:140].copy()})
    mosaic.obs["batch"] = sim.obs["batch"].loc[mosaic.obs_names].to_numpy()
    path, out = tmp_path / "mosaic.h5mu", tmp_path / "joint.h5mu"
    mosaic.write(path)
    result = _invoke(
        "fit", "multivae", path, "--out", out, "--batch-key", "batch", "--epochs", "2"
    )
    assert result.exit_code == 0, result.output
    fitted = mudata.read_h5mu(out)
    for name, n_cells in (("rna", 130), ("atac", 140)):  # each modality keeps its own cells
        assert fitted[name].obs_names.equals(mosaic[name].obs_names)
        assert (fitted[name].X != mosaic[name].X).nnz == 0
        assert next(iter(fitted[name].layers.values())).shape[0] == n_cells
    assert fitted.obsm["X_multivae"].shape[0] == 150
    assert np.isfinite(fitted.obsm["X_multivae"]).all()
    assert np.isnan(fitted.obsm["X_multivae_rna"]).any(axis=1).sum() == 20
    predicted = tmp_path / "again.h5mu"
    result = _invoke("predict", tmp_path / "joint_multivae_model", path, "--out", predicted)
    assert result.exit_code == 0, result.output
    again = mudata.read_h5mu(predicted)
    np.testing.assert_allclose(again.obsm["X_multivae"], fitted.obsm["X_multivae"], rtol=1e-5)
    # The same cells in another order in one modality: read in order, not called missing.
    reordered = mudata.MuData({"rna": sim["rna"][::-1].copy(), "atac": sim["atac"].copy()})
    reordered.obs["batch"] = sim.obs["batch"].loc[reordered.obs_names].to_numpy()
    reordered.write(tmp_path / "reordered.h5mu")
    with caplog.at_level(logging.INFO, logger="scgexp.cli"):
        result = _invoke(
            "predict",
            tmp_path / "joint_multivae_model",
            tmp_path / "reordered.h5mu",
            "--out",
            tmp_path / "reordered_out.h5mu",
        )
    assert result.exit_code == 0, result.output
    assert "hold the MuData's cells in another order" in caplog.text
    assert "Cells missing a modality" not in caplog.text
    streamed = ["fit", "multivae", path, "--out", tmp_path / "s.h5mu", "--data-mode", "stream"]
    result = CliRunner().invoke(main, [str(a) for a in streamed])
    assert result.exit_code == 1
    assert "cannot pad or reorder on disk" in result.output


def test_multivae_batch_kept_in_the_modalities_obs(tmp_path, caplog):
    # MuData({"rna": rna, "atac": atac}) written as is holds the batch in rna:batch and
    # atac:batch only; a MuData subset keeps categories without cells. Both needed Python.
    import logging

    import mudata

    sim = scgexp.data.simulate_multiome(n_cells=150, n_genes=40, n_peaks=80, seed=0)
    rna, atac = sim["rna"][20:].copy(), sim["atac"][:140].copy()
    categories = [*sorted(sim.obs["batch"].unique()), "dropped_batch"]
    for mod in (rna, atac):
        mod.obs["batch"] = pd.Categorical(sim.obs["batch"].loc[mod.obs_names], categories)
    path, out = tmp_path / "mosaic.h5mu", tmp_path / "out.h5mu"
    mudata.MuData({"rna": rna, "atac": atac}).write(path)
    assert "batch" not in mudata.read_h5mu(path).obs
    fit = ["fit", "multivae", path, "--out", out, "--batch-key", "batch", "--epochs", "1"]
    with caplog.at_level(logging.INFO, logger="scgexp.cli"):
        result = _invoke(*fit)
    assert result.exit_code == 0, result.output
    assert "obs['batch']: read from the obs of modalities rna, atac" in caplog.text
    fitted = mudata.read_h5mu(out)
    expected = sim.obs["batch"].loc[fitted.obs_names].astype(str)
    assert (fitted.obs["batch"].astype(str) == expected).all()
    # An RNA-only query, its batch in the modality's obs only: predict adds the ATAC.
    mudata.MuData({"rna": rna[:30].copy()}).write(tmp_path / "query.h5mu")
    predicted = tmp_path / "predicted.h5mu"
    model_dir = tmp_path / "out_multivae_model"
    result = _invoke(
        "predict", model_dir, tmp_path / "query.h5mu", "--out", predicted, "--fill-missing"
    )
    assert result.exit_code == 0, result.output
    assert mudata.read_h5mu(predicted).obsm["X_multivae"].shape == (30, 20)
    # A subset MuData's obs keeps categories without cells; training leaves them out.
    subset = mudata.MuData({"rna": sim["rna"].copy(), "atac": sim["atac"].copy()})
    subset.obs["batch"] = pd.Categorical(sim.obs["batch"], categories)
    subset.write(tmp_path / "subset.h5mu")
    fit_subset = [*fit[:2], tmp_path / "subset.h5mu", *fit[3:], "--overwrite"]
    with caplog.at_level(logging.INFO, logger="scgexp.cli"):
        result = _invoke(*fit_subset)
    assert result.exit_code == 0, result.output
    assert "obs['batch']: categories without cells left out: ['dropped_batch']" in caplog.text
    # Modalities that disagree about a cell's batch are refused.
    atac.obs["batch"] = atac.obs["batch"].cat.rename_categories(lambda c: c + "_other")
    mudata.MuData({"rna": rna, "atac": atac}).write(path)
    result = CliRunner().invoke(main, [str(a) for a in [*fit, "--overwrite"]])
    assert result.exit_code == 1
    assert "obs['batch'] of modalities rna, atac differs for 120 cells" in result.output


def test_map_passes_its_options_and_checks_the_model_dir(tmp_path, monkeypatch):
    ref_dir, query = _zinb_reference(tmp_path, 160, 30, n_batches=2, epochs=1)

    calls = []
    load, train = ZINBAutoencoder.load_query_data, ZINBAutoencoder.train

    def spy_load(*args, **kwargs):
        calls.append(dict(kwargs, load_accelerator=kwargs.get("accelerator")))
        return load(*args, **kwargs)

    def spy_train(self, **kwargs):
        calls[-1].update(kwargs)
        return train(self, **kwargs)

    monkeypatch.setattr(ZINBAutoencoder, "load_query_data", spy_load)
    monkeypatch.setattr(ZINBAutoencoder, "train", spy_train)

    def run(name, *flags):
        out = tmp_path / f"{name}.h5ad"
        result = _invoke("map", ref_dir, query, "--out", out, "--epochs", 2, *flags)
        assert result.exit_code == 0, result.output
        return ad.read_h5ad(out)

    first = run("a", "--seed", 3, "--lr", "0.01", "--accelerator", "cpu")
    assert calls[-1]["unfrozen"] is False
    assert calls[-1]["load_accelerator"] == "cpu"
    assert calls[-1]["max_epochs"] == 2
    assert calls[-1]["lr"] == 0.01
    again = run("b", "--seed", 3, "--lr", "0.01")
    other = run("c", "--seed", 4, "--lr", "0.01")
    np.testing.assert_array_equal(first.layers["zinb_denoised"], again.layers["zinb_denoised"])
    assert not np.allclose(first.layers["zinb_denoised"], other.layers["zinb_denoised"])
    tuned = run("t", "--seed", 3, "--unfrozen", "--latent-only")
    assert calls[-1]["unfrozen"] is True
    assert "zinb_denoised" in first.layers
    assert "zinb_denoised" not in tuned.layers
    # A saved query model is replaced only with --overwrite, as in fit.
    args = ["map", ref_dir, query, "--out", tmp_path / "d.h5ad", "--epochs", 1]
    args += ["--model-dir", tmp_path / "a_zinb_query_model"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1
    assert "pass --overwrite to replace it" in result.output
    # An existing --out is replaced only with --overwrite.
    args = ["map", ref_dir, query, "--out", tmp_path / "a.h5ad"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1
    assert "a.h5ad exists; pass --overwrite" in result.output
    # Existing folders inside REFERENCE_DIR are inside it too.
    (ref_dir / "sub").mkdir()
    for flag, path in (("--out", ref_dir / "sub" / "q.h5ad"), ("--model-dir", ref_dir / "sub")):
        args = ["map", ref_dir, query, "--out", tmp_path / "e.h5ad", flag, path]
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 1
        assert f"{flag} must lie outside REFERENCE_DIR" in result.output


def test_messages_name_no_command_for_the_running_one():
    import click

    from scgexp.cli._main import _with_flags, map_query, predict

    message = "Add them with `Model.load_query_data(query, model)`."
    with click.Context(map_query, info_name="map"):
        assert _with_flags(message) == message
    with click.Context(predict, info_name="predict"):
        assert _with_flags(message).endswith(
            "(On the command line, load_query_data is `scgexp map`.)"
        )


def test_dgex_output_latent_is_the_saved_models(tmp_path):
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=60, n_landmarks=10, n_targets=20, n_programs=3, seed=0
    )
    path, out = tmp_path / "bulk.h5ad", tmp_path / "f.h5ad"
    adata.write_h5ad(path)
    args = ["fit", "dgex", str(path), "--out", str(out), "--epochs", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    model = DGEX.load(tmp_path / "f_dgex_model")
    np.testing.assert_allclose(
        ad.read_h5ad(out).obsm["X_dgex"],
        model.get_latent_representation(ad.read_h5ad(path)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_map_pads_a_mosaic_multivae_query(tmp_path):
    import mudata

    data = scgexp.data.simulate_multiome(n_cells=240, n_genes=40, n_peaks=60, n_batches=3, seed=0)
    data.obs["batch"] = data.obs["batch"].astype("category")
    is_query = (data.obs["batch"] == "batch_2").to_numpy()
    reference = data[~is_query].copy()
    reference.obs["batch"] = reference.obs["batch"].cat.remove_unused_categories()
    reference.write(tmp_path / "reference.h5mu")
    query = data[is_query].copy()
    with_rna = query.obs_names[: query.n_obs // 2]  # the other cells lack RNA
    mosaic = mudata.MuData({"rna": query["rna"][with_rna].copy(), "atac": query["atac"].copy()})
    mosaic.obs["batch"] = query.obs["batch"]
    mosaic.write(tmp_path / "query.h5mu")
    fit = ["fit", "multivae", tmp_path / "reference.h5mu", "--out", tmp_path / "f.h5mu"]
    result = _invoke(*fit, "--batch-key", "batch", "--model-dir", tmp_path / "ref", "--epochs", 2)
    assert result.exit_code == 0, result.output
    out = tmp_path / "mapped.h5mu"
    result = _invoke("map", tmp_path / "ref", tmp_path / "query.h5mu", "--out", out, "--epochs", 2)
    assert result.exit_code == 0, result.output
    mapped = mudata.read_h5mu(out)
    assert mapped["rna"].n_obs == len(with_rna)  # each modality keeps its own cells
    assert mapped["rna"].layers["multivae_normalized"].shape == (len(with_rna), 40)
    assert mapped.obsm["X_multivae"].shape[0] == query.n_obs
    assert np.isnan(mapped.obsm["X_multivae_rna"]).any(axis=1).sum() == query.n_obs - len(with_rna)
    # A mosaic query that also lacks two genes maps with --fill-missing; cells stay as they were.
    mosaic.mod["rna"] = mosaic["rna"][:, 2:].copy()
    mosaic.update()
    mosaic.write(tmp_path / "partial.h5mu")
    args = ["map", tmp_path / "ref", tmp_path / "partial.h5mu", "--out", tmp_path / "m2.h5mu"]
    result = _invoke(*args, "--epochs", 2, "--fill-missing")
    assert result.exit_code == 0, result.output
    filled = mudata.read_h5mu(tmp_path / "m2.h5mu")
    assert filled["rna"].n_obs == len(with_rna)
    assert filled["rna"].var_names.equals(query["rna"].var_names)
    assert filled["rna"].layers["multivae_normalized"].shape == (len(with_rna), 40)


def test_fit_takes_model_settings_and_batch_size_and_predict_a_layer(
    bulk_file, tmp_path, monkeypatch
):
    calls = []
    train = DGEX.train
    monkeypatch.setattr(DGEX, "train", lambda self, **kw: calls.append(kw) or train(self, **kw))
    out = tmp_path / "fitted.h5ad"
    settings = ["--model-arg", "n_hidden=16", "--model-arg", "n_layers=1"]
    settings += ["--model-arg", "loss=gaussian", "--model-arg", "dropout_rate=0.0"]
    result = _invoke(
        "fit", "dgex", bulk_file, "--out", out, "--epochs", "2", *settings, "--batch-size", "32"
    )
    assert result.exit_code == 0, result.output
    model = DGEX.load(tmp_path / "fitted_dgex_model")
    chosen = {"n_hidden": 16, "n_layers": 1, "loss": "gaussian", "dropout_rate": 0.0}
    assert {k: model.init_params_["non_kwargs"][k] for k in chosen} == chosen
    assert calls[0]["batch_size"] == 32
    assert calls[0]["max_epochs"] == 2
    for bad, message in (
        ("nhidden=5", "n_hidden"),  # the closest name
        ("n_hidden", "is not NAME=VALUE"),
        ("n_hidden=0", "n_hidden must be a positive whole number"),
        ("registry={}", "registry is set by scgexp fit from INPUT"),  # skipped standardising
    ):
        result = CliRunner().invoke(
            main,
            [
                "fit",
                "dgex",
                str(bulk_file),
                "--out",
                str(out),
                "--overwrite",
                "--model-arg",
                bad,
            ],
        )
        assert result.exit_code != 0
        assert message in result.output, result.output

    # predict --layer: the landmark values from a layer, X holding something else.
    new = ad.read_h5ad(bulk_file)[:40]
    new.layers["log2"] = new.X.copy()
    new.X = np.zeros_like(new.X)
    new_path = tmp_path / "layered.h5ad"
    new.write_h5ad(new_path)
    predicted = tmp_path / "predicted.h5ad"
    assert (
        _invoke(
            "predict",
            tmp_path / "fitted_dgex_model",
            new_path,
            "--out",
            predicted,
            "--layer",
            "log2",
        ).exit_code
        == 0
    )
    expected = model.predict(ad.read_h5ad(bulk_file)[:40].copy())
    targets = ~ad.read_h5ad(predicted).var["landmark"].to_numpy()
    np.testing.assert_allclose(ad.read_h5ad(predicted).X[:, targets], expected.X, rtol=1e-5)

    # Lower-case words are Python's values: as text, "false" was true.
    result = _invoke(
        "fit",
        "dgex",
        bulk_file,
        "--out",
        out,
        "--overwrite",
        "--epochs",
        "1",
        "--model-arg",
        "linear_skip=false",
        "--model-arg",
        "n_hidden=8",
    )
    assert result.exit_code == 0, result.output
    assert DGEX.load(tmp_path / "fitted_dgex_model").module.skip is None


def test_model_arguments_are_python_literals_else_text():
    from scgexp.cli._main import _model_arguments

    parsed = _model_arguments(("a=1e3", "b=FALSE", "c=None", "d=relu", "e={[]: 1}", "f='x y'"))
    assert parsed == {"a": 1000.0, "b": False, "c": None, "d": "relu", "e": "{[]: 1}", "f": "x y"}


def test_predict_puts_result_layers_on_each_modalitys_own_cells(tmp_path):
    """A modality whose cells come in another order gets its rows by cell name."""
    import mudata

    sim = scgexp.data.simulate_multiome(n_cells=120, n_genes=40, n_peaks=80, seed=0)
    path, model_dir = tmp_path / "m.h5mu", tmp_path / "model"
    sim.write(path)
    fitted = _invoke(
        "fit",
        "multivae",
        path,
        "--out",
        tmp_path / "fit.h5mu",
        "--model-dir",
        model_dir,
        "--epochs",
        "2",
    )
    assert fitted.exit_code == 0, fitted.output
    reordered = mudata.MuData({"rna": sim["rna"][::-1].copy(), "atac": sim["atac"].copy()})
    reordered.obs["batch"] = sim.obs["batch"].loc[reordered.obs_names].to_numpy()
    reordered.write(tmp_path / "r.h5mu")
    for source, out in ((tmp_path / "r.h5mu", "r_out.h5mu"), (path, "p.h5mu")):
        assert _invoke("predict", model_dir, source, "--out", tmp_path / out).exit_code == 0
    expected = mudata.read_h5mu(tmp_path / "p.h5mu")
    got = mudata.read_h5mu(tmp_path / "r_out.h5mu")
    assert not got["rna"].obs_names.equals(got["atac"].obs_names)
    for name, layer in (("rna", "multivae_normalized"), ("atac", "multivae_accessibility")):
        assert got[name].obs_names.equals(reordered[name].obs_names)  # the input's own order
        rows = expected[name].obs_names.get_indexer(got[name].obs_names)
        np.testing.assert_allclose(
            got[name].layers[layer], expected[name].layers[layer][rows], rtol=1e-5, atol=1e-7
        )
