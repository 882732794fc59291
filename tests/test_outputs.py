"""What a run leaves for the Hub and for its reader: a model card whose metadata huggingface_hub parses
(model-index with every held-out metric, license never invented), training curves, a per-class table
and a confusion matrix that agree with the saved model's own predictions."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import write_recipe
from hftl.config import load_config


def test_card_metadata_is_a_model_index_huggingface_hub_parses(finished):
    card = ModelCard((finished / "README.md").read_text())
    results = json.loads((finished / "all_results.json").read_text())
    found = {(r.dataset_split, r.metric_type, r.metric_config): r for r in card.data.eval_results}
    assert set(found) == {(s, m, c) for s in ("validation", "test") for m, c in (("accuracy", None), ("f1", "macro"))}
    assert found[("test", "accuracy", None)].metric_value == pytest.approx(results["test_accuracy"])
    assert found[("test", "f1", "macro")].metric_value == pytest.approx(results["test_f1_macro"])
    assert found[("validation", "accuracy", None)].metric_value == pytest.approx(results["eval_accuracy"])
    first = card.data.eval_results[0]
    assert first.task_type == "text-classification" and first.dataset_type == "csv" and first.dataset_name == "train.csv"
    assert card.data.pipeline_tag == "text-classification" and "hftl" in card.data.tags
    assert card.data.license is None  # a local checkpoint without a card: no license is invented


def test_confusion_matrix_and_per_class_table_match_the_saved_model(finished, sentiment_csv):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(sentiment_csv / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    model = AutoModelForSequenceClassification.from_pretrained(finished).eval()
    tokenizer = AutoTokenizer.from_pretrained(finished)
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        predicted = [model.config.id2label[i] for i in model(**batch).logits.argmax(-1).tolist()]
    with open(finished / "per_class.csv") as f:
        table = {r["class"]: r for r in csv.DictReader(f)}
    assert set(table) == {"neg", "pos"}
    for name, row in table.items():
        truth = [r["label"] == name for r in rows]
        hits = sum(t and p == name for t, p in zip(truth, predicted))
        assert int(row["support"]) == sum(truth)
        assert float(row["recall"]) == pytest.approx(hits / sum(truth))
        said = sum(p == name for p in predicted)
        assert float(row["precision"]) == pytest.approx(hits / said if said else 0.0)
    assert (finished / "confusion_matrix.png").stat().st_size > 10_000
    text = (finished / "README.md").read_text()
    assert "![Confusion matrix on the test split](confusion_matrix.png)" in text and "| neg |" in text


def test_curves_show_the_logged_losses(finished):
    from hftl.commands.outputs import _epoch_steps

    state = json.loads((finished / "trainer_state.json").read_text())
    assert (finished / "curves.png").stat().st_size > 10_000
    assert "![Training loss and validation metrics per step](curves.png)" in (finished / "README.md").read_text()
    per_epoch = state["max_steps"] // 2
    assert _epoch_steps(state["log_history"]) == [per_epoch, 2 * per_epoch]  # two epochs, both marked


def test_license_is_the_recipes_or_the_base_models_never_invented(tmp_path, tiny_bert):
    from hftl.commands.card import _license

    def config(**values):
        return load_config(str(write_recipe(tmp_path / "r.yaml", dataset="x", **values)))

    assert _license(config(model_name_or_path="builtin:minilm-l6")) == "apache-2.0"
    assert _license(config(model_name_or_path="builtin:minilm-l6", license="mit")) == "mit"
    assert _license(config(model_name_or_path="some-org/unknown-model")) is None
    carded = tmp_path / "carded"
    carded.mkdir()
    (carded / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# a model\n")
    (carded / "config.json").write_text('{"model_type": "bert"}')  # a model folder has one (checked with the recipe)
    assert _license(config(model_name_or_path=str(carded))) == "cc-by-4.0"
