from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import silhouette_score

from scgexp.data import simulate_multiome, simulate_scatac, simulate_scrna
from scgexp.dgex import DGEX
from scgexp.multivae import MultiVAE
from scgexp.sailer import SAILER
from scgexp.zinb import ZINBAutoencoder

SCRIPT = Path(__file__).with_name("ddp_script.py")
MODELS = {
    "zinb": (ZINBAutoencoder, lambda: simulate_scrna(n_cells=1000, n_genes=150, seed=4)),
    "dgex": (DGEX, None),
    "sailer": (SAILER, lambda: simulate_scatac(n_cells=1000, n_peaks=300, seed=4)),
    "multivae": (
        MultiVAE,
        lambda: simulate_multiome(n_cells=1000, n_genes=100, n_peaks=200, seed=4),
    ),
}


def _run(model: str, out_dir: Path, devices: int, batch_size: int, *extra: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), model, str(out_dir), str(devices), str(batch_size), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out_dir.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(out_dir.parent.glob(f"{out_dir.name}_shard*.json"))
    return [json.loads(file.read_text()) for file in files]


def _silhouette(model: str, model_dir: Path) -> float:
    cls, simulate = MODELS[model]
    if simulate is None:  # DGEX: the script's own data
        sys.path.insert(0, str(SCRIPT.parent))
        from ddp_script import dgex_data

        simulate = dgex_data
    adata = simulate()
    trained = cls.load(str(model_dir), adata=adata)
    return silhouette_score(trained.get_latent_representation(), adata.obs["cell_type"])


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_two_process_ddp_matches_single_process(tmp_path, model):
    shards = _run(model, tmp_path / "ddp", devices=2, batch_size=64)
    assert sorted(s["rank"] for s in shards) == [0, 1]
    first, second = (set(s["cells"]) for s in shards)
    assert len(first) == len(second) == 450  # 900 training cells, half each
    assert not first & second  # each rank trains on its own shard
    assert list((tmp_path / "ddp").iterdir())  # rank 0 saved the model

    _run(model, tmp_path / "single", devices=1, batch_size=128)  # same effective batch
    ddp, single = _silhouette(model, tmp_path / "ddp"), _silhouette(model, tmp_path / "single")
    print(f"{model}: silhouette ddp {ddp:.3f} single {single:.3f}")
    assert single > 0.15  # the latent separates cell types
    assert ddp > single - 0.05


@pytest.mark.slow
def test_two_devices_without_a_strategy_still_shard_the_cells(tmp_path):
    """Lightning picks DDP for devices=2; scvi-tools shards only for a strategy named "ddp"."""
    shards = _run("zinb", tmp_path / "auto", 2, 64, "auto")
    first, second = (set(s["cells"]) for s in shards)
    assert len(first) == len(second) == 450
    assert not first & second


@pytest.mark.slow
def test_two_process_streaming_serves_every_row_once_per_epoch(tmp_path):
    path = tmp_path / "cells.h5ad"
    simulate_scrna(n_cells=1000, n_genes=150, seed=4).write_h5ad(path)
    script = SCRIPT.with_name("ddp_stream_script.py")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(out), "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    split = json.loads((tmp_path / "run_split.json").read_text())
    ranks = [json.loads((tmp_path / f"run_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # equal steps
    # Per epoch and process: 8 training minibatches (450 rows), then 1 validation one (50).
    for epoch in range(2):
        batches = [rank[epoch * 9 : epoch * 9 + 9] for rank in ranks]
        train = [row for rank in batches for batch in rank[:8] for row in batch]
        validation = [row for rank in batches for row in rank[8]]
        assert sorted(train) == sorted(split["train"])  # each row once, on one process
        assert sorted(validation) == sorted(split["validation"])
