"""Image classification: ViT, DeiT, DINOv2, the CNNs ResNet, ConvNeXt and EfficientNet, and their kin.

The model loads with AutoModelForImageClassification and a new head sized to the label set
(`ignore_mismatched_sizes`, so a checkpoint with its own head gets a fresh one). Images are
decoded, augmented (training only) and normalised on the fly as the checkpoint's image processor
would; see data/preprocess.py. Layer groups: patch and position embeddings with the cls token (no
weight decay for tokens and positions), one group per encoder block (a CNN's stage), and the final norm
with the classifier as the head.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from datasets import DatasetDict
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hftl.data import images
from hftl.data.preprocess import Preprocess, set_image_size
from hftl.data.sources import load_split, load_splits, other_data, sample_of
from hftl.errors import BadRow, HftlError, first_line
from hftl.tasks import checkpoints
from hftl.tasks.base import Capabilities, Loaded
from hftl.tasks.classification import ClassificationTask, Labels, known_labels, labelled

if TYPE_CHECKING:
    from hftl.config import RunConfig

FEW_PATCHES = 16  # under 4 x 4 patches a ViT has little to attend over: `hftl train` warns
FIRST_TOKEN_HEADS = frozenset({"vit", "deit"})  # heads that read only the cls token; others (DINOv2) pool all tokens


class ImageClassification(ClassificationTask):
    name = "image-classification"
    pipeline_task = "image-classification"
    capabilities = Capabilities(cached_features=True, source_batches=True, replay=True, compare=True,
                                finished_runs=True)
    model_kind = "image"
    # images are decoded and augmented on the fly from the `image_column`, which the model's forward does not name:
    # the Trainer must keep that column
    required_training = {"remove_unused_columns": False}
    cache_input = "pixel_values"  # cached features go where the images went; the swapped-in embeddings pass them on

    def why_required(self, key: str) -> str:
        return "images are decoded on the fly from the image column, which the Trainer would otherwise drop"

    def cache_blockers(self, config: RunConfig, model=None) -> list[str]:
        return ["training images are augmented (set `augment: false` to cache)"] if config.data.augment else []

    def cache_tokens(self, model) -> str:
        return "first" if model.config.model_type in FIRST_TOKEN_HEADS else "all"

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, Labels]:
        stratify = None if config.data.label_separator else config.data.label_column
        raw = load_splits(config.data, config.model.trust_remote_code, stratify_column=stratify,
                          read_folder=images.read_folder)
        raw, labels = labelled(_image_columns(raw, config), config)
        raw = images.check_images(raw, config.data.image_column, config.data.bad_images,
                                   config.data.max_image_pixels)
        return raw, labels

    def eval_split(self, config: RunConfig, labels: Labels, split: str | None) -> DatasetDict:
        raw = load_split(config.data, split, config.model.trust_remote_code, read_folder=images.read_folder)
        raw = known_labels(_image_columns(raw, config), config, labels)
        return images.check_images(raw, config.data.image_column, config.data.bad_images,
                                   config.data.max_image_pixels)

    def input_columns(self, config: RunConfig) -> dict[str, str]:
        return {"image_column": config.data.image_column}

    def row_inputs(self, config: RunConfig, loaded: Loaded):
        """Decoded and preprocessed as eval images are; relative paths start at `image_root`."""
        column, root, preprocess = config.data.image_column, config.data.image_root, loaded.preprocess

        def one(row: dict):
            value = row.get(column)
            if isinstance(value, str) and root and not Path(value).is_absolute():
                value = str(Path(root) / value)
            if value is None or value == "":
                raise BadRow(f"no image in `{column}`")
            if isinstance(value, str) and not Path(value).is_file():
                raise BadRow(f"image file `{value}` does not exist")
            try:
                image = images.decode(value, preprocess.mode, config.data.max_image_pixels)
            except Exception as err:  # PIL raises many types for unreadable data
                raise BadRow(f"image {images.describe(value) if isinstance(value, dict) else value} cannot be read "
                             f"({first_line(err)})") from None
            return {"pixel_values": preprocess.to_tensor(preprocess.eval_image(image))}

        return one

    def build_model(self, config: RunConfig, labels: Labels) -> Loaded:
        model, processor = checkpoints.load(
            config, AutoModelForImageClassification, AutoImageProcessor, labels, what="image model",
            expected="a Hub id, a folder with config.json and preprocessor_config.json, or builtin:dinov2-small",
            kind=self.model_kind,
        )
        preprocess = Preprocess(processor, config.data, getattr(model.config, "num_channels", 3))
        if config.data.image_size:
            set_image_size(model, config.data.image_size)
        _check_input_size(model, preprocess)
        _warn_few_patches(model, preprocess)
        return Loaded(model, processor, labels, preprocess)

    def encode(self, config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
        """Images stay stored; each split decodes and preprocesses on access (training: with augmentation)."""
        column = config.data.image_column
        out = DatasetDict()
        for split, ds in raw.items():
            keep = [c for c in ds.column_names if c not in (column, "labels")]
            train = split == "train" and config.data.augment
            out[split] = ds.remove_columns(keep).with_transform(loaded.preprocess.transform(column, train))
        return out

    def source_batches(self, config: RunConfig, loaded: Loaded, name: str, samples: int, batch_size: int = 16):
        """Preprocessed like eval images; every image checked here, decoded batch by batch as they are consumed."""
        data = config.data
        train = sample_of(data, name, samples, read_folder=images.read_folder)
        other = other_data(data, name)  # relative image paths start at `name`'s folder
        train = images.prepare_column(DatasetDict(train=train), other, images.base_dir(other))
        train = images.check_images(train, data.image_column, data.bad_images, data.max_image_pixels)["train"]
        values = train[data.image_column]
        return (
            {"pixel_values": torch.stack([loaded.preprocess.pixels(v, train=False) for v in values[s : s + batch_size]])}
            for s in range(0, len(values), batch_size)
        )

    def describe_inputs(self, config: RunConfig) -> str:
        data = config.data
        size = f", {data.image_size} px" if data.image_size else ""
        aug = (f"random resized crop (min area {data.crop_min_scale:g}){' + flip' if data.hflip else ''}"
               if data.augment else "no augmentation")
        return f"image column `{data.image_column}`{size}, {aug}"


def _image_columns(raw: DatasetDict, config: RunConfig) -> DatasetDict:
    """The label column checked and the image column as Image(decode=False) with checked absolute paths."""
    for split, ds in raw.items():
        if config.data.label_column not in ds.column_names:
            raise HftlError(
                f"Column `{config.data.label_column}` (from `label_column`) is not in the {split} split. Its "
                f"columns are: {', '.join(ds.column_names)}. Set `--label_column` to one of them."
            )
    return images.prepare_column(raw, config.data, images.base_dir(config.data))


def _warn_few_patches(model, preprocess: Preprocess) -> None:
    """A size that leaves the backbone a handful of patches trains, but throws away what the features need."""
    patch = getattr(model.config, "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if not patch:
        return
    height, width = preprocess.side
    patches = (height // patch) * (width // patch)
    if patches < FEW_PATCHES:
        print(f"hftl: warning: {height}x{width} images leave the backbone {patches} patches of {patch} px (fewer than "
              f"{FEW_PATCHES}); its pre-trained features work on many more. A larger `image_size` (`hftl advise` probes "
              "several) usually scores higher for its cost.")


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
