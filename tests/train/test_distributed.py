from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import silhouette_score

from scgexp.data import simulate_scrna
from scgexp.zinb import ZINBAutoencoder

SCRIPT = Path(__file__).with_name("ddp_script.py")


def _run(out_dir: Path, devices: int, batch_size: int) -> list[dict]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out_dir), str(devices), str(batch_size)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out_dir.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("SHARD ")]
    return [json.loads(line.removeprefix("SHARD ")) for line in lines]


def _silhouette(model_dir: Path) -> float:
    adata = simulate_scrna(n_cells=1000, n_genes=150, seed=4)
    model = ZINBAutoencoder.load(str(model_dir), adata=adata)
    return silhouette_score(model.get_latent_representation(), adata.obs["cell_type"])


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    shards = _run(tmp_path / "ddp", devices=2, batch_size=64)
    assert sorted(s["rank"] for s in shards) == [0, 1]
    first, second = (set(s["cells"]) for s in shards)
    assert len(first) == len(second) == 450  # 900 training cells, half each
    assert not first & second  # each rank trains on its own shard
    assert list((tmp_path / "ddp").iterdir())  # rank 0 saved the model

    _run(tmp_path / "single", devices=1, batch_size=128)  # same effective batch
    ddp, single = _silhouette(tmp_path / "ddp"), _silhouette(tmp_path / "single")
    print(f"silhouette ddp {ddp:.3f} single {single:.3f}")
    assert single > 0.3
    assert ddp > single - 0.05
