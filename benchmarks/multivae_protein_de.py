"""Differential protein abundance: MultiVAE against TOTALVI with known truth (CITE-seq).

Real data hold no truth for differential tests, so this runs on the multiome simulator's RNA
and protein (1,500 cells, 400 genes, 50 proteins, three cell types; each protein's expected
count is a per-protein background plus a cell-type-driven foreground, ``layers["true_mean"]``
and ``layers["true_foreground"]``). Between ``type_0`` and ``type_1`` a protein truly differs
when its mean foreground changes more than fourfold. Every model trains with its defaults to
early stop; MultiVAE with its default ``protein_likelihood="nb"`` (whose test compares
expected counts, background included) and with ``"mixture"`` (foreground and background, as
TOTALVI; its test compares foreground). Reported: AUROC of the probability of a difference and
of the estimated log fold change's size for the true differences, the correlation of the log
fold change with the true one of the foreground and of the expected counts, the share of
proteins called at the 5% FDR target and the share of calls that are true.

Real CITE-seq data hold no truth, but known markers: on the 10x PBMC CITE-seq sample of
``../shared/data`` (400 cells, 14 antibodies, skipped when the folder is absent), cells are
grouped by an RNA marker (``MS4A1`` > 0: B cells; ``CD14``: monocytes; ``CD3E``: T cells;
``CD8A``: CD8 T cells), each group against the other cells, and the table gives the rank of the
matching protein (CD19, CD14, CD3, CD8a) among the 14 by estimated log fold change (1: the
largest), whether it is called, and the same rank for the observed means.

Run from the project root (about 12 minutes on two CPU cores)::

    python benchmarks/multivae_protein_de.py   # writes results/multivae_protein_de.md
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from _common import environment_line, versions
from multivae_de import GROUPS, scores

RESULTS = Path(__file__).parent / "results"
CITE = (
    Path(__file__).resolve().parents[2]
    / "shared/data/multimodal/scvi_testdata_pbmc10k5k_cite_400cells.h5mu"
)
#: RNA marker that defines a group, and the protein that group should carry most.
MARKERS = {"MS4A1": "CD19", "CD14": "CD14", "CD3E": "CD3", "CD8A": "CD8a"}
COMMAND = "python benchmarks/multivae_protein_de.py"
TYPES = ("type_0", "type_1")


def truth(protein) -> dict[str, np.ndarray]:
    """Log2 fold change (type_0 over type_1) of the mean foreground and of the mean counts."""
    types = protein.obs["cell_type"].to_numpy()
    foreground = protein.layers["true_foreground"] + 0.1  # the prior count of the tests
    counts = protein.layers["true_mean"]  # background + foreground
    return {
        name: np.log2(values[types == TYPES[0]].mean(0) / values[types == TYPES[1]].mean(0))
        for name, values in (("foreground", foreground), ("counts", counts))
    }


def marker_ranks() -> list[dict]:
    """Rank of each RNA-defined group's marker protein on the real CITE-seq sample."""
    import mudata
    import scanpy as sc
    import scvi
    from scipy import sparse

    from scgexp.model import MultiVAE

    data = mudata.read_h5mu(CITE)
    rna = data["rna"]
    expressed = {gene: np.asarray(rna[:, gene].X.sum(1)).ravel() > 0 for gene in MARKERS}
    highly_variable = sc.pp.highly_variable_genes(
        rna, n_top_genes=2_000, flavor="seurat_v3", batch_key="batch", inplace=False
    )["highly_variable"].to_numpy()
    keep = highly_variable | rna.var_names.isin(list(MARKERS))
    protein = data["prot"].copy()
    protein.X = np.asarray(protein.X.toarray() if sparse.issparse(protein.X) else protein.X)
    protein.var_names = protein.var_names.str.removesuffix("_TotalSeqB")
    data = mudata.MuData({"rna": rna[:, keep].copy(), "prot": protein})
    data.obs["batch"] = rna.obs["batch"]
    counts = data["prot"].X
    modalities = {"rna_layer": "rna", "protein_layer": "prot"}
    rows = []
    for name in ("MultiVAE", "TOTALVI"):
        scvi.settings.seed = 0
        mdata = data.copy()
        if name == "MultiVAE":
            MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=modalities)
            model = MultiVAE(mdata)
        else:
            scvi.model.TOTALVI.setup_mudata(mdata, batch_key="batch", modalities=modalities)
            model = scvi.model.TOTALVI(mdata)
        model.train(enable_progress_bar=False)
        for gene, protein in MARKERS.items():
            group = expressed[gene]
            if name == "MultiVAE":
                table = model.differential_protein(idx1=group, idx2=~group, silent=True)
            else:
                table = model.differential_expression(idx1=group, idx2=~group, silent=True)
                table = table[table.index.str.endswith("_protein")]
                table.index = table.index.str.removesuffix("_protein")
            order = table["lfc_mean"].sort_values(ascending=False).index
            observed = np.log2(counts[group].mean(0) + 0.1) - np.log2(counts[~group].mean(0) + 0.1)
            observed_order = data["prot"].var_names[np.argsort(-observed)]
            rows.append(
                {
                    "method": name,
                    "group": f"{gene} > 0 ({int(group.sum())} cells)",
                    "protein": protein,
                    "rank": order.get_loc(protein) + 1,
                    "called": bool(table.loc[protein, "is_de_fdr_0.05"]),
                    "lfc": float(table.loc[protein, "lfc_mean"]),
                    "observed_rank": observed_order.get_loc(protein) + 1,
                    "versions": versions(),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    import scvi

    from scgexp.data import simulate_multiome
    from scgexp.model import MultiVAE

    warnings.simplefilter("ignore")
    data = simulate_multiome(
        n_cells=1_500, n_genes=400, n_peaks=10, n_proteins=50, n_cell_types=3, seed=0
    )
    change = truth(data["prot"])
    differs = np.abs(change["foreground"]) > 2
    modalities = {"rna_layer": "rna", "protein_layer": "prot"}
    rows = []
    for name, likelihood in (("MultiVAE", "nb"), ("MultiVAE", "mixture"), ("TOTALVI", None)):
        scvi.settings.seed = 0
        mdata = data.copy()
        if name == "MultiVAE":
            MultiVAE.setup_mudata(mdata, batch_key="batch", modalities=modalities)
            model = MultiVAE(mdata, protein_likelihood=likelihood)
            model.train(enable_progress_bar=False)
            table = model.differential_protein(**GROUPS)
        else:
            mdata["prot"].X = mdata["prot"].X.toarray()  # TOTALVI's protein prior needs dense
            scvi.model.TOTALVI.setup_mudata(mdata, batch_key="batch", modalities=modalities)
            model = scvi.model.TOTALVI(mdata)
            model.train(enable_progress_bar=False)
            table = model.differential_expression(**GROUPS)
            table.index = table.index.str.removesuffix("_protein")  # proteins follow the genes
        epochs = next(len(model.history[k]) for k in ("train_loss", "elbo_train"))
        names = data["prot"].var_names
        row = {"method": f"{name} ({likelihood})" if likelihood else name, "epochs": epochs}
        row["versions"] = versions()
        for truth_name in ("foreground", "counts"):
            measured = scores(
                table,
                names,
                change[truth_name],
                differs,
                "proba_de",
                "lfc_mean",
                "is_de_fdr_0.05",
            )
            row[f"r_{truth_name}"] = measured.pop("correlation")
            row.update(measured)
        print(row, flush=True)
        rows.append(row)
    lines = [
        "# Differential protein abundance on the CITE-seq simulator",
        "",
        f"Command: `{COMMAND}`. 1,500 cells, 400 genes, 50 proteins, 3 cell types; between "
        f"type_0 and type_1, {differs.mean():.0%} of the proteins' mean foreground changes more "
        "than fourfold.",
        "",
        environment_line(rows),
        "",
        "| method | epochs | AUROC probability | AUROC \\|lfc\\| | r lfc, foreground "
        "| r lfc, counts | called | true among called |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['epochs']} | {r['auroc_probability']:.3f} | "
            f"{r['auroc_effect']:.3f} | {r['r_foreground']:.3f} | {r['r_counts']:.3f} | "
            f"{r['called']:.3f} | {r['precision']:.3f} |"
        )
    if CITE.exists():
        markers = marker_ranks()
        lines += [
            "",
            "Markers on the real 10x PBMC CITE-seq sample (400 cells, 14 antibodies): each "
            "group of cells expressing an RNA marker against the other cells; rank of the "
            "matching protein among the 14 by estimated log2 fold change (1 = largest).",
            "",
            environment_line(markers),
            "",
            "| group | protein | method | rank | called | lfc | rank by observed means |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(markers, key=lambda r: (r["group"], r["method"])):
            lines.append(
                f"| {r['group']} | {r['protein']} | {r['method']} | {r['rank']} | "
                f"{'yes' if r['called'] else 'no'} | {r['lfc']:.2f} | {r['observed_rank']} |"
            )
    else:
        print(f"{CITE} is absent: the real-data markers are left out.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "multivae_protein_de.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
