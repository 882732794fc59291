"""L2-SP against hand-computed values, its effect on training, and early stopping."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from conftest import write_recipe
from hftl.cli import main
from hftl.freeze import FreezePlan
from hftl.layers import layer_groups
from hftl.regularize import L2SP


def test_l2sp_penalty_is_zero_at_the_pretrained_point_and_matches_by_hand(tiny_bert):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    groups = layer_groups(model)
    FreezePlan("partial", unfrozen_groups=1).apply(groups)  # layer.1 + head train
    reg = L2SP(groups, alpha=0.5)
    assert reg.penalty().item() == 0.0
    names = {n for n, p in model.named_parameters() if any(p is q for q in reg.params)}
    assert names and all(n.startswith("bert.encoder.layer.1.") for n in names)  # no head, nothing frozen
    weight = model.bert.encoder.layer[1].output.dense.weight
    with torch.no_grad():
        weight.add_(0.1)
        model.classifier.weight.add_(5.0)  # the head has no pre-trained point: not penalised
        model.bert.embeddings.word_embeddings.weight.add_(5.0)  # frozen: not penalised
    expected = 0.5 * 0.5 * (0.1**2) * weight.numel()
    assert reg.penalty().item() == pytest.approx(expected, rel=1e-5)


def _distance(out, base, prefix="encoder.layer.1."):
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    return sum(((saved[f"bert.{k}"] - v) ** 2).sum().item() for k, v in base.items() if k.startswith(prefix))


def test_l2sp_keeps_the_backbone_closer_to_pretrained(tiny_bert, sentiment_csv, tmp_path):
    base = AutoModel.from_pretrained(tiny_bert).state_dict()
    distances = {}
    for alpha in (0, 50):
        out = tmp_path / f"a{alpha}"
        recipe = write_recipe(tmp_path / f"{alpha}.yaml", model_name_or_path=str(tiny_bert),
                              train_file=str(sentiment_csv / "train.csv"), output_dir=str(out), strategy="full",
                              learning_rate=3e-3, num_train_epochs=3, seed=0, l2_sp=alpha, weight_decay=0.0)
        assert main(["train", str(recipe)]) == 0
        distances[alpha] = _distance(out, base)
    assert distances[50] < 0.5 * distances[0], distances


def test_early_stopping_stops_and_needs_evaluations(tiny_bert, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "o"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
                          output_dir=str(out), learning_rate=3e-3, num_train_epochs=40, eval_strategy="epoch",
                          save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="loss",
                          early_stopping_patience=1, early_stopping_threshold=0.5, save_total_limit=1)
    assert main(["train", str(recipe)]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["epoch"] <= 3  # a loss drop of 0.5 per epoch cannot last: stopped, not 40 epochs
    capsys.readouterr()
    assert main(["train", str(recipe), "--output_dir", str(tmp_path / "p"), "--load_best_model_at_end", "false"]) == 2
    assert "load_best_model_at_end" in capsys.readouterr().err


def test_forgetting_report_measures_the_source_before_and_after(tiny_bert, sentiment_csv, tmp_path):
    """Source = the sentiment task itself as k-NN on embeddings; a frozen backbone cannot forget."""
    from conftest import sentiment_rows, write_csv

    source = tmp_path / "source"
    source.mkdir()
    write_csv(source / "train.csv", sentiment_rows(60, seed=5))
    write_csv(source / "test.csv", sentiment_rows(30, seed=6))
    results = {}
    for strategy in ("feature_extraction", "full"):
        out = tmp_path / strategy
        recipe = write_recipe(tmp_path / f"{strategy}.yaml", model_name_or_path=str(tiny_bert),
                              train_file=str(sentiment_csv / "train.csv"), output_dir=str(out), strategy=strategy,
                              learning_rate=3e-2, num_train_epochs=2, seed=0, source_eval=str(source),
                              source_eval_samples=60)
        assert main(["train", str(recipe)]) == 0
        results[strategy] = json.loads((out / "all_results.json").read_text())
        assert 0 <= results[strategy]["source_knn_accuracy_before"] <= 1
    frozen = results["feature_extraction"]
    assert frozen["source_knn_accuracy_after"] == frozen["source_knn_accuracy_before"]
    assert frozen["source_forgetting"] == 0
    moved = results["full"]
    assert moved["source_knn_accuracy_before"] == frozen["source_knn_accuracy_before"]
    assert moved["source_knn_accuracy_after"] != moved["source_knn_accuracy_before"]
