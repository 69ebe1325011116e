"""Torch module of the ZINB autoencoder (DCA): count autoencoder with a ZINB/NB/Poisson output."""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import FCLayers
from torch import nn
from torch.nn.functional import softplus

from scgexp._compat import MODULE_KEYS
from scgexp.data._checks import check_option

logger = logging.getLogger(__name__)


MEAN_MIN, MEAN_MAX = 1e-5, 1e6
DISP_MIN, DISP_MAX = 1e-4, 1e4
_LOG_MEAN_MIN, _LOG_MEAN_MAX = math.log(MEAN_MIN), math.log(MEAN_MAX)


class ZINBAutoencoderModule(BaseModuleClass):
    """Deep count autoencoder of :cite:p:`Eraslan2019` with covariate-conditioned decoder.

    The input is the count matrix; inside the module it becomes ``log1p(x / s)`` standardised
    per gene (``s`` the size factor, mean and scale kept as buffers filled by the model). The
    bottleneck ``z`` is decoded, together with the batch and categorical covariates, into a
    mean ``μ = clip(exp(·)) · s``, a dispersion ``θ = clip(softplus(·))`` and a dropout
    probability ``π = sigmoid(·)``.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (1: no batch).
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    n_hidden
        Units of the hidden layers before and after the bottleneck.
    n_latent
        Units of the bottleneck.
    n_layers
        Hidden layers on each side of the bottleneck.
    dropout_rate
        Dropout on hidden units (DCA: 0; scgexp default 0.2, by measurement).
    gene_likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` (one θ per gene) or ``"gene-cell"`` (θ predicted for every cell and gene).
    encode_covariates
        Also give the batch and covariates to the encoder.
    linear_bottleneck
        Compute ``z`` with a plain linear layer (no batch norm, ReLU or dropout). ``False``:
        DCA's bottleneck, a hidden layer like the others (batch norm and ReLU).
    use_size_factor_key
        Take size factors from the registered ``size_factor`` tensor instead of the counts.
    ridge_lambda
        Weight of the ridge penalty ``λ π²`` on the dropout probability (ZINB only).
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_cats_per_cov: list[int] | None = None,
        n_hidden: int = 64,
        n_latent: int = 32,
        n_layers: int = 1,
        dropout_rate: float = 0.2,
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        dispersion: Literal["gene", "gene-cell"] = "gene",
        encode_covariates: bool = False,
        use_size_factor_key: bool = False,
        ridge_lambda: float = 0.0,
        linear_bottleneck: bool = True,
    ):
        super().__init__()
        check_option("gene_likelihood", gene_likelihood, ("zinb", "nb", "poisson"))
        check_option("dispersion", dispersion, ("gene", "gene-cell"))
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_latent = n_latent
        self.gene_likelihood = gene_likelihood
        self.dispersion = dispersion
        self.encode_covariates = encode_covariates
        self.use_size_factor_key = use_size_factor_key
        self.ridge_lambda = ridge_lambda
        self.linear_bottleneck = linear_bottleneck

        # Filled by the model from the training data; saved with the weights.
        self.register_buffer("input_mean", torch.zeros(n_input))
        self.register_buffer("input_scale", torch.ones(n_input))
        self.register_buffer("median_total", torch.ones(()))

        cat_list = [n_batch, *(n_cats_per_cov or [])]
        self.encoder = FCLayers(
            n_in=n_input,
            n_out=n_hidden if linear_bottleneck else n_latent,
            n_cat_list=cat_list if encode_covariates else None,
            n_layers=n_layers if linear_bottleneck else n_layers + 1,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
        )
        self.z_layer = nn.Linear(n_hidden, n_latent) if linear_bottleneck else None
        self.decoder = FCLayers(
            n_in=n_latent,
            n_out=n_hidden,
            n_cat_list=cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
        )
        self.mean_head = nn.Linear(n_hidden, n_input)
        self.disp_head = nn.Linear(n_hidden, n_input) if dispersion == "gene-cell" else None
        self.dropout_head = nn.Linear(n_hidden, n_input) if gene_likelihood == "zinb" else None
        # softplus(0.5413) = 1: start from θ = 1.
        # (none for Poisson: a parameter without gradients stops DDP)
        gene_dispersion = dispersion == "gene" and gene_likelihood != "poisson"
        self.px_r = nn.Parameter(torch.full((n_input,), 0.5413)) if gene_dispersion else None

    # -- inputs -------------------------------------------------------------------------------
    def size_factor(self, x: torch.Tensor, size_factor: torch.Tensor | None) -> torch.Tensor:
        """Size factor ``(n, 1)``: registered values or total counts / training median total."""
        if self.use_size_factor_key and size_factor is not None:
            return size_factor.reshape(-1, 1)
        return x.sum(-1, keepdim=True).clamp(min=1e-8) / self.median_total

    def transform_input(self, x: torch.Tensor, size_factor: torch.Tensor) -> torch.Tensor:
        """DCA's input: ``log1p(x / s)`` standardised per gene."""
        return (torch.log1p(x / size_factor) - self.input_mean) / self.input_scale

    @staticmethod
    def _cat_list(batch_index: torch.Tensor, cat_covs: torch.Tensor | None) -> list[torch.Tensor]:
        cats = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
        return [batch_index, *cats]

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            MODULE_KEYS.X_KEY: tensors[REGISTRY_KEYS.X_KEY],
            MODULE_KEYS.BATCH_INDEX_KEY: tensors[REGISTRY_KEYS.BATCH_KEY],
            MODULE_KEYS.CAT_COVS_KEY: tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            MODULE_KEYS.SIZE_FACTOR_KEY: tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY),
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            MODULE_KEYS.Z_KEY: inference_outputs[MODULE_KEYS.Z_KEY],
            MODULE_KEYS.LIBRARY_KEY: inference_outputs[MODULE_KEYS.LIBRARY_KEY],
            MODULE_KEYS.BATCH_INDEX_KEY: tensors[REGISTRY_KEYS.BATCH_KEY],
            MODULE_KEYS.CAT_COVS_KEY: tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
        }

    # -- forward ------------------------------------------------------------------------------
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Bottleneck ``z`` and size factor ``library`` (deterministic; ``n_samples`` is ignored).

        Returns ``library`` as the size factor itself (not its log), to be multiplied into μ.
        """
        library = self.size_factor(x, size_factor)
        encoded = self.transform_input(x, library)
        cats = self._cat_list(batch_index, cat_covs) if self.encode_covariates else []
        z = self.encoder(encoded, *cats)
        if self.z_layer is not None:
            z = self.z_layer(z)
        return {MODULE_KEYS.Z_KEY: z, MODULE_KEYS.LIBRARY_KEY: library}

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        transform_batch: int | None = None,
    ) -> dict[str, torch.distributions.Distribution]:
        """Output distribution ``px``: ZINB (``mu``, ``theta``, ``zi_logits``), NB or Poisson."""
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        hidden = self.decoder(z, *self._cat_list(batch_index, cat_covs))
        # DCA's bound 1e6 caps one gene's count in a cell of median depth: raised for deeper
        # libraries, so that it stays a guard against overflow and never binds on a real gene.
        log_mean_max = torch.log(10 * self.median_total).clamp_min(_LOG_MEAN_MAX)
        log_mean = self.mean_head(hidden).clamp_min(_LOG_MEAN_MIN).clamp_max(log_mean_max)
        scale = torch.softmax(log_mean, dim=-1)
        mu = log_mean.exp() * library
        if self.gene_likelihood == "poisson":
            px = Poisson(rate=mu, scale=scale)
        else:
            raw = self.disp_head(hidden) if self.disp_head is not None else self.px_r
            theta = softplus(raw).clamp(DISP_MIN, DISP_MAX)
            if self.gene_likelihood == "nb":
                px = NegativeBinomial(mu=mu, theta=theta, scale=scale)
            else:
                px = ZeroInflatedNegativeBinomial(
                    mu=mu, theta=theta, zi_logits=self.dropout_head(hidden), scale=scale
                )
        return {MODULE_KEYS.PX_KEY: px}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        **kwargs,
    ) -> LossOutput:
        """Negative log-likelihood of the counts, summed over genes, plus the ridge ``λ π²``."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        px = generative_outputs[MODULE_KEYS.PX_KEY]
        nll = -px.log_prob(x).sum(-1)
        loss = nll.mean()
        extra = {}
        if self.gene_likelihood == "zinb":
            ridge = self.ridge_lambda * px.zi_probs.pow(2).sum(-1)
            loss = loss + ridge.mean()
            extra["dropout_probability"] = px.zi_probs.detach().mean()
        return LossOutput(loss=loss, reconstruction_loss=nll, extra_metrics=extra)

    @torch.inference_mode()
    def sample(
        self,
        tensors: dict[str, torch.Tensor],
        n_samples: int = 1,
        max_poisson_rate: float = 1e8,
        generative_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Draw counts from the output distribution.

        Returns a CPU tensor ``(n_obs, n_vars)``, or ``(n_obs, n_vars, n_samples)``.
        """
        _, generative_outputs = self.forward(
            tensors, generative_kwargs=generative_kwargs, compute_loss=False
        )
        px = generative_outputs[MODULE_KEYS.PX_KEY]
        if self.gene_likelihood == "poisson":
            px = Poisson(torch.clamp(px.rate, max=max_poisson_rate))
        if n_samples == 1:
            return px.sample().cpu()
        return torch.permute(px.sample((n_samples,)), (1, 2, 0)).cpu()
