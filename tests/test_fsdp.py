"""FSDP: hftl's engine under FSDP2 on 2 CPU processes, the shipped accelerate configs, and FSDP1 without
use_orig_params refused before training.

`accelerate launch --use_fsdp` without GPUs gives independent processes, not FSDP, so the slow test drives
hftl's engine under torch's `fully_shard` itself (tests/fsdp_check.py, torchrun over gloo); the accelerate
configs are checked with accelerate's own classes: the config file, the environment `accelerate launch`
exports from it, and the FSDP plugin built from that environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, cli_error, snapshot

CONFIGS = REPO / "recipes" / "accelerate"


def launch_env(config: Path) -> dict[str, str]:
    """The FSDP environment `accelerate launch --config_file CONFIG` gives every rank, from accelerate's own code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, _, _ = _validate_launch_command(args)
    return {k: v for k, v in prepare_multi_gpu_env(args).items() if "FSDP" in k}


@pytest.mark.parametrize("name, version", [("fsdp.yaml", 2), ("fsdp1.yaml", 1)])
def test_fsdp_configs_load_in_accelerate_and_pass_hftls_check(name, version, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin

    from hftl.engine.preflight import check_fsdp, fsdp_settings

    loaded = load_config_from_file(str(CONFIGS / name))  # raises on keys accelerate does not know
    assert loaded.distributed_type.value == "FSDP" and loaded.fsdp_config["fsdp_version"] == version
    env = launch_env(CONFIGS / name)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == str(version)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")  # the plugin refuses it without GPUs; FSDP2 ignores it
    plugin = FullyShardedDataParallelPlugin()  # accelerate reads the launch environment, as on every rank
    assert plugin.fsdp_version == version and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.use_orig_params is (None if version == 2 else True)
    assert [(v, orig) for _, v, orig in fsdp_settings(env, None, None)] == [(version, True)]
    check_fsdp(env, None, None)


def test_fsdp1_without_orig_params_is_refused_from_the_accelerate_config(tmp_path):
    from hftl.engine.preflight import check_fsdp
    from hftl.errors import HftlError

    values = yaml.safe_load((CONFIGS / "fsdp1.yaml").read_text())
    values["fsdp_config"]["fsdp_use_orig_params"] = False
    config = tmp_path / "fsdp1-flat.yaml"
    config.write_text(yaml.safe_dump(values))
    env = launch_env(config)
    assert env["FSDP_USE_ORIG_PARAMS"] == "false"
    with pytest.raises(HftlError, match=r"FSDP1 with use_orig_params false \(the accelerate config's "
                                        r"`fsdp_use_orig_params` \(FSDP_USE_ORIG_PARAMS\)\).*original parameter names"):
        check_fsdp(env, None, None)


@pytest.mark.parametrize("where", ["launch environment", "recipe"])
def test_fsdp1_without_orig_params_stops_the_cli_before_anything_is_written(where, recipe, previous_run, capsys,
                                                                            monkeypatch):
    before = snapshot(previous_run)
    if where == "recipe":
        path = recipe(fsdp="full_shard", fsdp_config={"fsdp_version": 1, "fsdp_use_orig_params": False})
        key = "`fsdp_config.use_orig_params`"
    else:
        path = recipe()
        for name, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "false"}.items():
            monkeypatch.setenv(name, value)
        key = "`fsdp_use_orig_params` (FSDP_USE_ORIG_PARAMS)"
    message = cli_error(capsys, ["train", path, "--overwrite_output_dir", "true"])
    assert key in message and "FlatParameter" in message and "fsdp_version: 2" in message
    assert snapshot(previous_run) == before


@pytest.mark.slow
def test_engine_under_fsdp2_matches_one_process(tmp_path):
    """One torchrun launch: the layer-group plan, a freeze pattern inside a trained block, layer-wise lrs,
    gradual unfreezing over two phase boundaries, LoRA; reference, frozen tensors and a mid-phase resume."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(REPO / "tests" / "fsdp_check.py"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    sys.path.insert(0, str(REPO / "tests"))
    from fsdp_check import ATOL

    report = {case["case"]: case for case in json.loads((tmp_path / "fsdp_report.json").read_text())}
    gradual, lora = report["partial+freeze+gradual"], report["lora"]
    for case in (gradual, lora):
        assert case["max_abs_diff_vs_reference"] <= ATOL and case["resumed_bit_identical"] is True
        assert case["optimizer_groups"][:2] == ["embeddings", "embeddings/no_decay"]  # groups by the original names
    lrs = gradual["lrs"]  # layer-wise: learning_rate 1e-2 at the top block, x0.5 per block down, head 2e-2
    assert (lrs["layer.2"], lrs["layer.1"], lrs["layer.0"], lrs["head"]) == (1e-2, 5e-3, 2.5e-3, 2e-2)
    assert gradual["mixed_unit"] == {"frozen": 2, "trainable": 14}  # query weight and bias frozen inside block 2
    assert [len(groups) for groups in gradual["phases"]] == [1, 2, 3]  # head, + layer.2, + layer.1
    assert lora["trainable_tensors"] == 16  # q/v adapters in 3 blocks (12), pooler and classifier copies (4)
    assert lora["mixed_unit"] == {"frozen": 16, "trainable": 4}  # block 2: frozen weights, its 4 adapter tensors


def test_primed_optimizer_state_changes_no_number(tiny_bert):
    """Priming the waiting groups' AdamW state (what FSDP2 checkpoints need) gives the same weights and state
    as AdamW's own lazy first step, and the Trainer's callback primes it at train begin."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    import hftl

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    runs = []
    for prime in (False, True):
        copy_ = copy.deepcopy(model)
        plan = hftl.TransferPlan.build(copy_, strategy="full", learning_rate=1e-2, weight_decay=0.01)
        plan.apply()
        phases = hftl.Phases(plan, unfreeze_every=1)
        optimizer = plan.optimizer(torch.optim.AdamW)
        if prime:
            assert phases.prime(optimizer) == sum(p.requires_grad for p in copy_.parameters())
            assert phases.prime(optimizer) == 0  # state already there: nothing primed twice
        batch = {"input_ids": torch.randint(5, 20, (4, 8), generator=torch.Generator().manual_seed(0)),
                 "labels": torch.tensor([0, 1, 0, 1])}
        copy_.train()
        torch.manual_seed(1)  # the same dropout in both runs
        for step in range(4):
            phases.on_epoch(step / 2)  # head, then + layer.1
            copy_(**batch).loss.backward()
            phases.drop_inactive_grads()
            optimizer.step()
            optimizer.zero_grad()
        runs.append((copy_, optimizer, phases))
    (plain, plain_opt, _), (primed, primed_opt, phases) = runs
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), primed.state_dict().values()))
    waiting = phases.inactive[0]  # layer.0 still waits: zero state in the primed run, none in the plain one
    assert float(primed_opt.state[waiting]["step"]) == 0 and not primed_opt.state[waiting]["exp_avg"].any()
    for a, b in zip(plain.parameters(), primed.parameters()):
        if plain_opt.state.get(a):
            assert all(torch.equal(plain_opt.state[a][k], primed_opt.state[b][k]) for k in plain_opt.state[a])


def test_the_trainer_primes_the_waiting_groups_at_train_begin(recipe, tmp_path):
    from transformers import TrainerCallback

    from hftl.commands.train import train
    from hftl.config import load_config

    class Seen(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if state.global_step == 0:
                inner = getattr(optimizer, "optimizer", optimizer)
                self.without = [n for n, p in model.named_parameters() if p.requires_grad and not inner.state.get(p)]

    seen = Seen()
    config = load_config(recipe(unfreeze_every=1, max_steps=1, output_dir=str(tmp_path / "out")))
    train(config, "test", callbacks=[seen])
    assert seen.without == []  # every parameter that requires grad has state before the first step
