"""Torch module of SAILER: a conditional VAE for scATAC-seq with an invariant latent space."""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.nn.functional import binary_cross_entropy_with_logits

from scgexp._errors import InputError
from scgexp.data._checks import check_option
from scgexp.nn import Invariance, InvarianceInputs, InvarianceMethod

logger = logging.getLogger(__name__)

_LOG_RATE_MAX = 15.0


class SAILERModule(BaseModuleClass):
    """Conditional VAE of SAILER :cite:p:`Cao2021` with a confounder-invariant latent.

    The encoder reads the binarised peaks (``"bernoulli"``) or ``log1p`` counts
    (``"poisson"``) and returns a diagonal Gaussian posterior ``q(z | x)``. The decoder gets
    ``z`` together with every confounder: the standardised log number of open peaks (always),
    the continuous covariates (standardised), the batch and the categorical covariates (one-hot,
    through :class:`scvi.nn.FCLayers`). It outputs peak logits: the probability that a peak is
    open, or the log rate of its fragment count at a reference total count (``"poisson"``;
    the cell's total count enters as an offset). The invariance component (:mod:`scgexp.nn`)
    sees the same confounders.

    Parameters
    ----------
    n_input
        Number of peaks.
    n_batch
        Number of batches (1: no batch).
    n_cats_per_cov
        Categories of each extra categorical covariate.
    n_continuous_cov
        Number of extra continuous covariates (read depth is added to them).
    n_hidden
        Units of the first encoder layer and of the last decoder layer (SAILER: 1000).
    n_hidden_inner
        Units of the inner encoder and decoder layers (SAILER: 100).
    n_latent
        Latent dimensions (SAILER: 10).
    dropout_rate
        Dropout on hidden units.
    likelihood
        ``"bernoulli"`` (binarised peaks) or ``"poisson"`` (fragment counts).
    invariance
        ``"mi"``, ``"adversarial"``, ``"both"`` or ``None`` (see :class:`scgexp.nn.Invariance`).
    invariance_weight
        Weight ``λ`` of the invariance penalty, per cell (SAILER's λ = 1 is about
        1 / batch size here; see :class:`~scgexp.model.SAILER`).
    invariance_kwargs
        Other :class:`scgexp.nn.Invariance` arguments.
    normalize_input
        Divide each cell's encoder input by its total (then scale to the training cells' mean
        total), so that the encoder cannot read the depth off the number of open peaks.
        ``False``: the raw binarised peaks, as in SAILER. Ignored with ``encoder_input="lsi"``.
    encoder_input
        ``"peaks"``: the encoder reads every peak (as set by ``normalize_input``). ``"lsi"``:
        it reads the cell's LSI instead, ``n_lsi_components`` components of the TF-IDF of its
        binarised peaks projected as the training cells' truncated SVD found (first component
        dropped); the model sets the projection (buffers ``lsi_idf``, ``lsi_components``).
    n_lsi_components
        LSI components the encoder reads (``encoder_input="lsi"`` only; default 20, as the
        benchmark's LSI).
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_cats_per_cov: list[int] | None = None,
        n_continuous_cov: int = 0,
        n_hidden: int = 256,
        n_hidden_inner: int = 100,
        n_latent: int = 10,
        dropout_rate: float = 0.0,
        likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        invariance: InvarianceMethod | None = "mi",
        invariance_weight: float = 1.0,
        invariance_kwargs: dict | None = None,
        normalize_input: bool = True,
        encoder_input: Literal["peaks", "lsi"] = "peaks",
        n_lsi_components: int | None = None,
    ):
        super().__init__()
        check_option("likelihood", likelihood, ("bernoulli", "poisson"))
        check_option("encoder_input", encoder_input, ("peaks", "lsi"))
        if encoder_input == "peaks" and n_lsi_components is not None:
            raise InputError('n_lsi_components applies only with encoder_input="lsi".')
        n_lsi_components = 20 if n_lsi_components is None else n_lsi_components
        if not (isinstance(n_lsi_components, int) and n_lsi_components >= 1):
            raise InputError(
                f"n_lsi_components must be a positive integer, not {n_lsi_components!r}."
            )
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_latent = n_latent
        self.likelihood = likelihood
        self.n_cats_per_cov = list(n_cats_per_cov or [])
        self.n_continuous = 1 + n_continuous_cov  # read depth first
        cat_list = [n_batch, *self.n_cats_per_cov]
        activation = partial(nn.LeakyReLU, 0.2)
        self.encoder_input = encoder_input
        if encoder_input == "lsi":
            self.register_buffer("lsi_idf", torch.ones(n_input))
            self.register_buffer("lsi_components", torch.zeros(n_lsi_components, n_input))
        self.encoder = FCLayers(
            n_in=n_lsi_components if encoder_input == "lsi" else n_input,
            n_out=n_hidden_inner,
            n_layers=2,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=True,
            activation_fn=activation,
        )
        self.mean_encoder = nn.Linear(n_hidden_inner, n_latent)
        self.var_encoder = nn.Linear(n_hidden_inner, n_latent)
        self.decoder = FCLayers(
            n_in=n_latent + self.n_continuous,
            n_out=n_hidden,
            n_cat_list=cat_list,
            n_layers=2,
            n_hidden=n_hidden_inner,
            dropout_rate=dropout_rate,
            use_batch_norm=True,
            activation_fn=activation,
        )
        self.output = nn.Linear(n_hidden, n_input)
        # Standardisation of the continuous confounders with the training cells' statistics.
        self.register_buffer("confounder_mean", torch.zeros(self.n_continuous))
        self.register_buffer("confounder_scale", torch.ones(self.n_continuous))
        self.register_buffer("mean_log_total", torch.zeros(()))
        self.register_buffer("mean_input_total", torch.ones(()))
        self.normalize_input = normalize_input
        self.invariance = None
        if invariance is not None:
            self.invariance = Invariance(
                n_latent=n_latent,
                n_cats_per_key=cat_list,
                n_continuous=self.n_continuous,
                method=invariance,
                weight=invariance_weight,
                **(invariance_kwargs or {}),
            )

    # --- confounders -------------------------------------------------------------------------
    def _confounders(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = tensors[REGISTRY_KEYS.X_KEY]
        n_open = (x > 0).sum(-1, keepdim=True).float()
        continuous = [torch.log(n_open.clamp_min(1.0))]
        cont_covs = tensors.get(REGISTRY_KEYS.CONT_COVS_KEY)
        if cont_covs is not None:
            continuous.append(cont_covs.float())
        batch_index = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        if batch_index is None:
            batch_index = torch.zeros_like(n_open, dtype=torch.long)
        return {
            "batch_index": batch_index.long(),
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            "cont_confounders": torch.cat(continuous, dim=-1),
            "log_total": torch.log(x.sum(-1, keepdim=True).clamp_min(1.0)),
        }

    def standardise(self, cont_confounders: torch.Tensor) -> torch.Tensor:
        """Standardise raw continuous confounders (log open peaks first) as in training."""
        return (cont_confounders - self.confounder_mean) / self.confounder_scale

    def _categorical(self, batch_index, cat_covs) -> list[torch.Tensor]:
        codes = [batch_index.reshape(-1)]
        if cat_covs is not None:
            codes += [c.reshape(-1) for c in torch.split(cat_covs.long(), 1, dim=1)]
        return codes

    # --- scvi hooks --------------------------------------------------------------------------
    def _get_inference_input(self, tensors):
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    def _get_generative_input(self, tensors, inference_outputs):
        return {"z": inference_outputs["z"], **self._confounders(tensors)}

    @auto_move_data
    def inference(self, x: torch.Tensor, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """Posterior ``q(z | x)`` and a sample ``z``."""
        if self.encoder_input == "lsi":
            return self._posterior(self.lsi(x), n_samples)
        encoder_input = (x > 0).float() if self.likelihood == "bernoulli" else torch.log1p(x)
        if self.normalize_input:
            # Each cell's profile as shares of its total, scaled to the training cells' mean:
            # the encoder no longer reads depth off the number of open peaks.
            total = encoder_input.sum(-1, keepdim=True).clamp_min(1.0)
            encoder_input = encoder_input / total * self.mean_input_total
        return self._posterior(encoder_input, n_samples)

    def lsi(self, x: torch.Tensor) -> torch.Tensor:
        """LSI of each cell: TF-IDF of its binarised peaks (unit length) times the components."""
        tfidf = (x > 0).float() * self.lsi_idf
        tfidf = tfidf / torch.linalg.vector_norm(tfidf, dim=-1, keepdim=True).clamp_min(1e-12)
        return tfidf @ self.lsi_components.T

    def _posterior(self, encoder_input: torch.Tensor, n_samples: int) -> dict[str, torch.Tensor]:
        hidden = self.encoder(encoder_input)
        mean = self.mean_encoder(hidden)
        var = torch.exp(self.var_encoder(hidden).clamp(-15.0, 15.0)) + 1e-4
        qz = Normal(mean, var.sqrt())  # the scale is the standard deviation
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        return {"qz": qz, "z": z}

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        batch_index: torch.Tensor,
        cont_confounders: torch.Tensor,
        log_total: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Peak logits from ``z`` and the confounders."""
        covariates = self.standardise(cont_confounders)
        if z.dim() == 3:
            covariates = covariates.unsqueeze(0).expand(z.shape[0], -1, -1)
        categorical = torch.split(cat_covs.long(), 1, dim=1) if cat_covs is not None else ()
        hidden = self.decoder(torch.cat([z, covariates], dim=-1), batch_index, *categorical)
        logits = self.output(hidden)
        if self.likelihood == "poisson":
            logits = (logits + log_total - self.mean_log_total).clamp(max=_LOG_RATE_MAX)
        return {"px": logits}

    def reconstruction_loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each cell, summed over peaks."""
        if self.likelihood == "bernoulli":
            return binary_cross_entropy_with_logits(logits, (x > 0).float(), reduction="none").sum(
                -1
            )
        return (torch.exp(logits) - x * logits + torch.lgamma(x + 1.0)).sum(-1)

    def loss(
        self,
        tensors,
        inference_outputs,
        generative_outputs,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO: reconstruction + ``kl_weight`` × KL to the standard normal prior.

        The invariance penalty is added by :class:`scgexp.train.InvarianceTrainingPlan`.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        qz = inference_outputs["qz"]
        reconstruction = self.reconstruction_loss(x, generative_outputs["px"])
        kl = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale))).sum(-1)
        loss = torch.mean(reconstruction + kl_weight * kl)
        return LossOutput(loss=loss, reconstruction_loss=reconstruction, kl_local=kl)

    def invariance_inputs(self, tensors, inference_outputs) -> InvarianceInputs:
        """Posterior and confounders of a minibatch (the :mod:`scgexp.nn` hook)."""
        confounders = self._confounders(tensors)
        return InvarianceInputs(
            qz=inference_outputs["qz"],
            categorical=self._categorical(confounders["batch_index"], confounders["cat_covs"]),
            continuous=self.standardise(confounders["cont_confounders"]),
        )

    @torch.inference_mode()
    def sample(self, tensors, n_samples: int = 1) -> torch.Tensor:
        """Draw binary peaks or fragment counts from the fitted model."""
        _, generative_outputs = self.forward(
            tensors, inference_kwargs={"n_samples": n_samples}, compute_loss=False
        )
        logits = generative_outputs["px"]
        if self.likelihood == "bernoulli":
            return torch.distributions.Bernoulli(logits=logits).sample().cpu()
        return torch.distributions.Poisson(torch.exp(logits)).sample().cpu()
