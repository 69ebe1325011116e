"""How much room the simulated bulk task leaves to any model beyond linear regression.

The bulk task of ``bench_dgex.py`` simulates expression as a nonlinear (Hill) function of latent
programs plus independent measurement noise on every gene, landmarks included. This script
re-simulates the same data without noise (same seed: the simulator draws the same numbers)
and reports, on the same test samples, the MAE relative to ``LinearRegression`` on the noisy
landmarks of

* the noise-free targets themselves (no predictor can do better on average);
* ``LinearRegression`` fitted on the *noise-free* landmarks (what is left once the input noise
  is gone: the share of the error that is nonlinearity);
* ``LinearRegression`` on the true program activities.

Run from the project root::

    python benchmarks/dgex_bulk_ceiling.py                  # the benchmark's 50k x 9,000 task
    python benchmarks/dgex_bulk_ceiling.py --n-train 20000 --n-targets 1000
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LinearRegression

import scgexp


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
    print(f"{args.n_train} training samples, 943 landmarks, {args.n_targets} targets\n")
    print("| predictor | MAE | MAE / LinearRegression |\n|---|---|---|")
    for name, mae in rows.items():
        print(f"| {name} | {mae:.4f} | {mae / baseline:.3f} |")


if __name__ == "__main__":
    main()
