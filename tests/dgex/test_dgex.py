from __future__ import annotations

import gzip
import warnings

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from lightning.pytorch import Callback
from scipy import sparse

import scgexp
from scgexp.data import InputError
from scgexp.dgex import DGEXModule
from scgexp.model import DGEX


@pytest.fixture(scope="module")
def bulk():
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=1200, n_landmarks=60, n_targets=240, n_programs=20, seed=0
    )
    return adata[:1000].copy(), adata[1000:].copy()


@pytest.fixture(scope="module")
def trained(bulk):
    train, _ = bulk
    DGEX.setup_anndata(train)
    model = DGEX(train, n_hidden=256, n_layers=2)
    model.train(max_epochs=40, enable_progress_bar=False)
    return model


def _targets(adata):
    return adata[:, ~adata.var["landmark"]].X


def test_learns_better_than_mean(bulk, trained):
    train, test = bulk
    predicted = trained.predict(test)
    mae = np.abs(predicted.X - _targets(test)).mean()
    baseline = np.abs(_targets(train).mean(0) - _targets(test)).mean()
    assert mae < 0.8 * baseline
    # No check that validation MAE falls during training: the linear path starts at the ridge
    # solution, so the first epoch is already close to the best (a flaky check, removed).
    assert np.isfinite(trained.history["mae_validation"].to_numpy(dtype=float)).all()


def test_prediction_names_order_and_std(bulk, trained):
    _, test = bulk
    shuffled = test[:, np.random.default_rng(0).permutation(test.n_vars)].copy()
    landmarks_only = test[:, test.var["landmark"]].copy()
    reference = trained.predict(test, return_std=True)
    assert list(reference.var_names) == list(test.var_names[~test.var["landmark"]])
    assert list(reference.obs_names) == list(test.obs_names)
    np.testing.assert_allclose(trained.predict(shuffled).X, reference.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        trained.predict(landmarks_only).X, reference.X, rtol=1e-5, atol=1e-5
    )
    # A view that subsets genes, and a column-major copy, are read as they are.
    view = test[:, test.var["landmark"]]
    column_major = landmarks_only.copy()
    column_major.X = np.asfortranarray(column_major.X)
    for data in (view, column_major):
        np.testing.assert_allclose(trained.predict(data).X, reference.X, rtol=1e-5, atol=1e-5)
    assert column_major.X.flags.f_contiguous  # the user's data is left as it was
    std = reference.layers["std"]
    assert std.shape == reference.shape
    assert np.all(std > 0)
    # Calibrated on held-out samples: it was each gene's whole spread (the variance never left
    # its start in a run), so 99% of values fell within ± 1.96 std and z had sd 0.66.
    _assert_calibrated(reference, test)


def test_other_genes_may_repeat_but_landmarks_may_not(bulk, trained):
    """Probe-level data mapped to symbols repeats names; only the landmarks must be unique."""
    _, test = bulk
    reference = trained.predict(test).X
    repeated = test.copy()
    targets = np.flatnonzero(~test.var["landmark"].to_numpy())
    names = repeated.var_names.to_numpy(dtype=object, copy=True)  # (a view of the fixture)
    names[targets[1::2]] = names[targets[0::2]][: len(targets[1::2])]
    repeated.var_names = names
    np.testing.assert_allclose(trained.predict(repeated).X, reference, rtol=1e-5, atol=1e-5)
    landmark = test.var_names[test.var["landmark"]][0]
    names[targets[0]] = landmark
    repeated.var_names = names
    with pytest.raises(InputError, match=f"appear more than once in var_names .first: {landmark}"):
        trained.predict(repeated)


def _assert_calibrated(prediction, test) -> None:
    z = (_targets(test) - prediction.X) / prediction.layers["std"]
    assert 0.92 < np.mean(np.abs(z) < 1.96) < 0.98
    assert 0.85 < z.std() < 1.2


def test_latent(bulk, trained):
    train, _ = bulk
    z = trained.get_latent_representation()
    assert z.shape == (train.n_obs, 256)
    assert np.isfinite(z).all()
    np.testing.assert_allclose(trained.get_latent_representation(batch_size=None), z, rtol=1e-5)
    for give_mean in (True, False):  # as scvi-tools' models are called; no dropout here
        np.testing.assert_array_equal(trained.get_latent_representation(give_mean=give_mean), z)
    # Indices in scvi-tools' second place, where predict reads a layer name.
    np.testing.assert_allclose(
        trained.get_latent_representation(train, [0, 1]), z[[0, 1]], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(InputError, match=r"pass them as adata, e.g. model.predict\(adata"):
        trained.predict(train, [0, 1])
    np.testing.assert_allclose(
        trained.get_latent_representation(indices=[5, 1]), z[[5, 1]], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(NotImplementedError, match=r"use model.predict\(adata\)"):
        trained.get_normalized_expression()


def test_sparse_input_matches_dense(bulk):
    train, _ = bulk
    dense = train[:300].copy()
    sparse_copy = dense.copy()
    sparse_copy.X = sparse.csr_matrix(np.where(dense.X > 7, dense.X, 0))
    dense.X = sparse_copy.X.toarray()
    results = []
    for adata in (dense, sparse_copy):
        scvi.settings.seed = 0
        DGEX.setup_anndata(adata)
        model = DGEX(adata, n_hidden=32)
        model.train(max_epochs=2, enable_progress_bar=False)
        results.append(model.predict(adata).X)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_registered_layer_is_used_by_default(bulk):
    train, test = bulk
    adata = train[:300].copy()
    adata.layers["log2"] = adata.X.copy()
    adata.X = np.zeros_like(adata.X)
    DGEX.setup_anndata(adata, layer="log2")
    model = DGEX(adata, n_hidden=32)
    model.train(max_epochs=2, enable_progress_bar=False)
    from_layer = model.predict().X
    np.testing.assert_array_equal(from_layer, model.predict(adata, layer="log2").X)
    without_layer = adata.copy()
    del without_layer.layers["log2"]
    assert not np.allclose(from_layer, model.predict(without_layer).X)  # X (zeros) is used
    # New data: the training layer is used when present, else X.
    query = test[:20].copy()
    np.testing.assert_allclose(model.predict(query).X, model.predict(query, layer=None).X)


def test_save_load_round_trip(bulk, trained, tmp_path, capsys):
    _, test = bulk
    trained.save(tmp_path / "model", save_anndata=False)
    loaded = DGEX.load(tmp_path / "model")
    assert loaded.adata is None
    np.testing.assert_array_equal(loaded.predict(test).X, trained.predict(test).X)
    with pytest.raises(InputError, match="loaded without data; pass adata="):
        loaded.get_latent_representation(indices=[0])
    trained.save(tmp_path / "with_data", save_anndata=True)
    with_data = DGEX.load(tmp_path / "with_data")
    np.testing.assert_array_equal(
        with_data.get_latent_representation(), trained.get_latent_representation()
    )
    print(with_data)
    assert "60 landmarks -> 240 targets" in capsys.readouterr().out
    landmarks_only = test[:, test.var["landmark"]].copy()
    with pytest.raises(InputError, match="load the model without data"):
        DGEX.load(tmp_path / "model", adata=landmarks_only)


def test_missing_landmarks(bulk, trained):
    _, test = bulk
    landmark = test.var_names[test.var["landmark"]][:3]
    partial = test[:, ~test.var_names.isin(landmark)].copy()
    with pytest.raises(InputError, match="3 of 60 landmark genes are missing"):
        trained.predict(partial)
    kept = test.var_names[test.var["landmark"]][-1]  # 59 missing: every one named
    with pytest.raises(InputError, match="59 of 60") as error:
        trained.predict(test[:, [kept]].copy())
    assert all(gene in str(error.value) for gene in trained.landmark_names.drop(kept))
    with pytest.warns(UserWarning, match="filled with their training mean") as caught:
        filled = trained.predict(partial, fill_missing=True)
    assert np.isfinite(filled.X).all()
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert list(filled.uns["dgex"]["filled_landmarks"]) == list(landmark)
    assert len(trained.predict(test).uns["dgex"]["filled_landmarks"]) == 0
    renamed = test.copy()
    renamed.var_names = [f"ENSG{i:011d}" for i in range(renamed.n_vars)]
    with pytest.raises(InputError, match=r"first: gene\d+.*names its genes like 'ENSG0+'"):
        trained.predict(renamed)
    for fill_missing in (False, True):  # numpy's IndexError before
        with pytest.raises(InputError, match="None of the 60 landmark genes"):
            trained.predict(test[:, :0].copy(), fill_missing=fill_missing)


def test_rank_map_needs_several_samples(bulk, trained):
    _, test = bulk
    with pytest.raises(InputError, match="at least 10 samples"):
        trained.predict(test[:3], rank_map=True)


def test_rank_map_recovers_shifted_platform(bulk, trained, warnings_as_errors):
    _, test = bulk
    reference = trained.predict(test).X
    # A different platform: a monotone distortion of every landmark (here 2**x).
    shifted = test[:, test.var["landmark"]].copy()
    shifted.X = np.exp2(shifted.X / 2)
    with pytest.warns(UserWarning, match="do not look like the training data's"):
        naive = trained.predict(shifted).X
    with warnings_as_errors():  # neither same-unit data nor rank-mapped data warn
        mapped = trained.predict(shifted, rank_map=True).X
        trained.predict(test[:1])
    assert np.abs(mapped - reference).mean() < 0.5 * np.abs(naive - reference).mean()


def test_rank_map_maps_the_training_data_onto_themselves(bulk, trained):
    """Each landmark onto its own training quantiles: the training samples barely move."""
    train, _ = bulk
    plain = trained.predict(train).X
    mapped = trained.predict(train, rank_map=True).X
    assert np.abs(mapped - plain).mean() < 0.1 * _targets(train).std(0).mean()


def test_rank_map_per_sample_suits_one_tissue_and_single_samples(bulk, trained):
    """Ranks across samples stretch a one-tissue set over the training range; ranks within
    each sample do not depend on the other samples at all."""
    _, test = bulk
    tissue = (test.obs["tissue"] == test.obs["tissue"].iloc[0]).to_numpy()
    one_tissue = test[tissue, test.var["landmark"]].copy()
    one_tissue.X = np.exp2(one_tissue.X / 2)  # another platform
    truth = _targets(test[tissue])
    error = {
        mode: np.abs(trained.predict(one_tissue, rank_map=mode).X - truth).mean()
        for mode in (True, "sample")
    }
    assert error["sample"] < 0.8 * error[True]
    baseline = np.abs(_targets(test).mean(0) - truth).mean()  # the mean of all tissues
    assert error["sample"] < baseline
    single = trained.predict(one_tissue[:1], rank_map="sample")  # no 10-sample minimum
    np.testing.assert_allclose(
        single.X[0], trained.predict(one_tissue, rank_map="sample").X[0], rtol=1e-5, atol=1e-6
    )
    assert single.uns["dgex"]["rank_map"] == "sample"
    with pytest.raises(InputError, match="rank_map must be False, True, 'gene' or 'sample'"):
        trained.predict(one_tissue, rank_map="quantile")
    np.testing.assert_array_equal(  # None: no mapping, as before
        trained.predict(test[:3], rank_map=None).X, trained.predict(test[:3]).X
    )
    assert trained.predict(test, rank_map=True).uns["dgex"]["rank_map"] == "gene"
    lone = test[:3, test.var_names[test.var["landmark"]][:1]].copy()  # one landmark measured
    with pytest.warns(UserWarning, match="missing"):
        alone = trained.predict(lone, rank_map="sample", fill_missing=True)
    assert np.isfinite(alone.X).all()


def test_values_outside_the_training_range_warn(bulk, trained):
    # As raw counts for a model trained on log values: a small mean shift, many outliers.
    _, test = bulk
    spiked = test[:, test.var["landmark"]].copy()
    spikes = np.random.default_rng(0).random(spiked.shape) < 0.1
    spiked.X = np.where(spikes, spiked.X.max(0) + 5 * spiked.X.std(0), spiked.X)
    with pytest.warns(UserWarning, match=r"1\d% of the values lie outside the training range"):
        trained.get_latent_representation(spiked)


def test_values_shifted_inside_the_training_range_warn(bulk, trained):
    # Another normalisation: squeezed and shifted, though still inside the training range.
    _, test = bulk
    shifted = test[:, test.var["landmark"]].copy()
    mean = trained.module.landmark_mean.numpy()  # landmarks in the data's column order
    scale = trained.module.landmark_scale.numpy()
    shifted.X = (mean + 0.3 * (shifted.X - mean) + 2.5 * scale).astype(np.float32)
    with pytest.warns(UserWarning, match=r"lies 2\.\d training standard deviations"):
        trained.predict(shifted)


def test_linear_start_is_fitted_on_the_training_split_and_stopping_reads_the_mae(
    bulk, monkeypatch
):
    from lightning.pytorch.callbacks import EarlyStopping

    train, _ = bulk
    DGEX.setup_anndata(train)
    model = DGEX(train, n_hidden=32, n_layers=1)
    fitted_rows = []
    fit = model._initialise_linear_skip
    monkeypatch.setattr(
        model, "_initialise_linear_skip", lambda rows: (fitted_rows.append(rows), fit(rows))[1]
    )
    model.train(max_epochs=2, enable_progress_bar=False)
    (rows,) = fitted_rows  # once, on the training cells only: validation stays unseen
    np.testing.assert_array_equal(np.sort(rows), np.sort(model.train_indices))
    (stopping,) = [c for c in model.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert stopping.monitor == "mae_validation"


def test_whole_numbers_warn_for_a_model_trained_on_other_values(bulk, warnings_as_errors):
    # Shallow counts lie inside a log1p range, so only their being whole numbers tells.
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.5, 2.0, 120), (400, 120)).astype(np.float32)
    log_norm = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    adata = anndata.AnnData(log_norm)  # sparse-like: most genes' lowest value is 0
    adata.var["landmark"] = np.arange(120) < 30
    train, test = adata[:300].copy(), adata[300:].copy()
    DGEX.setup_anndata(train)
    model = DGEX(train, n_hidden=32)
    model.train(max_epochs=1, enable_progress_bar=False)
    with warnings_as_errors():
        model.predict(test)  # the training units: no warning
    raw = anndata.AnnData(counts[300:], var=test.var)
    with pytest.warns(UserWarning, match="all whole numbers .raw counts"):
        model.predict(raw)
    # A model trained on whole numbers (with a warning, as they are likely counts) takes them.
    whole = bulk[0].copy()
    whole.X = np.round(np.clip(whole.X, 0, None))
    DGEX.setup_anndata(whole)
    with pytest.warns(UserWarning, match=r"Every training value is a whole number \(raw counts"):
        model = DGEX(whole, n_hidden=32)
    model.train(max_epochs=1, enable_progress_bar=False)
    with warnings_as_errors():
        model.predict(whole[:50])


def test_rank_map_reads_backed_data_in_any_gene_order(bulk, trained, tmp_path):
    _, test = bulk
    expected = trained.predict(test, rank_map=True).X
    reversed_genes = test[:, test.var_names[::-1]].copy()
    reversed_genes.X = np.asarray(reversed_genes.X)  # dense: read through h5py when backed
    reversed_genes.write_h5ad(tmp_path / "test.h5ad")
    backed = anndata.read_h5ad(tmp_path / "test.h5ad", backed="r")
    np.testing.assert_allclose(trained.predict(backed, rank_map=True).X, expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no_key", "var has no column 'landmark'"),
        ("none_marked", "No gene is marked"),
        ("all_marked", "nothing to predict"),
        ("nan", "NaN or infinite"),
        ("bad_layer", "layer 'logcounts' does not exist"),
        ("zero_one", r"must be boolean .*pd\.to_numeric\(adata\.var\['landmark'\]\) == 1`"),
        ("zero_one_text", r"must be boolean .*pd\.to_numeric\(adata\.var\['landmark'\]\) == 1`"),
        ("text", r"must be boolean .*\.str\.lower\(\) == 'true'`"),
        ("repeated_names", r"var_names are not unique; call `adata.var_names_make_unique\(\)`"),
    ],
)
def test_bad_setup(bulk, change, message):
    adata = bulk[0][:50].copy()
    layer = None
    if change == "no_key":
        del adata.var["landmark"]
    elif change == "none_marked":
        adata.var["landmark"] = False
    elif change == "all_marked":
        adata.var["landmark"] = True
    elif change == "nan":
        adata.X[0, 0] = np.nan
    elif change == "bad_layer":
        layer = "logcounts"
    elif change == "repeated_names":  # two targets with one name: predictions could not say which
        targets = np.flatnonzero(~adata.var["landmark"].to_numpy())
        names = adata.var_names.to_numpy(dtype=object, copy=True)
        names[targets[1]] = names[targets[0]]
        adata.var_names = names
    elif change in ("zero_one", "zero_one_text", "text"):  # as some tools write marks
        marks = adata.var["landmark"]
        adata.var["landmark"] = {
            "zero_one": marks.astype(int),
            "zero_one_text": marks.astype(int).astype(str),
            "text": marks.astype(str),
        }[change]
    before = adata.copy()
    with pytest.raises(InputError, match=message) as refused:
        DGEX.setup_anndata(adata, layer=layer)
    np.testing.assert_array_equal(adata.X, before.X)
    if change in ("zero_one", "zero_one_text", "text"):  # the line the message gives works
        exec(str(refused.value).split("`")[1], {"adata": adata, "pd": pd})
        DGEX.setup_anndata(adata, layer=layer)


def test_nan_at_predict(bulk, trained):
    _, test = bulk
    broken = test.copy()
    landmark = np.flatnonzero(broken.var["landmark"])[1]
    broken.X[3, landmark] = np.inf
    broken.X[3, np.flatnonzero(~broken.var["landmark"])[0]] = np.nan  # a target: not read
    where = f"first: observation '{broken.obs_names[3]}', variable '{broken.var_names[landmark]}'"
    with pytest.raises(InputError, match=f"NaN or infinite values \\({where}\\)"):
        trained.predict(broken)
    as_sparse = broken[:, ::-1].copy()  # another gene order, sparse
    as_sparse.X = sparse.csr_matrix(as_sparse.X)
    with pytest.raises(InputError, match=where):
        trained.predict(as_sparse)
    first = test.var_names[test.var["landmark"]][0]  # a landmark in the user's column 0
    in_front = test[:, [first, *test.var_names.drop(first)]].copy()
    in_front.X[2, 0] = np.nan
    with pytest.raises(InputError, match=f"variable '{first}'"):
        trained.predict(in_front)


def test_gaussian_loss_and_gene_variance(bulk):
    train, test = bulk
    for loss, variance in (("gaussian", "value"), ("mse", "gene")):
        adata = train.copy()
        DGEX.setup_anndata(adata)
        model = DGEX(adata, n_hidden=64, loss=loss, variance=variance)
        model.train(max_epochs=3, enable_progress_bar=False)
        out = model.predict(test, return_std=True)
        assert np.isfinite(out.X).all()
        assert np.all(out.layers["std"] > 0)
        if variance == "gene":
            assert np.allclose(out.layers["std"], out.layers["std"][0])
        _assert_calibrated(out, test)


def test_mse_variance_head_does_not_train_the_mean():
    """With loss="mse" the mean is fitted by squared error alone: the variance head's NLL
    must send no gradient into the hidden layers or the mean (else it biases the fit)."""
    torch.manual_seed(0)
    module = DGEXModule(
        n_input=30,
        landmark_index=list(range(10)),
        target_index=list(range(10, 30)),
        n_hidden=16,
        dropout_rate=0.0,
        loss="mse",
        variance="value",
    )
    tensors = {"X": torch.randn(64, 30)}
    mean_parameters = [
        *module.hidden.parameters(),
        *module.mean_head.parameters(),
        *module.skip.parameters(),
    ]

    def gradients(full_loss: bool) -> list[torch.Tensor]:
        module.zero_grad()
        _, _, loss_output = module.forward(tensors)
        squared_error = loss_output.reconstruction_loss["reconstruction_loss"].mean()
        (loss_output.loss if full_loss else squared_error).backward()
        return [p.grad.clone() for p in mean_parameters]

    for full, squared_error_only in zip(gradients(True), gradients(False), strict=True):
        torch.testing.assert_close(full, squared_error_only)


def _panel_beats_random_panels(train, test, n_landmarks, alpha):
    """select_landmarks' panel predicts genes outside every panel better than random panels."""
    from sklearn.linear_model import Ridge

    chosen = scgexp.data.select_landmarks(train.copy(), n_landmarks=n_landmarks, key=None)
    assert len(chosen) == len(set(chosen)) == n_landmarks
    rng = np.random.default_rng(0)
    random_panels = [rng.choice(train.var_names, n_landmarks, replace=False) for _ in range(5)]
    targets = ~train.var_names.isin(np.concatenate([chosen, *random_panels]))

    def panel_error(panel):
        mask = train.var_names.isin(panel)
        fit = Ridge(alpha=alpha).fit(train.X[:, mask], train.X[:, targets])
        return np.abs(fit.predict(test.X[:, mask]) - test.X[:, targets]).mean()

    random_errors = [panel_error(panel) for panel in random_panels]
    assert panel_error(chosen) < min(random_errors), (panel_error(chosen), random_errors)


@pytest.mark.parametrize(("n_programs", "n_landmarks"), [(15, 30), (20, 100)])
def test_select_landmarks_beats_random_panels(n_programs, n_landmarks):
    """Also with more landmarks than programs: spanning noise axes picked the noisiest genes."""
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=900, n_landmarks=100, n_targets=500, n_programs=n_programs, seed=3
    )
    _panel_beats_random_panels(adata[:700], adata[700:], n_landmarks, alpha=1.0)


@pytest.mark.shared_data
def test_select_landmarks_beats_random_panels_on_single_cells(shared_data):
    import scanpy as sc

    path = shared_data / "scrna" / "cellbench_5celllines_celseq2_3plates.h5ad"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    adata = anndata.read_h5ad(path)
    sc.pp.filter_genes(adata, min_cells=20)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=1500, subset=True)
    adata.X = adata.X.toarray()
    plate = adata.obs["batch"].astype(str)
    train, test = adata[plate != "p3"], adata[plate == "p3"]
    for n_landmarks in (30, 200):
        _panel_beats_random_panels(train, test, n_landmarks, alpha=10.0)


def test_select_landmarks_beyond_the_rank_takes_the_most_variable_genes():
    rng = np.random.default_rng(1)
    programs = rng.normal(size=(200, 3))
    scale = np.repeat([1.0, 0.3, 2.0, 0.1], 10)  # ten genes per program, then ten noise genes
    values = (
        np.concatenate(
            [programs[:, [k % 3]] + 0.3 * rng.normal(size=(200, 10)) for k in range(3)]
            + [rng.normal(size=(200, 10))],
            axis=1,
        )
        * scale
    )
    adata = anndata.AnnData(values.astype(np.float32))
    panel = scgexp.data.select_landmarks(adata, 8, n_components=3, key=None)
    positions = [adata.var_names.get_loc(g) for g in panel]
    assert sorted(p // 10 for p in positions[:3]) == [0, 1, 2]  # one gene per program first
    # Then the most variable genes, not index order.
    assert all(p // 10 == 2 for p in positions[3:])
    as_sparse = anndata.AnnData(sparse.csr_matrix(adata.X))  # read in float64, as dense
    assert scgexp.data.select_landmarks(as_sparse, 8, n_components=3, key=None) == panel
    with pytest.raises(InputError, match="whole number"):
        scgexp.data.select_landmarks(adata, 2.5)


def test_read_gctx_and_gct(tmp_path):
    rng = np.random.default_rng(0)
    genes, samples = ["g1", "g2", "g3"], ["s1", "s2"]
    values = rng.normal(size=(len(samples), len(genes))).astype(np.float32)
    path = tmp_path / "toy.gctx"
    with h5py.File(path, "w") as handle:
        handle["0/DATA/0/matrix"] = values
        handle["0/META/ROW/id"] = np.array(genes, dtype="S")
        handle["0/META/ROW/pr_gene_symbol"] = np.array(["A", "B", "C"], dtype="S")
        handle["0/META/COL/id"] = np.array(samples, dtype="S")
        handle["0/META/COL/pert_iname"] = np.array(["DMSO", "drug"], dtype="S")
    adata = scgexp.data.read_gctx(path)
    assert adata.shape == (2, 3)
    assert list(adata.var_names) == genes
    assert adata.var["pr_gene_symbol"].tolist() == ["A", "B", "C"]
    assert adata.obs["pert_iname"].tolist() == ["DMSO", "drug"]
    np.testing.assert_array_equal(adata.X, values)

    gct = tmp_path / "toy.gct"
    rows = ["#1.3", "3\t2\t1\t1", "id\tpr_gene_symbol\ts1\ts2", "pert_iname\tna\tDMSO\tdrug"]
    rows += [
        f"{g}\t{s}\t{values[0, i]}\t{values[1, i]}"
        for i, (g, s) in enumerate(zip(genes, "ABC", strict=True))
    ]
    gct.write_text("\n".join(rows) + "\n")
    from_text = scgexp.data.read_gct(gct)
    np.testing.assert_allclose(from_text.X, values, rtol=1e-6)
    assert from_text.obs["pert_iname"].tolist() == ["DMSO", "drug"]
    with pytest.raises(InputError, match="not a GCTX"):
        scgexp.data.read_gctx(gct)
    with pytest.raises(InputError, match="read it with read_gctx"):
        scgexp.data.read_gct(path)

    # Version 1.2, gzipped as GEO ships it: identifiers stay text, NA is missing.
    v12 = "#1.2\n2\t2\nName\tDescription\ts1\ts2\n00123\tx\t1.5\tNA\nNA\ty\t2\t3\n"
    gz = tmp_path / "v12.gct.gz"
    gz.write_bytes(gzip.compress(v12.encode()))
    table = scgexp.data.read_gct(gz)
    assert list(table.var_names) == ["00123", "NA"]
    np.testing.assert_array_equal(table.X, [[1.5, 2.0], [np.nan, 3.0]])
    # Excel's #N/A, a tab at the end of every line, spaces in the size line: read as before.
    excel = v12.replace("\tNA\n", "\t#N/A\n").replace("\n", "\t\n").replace("2\t2", "2 \t 2")
    gct.write_text(excel.replace("#1.2\t", "#1.2"))
    np.testing.assert_array_equal(scgexp.data.read_gct(gct).X, table.X)
    gct.write_text(v12.replace("2\t2\n", "3\t2\n", 1))
    with pytest.raises(InputError, match="declares 3 genes on line 2 but holds 2"):
        scgexp.data.read_gct(gct)


def test_mark_and_read_landmarks(tmp_path):
    adata = scgexp.data.simulate_bulk_expression(n_samples=20, n_landmarks=5, n_targets=20)
    table = tmp_path / "gene_info.txt"
    table.write_text(
        "pr_gene_id\tpr_gene_symbol\tpr_is_lm\n1\tgene00000\t1\n2\tgene00001\t1\n3\tgene00002\t0\n"
        "4\tNOTTHERE\t1\n"
    )
    genes = scgexp.data.read_landmark_genes(table)
    assert genes == ["gene00000", "gene00001", "NOTTHERE"]
    # LINCS 2020 (geneinfo_beta.txt) marks landmarks in feature_space; pandas may rewrite 1 as 1.0.
    beta = tmp_path / "geneinfo_beta.txt"
    beta.write_text(
        "gene_id\tgene_symbol\tensembl_id\tfeature_space\n1\tgene00000\tE1\tlandmark\n"
        "2\tgene00002\tE2\tinferred\n3\tgene00001\tE3\tlandmark\n"
    )
    assert scgexp.data.read_landmark_genes(beta) == ["gene00000", "gene00001"]
    assert scgexp.data.read_landmark_genes(beta, id_column="ensembl_id") == ["E1", "E3"]
    spaced = tmp_path / "spaced.txt"  # stray spaces, as spreadsheets leave them
    spaced.write_text("pr_gene_symbol\tpr_is_lm\ngene00000 \t1\n gene00001\t1\ngene00002\t0\n")
    assert scgexp.data.read_landmark_genes(spaced) == ["gene00000", "gene00001"]
    table.write_text(table.read_text().replace("\t1\n", "\t1.0\n"))
    assert scgexp.data.read_landmark_genes(table) == genes
    table.write_text(table.read_text().replace("\t1.0\n", "\t0\n"))
    with pytest.raises(InputError, match="no row is marked as a landmark"):
        scgexp.data.read_landmark_genes(table)
    with pytest.warns(UserWarning, match="1 of 3 landmark genes are not in the data"):
        assert scgexp.data.mark_landmarks(adata, genes, key="lm") == 2
    assert adata.var["lm"].sum() == 2
    with pytest.raises(InputError, match="None of the"):
        scgexp.data.mark_landmarks(adata, ["X1", "X2"])
    with pytest.raises(InputError, match="a list of identifiers"):
        scgexp.data.mark_landmarks(adata, "gene00000")


@pytest.mark.parametrize(
    "option", [{"loss": "MSE"}, {"variance": "sample"}, {"activation": "sigmoid"}]
)
def test_unknown_options_are_refused(bulk, option):
    # "MSE" trained with the Gaussian loss, "sample" with one variance per gene, "sigmoid"
    # failed with a bare KeyError.
    adata = bulk[0][:50].copy()
    DGEX.setup_anndata(adata)
    (name,) = option
    with pytest.raises(InputError, match=f"^{name} must be "):
        DGEX(adata, **option)


def test_loading_with_unmarked_data_says_how_to_mark_it(bulk, trained, tmp_path):
    trained.save(tmp_path / "dgex")
    query = bulk[1][:30].copy()
    del query.var["landmark"]
    with pytest.raises(InputError, match=r"isin\(model.landmark_names.astype\(str\)\)"):
        DGEX.load(tmp_path / "dgex", adata=query)
    names = trained.landmark_names.astype(str)
    query.var["landmark"] = query.var_names.astype(str).isin(names)  # the recipe
    loaded = DGEX.load(tmp_path / "dgex", adata=query)
    np.testing.assert_allclose(loaded.predict().X, trained.predict(query).X, rtol=1e-5)


def test_integer_gene_ids_match_their_text_after_a_file_round_trip(bulk, tmp_path):
    # Entrez-style integer var_names come back from .h5ad as strings; they were never matched
    # (and the refusal crashed building its message).
    adata = bulk[0][:200].copy()
    adata.var_names = pd.Index(np.arange(adata.n_vars) + 1000)
    DGEX.setup_anndata(adata)
    model = DGEX(adata, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    adata.write_h5ad(tmp_path / "ids.h5ad")
    reread = anndata.read_h5ad(tmp_path / "ids.h5ad")
    np.testing.assert_allclose(model.predict(reread).X, model.predict(adata).X, rtol=1e-5)
    with pytest.raises(InputError, match="landmark genes are missing"):
        model.predict(reread[:, reread.var_names != str(model.landmark_names[0])].copy())
    model.save(tmp_path / "dgex")
    loaded = DGEX.load(tmp_path / "dgex", adata=reread)  # refused as "other landmarks"
    np.testing.assert_allclose(loaded.predict().X, model.predict(adata).X, rtol=1e-5)


def test_categorical_landmark_marks_work(bulk):
    adata = bulk[0][:50].copy()
    adata.var["landmark"] = adata.var["landmark"].astype("category")  # crashed inside pandas
    DGEX.setup_anndata(adata)
    assert len(DGEX(adata, n_hidden=8).landmark_names) == 60


def test_batch_size_keeps_every_sample(bulk, trained):
    """Blocks of batch_size samples, the last one partial, give what one block gives."""
    _, test = bulk  # 200 samples: blocks of 64 leave a partial block of 8
    whole = trained.predict(test, return_std=True)
    blocks = trained.predict(test, return_std=True, batch_size=64)
    assert blocks.shape == whole.shape
    np.testing.assert_allclose(blocks.X, whole.X, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(blocks.layers["std"], whole.layers["std"], rtol=1e-5, atol=1e-6)
    mapped = trained.predict(test, rank_map=True, batch_size=64).X  # ranks over all samples
    reference = trained.predict(test, rank_map=True).X
    np.testing.assert_allclose(mapped, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        trained.get_latent_representation(test, batch_size=64),
        trained.get_latent_representation(test),
        rtol=1e-5,
        atol=1e-5,
    )


def test_rank_map_ignores_the_input_scale_in_predict_and_latent(bulk, trained):
    """Rank mapping reads ranks only: a monotone transform of the landmarks changes nothing."""
    _, test = bulk
    shifted = test[:, test.var["landmark"]].copy()
    shifted.X = np.exp2(shifted.X / 2)
    np.testing.assert_allclose(
        trained.predict(shifted, rank_map=True).X,
        trained.predict(test, rank_map=True).X,
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        trained.get_latent_representation(shifted, rank_map=True),
        trained.get_latent_representation(test, rank_map=True),
        rtol=1e-5,
        atol=1e-5,
    )


def test_fill_missing_uses_the_training_mean(bulk, trained):
    _, test = bulk
    names = trained.landmark_names.astype(str)
    missing = names[:3]  # the model's first landmarks: a shifted quantile table would show
    partial = test[:, ~test.var_names.isin(missing)].copy()
    filled_by_hand = test.copy()
    mean = trained.module.landmark_mean.cpu().numpy()[:3]
    filled_by_hand.X[:, filled_by_hand.var_names.get_indexer(missing)] = mean
    with pytest.warns(UserWarning, match="filled with their training mean"):
        filled = trained.predict(partial, fill_missing=True)
    np.testing.assert_allclose(filled.X, trained.predict(filled_by_hand).X, rtol=1e-5, atol=1e-5)
    # With rank mapping, each present landmark is mapped onto its own training distribution.
    with pytest.warns(UserWarning, match="filled with their training mean"):
        mapped = trained.predict(partial, fill_missing=True, rank_map=True).X
    with pytest.warns(UserWarning, match="filled with their training mean"):
        reference = trained.predict(partial, fill_missing=True).X  # same units already
    target_sd = _targets(test).std(0).mean()
    assert np.abs(mapped - reference).mean() < 0.3 * target_sd


def test_untrained_model_refuses_to_predict():
    """As the other models' and scvi-tools' outputs: random weights are no predictions."""
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=40, n_landmarks=10, n_targets=20, n_programs=3, seed=0
    )
    DGEX.setup_anndata(adata)
    model = DGEX(adata)
    with pytest.raises(RuntimeError, match="untrained model"):
        model.predict(adata)
    with pytest.raises(RuntimeError, match="untrained model"):
        model.get_latent_representation(adata)


def test_predictions_are_without_dropout():
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=40, n_landmarks=10, n_targets=20, n_programs=3, seed=0
    )
    DGEX.setup_anndata(adata)
    model = DGEX(adata, dropout_rate=0.5)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.module.train()  # as a module left in training mode
    first = model.predict(adata).X
    model.module.train()
    np.testing.assert_array_equal(model.predict(adata).X, first)


def test_data_in_small_units_learn_as_well(bulk):
    """Values a million times smaller (e.g. fractions, not logs) standardise to the same spread."""
    train, test = bulk
    errors = {}
    for factor in (1.0, 1e-6):
        small_train, small_test = train.copy(), test.copy()
        small_train.X = small_train.X * factor
        small_test.X = small_test.X * factor
        DGEX.setup_anndata(small_train)
        model = DGEX(small_train, n_hidden=64)
        model.train(max_epochs=5, enable_progress_bar=False)
        predicted = model.predict(small_test[:, small_test.var["landmark"].to_numpy()].copy())
        truth = _targets(small_test)
        errors[factor] = np.abs(predicted.X - truth).mean() / np.abs(truth - truth.mean(0)).mean()
    assert errors[1e-6] < 1.05 * errors[1.0]
    assert errors[1e-6] < 0.8


def test_landmark_constant_in_training_is_read_at_its_training_value(bulk, warnings_as_errors):
    train, test = bulk
    train = train.copy()
    first = np.flatnonzero(train.var["landmark"])[:4]
    train.X[:, first] = 0.0  # e.g. not detected in the training samples
    DGEX.setup_anndata(train)
    with pytest.warns(UserWarning, match=r"4 landmark genes have one value in every training"):
        model = DGEX(train, n_hidden=64, linear_skip=False)
    model.train(max_epochs=2, enable_progress_bar=False)
    landmarks = test[:, test.var["landmark"].to_numpy()].copy()
    with warnings_as_errors():  # same units: the 7% constant ones are not "outside"
        measured = model.predict(landmarks).X
    landmarks.X[:, 0] = 0.0
    np.testing.assert_array_equal(model.predict(landmarks).X, measured)
    for rank_map in (True, "sample"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            latent = model.get_latent_representation(landmarks, rank_map=rank_map)
            landmarks_varied = landmarks.copy()
            landmarks_varied.X[:, 0] = test[:, landmarks.var_names[0]].X.ravel()
            np.testing.assert_allclose(
                model.get_latent_representation(landmarks_varied, rank_map=rank_map),
                latent,
                rtol=1e-5,
                atol=1e-6,
            )


def test_target_constant_in_training_warns_of_its_near_zero_std(bulk):
    # Real CellBench, 30 training cells: 8 targets all zero; predicted std about 1e-5 while 8%
    # of their held-out values were not zero, so ranking by std picked exactly these genes.
    train, test = bulk
    train = train.copy()
    flat = np.flatnonzero(~train.var["landmark"])[:3]
    train.X[:, flat] = 0.0
    DGEX.setup_anndata(train)
    with pytest.warns(UserWarning, match=r"3 target genes have one value in every training"):
        model = DGEX(train, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    std = model.predict(test[:, test.var["landmark"].to_numpy()].copy(), return_std=True)
    assert std.layers["std"][:, :3].max() < 1e-3 < np.median(std.layers["std"])


def test_constant_landmarks_are_judged_on_every_training_sample(warnings_as_errors):
    """Quantiles come from 50,000 sampled rows; the range (and constancy) from all of them."""
    adata = scgexp.data.simulate_bulk_expression(
        n_samples=50_100, n_landmarks=5, n_targets=5, n_programs=2, seed=0
    )
    unsampled = np.setdiff1d(
        np.arange(adata.n_obs), np.random.default_rng(0).choice(adata.n_obs, 50_000, False)
    )
    first = np.flatnonzero(adata.var["landmark"])[0]
    adata.X[:, first] = 0.0
    adata.X[unsampled, first] = 8.0  # varies only in rows the quantiles skip
    DGEX.setup_anndata(adata)
    with warnings_as_errors():
        model = DGEX(adata, n_hidden=8)
    assert model.module.landmark_quantiles[0, -1] == 8.0


def test_a_best_first_epoch_on_linear_data_names_the_ridge_start():
    """The ridge start already fits linear targets: not a learning rate too high."""
    rng = np.random.default_rng(0)
    landmarks = rng.normal(size=(150, 20))
    targets = 0.3 * landmarks @ rng.normal(size=(20, 200)) + rng.normal(size=(150, 200))
    adata = anndata.AnnData(np.c_[landmarks, targets].astype(np.float32))
    adata.var["landmark"] = np.arange(220) < 20
    DGEX.setup_anndata(adata)
    model = DGEX(adata)
    with pytest.warns(UserWarning, match="best after the first epoch") as caught:
        model.train(max_epochs=40, early_stopping=True, enable_progress_bar=False)
    message = next(str(w.message) for w in caught if "first epoch" in str(w.message))
    assert "starts from ridge regression" in message
    assert "may be too high" not in message


def _small_bulk(n_samples: int, seed: int = 0) -> anndata.AnnData:
    return scgexp.data.simulate_bulk_expression(
        n_samples=n_samples, n_landmarks=20, n_targets=40, n_programs=5, seed=seed
    )


def test_architecture_options_reach_the_network():
    """n_layers, dropout_rate, activation and linear_skip build the network they name."""
    adata = _small_bulk(60)
    DGEX.setup_anndata(adata)
    model = DGEX(
        adata, n_hidden=16, n_layers=3, dropout_rate=0.3, activation="relu", linear_skip=False
    )
    hidden = list(model.module.hidden.modules())
    assert sum(isinstance(m, torch.nn.Linear) for m in hidden) == 3
    assert {m.p for m in hidden if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert any(isinstance(m, torch.nn.ReLU) for m in hidden)
    assert not any(isinstance(m, torch.nn.Tanh) for m in hidden)
    assert model.module.skip is None
    model.train(max_epochs=1, enable_progress_bar=False)
    assert (model.get_latent_representation() >= 0).all()  # ReLU units


def test_train_passes_weight_decay_and_user_callbacks():
    adata = _small_bulk(60)
    DGEX.setup_anndata(adata)
    model = DGEX(adata, n_hidden=16)
    seen = []

    class RecordWeightDecay(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["weight_decay"])

    model.train(
        max_epochs=2, weight_decay=0.05, callbacks=[RecordWeightDecay()], enable_progress_bar=False
    )
    assert seen == [0.05, 0.05]


def test_training_again_continues_from_the_trained_weights():
    """A second train() must not fit the ridge start again (and shrink the trained output)."""
    adata = _small_bulk(80)
    DGEX.setup_anndata(adata)
    model = DGEX(adata, n_hidden=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(max_epochs=1, lr=1e-12, enable_progress_bar=False)
    for name in ("skip.weight", "mean_head.weight"):
        torch.testing.assert_close(
            model.module.state_dict()[name], before[name], atol=1e-6, rtol=1e-5
        )


def test_new_data_are_read_from_the_training_layer_when_they_have_it():
    adata = _small_bulk(120)
    adata.layers["log2"] = adata.X.copy()
    train, query = adata[:100].copy(), adata[100:].copy()
    DGEX.setup_anndata(train, layer="log2")
    model = DGEX(train, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    query.X = np.zeros_like(query.X)  # X holds something else: the layer is read
    np.testing.assert_array_equal(model.predict(query).X, model.predict(query, layer="log2").X)


def test_rank_map_maps_training_samples_exactly_onto_themselves():
    """101 training samples: the 101 stored quantiles are their order statistics, so mapping
    the training data changes no landmark value (the top rank maps onto the maximum)."""
    adata = _small_bulk(101)
    DGEX.setup_anndata(adata)
    model = DGEX(adata, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    np.testing.assert_allclose(model.predict(rank_map=True).X, model.predict().X, atol=1e-4)


@pytest.mark.filterwarnings("ignore:These landmark values do not look")
def test_rank_map_gives_ties_one_value(bulk, trained):
    """Tied values (zeros in single cells) share a rank: identical samples get one prediction,
    and a sample whose landmarks are all equal maps each onto the pooled training median."""
    _, test = bulk
    tied = test[:20].copy()
    tied.X[1] = tied.X[0]
    mapped = trained.predict(tied, rank_map=True).X
    np.testing.assert_allclose(mapped[1], mapped[0], rtol=1e-6)
    flat = tied[:1, tied.var["landmark"]].copy()
    flat.X[:] = 0.0
    quantiles = trained.module.landmark_quantiles.numpy()
    grid = np.linspace(0, 1, flat.n_vars)  # the pooled distribution at one point per landmark
    at_median = flat.copy()
    at_median.X[:] = np.interp(0.5, grid, np.quantile(quantiles.ravel(), grid))
    np.testing.assert_allclose(
        trained.predict(flat, rank_map="sample").X, trained.predict(at_median).X, atol=1e-5
    )


@pytest.mark.filterwarnings("ignore:These landmark values do not look")
def test_rank_map_sample_pools_only_landmarks_that_varied_in_training():
    """rank_map="sample" maps onto the pooled distribution of the landmarks it reads: those
    constant in training (here 5 of 20, all 0) must not pull it towards their value."""
    adata = _small_bulk(120)
    adata.X[:, np.flatnonzero(adata.var["landmark"])[:5]] = 0.0
    DGEX.setup_anndata(adata)
    with pytest.warns(UserWarning, match="5 landmark genes have one value"):
        model = DGEX(adata, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    quantiles = model.module.landmark_quantiles.numpy()
    varied = quantiles[:, 0] < quantiles[:, -1]
    flat = adata[:1, adata.var["landmark"]].copy()
    flat.X[:] = 1.0  # every landmark tied: each at the pooled median
    at_median = flat.copy()
    at_median.X[:] = np.quantile(quantiles[varied].ravel(), 0.5)
    np.testing.assert_allclose(
        model.predict(flat, rank_map="sample").X, model.predict(at_median).X, atol=1e-5
    )


def test_variance_start_is_not_overconfident_with_about_as_many_samples_as_landmarks():
    """42 samples, 40 landmarks: ridge by GCV nearly interpolates and GCV's error estimate runs
    low; the floor (the best fit with dof <= n/2) keeps the predicted std from collapsing."""
    rng = np.random.default_rng(0)
    landmarks = rng.normal(size=(400, 40))
    targets = landmarks @ rng.normal(size=(40, 100)) * 0.3 + rng.normal(size=(400, 100))
    adata = anndata.AnnData(np.c_[landmarks, targets].astype(np.float32))
    adata.var["landmark"] = np.arange(140) < 40
    train, test = adata[:42].copy(), adata[200:].copy()
    DGEX.setup_anndata(train)
    model = DGEX(train, n_hidden=16, variance="gene")
    model.train(  # a learning rate of ~0: the ridge start itself
        max_epochs=1, lr=1e-9, train_size=1.0, early_stopping=False, enable_progress_bar=False
    )
    out = model.predict(test, return_std=True)
    z = (test[:, 40:].X - out.X) / out.layers["std"]
    assert np.mean(np.abs(z) < 1.96) > 0.7  # 0.75 here; 0.66 without the floor
    assert z.std() < 4  # 2.2 here; 7.9 without the floor
