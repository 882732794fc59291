"""bench/gpu.py must run end to end on CPU with --tiny (the GPU numbers come from the same code); the proving
ground writes its sets as hftl reads them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_bench_runs_tiny_on_cpu(tmp_path, monkeypatch):
    import torch._dynamo

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", gpu)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu)  # in this process: no second start-up of torch and transformers
    out = tmp_path / "gpu.md"
    limit = torch._dynamo.config.recompile_limit  # gpu.py raises it (monkeypatch's undo would delete it)
    try:
        assert gpu.main(["--tiny", "--out", str(out)]) == 0
    finally:
        torch._dynamo.config.recompile_limit = limit
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith(("| BERT", "| ViT", "| CLIP"))]
    assert len(rows) == 4 * 5  # BERT at 2 batch sizes, ViT, CLIP x (plain, full, frozen, compiled, CUDA graphs)
    assert [r[2] for r in rows[::5]] == ["4", "8", "4", "4"]
    by_side = {side: [r for r in rows if r[1] == side] for side in (gpu.PLAIN, gpu.FULL, gpu.COMPILED, gpu.GRAPHS)}
    assert all(r[4] == "1.00x" for r in by_side[gpu.PLAIN])  # the plain Trainer is each model's baseline
    assert all(r[4].endswith("x") and float(r[3].split()[0]) > 0 for r in by_side[gpu.FULL] + by_side[gpu.COMPILED])
    assert all(r[3] == "n/a (needs CUDA)" for r in by_side[gpu.GRAPHS])
    assert sum("blocks frozen" in r[1] for r in rows) == 4


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
