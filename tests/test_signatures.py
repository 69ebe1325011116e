"""Positional arguments mean what they mean in the nearest scvi-tools model."""

from __future__ import annotations

import inspect

import pytest
import scvi

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
