"""Train a ZINBAutoencoder with Lightning, possibly on several CPU processes (DDP, gloo).

Run as ``python ddp_script.py OUT_DIR DEVICES BATCH_SIZE``; Lightning relaunches the script
once per extra process. Each process prints the cells of its training shard; rank 0 saves.
"""

import json
import sys
import warnings

import scvi
import torch
from lightning.pytorch.utilities import rank_zero_only

from scgexp.data import simulate_scrna
from scgexp.zinb import ZINBAutoencoder

warnings.simplefilter("ignore")
torch.set_num_threads(1)
out_dir, devices, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
scvi.settings.seed = 0
adata = simulate_scrna(n_cells=1000, n_genes=150, seed=4)
ZINBAutoencoder.setup_anndata(adata, batch_key="batch")
model = ZINBAutoencoder(adata)
strategy = {"strategy": "ddp_find_unused_parameters_true"} if devices > 1 else {}
model.train(
    max_epochs=25,
    batch_size=batch_size,
    accelerator="cpu",
    devices=devices,
    enable_progress_bar=False,
    **strategy,
)
shard = [int(i) for batch in model.trainer.train_dataloader.sampler for i in batch]
cells = model.trainer.datamodule.train_idx[shard].tolist()
print("SHARD " + json.dumps({"rank": rank_zero_only.rank, "cells": cells}), flush=True)
model.save(out_dir, overwrite=True)
