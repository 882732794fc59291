"""Text classification: single sentences or pairs, single-label or multi-label.

Labels and metrics are shared with the other classification tasks (tasks/classification.py).
Padding is dynamic (per batch): padding every example to max_length wastes most of the compute
on short texts.
"""

from __future__ import annotations

from datasets import DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hftl.config import RunConfig
from hftl.data.sources import load_splits
from hftl.errors import HftlError
from hftl.tasks import checkpoints
from hftl.tasks.checkpoints import model_source  # noqa: F401  (the task interface)
from hftl.tasks.classification import Labels, best_metric, compute_metrics_fn, labelled, metric_names  # noqa: F401

PIPELINE_TASK = "text-classification"
CACHEABLE = True  # the heads read only the first token of the last hidden state; no augmentation


def _check_columns(raw: DatasetDict, config: RunConfig) -> None:
    data = config.data
    needed = {"text_column": data.text_column, "label_column": data.label_column}
    if data.text_pair_column:
        needed["text_pair_column"] = data.text_pair_column
    for split, ds in raw.items():
        for key, column in needed.items():
            if column not in ds.column_names:
                raise HftlError(
                    f"Column `{column}` (from `{key}`) is not in the {split} split. Its columns are: "
                    f"{', '.join(ds.column_names)}. Set `--{key}` to one of them."
                )
            dtype = getattr(ds.features[column], "dtype", None)
            if key != "label_column" and dtype not in ("string", "large_string"):
                raise HftlError(
                    f"Column `{column}` (from `{key}`) holds {dtype or type(ds.features[column]).__name__} values, "
                    f"not text. Set `--{key}` to a text column (columns: {', '.join(ds.column_names)})."
                )


def load_data(config: RunConfig) -> tuple[DatasetDict, Labels]:
    stratify = None if config.data.label_separator else config.data.label_column  # multi-label: no strata
    raw = load_splits(config.data, config.model.trust_remote_code, stratify_column=stratify)
    _check_columns(raw, config)
    return labelled(raw, config)


def build_model(config: RunConfig, labels: Labels):
    return checkpoints.load(config, AutoModelForSequenceClassification, AutoTokenizer, labels,
                            expected="a Hub id, a folder with config.json, or builtin:minilm-l6")


def encode(config: RunConfig, raw: DatasetDict, tokenizer) -> DatasetDict:
    data = config.data
    limit = getattr(tokenizer, "model_max_length", None) or data.max_length
    max_length = min(data.max_length, limit)  # past the position table the model would index out of range
    if max_length < data.max_length:
        print(f"hftl: max_length {data.max_length} exceeds the model's {limit} positions; using {limit}.")

    def tokenize(batch):
        first = [t if t is not None else "" for t in batch[data.text_column]]
        second = None
        if data.text_pair_column:
            second = [t if t is not None else "" for t in batch[data.text_pair_column]]
        return tokenizer(first, second, truncation=True, max_length=max_length)

    out = DatasetDict()
    for split, ds in raw.items():
        drop = [c for c in ds.column_names if c != "labels"]
        out[split] = ds.map(tokenize, batched=True, remove_columns=drop, desc=f"Tokenizing {split}")
    return out


def collator(tokenizer):
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


