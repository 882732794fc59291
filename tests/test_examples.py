"""The examples do what they say: hftl's plan in a stock Trainer, in an accelerate loop (also on 2
processes) and on a plain torchvision-style ResNet with a user's group rule."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from helpers import launch_script

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))


def _group_lrs(optimizer) -> dict[str, tuple[float, float]]:
    return {g["name"]: (g["lr"], g.get("initial_lr", g["lr"])) for g in optimizer.param_groups}


def test_trainer_example_freezes_plans_lrs_and_warms_the_head_up(tmp_path):
    import trainer_phases

    from transformers import TrainerCallback

    class LrRecorder(TrainerCallback):  # the optimizer's own lrs, after the scheduler's first steps
        seen: dict = {}

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            if state.global_step == 4:
                LrRecorder.seen = _group_lrs(optimizer)

    out = trainer_phases.main(["--out", str(tmp_path), "--epochs", "3"], callbacks=[LrRecorder()])
    plan, phases, model = out["plan"], out["phases"], out["model"]
    from transformers import AutoModelForSequenceClassification

    start = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tiny-bert", num_labels=2)
    before, after = dict(start.named_parameters()), dict(model.named_parameters())
    frozen = [n for n in after if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)  # bit-identical
    assert not torch.equal(after["bert.encoder.layer.1.output.dense.weight"], before["bert.encoder.layer.1.output.dense.weight"])
    # every optimizer group starts at the planned lr and the scheduler scaled them all alike
    lrs = LrRecorder.seen
    planned = {a.group: a.lr for a in plan.assignment.values()}
    assert {g: initial for g, (_, initial) in lrs.items()} == pytest.approx(planned)
    assert planned["layer.1"] == pytest.approx(1e-3) and planned["head"] == pytest.approx(1e-2)
    assert planned["layer.0"] == pytest.approx(8e-4) and planned["embeddings"] == pytest.approx(6.4e-4)
    ratios = {g: now / initial for g, (now, initial) in lrs.items()}
    assert len({round(r, 9) for r in ratios.values()}) == 1  # one schedule factor for every group
    assert 0 < next(iter(ratios.values())) < 1  # step 4 of 24, after 2 warmup steps: the linear decay moved them
    # LP-FT: the head alone in epoch 0, block 1 joins at epoch 1
    assert [(h["epoch"], h["groups"]) for h in phases.history] == [(0.0, ["head"]), (1.0, ["layer.1", "head"])]


def test_accelerate_example_unfreezes_one_group_per_epoch(tmp_path):
    import accelerate_loop

    out = accelerate_loop.main(["--out", str(tmp_path), "--epochs", "4"])
    history = [(h["epoch"], h["new"]) for h in out["phases"].history]
    assert history == [(0.0, ["head"]), (1.0, ["layer.1"]), (2.0, ["layer.0"]), (3.0, ["embeddings"])]
    lrs = _group_lrs(out["optimizer"])  # planned initial lrs, scaled alike by the scheduler
    assert lrs["embeddings"][1] == pytest.approx(1e-3 * 0.8**2) and lrs["head"][1] == pytest.approx(1e-2)
    assert len({round(now / initial, 9) for now, initial in lrs.values()}) == 1
    record = json.loads((tmp_path / "rank-0.json").read_text())
    assert record["phases"] == out["phases"].history
    # a group does not move before its epoch: embeddings wait until epoch 3, block 0 until epoch 2
    start = {n: v for n, v in record["per_epoch"][0].items() if n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    for epoch in (1,):  # after epochs 0 and 1 both still wait
        assert {n: record["per_epoch"][epoch][n] for n in start} == start
    moved = lambda prefix, a, b: any(record["per_epoch"][a][n] != record["per_epoch"][b][n] for n in start if n.startswith(prefix))  # noqa: E731
    assert moved("bert.encoder.layer.0.", 1, 2) and not moved("bert.embeddings.", 1, 2)
    assert moved("bert.embeddings.", 2, 3)


@pytest.mark.slow
def test_accelerate_example_keeps_two_ranks_equal(tmp_path):
    """Real 2-process DDP over gloo: both ranks end with the same weights after three phase changes."""
    proc = launch_script(EXAMPLES / "accelerate_loop.py", tmp_path, "--out", str(tmp_path / "out"), "--epochs", "4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank-{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["phases"] == ranks[1]["phases"] and len(ranks[0]["phases"]) == 4
    for epoch, (mine, theirs) in enumerate(zip(ranks[0]["per_epoch"], ranks[1]["per_epoch"])):  # every phase
        for name, value in mine.items():
            assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-9) for a, b in zip(value, theirs[name])), (epoch, name)


def test_resnet_example_trains_layer4_and_the_head_and_keeps_frozen_batchnorm_statistics():
    import resnet_guide

    torch.manual_seed(0)
    reference = resnet_guide.ResNet()
    reference.fc = torch.nn.Linear(reference.fc.in_features, 4)
    out = resnet_guide.main(steps=20, seed=0)
    model, optimizer = out["model"], out["optimizer"]
    start = reference.state_dict()
    for name, value in model.state_dict().items():
        trains = name.startswith(("layer4.", "fc."))
        moved = not torch.equal(value, start[name])
        if name.endswith("num_batches_tracked"):
            assert int(value) == (20 if name.startswith("layer4.") else 0), name
        elif trains and not name.endswith(("running_mean", "running_var")) or name.startswith("layer4.") and "running" in name:
            assert moved, f"{name} should train"
        else:
            assert not moved, f"{name} should stay as pre-trained (frozen, BatchNorm statistics included)"
    lrs = _group_lrs(optimizer)
    assert lrs["layer4"][0] == pytest.approx(1e-4) and lrs["head"][0] == pytest.approx(1e-2)
    assert lrs["head/no_decay"][0] == pytest.approx(1e-2) and {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 1e-4}
    assert {r.group: r.status for r in out["plan"].rows} == {
        "stem": "frozen", "layer1": "frozen", "layer2": "frozen", "layer3": "frozen", "layer4": "trainable",
        "head": "trainable"}
