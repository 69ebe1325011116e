"""How much room the simulated bulk task leaves to any model beyond linear regression.

The bulk task of ``bench_dgex.py`` simulates expression as a nonlinear (Hill) function of latent
programs plus independent measurement noise on every gene, landmarks included. This script
re-simulates the same data without noise (same seed: the simulator draws the same numbers)
and reports, on the same test samples, the MAE relative to ``LinearRegression`` on the noisy
landmarks of

* the noise-free targets themselves (no predictor can do better on average);
* ``LinearRegression`` fitted on the *noise-free* landmarks (what is left once the input noise
  is gone: the share of the error that is nonlinearity);
* ``LinearRegression`` on the true program activities;
* two predictors that know the simulator's true response functions and estimate each test
  sample's program activities from its noisy landmarks (maximum a posteriori, L-BFGS), with
  the activities' overall Gaussian prior, or with the prior of the sample's true tissue (which
  no model is given). They show how much of the noise-free signal the landmarks still pin down.

Run from the project root::

    python benchmarks/dgex_bulk_ceiling.py                  # the benchmark's 50k x 9,000 task
    python benchmarks/dgex_bulk_ceiling.py --n-train 20000 --n-targets 1000
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

import scgexp
from scgexp.data._simulate import _bulk_parameters


def known_model_predictions(
    params: dict,
    landmark: np.ndarray,
    test_landmarks: np.ndarray,
    noise_sd: float,
    tissue_prior: bool,
) -> np.ndarray:
    """Targets of the test samples from MAP activities under the true response functions."""
    # Each gene has 1-4 regulating programs: keep them as padded (genes, 4) arrays.
    weights = params["weights"]
    programs = np.argsort(weights == 0, axis=1, kind="stable")[:, :4]
    rows = np.arange(len(weights))[:, None]
    program = torch.as_tensor(programs)
    weight = torch.as_tensor(weights[rows, programs])
    slope = torch.as_tensor(params["slope"][rows, programs])
    threshold = torch.as_tensor(params["threshold"][rows, programs])
    baseline = torch.as_tensor(params["baseline"])

    def response(activity: torch.Tensor, genes: np.ndarray) -> torch.Tensor:
        a = activity[:, program[genes]]
        hill = torch.sigmoid(slope[genes] * (a - threshold[genes]))
        return baseline[genes] + (weight[genes] * hill).sum(-1)

    # The simulator's activity prior: tissue mean ~ N(0, 1) plus N(0, 0.5^2) per sample.
    n_test, n_programs = test_landmarks.shape[0], weights.shape[1]
    if tissue_prior:
        test_tissue = params["tissue"][-n_test:]
        prior_mean = torch.as_tensor(params["tissue_means"][test_tissue], dtype=torch.float32)
        prior_var = 0.25
    else:
        prior_mean, prior_var = torch.zeros(n_test, n_programs), 1.25
    observed = torch.as_tensor(test_landmarks)
    landmarks, targets = np.flatnonzero(landmark), np.flatnonzero(~landmark)
    activity = prior_mean.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([activity], max_iter=500, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        fit = ((observed - response(activity, landmarks)) ** 2).sum() / (2 * noise_sd**2)
        prior = ((activity - prior_mean) ** 2).sum() / (2 * prior_var)
        (fit + prior).backward()
        return fit + prior

    optimizer.step(objective)
    with torch.no_grad():
        chunks = np.array_split(targets, max(1, len(targets) // 1000))
        return torch.cat([response(activity, c) for c in chunks], dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-targets", type=int, default=9_000)
    args = parser.parse_args()
    spec = {
        "n_samples": args.n_train + 5_000,
        "n_landmarks": 943,
        "n_targets": args.n_targets,
        "n_programs": 300,
        "n_tissues": 30,
        "seed": 0,
    }
    noisy = scgexp.data.simulate_bulk_expression(**spec)
    clean = scgexp.data.simulate_bulk_expression(noise_sd=0.0, **spec)
    landmark = noisy.var["landmark"].to_numpy()
    assert (clean.var["landmark"].to_numpy() == landmark).all()
    # The simulator's parameters, redrawn from the seed (its first draws).
    params = _bulk_parameters(
        np.random.default_rng(spec["seed"]),
        spec["n_samples"],
        spec["n_landmarks"] + spec["n_targets"],
        spec["n_programs"],
        spec["n_tissues"],
    )
    assert np.allclose(params["activity"], noisy.obsm["program_activity"])
    train, test = slice(0, args.n_train), slice(args.n_train, None)
    truth = noisy.X[test][:, ~landmark]

    def mae_of_linear(inputs: np.ndarray) -> float:
        fit = LinearRegression().fit(inputs[train], noisy.X[train][:, ~landmark])
        return float(np.abs(fit.predict(inputs[test]) - truth).mean())

    baseline = mae_of_linear(noisy.X[:, landmark])
    rows = {
        "LinearRegression, noisy landmarks (the anchor)": baseline,
        "LinearRegression, noise-free landmarks": mae_of_linear(clean.X[:, landmark]),
        "LinearRegression, true program activities": mae_of_linear(noisy.obsm["program_activity"]),
        "noise-free targets (floor)": float(np.abs(clean.X[test][:, ~landmark] - truth).mean()),
    }
    for tissue_prior, name in ((False, "overall prior"), (True, "true tissue's prior")):
        predicted = known_model_predictions(
            params,
            landmark,
            noisy.X[test][:, landmark],
            noisy.uns["simulation"]["noise_sd"],
            tissue_prior,
        )
        rows[f"true response functions, MAP activities ({name})"] = float(
            np.abs(predicted - truth).mean()
        )
    print(f"{args.n_train} training samples, 943 landmarks, {args.n_targets} targets\n")
    print("| predictor | MAE | MAE / LinearRegression |\n|---|---|---|")
    for name, mae in rows.items():
        print(f"| {name} | {mae:.4f} | {mae / baseline:.3f} |")


if __name__ == "__main__":
    main()
