"""LoRA as a strategy: trainable counts, adapters at their block's lr, head saved, reload equal."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from conftest import write_recipe
from hftl.commands import train as run
from hftl.cli import main
from hftl.config import load_config


@pytest.fixture
def lora_recipe(tmp_path, tiny_bert, sentiment_csv):
    def make(**values):
        base = dict(model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
                    test_file=str(sentiment_csv / "test.csv"), output_dir=str(tmp_path / "o"), strategy="lora",
                    lora_r=4, learning_rate=1e-2, head_lr=3e-3, layer_decay=0.5, num_train_epochs=4, seed=0)
        base.update(values)
        return str(write_recipe(tmp_path / "lora.yaml", **base))

    return make


def test_lora_plan_counts_and_lrs(lora_recipe):
    built = run.build(load_config(lora_recipe()))
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("pooler.modules_to_save" in n for n in trainable) and any("classifier.modules_to_save" in n for n in trainable)
    # 2 blocks x (query, value) x (A: r x 32, B: 32 x r) with r = 4
    lora_count = sum(p.numel() for n, p in built.model.named_parameters() if "lora_" in n)
    assert lora_count == 2 * 2 * (4 * 32 + 32 * 4)
    lrs = {n: a.lr for n, a in built.assignment.items() if "lora_A" in n and "query" in n}
    assert lrs == {
        "bert.encoder.layer.0.attention.self.query.lora_A.default.weight": pytest.approx(5e-3),
        "bert.encoder.layer.1.attention.self.query.lora_A.default.weight": pytest.approx(1e-2),
    }
    rows = {r.group: r for r in built.rows}
    assert rows["embeddings"].trainable_params == 0 and rows["head"].lr == pytest.approx(3e-3)


def _predict(model, tokenizer, texts):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


TEXTS = ["good great nice the movie", "bad awful sad the day", "the day was fine and bright"]


def test_lora_trains_saves_adapter_and_reloads_equal(lora_recipe, tmp_path, tiny_bert):
    from peft import PeftModel

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", lora_recipe()]) == 0
    out = tmp_path / "o"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "all_results.json").read_text())["test_accuracy"] >= 0.9
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "neg", 1: "pos"}
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, config=config)
    reloaded = PeftModel.from_pretrained(base, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    first = _predict(reloaded, tokenizer, TEXTS)
    again = _predict(PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_bert, config=config), out), tokenizer, TEXTS)
    assert torch.equal(first, again)
    assert first.argmax(-1).tolist()[:2] == [1, 0]


def test_lora_merged_folder_is_a_plain_model(lora_recipe, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", lora_recipe(merge_lora=True)]) == 0
    out = tmp_path / "o"
    assert not (out / "adapter_config.json").exists() and (out / "adapter" / "adapter_config.json").is_file()
    classify = pipeline("text-classification", model=str(out))
    assert [r["label"] for r in classify(TEXTS[:2])] == ["pos", "neg"]


def test_lora_targets_that_match_nothing_list_candidates(lora_recipe, capsys):
    assert main(["plan", lora_recipe(), "--lora_target_modules", "q_proj"]) == 2
    err = capsys.readouterr().err
    assert "match no linear or convolution layer" in err and "query" in err and "value" in err


def test_lora_on_a_vit_trains_adapters_and_reloads(tmp_path):
    """Image models take pixel_values: LoRA wraps them without the text-only SEQ_CLS forward."""
    from PIL import Image
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTImageProcessor

    model_dir = tmp_path / "vit"
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (32 + i, 32), colour).save(tmp_path / "img" / cls / f"{i}.png")
    recipe = write_recipe(tmp_path / "r.yaml", task="image-classification", model_name_or_path=str(model_dir),
                          dataset=str(tmp_path / "img"), strategy="lora", lora_r=2, merge_lora=True,
                          learning_rate=1e-2, num_train_epochs=1, per_device_train_batch_size=4,
                          output_dir=str(tmp_path / "out"), report_to="none", seed=0, validation_split=0.25)
    built = run.build(load_config(str(recipe)))
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert any("q_proj.lora_A" in n for n in trainable) and any("v_proj.lora_B" in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)
    assert not any("k_proj.lora" in n for n in trainable)
    assert main(["train", str(recipe)]) == 0
    merged = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert merged.config.id2label == {0: "blue", 1: "red"}
