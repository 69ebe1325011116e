"""Reference mapping with scArches :cite:p:`Lotfollahi21`: fit a trained model to new batches.

scvi-tools' :class:`~scvi.model.base.ArchesMixin` loads the reference with pickle (not
``weights_only``) and picks the weights to train by scvi-tools' module names; this version reads
scgexp's safe saves and picks them by role: the weights that read a batch or categorical
covariate.
"""

from __future__ import annotations

import os
from copy import deepcopy
from typing import TYPE_CHECKING

import torch
from scvi.nn import FCLayers

from scgexp._compat import _initialize_model, parse_device_args
from scgexp._io import _read_saved_model
from scgexp.data._checks import InputError

if TYPE_CHECKING:
    from scvi._types import AnnOrMuData


class QueryMappingMixin:
    """``load_query_data``: a trained model extended to the query's new batches (scArches)."""

    #: Set by :meth:`load_query_data`: only weights reading covariate categories train.
    _frozen_for_query = False

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
        query is registered with the reference's setup, new batch (and categorical covariate)
        categories are added, and the weights that read those categories get one new column
        each, starting at zero, so that the reference's categories decode exactly as before.
        After ``train``, only the weights that read a batch or covariate category have
        changed (the encoder's only with ``encode_covariates=True``); the rest of the network,
        its batch-norm statistics, the output heads and the dispersions stay the reference's.
        The query's new batches then get decoder weights of their own, so decoded outputs
        (``get_normalized_*``, differential expression or accessibility) hold for them rather
        than for a reference batch they were relabelled as. An invariance adversary, which
        predicts the batch, is trained in full.

        The reference model is left as it was.

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
            Train every weight (fine-tuning the whole network on the query alone).
        freeze_dropout
            Switch dropout off while the query trains.

        Returns
        -------
        A model of this class on ``adata``, to ``train`` (its weight decay defaults to 0: decay
        would shrink the weights kept frozen).

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
            attr_dict = deepcopy(
                {
                    name: value
                    for name, value in reference_model._get_user_attributes()
                    if name.endswith("_") and not name.startswith("_")
                }
            )
            state = {
                k: v.detach().cpu().clone() for k, v in reference_model.module.state_dict().items()
            }
        else:
            raise InputError(
                f"reference_model must be a trained {cls.__name__} or the folder it was saved "
                f"to, not {type(reference_model).__name__}."
            )
        if not attr_dict.get("is_trained_", False):
            raise InputError(
                f"{source} was not trained; train it on the reference data before mapping a "
                "query onto it."
            )
        registry = cls._pop_registry(attr_dict, source, prefix)
        cls._set_up_like_reference(adata, registry, extend_categories=True)
        model = _initialize_model(cls, adata, registry, attr_dict, None)
        model.module.load_state_dict(_with_new_categories(state, model.module.state_dict()))
        if not unfrozen:
            _freeze_all_but_covariate_weights(model.module, freeze_dropout)
            model._frozen_for_query = True
        model.is_trained_ = False
        model.to_device(torch_device)
        model.module.eval()
        return model

    def _weight_decay(self, weight_decay: float | None, default: float) -> float:
        """``train``'s weight decay: ``default``, or 0 for a model frozen for a query."""
        if weight_decay is None:
            return 0.0 if self._frozen_for_query else default
        return weight_decay


def _with_new_categories(saved: dict, fresh: dict) -> dict:
    """``saved`` weights grown to ``fresh``'s shapes (new categories) with zeros.

    A weight reading one-hot categories gains zero columns; an adversary's output gains zero
    rows (logits of the new categories), which it then learns.
    """
    grown = {}
    for key, tensor in saved.items():
        target = fresh[key]
        if tensor.shape != target.shape:
            if tensor.dim() != target.dim() or any(
                old > new for old, new in zip(tensor.shape, target.shape, strict=True)
            ):
                raise InputError(
                    f"The reference's {key} has shape {tuple(tensor.shape)}, which the query's "
                    f"setup cannot extend to {tuple(target.shape)}."
                )
            padded = torch.zeros_like(target)
            padded[tuple(slice(0, size) for size in tensor.shape)] = tensor
            tensor = padded
        grown[key] = tensor
    return grown


def _freeze_all_but_covariate_weights(module: torch.nn.Module, freeze_dropout: bool) -> None:
    """Leave trainable only the weights that read covariate categories, and any adversary.

    scvi-tools' :meth:`~scvi.nn.FCLayers.set_online_update_hooks` zero the gradient of every
    other column. Batch norm normalises with the reference's statistics, as at inference, even
    in training mode: normalising a minibatch of one batch by its own mean would subtract the
    very shift that the batch's new weights are to learn.
    """
    for layer in module.modules():
        if isinstance(layer, FCLayers) and sum(layer.n_cat_list) > 0:
            layer.set_online_update_hooks(hook_first_layer=True)
        if isinstance(layer, torch.nn.BatchNorm1d):
            layer.register_forward_pre_hook(_normalise_with_running_statistics)
        if freeze_dropout and isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    adversary = getattr(module, "invariance", None)
    adversary_parameters = set() if adversary is None else {id(p) for p in adversary.parameters()}
    for parameter in module.parameters():
        parameter.requires_grad = id(parameter) in adversary_parameters
    for layer in module.modules():
        if isinstance(layer, FCLayers) and sum(layer.n_cat_list) > 0:
            for index, block in enumerate(layer.fc_layers):
                if layer.inject_into_layer(index):
                    block[0].weight.requires_grad = True


def _normalise_with_running_statistics(layer: torch.nn.BatchNorm1d, inputs) -> None:
    layer.training = False  # forward then uses (and keeps) the running statistics
