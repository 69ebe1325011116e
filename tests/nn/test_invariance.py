from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from scgexp.nn import Invariance, InvarianceInputs, pairwise_gaussian_kl


def test_pairwise_kl_matches_torch():
    torch.manual_seed(0)
    mean, var = torch.randn(6, 3), torch.rand(6, 3) + 0.1
    expected = torch.stack(
        [
            kl_divergence(Normal(mean[i], var[i].sqrt()), Normal(mean[j], var[j].sqrt())).sum()
            for i in range(6)
            for j in range(6)
            if i != j
        ]
    ).mean()
    torch.testing.assert_close(pairwise_gaussian_kl(mean, var), expected)
    assert pairwise_gaussian_kl(mean[:1], var[:1]) == 0


def _inputs(n=256, informative=True, seed=0):
    torch.manual_seed(seed)
    batch = torch.randint(3, (n,))
    depth = torch.randn(n, 1)
    noise = torch.randn(n, 4)
    if informative:
        noise[:, 0] += 2.0 * batch
        noise[:, 1] += 2.0 * depth[:, 0]
    single = torch.zeros(n, 1, dtype=torch.long)
    return InvarianceInputs(Normal(noise, torch.ones_like(noise)), [batch, single], depth)


def _train_discriminator(invariance, inputs, steps=200):
    optimizer = torch.optim.Adam(invariance.discriminator_parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        invariance.discriminator_loss(inputs.detach()).backward()
        optimizer.step()


@pytest.mark.parametrize("method", ["adversarial", "both"])
def test_adversary_detects_categorical_and_continuous(method):
    invariance = Invariance(4, n_cats_per_key=[3, 1], n_continuous=1, method=method)
    assert len(list(invariance.classifiers[1].parameters())) == 0  # one category: no head
    informative = _inputs()
    _train_discriminator(invariance, informative)
    success = invariance.penalty(_inputs(seed=1))["adversarial"]  # held-out cells
    assert success > 0.5  # the confounders are predicted well above chance
    fresh = Invariance(4, n_cats_per_key=[3, 1], n_continuous=1, method=method)
    _train_discriminator(fresh, _inputs(informative=False), steps=50)
    assert fresh.penalty(_inputs(informative=False, seed=1))["adversarial"] < 0.3 * success
    # the penalty's gradient reaches the latent
    latent = informative.qz.loc.clone().requires_grad_(True)
    inputs = InvarianceInputs(Normal(latent, informative.qz.scale), *informative[1:])
    invariance.penalty(inputs)["penalty"].backward()
    assert latent.grad.abs().sum() > 0


def test_mi_penalty_includes_reconstruction():
    invariance = Invariance(4, n_cats_per_key=[3], n_continuous=1, method="mi", weight=2.0)
    assert not invariance.has_discriminator
    inputs = _inputs()
    out = invariance.penalty(
        InvarianceInputs(inputs.qz, inputs.categorical[:1], inputs.continuous)
    )
    recon = torch.tensor(10.0)
    with_recon = invariance.penalty(
        InvarianceInputs(inputs.qz, inputs.categorical[:1], inputs.continuous), recon
    )
    torch.testing.assert_close(with_recon["penalty"], out["penalty"] + 2.0 * recon)
    torch.testing.assert_close(out["penalty"], 2.0 * out["pairwise_kl"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        Invariance(4, method="kl")
    with pytest.raises(ValueError, match="non-negative"):
        Invariance(4, weight=-1.0)
    invariance = Invariance(4, n_cats_per_key=[3], n_continuous=2, method="both")
    with pytest.raises(ValueError, match="continuous"):
        invariance.penalty(_inputs()._replace(categorical=[torch.zeros(8, dtype=torch.long)]))


def test_pairwise_kl_stays_float32_under_float16_autocast():
    # Sharp posteriors overflowed float16 matrix products (inf - inf = NaN) under "16-mixed".
    mean = 2 * torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    var = torch.full((64, 10), 1e-3)
    expected = pairwise_gaussian_kl(mean.double(), var.double())
    with torch.autocast("cpu", dtype=torch.float16):
        kl = pairwise_gaussian_kl(mean, var)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=0)
