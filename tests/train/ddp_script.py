"""Train a model with Lightning, possibly on several CPU processes (DDP, gloo).

Run as ``python ddp_script.py MODEL OUT_DIR DEVICES BATCH_SIZE [STRATEGY]`` (MODEL: ``zinb``,
``dgex``, ``multivae``, or ``sailer`` with the adversarial invariance plan; STRATEGY ``auto``:
none given, Lightning picks one; default: DDP by name); Lightning relaunches the
script once per extra process. Each process writes the cells of its training shard to
``OUT_DIR_shard<rank>.json`` (test bookkeeping); only rank 0 saves the model.
"""

import json
import sys
import warnings
from pathlib import Path

import scvi
import torch
from lightning.pytorch.utilities import rank_zero_only

from scgexp.data import simulate_multiome, simulate_scatac, simulate_scrna
from scgexp.dgex import DGEX
from scgexp.multivae import MultiVAE
from scgexp.sailer import SAILER
from scgexp.zinb import ZINBAutoencoder


def dgex_data():
    """Log-normalised simulated scRNA-seq, the first 40 genes marked as landmarks."""
    adata = simulate_scrna(n_cells=1000, n_genes=150, seed=4)
    adata.X = adata.X.log1p()
    adata.var["landmark"] = [i < 40 for i in range(adata.n_vars)]
    return adata


def build(model_name: str):
    """The model and its epoch budget, on its small simulated data set."""
    if model_name == "zinb":
        adata = simulate_scrna(n_cells=1000, n_genes=150, seed=4)
        ZINBAutoencoder.setup_anndata(adata, batch_key="batch")
        return ZINBAutoencoder(adata), 25
    if model_name == "dgex":
        adata = dgex_data()
        DGEX.setup_anndata(adata)
        return DGEX(adata, n_hidden=64), 25
    if model_name == "multivae":
        mdata = simulate_multiome(n_cells=1000, n_genes=100, n_peaks=200, seed=4)
        MultiVAE.setup_mudata(mdata, modalities={"rna_layer": "rna", "atac_layer": "atac"})
        return MultiVAE(mdata), 25
    adata = simulate_scatac(n_cells=1000, n_peaks=300, seed=4)
    SAILER.setup_anndata(adata, batch_key="batch")
    return SAILER(adata, invariance="adversarial"), 40


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model_name, out_dir, devices, batch_size = sys.argv[1:5]
    devices, batch_size = int(devices), int(batch_size)
    scvi.settings.seed = 0
    model, epochs = build(model_name)
    strategy = {"strategy": "ddp_find_unused_parameters_true"} if devices > 1 else {}
    if sys.argv[5:] == ["auto"]:
        strategy, epochs = {}, 1
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        accelerator="cpu",
        devices=devices,
        enable_progress_bar=False,
        **strategy,
    )
    shard = [int(i) for batch in model.trainer.train_dataloader.sampler for i in batch]
    cells = model.trainer.datamodule.train_idx[shard].tolist()
    out = Path(out_dir)
    shard_file = out.with_name(f"{out.name}_shard{rank_zero_only.rank}.json")
    shard_file.write_text(json.dumps({"rank": rank_zero_only.rank, "cells": cells}))
    model.save(out_dir, overwrite=True)


if __name__ == "__main__":
    main()
