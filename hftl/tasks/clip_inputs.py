"""The inputs of task clip: images with captions, or labelled images whose captions come from
`prompt_templates` ("a photo of a {label}."); decoded, augmented (train) and tokenised on access.

Caption-only data gets a stable id per caption as its `labels`, so equal captions in a batch are
positives of each other in the contrastive loss (tasks/clip.py).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import torch
from datasets import DatasetDict

from hftl.data import images
from hftl.data.preprocess import Preprocess, check_size_ceiling
from hftl.data.sources import load_splits
from hftl.engine.layers import SIGLIP_TOWERS, TOWERS, looks_dual, tower_layout, unmapped_dual_error
from hftl.errors import HftlError
from hftl.tasks import checkpoints
from hftl.tasks.base import Loaded
from hftl.tasks.classification import Labels, labelled
from hftl.tasks.zero_shot import image_batch

if TYPE_CHECKING:
    from hftl.config import RunConfig

DEFAULT_PROMPT = "a photo of a {label}."


def templates(config: RunConfig) -> list[str]:
    return list(config.data.prompt_templates) or [DEFAULT_PROMPT]


# ---------------------------------------------------------------- data


def load_data(config: RunConfig) -> tuple[DatasetDict, Labels]:
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
    raw = images.check_images(raw, data.image_column, data.bad_images, data.max_image_pixels)
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


# tower layout (engine/layers.py) -> (its classes, the checkpoints to name, the task that trains it)
LAYOUTS = {
    TOWERS: ("CLIPModel or VisionTextDualEncoderModel",
             "a CLIP or VisionTextDualEncoder checkpoint with its processor, or builtin:dual-encoder-small",
             ("clip", "its softmax loss")),
    SIGLIP_TOWERS: ("SiglipModel or Siglip2Model", "a SigLIP or SigLIP2 checkpoint with its processor",
                    ("siglip", "its sigmoid loss and fixed-length captions")),
}


def build_model(config: RunConfig, labels: Labels, layout: tuple = TOWERS) -> Loaded:
    model, processor = load_dual(config, layout)
    vision_type = getattr(getattr(model.config, "vision_config", None), "model_type", "")
    if config.data.image_size and vision_type != "dinov2":
        raise HftlError(
            f"image_size is available for DINOv2 vision towers, not `{vision_type}`: drop it to use the checkpoint's size."
        )
    if config.data.image_size:
        check_size_ceiling(config.data.image_size, getattr(model.config.vision_config, "image_size", None),
                           f"{type(model).__name__}'s vision tower")
    return Loaded(model, processor, labels, Preprocess(processor.image_processor, config.data))


def load_dual(config: RunConfig, layout: tuple):
    """(model, processor) of a dual encoder whose towers have `layout`, with an image processor and a tokenizer;
    a checkpoint of the other layout is refused with the task that trains it."""
    from transformers import AutoModel, AutoProcessor

    classes, expected, _ = LAYOUTS[layout]
    task, name = config.transfer.task, config.model.model_name_or_path
    model, processor = checkpoints.load(config, AutoModel, AutoProcessor, what="dual encoder", expected=expected,
                                         kind="dual")
    found = tower_layout(model)
    if found is None and looks_dual(model):
        raise unmapped_dual_error(model)
    if found is None:
        raise HftlError(f"task {task} needs a dual encoder ({classes}); `{name}` loads as {type(model).__name__}. Use "
                        "task image-classification or text-classification for it.")
    if found is not layout:
        other, why = LAYOUTS[found][2]
        raise HftlError(f"`{name}` loads as {type(model).__name__}, which task {task} does not train: set "
                        f"`task: {other}` ({why}).")
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise HftlError(f"`{name}` has no image processor and tokenizer pair (a CLIP processor).")
    return model, processor


# ---------------------------------------------------------------- encoding


def encode(config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
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
        out = preprocess.image_inputs(batch[image_column], augment)
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


class CaptionTokens:
    """Captions -> text-tower inputs. CLIP: padded per batch, with an attention mask. `fixed` (SigLIP): padded to
    `max_length`, the tower's positions, without a mask, as SigLIP was trained: its text embedding is read at the
    last position, so a caption padded otherwise would be read somewhere else."""

    def __init__(self, tokenizer, max_length: int, fixed: bool = False):
        self.tokenizer, self.max_length, self.fixed = tokenizer, max_length, fixed

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.fixed:
            ids = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")["input_ids"]
            return {"input_ids": ids}
        text = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}


class Collator:
    """Stack images, tokenise and pad captions, keep labels (same-label positives, zero-shot).

    Caption-only data gets a stable id per caption text as its `labels`, so two images with the
    same caption in a batch are positives of each other, not negatives (crc32: equal on every rank)."""

    def __init__(self, tokens: CaptionTokens):
        self.tokens = tokens

    def __call__(self, rows: list[dict]) -> dict:
        batch = {**image_batch(rows), **self.tokens([r["caption"] for r in rows])}
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        else:
            batch["labels"] = torch.tensor([zlib.crc32(r["caption"].encode()) & 0x7FFFFFFF for r in rows])
        return batch


def collator(processor):
    limit = getattr(processor.tokenizer, "model_max_length", None)
    return Collator(CaptionTokens(processor.tokenizer, limit if limit and limit < 10**6 else 77))  # CLIP: 77 positions
