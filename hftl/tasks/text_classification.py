"""Text classification: single sentences or pairs, single-label or multi-label.

Labels are read from the training split; every class is named in the model config
(`id2label`/`label2id`), so the saved folder works in `pipeline("text-classification")`.
Padding is dynamic (per batch): padding every example to max_length wastes most of the compute
on short texts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, DatasetDict, Sequence
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from hftl import builtin, metrics
from hftl.config import RunConfig
from hftl.data import load_splits
from hftl.errors import HftlError

PIPELINE_TASK = "text-classification"
CACHEABLE = True  # the heads read only the first token of the last hidden state; no augmentation


@dataclass
class Labels:
    names: list[str]
    multi_label: bool
    column: str

    @property
    def problem_type(self) -> str:
        return "multi_label_classification" if self.multi_label else "single_label_classification"


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


def _is_multi_label(raw: DatasetDict, config: RunConfig) -> bool:
    feature = raw["train"].features[config.data.label_column]
    return isinstance(feature, (Sequence, list)) or config.data.label_separator is not None


def _values(ds, config: RunConfig, multi: bool) -> list:
    column = ds[config.data.label_column]
    if multi and config.data.label_separator is not None:
        sep = config.data.label_separator
        return [[x.strip() for x in str(v).split(sep) if x.strip()] if v is not None else [] for v in column]
    return list(column)


def _label_names(raw: DatasetDict, config: RunConfig, multi: bool) -> list[str]:
    feature = raw["train"].features[config.data.label_column]
    inner = getattr(feature, "feature", feature)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    values = _values(raw["train"], config, multi)
    flat = {x for v in values for x in v} if multi else set(values)
    if None in flat:
        raise HftlError(f"The label column `{config.data.label_column}` has empty values in train. Fill or drop them.")
    return [str(v) for v in sorted(flat)]


def _drop_unlabelled(raw: DatasetDict, config: RunConfig) -> DatasetDict:
    """Hub benchmarks (GLUE) ship test splits with hidden labels stored as -1: they cannot be scored."""
    for split in ("validation", "test"):
        if split in raw and set(raw[split][config.data.label_column]) <= {-1}:
            if split == "validation":
                raise HftlError("The validation split has no labels (all -1). Give a labelled `validation_file`.")
            print(f"hftl: the {split} split has hidden labels (-1); it is not evaluated.")
            del raw[split]
    return raw


def load_data(config: RunConfig) -> tuple[DatasetDict, Labels]:
    stratify = None if config.data.label_separator else config.data.label_column  # multi-label: no strata
    raw = load_splits(config.data, config.model.trust_remote_code, stratify_column=stratify)
    _check_columns(raw, config)
    multi = _is_multi_label(raw, config)
    if not multi:
        raw = _drop_unlabelled(raw, config)
    names = _label_names(raw, config, multi)
    if not multi and len(names) < 2:
        raise HftlError(
            f"The training data has {len(names)} class ({', '.join(names)}) in `{config.data.label_column}`: "
            "classification needs at least 2. Check `label_column` and the data."
        )
    labels = Labels(names, multi, config.data.label_column)
    raw = DatasetDict({split: _encode_labels(ds, config, labels) for split, ds in raw.items()})
    _check_unseen(raw, labels)
    return raw, labels


def _encode_labels(ds, config: RunConfig, labels: Labels):
    feature = ds.features[config.data.label_column]
    is_class_label = isinstance(getattr(feature, "feature", feature), ClassLabel)
    index = {name: i for i, name in enumerate(labels.names)}
    values = _values(ds, config, labels.multi_label)

    def to_id(v):
        if is_class_label:
            return int(v)
        return index.get(str(v), -1)

    if labels.multi_label:
        encoded = []
        for row in values:
            ids = [to_id(v) for v in row]
            if -1 in ids:
                encoded.append(None)
                continue
            hot = [0.0] * len(labels.names)
            for i in ids:
                hot[i] = 1.0
            encoded.append(hot)
    else:
        encoded = [to_id(v) for v in values]
    return ds.add_column("labels", encoded) if "labels" not in ds.column_names else ds.remove_columns("labels").add_column("labels", encoded)


def _check_unseen(raw: DatasetDict, labels: Labels) -> None:
    seen = _used_classes(raw["train"]["labels"], labels)
    for split in ("validation", "test"):
        if split not in raw:
            continue
        column = raw[split]["labels"]
        originals = raw[split][labels.column]
        empty = sum(1 for v in originals if v is None or (isinstance(v, str) and not v.strip()))
        if empty:
            raise HftlError(
                f"The {split} split has {empty} rows with an empty label in `{labels.column}`. Fill or drop them."
            )
        unknown = {str(v) for v, code in zip(originals, column) if code is None or code == -1}
        unseen = _used_classes(column, labels) - seen
        if unknown or unseen:
            names = sorted({labels.names[i] for i in unseen} | unknown)
            shown = ", ".join(f"`{n}`" for n in names[:10]) + (" ..." if len(names) > 10 else "")
            raise HftlError(
                f"The {split} split has labels never seen in training: {shown}. Check `label_column`, or make "
                "the training data cover every class (a stratified split does)."
            )


def _used_classes(column, labels: Labels) -> set[int]:
    if labels.multi_label:
        return {i for row in column if row is not None for i, v in enumerate(row) if v}
    return {v for v in column if v is not None and v >= 0}


def model_source(config: RunConfig) -> str:
    name = config.model.model_name_or_path
    return builtin.model_path(name) if builtin.is_builtin(name) else name


def build_model(config: RunConfig, labels: Labels):
    source = model_source(config)
    common = {"revision": config.model.revision, "trust_remote_code": config.model.trust_remote_code}
    try:
        model_config = AutoConfig.from_pretrained(
            source,
            num_labels=len(labels.names),
            id2label=dict(enumerate(labels.names)),
            label2id={n: i for i, n in enumerate(labels.names)},
            problem_type=labels.problem_type,
            **common,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        kwargs = {"attn_implementation": config.model.attn_implementation} if config.model.attn_implementation else {}
        if config.model.from_scratch:
            model = AutoModelForSequenceClassification.from_config(
                model_config, trust_remote_code=config.model.trust_remote_code, **kwargs
            )
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, config=model_config, ignore_mismatched_sizes=True, **common, **kwargs
            )
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HftlError(
            f"Could not load model `{config.model.model_name_or_path}`: {first}. Check `model_name_or_path` "
            "(a Hub id, a folder with config.json, or builtin:minilm-l6)."
        ) from None
    return model, tokenizer


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


def compute_metrics_fn(labels: Labels):
    accuracy, f1 = metrics.load("accuracy"), metrics.load("f1")

    def compute(eval_pred):
        logits, refs = eval_pred.predictions, eval_pred.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        if labels.multi_label:
            pred = (logits > 0).astype(int)  # sigmoid(logit) > 0.5
            refs = refs.astype(int)
            return {
                "f1_micro": f1.compute(predictions=pred.ravel(), references=refs.ravel(), average="binary")["f1"],
                "subset_accuracy": float(np.mean(np.all(pred == refs, axis=1))),
            }
        pred = logits.argmax(-1)
        return {
            "accuracy": accuracy.compute(predictions=pred, references=refs)["accuracy"],
            "f1_macro": f1.compute(
                predictions=pred, references=refs, average="macro"  # over the classes present in the split
            )["f1"],
        }

    return compute


def best_metric(labels: Labels) -> str:
    return "f1_micro" if labels.multi_label else "accuracy"


def metric_names(labels: Labels) -> list[str]:
    return ["f1_micro", "subset_accuracy"] if labels.multi_label else ["accuracy", "f1_macro"]
