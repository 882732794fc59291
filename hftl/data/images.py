"""Images for vision tasks: where they come from, and checking that every one can be read.

Sources: an image folder (`root/<class>/*.jpg`, optionally under `train/`, `validation/`, `test/`),
a csv/json/parquet whose `image_column` holds paths (relative to `image_root` or the file's
folder), a parquet file or saved DatasetDict with an Image column, or a Hub dataset with an Image column. Every image
column becomes `datasets.Image(decode=False)`, so hftl decodes each image itself: a file that
cannot be read is named in the error instead of failing deep inside a DataLoader worker.

Turning them into model inputs is data/preprocess.py.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageFile

from hftl.errors import HftlError, first_line

if TYPE_CHECKING:
    from hftl.config import DataArgs

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


def confinement(data: DataArgs, base: str | None) -> str | None:
    """The folder every image path must stay in: `image_root`, the data file's folder, an image folder or saved
    dataset itself, else the working directory. None: `allow_outside_paths` lifts it."""
    if data.allow_outside_paths:
        return None
    folder = data.dataset if data.dataset and Path(data.dataset).is_dir() else None
    return os.path.realpath(data.image_root or base or folder or os.getcwd())


def prepare_column(raw: DatasetDict, data: DataArgs, base_dir: str | None) -> DatasetDict:
    """The image column of every split as Image(decode=False), with paths made absolute and checked, and kept
    inside the data's folder (`confinement`)."""
    column = data.image_column
    inside = confinement(data, base_dir)
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
            if inside is not None:
                _check_inside(ds[column], inside, split)
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


def _check_inside(paths: list[str], root: str, split: str) -> None:
    """A data file must not make hftl read files anywhere: absolute paths elsewhere, `../` and symlinks out
    of `root` are refused (the real path counts, after every link is followed)."""
    outside = []
    for i, path in enumerate(paths):
        real = os.path.realpath(path)
        if os.path.commonpath([real, root]) != root:
            outside.append((i, path, real))
    if outside:
        i, path, real = outside[0]
        link = f", a link to {real}" if real != os.path.abspath(path) else ""
        raise HftlError(
            f"The {split} split names {len(outside)} image file(s) outside `{root}` (row {i}: {path}{link}). Image "
            "paths are kept inside the data's folder, so a data file cannot make hftl read files elsewhere. Move "
            "the images under it, set `image_root` to a folder that holds them, or set `allow_outside_paths: true` "
            "if you trust the data file."
        )


# ---------------------------------------------------------------- decoding and checking


def describe(value) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return "an embedded image"


class TooLarge(ValueError):
    """An image over `max_image_pixels`: refused from its header, before a byte of it is decoded."""


def decode(value, mode: str = "RGB", max_pixels: int | None = None) -> Image.Image:
    """A stored image (Image(decode=False) value, path or PIL image) as a fully loaded image in `mode`;
    one over `max_pixels` (width x height, read from its header) raises TooLarge instead."""
    with warnings.catch_warnings():  # PIL's bomb warning: the size is judged below, against the recipe's limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
    if max_pixels and image.width * image.height > max_pixels:
        raise TooLarge(f"{image.width}x{image.height} = {image.width * image.height:,} pixels, over max_image_pixels "
                       f"{max_pixels:,}")
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


def check_images(raw: DatasetDict, column: str, mode: str, max_pixels: int | None = None) -> DatasetDict:
    """Decode every image once before training; bad ones (unreadable, or over `max_pixels`) stop the run
    (`error`) or are dropped (`skip`)."""
    from tqdm.auto import tqdm

    out = DatasetDict()
    for split, ds in raw.items():
        bad: list[tuple[int, str, str, bool]] = []  # row, file, reason, too large
        chunk = 256  # a slice of the column at a time: embedded image bytes need not all sit in memory
        with tqdm(total=len(ds), desc=f"Checking {split} images", disable=len(ds) < 2000) as progress:
            for start in range(0, len(ds), chunk):
                for offset, value in enumerate(ds[start : start + chunk][column]):
                    try:
                        decode(value, max_pixels=max_pixels)
                    except Exception as err:  # PIL raises many types for unreadable data
                        bad.append((start + offset, describe(value), first_line(err), isinstance(err, TooLarge)))
                progress.update(min(chunk, len(ds) - start))
        if bad and mode == "error":
            first = bad[0]
            if first[3]:
                raise HftlError(
                    f"{len(bad)} of {len(ds)} images in the {split} split are too large to read; the first is {first[1]} "
                    f"(row {first[0]}: {first[2]}). A small file can decode to gigabytes, so images over "
                    "`max_image_pixels` are refused: downscale them, raise `max_image_pixels` if you trust them, or "
                    "pass `--bad_images skip` to drop them and count them."
                )
            raise HftlError(
                f"{len(bad)} of {len(ds)} images in the {split} split cannot be read; the first is {first[1]} "
                f"(row {first[0]}: {first[2]}). Fix or remove those files, or pass `--bad_images skip` to drop "
                "them and count them."
            )
        if bad:
            print(f"hftl: skipped {len(bad)} unreadable images in the {split} split (bad_images: skip), e.g. {bad[0][1]}.")
            keep = sorted(set(range(len(ds))) - {b[0] for b in bad})
            if not keep:
                raise HftlError(f"No image in the {split} split can be read. Check the files.")
            ds = ds.select(keep)
        out[split] = ds
    return out
