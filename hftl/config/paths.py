"""The recipe's paths, checked with the rest of the recipe and before any heavy import: a data file
that is missing or a folder, a local dataset or model folder that does not exist, an image root
that is no folder. A Hub name (`name`, `owner/name`) cannot be checked offline and is left to the
loaders; a name that can only be a path (absolute, `./`, `~`, a data file's suffix, more than one
`/`) is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hftl.errors import HftlError

BUILTIN = "builtin:"
DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
FILE_KEYS = ("train_file", "validation_file", "test_file")
DATASET_KEYS = ("dataset", "ewc_data", "replay_data", "source_eval")


def check(values: Mapping[str, Any]) -> None:
    """Every path the values name; a relative path starts at the working directory, as the loaders' do."""
    for name in FILE_KEYS:
        if values.get(name):
            _data_file(name, str(values[name]))
    for name in DATASET_KEYS:
        if values.get(name):
            _dataset(name, str(values[name]))
    if values.get("model_name_or_path"):
        _model(str(values["model_name_or_path"]))
    root = values.get("image_root")
    if root and not Path(str(root)).is_dir():
        state = "is a file" if Path(str(root)).exists() else "does not exist"
        raise HftlError(f"image_root `{root}` {state}: it must be the folder that relative image paths start from. "
                        "Fix the path, or drop `image_root` (paths then start at the data file's folder).")


def is_local_file(name: str | None) -> bool:
    return bool(name) and Path(str(name)).is_file()


def looks_local(name: str) -> bool:
    """True for a name that can only be a local path, never a Hub id."""
    return (name.startswith(("/", "./", "../", "~", "\\")) or name in (".", "..") or name.count("/") > 1
            or "\\" in name or name.lower().endswith(DATA_SUFFIXES))


def _data_file(key: str, path: str) -> None:
    split = key.removesuffix("_file")
    target = Path(path).expanduser()
    if target.is_dir():
        raise HftlError(
            f"The {split} file `{path}` is a folder, not a file. Set `{key}` to a {', '.join(DATA_SUFFIXES)} file in "
            "it, or `dataset` to the folder itself (an image folder, or a dataset saved with save_to_disk)."
        )
    if not target.is_file():
        raise HftlError(f"The {split} file `{path}` does not exist. Check the path in `{key}`.")


def _dataset(key: str, name: str) -> None:
    if name.startswith(BUILTIN) or Path(name).expanduser().exists() or not looks_local(name):
        return
    raise HftlError(
        f"`{key}` names the local path `{name}`, which does not exist. Check the path (a Hub dataset is named `name` "
        "or `owner/name`; built-in ones `builtin:NAME`)."
    )


def _model(name: str) -> None:
    if name.startswith(BUILTIN):
        return
    path = Path(name).expanduser()
    if path.is_file():
        raise HftlError(
            f"model_name_or_path `{name}` is a file; it must be the folder that holds the model (config.json and its "
            "weights, as save_pretrained writes them), a Hub id or builtin:NAME."
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise HftlError(
            f"The model folder `{name}` has no config.json, so it holds no saved transformers model. Point "
            "`model_name_or_path` at the folder save_pretrained wrote (or a checkpoint-N folder of a run)."
        )
    if not path.exists() and looks_local(name):
        raise HftlError(
            f"The model folder `{name}` (`model_name_or_path`) does not exist. Check the path, or give a Hub id "
            "(`name` or `owner/name`) or builtin:NAME."
        )
