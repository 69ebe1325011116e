"""Reference mapping with scArches :cite:p:`Lotfollahi21`: fit a trained model to new batches.

scvi-tools' :class:`~scvi.model.base.ArchesMixin` loads the reference with pickle (not
``weights_only``) and picks the weights to train by scvi-tools' module names; this version reads
scgexp's safe saves and trains only what belongs to the new categories (see
``docs/query_mapping.md`` for the differences).
"""

from __future__ import annotations

import os
from copy import deepcopy
from typing import TYPE_CHECKING

import torch
from scvi.nn import FCLayers

from scgexp._compat import _initialize_model, parse_device_args
from scgexp._io import _load_weights, _read_saved_model
from scgexp.data._checks import InputError

if TYPE_CHECKING:
    from scvi._types import AnnOrMuData


class QueryMappingMixin:
    """``load_query_data``: a trained model extended to the query's new batches (scArches)."""

    #: Set by :meth:`load_query_data`: parameters of which only some entries train.
    _reference_entries: dict | None = None
    #: Set by :meth:`load_query_data`: lets MultiVAE train a query that lacks a modality.
    _mapped_query = False

    @classmethod
    def load_query_data(
        cls,
        adata: AnnOrMuData,
        reference_model,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        unfrozen: bool = False,
        freeze_dropout: bool = False,
    ):
        """A copy of a trained model, extended to the query's batches, to train on the query.

        The scArches procedure :cite:p:`Lotfollahi21`, as scvi-tools'
        :meth:`~scvi.model.SCVI.load_query_data` (reading scgexp's weights-only saves): the
        query is registered with the reference's setup and its new batch (and categorical
        covariate) categories are added. Weights that read the categories get columns for the
        new ones, starting at zero; other parameters kept per category (MultiVAE's protein
        background, an invariance adversary's outputs) start from a fresh initialisation.
        Training then changes only these new entries (the encoder's only with
        ``encode_covariates=True``) and any invariance adversary, which learns to recognise
        the new batches; everything else, batch-norm statistics included, stays the
        reference's. Query cells of known categories use the reference's weights, and the
        reference's categories decode as before (up to float rounding, about 1e-6). The new
        batches get decoder weights of their own, so decoded outputs (``get_normalized_*``,
        differential expression or accessibility) hold for them rather than for a known batch
        they were relabelled as.

        The reference model is left as it was. The freezing is not saved: a query model saved
        and loaded again trains in full (as in scvi-tools).

        Parameters
        ----------
        adata
            Query data: the reference's features in its order, its setup keys (``obs``
            columns, layers, modalities), any batch categories. Registered in place.
        reference_model
            A trained model of this class, or the folder it was saved to.
        accelerator, device
            Where to put the model, as in :meth:`scvi.model.base.BaseModelClass.load`.
        prefix
            The ``prefix`` the reference was saved with.
        unfrozen
            Train every weight (fine-tuning the whole network on the query alone), with batch
            norm as usual.
        freeze_dropout
            Switch dropout off (also with ``unfrozen``).

        Returns
        -------
        A model of this class on ``adata``, to ``train``: the frozen entries are zeroed in the
        gradients and put back after each minibatch
        (:class:`~scgexp.train.KeepReferenceEntries`), so any optimiser or weight decay leaves
        them as they were.

        Examples
        --------
        >>> query_model = ZINBAutoencoder.load_query_data(query, "reference_model")
        >>> query_model.train(max_epochs=100)
        >>> query.obsm["X_zinb"] = query_model.get_latent_representation()
        """
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        if isinstance(reference_model, str | os.PathLike):
            source = os.fspath(reference_model)
            attr_dict, state = _read_saved_model(source, prefix)
        elif isinstance(reference_model, cls):
            source = f"The reference {cls.__name__}"
            attr_dict = deepcopy(reference_model._saved_attributes())
            state = {
                k: v.detach().cpu().clone() for k, v in reference_model.module.state_dict().items()
            }
        else:
            raise InputError(
                f"reference_model must be a trained {cls.__name__} or the folder it was saved "
                f"to, not {type(reference_model).__name__}."
            )
        registry = cls._pop_registry(attr_dict, source, prefix, "load_query_data")
        if not attr_dict.get("is_trained_", False):
            raise InputError(
                f"{source} was not trained; train it on the reference data before mapping a "
                "query onto it."
            )
        # The reference's network, to read which weight columns belong to which category.
        reference = _initialize_model(cls, False, deepcopy(registry), deepcopy(attr_dict), None)
        _load_weights(reference.module, state, f"{source} holds a {cls.__name__}")
        before = _registration_entries(adata)
        cls._set_up_like_reference(adata, registry, extend_categories=True)
        model = _initialize_model(cls, adata, registry, attr_dict, None)
        new_parts = _load_with_new_categories(reference.module, model.module)
        if not unfrozen:
            if not any(mask.any() for mask in new_parts.values()):
                _put_back(adata, before)  # refused: the query as it was
                raise InputError(
                    "The query holds no batch or covariate category that the reference lacks "
                    "(or the reference reads none), so there is nothing to learn for it; "
                    f"use `{cls.__name__}.load(dir, adata=query)`, or load_query_data(..., "
                    "unfrozen=True) to fine-tune the whole model on the query."
                )
            model._reference_entries = _train_only_new_parts(model.module, new_parts)
        if freeze_dropout:
            for layer in model.module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        model._mapped_query = True
        model.is_trained_ = False
        model.to_device(torch_device)
        model.module.eval()
        return model


def _registration_entries(data) -> list[tuple]:
    """scvi-tools' ``_scvi_*`` entries in the obs and uns of ``data`` and its modalities."""
    return [
        (
            frame,
            {k: frame.obs[k].copy() for k in frame.obs if k.startswith("_scvi_")},
            {k: frame.uns[k] for k in frame.uns if k.startswith("_scvi_")},
        )
        for frame in (data, *getattr(data, "mod", {}).values())
    ]


def _put_back(data, entries: list[tuple]) -> None:
    """Undo a registration: the ``_scvi_*`` entries as :func:`_registration_entries` saw them."""
    for frame, obs, uns in entries:
        added = [k for k in frame.obs if k.startswith("_scvi_") and k not in obs]
        frame.obs.drop(columns=added, inplace=True)
        for key, column in obs.items():
            frame.obs[key] = column
        for key in [k for k in frame.uns if k.startswith("_scvi_") and k not in uns]:
            del frame.uns[key]
        frame.uns.update(uns)


def _category_columns(
    reference: FCLayers, query: FCLayers, n_in: int
) -> tuple[torch.Tensor, list[int]]:
    """Where a reference ``FCLayers`` layer's input columns lie in the query's layer.

    A layer reads ``[x | continuous | category one-hots...]``; a category gaining members
    widens its block, which moves the blocks after it. Also returns the columns of a
    reference category that had none (the only category of its key, which the layer skips).
    """
    n_fixed = n_in - sum(reference.n_cat_list)
    positions, unweighted = [torch.arange(n_fixed)], []
    start = n_fixed
    for old, new in zip(reference.n_cat_list, query.n_cat_list, strict=True):
        positions.append(start + torch.arange(old))
        if old == 0 and new > 0:
            unweighted.append(start)  # code 0: the reference's single category
        start += new
    return torch.cat(positions), unweighted


def _load_with_new_categories(reference: torch.nn.Module, query: torch.nn.Module) -> dict:
    """Load ``reference``'s weights into ``query`` (built for more categories).

    Columns of new categories in layers that read one-hot categories start at zero, so that
    the reference's categories decode as before; other parameters grown for new categories
    (an adversary's outputs, a per-batch background) keep ``query``'s initialisation there, as
    do parameters the reference lacks (an adversary head for a confounder it had one category
    of). Returns, per parameter name, a boolean mask of its new entries.
    """
    saved, fresh = reference.state_dict(), query.state_dict()
    placements = {}
    query_layers = dict(query.named_modules())
    for name, layer in reference.named_modules():
        if isinstance(layer, FCLayers):
            for index, block in enumerate(layer.fc_layers):
                if layer.inject_into_layer(index):
                    placements[f"{name}.fc_layers.Layer {index}.0.weight"] = _category_columns(
                        layer, query_layers[name], block[0].in_features
                    )
    loaded, new_parts = {}, {}
    for key, target in fresh.items():
        if key not in saved:
            loaded[key], new_parts[key] = target, torch.ones_like(target, dtype=torch.bool)
            continue
        tensor = saved[key]
        if tensor.shape == target.shape:
            loaded[key], new_parts[key] = tensor, torch.zeros_like(target, dtype=torch.bool)
            continue
        new = torch.ones_like(target, dtype=torch.bool)
        if key in placements:
            columns, unweighted = placements[key]
            grown = torch.zeros_like(target)
            grown[:, columns] = tensor
            new[:, columns] = False
            new[:, unweighted] = False  # stays zero, as the reference decoded it
        else:  # categories are appended at the end of each mapping
            grown = target.clone()
            grown[tuple(slice(0, size) for size in tensor.shape)] = tensor
            new[tuple(slice(0, size) for size in tensor.shape)] = False
        loaded[key], new_parts[key] = grown, new
    query.load_state_dict(loaded)
    return new_parts


def _train_only_new_parts(module: torch.nn.Module, new_parts: dict) -> dict:
    """Leave trainable only the entries of new categories, and any adversary in full.

    Returns, for parameters only partly new, their new entries and the values of the others
    (for :class:`~scgexp.train.KeepReferenceEntries`). Batch norm normalises with the
    reference's statistics, as at inference, even in training mode: normalising a minibatch of
    one batch by its own mean would subtract the very shift that the batch's new weights are to
    learn.
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm1d):
            layer.register_forward_pre_hook(_normalise_with_running_statistics)
    partly_new = {}
    for name, parameter in module.named_parameters():
        new = new_parts[name]
        adversary = name.startswith("invariance.")  # it learns to tell the new categories
        parameter.requires_grad = adversary or bool(new.any())
        if not adversary and new.any() and not new.all():
            partly_new[name] = (new, parameter.detach().clone())
    return partly_new


def _normalise_with_running_statistics(layer: torch.nn.BatchNorm1d, inputs) -> None:
    layer.training = False  # forward then uses (and keeps) the running statistics
