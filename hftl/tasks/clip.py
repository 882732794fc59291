"""CLIP-style dual encoders: contrastive fine-tuning, zero-shot classification, linear probe.

Models: `CLIPModel` and `VisionTextDualEncoderModel` (any vision encoder and text encoder joined
by projections), loaded with AutoModel. Each tower has its own freeze plan and layer-wise lrs
(hftl/towers.py); `logit_scale` trains without weight decay.

Data: images with captions (`caption_column`), or labelled images whose captions come from
`prompt_templates` ("a photo of a {label}."). With labels, every run reports zero-shot accuracy
on held-out images before and after fine-tuning: class embeddings are the mean of the templates'
normalised text embeddings, and an image takes the class it is closest to.

The contrastive loss is CLIP's symmetric cross-entropy over image-text similarities. Examples
with the same label are positives of each other (their captions say the same thing), not
negatives. With `gather_features` under DDP every rank contrasts its images and texts against
the whole global batch (features gathered with their gradients), as in CLIP's training.

Modes (`clip_mode`): `contrastive` trains through the Trainer; `zero_shot` evaluates only;
`linear_probe` trains a linear classifier on frozen, cached image embeddings, initialised from
the zero-shot class embeddings, so its first step starts at zero-shot accuracy.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import torch
from datasets import DatasetDict
from torch import nn

from hftl.data import images
from hftl.data.preprocess import Preprocess
from hftl.data.sources import load_splits
from hftl.engine.layers import is_dual_encoder
from hftl.engine.towers import TOWER_NAMES, TowerPlan, apply_tower_plans
from hftl.errors import HftlError
from hftl.tasks import checkpoints
from hftl.tasks.base import Capabilities, Loaded, Task
from hftl.tasks.classification import Labels, labelled
from hftl.tasks.zero_shot import zero_shot_accuracy

if TYPE_CHECKING:
    from hftl.config import RunConfig

MAX_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100
DEFAULT_PROMPT = "a photo of a {label}."
DUAL_STRATEGIES = ("feature_extraction", "partial", "full")
TOWER_KEYS = ("strategy", "unfrozen_groups", "learning_rate", "layer_decay")
MODE_TEXT = {
    "contrastive": "contrastive image-text fine-tuning, a freeze plan per tower",
    "zero_shot": "zero-shot classification: no training",
    "linear_probe": "linear probe on frozen, cached image embeddings (zero-shot initialised)",
}


def templates(config: RunConfig) -> list[str]:
    return list(config.data.prompt_templates) or [DEFAULT_PROMPT]


# ---------------------------------------------------------------- data


def _load_data(config: RunConfig) -> tuple[DatasetDict, Labels]:
    data = config.data
    raw = load_splits(data, config.model.trust_remote_code, stratify_column=data.label_column, read_folder=images.read_folder)
    columns = raw["train"].column_names
    has_captions = data.caption_column in columns
    has_labels = data.label_column in columns
    if not has_captions and not has_labels:
        raise HftlError(
            f"The train split has no caption column `{data.caption_column}` (from `caption_column`) and no label column "
            f"`{data.label_column}` to make captions from. Its columns are: {', '.join(columns)}. Set `caption_column` "
            "to the column with the captions, or `label_column` to a label column (captions then come from "
            "`prompt_templates`)."
        )
    if config.transfer.clip_mode != "contrastive" and not has_labels:
        raise HftlError(
            f"clip_mode {config.transfer.clip_mode} classifies images: it needs a label column (`{data.label_column}` is "
            f"not in {', '.join(columns)}). Set `label_column`."
        )
    if has_captions:
        _check_captions(raw, data.caption_column, data.image_column)
    raw = images.prepare_column(raw, data, images.base_dir(config.data))
    if has_labels:
        raw, labels = labelled(raw, config)
    else:
        labels = Labels([], False, data.label_column)
    raw = images.check_images(raw, data.image_column, data.bad_images)
    return raw, labels


def _check_captions(raw: DatasetDict, column: str, image_column: str) -> None:
    for split, ds in raw.items():
        if column not in ds.column_names:
            raise HftlError(f"The {split} split has no caption column `{column}`; give every split captions.")
        dtype = getattr(ds.features[column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise HftlError(
                f"The caption column `{column}` of the {split} split holds {dtype or type(ds.features[column]).__name__} "
                "values, not one caption string per image. Give one caption per row (repeat an image for more captions)."
            )
        empty = [i for i, c in enumerate(ds[column]) if c is None or not str(c).strip()]
        if empty:
            value = ds[empty[0]].get(image_column)
            which = f"the image {value}" if isinstance(value, str) else f"row {empty[0]} of the split"
            raise HftlError(
                f"The {split} split has {len(empty)} empty caption(s) in `{column}` (the first belongs to {which}). Every "
                "image needs a caption: fill those rows or drop them."
            )


# ---------------------------------------------------------------- model


def _build_model(config: RunConfig, labels: Labels) -> Loaded:
    from transformers import AutoModel, AutoProcessor

    model, processor = checkpoints.load(
        config, AutoModel, AutoProcessor, what="dual encoder",
        expected="a CLIP or VisionTextDualEncoder checkpoint with its processor, or builtin:dual-encoder-small",
    )
    if not is_dual_encoder(model):
        raise HftlError(
            f"task clip needs a dual encoder (CLIPModel or VisionTextDualEncoderModel); `{config.model.model_name_or_path}` "
            f"loads as {type(model).__name__}. Use task image-classification or text-classification for it."
        )
    image_processor = getattr(processor, "image_processor", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if image_processor is None or tokenizer is None:
        raise HftlError(f"`{config.model.model_name_or_path}` has no image processor and tokenizer pair (a CLIP processor).")
    vision_type = getattr(getattr(model.config, "vision_config", None), "model_type", "")
    if config.data.image_size and vision_type != "dinov2":
        raise HftlError(
            f"image_size is available for DINOv2 vision towers, not `{vision_type}`: drop it to use the checkpoint's size."
        )
    return Loaded(model, processor, labels, Preprocess(image_processor, config.data))


# ---------------------------------------------------------------- encoding


def _encode(config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
    """Images and captions stay stored; each access decodes, augments (train) and tokenises."""
    preprocess, names = loaded.preprocess, loaded.labels.names
    data = config.data
    captions = data.caption_column in raw["train"].column_names
    prompts = templates(config)
    out = DatasetDict()
    for split, ds in raw.items():
        train = split == "train"
        keep = {data.image_column, "labels"} | ({data.caption_column} if captions else set())
        ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
        out[split] = ds.with_transform(_transform(preprocess, data.image_column, data.caption_column if captions else None,
                                                  names, prompts, train and data.augment, train))
    return out


def _transform(preprocess, image_column, caption_column, names, prompts, augment, random_prompt):
    def apply(batch: dict) -> dict:
        out = {"pixel_values": [preprocess.pixels(value, augment) for value in batch[image_column]]}
        if caption_column is not None:
            out["caption"] = [str(c) for c in batch[caption_column]]
        else:
            ids = batch["labels"]
            picks = torch.randint(0, len(prompts), (len(ids),)).tolist() if random_prompt else [0] * len(ids)
            out["caption"] = [prompts[p].format(label=names[i]) for p, i in zip(picks, ids)]
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    return apply


class Collator:
    """Stack images, tokenise and pad captions, keep labels (same-label positives, zero-shot).

    Caption-only data gets a stable id per caption text as its `labels`, so two images with the
    same caption in a batch are positives of each other, not negatives (crc32: equal on every rank)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, rows: list[dict]) -> dict:
        text = self.tokenizer([r["caption"] for r in rows], padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")
        batch = {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "input_ids": text["input_ids"],
                 "attention_mask": text["attention_mask"]}
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        else:
            batch["labels"] = torch.tensor([zlib.crc32(r["caption"].encode()) & 0x7FFFFFFF for r in rows])
        return batch


def _collator(processor):
    limit = getattr(processor.tokenizer, "model_max_length", None)
    return Collator(processor.tokenizer, limit if limit and limit < 10**6 else 77)  # CLIP: 77 positions


# ---------------------------------------------------------------- loss


def contrastive_loss(model, inputs: dict, scale: torch.Tensor, gather: bool) -> tuple[torch.Tensor, object]:
    """Symmetric image-text cross-entropy; same-label pairs are positives; optionally over the global batch."""
    labels = inputs.pop("labels", None)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"])
    image, text = outputs.image_embeds, outputs.text_embeds
    all_image, all_text, all_labels, offset = image, text, labels, 0
    if gather and torch.distributed.is_available() and torch.distributed.is_initialized():
        import torch.distributed.nn.functional as dist_fn

        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        if world > 1:
            all_image = torch.cat(dist_fn.all_gather(image))  # gradients flow back to the owning rank
            all_text = torch.cat(dist_fn.all_gather(text))
            if labels is not None:
                gathered = [torch.empty_like(labels) for _ in range(world)]
                torch.distributed.all_gather(gathered, labels)
                all_labels = torch.cat(gathered)
            offset = rank * image.shape[0]
    scale = scale.exp().clamp(max=MAX_SCALE)
    logits_image = scale * image @ all_text.T  # local images against every text
    logits_text = scale * text @ all_image.T
    if labels is not None:
        targets = (labels[:, None] == all_labels[None, :]).float()
        targets = targets / targets.sum(1, keepdim=True)
    else:
        targets = torch.arange(image.shape[0], device=image.device) + offset
    loss = (nn.functional.cross_entropy(logits_image, targets) + nn.functional.cross_entropy(logits_text, targets)) / 2
    return loss, outputs




def tower_setting(config: RunConfig, tower: str, key: str):
    """The tower's own value of `key` (`vision_learning_rate`), or the recipe-wide one (`learning_rate`)."""
    own = getattr(config.transfer, f"{tower}_{key}", None)
    if own is not None:
        return own
    if key == "learning_rate":
        return config.training.learning_rate
    return getattr(config.transfer, key)


def tower_plans(config: RunConfig) -> dict[str, TowerPlan]:
    plans = {}
    for tower in TOWER_NAMES:
        own = getattr(config.transfer, f"{tower}_unfrozen_groups", None) is not None
        plans[tower] = TowerPlan(*(tower_setting(config, tower, k) for k in TOWER_KEYS),
                                 key=f"{tower}_unfrozen_groups" if own else "unfrozen_groups")
    return plans


class Clip(Task):
    name = "clip"
    pipeline_task = "zero-shot-image-classification"
    capabilities = Capabilities(zero_shot=True, towers=TOWER_NAMES, phases=False, strategies=DUAL_STRATEGIES)
    # images and captions feed the transform: the Trainer must keep their columns
    required_training = {"remove_unused_columns": False}

    def why_required(self, key: str) -> str:
        return "images and captions are turned into model inputs on the fly from their columns"

    def defaults(self, given: dict) -> dict:
        out = dict(self.required_training)
        if given.get("clip_mode", "contrastive") == "contrastive":
            # the evaluation loss is the contrastive loss; zero-shot accuracy is measured separately, on every image.
            # Gathered batches match across ranks without dropping the last one: even_batches completes it.
            out["prediction_loss_only"] = True
        else:
            out["augment"] = False  # each image is embedded once
            out.update(prediction_loss_only=False, label_names=["labels"])  # the linear probe's accuracy
        return out

    def mode(self, config: RunConfig) -> str:
        return "trainer" if config.transfer.clip_mode == "contrastive" else config.transfer.clip_mode

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        t = config.transfer  # clip_mode and the tower strategies are checked against their allowed values already
        if t.clip_mode != "contrastive" and config.data.augment and "augment" in config.user_keys:
            raise HftlError(f"clip_mode {t.clip_mode} embeds each image once, so it cannot augment: drop `augment: true`.")
        for tower in TOWER_NAMES:
            decay, lr = getattr(t, f"{tower}_layer_decay"), getattr(t, f"{tower}_learning_rate")
            unfrozen = getattr(t, f"{tower}_unfrozen_groups")
            if decay is not None and decay <= 0:
                raise HftlError(f"{tower}_layer_decay must be > 0 (got {decay}); 1.0 means no decay.")
            if lr is not None and lr < 0:
                raise HftlError(f"{tower}_learning_rate must be >= 0 (got {lr}).")
            if unfrozen is not None and unfrozen < 0:
                raise HftlError(f"{tower}_unfrozen_groups must be >= 0 (got {unfrozen}).")
        if config.data.label_separator:
            raise HftlError("task clip takes one label per image (a caption per class): drop label_separator.")
        for template in config.data.prompt_templates:
            if "{label}" not in template:
                raise HftlError(f"prompt template `{template}` has no `{{label}}`: each template must name the class, "
                                f"e.g. `{DEFAULT_PROMPT}`.")
            try:
                template.format(label="x")
            except (KeyError, IndexError, ValueError) as err:
                raise HftlError(f"prompt template `{template}` is not a valid format string ({err}); use only "
                                "`{label}`.") from None

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, Labels]:
        raw, labels = _load_data(config)
        if config.transfer.clip_mode != "contrastive" and len(labels.names) < 2:
            raise HftlError("Zero-shot classification and the linear probe need at least 2 classes in `label_column`.")
        return raw, labels

    def build_model(self, config: RunConfig, labels: Labels) -> Loaded:
        return _build_model(config, labels)

    def encode(self, config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
        return _encode(config, raw, loaded)

    def collator(self, loaded: Loaded):
        return _collator(loaded.processor)

    def apply_plan(self, config: RunConfig, groups):
        return apply_tower_plans(groups, tower_plans(config), config.transfer.head_lr, config.training.learning_rate,
                                 tuple(config.transfer.freeze))

    def loss_fn(self, config: RunConfig):
        gather = config.transfer.gather_features

        def compute(trainer, model, inputs, return_outputs=False):  # TransferTrainer.compute_loss hands itself in
            inner = trainer.accelerator.unwrap_model(model)
            loss, outputs = contrastive_loss(model, dict(inputs), inner.logit_scale, gather and model.training)
            return (loss, outputs) if return_outputs else loss

        return compute

    def zero_shot_metrics(self, config: RunConfig, loaded: Loaded, encoded: DatasetDict,
                          splits: tuple[str, ...] | None = None) -> dict[str, float]:
        """Zero-shot accuracy per split (default: the held-out one, test else validation); empty without labels."""
        if not loaded.labels.names:
            return {}
        device = config.training.device
        loaded.model.to(device)
        out = {}
        for split in splits or (eval_split(encoded),):
            if split in encoded:
                out[f"zero_shot_{split}_accuracy"] = zero_shot_accuracy(
                    loaded.model, loaded.processor, encoded[split], loaded.labels.names, templates(config), device,
                    config.training.per_device_eval_batch_size)
        return out

    def describe_inputs(self, config: RunConfig) -> str:
        data = config.data
        prompts = "; ".join(data.prompt_templates) or DEFAULT_PROMPT
        return f"image column `{data.image_column}` with captions `{data.caption_column}` or prompts `{prompts}`"

    def describe_strategy(self, config: RunConfig) -> str:
        return MODE_TEXT[config.transfer.clip_mode]

    def describe_rates(self, config: RunConfig) -> str:
        t, lr = config.transfer, config.training.learning_rate
        head = t.head_lr if t.head_lr is not None else lr
        if t.clip_mode != "contrastive":
            return f"head {head:g} (mode {t.clip_mode}; the towers are frozen)"
        parts = []
        for tower, plan in tower_plans(config).items():
            top = f" (top {plan.unfrozen_groups})" if plan.strategy == "partial" else ""
            parts.append(f"{tower} tower {plan.strategy}{top}, top block {plan.learning_rate:g}, layer_decay "
                         f"{plan.layer_decay:g}")
        return f"{'; '.join(parts)}; projections {head:g}; logit_scale {lr:g} (mode {t.clip_mode})"


def eval_split(encoded: DatasetDict) -> str:
    return "test" if "test" in encoded else "validation"
