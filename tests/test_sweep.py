"""`hftl sweep`: every strategy on the same recipe, a complete table that survives a failing strategy,
and a sweep folder that is resumed or refused, never overwritten."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import write_recipe
from helpers import launch
from hftl.commands import sweep
from hftl.cli import main
from hftl.errors import HftlError


def _sweep(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["sweep", *[str(a) for a in args]])
    return rc, out.getvalue(), err.getvalue()


def _recipe(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path) -> Path:
    return write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        test_file=str(sentiment_csv / "test.csv"), output_dir=str(tmp_path / "run"), learning_rate=3e-3,
        head_lr=3e-3, num_train_epochs=2, unfrozen_groups=1, seed=0,
    )


def _accuracy_and_f1(model_dir: Path, csv_path: Path) -> tuple[float, float]:
    """(accuracy, macro-F1) of a saved classifier on a CSV, predicted in this process and counted by hand."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    gold = [model.config.label2id[r["label"]] for r in rows]
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    f1 = []
    for c in range(model.config.num_labels):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        wrong = sum((p == c) != (g == c) for p, g in zip(predicted, gold))  # false positives and false negatives
        f1.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold), sum(f1) / len(f1)


def test_strategy_names_are_checked():
    assert sweep.parse_strategies(None) == sweep.DEFAULT
    assert sweep.parse_strategies("full, scratch") == ("full", "scratch")
    with pytest.raises(HftlError, match="Did you mean `partial`"):
        sweep.parse_strategies("full,partal")
    with pytest.raises(HftlError, match="each strategy once"):
        sweep.parse_strategies("full,full")


def test_unknown_strategy_exits_2_before_anything_is_written(tmp_path, tiny_bert, sentiment_csv):
    recipe = _recipe(tmp_path, tiny_bert, sentiment_csv)
    rc, _, err = _sweep(recipe, "--strategies", "full,finetune")
    assert rc == 2 and "Unknown strategy `finetune`" in err and "scratch" in err
    assert not (tmp_path / "run-sweep").exists()


def test_launcher_prefixes_every_strategy_command():
    command = sweep._command("r.yaml", ["--seed", "1"], "accelerate launch --num_processes 2")
    assert command == ["accelerate", "launch", "--num_processes", "2", "-m", "hftl", "train", "r.yaml", "--seed", "1"]
    assert sweep._command("r.yaml", [], None)[:4] == [sys.executable, "-m", "hftl", "train"]


def test_scratch_is_full_from_random_weights_and_nothing_pushes(tmp_path):
    words = sweep.strategy_overrides("scratch", tmp_path)
    assert words[words.index("--strategy") + 1] == "full" and words[words.index("--from_scratch") + 1] == "true"
    assert words[words.index("--push_to_hub") + 1] == "false"
    assert sweep.strategy_overrides("lora", tmp_path)[-3:] == ["lora", "--from_scratch", "false"]


@pytest.mark.slow
def test_sweep_writes_a_complete_table_survives_a_failure_and_resumes(tmp_path, tiny_bert, sentiment_csv):
    recipe = _recipe(tmp_path, tiny_bert, sentiment_csv)
    # LoRA targets that match nothing: the lora strategy fails, the others never read the key
    args = [recipe, "--strategies", "feature_extraction,lora,scratch", "--lora_target_modules", "nope"]
    rc, out, err = _sweep(*args)
    assert rc == 0, err[-3000:]
    folder = tmp_path / "run-sweep"
    rows = {r["strategy"]: r for r in csv.DictReader(open(folder / "sweep.csv"))}
    assert list(rows) == ["feature_extraction", "lora", "scratch"]
    assert rows["lora"]["status"] == "failed" and "match no linear or convolution layer" in rows["lora"]["error"]
    for name in ("feature_extraction", "scratch"):
        row = rows[name]
        assert row["status"] == "ok"
        accuracy, f1 = _accuracy_and_f1(folder / name, sentiment_csv / "test.csv")  # the saved model, on the test split
        assert float(row["accuracy"]) == pytest.approx(accuracy) and float(row["f1"]) == pytest.approx(f1), name
        assert float(row["wall_s"]) > 0 and float(row["peak_memory_mb"]) > 0
        assert (folder / name / "model.safetensors").is_file()
    results = {n: json.loads((folder / n / "all_results.json").read_text()) for n in ("feature_extraction", "scratch")}
    assert int(rows["scratch"]["trainable_params"]) > int(rows["feature_extraction"]["trainable_params"])
    assert int(rows["feature_extraction"]["trainable_params"]) == results["feature_extraction"]["trainable_params"]
    assert float(rows["scratch"]["accuracy"]) == pytest.approx(results["scratch"]["test_accuracy"])
    # every weight trains, 2 epochs on the learnable sentiment words: far above chance (0.5); a frozen random tiny
    # BERT under feature_extraction stays at chance, so only scratch has a bound
    assert float(rows["scratch"]["accuracy"]) >= 0.8 and float(rows["scratch"]["f1"]) >= 0.8
    table = (folder / "sweep.md").read_text()
    assert "| lora | failed: " in table and "| scratch | " in table and "macro-F1" in table
    assert (folder / "sweep.png").stat().st_size > 10_000
    assert (folder / "logs" / "lora.log").is_file()
    console = (folder / "logs" / "feature_extraction.log").read_text()  # a real `hftl train` process's output
    assert "hftl: initialised at random (not in the checkpoint): classifier (2 tensors)." in console
    assert "LOAD REPORT" not in console and "Traceback" not in console

    # a second sweep into the same folder is refused, and nothing is touched
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    rc, _, err = _sweep(*args)
    assert rc == 2 and "holds a previous sweep" in err and "--resume" in err
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before
    # resuming with other overrides would mix budgets: refused
    rc, _, err = _sweep(*args, "--num_train_epochs", "3", "--resume")
    assert rc == 2 and "different overrides" in err and "mix budgets" in err
    # resuming keeps the finished strategies and runs the rest (lora fails again, the same way)
    rc, out, err = _sweep(*args, "--resume")
    assert rc == 0, err[-3000:]
    assert "feature_extraction finished in an earlier run; kept" in out and "scratch finished in an earlier run" in out
    assert (folder / "feature_extraction" / "all_results.json").stat().st_mtime_ns == before[
        folder / "feature_extraction" / "all_results.json"]
    state = json.loads((folder / "sweep.json").read_text())
    assert state["results"]["lora"]["status"] == "failed" and state["results"]["scratch"]["status"] == "ok"


@pytest.mark.slow
def test_sweep_under_a_two_process_launch_runs_in_process(tmp_path, tiny_bert, sentiment_csv):
    recipe = _recipe(tmp_path, tiny_bert, sentiment_csv)
    result = launch(recipe, tmp_path, "--strategies", "feature_extraction,partial", command="sweep", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["strategy"]: r for r in csv.DictReader(open(tmp_path / "run-sweep" / "sweep.csv"))}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    assert "In-process sweep" in (tmp_path / "run-sweep" / "sweep.md").read_text()
    assert not (tmp_path / "run-sweep" / "logs").exists()  # no child processes were started


def test_tokens_move_to_the_environment_never_to_the_state_or_the_commands(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    words = ["--learning_rate", "1e-4", "--hub_token", "hf_secret", "--seed", "3"]
    assert sweep._move_tokens(words) == ["--learning_rate", "1e-4", "--seed", "3"]
    assert os.environ["HF_TOKEN"] == "hf_secret"
    assert sweep._move_tokens(["--hub_token=hf_other"]) == [] and os.environ["HF_TOKEN"] == "hf_other"


def test_a_failed_row_with_a_pipe_keeps_the_table_whole(tmp_path):
    base = SimpleNamespace(training=SimpleNamespace(num_train_epochs=1, per_device_train_batch_size=8),
                           model=SimpleNamespace(model_name_or_path="m"), data=SimpleNamespace(dataset="d", train_file=None))
    row = sweep._row("partial", 2, "freeze pattern `a|b` matches nothing", tmp_path / "none", 3.0)
    line = next(x for x in sweep.markdown([row], base).splitlines() if x.startswith("| partial"))
    assert "`a\\|b`" in line
    assert len(re.split(r"(?<!\\)\|", line)) == 9  # 7 columns: 8 unescaped pipes


def test_a_sweep_killed_in_its_first_strategy_resumes(tmp_path, tiny_bert, sentiment_csv, monkeypatch):
    recipe = _recipe(tmp_path, tiny_bert, sentiment_csv)

    def killed(command, log):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("partial output")
        raise KeyboardInterrupt  # Ctrl-C while the first strategy trains

    monkeypatch.setattr(sweep, "_run_process", killed)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(str(recipe), [], sweep.Options(strategies=("feature_extraction",)))
    state = json.loads((tmp_path / "run-sweep" / "sweep.json").read_text())
    assert state["results"] == {}
    monkeypatch.setattr(sweep, "_run_process", lambda command, log: (3, "boom"))
    rows = sweep.run(str(recipe), [], sweep.Options(strategies=("feature_extraction",), resume=True))
    assert rows[0]["status"] == "failed" and rows[0]["error"] == "boom"


def test_clip_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("image,caption\n")  # never read: the task is refused first
    recipe = write_recipe(tmp_path / "clip.yaml", task="clip", model_name_or_path="x", train_file=str(tmp_path / "t.csv"))
    rc, _, err = _sweep(recipe)
    assert rc == 2 and "compares classification strategies" in err
