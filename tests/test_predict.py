"""hftl evaluate and hftl predict on finished runs (text, image, multi-label): evaluate's figures are the run's own
test figures when given the run's test data (so new data is preprocessed as the run's was, truncation and image
resizing included), predict's labels and scores are the saved model's own on those rows, bad rows are named or
skipped, and bad input is one message with nothing written."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest
import torch
import yaml

from conftest import FILLER, NEGATIVE, POSITIVE, write_csv, write_recipe
from helpers import cli_error, colour_image, snapshot, write_folder
from hftl.cli import main


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0


def _read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _json(path) -> dict:
    return json.loads(path.read_text())


def _same_figures(metrics: dict, run, keys: tuple[str, ...]) -> None:
    own = _json(run / "all_results.json")
    for key in keys:
        assert metrics[key] == pytest.approx(own[key], abs=1e-5), key


def _own_files(folder) -> dict:
    """The run's files, without what hftl evaluate adds under eval/."""
    return {k: v for k, v in snapshot(folder).items() if not k.startswith("eval/")}


@pytest.fixture(scope="module")
def image_run(tiny_vit, tmp_path_factory):
    """A ViT run on a folder of coloured images (train/ and test/, several sizes): 2 steps."""
    root = tmp_path_factory.mktemp("image-run")
    write_folder(root / "images" / "train", per_class=8)
    write_folder(root / "images" / "test", per_class=4, start=50)
    recipe = write_recipe(root / "r.yaml", task="image-classification", model_name_or_path=str(tiny_vit),
                          dataset=str(root / "images"), validation_split=0.25, max_steps=2, learning_rate=1e-2,
                          per_device_train_batch_size=8, output_dir=str(root / "run"))
    _ok(["train", str(recipe)])
    return root


def _multi_rows(n: int, seed: int) -> list[dict]:
    """12 words, labels `pos`/`neg` for the cue words anywhere (`none` without): past 8 tokens truncation bites."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(POSITIVE, k=i % 3) + rng.choices(NEGATIVE, k=(i // 3) % 3) + rng.choices(FILLER, k=8)
        words += rng.choices(FILLER, k=12 - len(words))
        rng.shuffle(words)
        found = [name for name, cue in (("pos", POSITIVE), ("neg", NEGATIVE)) if set(words) & set(cue)]
        rows.append({"text": " ".join(words), "label": ";".join(found or ["none"])})
    return rows


@pytest.fixture(scope="module")
def multi_run(tiny_bert, tmp_path_factory):
    """A multi-label text run (`label_separator: ;`) whose texts are longer than its max_length of 8 tokens."""
    root = tmp_path_factory.mktemp("multi-run")
    write_csv(root / "train.csv", _multi_rows(48, seed=1))
    write_csv(root / "test.csv", _multi_rows(18, seed=2))
    recipe = write_recipe(root / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(root / "train.csv"),
                          test_file=str(root / "test.csv"), label_separator=";", max_length=8, max_steps=2,
                          learning_rate=1e-2, output_dir=str(root / "run"))
    _ok(["train", str(recipe)])
    return root


# ---------------------------------------------------------------- hftl evaluate


def test_evaluate_gives_the_runs_own_test_figures_beside_the_run(finished, sentiment_csv):
    before = _own_files(finished)
    _ok(["evaluate", str(finished), "--test_file", str(sentiment_csv / "test.csv")])
    out = finished / "eval" / "test"
    assert _own_files(finished) == before  # the run's own files are never touched
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrix.png", "metrics.json", "per_class.csv"]
    metrics = _json(out / "metrics.json")
    _same_figures(metrics, finished, ("test_accuracy", "test_f1_macro", "test_loss"))
    assert metrics["test_samples"] == 60 and metrics["data"] == "test.csv"
    assert _read(out / "per_class.csv") == _read(finished / "per_class.csv")  # same data, same model: same table


def test_evaluate_an_image_run_on_a_dataset_folder(image_run):
    run, out = image_run / "run", image_run / "eval-out"
    _ok(["evaluate", str(run), "--dataset", str(image_run / "images"), "--out", str(out)])
    metrics = _json(out / "metrics.json")
    _same_figures(metrics, run, ("test_accuracy", "test_f1_macro", "test_loss"))  # resize and normalise as trained
    assert metrics["test_samples"] == 8 and (out / "confusion_matrix.png").stat().st_size > 5_000


def test_evaluate_a_multi_label_run_truncates_as_its_training_did(multi_run, tiny_bert):
    from transformers import AutoTokenizer

    texts = [r["text"] for r in _read(multi_run / "test.csv")]
    assert min(len(AutoTokenizer.from_pretrained(tiny_bert)(t)["input_ids"]) for t in texts) > 8  # truncation bites
    run, out = multi_run / "run", multi_run / "eval-out"
    _ok(["evaluate", str(run), "--test_file", str(multi_run / "test.csv"), "--out", str(out)])
    _same_figures(_json(out / "metrics.json"), run, ("test_f1_micro", "test_subset_accuracy", "test_loss"))
    assert {r["class"] for r in _read(out / "per_class.csv")} == {"neg", "none", "pos"}
    assert (out / "per_label_f1.png").is_file()


def test_evaluate_a_lora_run_saved_as_adapters(tiny_bert, sentiment_csv, tmp_path):
    run = tmp_path / "run"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), strategy="lora", max_steps=3,
                          train_file=str(sentiment_csv / "train.csv"), test_file=str(sentiment_csv / "test.csv"),
                          learning_rate=1e-2, output_dir=str(run))
    _ok(["train", str(recipe)])
    assert (run / "adapter_model.safetensors").is_file() and not (run / "model.safetensors").exists()
    _ok(["evaluate", str(run), "--test_file", str(sentiment_csv / "test.csv")])
    # the base model, its adapters and its trained head: the figures the run had (a fresh head would differ)
    _same_figures(_json(run / "eval" / "test" / "metrics.json"), run, ("test_accuracy", "test_loss"))


# ---------------------------------------------------------------- hftl predict


def test_predict_writes_the_models_own_labels_scores_and_top_k(finished, sentiment_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [r["text"] for r in _read(sentiment_csv / "test.csv")]
    write_csv(tmp_path / "new.csv", [{"id": i, "text": t} for i, t in enumerate(texts)])  # unlabelled
    out = tmp_path / "p.csv"
    _ok(["predict", str(finished), "--input", str(tmp_path / "new.csv"), "--output", str(out), "--top_k", "2",
         "--batch_size", "7"])
    model = AutoModelForSequenceClassification.from_pretrained(finished).eval()
    batch = AutoTokenizer.from_pretrained(finished)(texts, padding=True, truncation=True, max_length=32,
                                                    return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)
    names = model.config.id2label
    got = _read(out)
    assert [g["row"] for g in got] == [str(i) for i in range(1, 61)] and [g["text"] for g in got] == texts
    assert [g["label"] for g in got] == [names[i] for i in probs.argmax(-1).tolist()]
    assert len({g["label"] for g in got}) == 2  # the model tells the classes apart: the argmax check can fail
    assert [float(g["score"]) for g in got] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)
    for g, p in zip(got, probs):
        ranked = p.argsort(descending=True).tolist()
        assert g["labels"].split(";") == [names[i] for i in ranked]
        assert [float(s) for s in g["scores"].split(";")] == pytest.approx(p[ranked].tolist(), abs=1e-5)
    assert not (tmp_path / "p.skipped.csv").exists() and not (tmp_path / "p.csv.partial").exists()
    _ok(["predict", str(finished), "--input", str(tmp_path / "new.csv"), "--output", str(out), "--overwrite", "true"])
    assert list(_read(out)[0]) == ["row", "text", "label", "score"]


def test_predict_images_names_or_skips_bad_rows(image_run, tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    good = [f"{c}_{i}.png" for c in ("blue", "red") for i in range(2)]
    for i, name in enumerate(good):
        colour_image(name.split("_")[0], (20 + 4 * i, 28), seed=i).save(pics / name)
    (pics / "broken.png").write_bytes(b"not an image")
    names = good[:1] + ["missing.png"] + good[1:3] + ["broken.png"] + good[3:]
    write_csv(pics / "new.csv", [{"file": n} for n in names])
    run, out = image_run / "run", tmp_path / "p.csv"
    argv = ["predict", str(run), "--input", str(pics / "new.csv"), "--output", str(out), "--image_column", "file"]
    before = snapshot(tmp_path)
    message = cli_error(capsys, argv)
    assert "Row 2 (line 3)" in message and "missing.png" in message and "--bad_rows skip" in message
    assert snapshot(tmp_path) == before  # nothing written, no partial file left
    _ok(argv + ["--bad_rows", "skip"])
    skipped = _read(tmp_path / "p.skipped.csv")
    assert [(s["row"], s["where"]) for s in skipped] == [("2", "line 3"), ("5", "line 6")]
    assert "does not exist" in skipped[0]["reason"] and "cannot be read" in skipped[1]["reason"]
    assert "skipped 2 rows" in capsys.readouterr().out
    model = AutoModelForImageClassification.from_pretrained(run).eval()
    pixels = AutoImageProcessor.from_pretrained(run)([Image.open(pics / n).convert("RGB") for n in good],
                                                     return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = [model.config.id2label[i] for i in model(pixel_values=pixels).logits.argmax(-1).tolist()]
    got = _read(out)
    assert [(g["row"], g["file"]) for g in got] == [("1", good[0]), ("3", good[1]), ("4", good[2]), ("6", good[3])]
    assert [g["label"] for g in got] == expected
    _ok(["predict", str(run), "--input", str(image_run / "images" / "test"), "--output", str(tmp_path / "f.csv")])
    assert len(_read(tmp_path / "f.csv")) == 8  # a folder of images: every image in it


def test_predict_multi_label_writes_the_labels_over_the_threshold(multi_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = multi_run / "run"
    texts = [r["text"] for r in _read(multi_run / "test.csv")]
    model = AutoModelForSequenceClassification.from_pretrained(run).eval()
    batch = AutoTokenizer.from_pretrained(run)(texts, padding=True, truncation=True, max_length=8, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits.sigmoid()
    median = round(float(scores.median()), 4)
    for threshold in (None, median):
        out = tmp_path / f"p-{threshold}.csv"
        _ok(["predict", str(run), "--input", str(multi_run / "test.csv"), "--output", str(out)]
            + (["--threshold", str(threshold)] if threshold else []))
        cut = 0.5 if threshold is None else threshold
        wanted = [";".join(model.config.id2label[i] for i in range(3) if p[i] > cut) for p in scores]
        got = _read(out)
        assert [g["labels"] for g in got] == wanted
        assert [[float(s) for s in g["scores"].split(";") if s] for g in got] == [
            pytest.approx([float(x) for x in p if x > cut], abs=1e-5) for p in scores]
    assert sum(bool(w) for w in wanted) >= 9  # at the median about half the scores count: the threshold mattered


# ---------------------------------------------------------------- bad input: one message, exit 2, nothing written


def test_a_folder_that_is_not_a_finished_run(finished, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(finished / "config.json", half)
    before = snapshot(tmp_path)
    message = cli_error(capsys, ["evaluate", str(half), "--test_file", "x.csv"])
    assert "not a finished hftl run" in message and "hftl_config.yaml" in message and "model.safetensors" in message
    assert "tokenizer" in message and "`config.json`" not in message.split(";")[0]
    assert "does not exist" in cli_error(capsys, ["predict", str(tmp_path / "nowhere"), "--input", "x", "--output",
                                                  str(tmp_path / "p.csv")])
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "hftl_config.yaml").write_text(yaml.safe_dump({"task": "clip", "model_name_or_path": "x", "dataset": "y"}))
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (clip / name).write_text("{}")
    before = snapshot(tmp_path)
    message = cli_error(capsys, ["predict", str(clip), "--input", "x.csv", "--output", str(tmp_path / "p.csv")])
    assert "clip run" in message and "text-classification, image-classification" in message
    assert snapshot(tmp_path) == before


def test_bad_data_outputs_and_options_are_refused(finished, tmp_path, capsys):
    run = str(finished)
    write_csv(tmp_path / "kind.csv", [{"text": "good day", "kind": "pos"}])
    write_csv(tmp_path / "unseen.csv", [{"text": t, "label": lab} for t, lab in
                                        (("good", "pos"), ("meh", "meh"), ("so so", "neutral"))])
    write_csv(tmp_path / "body.csv", [{"body": "good day"}])
    write_csv(tmp_path / "empty.csv", [{"text": "good day"}, {"text": " "}])
    (tmp_path / "exists.csv").write_text("keep me\n")
    before, own = snapshot(tmp_path), _own_files(finished)
    predict = ["predict", run, "--input", str(tmp_path / "body.csv"), "--output"]
    cases = {
        "`label` (from `label_column`) is not in the test split. Its columns are: text, kind":
            ["evaluate", run, "--test_file", str(tmp_path / "kind.csv")],
        "has labels the model never saw: `meh`, `neutral` (in `label`). The model's labels are neg, pos":
            ["evaluate", run, "--test_file", str(tmp_path / "unseen.csv")],
        "has no column `text` (from `text_column`); its columns are body": predict + [str(tmp_path / "p.csv")],
        "Row 2 (line 3)": ["predict", run, "--input", str(tmp_path / "empty.csv"), "--output", str(tmp_path / "p.csv")],
        "The folder of --output": predict + [str(tmp_path / "no" / "p.csv")],
        "Pass `--overwrite true` to replace it": predict + [str(tmp_path / "exists.csv")],
        "one of the run's own files": predict + [str(finished / "per_class.csv"), "--overwrite", "true"],
        "is the run folder": ["evaluate", run, "--test_file", str(tmp_path / "kind.csv"), "--out", run],
        "between 1 and the run's 2 labels": predict + [str(tmp_path / "p.csv"), "--top_k", "3"],
        "this run is single-label": predict + [str(tmp_path / "p.csv"), "--threshold", "0.3"],
        "exactly one of `--test_file F` or `--dataset NAME`": ["evaluate", run],
        "has no option `--test_flie`. Did you mean `--test_file`?": ["evaluate", run, "--test_flie", "x.csv"],
        "`--bad_rows`": ["predict", run, "--bad_rows", "ignore"],
    }
    for expected, argv in cases.items():
        assert expected in cli_error(capsys, argv), argv
        assert snapshot(tmp_path) == before and _own_files(finished) == own, argv
    assert not (finished / "eval" / "kind").exists() and not (finished / "eval" / "unseen").exists()
    assert main(["predict", "--help"]) == 0 and "--top_k" in capsys.readouterr().out
