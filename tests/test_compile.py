"""torch_compile with a freeze plan, gradual unfreezing and dynamic padding: what recompiles, and that the
compiled run trains like the eager one. dynamo's own counters count the compiles. The backend is dynamo's
`eager` (its captured graphs run as they are): the recompiles are dynamo's, whatever the backend, and
inductor takes minutes per graph on a 2-core CPU. With BACKEND = "aot_eager" (AOTAutograd's compiled
backward) the test passes too, at about twice the time."""

from __future__ import annotations

import json
import random

import pytest

from conftest import FILLER, NEGATIVE, POSITIVE, make_tiny_model, write_csv, write_recipe

BACKEND = "eager"


def test_batches_are_padded_to_length_buckets_never_past_the_limit(tiny_bert):
    from transformers import AutoTokenizer

    from hftl.tasks.text_classification import Padding

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [{"input_ids": tokenizer(" ".join(["good"] * n))["input_ids"], "labels": 0} for n in (3, 20)]  # 5, 22 tokens
    assert Padding(tokenizer)(rows)["input_ids"].shape == (2, 22)  # 1: the batch's longest
    assert Padding(tokenizer, 16, limit=64)(rows)["input_ids"].shape == (2, 32)
    assert Padding(tokenizer, 16, limit=24)(rows)["input_ids"].shape == (2, 24)  # the model's positions end there
    assert Padding(tokenizer, 16, limit=64)(rows[:1])["attention_mask"].sum() == 5


def _varied_rows(n: int) -> list[dict]:
    rng, rows = random.Random(0), []
    for i in range(n):
        words = rng.choices(POSITIVE if i % 2 else NEGATIVE, k=3) + rng.choices(FILLER, k=rng.randint(1, 40))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if i % 2 else "neg"})
    return rows


@pytest.mark.slow
def test_compiled_gradual_unfreezing_recompiles_once_per_phase_and_matches_eager(tmp_path):
    import torch
    import torch._dynamo
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    from hftl.cli import main

    model = make_tiny_model("bert", tmp_path / "tiny", layers=1)  # 1 block: the graphs compile in half the time
    config = json.loads((model / "config.json").read_text())
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # compiled and eager runs draw
    (model / "config.json").write_text(json.dumps({**config, **no_dropout}))  # random numbers differently
    data = write_csv(tmp_path / "train.csv", _varied_rows(56))  # 50 train rows after the 10% validation split
    base = dict(model_name_or_path=str(model), train_file=str(data), strategy="full",  # head, + layer.0, + embeddings
                unfreeze_every=0.5, num_train_epochs=1.5, per_device_train_batch_size=8, learning_rate=1e-2, seed=0)
    limit = torch._dynamo.config.recompile_limit
    finals = {}
    try:
        for name, extra in (("eager", {}), ("compiled", {"torch_compile": True, "torch_compile_backend": BACKEND})):
            torch._dynamo.reset()
            counters.clear()
            recipe = write_recipe(tmp_path / f"{name}.yaml", **base, **extra, output_dir=str(tmp_path / name))
            assert main(["train", str(recipe)]) == 0
            finals[name] = (load_file(tmp_path / name / "model.safetensors"), dict(counters["frames"]))
        assert torch._dynamo.config.recompile_limit >= 8 + 3  # room for the 3 phases
    finally:
        torch._dynamo.config.recompile_limit = limit
    (eager, eager_frames), (compiled, frames) = finals["eager"], finals["compiled"]
    assert not eager_frames
    # 1 first graph + 2 phase changes + at most 2 for shapes (sequence length, short last batch), never one per length
    assert frames["ok"] == frames["total"] and 3 <= frames["ok"] <= 5, frames
    worst = max(float((compiled[k] - eager[k]).abs().max()) for k in eager)
    assert worst < 1e-4, worst
