"""Real 2-process DDP (gloo, CPU) through `accelerate launch`, with a partial freeze plan.

DESIGN rule 6: frozen and trainable parameters must behave under data parallelism. A rank that
skips an all-reduce drifts silently, and an optimizer step on a frozen tensor (weight decay)
changes it silently; both only show up when a real multi-process run is compared bit by bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import make_tiny_model, sentiment_rows, write_csv, write_recipe
from helpers import launch

FROZEN_PREFIXES = ("embeddings.", "encoder.layer.0.", "encoder.layer.1.")  # partial, unfrozen_groups=1, 3 blocks
TRAINED_PREFIXES = ("encoder.layer.2.", "pooler.")


def _mean_loss(model_dir: Path, csv_path: Path) -> float:
    """Mean cross-entropy of the saved model on a CSV, computed in this single process."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer([text for text, _ in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor([model.config.label2id[label] for _, label in rows])
    with torch.no_grad():
        return float(model(**batch, labels=labels).loss)


@pytest.mark.slow
def test_two_process_ddp_partial_freeze(tmp_path):
    from safetensors.torch import load_file

    tiny = make_tiny_model("bert", tmp_path / "tiny-bert-3", layers=3)
    train_csv = write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=1))
    validation_csv = write_csv(tmp_path / "validation.csv", sentiment_rows(32, seed=2))
    out = tmp_path / "run"
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        model_name_or_path=str(tiny),
        train_file=str(train_csv),
        validation_file=str(validation_csv),
        strategy="partial",
        unfrozen_groups=1,  # layer.2 + head train; embeddings, layer.0, layer.1 frozen
        learning_rate=1.0e-2,  # large, so every trained tensor visibly moves in 4 steps
        head_lr=1.0e-2,
        weight_decay=0.01,  # decay must not touch frozen tensors either
        per_device_train_batch_size=8,  # 64 rows / (8 x 2 ranks) = 4 optimizer steps
        output_dir=str(out),
    )

    result = launch(recipe, tmp_path, check=False)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    report = json.loads((out / "replica_check.json").read_text())
    assert report["world_size"] == 2
    assert report["in_sync"] is True
    assert len(report["fingerprints"]) == 2
    assert report["fingerprints"][0] == report["fingerprints"][1]
    assert report["parameters"] == len(report["fingerprints"][0]) > 0

    original = load_file(tiny / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    frozen = [k for k in original if k.startswith(FROZEN_PREFIXES)]
    trainable = [k for k in original if k.startswith(TRAINED_PREFIXES)]
    assert frozen and trainable and len(frozen) + len(trainable) == len(original)
    changed_frozen = [k for k in frozen if not original[k].equal(trained[f"bert.{k}"])]
    assert not changed_frozen, f"frozen parameters changed under DDP: {changed_frozen}"
    unchanged_trainable = [k for k in trainable if original[k].equal(trained[f"bert.{k}"])]
    assert not unchanged_trainable, f"trainable parameters did not train: {unchanged_trainable}"
    assert {"classifier.weight", "classifier.bias"} <= set(trained)

    # The Trainer must not scale a model's mean loss by world_size (it would under DDP, since
    # transformers' models accept **kwargs): eval_loss over 2 ranks equals the single-process loss.
    metrics = json.loads((out / "all_results.json").read_text())
    assert math.isclose(metrics["eval_loss"], _mean_loss(out, validation_csv), rel_tol=1e-3)


@pytest.mark.slow
def test_two_process_ddp_with_replay_and_ewc(tmp_path):
    """The replay head (outside the model's forward) and the EWC penalty stay identical on both ranks."""
    from safetensors.torch import load_file

    tiny = make_tiny_model("bert", tmp_path / "tiny-bert", layers=2)
    train_csv = write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=1))
    families = {"a": ["movie", "day"], "b": ["food", "was"], "c": ["we", "they"]}
    source_csv = write_csv(tmp_path / "source.csv", [{"text": " ".join(w * 2), "label": k} for k, w in families.items()] * 10)
    out = tmp_path / "run"
    recipe = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(tiny), train_file=str(train_csv), strategy="full",
        learning_rate=1.0e-2, per_device_train_batch_size=8, output_dir=str(out),
        replay_data=str(source_csv), replay_ratio=0.5, ewc=1.0, ewc_data=str(source_csv), ewc_samples=16,
    )
    result = launch(recipe, tmp_path, check=False)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    report = json.loads((out / "replica_check.json").read_text())
    assert report["world_size"] == 2 and report["in_sync"] is True
    assert any("replay" in name for name in report["fingerprints"][0])  # the source head was compared too
    assert not any("replay" in k for k in load_file(out / "model.safetensors"))
