from __future__ import annotations

import warnings

import anndata
import numpy as np
import pytest
import scvi
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager, AnnTorchDataset
from scvi.data.fields import LayerField
from sklearn.metrics import silhouette_score

from scgexp.data import InputError, simulate_scatac, simulate_scrna
from scgexp.dataloaders import (
    DataSplitter,
    InMemoryDataLoader,
    StreamingDataLoader,
    TensorStore,
    resolve_data_mode,
)
from scgexp.dataloaders import _loaders as loaders_module
from scgexp.dataloaders import _splitter as splitter_module
from scgexp.dataloaders._store import _CSRRows, estimate_nbytes
from scgexp.dgex import DGEX
from scgexp.sailer import SAILER
from scgexp.zinb import ZINBAutoencoder


@pytest.fixture
def adata():
    adata = simulate_scrna(n_cells=600, n_genes=150, seed=0)
    adata.obs["depth"] = np.log1p(np.asarray(adata.X.sum(1)).ravel())
    return adata


def _zinb(adata, **train_kwargs) -> ZINBAutoencoder:
    ZINBAutoencoder.setup_anndata(adata, batch_key="batch")
    model = ZINBAutoencoder(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(enable_progress_bar=False, **train_kwargs)
    return model


def test_store_batches_equal_scvi_dataset(adata):
    ZINBAutoencoder.setup_anndata(adata, batch_key="batch", size_factor_key="depth")
    manager = ZINBAutoencoder(adata).adata_manager
    rows = np.array([5, 0, 599, 5, 42])  # unsorted, repeated
    expected = AnnTorchDataset(manager)[rows]
    got = TensorStore(manager).batch(torch.as_tensor(rows))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == torch.as_tensor(value).dtype
        assert torch.equal(got[key], torch.as_tensor(value)), key


def test_store_handles_dense_and_empty_rows(adata):
    adata.X = adata.X.toarray()
    adata.X[3] = 0
    manager = AnnDataManager(fields=[LayerField(REGISTRY_KEYS.X_KEY, None)])
    manager.register_fields(adata)
    store = TensorStore(manager)
    assert torch.equal(store.batch(torch.tensor([3]))["X"], torch.zeros(1, adata.n_vars))
    assert torch.equal(store.batch(torch.tensor([1]))["X"][0], torch.as_tensor(adata.X[1]))


@pytest.mark.parametrize("model_cls", [ZINBAutoencoder, DGEX])
def test_memory_path_trains_exactly_like_standard_loader(adata, model_cls):
    latents = []
    for mode in ("standard", "memory"):
        scvi.settings.seed = 0
        if model_cls is DGEX:
            data = adata.copy()
            data.X = np.log1p(data.X.toarray())
            data.var["landmark"] = np.arange(data.n_vars) < 40
            DGEX.setup_anndata(data)
            model = DGEX(data)
            model.train(max_epochs=2, enable_progress_bar=False, data_mode=mode)
        else:
            model = _zinb(adata, max_epochs=2, data_mode=mode)
        latents.append(model.get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])


def test_memory_loader_samples_like_scvi_and_shards(adata):
    ZINBAutoencoder.setup_anndata(adata)
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(adata)
    store = TensorStore(manager)
    indices = np.arange(100, 400)
    torch.manual_seed(3)
    ours = [b["X"] for b in InMemoryDataLoader(store, indices, batch_size=64, shuffle=True)]
    torch.manual_seed(3)
    scvis = [b["X"] for b in scvi.dataloaders.AnnDataLoader(manager, indices, 64, shuffle=True)]
    assert len(ours) == len(scvis) == 5
    assert all(torch.equal(a, b) for a, b in zip(ours, scvis, strict=True))


def test_auto_mode_choice(adata, tmp_path, monkeypatch):
    ZINBAutoencoder.setup_anndata(adata)
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(adata)
    cpu = torch.device("cpu")
    assert resolve_data_mode(manager, "auto", cpu) == "memory"
    monkeypatch.setattr(splitter_module, "_free_bytes", lambda device: 1000)
    assert resolve_data_mode(manager, "auto", cpu) == "standard"
    assert resolve_data_mode(manager, "memory", cpu) == "memory"  # forced
    with pytest.raises(ValueError, match="data_mode must be one of"):
        resolve_data_mode(manager, "fast", cpu)

    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    ZINBAutoencoder.setup_anndata(backed)
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(backed)
    assert resolve_data_mode(manager, "auto", cpu) == "stream"
    with pytest.raises(ValueError, match="backed on disk"):
        resolve_data_mode(manager, "memory", cpu)


def test_stream_serves_every_row_once_per_epoch(adata, tmp_path):
    adata.obs["row"] = np.arange(1, adata.n_obs + 1, dtype=float)  # row number + 1
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    ZINBAutoencoder.setup_anndata(backed, size_factor_key="row")
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(backed)
    store = TensorStore(manager, skip_backed=True)
    indices = np.random.default_rng(0).permutation(adata.n_obs)[:500]
    loader = StreamingDataLoader(
        store, indices, batch_size=64, shuffle=True, block_rows=50, buffer_blocks=3
    )
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader) == 8
        rows = torch.cat([b["size_factor"].ravel() for b in batches]).long().numpy() - 1
        np.testing.assert_array_equal(np.sort(rows), np.sort(indices))
        # Each row's counts come with it, read from disk.
        first = batches[0]
        expected = adata.X[first["size_factor"].ravel().long().numpy() - 1].toarray()
        np.testing.assert_array_equal(first["X"].numpy(), expected)
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled


def test_backed_training_learns_like_in_memory(tmp_path):
    adata = simulate_scrna(n_cells=1500, n_genes=150, seed=2)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    scores = {}
    for name, data in (("memory", adata), ("stream", backed)):
        scvi.settings.seed = 0
        model = _zinb(data, max_epochs=15, batch_size=128)
        assert model.trainer.datamodule.resolved_mode == name
        scores[name] = silhouette_score(model.get_latent_representation(), adata.obs["cell_type"])
    assert scores["stream"] > 0.2
    assert scores["stream"] > scores["memory"] - 0.08
    assert not backed.X.__class__.__name__.startswith("csr")  # still on disk


def test_backed_rows_come_in_the_order_of_indices(adata, tmp_path):
    # scvi-tools sorts each minibatch's indices for backed data (h5py), so rows came back sorted
    # while their labels followed the request.
    model = _zinb(adata, max_epochs=1)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    indices = np.array([5, 2, 9, 0, 2])
    expected = model.get_normalized_expression(adata.copy(), indices=indices)
    got = model.get_normalized_expression(backed, indices=indices)
    assert list(got.index) == list(adata.obs_names[indices])
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        model.get_latent_representation(backed, indices=indices, batch_size=2),
        model.get_latent_representation(adata.copy(), indices=indices),
        rtol=1e-5,
        atol=1e-6,
    )
    view = backed[[0, 2, 5, 9]]  # anndata cannot copy a backed view, as scvi-tools would
    np.testing.assert_allclose(
        model.get_latent_representation(view),
        model.get_latent_representation(adata[[0, 2, 5, 9]].copy()),
        rtol=1e-5,
        atol=1e-6,
    )
    assert view.is_view
    assert view.isbacked
    peaks = simulate_scatac(n_cells=100, n_peaks=80, seed=0)
    SAILER.setup_anndata(peaks, batch_key="batch")
    sailer = SAILER(peaks, n_latent=4)
    sailer.is_trained_ = True  # the order matters, not the weights
    peaks.write_h5ad(tmp_path / "p.h5ad")
    backed_peaks = anndata.read_h5ad(tmp_path / "p.h5ad", backed="r")
    np.testing.assert_allclose(
        sailer.get_latent_representation(backed_peaks, indices=indices),
        sailer.get_latent_representation(peaks.copy(), indices=indices),
        rtol=1e-5,
        atol=1e-6,
    )


def test_standard_loader_trains_backed_data_as_in_memory(adata, tmp_path):
    # Backed minibatches came sorted, so dropout masks fell on other cells than in memory.
    adata.write_h5ad(tmp_path / "a.h5ad")
    latents = []
    for data in (adata, anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")):
        scvi.settings.seed = 0
        model = _zinb(data, max_epochs=2, data_mode="standard", train_size=0.8)
        latents.append(model.get_latent_representation())
    np.testing.assert_allclose(latents[0], latents[1], rtol=1e-4, atol=1e-4)


def test_indices_as_a_list_of_bools_empty_or_bad(adata):
    model = _zinb(adata, max_epochs=1)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[[3, 50, 120]] = True
    expected = model.get_normalized_expression(indices=np.flatnonzero(mask))
    frame = model.get_normalized_expression(indices=mask.tolist())
    assert list(frame.index) == list(expected.index)
    np.testing.assert_allclose(frame.to_numpy(), expected.to_numpy(), rtol=1e-5)
    for empty in ([], np.zeros(adata.n_obs, dtype=bool)):
        with pytest.raises(InputError, match="indices selects no cells"):
            model.get_latent_representation(indices=empty)
    # Negative positions count from the end, as in numpy; small integer types do not overflow.
    expected = model.get_latent_representation(indices=[3, adata.n_obs - 1])
    for indices in ([3, -1], np.array([3, -1], dtype=np.int8)):
        np.testing.assert_allclose(model.get_latent_representation(indices=indices), expected)
    # scvi-tools read a shorter mask as the first cells, names and fractions failed in numpy.
    bad = {
        f"boolean mask of length 50, but the data have {adata.n_obs} cells": np.ones(50, bool),
        "holds text values": list(adata.obs_names[:3]),
        "holds float64 values": [0.0, 1.5],
        "out of range": [adata.n_obs],
        "must be a list or array of cells": 3,
    }
    for message, indices in bad.items():
        with pytest.raises(InputError, match=message):
            model.get_latent_representation(indices=indices)
    with pytest.raises(InputError, match="boolean mask of length 50"):
        model.get_normalized_expression(indices=np.ones(50, bool))
    np.testing.assert_allclose(  # -n_obs is the first cell; one further is refused, not wrapped
        model.get_latent_representation(indices=[-adata.n_obs]),
        model.get_latent_representation(indices=[0]),
    )
    with pytest.raises(InputError, match="out of range"):
        model.get_latent_representation(indices=[-adata.n_obs - 1])


def test_backed_csc_is_refused(adata, tmp_path):
    adata.X = adata.X.tocsc()
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    with pytest.raises(InputError, match="column by column"):
        ZINBAutoencoder.setup_anndata(backed)


def test_splitter_rejects_unknown_mode(adata):
    ZINBAutoencoder.setup_anndata(adata)
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(adata)
    with pytest.raises(ValueError, match="data_mode"):
        DataSplitter(manager, data_mode="gpu")


def test_torch_row_gather_equals_scipy(adata):
    from scgexp.dataloaders._store import _CSRRows

    matrix = adata.X.astype(np.float64)
    matrix[7] = 0
    matrix.eliminate_zeros()
    rows = torch.tensor([7, 3, 3, 599, 0])
    on_device = _CSRRows(matrix, np.float32, torch.device("cpu"), on_host=False)
    on_host = _CSRRows(matrix, np.float32, torch.device("cpu"))
    expected = torch.as_tensor(matrix[rows.numpy()].toarray().astype(np.float32))
    assert torch.equal(on_device.rows(rows), expected)
    assert torch.equal(on_host.rows(rows), expected)


def _multivae(mdata, **train_kwargs):
    from scgexp.multivae import MultiVAE

    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    model = MultiVAE(mdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, enable_progress_bar=False, **train_kwargs)
    return model


def test_multivae_memory_path_equals_standard_and_streams_backed_mudata(tmp_path):
    import mudata

    from scgexp.data import simulate_multiome

    mdata = simulate_multiome(n_cells=300, seed=0)
    latents = []
    for mode in ("standard", "memory"):
        scvi.settings.seed = 0
        latents.append(_multivae(mdata, data_mode=mode).get_latent_representation())
    np.testing.assert_array_equal(latents[0], latents[1])

    mdata.write(tmp_path / "m.h5mu")
    backed = mudata.read_h5mu(tmp_path / "m.h5mu", backed=True)
    model = _multivae(backed)
    assert model.trainer.datamodule.resolved_mode == "stream"
    assert np.isfinite(model.get_latent_representation()).all()


@pytest.fixture
def backed_store(tmp_path):
    adata = simulate_scrna(n_cells=600, n_genes=50, seed=0)
    adata.obs["row"] = np.arange(1, adata.n_obs + 1, dtype=float)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    ZINBAutoencoder.setup_anndata(backed, size_factor_key="row")
    manager = ZINBAutoencoder._get_most_recent_anndata_manager(backed)
    return TensorStore(manager, skip_backed=True)


def _rows(loader):
    return torch.cat([b["size_factor"].ravel() for b in loader]).long().numpy() - 1


def test_stream_without_shuffle_serves_every_row_in_order(backed_store):
    indices = np.arange(0, 600, 2)  # 25 of our rows per 50-row block < batch_size
    loader = StreamingDataLoader(backed_store, indices, batch_size=64, block_rows=50)
    np.testing.assert_array_equal(_rows(loader), indices)


def test_loaders_refuse_misspelt_and_impossible_arguments(backed_store, adata):
    with pytest.raises(InputError, match=r"\['bufer_blocks'\] .*takes block_rows and"):
        StreamingDataLoader(backed_store, np.arange(10), bufer_blocks=4)
    for name in ("block_rows", "buffer_blocks"):
        with pytest.raises(InputError, match=f"{name} must be a whole number of at least 1"):
            StreamingDataLoader(backed_store, np.arange(10), **{name: 0})
    ZINBAutoencoder.setup_anndata(adata)
    model = ZINBAutoencoder(adata)
    with pytest.raises(InputError, match=r"\['block_size'\]"):  # scvi-tools' loader: TypeError
        model.train(max_epochs=1, data_mode="memory", datasplitter_kwargs={"block_size": 9})
    loader = InMemoryDataLoader(  # what scvi-tools' loader takes passes
        TensorStore(model.adata_manager), np.arange(10), num_workers=0, pin_memory=False
    )
    assert len(next(iter(loader))["X"]) == 10


def test_stream_keeps_a_one_row_last_batch(backed_store):
    loader = StreamingDataLoader(backed_store, np.arange(129), batch_size=64, block_rows=1000)
    assert [len(b["X"]) for b in loader] == [64, 64, 1]


def test_stream_shuffle_follows_torch_seed(backed_store):
    def order(seed):
        torch.manual_seed(seed)
        return _rows(
            StreamingDataLoader(
                backed_store, np.arange(600), 64, shuffle=True, block_rows=50, buffer_blocks=3
            )
        )

    np.testing.assert_array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_stream_shares_rows_across_ranks_in_equal_steps(backed_store, monkeypatch, world, shuffle):
    # 61 scattered rows (a validation split): blocks hold different numbers of them.
    indices = np.sort(np.random.default_rng(0).choice(600, 61, replace=False))
    served, steps = [], set()
    for rank in range(world):
        monkeypatch.setattr(loaders_module, "_replicas", lambda r=rank: (r, world))
        loader = StreamingDataLoader(
            backed_store,
            indices,
            16,
            shuffle=shuffle,
            distributed_sampler=True,
            block_rows=50,
            buffer_blocks=2,
        )
        torch.manual_seed(0)  # as seeded on every process
        batches = list(loader)
        steps.add((len(loader), len(batches)))
        served.append(
            np.concatenate([b["size_factor"].ravel().long().numpy() - 1 for b in batches])
        )
    assert len(steps) == 1  # every process the same number of steps, as len() says
    assert all(len(rows) <= -(-61 // world) for rows in served)  # at most its share
    everything = np.concatenate(served)
    assert set(everything) == set(indices)  # every row; re-read only to make equal steps
    assert len(everything) - len(indices) <= world * -(-61 // world) - 61


def test_device_row_gather_sums_duplicate_entries():
    matrix = sparse.csr_matrix(
        (np.array([1.0, 2.0]), np.array([0, 0]), np.array([0, 2])), shape=(1, 3)
    )
    assert not matrix.has_canonical_format
    rows = _CSRRows(matrix, np.float32, torch.device("cpu"), on_host=False).rows(torch.tensor([0]))
    assert rows.tolist() == [[3.0, 0.0, 0.0]]


def _manager(n_cells=600):
    adata = simulate_scrna(n_cells=n_cells, n_genes=50, seed=0)
    ZINBAutoencoder.setup_anndata(adata)
    return adata, ZINBAutoencoder._get_most_recent_anndata_manager(adata)


def test_estimate_counts_sparse_bytes_and_auto_threshold(monkeypatch):
    adata, manager = _manager()
    nnz = adata.X.nnz
    assert estimate_nbytes(manager) >= nnz * (4 + 8) + (adata.n_obs + 1) * 8
    need = estimate_nbytes(manager)
    monkeypatch.setattr(splitter_module, "_free_bytes", lambda device: int(1.5 * need))
    assert splitter_module.resolve_data_mode(manager, "auto", torch.device("cpu")) == "standard"


def test_the_training_copy_of_the_data_is_freed_after_training(adata):
    # On a GPU the in-memory copy lives on the device: kept by model.trainer, it stayed there.
    model = _zinb(adata, max_epochs=2, data_mode="memory")
    assert model.trainer.datamodule.store is None
    model.train(max_epochs=1, data_mode="memory", enable_progress_bar=False)  # loaded again
    assert len(model.history["train_loss"]) == 3  # (the history goes on)
    assert model.trainer.datamodule.store is None


def test_memory_mode_survives_a_one_cell_last_batch():
    adata = simulate_scrna(n_cells=143, n_genes=50, seed=0)  # 129 training cells
    ZINBAutoencoder.setup_anndata(adata)
    model = ZINBAutoencoder(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=1, batch_size=128, data_mode="memory", enable_progress_bar=False)


def test_validation_loader_serves_all_cells_even_with_drop_last():
    _, manager = _manager()
    splitter = DataSplitter(manager, data_mode="memory", batch_size=64, drop_last=True)
    splitter.setup()
    assert sum(len(b["X"]) for b in splitter.val_dataloader()) == len(splitter.val_idx)


def test_stream_shuffle_reorders_the_blocks_of_the_file(tmp_path):
    """With shuffle, the first minibatch may come from any block of the file, not the first."""
    adata = simulate_scrna(n_cells=600, n_genes=10, seed=0)
    adata.obs["row"] = np.arange(1, adata.n_obs + 1, dtype=float)  # read back as size factors
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    ZINBAutoencoder.setup_anndata(backed, size_factor_key="row")
    store = TensorStore(ZINBAutoencoder._get_most_recent_anndata_manager(backed), skip_backed=True)
    first_blocks = set()
    for seed in range(5):
        torch.manual_seed(seed)
        loader = StreamingDataLoader(
            store, np.arange(600), 50, shuffle=True, block_rows=50, buffer_blocks=1
        )
        rows = next(iter(loader))["size_factor"].ravel().long().numpy() - 1
        first_blocks |= set(rows // 50)
    backed.file.close()
    assert len(first_blocks) > 1


def test_memory_store_leaves_a_users_unsummed_csr_alone():
    """A CSR with duplicate entries (as some readers leave it) is summed in a copy only."""
    adata = simulate_scrna(n_cells=20, n_genes=6, n_batches=1, seed=0)
    dense = adata.layers["counts"].toarray()
    data, indices, indptr = [], [], [0]
    for row in dense:  # each count stored as two entries
        columns = np.flatnonzero(row)
        data += [*(row[columns] - 1), *np.ones(len(columns))]
        indices += [*columns, *columns]
        indptr.append(len(indices))
    matrix = sparse.csr_matrix(
        (np.asarray(data, np.float32), np.asarray(indices), np.asarray(indptr)), shape=dense.shape
    )
    matrix.has_canonical_format = False
    adata.X = matrix
    before = (matrix.data.copy(), matrix.indices.copy(), matrix.indptr.copy())
    ZINBAutoencoder.setup_anndata(adata)
    store = TensorStore(ZINBAutoencoder._get_most_recent_anndata_manager(adata))
    np.testing.assert_array_equal(store.batch(torch.arange(20))["X"].numpy(), dense)
    for stored, kept in zip((matrix.data, matrix.indices, matrix.indptr), before, strict=True):
        np.testing.assert_array_equal(stored, kept)


def test_store_hands_torch_writable_copies_of_read_only_obs_columns(adata, copy_on_write):
    ZINBAutoencoder.setup_anndata(adata, batch_key="batch", size_factor_key="depth")
    manager = ZINBAutoencoder(adata).adata_manager
    adata.obs["row"] = np.arange(adata.n_obs)
    with copy_on_write() as writable:
        store = TensorStore(manager)
        rows = adata.obs["row"].to_numpy()[10:20]  # a user's indices, read-only under pandas 3
        loader = InMemoryDataLoader(store, rows, batch_size=4)
    assert writable
    assert all(writable)
    np.testing.assert_allclose(
        store.batch(torch.arange(3))[REGISTRY_KEYS.SIZE_FACTOR_KEY].ravel(),
        adata.obs["depth"].to_numpy()[:3],
        rtol=1e-6,
    )
    first = next(iter(loader))[REGISTRY_KEYS.SIZE_FACTOR_KEY].ravel()
    np.testing.assert_allclose(first, adata.obs["depth"].to_numpy()[10:14], rtol=1e-6)
