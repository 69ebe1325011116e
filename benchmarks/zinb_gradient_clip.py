"""ZINBAutoencoder with and without its gradient-norm clipping: best validation loss.

The default clips the gradients' total norm at 5 (not DCA's per-element bound, see the docs).
This trains the default and ``gradient_clip_val=None`` on the 700 PBMCs of
``scgexp.data.pbmc68k_counts()`` for 100 epochs, seeds 0 and 1, one CPU thread::

    python benchmarks/zinb_gradient_clip.py   # writes results/zinb_gradient_clip.md
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import scvi
import torch

import scgexp
from scgexp.model import ZINBAutoencoder

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    lines = [
        "# ZINBAutoencoder: gradient-norm clipping",
        "",
        "Command: `python benchmarks/zinb_gradient_clip.py` (700 PBMCs, 100 epochs, one thread).",
        "",
    ]
    for clip in (5.0, None):
        for seed in (0, 1):
            adata = scgexp.data.pbmc68k_counts()
            ZINBAutoencoder.setup_anndata(adata, layer="counts")
            scvi.settings.seed = seed
            model = ZINBAutoencoder(adata)
            model.train(max_epochs=100, gradient_clip_val=clip, enable_progress_bar=False)
            loss = model.history["validation_loss"]["validation_loss"].astype(float)
            lines.append(
                f"- `gradient_clip_val={clip}`, seed {seed}: best validation loss {loss.min():.1f}"
            )
    (RESULTS / "zinb_gradient_clip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
