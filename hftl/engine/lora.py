"""LoRA through peft as a strategy: low-rank adapters in the attention projections, the new head
trained and saved whole (`modules_to_save`), layer-wise lrs applied to the adapters by depth.

The adapters live inside the blocks, so `layers.layer_groups` on the wrapped model puts each
adapter in its block's group, and the ordinary lr plan gives it that group's lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hftl.engine.layers import LayerGroup, find_blocks
from hftl.errors import HftlError

# model_type -> the attention projections to adapt (query and value, as in the LoRA paper)
DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "mpnet": ["q", "v"],
    "vit": ["q_proj", "v_proj"],
    "deit": ["q_proj", "v_proj"],
    "dinov2": ["q_proj", "v_proj"],
}


def _linear_names(model: nn.Module) -> list[str]:
    _, path, blocks = find_blocks(model)
    return sorted({name.rsplit(".", 1)[-1] for name, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})


def _head_modules(groups: list[LayerGroup], prefix: str) -> list[str]:
    """Top-level modules of the head (e.g. `pooler`, `classifier`), saved whole beside the adapters."""
    names = set()
    for name, _ in next(g for g in groups if g.is_head).params:
        parts = name.split(".")
        names.add(parts[1] if parts[0] == prefix and len(parts) > 2 else parts[0])
    return sorted(names)


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = ()  # empty: DEFAULT_TARGETS of the model's family
    task_type: str | None = None  # peft TaskType name of the model's forward (SEQ_CLS); None: the plain wrapper


def wrap(model: nn.Module, groups: list[LayerGroup], spec: LoraSpec):
    from peft import LoraConfig, TaskType, get_peft_model

    model_type = getattr(model.config, "model_type", "")
    targets = list(spec.targets) or DEFAULT_TARGETS.get(model_type)
    candidates = _linear_names(model)
    if not targets:
        raise HftlError(
            f"No default LoRA target modules for model_type `{model_type}`. Set `lora_target_modules` to some of the "
            f"block's linear layers: {', '.join(candidates)}."
        )
    missing = [x for x in targets if x not in candidates]
    if missing:
        raise HftlError(
            f"LoRA target modules {missing} match no linear layer in the blocks of `{type(model).__name__}`. "
            f"Candidates: {', '.join(candidates)}."
        )
    prefix = getattr(model, "base_model_prefix", "")
    lora = LoraConfig(
        task_type=TaskType[spec.task_type] if spec.task_type else None, r=spec.r, lora_alpha=spec.alpha,
        lora_dropout=spec.dropout, target_modules=targets, modules_to_save=_head_modules(groups, prefix),
    )
    return get_peft_model(model, lora)


def save_for_inference(peft_model, output_dir: str, merge: bool, processor) -> None:
    """Adapter folder (plus config.json with the labels), or with merge a plain model folder."""
    inner = peft_model.get_base_model()
    if not merge:
        inner.config.save_pretrained(output_dir)
        return
    adapter_dir = Path(output_dir, "adapter")
    peft_model.save_pretrained(adapter_dir)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        Path(output_dir, name).unlink(missing_ok=True)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
