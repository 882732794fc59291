"""Images for vision tasks: where they come from, checking them, and turning them into model inputs.

Sources: an image folder (`root/<class>/*.jpg`, optionally under `train/`, `validation/`, `test/`),
a csv/json/parquet whose `image_column` holds paths (relative to `image_root` or the file's
folder), a parquet file or saved DatasetDict with an Image column, or a Hub dataset with an Image column. Every image
column becomes `datasets.Image(decode=False)`, so hftl decodes each image itself: a file that
cannot be read is named in the error instead of failing deep inside a DataLoader worker.

Preprocessing follows the checkpoint's image processor (resize, centre crop, rescale, mean,
std, resampling filter); training images get a random resized crop to the same size and an
optional horizontal flip. Both run on the fly (`with_transform`), per batch, in PIL and numpy:
no torchvision needed.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageFile

from hftl.config import DataArgs
from hftl.errors import HftlError, first_line

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
SPLIT_FOLDERS = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation", "test": "test"}
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error (or skipped), never silently grey


# ---------------------------------------------------------------- sources


def _class_folders(root: Path) -> DatasetDict | None:
    """`root/<class>/<image>` as one split; None when `root` holds no sub-folders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return None
    paths, labels, empty = [], [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            empty.append(name)
        paths += [str(f) for f in files]
        labels += [index] * len(files)
    if empty:
        raise HftlError(
            f"The image folder `{root}` has class folders with no images: {', '.join(empty[:10])}"
            f"{' ...' if len(empty) > 10 else ''}. Each class folder needs image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove the empty ones or add images."
        )
    features = Features({"image": Value("string"), "label": ClassLabel(names=classes)})
    return Dataset.from_dict({"image": paths, "label": labels}, features=features)


def read_folder(folder: str) -> DatasetDict:
    """An image folder as a DatasetDict (`image` paths, `label` classes from folder names)."""
    root = Path(folder)
    loose = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    splits = {SPLIT_FOLDERS[p.name]: p for p in root.iterdir() if p.is_dir() and p.name in SPLIT_FOLDERS}
    layout = (
        f"Lay it out as `{root}/<class name>/<image>` (or with train/, validation/, test/ above the class "
        "folders), or give a csv with image paths and labels."
    )
    if splits:
        out = DatasetDict()
        for split, path in splits.items():
            ds = _class_folders(path)
            if ds is None:
                raise HftlError(f"The {split} folder `{path}` has no class sub-folders. {layout}")
            out[split] = ds
        names = {tuple(ds.features["label"].names) for ds in out.values()}
        if len(names) > 1:
            # one label set for every split: a class missing from validation keeps its id
            every = sorted({n for ns in names for n in ns})
            out = DatasetDict({s: _relabel(ds, every) for s, ds in out.items()})
        return out
    ds = _class_folders(root)
    if ds is None:
        found = f" It holds {len(loose)} images but no class folders." if loose else ""
        raise HftlError(f"The image folder `{root}` has no class sub-folders.{found} {layout}")
    return DatasetDict(train=ds)


def _relabel(ds: Dataset, names: list[str]) -> Dataset:
    old = ds.features["label"].names
    ids = [names.index(old[i]) for i in ds["label"]]
    features = Features({"image": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": ds["image"], "label": ids}, features=features)


def base_dir(data: DataArgs) -> str | None:
    """Relative image paths in a csv/json start from the train file's folder (unless `image_root` says otherwise)."""
    first = data.train_file or (data.dataset if data.dataset and Path(data.dataset).is_file() else None)
    return str(Path(first).resolve().parent) if first else None


def prepare_column(raw: DatasetDict, data: DataArgs, base_dir: str | None) -> DatasetDict:
    """The image column of every split as Image(decode=False), with paths made absolute and checked."""
    column = data.image_column
    out = DatasetDict()
    for split, ds in raw.items():
        if column not in ds.column_names:
            raise HftlError(
                f"Column `{column}` (from `image_column`) is not in the {split} split. Its columns are: "
                f"{', '.join(ds.column_names)}. Set `--image_column` to the column with the images or their paths."
            )
        feature = ds.features[column]
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            ds = _absolute_paths(ds, column, data.image_root or base_dir, split)
        elif not isinstance(feature, ImageFeature):
            raise HftlError(
                f"Column `{column}` (from `image_column`) holds {type(feature).__name__} values, not images or image "
                f"paths. Set `--image_column` to the image column (columns: {', '.join(ds.column_names)})."
            )
        out[split] = ds.cast_column(column, ImageFeature(decode=False))
    return out


def _absolute_paths(ds: Dataset, column: str, root: str | None, split: str) -> Dataset:
    base = Path(root) if root else Path.cwd()
    paths = [p if p is None or os.path.isabs(p) else str(base / p) for p in ds[column]]
    missing = [(i, p) for i, p in enumerate(paths) if p is None or not os.path.isfile(p)]
    if missing:
        shown = "; ".join(f"row {i}: {p}" for i, p in missing[:3])
        raise HftlError(
            f"The {split} split names {len(missing)} image file(s) that do not exist ({shown}"
            f"{' ...' if len(missing) > 3 else ''}). Relative paths start from `{base}`; set `image_root` to the "
            "folder they are relative to, or fix the paths."
        )
    return ds.remove_columns(column).add_column(column, paths)


# ---------------------------------------------------------------- decoding and checking


def describe(value) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return "an embedded image"


def decode(value, mode: str = "RGB") -> Image.Image:
    """A stored image (Image(decode=False) value, path or PIL image) as a fully loaded image in `mode`."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict) and value.get("bytes") is not None:
        image = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        image = Image.open(value["path"])
    elif isinstance(value, str):
        image = Image.open(value)
    else:
        raise ValueError("no image data")
    image.load()  # decode now: truncated or corrupt data fails here, not later
    return convert(image, mode)


def convert(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, I;16, CMYK ...) as `mode`; transparent areas become white."""
    if image.mode == mode:
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" else 1.0  # 16-bit range, or floats in [0, 1]: one scale for every image
        image = Image.fromarray((np.clip(array / top, 0, 1) * 255).round().astype(np.uint8))
    return image.convert(mode)


def check_images(raw: DatasetDict, column: str, mode: str) -> DatasetDict:
    """Decode every image once before training; bad ones stop the run (`error`) or are dropped (`skip`)."""
    from tqdm.auto import tqdm

    out = DatasetDict()
    for split, ds in raw.items():
        bad: list[tuple[int, str, str]] = []
        chunk = 256  # a slice of the column at a time: embedded image bytes need not all sit in memory
        with tqdm(total=len(ds), desc=f"Checking {split} images", disable=len(ds) < 2000) as progress:
            for start in range(0, len(ds), chunk):
                for offset, value in enumerate(ds[start : start + chunk][column]):
                    try:
                        decode(value)
                    except Exception as err:  # PIL raises many types for unreadable data
                        bad.append((start + offset, describe(value), first_line(err)))
                progress.update(min(chunk, len(ds) - start))
        if bad and mode == "error":
            first = bad[0]
            raise HftlError(
                f"{len(bad)} of {len(ds)} images in the {split} split cannot be read; the first is {first[1]} "
                f"(row {first[0]}: {first[2]}). Fix or remove those files, or pass `--bad_images skip` to drop "
                "them and count them."
            )
        if bad:
            print(f"hftl: skipped {len(bad)} unreadable images in the {split} split (bad_images: skip), e.g. {bad[0][1]}.")
            keep = sorted(set(range(len(ds))) - {i for i, _, _ in bad})
            if not keep:
                raise HftlError(f"No image in the {split} split can be read. Check the files.")
            ds = ds.select(keep)
        out[split] = ds
    return out


# ---------------------------------------------------------------- preprocessing


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
        if data.image_size:  # one size for the whole model: keep the processor's resize-to-crop ratio
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
        self.crop_min_scale = data.crop_min_scale
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
        width, height = image.size
        area = width * height
        box = None
        for _ in range(10 if self.crop_min_scale < 1 else 0):  # crop_min_scale 1: the whole image, only resized
            target = area * float(torch.empty(1).uniform_(self.crop_min_scale, 1.0))
            aspect = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3))))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                box = (left, top, left + w, top + h)
                break
        if box is None:  # fall back to the whole image
            box = (0, 0, width, height)
        image = image.resize((w_out, h_out), resample=self.resample, box=box)
        if self.hflip and float(torch.rand(1)) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy((array * self.scale - self.mean) / self.std)

    def transform(self, column: str, train: bool):
        """A `with_transform` function: stored images -> `pixel_values` (and `labels`)."""

        def apply(batch: dict) -> dict:
            pixels = []
            for value in batch[column]:
                try:
                    image = decode(value, self.mode)
                except Exception as err:
                    raise HftlError(
                        f"Image {describe(value)} cannot be read ({err}). Fix or remove it, or pass `--bad_images skip`."
                    ) from None
                image = self.train_image(image) if train else self.eval_image(image)
                pixels.append(self.to_tensor(image))
            out = {"pixel_values": pixels}
            if "labels" in batch:
                out["labels"] = batch["labels"]
            return out

        return apply


# ---------------------------------------------------------------- model input size


def set_image_size(model, side: int) -> None:
    """Make the model take `side` x `side` images: resample a fixed position table once (ViT, DeiT, ...).

    DINOv2 interpolates its table on every forward and needs nothing. The new table is saved with
    the model and `config.image_size` is updated, so the saved folder takes that size natively.
    """
    config = model.config
    base = model.base_model
    embeddings = getattr(base, "embeddings", None)
    patch = getattr(getattr(embeddings, "patch_embeddings", None), "patch_size", None) or getattr(config, "patch_size", None)
    if embeddings is None or patch is None:
        raise HftlError(f"`{type(model).__name__}` has no patch embeddings; hftl cannot set `image_size` for it.")
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
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
