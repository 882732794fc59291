"""Phases: LP-FT and gradual unfreezing, under one process, under 2-process DDP, and across a
real SIGKILL and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, TrainerCallback

from conftest import make_tiny_model, sentiment_rows, write_csv, write_recipe
from helpers import launch
from hftl.commands import train as run
from hftl.cli import main
from hftl.config import load_config
from hftl.errors import HftlError
from hftl.engine.layers import LayerGroup
from hftl.engine.phases import Phase, phase_at, schedule

KEYS = {  # one tensor per group of the tiny 3-block BERT
    "embeddings": "embeddings.word_embeddings.weight",
    "layer.0": "encoder.layer.0.output.dense.weight",
    "layer.1": "encoder.layer.1.output.dense.weight",
    "layer.2": "encoder.layer.2.output.dense.weight",
}


def _groups(names):
    return [LayerGroup(n, [(n, None)]) for n in names]


def test_schedules():
    groups = _groups(["embeddings", "layer.0", "layer.1", "head"])
    trains = {g.name: True for g in groups}
    assert schedule(groups, trains, 0, 0) == [Phase(0.0, ("embeddings", "layer.0", "layer.1", "head"))]
    lpft = schedule(groups, trains, 2, 0)
    assert lpft == [Phase(0.0, ("head",)), Phase(2.0, ("embeddings", "layer.0", "layer.1", "head"))]
    assert [phase_at(lpft, e) for e in (0, 1.99, 2.0, 5)] == [0, 0, 1, 1]
    gradual = schedule(groups, trains, 1, 0.5)
    assert [p.start_epoch for p in gradual] == [0.0, 1.0, 1.5, 2.0]
    assert gradual[1].groups == ("layer.1", "head") and gradual[2].groups == ("layer.0", "layer.1", "head")
    partial = schedule(groups, {**trains, "embeddings": False, "layer.0": False}, 0, 1)
    assert [p.groups for p in partial] == [("head",), ("layer.1", "head")]
    with pytest.raises(HftlError, match="only the head"):
        schedule(groups, {"embeddings": False, "layer.0": False, "layer.1": False, "head": True}, 1, 0)


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases")
    model = make_tiny_model("bert", root / "tiny3", layers=3)
    data = write_csv(root / "train.csv", sentiment_rows(96, seed=1))
    return root, model, data


class _Snapshots(TrainerCallback):
    def __init__(self):
        self.trainer_model = None
        self.epochs: list[dict] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.epochs.append({k: v.detach().clone() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("lpft", [False, True])
def test_each_group_is_unchanged_before_its_phase_and_changes_after(tiny3, tmp_path, lpft):
    root, model, data = tiny3
    phase_keys = ["head_warmup_epochs", 2] if lpft else ["unfreeze_every", 1]
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(data), output_dir=str(tmp_path / "o"),
        strategy="full", num_train_epochs=4 if lpft else 5, learning_rate=3e-3, **{phase_keys[0]: phase_keys[1]},
    )
    snaps = _Snapshots()
    run.train(load_config(str(recipe)), "test", callbacks=[snaps])
    base = AutoModel.from_pretrained(model).state_dict()
    starts = {g: 2 for g in KEYS} if lpft else {"layer.2": 1, "layer.1": 2, "layer.0": 3, "embeddings": 4}
    for epoch, state in enumerate(snaps.epochs, start=1):  # state after `epoch` epochs
        for group, key in KEYS.items():
            unchanged = torch.equal(state[f"bert.{key}"], base[key])
            assert unchanged == (epoch <= starts[group]), (group, epoch)
    assert snaps.epochs[0]["classifier.weight"].abs().sum() > 0


def test_plan_prints_the_phases_and_feature_extraction_has_none(tiny3, tmp_path, capsys):
    root, model, data = tiny3
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(data),
                          output_dir=str(tmp_path / "o"), strategy="partial", unfrozen_groups=2, unfreeze_every=1)
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "phase 1 from epoch 1: +layer.2" in out and "phase 2 from epoch 2: +layer.1" in out
    assert main(["plan", str(recipe), "--strategy", "feature_extraction"]) == 2
    assert "only the head" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_gradual_unfreezing_stays_in_sync(tiny3, tmp_path):
    root, model, data = tiny3
    out = tmp_path / "run"
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(data), output_dir=str(out),
        strategy="partial", unfrozen_groups=2, unfreeze_every=1, num_train_epochs=3, learning_rate=1e-2,
        per_device_train_batch_size=8, ddp_find_unused_parameters=False,
    )
    result = launch(recipe, tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads((out / "replica_check.json").read_text())
    assert check["world_size"] == 2 and check["in_sync"]
    saved, base = load_file(str(out / "model.safetensors")), AutoModel.from_pretrained(model).state_dict()
    for group, key in KEYS.items():  # layer.2 from epoch 1, layer.1 from epoch 2; the rest never
        assert torch.equal(saved[f"bert.{key}"], base[key]) == (group in ("embeddings", "layer.0")), group


def _train_process(recipe: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "hftl", "train", str(recipe), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume_matches_an_uninterrupted_run(tiny3, tmp_path):
    root, model, data = tiny3
    common = dict(model_name_or_path=str(model), train_file=str(data), strategy="full", unfreeze_every=1,
                  num_train_epochs=4, learning_rate=3e-3, save_strategy="steps", save_steps=3, seed=7,
                  per_device_train_batch_size=8)  # 86 rows -> 11 steps per epoch; phases change at 11, 22, 33
    straight = write_recipe(tmp_path / "a.yaml", output_dir=str(tmp_path / "a"), **common)
    proc = _train_process(straight)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]

    killed = write_recipe(tmp_path / "b.yaml", output_dir=str(tmp_path / "b"), **common)
    proc = _train_process(killed)
    deadline = time.time() + 300
    while not (tmp_path / "b" / "checkpoint-27" / "hftl_plan.json").is_file():  # step 27: phase 2 (layer.1)
        assert proc.poll() is None and time.time() < deadline, "run ended before the checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "model.safetensors").exists()  # it really died mid-run
    last = max(int(p.name.split("-")[1]) for p in (tmp_path / "b").glob("checkpoint-*"))
    assert 27 <= last < 44
    proc = _train_process(killed, "--resume_from_checkpoint", "true")
    log = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, log[-3000:]
    assert "phase 3 from epoch 3: +layer.0" in log  # the resumed run goes on with the same sequence
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_resume_with_another_freeze_plan_is_refused(tiny3, tmp_path, capsys):
    root, model, data = tiny3
    out = tmp_path / "o"
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(model), train_file=str(data), output_dir=str(out),
                          strategy="full", unfreeze_every=1, num_train_epochs=1, save_strategy="epoch")
    assert main(["train", str(recipe)]) == 0
    capsys.readouterr()
    rc = main(["train", str(recipe), "--resume_from_checkpoint", "true", "--unfreeze_every", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "another freeze plan" in err and "unfreeze_every: checkpoint 1.0, recipe 2.0" in err
