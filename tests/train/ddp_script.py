"""Train a model with Lightning, possibly on several CPU processes (DDP, gloo).

Run as ``python ddp_script.py MODEL OUT_DIR DEVICES BATCH_SIZE`` (MODEL: ``zinb`` or
``sailer`` with the adversarial invariance plan); Lightning relaunches the script once per
extra process. Each process writes the cells of its training shard to
``OUT_DIR_shard<rank>.json`` (test bookkeeping); only rank 0 saves the model.
"""

import json
import sys
import warnings
from pathlib import Path

import scvi
import torch
from lightning.pytorch.utilities import rank_zero_only

from scgexp.data import simulate_scatac, simulate_scrna
from scgexp.sailer import SAILER
from scgexp.zinb import ZINBAutoencoder

warnings.simplefilter("ignore")
torch.set_num_threads(1)
model_name, out_dir, devices, batch_size = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
)
scvi.settings.seed = 0
if model_name == "zinb":
    adata = simulate_scrna(n_cells=1000, n_genes=150, seed=4)
    ZINBAutoencoder.setup_anndata(adata, batch_key="batch")
    model, epochs = ZINBAutoencoder(adata), 25
else:
    adata = simulate_scatac(n_cells=1000, n_peaks=300, seed=4)
    SAILER.setup_anndata(adata, batch_key="batch")
    model, epochs = SAILER(adata, invariance="adversarial"), 40
strategy = {"strategy": "ddp_find_unused_parameters_true"} if devices > 1 else {}
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
shard_file = Path(out_dir).with_name(f"{Path(out_dir).name}_shard{rank_zero_only.rank}.json")
shard_file.write_text(json.dumps({"rank": rank_zero_only.rank, "cells": cells}))
model.save(out_dir, overwrite=True)
