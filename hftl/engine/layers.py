"""Ordered layer groups: the single source of depth for freeze plans and learning rates.

Group 0 is the input side (embeddings, a CNN's stem), then one group per encoder block (a CNN's
stage), and the last group is the task head (pooler, final norm, classifier). Architectures are
matched by the structure of their modules: the backbone's ModuleList of blocks. Named rules pin the
block list for the families we know; other models are matched by the generic rule (the largest
ModuleList of identical blocks in the base model) and must still show embeddings, blocks and a
head, or they get a clear error, naming the closest family hftl knows, instead of a silent single group.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from torch import nn

from hftl.errors import HftlError

# model_type -> path of the block ModuleList inside the base model
BLOCK_PATHS = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "camembert": "encoder.layer",
    "electra": "encoder.layer",
    "distilbert": "transformer.layer",
    "deberta": "encoder.layer",
    "deberta-v2": "encoder.layer",
    "mpnet": "encoder.layer",
    "modernbert": "layers",
    "resnet": "encoder.stages",  # one group per stage; the stem (`embedder`) is the input side
    "convnext": "encoder.stages",
    "efficientnet": "encoder.blocks",  # MBConv blocks of all stages in one list: STAGES groups them
}
# Encoder-level modules beside the blocks that feed every block (DeBERTa's relative position
# embeddings and their norm) belong to the input side, not the head.
INPUT_SIDE_ENCODER_EXTRAS = {"deberta", "deberta-v2", "mpnet"}  # MPNet: relative_attention_bias
# Encoder-level modules after the blocks that are pre-trained backbone, not head: they form the top
# backbone group of their own (EfficientNet's 1x1 `top_conv` to 1280 channels and its BatchNorm).
TOP_ENCODER_EXTRAS = {"efficientnet": ("top_conv", "top_bn")}


def _efficientnet_stages(config) -> list[int]:
    """Stage of each MBConv block: stage i repeats ceil(depth_coefficient * num_block_repeats[i]) times,
    as transformers' EfficientNetEncoder builds them."""
    repeats = [int(math.ceil(config.depth_coefficient * n)) for n in config.num_block_repeats]
    return [stage for stage, n in enumerate(repeats) for _ in range(n)]


# model_type -> the stage of each block, for families whose block list runs across stages
STAGES = {"efficientnet": _efficientnet_stages}
# model_type -> family name, for messages and the README's model table (one entry per family hftl groups)
FAMILIES = {
    "bert": "BERT", "roberta": "RoBERTa", "xlm-roberta": "XLM-R", "camembert": "CamemBERT", "electra": "ELECTRA",
    "distilbert": "DistilBERT", "deberta": "DeBERTa", "deberta-v2": "DeBERTa-v2/v3", "mpnet": "MPNet",
    "modernbert": "ModernBERT", "vit": "ViT", "deit": "DeiT", "dinov2": "DINOv2", "resnet": "ResNet",
    "convnext": "ConvNeXt", "efficientnet": "EfficientNet", "clip": "CLIP",
    "vision-text-dual-encoder": "VisionTextDualEncoder",
}
SUPPORTED = ", ".join(FAMILIES.values()) + " and models of the same structure"

HEAD = "head"
EMBEDDINGS = "embeddings"
LOGIT_SCALE = "logit_scale"
LOGIT_SCALE_BIAS = "logit_scale_bias"  # SigLIP: temperature and bias of the sigmoid loss, one group
LOGIT_GROUPS = (LOGIT_SCALE, LOGIT_SCALE_BIAS)
LOGIT_PARAMS = ("logit_scale", "logit_bias")
# (short name, tower attribute, projection beside the tower or None where the tower ends in its own `head`)
TOWERS = (("text", "text_model", "text_projection"), ("vision", "vision_model", "visual_projection"))
SIGLIP_TOWERS = (("text", "text_model", None), ("vision", "vision_model", None))
DUAL_SUPPORTED = ("CLIP layout (CLIPModel, VisionTextDualEncoderModel: text_model and vision_model with "
                  "text_projection and visual_projection beside them; task clip) and SigLIP layout (SiglipModel, "
                  "Siglip2Model: each tower ends in its own `head`, with logit_scale and logit_bias; task siglip)")
INPUT_SIDE_NORMS = ("pre_layrnorm", "pre_layernorm")  # CLIP's vision tower normalises embeddings before block 0


@dataclass
class LayerGroup:
    name: str
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def is_head(self) -> bool:
        """The task head, a tower's head (`text.head`: final norm + projection) or the logit scale."""
        return self.name == HEAD or self.name.endswith("." + HEAD) or self.name in LOGIT_GROUPS

    @property
    def tower(self) -> str | None:
        """`text` or `vision` for a dual encoder's groups; None otherwise."""
        return self.name.split(".", 1)[0] if "." in self.name and not self.name.startswith("layer.") else None

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def _homogeneous_lists(module: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.ModuleList) and len(sub) > 0 and len({type(m) for m in sub}) == 1:
            found.append((name, sub))
    return found


def find_blocks(model: nn.Module) -> tuple[str, str, nn.ModuleList]:
    """Return (base prefix, block path inside the base, the block list)."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    name = type(model).__name__
    if base is None:
        raise HftlError(
            f"hftl cannot map `{name}` to layer groups: it has no base model under `{prefix or '?'}`, so the "
            f"backbone cannot be told from the head. {closest_family(model)} Supported: {SUPPORTED}. Load the "
            "model with a task head (e.g. AutoModelForSequenceClassification)."
        )
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    path = BLOCK_PATHS.get(model_type)
    if path is not None:
        blocks = base.get_submodule(path)
        return prefix, path, blocks
    lists = _homogeneous_lists(base)
    if not lists:
        raise HftlError(
            f"hftl cannot map `{name}` (model_type `{model_type}`) to layer groups: its base model has no list "
            f"of encoder blocks. {closest_family(model)} Supported: {SUPPORTED}."
        )
    path, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return prefix, path, blocks


def closest_family(model: nn.Module) -> str:
    """A sentence naming the supported family nearest to `model`: by its model_type's spelling
    (deberta-v3 -> DeBERTa-v2/v3, regnet -> ResNet), else by its task head and layers (convolutions
    -> ResNet, other image models -> ViT, text models -> BERT)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    near = difflib.get_close_matches(model_type, list(FAMILIES), n=1, cutoff=0.6) if model_type else []
    if near:
        family = FAMILIES[near[0]]
    elif "ImageClassification" in type(model).__name__ or "pixel" in " ".join(_forward_args(model)):
        convolutional = any(isinstance(m, nn.Conv2d) and m.kernel_size != m.stride for m in model.modules())
        family = "ResNet" if convolutional else "ViT"
    else:
        family = "BERT"
    return f"The closest supported family is {family}: a model of its structure (input side, a list of blocks, a head) maps."


def _forward_args(model: nn.Module) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return []


def _is_embedding(relative: str) -> bool:
    return any("embed" in part.lower() for part in relative.split(".")[:-1])


def tower_layout(model: nn.Module) -> tuple | None:
    """TOWERS for CLIP's layout (projections beside the towers: CLIPModel, VisionTextDualEncoderModel),
    SIGLIP_TOWERS for SigLIP's (each tower ends in its own `head`, and a logit_bias), None otherwise."""
    if all(hasattr(model, tower) and hasattr(model, proj) for _, tower, proj in TOWERS):
        return TOWERS
    heads = all(hasattr(getattr(model, tower, None), HEAD) for _, tower, _ in SIGLIP_TOWERS)
    if heads and hasattr(model, "logit_bias"):
        return SIGLIP_TOWERS
    return None


def is_dual_encoder(model: nn.Module) -> bool:
    """A text tower and a vision tower whose embeddings are compared: CLIP's layout or SigLIP's."""
    return tower_layout(model) is not None


def looks_dual(model: nn.Module) -> bool:
    """Two towers of some image-text family (ALIGN, FLAVA, a SigLIP without its vision head, ...)."""
    towers = hasattr(model, "text_model") and (hasattr(model, "vision_model") or hasattr(model, "image_model"))
    return towers or hasattr(model, "get_text_features") and hasattr(model, "get_image_features")


def unmapped_dual_error(model: nn.Module) -> HftlError:
    """One message for an image-text model hftl cannot group: its class, what hftl knows, the closest family."""
    name = type(model).__name__
    closest = "SigLIP (task siglip)" if hasattr(model, "logit_bias") else "CLIP (task clip)"
    return HftlError(
        f"`{name}` is an image-text dual encoder that hftl cannot map to layer groups: it knows the {DUAL_SUPPORTED}. "
        f"The closest supported family is {closest}: use a checkpoint of that family."
    )


def tower_groups(model: nn.Module) -> list[LayerGroup]:
    """Per tower [T.embeddings, T.layer.0 .. T.layer.N-1, T.head], text then vision, then `logit_scale`
    (SigLIP: `logit_scale_bias`, the temperature and the bias).

    A tower's blocks are its largest list of identical modules; parameters named like embeddings
    (and a pre-block norm) are its input side; the rest (final norm, pooler; SigLIP's text
    projection and attention-pooling head) and its projection are its head. Every parameter is in
    exactly one group.
    """
    groups: list[LayerGroup] = []
    layout = tower_layout(model)
    for short, attr, projection in layout:
        tower = getattr(model, attr)
        lists = _homogeneous_lists(tower)
        if not lists:
            raise HftlError(f"The {short} tower of `{type(model).__name__}` has no list of blocks; hftl cannot map it.")
        path, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
        mine = {EMBEDDINGS: LayerGroup(f"{short}.{EMBEDDINGS}")}
        mine.update({f"layer.{i}": LayerGroup(f"{short}.layer.{i}") for i in range(len(blocks))})
        mine[HEAD] = LayerGroup(f"{short}.{HEAD}")
        for name, param in tower.named_parameters():
            if name.startswith(path + "."):
                key = f"layer.{name[len(path) + 1:].split('.', 1)[0]}"
            elif _is_embedding(name) or name.split(".")[0] in INPUT_SIDE_NORMS:
                key = EMBEDDINGS
            else:
                key = HEAD
            mine[key].params.append((f"{attr}.{name}", param))
        for name, param in getattr(model, projection).named_parameters() if projection else ():
            mine[HEAD].params.append((f"{projection}.{name}", param))
        groups += [g for g in mine.values() if g.params]
    seen = {n for g in groups for n, _ in g.params}
    rest = [(n, p) for n, p in model.named_parameters() if n not in seen]
    extra = [n for n, _ in rest if n not in LOGIT_PARAMS]
    if extra:
        raise HftlError(f"Parameters outside both towers of `{type(model).__name__}`: {extra[:5]}; hftl cannot map them.")
    if rest:  # CLIP: the temperature; SigLIP: the temperature and the bias of its sigmoid loss
        groups.append(LayerGroup(LOGIT_SCALE if len(rest) == 1 else LOGIT_SCALE_BIAS, rest))
    return groups


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Ordered groups [embeddings, layer.0 .. layer.N-1, head] covering every parameter once
    (per tower for dual encoders, see tower_groups). A CNN's `layer.i` is its stage i."""
    if is_dual_encoder(model):
        return tower_groups(model)
    if looks_dual(model):
        raise unmapped_dual_error(model)
    prefix, path, blocks = find_blocks(model)
    model_type = getattr(model.config, "model_type", "")
    layout = _Layout(prefix, path, model_type, _block_groups(model, blocks))
    groups = {EMBEDDINGS: LayerGroup(EMBEDDINGS)}
    groups.update({g: LayerGroup(g) for g in layout.block_groups})
    if layout.top_extras:
        groups[layout.top] = LayerGroup(layout.top)
    groups[HEAD] = LayerGroup(HEAD)
    for name, param in model.named_parameters():
        groups[layout.group_of(name)].params.append((name, param))
    ordered = list(groups.values())
    if not groups[EMBEDDINGS].params:
        raise HftlError(
            f"hftl cannot map `{type(model).__name__}` (model_type `{model_type}`) to layer groups: no embedding "
            f"parameters were found in its base model `{prefix}`. {closest_family(model)} Supported: {SUPPORTED}."
        )
    if not groups[HEAD].params:
        raise HftlError(
            f"`{type(model).__name__}` has no task head outside its backbone. Load it with a task class such as "
            "AutoModelForSequenceClassification."
        )
    empty = [g.name for g in ordered if not g.params]
    if empty:
        raise HftlError(f"Layer groups {empty} of `{type(model).__name__}` hold no parameters; hftl cannot map it.")
    return ordered


def _block_groups(model: nn.Module, blocks: nn.ModuleList) -> list[str]:
    """The group of each block: `layer.i` per block, or per stage where STAGES knows the family's stages."""
    stages = STAGES.get(getattr(model.config, "model_type", ""))
    if stages is None:
        return [f"layer.{i}" for i in range(len(blocks))]
    of_block = stages(model.config)
    if len(of_block) != len(blocks):
        raise HftlError(f"`{type(model).__name__}` has {len(blocks)} blocks but its config declares {len(of_block)}; "
                        "hftl cannot tell its stages apart.")
    return [f"layer.{s}" for s in of_block]


@dataclass
class _Layout:
    """Where a single-tower model's parameters go: its base prefix, block path and each block's group."""

    prefix: str
    path: str
    model_type: str
    of_block: list[str]

    @property
    def block_groups(self) -> list[str]:
        return list(dict.fromkeys(self.of_block))

    @property
    def container(self) -> str:
        return self.path.rsplit(".", 1)[0] if "." in self.path else ""

    @property
    def top_extras(self) -> tuple[str, ...]:
        return TOP_ENCODER_EXTRAS.get(self.model_type, ())

    @property
    def top(self) -> str:
        """The top backbone group of encoder-level extras after the blocks (one past the last block group)."""
        return f"layer.{len(self.block_groups)}"

    def group_of(self, name: str) -> str:
        block_prefix = f"{self.prefix}.{self.path}."
        if name.startswith(block_prefix):
            return self.of_block[int(name[len(block_prefix):].split(".", 1)[0])]
        if not name.startswith(self.prefix + "."):
            return HEAD  # classifier, pre_classifier, ... outside the base model
        relative = name[len(self.prefix) + 1 :]
        if _is_embedding(relative):
            return EMBEDDINGS
        in_container = self.container and relative.startswith(self.container + ".")
        if in_container and self.model_type in INPUT_SIDE_ENCODER_EXTRAS:
            return EMBEDDINGS
        if in_container and relative[len(self.container) + 1 :].split(".", 1)[0] in self.top_extras:
            return self.top
        return HEAD  # pooler, final norm: they sit on top of the last block


def backbone_size(groups: list[LayerGroup]) -> int:
    return sum(1 for g in groups if not g.is_head)
