"""ZINBAutoencoderModule: exact checks against independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS
from torch.nn.functional import softplus

from scgexp.data import simulate_scrna
from scgexp.zinb import ZINBAutoencoder, ZINBAutoencoderModule


def _module(**kwargs):
    torch.manual_seed(0)
    kwargs = {"n_input": 6, "n_hidden": 8, "n_latent": 3, "dropout_rate": 0.0, **kwargs}
    module = ZINBAutoencoderModule(**kwargs)
    module.median_total.fill_(50.0)
    module.input_mean.copy_(torch.linspace(0.1, 0.6, 6))
    module.input_scale.copy_(torch.linspace(0.5, 2.0, 6))
    return module.eval()


def _counts(n=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (n, 6), generator=generator).float() + 1.0


def test_input_is_log1p_of_size_factor_normalised_counts():
    """Size factor = total / median total; input = standardised log1p(x / s), so a cell with
    every count tripled has the same bottleneck and a tripled size factor."""
    module = _module()
    x = _counts()
    batch = torch.zeros(x.shape[0], 1, dtype=torch.long)
    s = x.sum(-1, keepdim=True) / 50.0
    torch.testing.assert_close(module.size_factor(x, None), s)
    expected = (torch.log1p(x / s) - module.input_mean) / module.input_scale
    torch.testing.assert_close(module.transform_input(x, s), expected)
    with torch.no_grad():
        once = module.inference(x, batch)
        thrice = module.inference(3 * x, batch)
    torch.testing.assert_close(once["library"], s)
    torch.testing.assert_close(thrice["library"], 3 * s)
    torch.testing.assert_close(thrice["z"], once["z"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
def test_generative_parameters_follow_the_documented_clips(likelihood):
    """μ = clip(exp(·), 1e-5, 1e6) × s, θ = clip(softplus(·), 1e-4, 1e4), π = sigmoid(·)."""
    module = _module(gene_likelihood=likelihood)
    log_mean = torch.tensor([math.log(1e-3), math.log(2.0), -30.0, 30.0, 0.0, math.log(7.0)])
    raw_theta = torch.tensor([-20.0, 0.0, 1.0, 20.0, -1.0, 3.0])
    zi_bias = torch.tensor([-2.0, 0.0, 1.0, 3.0, -1.0, 0.5])
    with torch.no_grad():
        module.mean_head.weight.zero_()
        module.mean_head.bias.copy_(log_mean)
        if module.px_r is not None:
            module.px_r.copy_(raw_theta)
        if module.dropout_head is not None:
            module.dropout_head.weight.zero_()
            module.dropout_head.bias.copy_(zi_bias)
        library = torch.tensor([[2.0], [0.5]])
        px = module.generative(torch.randn(2, 3), library, torch.zeros(2, 1, dtype=torch.long))[
            "px"
        ]
    clipped = log_mean.clamp(math.log(1e-5), math.log(1e6))
    mu = px.rate if likelihood == "poisson" else px.mu
    torch.testing.assert_close(mu, clipped.exp() * library)
    torch.testing.assert_close(px.scale, torch.softmax(clipped, -1).expand(2, -1))
    if likelihood != "poisson":
        theta = softplus(raw_theta).clamp(1e-4, 1e4)
        torch.testing.assert_close(px.theta.expand(2, -1), theta.expand(2, -1))
    if likelihood == "zinb":
        torch.testing.assert_close(px.zi_probs, torch.sigmoid(zi_bias).expand(2, -1))


def _zinb_log_prob(x, mu, theta, pi):
    """DCA's ZINB log-likelihood written out (METHODS.md), independent of scvi."""
    nb_zero = (theta / (theta + mu)) ** theta
    nb = (
        torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
        + theta * torch.log(theta / (theta + mu))
        + x * torch.log(mu / (theta + mu))
    )
    return torch.where(x == 0, torch.log(pi + (1 - pi) * nb_zero), torch.log(1 - pi) + nb)


def test_loss_is_the_zinb_nll_summed_over_genes_plus_ridge():
    module = _module(dispersion="gene-cell", ridge_lambda=0.7)
    x = _counts(n=8)
    x[::2, ::3] = 0.0
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(8, 1, dtype=torch.long),
    }
    with torch.no_grad():
        _, generative_outputs, loss_output = module.forward(tensors)
    px = generative_outputs["px"]
    pi = torch.sigmoid(px.zi_logits)
    nll = -_zinb_log_prob(x.double(), px.mu.double(), px.theta.double(), pi.double()).sum(-1)
    ridge = 0.7 * (pi.double() ** 2).sum(-1)
    torch.testing.assert_close(
        loss_output.reconstruction_loss["reconstruction_loss"].double(), nll, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        loss_output.loss.double(), nll.mean() + ridge.mean(), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("head", ["dropout_head", "disp_head"])
def test_dropout_and_dispersion_heads_train_the_decoder(head):
    """The NLL's gradient reaches the decoder through the π and θ heads too (not detached).

    With the other heads' weights at zero, the decoder's gradient comes from this head alone.
    """
    module = _module(dispersion="gene-cell")
    module.train()
    with torch.no_grad():
        for other in ("mean_head", "dropout_head", "disp_head"):
            if other != head:
                getattr(module, other).weight.zero_()
    x = _counts(n=16)
    x[::2, ::2] = 0.0
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(16, 1, dtype=torch.long),
    }
    _, _, loss_output = module.forward(tensors)
    loss_output.loss.backward()
    decoder_grad = sum(
        p.grad.abs().sum() for p in module.decoder.parameters() if p.grad is not None
    )
    assert decoder_grad > 1e-6


def test_dispersion_starts_at_one():
    torch.testing.assert_close(softplus(_module().px_r), torch.ones(6), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("linear_bottleneck", "n_linear"), [(True, 1), (False, 2)])
def test_bottleneck_follows_the_hidden_layers(linear_bottleneck, n_linear):
    """DCA's bottleneck (``linear_bottleneck=False``) is one more hidden layer after the
    encoder's ``n_layers``; the linear one is a separate layer after them."""
    module = _module(n_layers=1, linear_bottleneck=linear_bottleneck)
    linears = [m for m in module.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_linear
    assert linears[0].in_features == 6
    assert linears[0].out_features == 8
    assert linears[-1].out_features == (8 if linear_bottleneck else 3)
    assert (module.z_layer is not None) == linear_bottleneck


def test_poisson_samples_have_the_fitted_mean():
    module = _module(gene_likelihood="poisson")
    with torch.no_grad():
        module.mean_head.weight.zero_()
        module.mean_head.bias.copy_(torch.log(torch.tensor([5.0, 20.0, 50.0, 1.0, 2.0, 80.0])))
    x = _counts(n=4)
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(4, 1, dtype=torch.long),
    }
    torch.manual_seed(0)
    samples = module.sample(tensors, n_samples=4000)
    assert samples.shape == (4, 6, 4000)
    with torch.no_grad():
        _, generative_outputs = module.forward(tensors, compute_loss=False)
    rate = generative_outputs["px"].rate
    torch.testing.assert_close(samples.mean(-1), rate, rtol=0.05, atol=0.1)


def test_registered_size_factor_is_used_as_given():
    """A registered size factor is used as given (not divided by the median total, as the
    count-derived one is): μ and the reported library size follow it."""
    module = ZINBAutoencoderModule(n_input=4, n_hidden=8, n_latent=2, use_size_factor_key=True)
    module.median_total.fill_(50.0)
    x = torch.arange(1.0, 13.0).reshape(3, 4)
    size_factor = torch.tensor([[0.5], [1.0], [2.0]])
    torch.testing.assert_close(module.size_factor(x, size_factor), size_factor)
    adata = simulate_scrna(n_cells=60, n_genes=30, seed=0)
    adata.obs["sf"] = np.linspace(0.5, 2.0, adata.n_obs)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", size_factor_key="sf")
    model = ZINBAutoencoder(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, enable_progress_bar=False)
    median = float(model.module.median_total)
    assert median > 1.0
    library = model.get_latent_library_size().ravel()
    np.testing.assert_allclose(library, adata.obs["sf"].to_numpy() * median, rtol=1e-5)


def test_encoder_reads_counts_divided_by_the_registered_size_factor():
    """The encoder reads counts divided by the registered size factor, the one μ and the input
    statistics use (not one derived from the counts)."""
    torch.manual_seed(0)
    module = ZINBAutoencoderModule(
        n_input=6, n_hidden=8, n_latent=3, dropout_rate=0.0, use_size_factor_key=True
    ).eval()
    module.median_total.fill_(50.0)
    x = torch.randint(1, 20, (5, 6), generator=torch.Generator().manual_seed(0)).float()
    batch = torch.zeros(5, 1, dtype=torch.long)
    size_factor = torch.tensor([0.2, 0.5, 1.0, 2.0, 5.0])
    with torch.no_grad():
        out = module.inference(x, batch, size_factor=size_factor)
        expected = module.z_layer(module.encoder(module.transform_input(x, size_factor[:, None])))
        doubled = module.inference(x, batch, size_factor=2 * size_factor)
    torch.testing.assert_close(out["library"], size_factor[:, None])
    torch.testing.assert_close(out["z"], expected)
    assert not torch.allclose(doubled["z"], out["z"], atol=1e-4)


def test_transform_batch_zero_decodes_every_cell_as_the_first_batch():
    """Batch code 0 is a batch to decode at, not "no transform" (a truthiness test would
    decode each cell as its own batch)."""
    torch.manual_seed(0)
    module = ZINBAutoencoderModule(n_input=6, n_batch=2, n_hidden=8, n_latent=3).eval()
    z, library = torch.randn(4, 3), torch.ones(4, 1)
    ones, zeros = torch.ones(4, 1, dtype=torch.long), torch.zeros(4, 1, dtype=torch.long)
    with torch.no_grad():
        as_0 = module.generative(z, library, ones, transform_batch=0)["px"].mu
        own_0 = module.generative(z, library, zeros)["px"].mu
    torch.testing.assert_close(as_0, own_0)
    adata = simulate_scrna(n_cells=60, n_genes=30, seed=0)
    ZINBAutoencoder.setup_anndata(adata, layer="counts", batch_key="batch")
    model = ZINBAutoencoder(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, enable_progress_bar=False)
    first = adata.obs["batch"].cat.categories[0]
    own = model.get_normalized_expression(return_numpy=True)
    as_first = model.get_normalized_expression(transform_batch=first, return_numpy=True)
    other = (adata.obs["batch"] != first).to_numpy()
    np.testing.assert_allclose(as_first[~other], own[~other], rtol=1e-5)
    assert not np.allclose(as_first[other], own[other], rtol=1e-3)
