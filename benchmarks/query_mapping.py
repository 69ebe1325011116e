"""Reference mapping (scArches): ``load_query_data`` against scvi-tools' on a batch no model saw.

Each task splits its data by batch: the reference is every batch but the last, the query the
last batch. Every method then maps the query three ways:

- ``relabelled``: the reference model applied to the query relabelled as the first reference
  batch (the mapping without scArches; nothing is trained on the query);
- ``scArches``: ``Model.load_query_data(query, reference_model)``, then ``train`` on the query to
  early stop (each model's defaults, at most 200 epochs; scvi-tools' models with
  ``weight_decay=0``, as its scArches tutorial does);
- ``all batches``: a model trained on reference and query together (an upper bound).

On the query cells it measures:

- denoising fidelity (simulators only): the median over query cells of the correlation across
  features between the model's output and the truth. RNA: Pearson of log proportions,
  ``get_normalized_expression(library_size=1)`` against ``true_mean`` scaled to sum to 1 (the
  true expected counts, batch effect included); ATAC: Spearman of
  ``get_normalized_accessibility`` against ``true_open`` (open probability before capture,
  batch effect included);
- label transfer: accuracy of a 15-nearest-neighbour classifier fitted on the reference
  cells' latent (from the reference model for ``relabelled``, from the query model for
  ``scArches``, from the full model for ``all batches``) predicting the query cells' labels;
- the cost of the training each arm needs beyond the reference model: epochs and seconds per
  epoch.

Tasks: the scRNA simulator (3,000 cells, 500 genes, 4 batches; ZINBAutoencoder, also with
``encode_covariates=True``, against SCVI in the scArches tutorial's architecture), the scATAC
simulator (2,000 cells, 1,000 peaks, 3 batches; SAILER against PEAKVI) and, when
``../shared/data`` holds it, CellBench CEL-seq2 (3 plates, singlets, the 2,000 most variable
genes of the reference plates; label transfer only).

Run from the project root (about 10 minutes on two CPU cores)::

    python benchmarks/query_mapping.py   # writes results/query_mapping.md
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from _common import environment_line, fmt, versions
from scipy.stats import pearsonr, spearmanr
from sklearn.neighbors import KNeighborsClassifier

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CELLBENCH = DATA / "scrna" / "cellbench_5celllines_celseq2_3plates.h5ad"
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = "python benchmarks/query_mapping.py"
SEED = 0
MAX_EPOCHS = 200  # cap for the reference, full and query trainings (all early stop)
N_GENES_CELLBENCH = 2_000


@dataclass
class Method:
    """How to set up, build, train and read one model class."""

    name: str
    model_class: type
    setup: dict
    init: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    query_train: dict = field(default_factory=dict)
    denoise: Callable | None = None  # (model, adata, indices) -> cells x features
    scgexp: bool = True


@dataclass
class Task:
    """The data of one task, split into reference and query by batch."""

    name: str
    full: object
    label_key: str
    batch_key: str = "batch"
    truth: np.ndarray | None = None  # query cells x features
    correlation: str = "pearson_log"  # or "spearman"
    methods: list[Method] = field(default_factory=list)
    description: str = ""

    def __post_init__(self) -> None:
        batches = self.full.obs[self.batch_key].astype(str)
        self.full.obs[self.batch_key] = batches.astype("category")
        self.query_batch = self.full.obs[self.batch_key].cat.categories[-1]
        self.in_query = (batches == self.query_batch).to_numpy()
        self.reference = self.full[~self.in_query].copy()
        self.query = self.full[self.in_query].copy()
        for part in (self.reference, self.query):
            part.obs[self.batch_key] = part.obs[self.batch_key].astype(str).astype("category")
        self.first_batch = self.reference.obs[self.batch_key].cat.categories[0]


def n_epochs(model) -> int:
    """Epochs of the model's last training run (its history starts with the run)."""
    for key in ("train_loss_epoch", "elbo_train", "train_loss"):
        if key in model.history:
            return int(model.history[key].shape[0])
    raise KeyError(f"no per-epoch training history in {sorted(model.history)}")


def timed_train(model, **kwargs) -> tuple[int, float]:
    """Train with a fixed seed; the number of epochs and the seconds per epoch."""
    import scvi

    scvi.settings.seed = SEED
    start = time.perf_counter()
    model.train(enable_progress_bar=False, **kwargs)
    seconds = time.perf_counter() - start
    epochs = n_epochs(model)
    return epochs, seconds / epochs


def fidelity(task: Task, estimate: np.ndarray) -> float:
    """Median over query cells of the correlation of ``estimate`` with the truth."""
    if task.correlation == "pearson_log":
        values = [
            pearsonr(np.log(e), np.log(t))[0] for e, t in zip(estimate, task.truth, strict=True)
        ]
    else:
        values = [spearmanr(e, t)[0] for e, t in zip(estimate, task.truth, strict=True)]
    return float(np.median(values))


def transfer_accuracy(task: Task, reference_latent, query_latent) -> float:
    """Accuracy of 15-nearest-neighbour label transfer from the reference to the query."""
    knn = KNeighborsClassifier(n_neighbors=15)
    knn.fit(reference_latent, task.reference.obs[task.label_key].astype(str).to_numpy())
    return float(knn.score(query_latent, task.query.obs[task.label_key].astype(str).to_numpy()))


def run_method(task: Task, method: Method) -> list[dict]:
    """The three arms of one method on one task; one row each."""
    cls, rows = method.model_class, []
    base = {"task": task.name, "method": method.name, "versions": versions()}

    def row(arm, model, query_data, query_latent, reference_latent, indices=None, **extra):
        fid = None
        if task.truth is not None and method.denoise is not None:
            fid = fidelity(task, method.denoise(model, query_data, indices))
        result = {
            **base,
            "arm": arm,
            "fidelity": fid,
            "accuracy": transfer_accuracy(task, reference_latent, query_latent),
            **extra,
        }
        print(
            {k: v for k, v in result.items() if k != "versions"},
            flush=True,
        )
        return result

    # Reference model.
    reference = task.reference.copy()
    cls.setup_anndata(reference, **method.setup)
    reference_model = cls(reference, **method.init)
    epochs, per_epoch = timed_train(reference_model, max_epochs=MAX_EPOCHS, **method.train)
    print(f"  {method.name} reference: {epochs} epochs, {per_epoch:.3f} s/epoch", flush=True)
    reference_latent = reference_model.get_latent_representation()

    # (a) The query relabelled as the first reference batch.
    relabelled = task.query.copy()
    relabelled.obs[task.batch_key] = task.first_batch
    rows.append(
        row(
            "relabelled",
            reference_model,
            relabelled,
            reference_model.get_latent_representation(relabelled),
            reference_latent,
            trained_on="reference",
            epochs=epochs,
            seconds_per_epoch=per_epoch,
        )
    )

    # (b) scArches.
    query = task.query.copy()
    query_model = cls.load_query_data(query, reference_model)
    epochs, per_epoch = timed_train(query_model, max_epochs=MAX_EPOCHS, **method.query_train)
    rows.append(
        row(
            "scArches",
            query_model,
            query,
            query_model.get_latent_representation(),
            query_model.get_latent_representation(task.reference.copy()),
            trained_on="query",
            epochs=epochs,
            seconds_per_epoch=per_epoch,
        )
    )

    # (c) One model on every batch.
    full = task.full.copy()
    cls.setup_anndata(full, **method.setup)
    full_model = cls(full, **method.init)
    epochs, per_epoch = timed_train(full_model, max_epochs=MAX_EPOCHS, **method.train)
    latent = full_model.get_latent_representation()
    rows.append(
        row(
            "all batches",
            full_model,
            full,
            latent[task.in_query],
            latent[~task.in_query],
            indices=np.flatnonzero(task.in_query),
            trained_on="reference + query",
            epochs=epochs,
            seconds_per_epoch=per_epoch,
        )
    )
    return rows


def zinb_denoise(model, adata, indices):
    return model.get_normalized_expression(
        adata, indices=indices, library_size=1.0, return_numpy=True
    )


def scvi_denoise(model, adata, indices):
    # Averaged over 25 posterior samples (one sample is noisier than ZINBAutoencoder's
    # deterministic output).
    return model.get_normalized_expression(
        adata, indices=indices, library_size=1.0, n_samples=25, return_mean=True, return_numpy=True
    )


def accessibility(model, adata, indices):
    return model.get_normalized_accessibility(adata, indices=indices, return_numpy=True)


def rna_methods(with_denoising: bool) -> list[Method]:
    import scvi

    from scgexp.model import ZINBAutoencoder

    setup = {"layer": "counts", "batch_key": "batch"}
    zinb = zinb_denoise if with_denoising else None
    return [
        Method("ZINBAutoencoder", ZINBAutoencoder, setup, denoise=zinb),
        Method(
            "ZINBAutoencoder (encode_covariates)",
            ZINBAutoencoder,
            setup,
            init={"encode_covariates": True},
            denoise=zinb,
        ),
        Method(
            "SCVI",
            scvi.model.SCVI,
            setup,
            init={
                "n_layers": 2,
                "encode_covariates": True,
                "deeply_inject_covariates": False,
                "use_layer_norm": "both",
                "use_batch_norm": "none",
                "gene_likelihood": "zinb",
            },
            train={"early_stopping": True},
            query_train={"early_stopping": True, "plan_kwargs": {"weight_decay": 0.0}},
            denoise=scvi_denoise if with_denoising else None,
            scgexp=False,
        ),
    ]


def rna_task() -> Task:
    from scgexp.data import simulate_scrna

    adata = simulate_scrna(n_cells=3_000, n_genes=500, n_batches=4, seed=0)
    truth = adata.layers["true_mean"]
    truth = truth / truth.sum(1, keepdims=True)
    task = Task(
        "RNA simulator",
        adata,
        label_key="cell_type",
        methods=rna_methods(with_denoising=True),
        description="`simulate_scrna(n_cells=3000, n_genes=500, n_batches=4, seed=0)`",
    )
    task.truth = truth[task.in_query]
    return task


def atac_task() -> Task:
    import scanpy as sc
    import scvi

    from scgexp.data import simulate_scatac
    from scgexp.model import SAILER

    adata = simulate_scatac(n_cells=2_000, n_peaks=1_000, n_batches=3, seed=0)
    sc.pp.filter_cells(adata, min_counts=1)
    setup = {"batch_key": "batch"}
    task = Task(
        "ATAC simulator",
        adata,
        label_key="cell_type",
        correlation="spearman",
        methods=[
            Method("SAILER", SAILER, setup, denoise=accessibility),
            Method(
                "PEAKVI",
                scvi.model.PEAKVI,
                setup,
                query_train={"weight_decay": 0.0},
                denoise=accessibility,
                scgexp=False,
            ),
        ],
        description="`simulate_scatac(n_cells=2000, n_peaks=1000, n_batches=3, seed=0)`, "
        "cells without counts removed",
    )
    task.truth = np.asarray(adata.layers["true_open"])[task.in_query]
    return task


def cellbench_task() -> Task | None:
    import anndata as ad

    if not CELLBENCH.exists():
        return None
    import scanpy as sc

    adata = ad.read_h5ad(CELLBENCH)
    adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    # The 2,000 most variable genes of the reference plates (the query plate unseen), to keep the
    # run short.
    plates = adata.obs["batch"].astype(str)
    reference = adata[plates != sorted(set(plates))[-1]].copy()
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    sc.pp.highly_variable_genes(reference, n_top_genes=N_GENES_CELLBENCH)
    adata = adata[:, reference.var["highly_variable"].to_numpy()].copy()
    sc.pp.filter_cells(adata, min_counts=1)
    adata.layers["counts"] = adata.X.copy()
    return Task(
        "CellBench CEL-seq2",
        adata,
        label_key="cell_line",
        methods=rna_methods(with_denoising=False),
        description=f"`{CELLBENCH.relative_to(ROOT.parent)}` (singlets, {adata.n_obs} cells, "
        f"the {adata.n_vars} most variable genes of the reference plates; batch = plate, "
        "label = cell line)",
    )


def table(task: Task, rows: list[dict]) -> list[str]:
    n_reference, n_query = int((~task.in_query).sum()), int(task.in_query.sum())
    truth = {"pearson_log": "Pearson of log proportions", "spearman": "Spearman"}
    fidelity_header = "fidelity"
    if task.truth is not None:
        fidelity_header += f" ({truth[task.correlation]})"
    lines = [
        f"## {task.name}",
        "",
        f"{task.description}. Reference: {n_reference} cells "
        f"({', '.join(task.reference.obs[task.batch_key].cat.categories)}); query: {n_query} "
        f"cells ({task.query_batch}).",
        "",
        f"| method | arm | {fidelity_header} | label transfer accuracy | trained on | epochs "
        "| s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['arm']} | {fmt(r['fidelity'])} | {fmt(r['accuracy'])} | "
            f"{r['trained_on']} | {r['epochs']} | {fmt(r['seconds_per_epoch'])} |"
        )
    query_rows = {r["method"]: r for r in rows if r["arm"] == "scArches"}
    scvi_rows = [r for m, r in query_rows.items() if m in ("SCVI", "PEAKVI")]
    if scvi_rows:
        anchor = scvi_rows[0]
        ratios = [
            f"{m} {r['seconds_per_epoch'] / anchor['seconds_per_epoch']:.2f}"
            for m, r in query_rows.items()
            if r is not anchor
        ]
        lines += [
            "",
            f"Query training, seconds per epoch relative to {anchor['method']}: "
            + ", ".join(ratios)
            + ".",
        ]
    return [*lines, ""]


def warm_up() -> None:
    """Train each RNA model for one epoch: the first training of a process pays a one-off cost
    (imports, Lightning start-up) that would otherwise count in the first row's s/epoch."""
    from scgexp.data import simulate_scrna

    adata = simulate_scrna(n_cells=200, n_genes=50, n_batches=2, seed=1)
    for method in rna_methods(with_denoising=False):
        data = adata.copy()
        method.model_class.setup_anndata(data, **method.setup)
        method.model_class(data, **method.init).train(max_epochs=1, enable_progress_bar=False)


def main() -> None:
    import scvi

    warnings.simplefilter("ignore")
    scvi.settings.seed = SEED
    start = time.perf_counter()
    warm_up()
    tasks = [rna_task(), atac_task()]
    bench = cellbench_task()
    if bench is None:
        print(f"{CELLBENCH} is absent: the CellBench task is skipped.", flush=True)
    else:
        tasks.append(bench)
    all_rows, sections = [], []
    for task in tasks:
        print(f"== {task.name}", flush=True)
        rows = []
        for method in task.methods:
            rows += run_method(task, method)
        all_rows += rows
        sections += table(task, rows)
    minutes = (time.perf_counter() - start) / 60
    lines = [
        "# Reference mapping of a new batch (scArches)",
        "",
        f"Command: `{COMMAND}` ({minutes:.0f} minutes on this machine). Reference = every batch "
        "but the last; query = the last batch. Arms: `relabelled` = the reference model "
        "applied to the query relabelled as the first reference batch (no training on the "
        "query); `scArches` = `load_query_data` then `train` on the query to early stop "
        f"(defaults; scvi-tools' models with weight decay 0); `all batches` = one model "
        f"trained on reference and query (upper bound). Every training early stops, at most "
        f"{MAX_EPOCHS} epochs; epochs and s/epoch are those of the training the arm needs "
        "beyond the reference model (for `relabelled`: the reference model's own). Label "
        "transfer: 15-nearest-neighbour classifier fitted on the reference cells' latent, "
        "scored on the query cells. Fidelity: median over query cells of the correlation "
        "across features with the truth (simulators).",
        "",
        environment_line(all_rows),
        "",
        *sections,
        "What the numbers show: `docs/query_mapping.md`.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_mapping.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
