"""What a run sends out and prints: the files `push_to_hub` uploads (huggingface_hub's commit API
intercepted, no network), the per-layer-group lr series TensorBoard receives, and a console without
lines a user cannot act on. One tiny run (6 steps) serves all three."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import pytest

from conftest import write_recipe
from hftl.cli import main

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken0123"
MODEL_FILES = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"}
HFTL_FILES = {"README.md", "hftl_config.yaml", "plan.md", "plan.csv", "plan.png", "curves.png", "per_class.csv",
              "confusion_matrix.png", "all_results.json"}
TRAINER_FILES = {"trainer_state.json", "training_args.bin"}  # what the Trainer itself adds to every push


class Hub:
    """Stands in for the Hub behind huggingface_hub's own `upload_folder`: its file selection runs for real,
    `create_repo` and `create_commit` (the calls that would reach the network) are recorded instead."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.repos, self.commits = [], []
        monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)  # one create_commit per upload
        monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, *a, **k: None)  # the card's YAML check is a request
        monkeypatch.setattr(HfApi, "create_repo", lambda api, *a, **k: self._create_repo(*a, **k))
        monkeypatch.setattr(HfApi, "create_commit", lambda api, *a, **k: self._create_commit(*a, **k))
        # hftl asks the Hub before training (engine/preflight.check_hub): online, and a token it accepts
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setattr("huggingface_hub.whoami", lambda *a, **k: {"name": "someone"})

    def _create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def _create_commit(self, repo_id, operations, commit_message=None, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
        self.commits.append({"repo": repo_id, "message": commit_message, "files": files, "token": kwargs.get("token")})


def _train(tmp_path: Path, tiny_bert, sentiment_csv, monkeypatch, **values):
    """A tiny run that pushes; (Hub, output folder, stdout + stderr, transformers' log records, warnings)."""
    out = tmp_path / "run"
    base = dict(
        model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        test_file=str(sentiment_csv / "test.csv"), output_dir=str(out), push_to_hub=True, hub_model_id="someone/tiny",
        save_strategy="steps", save_steps=3, max_train_samples=40,
    )
    recipe = write_recipe(tmp_path / "recipe.yaml", **{**base, **values})
    hub = Hub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "placeholder")  # restored after the test: hftl moves the token here
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    buffer = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buffer), \
                contextlib.redirect_stderr(buffer):
            warnings.simplefilter("always")
            rc = main(["train", str(recipe), "--hub_token", FAKE_TOKEN])
    finally:
        library.removeHandler(handler)
    assert rc == 0, buffer.getvalue()[-3000:]
    return hub, out, buffer.getvalue(), records, caught


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_bert, sentiment_csv):
    """Full fine-tuning, layer_decay 0.5, LP-FT (the head alone for the first epoch), TensorBoard on, a
    checkpoint every 3 steps, pushed at the end; `use_cpu: false`, so only hftl's pin-memory default keeps torch
    from warning on this CPU machine."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _train(tmp_path_factory.mktemp("push"), tiny_bert, sentiment_csv, monkeypatch, strategy="full",
                     layer_decay=0.5, learning_rate=1e-3, head_lr=1e-2, head_warmup_epochs=1, num_train_epochs=2,
                     logging_steps=1, report_to=["tensorboard"], use_cpu=False)


def test_push_uploads_the_model_processor_card_pictures_and_recipe_but_no_checkpoint(pushed):
    hub, out, *_ = pushed
    assert hub.repos == ["someone/tiny"]
    final = hub.commits[-1]
    assert final["message"] == "End of training" and final["repo"] == "someone/tiny"
    uploaded = set(final["files"])
    logs = {name for name in uploaded if name.startswith("runs/")}  # TensorBoard's events: the Hub shows them
    assert logs and all("/events.out.tfevents." in name for name in logs)
    assert uploaded - logs == MODEL_FILES | HFTL_FILES | TRAINER_FILES
    assert (out / "checkpoint-3").is_dir() and (out / "checkpoint-6").is_dir()  # on disk, never uploaded:
    assert len(hub.commits) >= 2  # a push per save (hub_strategy every_save, skipped while one runs) and the final
    for commit in hub.commits:
        assert not [name for name in commit["files"] if "checkpoint" in name]
    card = final["files"]["README.md"].decode()
    assert "![Training loss and validation metrics per step](curves.png)" in card and "model-index" in card


def test_the_token_is_in_no_uploaded_file_and_no_file_of_the_run(pushed):
    hub, out, *_ = pushed
    assert os.environ["HF_TOKEN"] == FAKE_TOKEN  # huggingface_hub reads it from there
    secret = FAKE_TOKEN.encode()
    for commit in hub.commits:
        assert commit["token"] is None  # never passed around in the Trainer's arguments
        assert [name for name, data in commit["files"].items() if secret in data] == []
    assert [str(p) for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()] == []


def test_checkpoints_are_uploaded_when_hub_strategy_asks(tmp_path, tiny_bert, sentiment_csv, monkeypatch):
    hub, out, *_ = _train(tmp_path, tiny_bert, sentiment_csv, monkeypatch, max_steps=1, save_steps=1,
                          hub_strategy="checkpoint")
    names = {name for commit in hub.commits for name in commit["files"]}
    assert "last-checkpoint/model.safetensors" in names and "last-checkpoint/trainer_state.json" in names
    assert not [name for name in names if name.startswith("checkpoint-")]
    assert "model.safetensors" in hub.commits[-1]["files"]


def _scalars(out: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for events in sorted(out.glob("runs/*/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return series


def test_tensorboard_gets_one_lr_series_per_layer_group_with_the_plan_in_it(pushed):
    _, out, *_ = pushed
    series = _scalars(out)
    groups = {tag.removeprefix("train/lr/"): values for tag, values in series.items() if tag.startswith("train/lr/")}
    assert set(groups) == {"embeddings", "layer.0", "layer.1", "head"}
    steps = sorted(groups["head"])
    assert steps == [1, 2, 3, 4, 5, 6]  # 36 training examples, batch 16: 3 steps per epoch
    for step in steps:
        head, top, below, bottom = (groups[g][step] for g in ("head", "layer.1", "layer.0", "embeddings"))
        if step <= 3:  # phase 0 (LP-FT): the head alone trains, the waiting groups log 0
            assert head > 0 and top == below == bottom == 0
        else:  # layer_decay 0.5 per group below the top block, head_lr = 10 x learning_rate
            assert below == pytest.approx(0.5 * top) and bottom == pytest.approx(0.25 * top)
            assert head == pytest.approx(10 * top)
            assert bottom == pytest.approx(series["train/learning_rate"][step])  # the Trainer's: its first group's
    assert groups["head"][4] < groups["head"][1]  # the schedule (linear decay) scales every group alike


def test_the_console_has_no_load_report_and_no_pin_memory_warning(pushed):
    _, _, console, records, caught = pushed
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]
    assert "hftl: initialised at random (not in the checkpoint): classifier (2 tensors)." in console
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    assert "lr/" not in console  # the per-group series go to the trackers, not into the console's log lines
    assert "'loss'" in console and "***** final metrics *****" in console  # the Trainer's own lines stay


def test_without_an_accelerator_a_recipe_runs_on_cpu_without_pinned_memory(tmp_path, tiny_bert):
    """use_cpu makes `accelerate launch` on CPUs a real DDP run (without it each rank trains alone)."""
    import torch

    from hftl.config import load_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {tiny_bert}\ntrain_file: t.csv\n")
    accelerator = torch.accelerator.is_available()
    args = load_config(str(recipe), check_paths=False).training
    assert args.use_cpu is (not accelerator) and args.dataloader_pin_memory is accelerator
    kept = load_config(str(recipe), ["--use_cpu", "false", "--dataloader_pin_memory", "true"], check_paths=False).training
    assert kept.use_cpu is False and kept.dataloader_pin_memory is True  # a recipe's own choice wins


def test_a_failing_load_still_shows_transformers_report():
    from hftl.tasks.checkpoints import _held_load_report, loading_summary

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(handler)
    try:
        with _held_load_report():
            logger.warning("Model LOAD REPORT from: here")
        assert records == []
        with pytest.raises(RuntimeError), _held_load_report():
            logger.warning("Model LOAD REPORT from: there")
            raise RuntimeError("size mismatch")
        assert [r.getMessage() for r in records] == ["Model LOAD REPORT from: there"]
    finally:
        logger.removeHandler(handler)
    summary = loading_summary({"missing_keys": {"classifier.weight", "classifier.bias"},
                               "unexpected_keys": {"cls.predictions.bias"},
                               "mismatched_keys": {("score.weight", (3, 8), (2, 8))}})
    assert summary == ("initialised at random (not in the checkpoint): classifier (2 tensors); replaced by new weights "
                       "(the checkpoint's have another shape): score (1 tensor); checkpoint weights this model does not "
                       "use: cls.predictions (1 tensor).")
