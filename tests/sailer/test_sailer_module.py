"""SAILERModule: confounders, encoder input, likelihoods, KL, invariance hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS
from torch.distributions import Bernoulli, Normal, Poisson, kl_divergence

from scgexp.data import simulate_scatac
from scgexp.sailer import SAILER, SAILERModule


def _module(**kwargs):
    torch.manual_seed(0)
    kwargs = {
        "n_input": 12,
        "n_batch": 2,
        "n_cats_per_cov": [3],
        "n_continuous_cov": 1,
        "n_hidden": 16,
        "n_hidden_inner": 8,
        "n_latent": 4,
        **kwargs,
    }
    module = SAILERModule(**kwargs)
    module.confounder_mean.copy_(torch.tensor([1.5, -0.5]))
    module.confounder_scale.copy_(torch.tensor([0.5, 2.0]))
    module.mean_log_total.fill_(3.0)
    module.mean_input_total.fill_(7.0)
    return module.eval()


def _tensors(n=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 4, (n, 12), generator=generator).float()
    x[:, 0] = 2.0  # no empty cell
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.arange(n).remainder(2).reshape(-1, 1),
        REGISTRY_KEYS.CAT_COVS_KEY: torch.arange(n).remainder(3).reshape(-1, 1),
        REGISTRY_KEYS.CONT_COVS_KEY: torch.linspace(-1.0, 1.0, n).reshape(-1, 1),
    }


def test_confounders_are_log_open_peaks_then_covariates_and_log_total():
    module = _module()
    tensors = _tensors()
    x = tensors[REGISTRY_KEYS.X_KEY]
    confounders = module._confounders(tensors)
    expected = torch.cat(
        [torch.log((x > 0).sum(-1, keepdim=True).float()), tensors[REGISTRY_KEYS.CONT_COVS_KEY]],
        dim=-1,
    )
    torch.testing.assert_close(confounders["cont_confounders"], expected)
    torch.testing.assert_close(confounders["log_total"], torch.log(x.sum(-1, keepdim=True)))
    torch.testing.assert_close(
        module.standardise(expected),
        (expected - torch.tensor([1.5, -0.5])) / torch.tensor([0.5, 2.0]),
    )


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_encoder_reads_depth_normalised_input_and_posterior_scale_is_a_std(likelihood):
    module = _module(likelihood=likelihood)
    x = _tensors()[REGISTRY_KEYS.X_KEY]
    raw = (x > 0).float() if likelihood == "bernoulli" else torch.log1p(x)
    encoder_input = raw / raw.sum(-1, keepdim=True) * 7.0
    with torch.no_grad():
        qz = module.inference(x)["qz"]
        hidden = module.encoder(encoder_input)
        variance = torch.exp(module.var_encoder(hidden)) + 1e-4
    torch.testing.assert_close(qz.loc, module.mean_encoder(hidden).detach())
    torch.testing.assert_close(qz.scale, variance.sqrt())
    if likelihood == "bernoulli":  # counts are binarised: 3 fragments read as 1
        with torch.no_grad():
            torch.testing.assert_close(module.inference((x > 0).float())["qz"].loc, qz.loc)


def test_latent_sample_is_reparameterised():
    module = _module()
    z = module.inference(_tensors()[REGISTRY_KEYS.X_KEY])["z"]
    z.pow(2).sum().backward()
    assert module.mean_encoder.weight.grad.abs().sum() > 0
    assert module.var_encoder.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_decoder_sees_standardised_confounders_and_poisson_offset(likelihood):
    module = _module(likelihood=likelihood)
    tensors = _tensors()
    with torch.no_grad():
        inference_outputs = module.inference(tensors[REGISTRY_KEYS.X_KEY])
        inputs = module._get_generative_input(tensors, inference_outputs)
        logits = module.generative(**inputs)["px"]
        covariates = module.standardise(inputs["cont_confounders"])
        hidden = module.decoder(
            torch.cat([inputs["z"], covariates], dim=-1),
            inputs["batch_index"],
            inputs["cat_covs"],
        )
        expected = module.output(hidden)
        if likelihood == "poisson":
            expected = expected + inputs["log_total"] - 3.0
        torch.testing.assert_close(logits, expected)
        # A different depth reaches the decoder (not only through the Poisson offset).
        shifted = dict(inputs, cont_confounders=inputs["cont_confounders"] + 1.0)
        assert not torch.allclose(module.generative(**shifted)["px"], logits)


@pytest.mark.parametrize("likelihood", ["bernoulli", "poisson"])
def test_loss_is_nll_summed_over_peaks_plus_weighted_kl(likelihood):
    module = _module(likelihood=likelihood)
    tensors = _tensors()
    x = tensors[REGISTRY_KEYS.X_KEY]
    with torch.no_grad():
        inference_outputs, generative_outputs, loss_output = module.forward(
            tensors, loss_kwargs={"kl_weight": 0.3}
        )
    logits = generative_outputs["px"]
    if likelihood == "bernoulli":
        nll = -Bernoulli(logits=logits).log_prob((x > 0).float()).sum(-1)
    else:
        nll = -Poisson(logits.exp()).log_prob(x).sum(-1)
    qz = inference_outputs["qz"]
    kl = kl_divergence(qz, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(loss_output.reconstruction_loss["reconstruction_loss"], nll)
    torch.testing.assert_close(loss_output.kl_local["kl_local"], kl)
    torch.testing.assert_close(loss_output.loss, (nll + 0.3 * kl).mean())


def test_invariance_inputs_are_the_decoders_confounders():
    module = _module()
    tensors = _tensors()
    with torch.no_grad():
        inference_outputs = module.inference(tensors[REGISTRY_KEYS.X_KEY])
    inputs = module.invariance_inputs(tensors, inference_outputs)
    assert inputs.qz is inference_outputs["qz"]
    assert len(inputs.categorical) == 2
    torch.testing.assert_close(inputs.categorical[0], tensors[REGISTRY_KEYS.BATCH_KEY].reshape(-1))
    torch.testing.assert_close(
        inputs.categorical[1], tensors[REGISTRY_KEYS.CAT_COVS_KEY].reshape(-1)
    )
    raw = module._confounders(tensors)["cont_confounders"]
    torch.testing.assert_close(inputs.continuous, module.standardise(raw))


def test_sample_follows_the_logits_and_several_samples_keep_each_cells_confounders():
    module = _module()
    tensors = _tensors()
    with torch.no_grad():
        module.output.weight.zero_()
        module.output.bias.fill_(20.0)
    assert (module.sample(tensors) == 1).all()
    with torch.no_grad():
        module.output.bias.fill_(-20.0)
    assert (module.sample(tensors) == 0).all()
    # z of shape (n_samples, n, d): each cell keeps its own confounders.
    torch.manual_seed(1)
    module = _module()
    with torch.no_grad():
        inputs = module._get_generative_input(tensors, {"z": torch.randn(3, 6, 4)})
        stacked = module.generative(**inputs)["px"]
        for i in range(3):
            single = module.generative(**dict(inputs, z=inputs["z"][i]))["px"]
            torch.testing.assert_close(stacked[i], single)


def test_encoder_input_total_is_the_mean_number_of_open_peaks():
    adata = simulate_scatac(n_cells=60, n_peaks=300, seed=0)
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    SAILER.setup_anndata(adata, batch_key="batch")
    module = SAILER(adata, n_hidden=16, n_latent=4).module
    n_open = np.asarray((adata.X > 0).sum(1)).ravel()
    np.testing.assert_allclose(float(module.mean_input_total), n_open.mean(), rtol=1e-5)


def test_empty_cell_gets_finite_confounders_and_logits():
    """A cell with no open peak (the model refuses one; the module may be used alone) has
    depth log(max(n_open, 1)) = 0, as the model's statistics count it, and finite logits."""
    torch.manual_seed(0)
    module = SAILERModule(n_input=10, n_hidden=16, n_hidden_inner=8, n_latent=3).eval()
    x = torch.randint(0, 3, (4, 10)).float()
    x[0] = 0.0  # an empty cell
    tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS.BATCH_KEY: torch.zeros(4, 1)}
    confounders = module._confounders(tensors)
    assert torch.isfinite(confounders["cont_confounders"]).all()
    assert confounders["cont_confounders"][0, 0] == 0.0  # log(max(0, 1))
    with torch.no_grad():
        _, generative_outputs = module.forward(tensors, compute_loss=False)
    assert torch.isfinite(generative_outputs["px"]).all()


@pytest.mark.parametrize("normalize_input", [True, False])
def test_encoder_reads_binarised_peaks_raw_or_as_shares(normalize_input):
    """normalize_input=False feeds the binarised peaks as the paper does; True divides each
    cell by its number of open peaks and rescales to the training mean."""
    torch.manual_seed(0)
    module = SAILERModule(
        n_input=10, n_hidden=16, n_hidden_inner=8, n_latent=3, normalize_input=normalize_input
    ).eval()
    module.mean_input_total.fill_(4.0)
    x = torch.randint(0, 3, (5, 10)).float()
    x[:, 0] = 1.0  # no empty cell
    seen = []
    module.encoder.register_forward_hook(lambda layer, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        module.inference(x)
    binary = (x > 0).float()
    expected = binary / binary.sum(-1, keepdim=True) * 4.0 if normalize_input else binary
    torch.testing.assert_close(seen[0], expected)
