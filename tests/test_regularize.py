"""L2-SP against hand-computed values, its effect on training, and early stopping."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from conftest import write_recipe
from hftl.cli import main
from hftl.engine.freeze import FreezePlan
from hftl.engine.layers import layer_groups
from hftl.forgetting.penalties import L2SP


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
        before = results[strategy]["source_knn_accuracy_before"]
        assert before * 30 == pytest.approx(round(before * 30))  # a share of the 30 source test rows (the queries)
        assert before >= 0.7  # chance is 0.5; mean-pooled embeddings of the sentiment words separate them even untrained
    frozen = results["feature_extraction"]
    assert frozen["source_knn_accuracy_after"] == frozen["source_knn_accuracy_before"]
    assert frozen["source_forgetting"] == 0
    moved = results["full"]
    assert moved["source_knn_accuracy_before"] == frozen["source_knn_accuracy_before"]
    assert moved["source_knn_accuracy_after"] != moved["source_knn_accuracy_before"]


def _tiny_full(tiny_bert):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    groups = layer_groups(model)
    FreezePlan("partial", unfrozen_groups=1).apply(groups)  # layer.1 + head train
    return model, groups


def test_ewc_penalty_is_zero_at_the_pretrained_point_and_matches_by_hand(tiny_bert):
    from hftl.forgetting.penalties import EWC, trainable_backbone

    model, groups = _tiny_full(tiny_bert)
    params = trainable_backbone(groups)
    fisher = [torch.rand_like(p) for p in params]
    reg = EWC(groups, lam=2.0, fisher=fisher)
    assert reg.penalty().item() == 0.0
    names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
    index = names.index("bert.encoder.layer.1.output.dense.weight")
    with torch.no_grad():
        params[index].add_(0.1)
        model.classifier.weight.add_(5.0)  # no pre-trained point: not penalised
    expected = 0.5 * 2.0 * (fisher[index] * 0.1**2).sum().item()
    assert reg.penalty().item() == pytest.approx(expected, rel=1e-5)


def test_embedding_fisher_estimates_the_exact_diagonal(tiny_bert):
    """Random projections average to sum_k (df_k/dw)^2, computed exactly here one output at a time."""
    from transformers import AutoTokenizer

    from hftl.engine.pooling import mean_pooled
    from hftl.forgetting.penalties import embedding_fisher, trainable_backbone

    model, groups = _tiny_full(tiny_bert)
    params = trainable_backbone(groups)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = dict(tokenizer(["good movie", "bad plot and acting"], padding=True, return_tensors="pt"))
    encoder = model.bert.eval()
    exact = [torch.zeros_like(p) for p in params]
    for row in range(2):
        one = {k: v[row : row + 1] for k, v in batch.items()}
        pooled = mean_pooled(encoder, one)[0]
        for k in range(pooled.shape[0]):
            grads = torch.autograd.grad(pooled[k], params, retain_graph=True)
            for e, g in zip(exact, grads):
                e.add_(g**2)
    scale = sum(e.numel() for e in exact) / sum(e.sum() for e in exact)
    exact = torch.cat([(e * scale).flatten() for e in exact])
    estimates = [torch.cat([f.flatten() for f in embedding_fisher(encoder, params, [batch], seed=s)]) for s in range(200)]
    mean = torch.stack(estimates).mean(0)
    assert torch.corrcoef(torch.stack([mean, exact]))[0, 1] > 0.9
    assert mean.mean().item() == pytest.approx(1.0, rel=1e-4)  # scaled to mean 1
    again = torch.cat([f.flatten() for f in embedding_fisher(encoder, params, [batch], seed=3)])
    assert torch.equal(again, estimates[3])  # seeded: the same on every rank


def test_ewc_keeps_the_backbone_closer_and_needs_fisher_data(tiny_bert, sentiment_csv, tmp_path, capsys):
    base = AutoModel.from_pretrained(tiny_bert).state_dict()
    distances = {}
    for lam in (0, 50):
        out = tmp_path / f"e{lam}"
        recipe = write_recipe(tmp_path / f"{lam}.yaml", model_name_or_path=str(tiny_bert),
                              train_file=str(sentiment_csv / "train.csv"), output_dir=str(out), strategy="full",
                              learning_rate=3e-3, num_train_epochs=3, seed=0, weight_decay=0.0, ewc=lam,
                              ewc_data=str(sentiment_csv / "test.csv"), ewc_samples=40)
        assert main(["train", str(recipe)]) == 0
        distances[lam] = _distance(out, base)
    assert "EWC Fisher" in capsys.readouterr().out
    assert distances[50] < 0.5 * distances[0], distances
    assert main(["train", str(recipe), "--ewc_data", "", "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "ewc_data" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def _topic_rows(n: int) -> list[dict]:
    """A source task with its own labels: which filler word family the text is about."""
    import random

    rng = random.Random(7)
    families = {"sport": ["movie", "day", "very"], "money": ["food", "was", "this"], "tech": ["we", "they", "that"]}  # in the tiny vocab
    rows = []
    for i in range(n):
        topic = list(families)[i % 3]
        rows.append({"text": " ".join(rng.choices(families[topic], k=4)), "label": topic})
    return rows


def _sgd_on_replay(built, steps: int, lr: float) -> list[float]:
    """Plain SGD on the replay loss alone; the loss of every step."""
    losses = []
    for _ in range(steps):
        loss = built.replay.loss(built.model)
        loss.backward()
        with torch.no_grad():
            for p in built.model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
                    p.grad = None
        losses.append(loss.item())
    return losses


def test_replay_learns_the_source_task_beside_the_target_and_saves_the_target_alone(tiny_bert, sentiment_csv, tmp_path, capsys):
    from safetensors.torch import load_file

    from conftest import write_csv
    from hftl.commands import train as run
    from hftl.config import load_config

    source = write_csv(tmp_path / "topics.csv", _topic_rows(60))
    out = tmp_path / "r"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
                          output_dir=str(out), strategy="full", learning_rate=3e-3, num_train_epochs=2, seed=0,
                          replay_data=str(source), replay_ratio=0.5, per_device_train_batch_size=8)
    built = run.build(load_config(str(recipe)))
    head = {n for n, _ in next(g for g in built.groups if g.is_head).params}
    assert {"hftl_replay_head.weight", "hftl_replay_head.bias"} <= head  # trained as a head, at head_lr
    assert built.replay.labels == ["money", "sport", "tech"] and built.replay.batch_size == 4
    losses = _sgd_on_replay(built, steps=30, lr=0.05)  # the source loss through the encoder and its own head can be learnt
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    assert main(["train", str(recipe)]) == 0
    saved = load_file(str(out / "model.safetensors"))
    assert not any("replay" in k for k in saved)  # the saved folder is the target model
    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label == {0: "neg", 1: "pos"}
    capsys.readouterr()
    bad = write_csv(tmp_path / "bad.csv", [{"sentence": "x", "label": "a"}, {"sentence": "y", "label": "b"}] * 10)
    assert main(["train", str(recipe), "--replay_data", str(bad), "--output_dir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "replay_data" in err and "text_column" in err and "Traceback" not in err


def test_masked_lm_replay_uses_the_checkpoints_mlm_head(tmp_path, sentiment_csv, capsys):
    """Unlabelled source text + a checkpoint with an MLM head: the pre-training objective is replayed."""
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    from conftest import make_tiny_model, write_csv
    from hftl.commands import train as run
    from hftl.config import load_config

    folder = make_tiny_model("bert", tmp_path / "bert-mlm")
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_pretrained(folder).save_pretrained(folder)  # an encoder that ships its MLM head
    sentences = ["the movie was very good", "we ate the food that day", "they said it was a dull day"]
    text = write_csv(tmp_path / "general.csv", [{"text": sentences[i % 3]} for i in range(60)])  # predictable text
    out = tmp_path / "o"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(folder), train_file=str(sentiment_csv / "train.csv"),
                          output_dir=str(out), strategy="full", learning_rate=3e-3, num_train_epochs=1, seed=0,
                          replay_data=str(text), replay_ratio=1.0, per_device_train_batch_size=16)
    built = run.build(load_config(str(recipe)))
    assert built.replay.kind == "mlm"
    embeddings = built.model.get_input_embeddings().weight
    assert built.replay.head.predictions.decoder.weight is embeddings  # tied to the model's word embeddings
    torch.manual_seed(0)
    losses = _sgd_on_replay(built, steps=40, lr=0.5)
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, losses
    assert main(["train", str(recipe)]) == 0
    assert not any("replay" in k for k in load_file(str(out / "model.safetensors")))
    capsys.readouterr()
    plain = make_tiny_model("bert", tmp_path / "bert-plain")  # no MLM head in this checkpoint
    assert main(["train", str(recipe), "--model_name_or_path", str(plain), "--output_dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "masked-language-model head" in err and "Traceback" not in err
