"""LoRA through peft as a strategy: low-rank adapters in the attention projections (a CNN's convolutions),
the new head trained and saved whole (`modules_to_save`), layer-wise lrs applied to the adapters by depth.

The adapters live inside the blocks, so `layers.layer_groups` on the wrapped model puts each
adapter in its block's group, and the ordinary lr plan gives it that group's lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hftl.engine.layers import LayerGroup, find_blocks
from hftl.errors import HftlError

# model_type -> the layers to adapt: the attention's query and value projections, as in the LoRA paper
# (ModernBERT fuses them into `Wqkv`). A name matches every layer whose path ends in it, so `attn.Wo`
# adapts ModernBERT's attention output and not its MLP's `mlp.Wo`. CNNs have no attention: ResNet
# adapts each residual block's middle convolution (`layer.1`, the 3x3 of a bottleneck), ConvNeXt its
# pointwise (linear) layers, EfficientNet its 1x1 expansion and projection convolutions.
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
    "modernbert": ["Wqkv"],
    "resnet": ["layer.1.convolution"],
    "convnext": ["pwconv1", "pwconv2"],
    "efficientnet": ["expand_conv", "project_conv"],
}
ADAPTABLE = (nn.Linear, nn.Conv2d)  # the layer types peft's LoRA wraps that hftl offers as targets


def candidates(model: nn.Module) -> list[str]:
    """Paths of the layers LoRA can adapt inside the blocks, relative to a block (`attention.self.query`),
    over every block (EfficientNet's first block has no expansion layer)."""
    _, _, blocks = find_blocks(model)
    return sorted({name for block in blocks for name, m in block.named_modules() if isinstance(m, ADAPTABLE)})


def matches(target: str, path: str) -> bool:
    """peft's rule for a target name: the layer's path is the name or ends in `.name`."""
    return path == target or path.endswith("." + target)


def _head_modules(groups: list[LayerGroup], prefix: str) -> list[str]:
    """Modules of the head (e.g. `bert.pooler`, `classifier`), saved whole beside the adapters. Named by their
    path from the model: peft saves every module whose path ends in a name, and a bare `layernorm` (ConvNeXt's
    final norm) would also catch the norm inside every block."""
    names = set()
    for name, _ in next(g for g in groups if g.is_head).params:
        parts = name.split(".")
        names.add(".".join(parts[:2]) if parts[0] == prefix and len(parts) > 2 else parts[0])
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
    layers = candidates(model)
    if not targets:
        raise HftlError(
            f"No default LoRA target modules for model_type `{model_type}`. Set `lora_target_modules` to some of the "
            f"blocks' linear or convolution layers (a name matches every path that ends in it): {', '.join(layers)}."
        )
    missing = [t for t in targets if not any(matches(t, path) for path in layers)]
    if missing:
        raise HftlError(
            f"LoRA target modules {missing} match no linear or convolution layer in the blocks of "
            f"`{type(model).__name__}`. Candidates (a name matches every path that ends in it): {', '.join(layers)}."
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
