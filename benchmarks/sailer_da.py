"""Differential accessibility: SAILER against PEAKVI on simulated peaks with known truth.

Real data hold no truth for differential accessibility, so this runs on the scATAC simulator
(1,000 cells, 1,000 peaks, three cell types, depth confounded with batch). A peak truly
differs between ``type_0`` and ``type_1`` when its mean probability of being open differs by
more than 0.1 (before capture; ``layers["true_open"]``). Each model is trained to early stop
(defaults, ``batch_key="batch"``), then:

- ``type_0`` against ``type_1``: AUROC of ``prob_da``, of ``|effect_size|`` and of the
  observed ``|emp_effect|`` for the true differences; share of peaks called (``is_da_fdr``)
  and the share of calls that are true;
- the deeper against the shallower half of ``type_0``'s cells (no true difference): share of
  peaks called and mean ``|effect_size|`` (the observed mean ``|emp_effect|`` for scale).

SAILER measures the change as a difference in accessibility (as earlier scvi-tools releases'
PEAKVI did); scvi-tools 1.4's PEAKVI as a log2 fold change with the same ``delta``: PEAKVI is
run both ways.

Run from the project root (about 15 minutes on two CPU cores)::

    python benchmarks/sailer_da.py   # writes results/sailer_da.md
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from _common import environment_line, versions
from sklearn.metrics import roc_auc_score

RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/sailer_da.py"


def comparisons(adata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True differences between type_0 and type_1, and the deep / shallow halves of type_0."""
    types = adata.obs["cell_type"].to_numpy()
    rate_0, rate_1 = (adata.layers["true_open"][types == t].mean(0) for t in ("type_0", "type_1"))
    depth = adata.obs["depth"].to_numpy()
    one_type = types == "type_0"
    deep = one_type & (depth > np.median(depth[one_type]))
    return np.abs(rate_1 - rate_0) > 0.1, deep, one_type & ~deep


def scores(model, adata, **da_kwargs) -> dict:
    differs, deep, shallow = comparisons(adata)
    start = time.perf_counter()
    da = model.differential_accessibility(
        groupby="cell_type", group1=["type_0"], group2="type_1", silent=True, **da_kwargs
    ).loc[adata.var_names]
    seconds = time.perf_counter() - start
    called = da["is_da_fdr"].to_numpy(bool)
    by_depth = model.differential_accessibility(idx1=deep, idx2=shallow, silent=True, **da_kwargs)
    return {
        "auroc_prob_da": roc_auc_score(differs, da["prob_da"]),
        "auroc_effect": roc_auc_score(differs, da["effect_size"].abs()),
        "auroc_observed": roc_auc_score(differs, da["emp_effect"].abs()),
        "called": called.mean(),
        "precision": differs[called].mean() if called.any() else np.nan,
        "depth_called": by_depth["is_da_fdr"].mean(),
        "depth_effect": by_depth["effect_size"].abs().mean(),
        "depth_observed": by_depth["emp_effect"].abs().mean(),
        "da_seconds": seconds,
    }


def main() -> None:
    import scvi

    from scgexp._differential import difference
    from scgexp.data import simulate_scatac
    from scgexp.model import SAILER

    warnings.simplefilter("ignore")
    scvi.settings.seed = 0
    adata = simulate_scatac(n_cells=1_000, n_peaks=1_000, n_cell_types=3, seed=0)
    rows = []
    for model_class in (SAILER, scvi.model.PEAKVI):
        data = adata.copy()
        model_class.setup_anndata(data, batch_key="batch")
        model = model_class(data)
        model.train(enable_progress_bar=False)
        name, epochs = model_class.__name__, model.history["elbo_train"].shape[0]
        variants = {name: {}}
        if model_class is scvi.model.PEAKVI:  # scvi-tools 1.4 PEAKVI: log2 fold change
            variants[f"{name}, change as difference"] = {"change_fn": difference}
        for method, da_kwargs in variants.items():
            row = {"method": method, "epochs": epochs, "versions": versions()}
            row.update(scores(model, data, **da_kwargs))
            print(row, flush=True)
            rows.append(row)
    differs = comparisons(adata)[0]
    lines = [
        "# Differential accessibility on the simulator",
        "",
        f"Command: `{COMMAND}`. 1,000 cells, 1,000 peaks, 3 cell types; {differs.mean():.0%} "
        "of the peaks truly differ between type_0 and type_1 (open probability apart by more "
        "than 0.1). Depth split: the deeper against the shallower half of type_0 (no true "
        "difference).",
        "",
        environment_line(rows),
        "",
        "| method | epochs | AUROC prob_da | AUROC \\|effect\\| | AUROC observed | called "
        "| true among called | depth split: called | mean \\|effect\\| | observed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['epochs']} | {r['auroc_prob_da']:.3f} | "
            f"{r['auroc_effect']:.3f} | {r['auroc_observed']:.3f} | {r['called']:.3f} | "
            f"{r['precision']:.3f} | {r['depth_called']:.3f} | {r['depth_effect']:.3f} | "
            f"{r['depth_observed']:.3f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sailer_da.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
