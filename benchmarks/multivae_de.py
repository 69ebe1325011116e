"""Differential expression and accessibility: MultiVAE against MULTIVI with known truth.

Real data hold no truth for differential tests, so this runs on the multiome simulator
(1,500 cells, 400 genes, 800 peaks, three cell types, 20% of the cells missing RNA or ATAC).
Between ``type_0`` and ``type_1`` a gene truly differs when its mean expression proportion
changes more than fourfold (``rna.layers["true_mean"]``; types differ strongly there: most
genes change more than twofold), a peak when its mean probability of
being open differs by more than 0.1 (``atac.layers["true_open"]``). Both models train with
their defaults to early stop; then for each test: AUROC of the probability of a difference
and of the estimated effect's size for the true differences, the correlation of the effect
with the true one, the share of features called at the 5% FDR target and the share of calls
that are true. MULTIVI's accessibility is run as scvi-tools 1.4 ships it (log2 fold change)
and with the change as a difference (as MultiVAE and earlier scvi-tools releases).

Run from the project root (about 10 minutes on two CPU cores)::

    python benchmarks/multivae_de.py   # writes results/multivae_de.md
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from _common import environment_line, versions
from sklearn.metrics import roc_auc_score

RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/multivae_de.py"
GROUPS = {"groupby": "cell_type", "group1": "type_0", "group2": "type_1", "silent": True}


def truth(mdata) -> dict[str, np.ndarray]:
    """True change of each gene (log2 of type_0 over type_1) and peak (type_1 minus type_0).

    In the direction of scvi-tools' tables: ``lfc_mean`` is group 1 over group 2, the
    accessibility ``effect_size`` group 2 minus group 1.
    """
    types = mdata.obs["cell_type"].to_numpy()
    mean = mdata["rna"].layers["true_mean"]
    proportions = mean / mean.sum(1, keepdims=True)
    rna = [proportions[types == t].mean(0) for t in ("type_0", "type_1")]
    atac = [mdata["atac"].layers["true_open"][types == t].mean(0) for t in ("type_0", "type_1")]
    return {"rna": np.log2(rna[0] / rna[1]), "atac": atac[1] - atac[0]}


def scores(table, names, true_change, differs, probability, effect, called) -> dict:
    table = table.loc[names]
    calls = table[called].to_numpy(bool)
    return {
        "auroc_probability": roc_auc_score(differs, table[probability]),
        "auroc_effect": roc_auc_score(differs, table[effect].abs()),
        "correlation": np.corrcoef(table[effect], true_change)[0, 1],
        "called": calls.mean(),
        "precision": differs[calls].mean() if calls.any() else np.nan,
    }


def main() -> None:
    import scvi

    from scgexp._differential import difference
    from scgexp.data import simulate_multiome
    from scgexp.model import MultiVAE

    warnings.simplefilter("ignore")
    scvi.settings.seed = 0
    data = simulate_multiome(
        n_cells=1_500, n_genes=400, n_peaks=800, n_cell_types=3, missing_fraction=0.2, seed=0
    )
    change = truth(data)
    differs = {"rna": np.abs(change["rna"]) > 2, "atac": np.abs(change["atac"]) > 0.1}
    modalities = {"rna_layer": "rna", "atac_layer": "atac"}
    rows = []
    for name in ("MultiVAE", "MULTIVI"):
        mdata = data.copy()
        if name == "MultiVAE":
            presence = {"rna": "has_rna", "atac": "has_atac"}
            MultiVAE.setup_mudata(
                mdata, batch_key="batch", presence_keys=presence, modalities=modalities
            )
            model = MultiVAE(mdata)
        else:
            scvi.model.MULTIVI.setup_mudata(mdata, batch_key="batch", modalities=modalities)
            model = scvi.model.MULTIVI(mdata)
        model.train(enable_progress_bar=False)
        epochs = next(len(model.history[k]) for k in ("elbo_train", "train_loss_epoch"))
        tests = {"expression": ({}, "rna")}
        tests["accessibility"] = ({}, "atac")
        if name == "MULTIVI":
            tests["accessibility, change as difference"] = ({"change_fn": difference}, "atac")
        for test, (kwargs, target) in tests.items():
            if target == "rna":
                table = model.differential_expression(**GROUPS, **kwargs)
                columns = ("proba_de", "lfc_mean", "is_de_fdr_0.05")
            else:
                table = model.differential_accessibility(**GROUPS, **kwargs)
                columns = ("prob_da", "effect_size", "is_da_fdr")
            names = mdata[target].var_names
            row = {"method": name, "test": test, "epochs": epochs, "versions": versions()}
            row.update(scores(table, names, change[target], differs[target], *columns))
            print(row, flush=True)
            rows.append(row)
    lines = [
        "# Differential expression and accessibility on the multiome simulator",
        "",
        f"Command: `{COMMAND}`. 1,500 cells (20% missing RNA or ATAC), 400 genes, 800 peaks, "
        f"3 cell types; between type_0 and type_1, {differs['rna'].mean():.0%} of the genes "
        f"change more than fourfold and {differs['atac'].mean():.0%} of the peaks' open "
        "probability by more than 0.1.",
        "",
        environment_line(rows),
        "",
        "| method | test | epochs | AUROC probability | AUROC \\|effect\\| | r effect "
        "| called | true among called |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['test']} | {r['epochs']} | {r['auroc_probability']:.3f} | "
            f"{r['auroc_effect']:.3f} | {r['correlation']:.3f} | {r['called']:.3f} | "
            f"{r['precision']:.3f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multivae_de.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
