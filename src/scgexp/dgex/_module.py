"""Torch module of D-GEX: a multilayer perceptron from landmark genes to target genes."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import FCLayers
from torch import nn

from scgexp.data._checks import check_option

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
N_QUANTILES = 101


class DGEXModule(BaseModuleClass):
    """Landmark → target regression network of :cite:p:`Chen2016`.

    Inputs and targets are standardised per gene inside the module (buffers filled by the
    model), so outputs come back in the units of the training data.

    Parameters
    ----------
    n_input
        Number of registered genes (landmarks and targets).
    landmark_index, target_index
        Column positions of landmarks and targets among the registered genes.
    n_hidden, n_layers, dropout_rate, activation
        Hidden layers: ``n_layers`` fully connected layers of ``n_hidden`` units with the
        activation, dropout on hidden units only, as in D-GEX.
    loss
        ``"mse"``: the mean is fitted by squared error, as in D-GEX; the variance head is fitted
        on detached residuals, so it does not change the mean. ``"gaussian"``: mean and variance
        are fitted jointly by the Gaussian negative log-likelihood.
    variance
        ``"gene"``: one variance per target gene; ``"value"``: a variance per sample and gene,
        predicted from the last hidden layer.
    linear_skip
        Add a linear map from landmarks to targets beside the hidden layers, so the network
        only has to learn what linear regression cannot. It matches linear regression on small
        data sets, where the plain D-GEX network falls behind it.
    """

    def __init__(
        self,
        n_input: int,
        landmark_index: list[int],
        target_index: list[int],
        n_hidden: int = 2000,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        activation: Literal["tanh", "relu", "gelu", "leaky_relu"] = "tanh",
        loss: Literal["mse", "gaussian"] = "mse",
        variance: Literal["gene", "value"] = "value",
        linear_skip: bool = True,
    ):
        super().__init__()
        check_option("activation", activation, tuple(ACTIVATIONS))
        check_option("loss", loss, ("mse", "gaussian"))
        check_option("variance", variance, ("gene", "value"))
        self.loss_type = loss
        self.variance = variance
        n_landmarks, n_targets = len(landmark_index), len(target_index)
        self.register_buffer("landmark_index", torch.as_tensor(landmark_index, dtype=torch.long))
        self.register_buffer("target_index", torch.as_tensor(target_index, dtype=torch.long))
        self.register_buffer("landmark_mean", torch.zeros(n_landmarks))
        self.register_buffer("landmark_scale", torch.ones(n_landmarks))
        self.register_buffer("target_mean", torch.zeros(n_targets))
        self.register_buffer("target_scale", torch.ones(n_targets))
        self.register_buffer("landmark_quantiles", torch.zeros(n_landmarks, N_QUANTILES))

        self.hidden = FCLayers(
            n_in=n_landmarks,
            n_out=n_hidden,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=False,
            use_layer_norm=False,
            activation_fn=ACTIVATIONS[activation],
        )
        self.mean_head = nn.Linear(n_hidden, n_targets)
        self.skip = nn.Linear(n_landmarks, n_targets, bias=False) if linear_skip else None
        if variance == "value":
            self.log_var_head = nn.Linear(n_hidden, n_targets)
        else:
            self.log_var = nn.Parameter(torch.zeros(n_targets))

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"landmarks": tensors[REGISTRY_KEYS.X_KEY][:, self.landmark_index]}

    def _get_generative_input(self, tensors, inference_outputs) -> dict[str, torch.Tensor]:
        return {"z": inference_outputs["z"], "landmarks": inference_outputs["landmarks"]}

    @auto_move_data
    def inference(self, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Standardise landmark values and map them to the last hidden layer ``z``."""
        standardised = (landmarks - self.landmark_mean) / self.landmark_scale
        return {"z": self.hidden(standardised), "landmarks": standardised}

    @auto_move_data
    def generative(self, z: torch.Tensor, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Standardised target means and log-variances from the hidden layer (and landmarks)."""
        if self.variance == "value":
            z_var = z.detach() if self.loss_type == "mse" else z
            log_var = self.log_var_head(z_var)
        else:
            log_var = self.log_var.expand(z.shape[0], -1)
        mean = self.mean_head(z)
        if self.skip is not None:
            mean = mean + self.skip(landmarks)
        return {"mean": mean, "log_var": log_var.clamp(-10.0, 10.0)}

    def standardise_targets(self, x: torch.Tensor) -> torch.Tensor:
        """Targets of a full registered row, standardised per gene."""
        return (x[:, self.target_index] - self.target_mean) / self.target_scale

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs) -> LossOutput:
        """Squared error or Gaussian NLL per target gene, averaged over genes."""
        target = self.standardise_targets(tensors[REGISTRY_KEYS.X_KEY])
        mean, log_var = generative_outputs["mean"], generative_outputs["log_var"]
        squared_error = (mean - target) ** 2
        mean_for_var = mean.detach() if self.loss_type == "mse" else mean
        nll = 0.5 * (log_var + (mean_for_var - target) ** 2 * torch.exp(-log_var))
        per_cell = (squared_error if self.loss_type == "mse" else nll).mean(-1)
        loss = per_cell.mean()
        if self.loss_type == "mse":
            loss = loss + nll.mean()  # trains the variance only: mean and z are detached
        mae = ((mean.detach() - target).abs() * self.target_scale).mean()
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_cell,
            extra_metrics={"mae": mae, "mse": squared_error.detach().mean()},
        )

    @torch.inference_mode()
    def predict(
        self, landmarks: torch.Tensor, keep: tuple[str, ...] = ("z", "mean", "std")
    ) -> dict[str, torch.Tensor]:
        """Targets in training units (and their standard deviation) from raw landmark values.

        ``keep``: the outputs wanted; the output heads run only for ``"mean"`` or ``"std"``.
        """
        inference_outputs = self.inference(landmarks)
        outputs = {"z": inference_outputs["z"]}
        if "mean" in keep or "std" in keep:
            generated = self.generative(**inference_outputs)
            outputs["mean"] = generated["mean"] * self.target_scale + self.target_mean
            outputs["std"] = torch.exp(0.5 * generated["log_var"]) * self.target_scale
        return outputs

    @torch.inference_mode()
    def sample(self, tensors: dict[str, torch.Tensor], n_samples: int = 1) -> torch.Tensor:
        """Draw targets from the predictive Gaussian."""
        x = tensors[REGISTRY_KEYS.X_KEY].to(self.landmark_index.device)
        outputs = self.predict(x[:, self.landmark_index])
        normal = torch.distributions.Normal(outputs["mean"], outputs["std"])
        return normal.sample((n_samples,)).squeeze(0)
