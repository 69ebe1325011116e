"""Exact values of the invariance terms (pairwise KL, adversarial success, discriminator loss)."""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence
from torch.nn.functional import cross_entropy

from scgexp.nn import Invariance, InvarianceInputs


def _mean_pairwise_kl(loc, scale):
    n = loc.shape[0]
    kls = [
        kl_divergence(Normal(loc[i], scale[i]), Normal(loc[j], scale[j])).sum()
        for i in range(n)
        for j in range(n)
        if i != j
    ]
    return torch.stack(kls).mean()


def test_mi_penalty_uses_the_posterior_variance_not_its_scale():
    torch.manual_seed(0)
    loc, scale = torch.randn(8, 3), torch.rand(8, 3) * 2 + 0.2  # scale far from 1
    invariance = Invariance(3, n_cats_per_key=[2], method="mi", weight=0.5)
    inputs = InvarianceInputs(Normal(loc, scale), [torch.randint(2, (8,))], None)
    out = invariance.penalty(inputs, torch.tensor(4.0))
    expected = _mean_pairwise_kl(loc, scale)
    torch.testing.assert_close(out["pairwise_kl"], expected)
    torch.testing.assert_close(out["mi_bound"], expected + 4.0)
    torch.testing.assert_close(out["penalty"], 0.5 * (expected + 4.0))


def _linear_adversary(**kwargs) -> Invariance:
    """Adversarial invariance on a 2-d latent with one-layer heads whose weights we set:
    two binary confounders (one predicted well, one predicted wrongly) and three continuous
    ones on different scales (predicted well, partly, and with the wrong sign)."""
    invariance = Invariance(
        2,
        n_cats_per_key=[2, 2],
        n_continuous=3,
        method="adversarial",
        n_layers=0,
        **kwargs,
    )
    good, bad = invariance.classifiers
    with torch.no_grad():
        good[0].weight.copy_(torch.tensor([[0.0, 0.0], [4.0, 0.0]]))  # logit 4 (z0 - 0.8)
        good[0].bias.copy_(torch.tensor([0.0, -3.2]))
        bad[0].weight.copy_(-good[0].weight)
        bad[0].bias.copy_(-good[0].bias)
        regressor = invariance.regressor[0]
        regressor.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.1], [-1.0, 0.0]]))
        regressor.bias.zero_()
    return invariance


def _confounded_inputs(n=400):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, generator=generator)
    noise = torch.randn(n, 3, generator=generator)
    # Imbalanced categories: the chance entropy is that of the minibatch's frequencies.
    codes = (z[:, 0] > 0.8).long()  # about 21% ones
    continuous = torch.stack(
        [z[:, 0] + 0.3 * noise[:, 0], 0.1 * z[:, 1] + 0.05 * noise[:, 1], z[:, 0]], 1
    )
    return z, codes, continuous


def test_adversarial_success_is_clipped_information_over_chance_per_confounder():
    invariance = _linear_adversary(adversarial_weight=1.0)
    z, codes, continuous = _confounded_inputs()
    inputs = InvarianceInputs(Normal(z, torch.ones_like(z)), [codes, codes], continuous)

    p = codes.float().mean()
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    assert entropy < 0.9 * math.log(2)  # imbalanced: below the entropy of uniform codes
    good, bad = invariance.classifiers
    ce_good = cross_entropy(good(z), codes)
    ce_bad = cross_entropy(bad(z), codes)
    assert ce_good < entropy < ce_bad  # one informative head, one worse than chance
    prediction = invariance.regressor(z)
    r2 = 1 - ((prediction - continuous) ** 2).mean(0) / continuous.var(0, unbiased=False)
    assert r2[0] > 0.5
    assert 0 < r2[1] < r2[0]
    assert r2[2] < 0
    expected = (entropy - ce_good) + r2[0] + r2[1]  # worse than chance counts as nothing

    out = invariance.penalty(inputs)
    torch.testing.assert_close(out["adversarial"], expected)
    torch.testing.assert_close(out["penalty"], expected)


def test_adversarial_weight_defaults_to_weight_times_latent_size_and_is_honoured():
    z, codes, continuous = _confounded_inputs()
    inputs = InvarianceInputs(Normal(z, torch.ones_like(z)), [codes, codes], continuous)
    default = _linear_adversary(weight=0.5)
    out = default.penalty(inputs)
    assert out["adversarial"] > 0.5
    assert default.adversarial_weight == 0.5 * 2
    torch.testing.assert_close(out["penalty"], 0.5 * 2 * out["adversarial"])
    explicit = _linear_adversary(weight=0.5, adversarial_weight=3.0)
    torch.testing.assert_close(explicit.penalty(inputs)["penalty"], 3.0 * out["adversarial"])


def test_discriminator_loss_sums_cross_entropies_and_per_confounder_mean_squared_errors():
    invariance = _linear_adversary()
    z, codes, continuous = _confounded_inputs()
    inputs = InvarianceInputs(Normal(z, torch.ones_like(z)), [codes, 1 - codes], continuous)
    good, bad = invariance.classifiers
    expected = (
        cross_entropy(good(z), codes)
        + cross_entropy(bad(z), 1 - codes)
        + ((invariance.regressor(z) - continuous) ** 2).mean(0).sum()
    )
    torch.testing.assert_close(invariance.discriminator_loss(inputs.detach()), expected)
    # Without a discriminator ("mi"), the loss is 0, as documented.
    mi = Invariance(2, n_cats_per_key=[2, 2], n_continuous=3, method="mi")
    assert mi.discriminator_loss(inputs.detach()).item() == 0.0
