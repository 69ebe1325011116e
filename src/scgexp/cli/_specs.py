"""How the command line sets up each model and writes its results into AnnData/MuData."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd

from scgexp.data import InputError
from scgexp.model import DGEX, SAILER, MultiVAE, ZINBAutoencoder

logger = logging.getLogger(__name__)

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
    options
        The ``fit`` options the model reads; ``fit`` refuses the others.
    """

    cls: type
    key: str
    setup: Callable[[Any, dict], None]
    results: Callable[[Any, Any, dict], Any]
    options: tuple[str, ...]


def _require(adata, options: dict, name: str) -> None:
    key = options.get(name)
    if key is not None and key not in adata.obs:
        raise InputError(
            f"obs has no column {key!r} (--{name.replace('_', '-')}). "
            f"Available: {', '.join(adata.obs.columns) or 'none'}."
        )


def _setup_dgex(adata, options: dict) -> None:
    DGEX.setup_anndata(
        adata, layer=options.get("layer"), landmark_key=options.get("landmark_key") or "landmark"
    )


def _dgex_results(model: DGEX, adata: anndata.AnnData, options: dict) -> anndata.AnnData:
    """The landmarks the model used + predicted targets: the whole transcriptome, per sample.

    The landmark columns hold the values the targets were predicted from, so ``X`` is in the
    training units throughout: observed values, rank-mapped onto the training distribution with
    ``rank_map`` (the observed ones stay in the input file), and with ``fill_missing`` the
    training mean for landmarks absent from ``adata``, flagged in ``var["filled"]``, listed in
    ``uns["dgex"]`` and given their training scale (standard deviation + 1e-3 for log
    expression, as the model standardises them) in ``layers["dgex_std"]``.
    """
    flags = {"rank_map": options.get("rank_map", False)}
    flags["fill_missing"] = options.get("fill_missing", False)
    batches = model._landmark_batches(adata, options.get("layer"), batch_size=None, **flags)
    present = model._landmark_positions(adata) >= 0
    n_landmarks, n_targets = len(present), len(model.target_names)
    values = np.empty((adata.n_obs, n_landmarks + n_targets), np.float32)
    std = np.zeros_like(values)  # measured landmarks: no prediction error
    into = {"landmarks": values[:, :n_landmarks], "mean": values[:, n_landmarks:]}
    into["std"] = std[:, n_landmarks:]  # written in place, one rank mapping
    outputs = model._outputs(batches, ("landmarks", "mean", "std", "z"), into=into)
    out = anndata.AnnData(
        X=values,
        obs=adata.obs.copy(),
        var=pd.DataFrame(
            {
                "landmark": [True] * n_landmarks + [False] * n_targets,
                "filled": np.concatenate([~present, np.zeros(n_targets, dtype=bool)]),
            },
            index=list(model.landmark_names) + list(model.target_names),
        ),
        obsm=dict(adata.obsm),  # the same samples: per-sample annotations carry over
        obsp=dict(adata.obsp),
        uns=dict(adata.uns),
    )
    training_std = model.module.landmark_scale.cpu().numpy()
    std[:, np.flatnonzero(~present)] = training_std[~present]  # filled with the mean: its spread
    out.layers["dgex_std"] = std
    out.obsm["X_dgex"] = outputs["z"]
    out.uns["dgex"] = model._prediction_info(adata, flags["rank_map"])
    return out


def _setup_zinb(adata, options: dict) -> None:
    _require(adata, options, "batch_key")
    ZINBAutoencoder.setup_anndata(
        adata, layer=options.get("layer"), batch_key=options.get("batch_key")
    )


def _zinb_results(model: ZINBAutoencoder, adata: anndata.AnnData, options: dict):
    adata.obsm["X_zinb"] = model.get_latent_representation(adata)
    if not options.get("latent_only"):
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


_MODALITY_NAMES = {
    "rna_layer": ("rna", "gex", "rna-seq", "expression"),
    "atac_layer": ("atac", "peaks", "chromatin"),
    "protein_layer": ("prot", "protein", "adt", "cite"),
}


def multivae_modalities(mdata, options: dict) -> dict[str, str]:
    """Which modality of ``mdata`` holds RNA, ATAC and protein: from options, else by name."""
    chosen = {}
    for arg, names in _MODALITY_NAMES.items():
        given = options.get(arg.replace("_layer", "_mod"))
        if given is not None:
            if given not in mdata.mod:
                raise InputError(
                    f"The MuData has no modality {given!r} (it has {', '.join(mdata.mod)})."
                )
            chosen[arg] = given
            continue
        found = [m for m in mdata.mod if m.lower() in names]
        if found:
            chosen[arg] = found[0]
    if len(chosen) < 2:
        raise InputError(
            f"Found modalities {dict(chosen) or 'none'} among {list(mdata.mod)}; the command "
            "line trains MultiVAE on two or three. Name them with --rna-mod, --atac-mod, "
            "--protein-mod."
        )
    return chosen


def _setup_multivae(mdata, options: dict) -> None:
    _require(mdata, options, "batch_key")
    modalities = multivae_modalities(mdata, options)
    layer = options.get("layer")  # the counts layer of each used modality that has it
    with_layer = [arg for arg, mod in modalities.items() if layer in mdata.mod[mod].layers]
    if layer is not None:
        if not with_layer:
            names = list(modalities.values())
            raise InputError(f"No modality has a layer {layer!r} (--layer); modalities: {names}.")
        for arg in sorted(set(modalities) - set(with_layer)):
            logger.info("Modality %r has no layer %r: its X is used.", modalities[arg], layer)
    MultiVAE.setup_mudata(
        mdata,
        batch_key=options.get("batch_key"),
        modalities=modalities,
        **dict.fromkeys(with_layer, layer),
    )


def _multivae_results(model: MultiVAE, mdata, options: dict):
    mdata.obsm["X_multivae"] = model.get_latent_representation(mdata)
    modalities = model.registry_["setup_args"]["modalities"]
    outputs = {
        "rna_layer": (
            "rna",
            "multivae_normalized",
            partial(model.get_normalized_expression, library_size=1e4),  # as scanpy's
        ),
        "atac_layer": ("atac", "multivae_accessibility", model.get_normalized_accessibility),
        "protein_layer": ("protein", "multivae_denoised", model.get_normalized_protein),
    }
    added = options.get("added_modalities") or ()  # by --fill-missing: left out of the output
    for arg, (data_type, layer, method) in outputs.items():
        if arg not in modalities or modalities[arg] in added:
            continue
        mdata.obsm[f"X_multivae_{data_type}"] = model.get_latent_representation(
            mdata, modality=data_type
        )
        if not options.get("latent_only"):
            mdata.mod[modalities[arg]].layers[layer] = method(mdata, return_numpy=True)
    mdata.uns["multivae"] = {"modalities": {k: modalities[k] for k in outputs if k in modalities}}
    mdata.update()
    return mdata


MODELS: dict[str, ModelSpec] = {
    "dgex": ModelSpec(DGEX, "dgex", _setup_dgex, _dgex_results, ("layer", "landmark_key")),
    "zinb": ModelSpec(
        ZINBAutoencoder, "zinb", _setup_zinb, _zinb_results, ("layer", "batch_key", "latent_only")
    ),
    "sailer": ModelSpec(
        SAILER, "sailer", _setup_sailer, _sailer_results, ("layer", "batch_key", "latent_only")
    ),
    "multivae": ModelSpec(
        MultiVAE,
        "multivae",
        _setup_multivae,
        _multivae_results,
        ("layer", "batch_key", "rna_mod", "atac_mod", "protein_mod", "latent_only"),
    ),
}
"""Model names accepted by ``scgexp fit``, with the class each stands for."""


def spec_for_class(name: str) -> ModelSpec:
    """The spec of a saved model's class name (as stored in its registry)."""
    for spec in MODELS.values():
        if spec.cls.__name__ == name:
            return spec
    raise InputError(f"scgexp cannot apply a saved {name} model.")
