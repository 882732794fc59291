"""Image classification: ViT, DeiT, DINOv2 and models of the same structure.

The model loads with AutoModelForImageClassification and a new head sized to the label set
(`ignore_mismatched_sizes`, so a checkpoint with its own head gets a fresh one). Images are
decoded, augmented (training only) and normalised on the fly as the checkpoint's image processor
would; see hftl/images.py. Layer groups: patch and position embeddings with the cls token (no
weight decay for tokens and positions), one group per encoder block, and the final norm with the
classifier as the head.
"""

from __future__ import annotations

import weakref

import torch
from datasets import DatasetDict
from transformers import AutoImageProcessor, AutoModelForImageClassification, default_data_collator

from hftl.data import images
from hftl.data.preprocess import Preprocess, set_image_size
from hftl.config import RunConfig
from hftl.data.sources import load_splits
from hftl.errors import HftlError, first_line
from hftl.tasks import checkpoints
from hftl.tasks.checkpoints import model_source  # noqa: F401  (the task interface)
from hftl.tasks.classification import Labels, best_metric, compute_metrics_fn, labelled, metric_names  # noqa: F401

PIPELINE_TASK = "image-classification"
CACHEABLE = True
CACHE_INPUT = "pixel_values"  # cached features go where the images went; the swapped-in embeddings pass them on
FIRST_TOKEN_HEADS = frozenset({"vit", "deit"})  # heads that read only the cls token; others (DINOv2) pool all tokens
_PREPROCESS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor -> its Preprocess


def cache_blockers(config: RunConfig) -> list[str]:
    """Why features cannot be cached for this run (empty: they can)."""
    return ["training images are augmented (set `augment: false` to cache)"] if config.data.augment else []


def cache_tokens(model) -> str:
    return "first" if model.config.model_type in FIRST_TOKEN_HEADS else "all"


def load_data(config: RunConfig) -> tuple[DatasetDict, Labels]:
    stratify = None if config.data.label_separator else config.data.label_column
    raw = load_splits(config.data, config.model.trust_remote_code, stratify_column=stratify, read_folder=images.read_folder)
    for split, ds in raw.items():
        if config.data.label_column not in ds.column_names:
            raise HftlError(
                f"Column `{config.data.label_column}` (from `label_column`) is not in the {split} split. Its columns "
                f"are: {', '.join(ds.column_names)}. Set `--label_column` to one of them."
            )
    raw = images.prepare_column(raw, config.data, images.base_dir(config.data))
    raw, labels = labelled(raw, config)
    raw = images.check_images(raw, config.data.image_column, config.data.bad_images)
    return raw, labels


def build_model(config: RunConfig, labels: Labels):
    model, processor = checkpoints.load(
        config, AutoModelForImageClassification, AutoImageProcessor, labels, what="image model",
        expected="a Hub id, a folder with config.json and preprocessor_config.json, or builtin:dinov2-small",
    )
    preprocess = Preprocess(processor, config.data, getattr(model.config, "num_channels", 3))
    if config.data.image_size:
        set_image_size(model, config.data.image_size)
    _check_input_size(model, preprocess)
    _PREPROCESS[processor] = preprocess  # not an attribute: save_pretrained would write every attribute
    return model, processor


def _check_input_size(model, preprocess: Preprocess) -> None:
    """One forward on a blank image of the input size: a size the model cannot take fails here, not mid-run."""
    height, width = preprocess.side
    channels = getattr(model.config, "num_channels", 3)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=torch.zeros(1, channels, height, width))
    except Exception as err:
        raise HftlError(
            f"`{type(model).__name__}` does not take {height}x{width} images ({first_line(err)}). Set `image_size` to the "
            f"model's size ({getattr(model.config, 'image_size', '?')}) or drop it."
        ) from None
    finally:
        model.train(was)


def encode(config: RunConfig, raw: DatasetDict, processor) -> DatasetDict:
    """Images stay stored; each split decodes and preprocesses on access (training: with augmentation)."""
    config.training.remove_unused_columns = False  # the image column feeds the transform; the Trainer must keep it
    preprocess = _PREPROCESS[processor]
    column = config.data.image_column
    out = DatasetDict()
    for split, ds in raw.items():
        keep = [c for c in ds.column_names if c not in (column, "labels")]
        train = split == "train" and config.data.augment
        out[split] = ds.remove_columns(keep).with_transform(preprocess.transform(column, train))
    return out


def collator(processor):
    return default_data_collator
