"""SigLIP2 NaFlex image inputs: each image at its own aspect ratio, as a padded sequence of patches.

A NaFlex `Siglip2Model` reads an image as up to `max_num_patches` patches of `patch_size` pixels,
with the grid's shape (rows, columns) and a mask of the real patches, instead of a fixed square.
Evaluation sizes each image as the checkpoint's Siglip2 image processor does: the largest size of
the same aspect ratio whose patch grid fits, each side a multiple of the patch; then rescale and
normalise (tested equal to the processor's output). Training first takes the random resized crop
and flip of `Preprocess` and sizes the crop the same way, so augmented images keep their shape too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from PIL import Image

from hftl.data.preprocess import Preprocess
from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.config import DataArgs

NAFLEX_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")


def grid_size(height: int, width: int, patch: int, max_patches: int) -> tuple[int, int]:
    """(height, width) in pixels: the image scaled by the largest factor whose grid of `patch`-pixel patches
    (each side rounded up to whole patches, at least one) holds at most `max_patches`; a bisection on the
    factor, as the Siglip2 image processor searches it."""

    def side(size: int, scale: float) -> int:
        return max(patch, math.ceil(size * scale / patch) * patch)

    low, high = 1e-6, 100.0
    while high - low >= 1e-5:
        mid = (low + high) / 2
        if (side(height, mid) // patch) * (side(width, mid) // patch) <= max_patches:
            low = mid
        else:
            high = mid
    return side(height, low), side(width, low)


class NaflexPreprocess(Preprocess):
    """The checkpoint's Siglip2 image processor as `Preprocess` does it for fixed sizes, plus patches."""

    def __init__(self, processor, data: DataArgs):
        super().__init__(processor, data)
        self.patch = int(processor.patch_size)
        self.max_patches = int(data.max_num_patches or processor.max_num_patches)
        if data.max_num_patches:
            processor.max_num_patches = self.max_patches  # the saved processor sizes images as training did
        if self.max_patches < 1:
            raise HftlError(f"max_num_patches must be at least 1 (got {self.max_patches}).")

    def sized(self, image: Image.Image, box: tuple[int, int, int, int] | None = None) -> Image.Image:
        """`image` (or its `box`) resized to its NaFlex size, in one resampling."""
        left, top, right, bottom = box or (0, 0, image.width, image.height)
        height, width = grid_size(bottom - top, right - left, self.patch, self.max_patches)
        return image.resize((width, height), resample=self.resample, box=box)

    def patches(self, value, train: bool) -> dict[str, torch.Tensor]:
        """One stored image -> its patch sequence padded to max_num_patches, the mask of real patches, the grid."""
        image = self.decoded(value)
        image = self.maybe_flip(self.sized(image, self.crop_box(image))) if train else self.sized(image)
        pixels = self.to_tensor(image)  # (channels, height, width)
        channels, height, width = pixels.shape
        rows, cols, p = height // self.patch, width // self.patch, self.patch
        sequence = pixels.reshape(channels, rows, p, cols, p).permute(1, 3, 2, 4, 0).reshape(rows * cols, -1)
        values = torch.zeros(self.max_patches, sequence.shape[1], dtype=sequence.dtype)
        values[: rows * cols] = sequence
        mask = torch.zeros(self.max_patches, dtype=torch.int32)
        mask[: rows * cols] = 1
        return {"pixel_values": values, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor([rows, cols])}

    def image_inputs(self, values: list, train: bool) -> dict[str, list]:
        items = [self.patches(value, train) for value in values]
        return {key: [item[key] for item in items] for key in NAFLEX_KEYS}
