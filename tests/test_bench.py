"""bench/gpu.py must run end to end on CPU with --tiny (the GPU numbers come from the same code)."""

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
