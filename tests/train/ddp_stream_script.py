"""Stream a backed .h5ad through two CPU processes (DDP, gloo) and record the rows each serves.

Run as ``python ddp_stream_script.py DATA.h5ad OUT_PREFIX DEVICES``; Lightning relaunches the
script once per extra process. Each process writes the rows of each minibatch it served to
``OUT_PREFIX_rank<rank>.json``; rank 0 also writes the training/validation split.
"""

import json
import sys
import warnings
from pathlib import Path

import anndata as ad
import scvi
import torch
from lightning.pytorch.utilities import rank_zero_only

from scgexp.dataloaders import _loaders
from scgexp.zinb import ZINBAutoencoder


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    path, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    scvi.settings.seed = 0
    adata = ad.read_h5ad(path, backed="r")
    ZINBAutoencoder.setup_anndata(adata, batch_key="batch")
    model = ZINBAutoencoder(adata)
    served = []
    minibatch = _loaders._BlockStream._minibatch

    def record(self, rows, parts):
        served.append([int(row) for row in rows])
        return minibatch(self, rows, parts)

    _loaders._BlockStream._minibatch = record
    model.train(
        max_epochs=2,
        batch_size=64,
        accelerator="cpu",
        devices=devices,
        strategy="ddp_find_unused_parameters_true",
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        data_mode="stream",
        datasplitter_kwargs={"block_rows": 100},
    )
    Path(f"{out}_rank{rank_zero_only.rank}.json").write_text(json.dumps(served))
    if rank_zero_only.rank == 0:
        split = model.trainer.datamodule
        split = {"train": split.train_idx.tolist(), "validation": split.val_idx.tolist()}
        Path(f"{out}_split.json").write_text(json.dumps(split))


if __name__ == "__main__":
    main()
