"""Every model refuses layer sizes torch would build silently wrong, and bad dropout rates."""

from __future__ import annotations

import pytest

import scgexp
from scgexp.data import InputError
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

# Tiny simulated data: its warnings (e.g. peaks open in no cell) are not the subject here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _dgex():
    adata = scgexp.data.simulate_bulk_expression(n_samples=40, n_landmarks=5, n_targets=10)
    DGEX.setup_anndata(adata, landmark_key="landmark")
    return DGEX, adata


def _zinb():
    adata = scgexp.data.simulate_scrna(n_cells=40, n_genes=30)
    ZINBAutoencoder.setup_anndata(adata)
    return ZINBAutoencoder, adata


def _sailer():
    adata = scgexp.data.simulate_scatac(n_cells=40, n_peaks=60)
    SAILER.setup_anndata(adata)
    return SAILER, adata


def _multivae():
    mdata = scgexp.data.simulate_multiome(n_cells=40)
    MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
    return MultiVAE, mdata


CASES = [
    (_dgex, {"n_layers": 0}),
    (_dgex, {"n_layers": -2}),
    (_dgex, {"n_hidden": 0}),
    (_dgex, {"n_hidden": 2.5}),
    (_zinb, {"n_latent": 0}),
    (_zinb, {"n_layers": 0}),
    (_sailer, {"n_hidden_inner": 0}),
    (_sailer, {"n_latent": True}),
    (_multivae, {"n_layers_decoder": 0}),
    (_multivae, {"n_hidden": -1}),
]


@pytest.mark.parametrize(("make", "sizes"), CASES)
def test_sizes_must_be_positive_whole_numbers(make, sizes):
    model_cls, data = make()
    ((name, value),) = sizes.items()
    with pytest.raises(InputError, match=f"{name} must be a positive whole number, not {value}"):
        model_cls(data, **sizes)


@pytest.mark.parametrize("make", [_dgex, _zinb, _sailer, _multivae])
@pytest.mark.parametrize("dropout_rate", [1.0, 1.5, -0.1])
def test_dropout_rate_must_lie_in_zero_to_one(make, dropout_rate):
    model_cls, data = make()
    with pytest.raises(InputError, match=r"dropout_rate must lie in \[0, 1\)"):
        model_cls(data, dropout_rate=dropout_rate)
    model_cls(data, dropout_rate=0)  # no dropout


def test_models_saved_before_the_check_still_load(tmp_path, monkeypatch):
    """scvi's FCLayers built one layer for n_layers=0: such saved models load as they were."""
    import scgexp.dgex._model

    model_cls, data = _dgex()
    with monkeypatch.context() as patched:
        patched.setattr(scgexp.dgex._model, "check_architecture", lambda *args, **kwargs: None)
        model = model_cls(data, n_layers=0, n_hidden=8)
    model.save(tmp_path / "old")
    loaded = model_cls.load(tmp_path / "old", adata=data)
    assert loaded.init_params_["non_kwargs"]["n_layers"] == 0
    with pytest.raises(InputError, match="n_layers must be a positive whole number"):
        model_cls(data, n_layers=0)
