"""How the command line sets up each model and writes its results into AnnData/MuData."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd

from scgexp.data import InputError
from scgexp.model import DGEX, SAILER, ZINBAutoencoder

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class ModelSpec:
    """A model as the command line sees it.

    Attributes
    ----------
    cls
        The model class.
    key
        Short name used in output keys: ``obsm["X_<key>"]``, ``layers["<key>_..."]``.
    setup
        ``setup(data, options)`` registers the data with the model's setup method.
    results
        ``results(model, data, options)`` returns the data with the model's outputs added.
    """

    cls: type
    key: str
    setup: Callable[[Any, dict], None]
    results: Callable[[Any, Any, dict], Any]


def _require(adata, options: dict, name: str) -> None:
    key = options.get(name)
    if key is not None and key not in adata.obs:
        raise InputError(
            f"obs has no column {key!r} (--{name.replace('_', '-')}). "
            f"Available: {', '.join(adata.obs.columns) or 'none'}."
        )


def _setup_dgex(adata, options: dict) -> None:
    DGEX.setup_anndata(
        adata, layer=options.get("layer"), landmark_key=options.get("landmark_key", "landmark")
    )


def _dgex_results(model: DGEX, adata: anndata.AnnData, options: dict) -> anndata.AnnData:
    """Observed landmarks + predicted targets: the whole transcriptome, per sample."""
    flags = {"rank_map": options.get("rank_map", False)}
    predicted = model.predict(adata, return_std=True, **flags)
    layer = model.registry_["setup_args"].get("layer")
    source = adata.layers[layer] if layer in adata.layers else adata.X
    positions = adata.var_names.get_indexer(model.landmark_names)
    landmarks = source[:, positions]
    landmarks = landmarks.toarray() if hasattr(landmarks, "toarray") else np.asarray(landmarks)
    out = anndata.AnnData(
        X=np.hstack([landmarks, predicted.X]).astype(np.float32),
        obs=adata.obs.copy(),
        var=pd.DataFrame(
            {"landmark": [True] * len(model.landmark_names) + [False] * predicted.n_vars},
            index=list(model.landmark_names) + list(predicted.var_names),
        ),
        obsm=dict(adata.obsm),
        uns=dict(adata.uns),
    )
    out.layers["dgex_std"] = np.hstack(
        [np.zeros_like(landmarks, dtype=np.float32), predicted.layers["std"]]
    )
    out.obsm["X_dgex"] = model.get_latent_representation(adata, **flags)
    out.uns["dgex"] = {"landmarks_observed": True, "targets": "predicted"}
    return out


def _setup_zinb(adata, options: dict) -> None:
    _require(adata, options, "batch_key")
    ZINBAutoencoder.setup_anndata(
        adata, layer=options.get("layer"), batch_key=options.get("batch_key")
    )


def _zinb_results(model: ZINBAutoencoder, adata: anndata.AnnData, options: dict):
    adata.obsm["X_zinb"] = model.get_latent_representation(adata)
    adata.layers["zinb_denoised"] = model.get_normalized_expression(adata, return_numpy=True)
    return adata


def _setup_sailer(adata, options: dict) -> None:
    _require(adata, options, "batch_key")
    SAILER.setup_anndata(adata, layer=options.get("layer"), batch_key=options.get("batch_key"))


def _sailer_results(model: SAILER, adata: anndata.AnnData, options: dict):
    adata.obsm["X_sailer"] = model.get_latent_representation(adata)
    information = model.confounder_information(adata)
    adata.uns["sailer"] = {"confounder_information_nats": information.to_dict()}
    return adata


MODELS: dict[str, ModelSpec] = {
    "dgex": ModelSpec(DGEX, "dgex", _setup_dgex, _dgex_results),
    "zinb": ModelSpec(ZINBAutoencoder, "zinb", _setup_zinb, _zinb_results),
    "sailer": ModelSpec(SAILER, "sailer", _setup_sailer, _sailer_results),
}
"""Model names accepted by ``scgexp fit``, with the class each stands for."""


def spec_for_class(name: str) -> ModelSpec:
    """The spec of a saved model's class name (as stored in its registry)."""
    for spec in MODELS.values():
        if spec.cls.__name__ == name:
            return spec
    raise InputError(f"scgexp cannot apply a saved {name} model.")
