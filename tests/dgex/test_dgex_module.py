"""DGEXModule: standardisation, heads, losses, gradients, predict and sample."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from scgexp.dgex import DGEXModule

LANDMARKS, TARGETS = [4, 0, 2], [1, 3, 5, 6]


def _module(**kwargs):
    torch.manual_seed(0)
    kwargs = {"n_hidden": 8, "n_layers": 2, "dropout_rate": 0.0, **kwargs}
    module = DGEXModule(7, LANDMARKS, TARGETS, **kwargs)
    module.landmark_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
    module.landmark_scale.copy_(torch.tensor([2.0, 0.5, 3.0]))
    module.target_mean.copy_(torch.tensor([0.0, 1.0, -1.0, 4.0]))
    module.target_scale.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]))
    if module.skip is not None:
        with torch.no_grad():
            module.skip.weight.normal_()
    return module.eval()


def _x(n=10, seed=0):
    return torch.randn(n, 7, generator=torch.Generator().manual_seed(seed)) * 2 + 1


def test_forward_standardises_and_adds_the_linear_skip():
    module = _module()
    x = _x()
    landmarks = (x[:, LANDMARKS] - module.landmark_mean) / module.landmark_scale
    targets = (x[:, TARGETS] - module.target_mean) / module.target_scale
    with torch.no_grad():
        inference_outputs = module.inference(**module._get_inference_input({"X": x}))
        outputs = module.generative(**module._get_generative_input({}, inference_outputs))
        torch.testing.assert_close(inference_outputs["landmarks"], landmarks)
        torch.testing.assert_close(inference_outputs["z"], module.hidden(landmarks))
        expected = module.mean_head(inference_outputs["z"]) + module.skip(landmarks)
    torch.testing.assert_close(outputs["mean"], expected)
    torch.testing.assert_close(module.standardise_targets(x), targets)


@pytest.mark.parametrize("loss", ["mse", "gaussian"])
def test_loss_values(loss):
    module = _module(loss=loss)
    x = _x()
    with torch.no_grad():
        _, outputs, loss_output = module.forward({"X": x})
    target = (x[:, TARGETS] - module.target_mean) / module.target_scale
    mean, log_var = outputs["mean"], outputs["log_var"]
    squared_error = (mean - target) ** 2
    # Gaussian NLL without its constant 0.5 log(2π)
    nll = -Normal(mean, torch.exp(0.5 * log_var)).log_prob(target) - 0.5 * math.log(2 * math.pi)
    per_cell = (squared_error if loss == "mse" else nll).mean(-1)
    torch.testing.assert_close(loss_output.reconstruction_loss["reconstruction_loss"], per_cell)
    expected = per_cell.mean() + (nll.mean() if loss == "mse" else 0.0)
    torch.testing.assert_close(loss_output.loss, expected)
    mae = ((mean - target).abs() * module.target_scale).mean()
    torch.testing.assert_close(loss_output.extra_metrics["mae"], mae)
    torch.testing.assert_close(
        loss_output.extra_metrics["mae"],
        (mean * module.target_scale + module.target_mean - x[:, TARGETS]).abs().mean(),
    )


@pytest.mark.parametrize("variance", ["gene", "value"])
def test_variance_is_trained_with_the_mse_loss(variance):
    module = _module(loss="mse", variance=variance)
    _, _, loss_output = module.forward({"X": _x()})
    loss_output.loss.backward()
    parameter = module.log_var if variance == "gene" else module.log_var_head.weight
    assert parameter.grad.abs().sum() > 0


def test_gaussian_loss_trains_mean_and_hidden_layers_through_the_variance():
    module = _module(loss="gaussian", variance="value")
    with torch.no_grad():  # the hidden layers' gradient then comes from the variance head only
        module.mean_head.weight.zero_()
    _, _, loss_output = module.forward({"X": _x()})
    loss_output.loss.backward()
    assert module.mean_head.bias.grad.abs().sum() > 0  # the mean is fitted by the NLL
    assert sum(p.grad.abs().sum() for p in module.hidden.parameters()) > 0


def test_predict_returns_training_units_and_log_var_is_clamped():
    module = _module(variance="value")
    x = _x()
    with torch.no_grad():
        outputs = module.generative(**module.inference(x[:, LANDMARKS]))
        predicted = module.predict(x[:, LANDMARKS])
    torch.testing.assert_close(
        predicted["mean"], outputs["mean"] * module.target_scale + module.target_mean
    )
    torch.testing.assert_close(
        predicted["std"], torch.exp(0.5 * outputs["log_var"]) * module.target_scale
    )
    with torch.no_grad():
        module.log_var_head.weight.zero_()
        module.log_var_head.bias.copy_(torch.tensor([50.0, -50.0, 3.0, -3.0]))
        log_var = module.generative(**module.inference(x[:, LANDMARKS]))["log_var"]
    torch.testing.assert_close(log_var, torch.tensor([10.0, -10.0, 3.0, -3.0]).expand(10, -1))


def test_dropout_is_applied_in_training_only():
    module = _module(dropout_rate=0.5)
    landmarks = _x()[:, LANDMARKS]
    with torch.no_grad():
        torch.testing.assert_close(
            module.inference(landmarks)["z"], module.inference(landmarks)["z"]
        )
        module.train()
        assert not torch.allclose(
            module.inference(landmarks)["z"], module.inference(landmarks)["z"]
        )


def test_sample_shapes():
    module = _module()
    x = _x()
    assert module.sample({"X": x}).shape == (10, 4)
    assert module.sample({"X": x}, n_samples=3).shape == (3, 10, 4)


def test_samples_spread_as_the_predicted_standard_deviation():
    module = _module()
    x = _x(n=5)
    torch.manual_seed(0)
    draws = module.sample({"X": x}, n_samples=20_000)
    predicted = module.predict(x[:, LANDMARKS])
    torch.testing.assert_close(draws.mean(0), predicted["mean"], rtol=0, atol=0.1)
    torch.testing.assert_close(draws.std(0), predicted["std"], rtol=0.05, atol=0)
