"""Torch module of MultiVAE: an encoder and a decoder per modality, and a joint posterior."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import (
    NegativeBinomial,
    NegativeBinomialMixture,
    ZeroInflatedNegativeBinomial,
)
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import FCLayers
from torch import nn
from torch.distributions import Distribution, Normal, constraints, kl_divergence
from torch.nn.functional import softplus

from scgexp.data._checks import InputError, check_option
from scgexp.nn import Invariance, InvarianceInputs

logger = logging.getLogger(__name__)

#: Modalities MultiVAE knows, in the order it handles them.
MODALITIES = ("rna", "atac", "protein")
#: Registry key of each modality's counts.
DATA_KEYS = {
    "rna": REGISTRY_KEYS.X_KEY,
    "atac": REGISTRY_KEYS.ATAC_X_KEY,
    "protein": REGISTRY_KEYS.PROTEIN_EXP_KEY,
}
#: Registry key of each modality's (optional) presence flag.
PRESENCE_KEYS = {name: f"has_{name}" for name in MODALITIES}

_VAR_EPS = 1e-4
_LOG_MIN, _LOG_MAX = -12.0, 12.0


_LOG2 = math.log(2.0)


def _log_detected(rate: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-rate))``, accurate for small and large rates (Mächler's log1mexp)."""
    # Each branch sees only its side of log 2, so the unused one gives no NaN gradient.
    small, large = rate.clamp(max=_LOG2), rate.clamp(min=_LOG2)
    return torch.where(
        rate < _LOG2, torch.log(-torch.expm1(-small)), torch.log1p(-torch.exp(-large))
    )


class PoissonDetection(Distribution):
    """Whether a Poisson count with log rate ``log_rate`` is not zero: ``p = 1 - exp(-rate)``.

    A Bernoulli distribution (``probs``, ``mean``, ``log_prob``, ``sample``) whose ``log_prob``
    takes the logarithm only where something was detected, which in scATAC-seq is a few in a
    hundred regions: elsewhere it is ``-rate``. Computed in float32 (``exp`` overflows float16).

    Parameters
    ----------
    log_rate
        Log of the Poisson rate (clamped to [-30, 15]).

    Examples
    --------
    >>> PoissonDetection(torch.zeros(2)).probs  # 1 - exp(-1)
    tensor([0.6321, 0.6321])
    """

    arg_constraints: ClassVar[dict] = {"log_rate": constraints.real}
    support = constraints.boolean

    def __init__(self, log_rate: torch.Tensor):
        self.log_rate = log_rate
        self.rate = torch.exp(log_rate.float().clamp(-30.0, 15.0))
        super().__init__(batch_shape=log_rate.shape, validate_args=False)

    @property
    def probs(self) -> torch.Tensor:
        return -torch.expm1(-self.rate)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * torch.exp(-self.rate)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        value, rate = torch.broadcast_tensors(value, self.rate)
        detected = value > 0
        if rate.device.type != "cpu":  # dense: finding the detections would sync the host
            return torch.where(detected, _log_detected(rate), -rate)
        index = detected.nonzero(as_tuple=True)
        return (-rate).index_put(index, _log_detected(rate[index]))

    def sample(self, sample_shape: Sequence[int] = ()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(self._extended_shape(sample_shape)))


class _ModalityEncoder(nn.Module):
    """MLP trunk with Gaussian heads."""

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        n_hidden: int,
        n_layers: int,
        dropout_rate: float,
        n_cat_list: list[int] | None,
    ):
        super().__init__()
        self.trunk = FCLayers(
            n_in=n_input,
            n_out=n_hidden,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
        )
        self.mean = nn.Linear(n_hidden, n_latent)
        self.log_var = nn.Linear(n_hidden, n_latent)

    def forward(self, x: torch.Tensor, *cats: torch.Tensor):
        hidden = self.trunk(x, *cats)
        var = torch.exp(self.log_var(hidden).clamp(_LOG_MIN, _LOG_MAX)) + _VAR_EPS
        return self.mean(hidden), var


class MultiVAEModule(BaseModuleClass):
    """Multimodal VAE over any subset of RNA, ATAC and protein counts.

    Each modality ``m`` present in a cell gives a Gaussian expert ``q_m(z | x_m)``; the experts
    of the modalities the cell has are combined into the joint posterior ``q(z | x)``:

    - ``joint="poe"``: product of experts with the prior as an extra expert
      (:cite:p:`Wu2018`), ``q ∝ p(z) Π_m q_m``; precisions add, so every modality sharpens z.
    - ``joint="mixture"``: the Gaussian that matches the first two moments of the equal-weight
      mixture of experts (MultiVI averages the experts similarly).

    A missing modality has no expert and no reconstruction term, so mosaic cells train on what
    they have. Cells with two or more modalities also train each encoder to work alone (for
    per-modality latents and cross-modal prediction) with two terms:

    - cross-reconstruction: for each modality ``t`` (RNA and protein by default), the posterior
      of the cell's *other* modalities must reconstruct ``x_t`` — the negative conditional ELBO
      ``-E log p(x_t | z) + KL(q(z | x_{-t}) ‖ p(z))``. It keeps the experts calibrated, so that
      a weak modality does not swamp a strong one in the product;
    - alignment: ``KL(q(z | x) ‖ q(z | x_m))`` with the joint posterior held fixed
      (``alignment="joint"``), or a symmetric KL between pairs of experts (``"pairwise"``;
      the mean of both directions averaged over pairs: half MultiVI's sum for two modalities).

    Likelihoods: RNA negative binomial or ZINB at the observed library size; ATAC Bernoulli on
    binarised counts, detected when a Poisson fragment count is not zero:
    ``p = 1 - exp(-exp(decoder(z) + region factor + slope · cell factor))``, the cell
    factor being the log of the cell's open regions over the training median and the slope
    learned per region (MultiVI :cite:p:`Ashuach2022` multiplies probabilities by learned
    factors instead); protein a negative binomial at the observed protein library size
    (default) or a background/foreground negative binomial mixture (with a learned background
    per protein and batch, after totalVI).

    Parameters
    ----------
    n_features
        Number of features of each modality the model uses, e.g. ``{"rna": 2000, "atac": 5e4}``.
    n_batch
        Number of batches.
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates (standardised with the ``cont_cov_mean``/
        ``cont_cov_scale`` buffers, then concatenated to the decoders' input).
    n_hidden
        Units of the hidden layers.
    n_latent
        Dimension of the shared latent space.
    n_layers_encoder, n_layers_decoder
        Hidden layers of every encoder and decoder.
    dropout_rate
        Dropout of the encoders.
    gene_likelihood
        ``"zinb"`` or ``"nb"``.
    protein_likelihood
        ``"nb"`` (default) or ``"mixture"`` (background/foreground, after totalVI).
    joint
        ``"poe"`` or ``"mixture"`` (see above).
    alignment
        ``"joint"`` or ``"pairwise"`` (see above).
    alignment_weight
        Weight of the alignment term.
    cross_reconstruction_weight
        Weight of the cross-reconstruction term (0 turns it off).
    cross_reconstruction_targets
        Modalities reconstructed from the others. ``None``: all but the one with the most
        features (ATAC next to RNA, RNA next to protein), whose extra decoder pass would cost the
        most (on 2,000 SNARE-seq cells, reconstructing ATAC from RNA as well took 56% more time
        per epoch).
    encode_covariates
        Also give the batch and categorical covariates to the encoders.
    use_size_factor_key
        RNA library size from the registered size factor instead of the total counts.
    invariance
        ``None``, ``"mi"``, ``"adversarial"`` or ``"both"``: an :class:`~scgexp.nn.Invariance`
        on the joint posterior against the batch and each modality's sequencing depth
        (``log1p`` of its total counts, for ATAC of its open regions, standardised with the
        ``depth_mean``/``depth_scale`` buffers), trained by
        :class:`~scgexp.train.InvarianceTrainingPlan`.
    invariance_weight
        Weight of the invariance penalty.
    invariance_depth
        Also make the joint posterior invariant to the sequencing depth of each modality whose
        decoder receives it as a library size (not protein with ``protein_likelihood=
        "mixture"``, whose background and foreground do not scale with depth); ``False``:
        batch only.
    """

    def __init__(
        self,
        n_features: dict[str, int],
        n_batch: int = 1,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        n_hidden: int = 128,
        n_latent: int = 20,
        n_layers_encoder: int = 2,
        n_layers_decoder: int = 2,
        dropout_rate: float = 0.1,
        gene_likelihood: Literal["zinb", "nb"] = "zinb",
        protein_likelihood: Literal["nb", "mixture"] = "nb",
        joint: Literal["poe", "mixture"] = "poe",
        alignment: Literal["joint", "pairwise"] = "joint",
        alignment_weight: float = 1.0,
        cross_reconstruction_weight: float = 1.0,
        cross_reconstruction_targets: Sequence[str] | None = None,
        encode_covariates: bool = False,
        use_size_factor_key: bool = False,
        invariance: Literal["mi", "adversarial", "both"] | None = None,
        invariance_weight: float = 1.0,
        invariance_depth: bool = True,
    ):
        super().__init__()
        unknown = set(n_features) - set(MODALITIES)
        if unknown or not n_features:
            raise ValueError(
                f"n_features must name some of {MODALITIES}, not {sorted(n_features)}."
            )
        check_option("gene_likelihood", gene_likelihood, ("zinb", "nb"))
        check_option("protein_likelihood", protein_likelihood, ("mixture", "nb"))
        check_option("joint", joint, ("poe", "mixture"))
        check_option("alignment", alignment, ("joint", "pairwise"))
        self.modalities = [m for m in MODALITIES if m in n_features]
        self.n_features = {m: int(n_features[m]) for m in self.modalities}
        self.n_batch = n_batch
        self.n_latent = n_latent
        self.n_continuous_cov = n_continuous_cov
        self.gene_likelihood = gene_likelihood
        self.protein_likelihood = protein_likelihood
        self.joint = joint
        self.alignment = alignment
        self.alignment_weight = alignment_weight
        self.cross_reconstruction_weight = cross_reconstruction_weight
        if cross_reconstruction_targets is None:
            widest = max(self.modalities, key=lambda m: self.n_features[m])
            cross_reconstruction_targets = [m for m in self.modalities if m != widest]
        if isinstance(cross_reconstruction_targets, str) or not set(
            cross_reconstruction_targets
        ) <= set(self.modalities):
            raise InputError(
                f"cross_reconstruction_targets must list some of {self.modalities}, not "
                f"{cross_reconstruction_targets!r}."
            )
        self.cross_reconstruction_targets = list(cross_reconstruction_targets)
        self.invariance_depth = invariance_depth
        # Depth is a confounder only where the decoder is given it, or "mi" is no bound.
        self.depth_modalities = [
            m for m in self.modalities if not (m == "protein" and protein_likelihood == "mixture")
        ]
        self.encode_covariates = encode_covariates
        self.use_size_factor_key = use_size_factor_key

        cat_list = [n_batch, *(n_cats_per_cov or [])]
        self.encoders = nn.ModuleDict(
            {
                m: _ModalityEncoder(
                    n_input=n,
                    n_latent=n_latent,
                    n_hidden=n_hidden,
                    n_layers=n_layers_encoder,
                    dropout_rate=dropout_rate,
                    n_cat_list=cat_list if encode_covariates else None,
                )
                for m, n in self.n_features.items()
            }
        )
        n_decoder_in = n_latent + n_continuous_cov
        self.decoders = nn.ModuleDict(
            {
                m: FCLayers(
                    n_in=n_decoder_in,
                    n_out=n_hidden,
                    n_cat_list=cat_list,
                    n_layers=n_layers_decoder,
                    n_hidden=n_hidden,
                    dropout_rate=0.0,
                    use_batch_norm=False,
                    use_layer_norm=True,
                )
                for m in self.modalities
            }
        )
        if "rna" in self.modalities:
            n_genes = self.n_features["rna"]
            self.rna_scale = nn.Linear(n_hidden, n_genes)
            self.rna_dropout = nn.Linear(n_hidden, n_genes) if gene_likelihood == "zinb" else None
            self.rna_log_theta = nn.Parameter(torch.zeros(n_genes))
        if "atac" in self.modalities:
            self.atac_log_rate = nn.Linear(n_hidden, self.n_features["atac"])
            # Region factors: each region's log fragment rate (the model fills them from the
            # training frequencies); the median number of open regions per cell sets the depth.
            self.region_factor = nn.Parameter(torch.zeros(self.n_features["atac"]))
            self.register_buffer("atac_median_open", torch.ones(()))
            # How each region's log rate follows the cell factor: 1 if fragments were sampled in
            # proportion to the open regions (which saturate with depth), learned per region.
            self.atac_depth_slope = nn.Parameter(torch.ones(self.n_features["atac"]))
        if "protein" in self.modalities:
            n_proteins = self.n_features["protein"]
            self.protein_log_theta = nn.Parameter(torch.full((n_proteins,), 1.0))
            self.protein_head = nn.Linear(n_hidden, n_proteins)
            if protein_likelihood == "mixture":
                # Filled by the model with a low quantile of each protein's counts.
                self.protein_log_background = nn.Parameter(torch.zeros(n_proteins, n_batch))
                self.protein_mixing = nn.Linear(n_hidden, n_proteins)
            # Median protein library size of the training cells (NB: the scale of outputs).
            self.register_buffer("protein_median_total", torch.ones(()))
        # Mean and scale of log1p(total counts) of each modality (filled by the model).
        self.register_buffer("depth_mean", torch.zeros(len(self.modalities)))
        self.register_buffer("depth_scale", torch.ones(len(self.modalities)))
        if n_continuous_cov:  # training mean and scale of each (filled by the model)
            self.register_buffer("cont_cov_mean", torch.zeros(n_continuous_cov))
            self.register_buffer("cont_cov_scale", torch.ones(n_continuous_cov))
        self.invariance = (
            Invariance(
                n_latent=n_latent,
                n_cats_per_key=[n_batch],
                n_continuous=len(self.depth_modalities) if invariance_depth else 0,
                method=invariance,
                weight=invariance_weight,
            )
            if invariance is not None
            else None
        )

    def invariance_inputs(self, tensors: dict, inference_outputs: dict) -> InvarianceInputs:
        """Joint posterior, batch and standardised depth of each modality (0 where missing)."""
        batch = [tensors[REGISTRY_KEYS.BATCH_KEY]]
        if not self.invariance_depth or not self.depth_modalities:
            return InvarianceInputs(inference_outputs["qz"], batch, None)
        depth = []
        for i, m in enumerate(self.modalities):
            if m not in self.depth_modalities:
                continue
            x = tensors[DATA_KEYS[m]]
            log_total = torch.log1p((x > 0).float().sum(-1) if m == "atac" else x.sum(-1))
            value = (log_total - self.depth_mean[i]) / self.depth_scale[i]
            depth.append(torch.where(inference_outputs["masks"][m], value, 0.0))
        return InvarianceInputs(inference_outputs["qz"], batch, torch.stack(depth, 1))

    # -- inputs ---------------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        inputs = {
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            "size_factor": tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY),
        }
        for m in self.modalities:
            inputs[f"x_{m}"] = tensors[DATA_KEYS[m]]
            inputs[f"has_{m}"] = tensors.get(PRESENCE_KEYS[m])
        return inputs

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
            "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
        }

    @staticmethod
    def _cat_list(batch_index: torch.Tensor, cat_covs: torch.Tensor | None) -> list[torch.Tensor]:
        cats = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
        return [batch_index, *cats]

    def presence(self, x: torch.Tensor, flag: torch.Tensor | None) -> torch.Tensor:
        """Boolean ``(n,)`` mask: the registered flag if any, else "the row is not all zero"."""
        if flag is not None:
            return flag.reshape(-1).float() > 0.5
        return x.sum(-1) > 0

    def encoder_input(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """RNA: ``log1p`` of counts per 10k; ATAC: binarised; protein: ``log1p`` of counts."""
        if modality == "rna":
            return torch.log1p(1e4 * x / x.sum(-1, keepdim=True).clamp(min=1.0))
        if modality == "atac":
            return (x > 0).float()
        return torch.log1p(x)

    def _expert(
        self, modality: str, x: torch.Tensor, present: torch.Tensor, cats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The modality's encoder on the cells that have it; the prior's (0, 1) elsewhere.

        Absent rows never reach the encoder: in training its batch norm would take their
        (all-zero or arbitrary) values into the minibatch statistics of the present cells.
        """
        encoder = self.encoders[modality]
        if bool(present.all()):
            return encoder(self.encoder_input(modality, x), *cats)
        rows = present.nonzero().reshape(-1)
        mean = x.new_zeros(x.shape[0], encoder.mean.out_features)
        var = torch.ones_like(mean)
        if rows.numel() == 0:
            return mean, var
        # One cell has no minibatch statistics: its batch norm uses the running ones.
        norms = [layer for layer in encoder.modules() if isinstance(layer, nn.BatchNorm1d)]
        frozen = [layer for layer in norms if layer.training] if rows.numel() == 1 else []
        for layer in frozen:
            layer.eval()
        try:
            present_mean, present_var = encoder(
                self.encoder_input(modality, x[rows]), *(c[rows] for c in cats)
            )
        finally:
            for layer in frozen:
                layer.train()
        return mean.index_copy(0, rows, present_mean), var.index_copy(0, rows, present_var)

    # -- joint posterior ------------------------------------------------------------------------
    def combine(
        self, means: dict[str, torch.Tensor], variances: dict[str, torch.Tensor], masks: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint mean and variance from the experts of the modalities each cell has."""
        weights = {m: masks[m].float().unsqueeze(-1) for m in means}
        if self.joint == "poe":
            precision = 1.0 + sum(weights[m] / variances[m] for m in means)
            weighted = sum(weights[m] * means[m] / variances[m] for m in means)
            return weighted / precision, 1.0 / precision
        count = sum(weights.values()).clamp(min=1.0)
        mean = sum(weights[m] * means[m] for m in means) / count
        second = sum(weights[m] * (variances[m] + means[m] ** 2) for m in means) / count
        var = (second - mean**2).clamp(min=_VAR_EPS)
        # Cells with no modality at all fall back to the prior.
        none = sum(weights.values()) == 0
        return torch.where(none, 0.0, mean), torch.where(none, 1.0, var)

    # -- forward --------------------------------------------------------------------------------
    @auto_move_data
    def inference(
        self,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        x_rna: torch.Tensor | None = None,
        x_atac: torch.Tensor | None = None,
        x_protein: torch.Tensor | None = None,
        has_rna: torch.Tensor | None = None,
        has_atac: torch.Tensor | None = None,
        has_protein: torch.Tensor | None = None,
        use_modalities: Sequence[str] | None = None,
        n_samples: int = 1,
    ) -> dict:
        """Experts, joint posterior ``qz``, a draw ``z`` and the library sizes.

        ``use_modalities`` restricts the joint posterior to these modalities' experts (the
        others count as missing), e.g. ``["atac"]`` for a latent or a prediction from ATAC.
        """
        data = {"rna": x_rna, "atac": x_atac, "protein": x_protein}
        flags = {"rna": has_rna, "atac": has_atac, "protein": has_protein}
        cats = self._cat_list(batch_index, cat_covs) if self.encode_covariates else []
        means, variances, masks, library = {}, {}, {}, {}
        for m in self.modalities:
            x = data[m]
            if x is None:
                continue
            present = self.presence(x, flags[m])
            mask = present
            if use_modalities is not None and m not in use_modalities:
                mask = torch.zeros_like(present)
            mean, var = self._expert(m, x, present, cats)
            means[m], variances[m], masks[m] = mean, var, mask
            if m == "atac":
                n_open = (x > 0).float().sum(-1, keepdim=True).clamp(min=1.0)
                library[m] = torch.log(n_open / self.atac_median_open)
            elif m == "rna" and self.use_size_factor_key and size_factor is not None:
                library[m] = torch.log(size_factor.reshape(-1, 1).clamp(min=1e-8))
            else:  # total counts
                library[m] = torch.log(x.sum(-1, keepdim=True).clamp(min=1.0))
        if not means:
            raise ValueError("inference needs the counts of at least one modality.")
        mean, var = self.combine(means, variances, masks)
        qz = Normal(mean, var.sqrt())
        z = qz.rsample() if n_samples == 1 else qz.rsample((n_samples,))
        return {
            "z": z,
            "qz": qz,
            "qzm": mean,
            "qzv": var,
            "library": library,
            "means": means,
            "variances": variances,
            "masks": masks,
        }

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: dict[str, torch.Tensor],
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        transform_batch: int | None = None,
        modalities: Sequence[str] | None = None,
    ) -> dict:
        """Output distributions ``p_rna``, ``p_atac``, ``p_protein`` (those in ``modalities``).

        Missing library sizes (e.g. decoding RNA for a cell that has only ATAC): RNA means are
        then proportions, NB protein means are at the median protein total, and ATAC
        probabilities are for a cell of median depth.
        """
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        cats = self._cat_list(batch_index, cat_covs)
        decoder_input = z
        if cont_covs is not None and self.n_continuous_cov:
            cont_covs = (cont_covs - self.cont_cov_mean) / self.cont_cov_scale
            if z.dim() == 3:
                cont_covs = cont_covs.unsqueeze(0).expand(z.shape[0], -1, -1)
            decoder_input = torch.cat([z, cont_covs], dim=-1)
        outputs = {}
        for m in modalities or self.modalities:
            hidden = self.decoders[m](decoder_input, *cats)
            lib = library.get(m)
            if m == "rna":
                scale = torch.softmax(self.rna_scale(hidden), dim=-1)
                mu = scale * torch.exp(lib) if lib is not None else scale
                theta = torch.exp(self.rna_log_theta.clamp(_LOG_MIN, _LOG_MAX))
                if self.gene_likelihood == "zinb":
                    dist = ZeroInflatedNegativeBinomial(
                        mu=mu, theta=theta, zi_logits=self.rna_dropout(hidden), scale=scale
                    )
                else:
                    dist = NegativeBinomial(mu=mu, theta=theta, scale=scale)
            elif m == "atac":
                log_rate = self.atac_log_rate(hidden) + self.region_factor
                if lib is not None:
                    log_rate = log_rate + self.atac_depth_slope * lib
                dist = PoissonDetection(log_rate)
            else:
                dist = self._protein_distribution(hidden, lib, batch_index)
            outputs[f"p_{m}"] = dist
        return outputs

    def _protein_distribution(self, hidden, lib, batch_index):
        theta = torch.exp(self.protein_log_theta.clamp(_LOG_MIN, _LOG_MAX))
        if self.protein_likelihood == "nb":
            scale = torch.softmax(self.protein_head(hidden), dim=-1)
            total = torch.exp(lib) if lib is not None else self.protein_median_total
            return NegativeBinomial(mu=scale * total, theta=theta, scale=scale)
        batch = batch_index.reshape(-1).long()
        background = torch.exp(self.protein_log_background[:, batch].T)
        if hidden.dim() == 3:
            background = background.unsqueeze(0).expand(hidden.shape[0], -1, -1)
        foreground = background * (1.0 + softplus(self.protein_head(hidden)))
        return NegativeBinomialMixture(
            mu1=background,
            mu2=foreground,
            theta1=theta,
            mixture_logits=self.protein_mixing(hidden),
        )

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
        **kwargs,
    ) -> LossOutput:
        """Masked reconstruction of every modality + KL of the joint posterior + alignment."""
        masks = inference_outputs["masks"]
        reconstruction = {}
        for m in self.modalities:
            x = tensors[DATA_KEYS[m]]
            target = (x > 0).float() if m == "atac" else x
            log_prob = generative_outputs[f"p_{m}"].log_prob(target).sum(-1)
            reconstruction[f"reconstruction_{m}"] = -log_prob * masks[m].float()
        qz = inference_outputs["qz"]
        kl_z = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale)))
        kl_z = kl_z.sum(-1)
        alignment = self.alignment_loss(inference_outputs)
        total = sum(reconstruction.values()) + kl_weight * kl_z + self.alignment_weight * alignment
        extra = {"alignment": alignment.mean()}
        if self.cross_reconstruction_weight > 0 and len(inference_outputs["means"]) > 1:
            cross = self.cross_reconstruction_loss(tensors, inference_outputs, kl_weight)
            total = total + self.cross_reconstruction_weight * cross
            extra["cross_reconstruction"] = cross.mean()
        for m in self.modalities:
            extra[f"fraction_with_{m}"] = masks[m].float().mean()
        return LossOutput(
            loss=total.mean(),
            reconstruction_loss=reconstruction,
            kl_local={"kl_z": kl_z},
            extra_metrics=extra,
        )

    def cross_reconstruction_loss(
        self, tensors: dict[str, torch.Tensor], inference_outputs: dict, kl_weight: float
    ) -> torch.Tensor:
        """Negative conditional ELBO of each modality given the cell's other modalities.

        For every modality ``t`` a cell has together with at least one other, the joint
        posterior of the *other* modalities ``q(z | x_{-t})`` must reconstruct ``x_t``:
        ``-E log p(x_t | z) + KL(q(z | x_{-t}) ‖ p(z))``. This is the cross-modal prediction the
        model is used for, and it keeps each expert calibrated: an expert that claims more
        certainty than its modality carries is penalised by the other modalities' likelihood.
        """
        means, variances = inference_outputs["means"], inference_outputs["variances"]
        masks = inference_outputs["masks"]
        total = torch.zeros_like(next(iter(means.values()))[:, 0])
        for target in means:
            if target not in self.cross_reconstruction_targets:
                continue
            others = [m for m in means if m != target]
            has_other = sum(masks[m].float() for m in others) > 0
            weight = (masks[target] & has_other).float()
            if not bool(weight.any()):
                continue
            mean, var = self.combine(
                {m: means[m] for m in others},
                {m: variances[m] for m in others},
                {m: masks[m] for m in others},
            )
            qz = Normal(mean, var.sqrt())
            outputs = self.generative(
                qz.rsample(),
                inference_outputs["library"],
                tensors[REGISTRY_KEYS.BATCH_KEY],
                tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
                tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
                modalities=[target],
            )
            x = tensors[DATA_KEYS[target]]
            x = (x > 0).float() if target == "atac" else x
            nll = -outputs[f"p_{target}"].log_prob(x).sum(-1)
            kl = kl_divergence(qz, Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
            total = total + weight * (nll + kl_weight * kl)
        return total

    def alignment_loss(self, inference_outputs: dict) -> torch.Tensor:
        """Alignment of each modality's posterior with the joint one, for cells with 2+ modalities.

        ``"joint"``: ``KL(q(z | x) ‖ q(z | x_m))`` with the joint posterior held fixed (no
        gradient), so each encoder learns to reach the joint posterior alone without pulling the
        joint towards its own, noisier view. ``"pairwise"``: ½ (KL(a‖b) + KL(b‖a)) between the
        experts of each pair of modalities, averaged over pairs (MultiVI sums both directions
        over pairs).
        """
        means, variances = inference_outputs["means"], inference_outputs["variances"]
        masks = inference_outputs["masks"]
        names = list(means)
        total = torch.zeros_like(next(iter(means.values()))[:, 0])
        n_present = sum(masks[m].float() for m in names)
        paired = (n_present > 1).float()
        if self.alignment == "joint":
            joint = Normal(
                inference_outputs["qzm"].detach(), inference_outputs["qzv"].detach().sqrt()
            )
            for m in names:
                mean, var = self.combine({m: means[m]}, {m: variances[m]}, {m: masks[m]})
                kl = kl_divergence(joint, Normal(mean, var.sqrt())).sum(-1)
                total = total + masks[m].float() * kl
            return paired * total / n_present.clamp(min=1.0)
        pairs = torch.zeros_like(total)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = (masks[a] & masks[b]).float()
                qa = Normal(means[a], variances[a].sqrt())
                qb = Normal(means[b], variances[b].sqrt())
                sym = 0.5 * (kl_divergence(qa, qb) + kl_divergence(qb, qa)).sum(-1)
                total = total + both * sym
                pairs = pairs + both
        return total / pairs.clamp(min=1.0)

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> dict:
        """Draw counts (RNA, protein) and binary accessibility for every modality."""
        _, generative_outputs = self.forward(tensors, compute_loss=False)
        draws = {}
        for m in self.modalities:
            dist = generative_outputs[f"p_{m}"]
            draw = dist.sample() if n_samples == 1 else dist.sample((n_samples,))
            draws[m] = draw.cpu()  # as ZINB's and SAILER's samples
        return draws
