"""Positional arguments mean what they mean in the nearest scvi-tools model."""

from __future__ import annotations

import inspect

import pytest
import scvi

import scgexp
from scgexp.data import InputError
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

# Same argument under another name: MultiVAE.load reads a MuData where MULTIVI's reads "adata".
RENAMED = {("MultiVAE", "load", "mdata"): "adata"}


def _positional(function) -> list[str]:
    parameters = inspect.signature(function).parameters.values()
    return [
        p.name
        for p in parameters
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", "cls")
    ]


@pytest.mark.parametrize(
    ("model_class", "scvi_class"),
    [
        (ZINBAutoencoder, scvi.model.SCVI),
        (SAILER, scvi.model.PEAKVI),
        (MultiVAE, scvi.model.MULTIVI),
        (DGEX, scvi.model.SCVI),
    ],
)
def test_positional_arguments_match_scvi_tools(model_class, scvi_class):
    # A call written for scvi-tools, e.g. get_likelihood_parameters(adata, None, 1) (n_samples
    # there), must not bind its values to other arguments here: past the shared leading
    # arguments, the rest are keyword-only.
    shared = ["__init__", *(name for name in dir(model_class) if not name.startswith("_"))]
    shared = [name for name in shared if callable(getattr(scvi_class, name, None))]
    assert {"get_latent_representation", "train", "load"} <= set(shared)
    for name in shared:
        ours = _positional(getattr(model_class, name))
        theirs = _positional(getattr(scvi_class, name))
        ours = [RENAMED.get((model_class.__name__, name, p), p) for p in ours]
        common = min(len(ours), len(theirs))
        assert ours[:common] == theirs[:common], (name, ours, theirs)


def _untrained(name: str):
    if name == "DGEX":
        adata = scgexp.data.simulate_bulk_expression(n_samples=60, n_landmarks=10, n_targets=20)
        DGEX.setup_anndata(adata)
        return DGEX(adata)
    if name == "MultiVAE":
        mdata = scgexp.data.simulate_multiome(n_cells=60, n_genes=30, n_peaks=40)
        MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
        return MultiVAE(mdata)
    if name == "SAILER":
        adata = scgexp.data.simulate_scatac(n_cells=60, n_peaks=200)
        SAILER.setup_anndata(adata)
        return SAILER(adata)
    adata = scgexp.data.simulate_scrna(n_cells=60, n_genes=30)
    ZINBAutoencoder.setup_anndata(adata)
    return ZINBAutoencoder(adata)


@pytest.mark.parametrize(
    ("model_name", "method", "keyword", "says"),
    [
        ("SAILER", "get_normalized_accessibility", "normalize_cells", "depth='median'"),
        ("SAILER", "get_normalized_accessibility", "threshold", r"values > 0\.5"),
        ("MultiVAE", "get_normalized_expression", "use_z_mean", "posterior mean"),
        ("MultiVAE", "get_normalized_accessibility", "normalize_cells", "typical training cell"),
        ("MultiVAE", "get_latent_representation", "give_means", "did you mean 'give_mean'"),
        ("DGEX", "predict", "gene_list", r"result\[:, genes\]"),
        ("DGEX", "predict", "indices", r"adata\[indices\]"),
        ("ZINBAutoencoder", "get_normalized_expression", "n_sample", "did you mean 'n_samples'"),
    ],
)
def test_unknown_keywords_are_refused_with_what_to_do(model_name, method, keyword, says):
    # scvi-tools' argument names that a method lacks gave Python's bare TypeError.
    model = _untrained(model_name)
    with pytest.raises(InputError, match=rf"{model_name}\.{method} has no argument .*{says}"):
        getattr(model, method)(**{keyword: True})
