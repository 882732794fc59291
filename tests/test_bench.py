"""bench/gpu.py must run end to end on CPU with --tiny (the GPU numbers come from the same code); the proving
ground writes its sets as hftl reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_bench_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--steps", "1", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| BERT", "| ViT", "| CLIP"))]
    assert len(rows) == 9  # 3 models x (plain, hftl full, hftl frozen)
    assert all("x |" in row for row in rows)
    assert sum("| 1.00x |" in row for row in rows) >= 3  # the plain Trainer is each model's baseline


def test_proving_ground_writes_a_set_hftl_reads_and_scores_its_baseline(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import proving_ground
    finally:
        sys.path.remove(str(ROOT / "bench"))
    parts = proving_ground._split([{"k": i % 4} for i in range(400)], (100, 20, 40), key=lambda r: r["k"])
    assert [len(p) for p in parts] == [100, 20, 40] and sum(r["k"] == 0 for r in parts[0]) == 25  # stratified
    folder = tmp_path / "digits-8x8"
    proving_ground.digits(folder, sizes=(100, 20, 60))
    recipe = proving_ground.recipe("digits-8x8", folder, "image")
    assert recipe.read_text().startswith(f"# hftl train {recipe}")
    row = proving_ground.classical(recipe)
    assert (row["train"], row["test"]) == (100, 60) and row["baseline_test"] > 0.7  # pixels do well on 8x8 digits
