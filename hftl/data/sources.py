"""Where the data comes from: a built-in dataset, local files, or a Hub dataset.

Every source ends as a DatasetDict with `train`, `validation` and maybe `test`. A missing
validation split is carved from train with `split_seed`, so it stays put across runs.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
from datasets import ClassLabel, DatasetDict, Value

from hftl.data import builtin
from hftl.data import files as data_files
from hftl.errors import HftlError, first_line

if TYPE_CHECKING:
    from hftl.config import DataArgs

BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
STRATA = "__hftl_strata"
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}


def _builder(path: str) -> tuple[str, dict]:
    suffix = Path(path).suffix.lower()
    if suffix not in BUILDERS:
        raise HftlError(
            f"Data file `{path}` has an unsupported type `{suffix or '(none)'}`. Use one of: {', '.join(BUILDERS)}."
        )
    return BUILDERS[suffix], ({"delimiter": "\t"} if suffix == ".tsv" else {})


def _local_files(data: DataArgs) -> dict[str, str]:
    files = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
    if data.dataset and Path(data.dataset).is_file():
        files["train"] = files["train"] or data.dataset
    files = {split: f for split, f in files.items() if f}
    for split, path in files.items():
        data_files.check(split, path)
    return files


def is_saved_dataset(folder: str) -> bool:
    """A folder written by `save_to_disk`."""
    return any(Path(folder, n).is_file() for n in ("dataset_dict.json", "dataset_info.json", "state.json"))


def _read(data: DataArgs, trust_remote_code: bool, read_folder=None) -> DatasetDict:
    if builtin.is_builtin(data.dataset):
        return builtin.load_dataset(data.dataset)
    if data.dataset and Path(data.dataset).is_dir() and not (data.train_file or data.validation_file):
        if is_saved_dataset(data.dataset):
            loaded = datasets.load_from_disk(data.dataset)
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict(train=loaded)
        if read_folder is not None:
            return read_folder(data.dataset)
    files = _local_files(data)
    if files:
        builders = [_builder(f) for f in files.values()]
        if any(b != builders[0] for b in builders):
            raise HftlError("train/validation/test files must share one file type; convert them to the same format.")
        name, kwargs = builders[0]
        return _load(name, data_files=files, local=files, **kwargs)
    if not data.dataset:
        raise HftlError("No data given. Set `dataset` (Hub name, local file/folder or builtin:NAME) or `train_file`.")
    return _load(data.dataset, data.dataset_config, trust_remote_code=trust_remote_code or None)


def _load(*args, local: dict[str, str] | None = None, **kwargs) -> DatasetDict:
    """`datasets.load_dataset`; a failure on `local` files names the file and line, never the network."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    readers = logging.getLogger("datasets.packaged_modules")  # the csv/json readers log their failure as an error
    level = readers.level
    if local:
        readers.setLevel(logging.CRITICAL)  # ... which diagnose() below reports better, once
    try:
        loaded = datasets.load_dataset(*args, **kwargs)
    except HftlError:
        raise
    except Exception as err:  # the datasets library raises many types; the user needs the message
        if local:
            raise data_files.diagnose(local, err) from None
        raise HftlError(
            f"Could not load dataset `{args[0]}`: {first_line(data_files.root_cause(err))}. Check the name (and "
            "`dataset_config`), or your network; offline, use local files or a builtin: dataset."
        ) from None
    finally:
        readers.setLevel(level)
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict(train=loaded)
    return loaded


def load_splits(
    data: DataArgs, trust_remote_code: bool = False, stratify_column: str | None = None, read_folder=None
) -> DatasetDict:
    """Every source as train/validation(/test); `read_folder(path)` reads a plain folder (image tasks)."""
    raw = _read(data, trust_remote_code, read_folder)
    raw = DatasetDict({SPLIT_ALIASES.get(k, k): v for k, v in raw.items()})
    if "train" not in raw:
        raise HftlError(f"The data has no `train` split (splits: {', '.join(raw) or 'none'}). Name one `train`.")
    if len(raw["train"]) == 0:
        raise HftlError("The training data is empty (0 rows). Point `dataset`/`train_file` at data with examples.")
    if "validation" not in raw:
        raw = _carve_validation(raw, data, stratify_column)
    for split in list(raw):
        if split not in ("train", "validation", "test"):
            del raw[split]
    if data.max_train_samples:
        raw["train"] = raw["train"].shuffle(seed=data.split_seed).select(range(min(data.max_train_samples, len(raw["train"]))))
    if data.max_eval_samples:
        for split in ("validation", "test"):
            if split in raw:
                raw[split] = raw[split].select(range(min(data.max_eval_samples, len(raw[split]))))
    for split, ds in raw.items():
        if len(ds) == 0:
            raise HftlError(f"The {split} split is empty (0 rows). Give it examples or drop `{split}_file`.")
    return raw


def _carve_validation(raw: DatasetDict, data: DataArgs, stratify_column: str | None) -> DatasetDict:
    """Validation carved from train, stratified where every class has 2 rows; a class that would end up in
    validation alone stays in train. Label faults found here are the training data's, and named so."""
    train = raw["train"]
    n_val = int(round(len(train) * data.validation_split))
    if n_val < 1 or len(train) - n_val < 1:
        raise HftlError(
            f"The training data has {len(train)} rows: too few to carve a validation split of "
            f"{data.validation_split:.0%}. Give a `validation_file` or more data."
        )
    stratify, temporary = None, False
    feature = train.features.get(stratify_column) if stratify_column else None
    if isinstance(feature, Value):
        _check_labels(train[stratify_column], stratify_column, data)
    if isinstance(feature, ClassLabel):
        stratify = stratify_column
    elif isinstance(feature, Value):
        # plain string/int labels: stratify on a class-encoded copy, so every class is in both parts
        train = train.add_column(STRATA, [str(v) for v in train[stratify_column]]).class_encode_column(STRATA)
        stratify, temporary = STRATA, True
    if stratify:
        counts = Counter(train[stratify])
        if min(counts.values()) < 2 or n_val < len(counts):
            stratify = None
    parts = train.train_test_split(test_size=n_val, seed=data.split_seed, stratify_by_column=stratify)
    raw["train"], raw["validation"] = parts["train"], parts["test"]
    if feature is not None:
        raw = _keep_every_class_in_train(raw, STRATA if temporary else stratify_column)
    if temporary:
        raw["train"], raw["validation"] = raw["train"].remove_columns(STRATA), raw["validation"].remove_columns(STRATA)
    return raw


def describe_train(data: DataArgs) -> str:
    """Where the training rows come from, for messages about them."""
    if data.train_file:
        return f"the train file `{data.train_file}`"
    return f"the training data of `{data.dataset}`"


def _check_labels(values: list, column: str, data: DataArgs) -> None:
    """Empty labels in the rows a validation split is carved from are the training data's fault."""
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        raise HftlError(
            f"{describe_train(data)[0].upper()}{describe_train(data)[1:]} has {len(empty)} row(s) with an empty label "
            f"in `{column}` (the first is data row {empty[0] + 1}). Fill or drop them."
        )


def _keep_every_class_in_train(raw: DatasetDict, column: str) -> DatasetDict:
    """Rows of a class the carve left in validation only (it has too few rows to stratify) go back to train."""
    seen = set(raw["train"][column])
    alone = [i for i, v in enumerate(raw["validation"][column]) if v not in seen]
    if not alone or len(alone) == len(raw["validation"]):
        return raw
    moved = raw["validation"].select(alone)
    names = sorted({str(v) for v in moved[column]})
    print(f"hftl: {len(alone)} row(s) of class(es) {', '.join(names[:5])} kept in train: too few to stratify, they "
          "would have been in the carved validation split only.")
    keep = [i for i in range(len(raw["validation"])) if i not in set(alone)]
    raw["train"] = datasets.concatenate_datasets([raw["train"], moved])
    raw["validation"] = raw["validation"].select(keep)
    return raw


def other_data(data: DataArgs, name: str) -> DataArgs:
    """Settings to read another data set `name` with: the recipe's columns, split seed and image limits
    (paths, pixels), every other data key at its default (the recipe's own files, subsets, splits and
    image root are not its)."""
    return type(data)(dataset=name, text_column=data.text_column, image_column=data.image_column,
                      split_seed=data.split_seed, allow_outside_paths=data.allow_outside_paths,
                      max_image_pixels=data.max_image_pixels)


def sample_of(data: DataArgs, name: str, samples: int, read_folder=None):
    """Up to `samples` shuffled training rows of another data set `name`, read with the recipe's columns
    (EWC's Fisher data): the recipe's own files, subsets and image root do not apply to it."""
    train = load_splits(other_data(data, name), read_folder=read_folder)["train"]
    return train.shuffle(seed=0).select(range(min(samples, len(train))))


def load_split(data: DataArgs, split: str | None = None, trust_remote_code: bool = False,
               read_folder=None) -> DatasetDict:
    """One split of a data set as it is (nothing carved, nothing subsampled), for `hftl evaluate`: `split`, else
    test, else validation, else the only one. Returned as a one-split DatasetDict, so task code reads it like training
    data."""
    raw = _read(data, trust_remote_code, read_folder)
    raw = DatasetDict({SPLIT_ALIASES.get(k, k): v for k, v in raw.items()})
    if split is None:
        split = next((s for s in ("test", "validation") if s in raw), next(iter(raw)) if len(raw) == 1 else None)
    if split not in raw:
        wanted = f"no `{split}` split" if split else "several splits and none is test or validation"
        raise HftlError(f"The data has {wanted} (splits: {', '.join(raw) or 'none'}). Pass `--split NAME`.")
    if len(raw[split]) == 0:
        raise HftlError(f"The {split} split is empty (0 rows). Give data with examples.")
    return DatasetDict({split: raw[split]})
