"""Optimizer parameter groups with layer-wise learning rates baked in.

Each layer group becomes up to two optimizer groups (with and without weight decay) whose `lr`
is the final learning rate: the Trainer's schedulers (LambdaLR) multiply each group's initial lr,
so a scale stored anywhere else would be lost. Frozen parameters are in the optimizer too: they
have no gradient, so AdamW skips them, and a later phase can unfreeze them without a new
optimizer (DESIGN rule 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hftl.engine.layers import LayerGroup, backbone_size
from hftl.errors import HftlError

# Parameters that are positions or special tokens, not weights to shrink toward zero.
NO_DECAY_NAMES = frozenset(
    {
        "position_embeddings",
        "position_embedding",
        "rel_embeddings",
        "cls_token",
        "mask_token",
        "register_tokens",
        "distillation_token",
        "logit_scale",
        "logit_bias",  # SigLIP's sigmoid-loss bias
        "probe",  # SigLIP's attention-pooling query: a learned token
    }
)


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm scales (ndim <= 1) and named position/token embeddings get no weight decay."""
    return param.ndim <= 1 or any(part in NO_DECAY_NAMES for part in name.split("."))


@dataclass(frozen=True)
class Assignment:
    group: str  # optimizer group name, e.g. "layer.5" or "layer.5/no_decay"
    lr: float
    weight_decay: float


def group_lrs(groups: list[LayerGroup], learning_rate: float, layer_decay: float, head_lr: float | None):
    """lr per layer group: learning_rate * layer_decay**distance from the top block; head_lr for the head."""
    n = backbone_size(groups)
    lrs = {}
    for index, group in enumerate(groups):
        if group.is_head:
            lrs[group.name] = learning_rate if head_lr is None else head_lr
        else:
            lrs[group.name] = learning_rate * layer_decay ** (n - 1 - index)
    return lrs


def assign(groups: list[LayerGroup], lrs: dict[str, float], weight_decay: float) -> dict[str, Assignment]:
    """{parameter name: Assignment}, each parameter exactly once."""
    out: dict[str, Assignment] = {}
    for group in groups:
        for name, param in group.params:
            if name in out:
                raise AssertionError(f"parameter {name} is in two layer groups")
            if no_decay(name, param):
                out[name] = Assignment(f"{group.name}/no_decay", lrs[group.name], 0.0)
            else:
                out[name] = Assignment(group.name, lrs[group.name], weight_decay)
    return out


WRAPPERS = frozenset({"module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def clean_name(name: str) -> str:
    """Parameter name without the wrappers DDP/FSDP/compile/checkpointing put in front."""
    name = name.removeprefix("base_model.model.")  # peft's wrapper around the task model
    parts = name.split(".")
    return ".".join(p for p in parts if p not in WRAPPERS or p == parts[-1])


def param_groups(model: nn.Module, assignment: dict[str, Assignment]) -> list[dict]:
    """Optimizer groups for `model` (possibly wrapped); asserts every parameter lands in one group."""
    by_group: dict[str, dict] = {}
    seen = set()
    unknown = [clean_name(n) for n, _ in model.named_parameters() if clean_name(n) not in assignment]
    if unknown:
        raise HftlError(
            f"{len(unknown)} parameter(s) of `{type(model).__name__}` are not in the plan: {', '.join(unknown[:5])}"
            f"{' ...' if len(unknown) > 5 else ''}. Build the plan from this model (after adding any new module)."
        )
    for raw_name, param in model.named_parameters():
        name = clean_name(raw_name)
        if id(param) in seen:
            raise AssertionError(f"parameter {name} appears twice")
        seen.add(id(param))
        a = assignment[name]
        entry = by_group.setdefault(a.group, {"params": [], "lr": a.lr, "weight_decay": a.weight_decay, "name": a.group})
        entry["params"].append(param)
    check_coverage(model, list(by_group.values()))
    return list(by_group.values())


def check_coverage(model: nn.Module, groups: list[dict]) -> None:
    """Every parameter of the model is in exactly one optimizer group."""
    counts: dict[int, int] = {}
    for group in groups:
        for param in group["params"]:
            counts[id(param)] = counts.get(id(param), 0) + 1
    for name, param in model.named_parameters():
        n = counts.get(id(param), 0)
        if n != 1:
            raise AssertionError(f"parameter {name} is in {n} optimizer groups, expected exactly 1")
    if len(counts) != len({id(p) for p in model.parameters()}):
        raise AssertionError("optimizer groups hold tensors that are not parameters of the model")


def prime_state(optimizer, model_params: set[int] | None = None) -> int:
    """Give every parameter that requires grad but has no optimizer state yet the state its first step would
    create, so each checkpoint holds an entry for every such parameter. FSDP2's state dicts
    (torch.distributed.checkpoint, and accelerate's FSDP loaders built on it) refuse to load a checkpoint that
    lacks one, which is what a group waiting for its phase leaves behind. Exact for torch's Adam family with
    decoupled (or no) weight decay: a zero-gradient step at lr 0, then the step counter set back to 0, gives
    the zero moments and counter of a lazy first step, and moves no weight. Other optimizers, and optimizers
    over tensors other than `model_params` (ids; DeepSpeed's flat partitions), are left alone. Returns how
    many tensors were primed."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    groups = inner.param_groups
    exact = isinstance(inner, torch.optim.Adam) and all(g.get("decoupled_weight_decay") or not g["weight_decay"] for g in groups)
    mine = model_params is None or all(id(p) in model_params for g in groups for p in g["params"])
    todo = [p for g in groups for p in g["params"] if p.requires_grad and not inner.state.get(p)]
    if not exact or not mine or not todo:
        return 0
    grads = [(p, p.grad) for g in groups for p in g["params"]]
    lrs = [g["lr"] for g in groups]
    try:
        for p, _ in grads:
            p.grad = None
        for p in todo:
            p.grad = torch.zeros_like(p)
        for g in groups:
            g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], torch.Tensor) else 0.0
        inner.step()
    finally:
        for g, lr in zip(groups, lrs):
            g["lr"] = lr
        for p, grad in grads:
            p.grad = grad
    for p in todo:
        step = inner.state[p]["step"]
        inner.state[p]["step"] = step.zero_() if isinstance(step, torch.Tensor) else 0
    return len(todo)
