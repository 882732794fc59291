"""hftl's engine under FSDP2 (`torch.distributed.fsdp.fully_shard`) on 2 CPU processes over gloo.

    torchrun --nproc_per_node 2 tests/fsdp_check.py OUT_DIR      # tests/test_fsdp.py runs it

One launch, every check: a tiny BERT (built from a config) gets hftl's layer-group plan, a partial
freeze plan with a `freeze` pattern inside a block that trains (frozen and trainable tensors in one
sharded unit), layer-wise lrs, and gradual unfreezing across two phase boundaries; then LoRA
adapters (peft) in a frozen backbone. Each is trained sharded for a few steps and compared with a
single-process reference on the same global batch: the gathered full state dict must match within
ATOL, frozen tensors must be bit-identical to the start, and a run checkpointed mid-phase (DCP)
and resumed into fresh objects must end bit-identical to the uninterrupted run. Rank 0 writes
OUT_DIR/fsdp_report.json; a failed check raises on every rank.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, init_device_mesh
from transformers import BertConfig, BertForSequenceClassification

import hftl
from hftl.engine import lora
from hftl.engine.optim import clean_name

ATOL = 5e-5  # fp32; the sharded run reduces gradients in another order than the single process (measured: 5e-6)
STEPS, STEPS_PER_EPOCH, RESUME_AT = 6, 2, 3  # 3 "epochs" of 2 steps: phases at 0, 1, 2; the checkpoint is mid phase 1
GLOBAL_BATCH, SEQ = 8, 12
FREEZE = (r"layer\.2\.attention\.self\.query\.",)  # inside block 2, which trains: a mixed sharded unit


@dataclass(frozen=True)
class Case:
    name: str
    strategy: str
    unfreeze_every: float = 0
    freeze: tuple[str, ...] = ()


CASES = (Case("partial+freeze+gradual", "partial", unfreeze_every=1, freeze=FREEZE), Case("lora", "lora"))


def tiny_model() -> torch.nn.Module:
    """The same weights on every rank and in the reference: seeded, no dropout (runs must be comparable)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(config)


def batches() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(5, 64, (GLOBAL_BATCH, SEQ), generator=g),
             "labels": torch.randint(0, 2, (GLOBAL_BATCH,), generator=g)} for _ in range(STEPS)]


def build(case: Case, shard: bool):
    """Model, plan, phases and optimizer for `case`; with `shard`, every block and the root are fully_shard units
    before the optimizer is built (FSDP2 replaces the parameters with DTensors)."""
    model = tiny_model()
    plan = hftl.TransferPlan.build(model, strategy=case.strategy, unfrozen_groups=2, learning_rate=1e-2,
                                   layer_decay=0.5, head_lr=2e-2, weight_decay=0.01, freeze=case.freeze)
    plan.apply()
    if case.strategy == "lora":
        model = lora.wrap(model, plan.groups, lora.LoraSpec(r=4, alpha=8, dropout=0.0, task_type="SEQ_CLS"))
        plan = plan.with_adapters(model)
        plan.apply()
    if shard:
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in _base(model).bert.encoder.layer:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
    phases = hftl.Phases(plan, unfreeze_every=case.unfreeze_every)
    optimizer = plan.optimizer(torch.optim.AdamW)
    if shard:  # the reference is a plain loop, without: priming must change no number
        phases.prime(optimizer)
    return model, plan, phases, optimizer


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def train(case: Case, shard: bool, start: int = 0, stop: int = STEPS, state=None, checkpoint: str | None = None):
    """Steps [start, stop) on the global batches (each rank takes its half when sharded); with `checkpoint`,
    state is loaded from that DCP folder first."""
    model, plan, phases, optimizer = state or build(case, shard)
    if checkpoint is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint)
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    rank, world = (dist.get_rank(), dist.get_world_size()) if shard else (0, 1)
    model.train()
    for step, batch in enumerate(batches()[start:stop], start):
        phases.on_epoch(step / STEPS_PER_EPOCH)
        part = {k: v.chunk(world)[rank] for k, v in batch.items()}
        model(**part).loss.backward()
        phases.drop_inactive_grads()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    return model, plan, phases, optimizer


def full_state(model) -> dict[str, torch.Tensor]:
    """The gathered full state dict under hftl's clean names (every rank gets it)."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    else:
        sd = model.state_dict()
    return {clean_name(k): v.detach().clone() for k, v in sd.items()}


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(f"rank {dist.get_rank()}: {what}")


def run_case(case: Case, folder: Path) -> dict:
    """Train sharded and single-process, compare, then resume from a mid-phase checkpoint; the case's report."""
    start = full_state(build(case, shard=False)[0])
    reference = full_state(train(case, shard=False)[0])
    model, plan, phases, optimizer = train(case, shard=True)
    got = full_state(model)
    check(set(got) == set(reference), f"{case.name}: state dict keys differ from the reference")
    diff = max(float((got[k] - reference[k]).abs().max()) for k in got)
    check(diff <= ATOL, f"{case.name}: sharded run differs from the single-process reference by {diff:.2e} > {ATOL}")
    trains = check_tensors(case, model, optimizer, start, got)
    resumed = resume(case, folder / case.name)
    same = all(torch.equal(resumed[k], got[k]) for k in got)
    check(same, f"{case.name}: the run resumed from the mid-phase checkpoint differs from the uninterrupted run")
    block = [t for n, t in trains.items() if ".layer.2." in n]  # one fully_shard unit
    return {"case": case.name, "max_abs_diff_vs_reference": diff, "resumed_bit_identical": same,
            "frozen_tensors": sum(not t for t in trains.values()), "trainable_tensors": sum(trains.values()),
            "mixed_unit": {"frozen": block.count(False), "trainable": block.count(True)},
            "phases": [h["groups"] for h in phases.history], "optimizer_groups": [g["name"] for g in optimizer.param_groups],
            "lrs": {g["name"]: g["lr"] for g in optimizer.param_groups}}


def check_tensors(case: Case, model, optimizer, start: dict, got: dict) -> dict[str, bool]:
    """Sharded parameters, the optimizer over exactly them, frozen tensors bit-identical, trained ones moved.
    Returns {clean name: requires_grad}."""
    params = {clean_name(n): p for n, p in model.named_parameters()}
    check(all(isinstance(p, DTensor) for p in params.values()), f"{case.name}: parameters are not sharded")
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    check(in_optimizer == {id(p) for p in params.values()}, f"{case.name}: optimizer groups hold other tensors than the model")
    moved = [n for n, p in params.items() if not p.requires_grad and not torch.equal(got[n], start[n])]
    check(not moved, f"{case.name}: frozen tensors moved: {moved[:3]}")
    still = [n for n, p in params.items() if p.requires_grad and torch.equal(got[n], start[n])]
    check(not still, f"{case.name}: trainable tensors did not move: {still[:3]}")
    return {n: p.requires_grad for n, p in params.items()}


def resume(case: Case, folder: Path) -> dict[str, torch.Tensor]:
    """Train to RESUME_AT (mid-phase), save with DCP, then continue in fresh objects from the checkpoint."""
    model, _, _, optimizer = train(case, shard=True, stop=RESUME_AT)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))
    dist.barrier()
    return full_state(train(case, shard=True, start=RESUME_AT, checkpoint=str(folder))[0])


def main(out: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    folder = Path(out)
    report = [run_case(case, folder) for case in CASES]
    if dist.get_rank() == 0:
        (folder / "fsdp_report.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1])
