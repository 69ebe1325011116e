"""Penalties that keep a latent space free of confounders (batch, read depth, ...).

One component, :class:`Invariance`, shared by every scgexp model. It offers:

``"mi"``
    The non-adversarial upper bound on the mutual information ``I(z; c)`` of
    :cite:p:`Moyer2018` used by SAILER :cite:p:`Cao2021`::

        I(z; c) ≤ E_x KL(q(z|x) ‖ q(z)) − E log p(x | z, c) − H(x | c)

    ``KL(q(z|x) ‖ q(z))`` is bounded by the mean pairwise KL divergence between the posteriors
    of the cells of a minibatch, and ``H(x | c)`` is a constant. The bound holds for any mix of
    categorical and continuous confounders *because the decoder is given them*: the
    confounders enter through ``p(x | z, c)``, not through the penalty.
``"adversarial"``
    One discriminator head per confounder predicts it from the latent mean (a classifier for a
    categorical confounder, a regressor for a continuous one). The discriminator is trained in
    alternation on a detached latent (:meth:`Invariance.discriminator_loss`); the encoder pays
    for the discriminator's *success over chance* (:meth:`Invariance.penalty`): the entropy of
    the minibatch's category frequencies minus the classifier's cross-entropy, and the
    regressor's R², both clipped at 0, so that a latent that carries nothing about ``c`` costs
    nothing and the encoder gains nothing from fooling the discriminator beyond chance.
``"both"``
    Both penalties. For none, a model uses no :class:`Invariance` at all (``invariance=None``).

Hook contract
-------------
A module (a :class:`scvi.module.base.BaseModuleClass`) that wants invariance:

1. has an attribute ``invariance``: an :class:`Invariance` instance, or ``None`` for none;
2. has a method ``invariance_inputs(tensors, inference_outputs) -> InvarianceInputs``, called
   by :class:`scgexp.train.InvarianceTrainingPlan` after each forward pass with the minibatch's
   registry tensors and the output of ``inference``. It returns the posterior ``qz`` (a
   :class:`torch.distributions.Normal` with ``loc`` and ``scale`` of shape ``(n, n_latent)``),
   the categorical confounders (a list of integer tensors of shape ``(n,)`` or ``(n, 1)``, in
   the order of ``n_cats_per_key``) and the continuous confounders (a float tensor of shape
   ``(n, n_continuous)``, standardised, or ``None``);
3. gives the same confounders to its decoder (this is what makes ``"mi"`` a bound on
   ``I(z; c)``), and returns its reconstruction loss per cell in ``LossOutput``.

The training plan adds ``factor * invariance.penalty(inputs, reconstruction_loss)["penalty"]``
to the module's loss (``factor`` is 0 during the reconstruction warm-up, then 1), steps the
encoder/decoder optimiser, then trains the discriminator with
``invariance.discriminator_loss(inputs)`` on its own optimiser over
``invariance.discriminator_parameters()``.
"""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn.functional import cross_entropy, one_hot

logger = logging.getLogger(__name__)

#: An invariance penalty: the pairwise-KL bound (``"mi"``), a discriminator
#: (``"adversarial"``) or both.
InvarianceMethod = Literal["mi", "adversarial", "both"]
_METHODS = ("mi", "adversarial", "both")
_VAR_MIN = 1e-6


class InvarianceInputs(NamedTuple):
    """What a module hands to :class:`Invariance` for one minibatch (see the module docstring).

    Parameters
    ----------
    qz
        Posterior of the latent, a :class:`~torch.distributions.Normal` of shape
        ``(n, n_latent)``.
    categorical
        One integer tensor of shape ``(n,)`` or ``(n, 1)`` per categorical confounder.
    continuous
        Standardised continuous confounders, shape ``(n, n_continuous)``, or ``None``.
    """

    qz: Normal
    categorical: list[torch.Tensor]
    continuous: torch.Tensor | None

    def detach(self) -> InvarianceInputs:
        """The same inputs cut from the encoder's graph (for the discriminator's step)."""
        qz = Normal(self.qz.loc.detach(), self.qz.scale.detach())
        continuous = None if self.continuous is None else self.continuous.detach()
        return InvarianceInputs(qz, list(self.categorical), continuous)


def pairwise_gaussian_kl(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Mean ``KL(N(μ_i, σ_i²) ‖ N(μ_j, σ_j²))`` over all ordered pairs ``i ≠ j`` of a minibatch.

    (Moyer's and SAILER's code average over all ``n²`` pairs, ``i = j`` included: ``(n − 1) /
    n`` times this, within 1% from 100 cells a minibatch.)

    The posteriors are diagonal Gaussians. Cost ``O(n² d)`` with matrix products, no loop, in
    float32 also under mixed precision (float16 products of sharp posteriors overflow).

    Parameters
    ----------
    mean, var
        Means and variances, shape ``(n, d)``.

    Returns
    -------
    Scalar tensor (0 for a minibatch of one cell).

    Examples
    --------
    >>> pairwise_gaussian_kl(torch.zeros(4, 2), torch.ones(4, 2))
    tensor(0.)
    """
    if mean.shape[0] < 2:
        return mean.new_zeros(())
    dtype = torch.promote_types(mean.dtype, torch.float32)  # at least float32
    with torch.autocast(mean.device.type, enabled=False):
        return _pairwise_gaussian_kl(mean.to(dtype), var.to(dtype))


def _pairwise_gaussian_kl(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    n, d = mean.shape
    var = var.clamp_min(_VAR_MIN)
    inv = var.reciprocal()
    log_det = var.log().sum(1)
    # tr(Σ_j⁻¹ Σ_i)
    trace = var @ inv.T
    # (μ_i − μ_j)ᵀ Σ_j⁻¹ (μ_i − μ_j)
    mahalanobis = (mean**2) @ inv.T - 2 * mean @ (mean * inv).T + (mean**2 * inv).sum(1)[None, :]
    kl = 0.5 * (trace + mahalanobis - d + log_det[None, :] - log_det[:, None])
    return (kl.sum() - kl.diagonal().sum()) / (n * (n - 1))


def _head(n_input: int, n_output: int, n_hidden: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_input
    for _ in range(n_layers):
        layers += [nn.Linear(width, n_hidden), nn.LeakyReLU(0.2)]
        width = n_hidden
    layers.append(nn.Linear(width, n_output))
    return nn.Sequential(*layers)


class Invariance(nn.Module):
    """Invariance of a latent space to categorical and continuous confounders.

    See the module docstring for the penalties and the contract with modules and training plans.

    Parameters
    ----------
    n_latent
        Size of the latent space.
    n_cats_per_key
        Number of categories of each categorical confounder (e.g. ``[n_batch]``). Confounders
        with fewer than two categories carry no information and get no discriminator head.
    n_continuous
        Number of continuous confounders (e.g. 1 for read depth).
    method
        ``"mi"``, ``"adversarial"`` or ``"both"``.
    weight
        Weight ``λ`` of the ``"mi"`` bound, added to a per-cell loss (SAILER's code sums the
        ELBO over the minibatch, so its λ = 1 is about 1 / batch size here).
    adversarial_weight
        Weight of the adversarial penalty. ``None``: ``weight`` times ``n_latent``. The
        adversarial penalty is measured in nats (or R²) for the whole latent, a much smaller
        scale than a reconstruction loss summed over thousands of features.
    n_hidden
        Units of each discriminator head's hidden layers.
    n_layers
        Hidden layers of each discriminator head.

    Examples
    --------
    >>> invariance = Invariance(n_latent=10, n_cats_per_key=[3], n_continuous=1, method="both")
    >>> inputs = InvarianceInputs(qz, [batch_index], log_depth)
    >>> loss = loss + invariance.penalty(inputs, reconstruction_loss)["penalty"]
    >>> invariance.discriminator_loss(inputs.detach()).backward()
    """

    def __init__(
        self,
        n_latent: int,
        n_cats_per_key: list[int] | None = None,
        n_continuous: int = 0,
        method: InvarianceMethod = "mi",
        weight: float = 1.0,
        adversarial_weight: float | None = None,
        n_hidden: int = 64,
        n_layers: int = 2,
    ):
        super().__init__()
        if method not in _METHODS:
            raise ValueError(
                f"method must be one of {_METHODS}, not {method!r}. For no invariance, use no "
                "Invariance component (models take invariance=None)."
            )
        if weight < 0 or (adversarial_weight is not None and adversarial_weight < 0):
            raise ValueError("Invariance weights must be non-negative.")
        self.n_latent = n_latent
        self.n_cats_per_key = [int(n) for n in (n_cats_per_key or [])]
        self.n_continuous = int(n_continuous)
        self.method = method
        self.weight = float(weight)
        self.adversarial_weight = (
            float(weight * n_latent) if adversarial_weight is None else float(adversarial_weight)
        )
        self.use_mi = method in ("mi", "both")
        self.use_adversary = method in ("adversarial", "both")
        self.classifiers = nn.ModuleList()
        self.regressor = None
        if self.use_adversary:
            # One head per categorical confounder (None-equivalent: an empty Sequential).
            for n_cats in self.n_cats_per_key:
                self.classifiers.append(
                    _head(n_latent, n_cats, n_hidden, n_layers) if n_cats > 1 else nn.Sequential()
                )
            if self.n_continuous:
                self.regressor = _head(n_latent, self.n_continuous, n_hidden, n_layers)

    @property
    def has_discriminator(self) -> bool:
        """Whether there is a discriminator to train (adversarial method, some confounder)."""
        return any(True for _ in self.discriminator_parameters())

    def discriminator_parameters(self):
        """Parameters of the discriminator heads (for their own optimiser)."""
        yield from self.classifiers.parameters()
        if self.regressor is not None:
            yield from self.regressor.parameters()

    def _check(self, inputs: InvarianceInputs) -> None:
        if len(inputs.categorical) != len(self.n_cats_per_key):
            raise ValueError(
                f"Expected {len(self.n_cats_per_key)} categorical confounders, got "
                f"{len(inputs.categorical)}."
            )
        n_continuous = 0 if inputs.continuous is None else inputs.continuous.shape[-1]
        if n_continuous != self.n_continuous:
            raise ValueError(
                f"Expected {self.n_continuous} continuous confounders, got {n_continuous}."
            )

    def _adversary_terms(
        self, inputs: InvarianceInputs
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-categorical cross-entropies and per-continuous squared errors of the heads."""
        latent = inputs.qz.loc
        cross_entropies = []
        for head, n_cats, codes in zip(
            self.classifiers, self.n_cats_per_key, inputs.categorical, strict=True
        ):
            if n_cats < 2:
                continue
            cross_entropies.append(cross_entropy(head(latent), codes.reshape(-1).long()))
        squared_errors = None
        if self.regressor is not None:
            squared_errors = ((self.regressor(latent) - inputs.continuous) ** 2).mean(0)
        return cross_entropies, squared_errors

    def _chance_entropies(self, inputs: InvarianceInputs) -> list[torch.Tensor]:
        entropies = []
        for n_cats, codes in zip(self.n_cats_per_key, inputs.categorical, strict=True):
            if n_cats < 2:
                continue
            freq = one_hot(codes.reshape(-1).long(), n_cats).float().mean(0)
            entropies.append(-(freq * freq.clamp_min(1e-12).log()).sum())
        return entropies

    def penalty(
        self,
        inputs: InvarianceInputs,
        reconstruction_loss: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encoder-side penalty for one minibatch.

        Parameters
        ----------
        inputs
            Posterior and confounders from the module's ``invariance_inputs`` hook.
        reconstruction_loss
            Mean reconstruction loss per cell (``-E log p(x | z, c)``), part of the ``"mi"``
            bound. ``None``: leave it out (only the pairwise-KL part is penalised).

        Returns
        -------
        Dict with ``"penalty"`` (weighted total, to add to the loss) and the unweighted parts
        that apply: ``"pairwise_kl"``, ``"mi_bound"``, ``"adversarial"``.
        """
        self._check(inputs)
        zero = inputs.qz.loc.new_zeros(())
        out: dict[str, torch.Tensor] = {}
        total = zero
        if self.use_mi:
            pairwise = pairwise_gaussian_kl(inputs.qz.loc, inputs.qz.scale**2)
            bound = pairwise if reconstruction_loss is None else pairwise + reconstruction_loss
            out["pairwise_kl"], out["mi_bound"] = pairwise, bound
            total = total + self.weight * bound
        if self.use_adversary:
            cross_entropies, squared_errors = self._adversary_terms(inputs)
            success = zero
            for entropy, ce in zip(self._chance_entropies(inputs), cross_entropies, strict=True):
                success = success + (entropy - ce).clamp_min(0.0)
            if squared_errors is not None:
                variance = inputs.continuous.var(0, unbiased=False).clamp_min(_VAR_MIN)
                success = success + (1.0 - squared_errors / variance).clamp_min(0.0).sum()
            out["adversarial"] = success
            total = total + self.adversarial_weight * success
        out["penalty"] = total
        return out

    def discriminator_loss(self, inputs: InvarianceInputs) -> torch.Tensor:
        """Loss of the discriminator heads (cross-entropy + mean squared error).

        Pass ``inputs.detach()`` so that only the discriminator learns from it.

        Returns
        -------
        Scalar tensor (0 without a discriminator).
        """
        self._check(inputs)
        loss = inputs.qz.loc.new_zeros(())
        if not self.use_adversary:
            return loss
        cross_entropies, squared_errors = self._adversary_terms(inputs)
        for ce in cross_entropies:
            loss = loss + ce
        if squared_errors is not None:
            loss = loss + squared_errors.sum()
        return loss

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, weight={self.weight}, "
            f"adversarial_weight={self.adversarial_weight}, "
            f"n_cats_per_key={self.n_cats_per_key}, n_continuous={self.n_continuous}"
        )
