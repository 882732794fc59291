"""Images into model inputs, as the checkpoint's image processor would make them.

Evaluation follows the processor (resize, centre crop, rescale, mean, std, resampling filter);
training images get a random resized crop to the same size and an optional horizontal flip.
Both run on the fly (`with_transform`), per batch, in PIL and numpy: no torchvision needed.
`set_image_size` makes a model take another input size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from hftl.data.images import decode, describe
from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.config import DataArgs


def _size(spec) -> tuple[str, tuple[int, int] | int]:
    if spec is not None and not isinstance(spec, (dict, int)):
        spec = dict(spec)  # transformers' SizeDict: its set fields
    if isinstance(spec, dict):
        if "shortest_edge" in spec:
            return "shortest_edge", int(spec["shortest_edge"])
        if "height" in spec and "width" in spec:
            return "exact", (int(spec["height"]), int(spec["width"]))
    if isinstance(spec, int):
        return "exact", (spec, spec)
    raise HftlError(
        f"The image processor's size {spec} is not supported (hftl reads `shortest_edge` or `height`/`width`). "
        "Set `image_size` in the recipe."
    )


class Preprocess:
    """The checkpoint processor's eval pipeline, and a random-resized-crop training pipeline of the same output."""

    def __init__(self, processor, data: DataArgs, channels: int = 3):
        self.mode = "L" if channels == 1 else "RGB"
        self.resample = int(getattr(processor, "resample", 2) if getattr(processor, "resample", None) is not None else 2)
        kind, value = _size(getattr(processor, "size", None) or {"height": 224, "width": 224})
        crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        crop_pct = getattr(processor, "crop_pct", None) if kind == "shortest_edge" else None
        if crop_pct:  # ConvNeXt's processor (ResNet and ConvNeXt checkpoints): the crop is shortest_edge itself
            if data.image_size:
                value = data.image_size
                self._write_back(processor, kind, value, None)
            kind, value, crop = _crop_pct_layout(value, float(crop_pct))
        elif data.image_size:  # one size for the whole model: keep the processor's resize-to-crop ratio
            side = data.image_size
            if kind == "shortest_edge" and crop:
                ratio = value / _size(crop)[1][0]
                value, crop = int(round(side * ratio)), {"height": side, "width": side}
            elif kind == "shortest_edge":
                value = side
            elif crop:  # resize to an exact size, then crop (DeiT: 256 -> 224): keep that ratio too
                ratio = value[0] / _size(crop)[1][0]
                value, crop = (int(round(side * ratio)),) * 2, {"height": side, "width": side}
            else:
                value, crop = (side, side), None
            self._write_back(processor, kind, value, crop)
        self.kind, self.value = kind, value
        self.crop = _size(crop)[1] if crop else None
        self.output = self.crop or (value if kind == "exact" else (value, value))
        self.do_resize = getattr(processor, "do_resize", True)
        self.scale = float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 1.0
        normalize = getattr(processor, "do_normalize", True)
        mean = getattr(processor, "image_mean", None) if normalize else None
        std = getattr(processor, "image_std", None) if normalize else None
        self.mean = np.asarray(mean if mean is not None else [0.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std if std is not None else [1.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
        # EfficientNet's processor: `rescale_offset` maps to [-1, 1] (x * scale - 1); `include_top` divides by std again
        self.offset = 1.0 if getattr(processor, "rescale_offset", False) and self.scale != 1.0 else 0.0
        if getattr(processor, "include_top", False):
            top = getattr(processor, "image_std", None)
            self.std = self.std * np.asarray(top if top is not None else [1.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
        self.crop_min_scale = data.crop_min_scale
        self.max_pixels = data.max_image_pixels  # also at training time: a file may change after the check
        self.hflip = data.hflip

    @staticmethod
    def _write_back(processor, kind, value, crop) -> None:
        """The saved processor must resize as training did, so a pipeline sees the same inputs."""
        def like(old, new: dict):
            return new if old is None or isinstance(old, dict) else type(old)(**new)  # keep SizeDict a SizeDict

        if kind == "shortest_edge":
            processor.size = like(processor.size, {"shortest_edge": value})
        else:
            processor.size = like(processor.size, {"height": value[0], "width": value[1]})
        if crop:
            processor.crop_size = like(getattr(processor, "crop_size", None), dict(crop))
        if hasattr(processor, "do_center_crop"):
            processor.do_center_crop = bool(crop)

    @property
    def side(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return tuple(self.output)

    def eval_image(self, image: Image.Image) -> Image.Image:
        if self.do_resize:
            if self.kind == "shortest_edge":
                w, h = image.size
                short, long = (w, h) if w <= h else (h, w)
                new_long = int(self.value * long / short)
                size = (self.value, new_long) if w <= h else (new_long, self.value)
            else:
                size = (self.value[1], self.value[0])
            if image.size != size:
                image = image.resize(size, resample=self.resample)
        if self.crop:
            h, w = self.crop
            top, left = (image.height - h) // 2, (image.width - w) // 2
            image = image.crop((left, top, left + w, top + h))
        return image

    def train_image(self, image: Image.Image) -> Image.Image:
        """Random resized crop (area fraction in [crop_min_scale, 1], aspect 3/4..4/3), then maybe a flip."""
        h_out, w_out = self.side
        return self.maybe_flip(image.resize((w_out, h_out), resample=self.resample, box=self.crop_box(image)))

    def crop_box(self, image: Image.Image) -> tuple[int, int, int, int]:
        """A random crop's (left, top, right, bottom): area fraction in [crop_min_scale, 1], aspect 3/4..4/3; the
        whole image when ten draws find none that fits (or crop_min_scale is 1)."""
        width, height = image.size
        area = width * height
        for _ in range(10 if self.crop_min_scale < 1 else 0):  # crop_min_scale 1: the whole image, only resized
            target = area * float(torch.empty(1).uniform_(self.crop_min_scale, 1.0))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3))))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return (left, top, left + w, top + h)
        return (0, 0, width, height)

    def maybe_flip(self, image: Image.Image) -> Image.Image:
        if self.hflip and float(torch.rand(1)) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy((array * self.scale - self.offset - self.mean) / self.std)

    def decoded(self, value) -> Image.Image:
        """A stored image (path, bytes or PIL) in the model's colour mode; an unreadable one is named."""
        try:
            return decode(value, self.mode, self.max_pixels)
        except Exception as err:  # PIL raises many types for unreadable data
            raise HftlError(
                f"Image {describe(value)} cannot be read ({err}). Fix or remove it, or pass `--bad_images skip`."
            ) from None

    def pixels(self, value, train: bool) -> torch.Tensor:
        """A stored image (path, bytes or PIL) -> the model's input tensor; augmented when `train`."""
        image = self.decoded(value)
        return self.to_tensor(self.train_image(image) if train else self.eval_image(image))

    def image_inputs(self, values: list, train: bool) -> dict[str, list]:
        """The vision tower's inputs of a batch of stored images, one list per model input."""
        return {"pixel_values": [self.pixels(value, train) for value in values]}

    def transform(self, column: str, train: bool):
        """A `with_transform` function: stored images -> `pixel_values` (and `labels`)."""

        def apply(batch: dict) -> dict:
            out = {"pixel_values": [self.pixels(value, train) for value in batch[column]]}
            if "labels" in batch:
                out["labels"] = batch["labels"]
            return out

        return apply


def _crop_pct_layout(shortest_edge: int, crop_pct: float):
    """ConvNeXt's processor as (kind, resize value, crop): below 384 px the shortest edge is resized to
    shortest_edge / crop_pct and the centre shortest_edge square is cut out; from 384 px on it is warped to a square."""
    if shortest_edge < 384:
        return "shortest_edge", int(shortest_edge / crop_pct), {"height": shortest_edge, "width": shortest_edge}
    return "exact", (shortest_edge, shortest_edge), None


# ---------------------------------------------------------------- model input size


MAX_SIZE_FACTOR = 2  # image_size up to this multiple of the side a model was pre-trained at


def check_size_ceiling(side: int, native, name: str) -> None:
    """A ceiling tied to the model: beyond twice its pre-training side the resampled position table is far
    from what it learnt, and attention's cost grows with the fourth power of the side (4998 px on a 224 px
    ViT is 250,000 times the work per image), so even the input check would run for many minutes."""
    native = native[0] if isinstance(native, (tuple, list)) else native
    if not isinstance(native, int) or native < 1 or side <= MAX_SIZE_FACTOR * native:
        return
    raise HftlError(
        f"image_size {side} is more than {MAX_SIZE_FACTOR}x the {native} px `{name}` was pre-trained at: its position "
        f"embeddings were learnt for that size, and attention's cost grows with the fourth power of the side "
        f"({(side / native) ** 4:,.0f}x the work per image here). Use image_size {MAX_SIZE_FACTOR * native} or less."
    )


def set_image_size(model, side: int) -> None:
    """Make the model take `side` x `side` images: resample a fixed position table once (ViT, DeiT, ...).

    DINOv2 interpolates its table on every forward and needs nothing; neither do CNNs (any size, global
    pooling; the forward check in the image task still tries the size). The new table is saved with
    the model and `config.image_size` is updated, so the saved folder takes that size natively.
    """
    config = model.config
    base = model.base_model
    if not _has_position_table(base):  # a CNN: convolutions and global pooling take any size as it is
        if isinstance(getattr(config, "image_size", None), int):
            config.image_size = side
        return
    embeddings = getattr(base, "embeddings", None)
    patch = getattr(getattr(embeddings, "patch_embeddings", None), "patch_size", None) or getattr(config, "patch_size", None)
    if embeddings is None or patch is None:
        raise HftlError(f"`{type(model).__name__}` has no patch embeddings; hftl cannot set `image_size` for it.")
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    check_size_ceiling(side, getattr(config, "image_size", None), type(model).__name__)
    if side % patch:
        raise HftlError(f"image_size {side} is not a multiple of the patch size {patch}; use {side - side % patch or patch}.")
    if config.model_type == "dinov2" or getattr(config, "image_size", side) == side:
        return
    if not hasattr(embeddings, "interpolate_pos_encoding") or not isinstance(getattr(embeddings, "position_embeddings", None), torch.nn.Parameter):
        raise HftlError(
            f"`{type(model).__name__}` has a fixed position table that hftl cannot resample; drop `image_size` to use "
            f"its native size {config.image_size}."
        )
    table = embeddings.position_embeddings
    old = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    special = table.shape[1] - (old // patch) ** 2
    dummy = torch.zeros(1, special + (side // patch) ** 2, table.shape[-1], dtype=table.dtype)
    with torch.no_grad():
        new = embeddings.interpolate_pos_encoding(dummy, side, side)
    embeddings.position_embeddings = torch.nn.Parameter(new.detach().clone())
    if hasattr(embeddings, "image_size"):  # ViTEmbeddings checks its own copy in forward
        embeddings.image_size = side if isinstance(embeddings.image_size, int) else (side, side)
    patch_embeddings = embeddings.patch_embeddings
    if hasattr(patch_embeddings, "image_size"):
        patch_embeddings.image_size = (side, side)
    if hasattr(patch_embeddings, "num_patches"):
        patch_embeddings.num_patches = (side // patch) ** 2
    config.image_size = side


def _has_position_table(base) -> bool:
    """Whether the model ties its input to a grid of positions (ViT, DeiT, DINOv2: `embeddings.position_embeddings`);
    convolutional backbones (ResNet, ConvNeXt, EfficientNet) have none, whatever their stem's stride."""
    return getattr(getattr(base, "embeddings", None), "position_embeddings", None) is not None
