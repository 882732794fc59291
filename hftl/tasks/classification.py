"""Single- and multi-label classification: the label set, label encoding and metrics, for every task.

Labels come from the dataset's ClassLabel feature, from `class_names`, or else from the values in
the training split; every class is named in the model config (`id2label`/`label2id`), so the
saved folder works in a `pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from datasets import ClassLabel, DatasetDict, Sequence

from hftl.errors import HftlError
from hftl.tasks.base import Task

if TYPE_CHECKING:
    from hftl.config import RunConfig


@dataclass
class Labels:
    names: list[str]
    multi_label: bool
    column: str
    declared: bool = False  # the set came from `class_names`, not from the training split

    @property
    def problem_type(self) -> str:
        return "multi_label_classification" if self.multi_label else "single_label_classification"


def _is_multi_label(raw: DatasetDict, config: RunConfig) -> bool:
    feature = raw["train"].features[config.data.label_column]
    return isinstance(feature, (Sequence, list)) or config.data.label_separator is not None


def _values(ds, config: RunConfig, multi: bool) -> list:
    column = ds[config.data.label_column]
    if multi and config.data.label_separator is not None:
        sep = config.data.label_separator
        return [[x.strip() for x in str(v).split(sep) if x.strip()] if v is not None else [] for v in column]
    return list(column)


def _class_names(raw: DatasetDict, config: RunConfig, multi: bool) -> list[str]:
    feature = raw["train"].features[config.data.label_column]
    inner = getattr(feature, "feature", feature)
    given = [str(n) for n in config.data.class_names]
    if isinstance(inner, ClassLabel):
        if given and given != list(inner.names):
            raise HftlError(
                f"class_names {given} differ from the dataset's own classes {list(inner.names)} (in that order). "
                "Drop `class_names` or list the dataset's classes."
            )
        return list(inner.names)
    if given:
        if len(set(given)) != len(given):
            raise HftlError(f"class_names repeats a name: {given}. List each class once.")
        return given
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


def labelled(raw: DatasetDict, config: RunConfig) -> tuple[DatasetDict, Labels]:
    """Encode the label column of every split as `labels` (ids, or multi-hot rows) and check it."""
    multi = _is_multi_label(raw, config)
    if not multi:
        raw = _drop_unlabelled(raw, config)
    names = _class_names(raw, config, multi)
    if not multi and len(names) < 2:
        raise HftlError(
            f"The training data has {len(names)} class ({', '.join(names)}) in `{config.data.label_column}`: "
            "classification needs at least 2. Check `label_column` and the data."
        )
    labels = Labels(names, multi, config.data.label_column, declared=bool(config.data.class_names))
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
        return index.get(str(v), -1)  # -1: not in the label set, reported by _check_unseen

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
    for split in ("train", "validation", "test"):
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
        if unknown and labels.declared:
            shown = ", ".join(f"`{n}`" for n in sorted(unknown)[:10]) + (" ..." if len(unknown) > 10 else "")
            raise HftlError(
                f"The {split} split has labels that are not in the label set ({', '.join(labels.names[:20])}"
                f"{' ...' if len(labels.names) > 20 else ''}): {shown}. Fix those rows, or add the labels to "
                "`class_names`."
            )
        unseen = _used_classes(column, labels) - seen if split != "train" and not labels.declared else set()
        if unseen or unknown:
            names = sorted({labels.names[i] for i in unseen} | unknown)
            shown = ", ".join(f"`{n}`" for n in names[:10]) + (" ..." if len(names) > 10 else "")
            raise HftlError(
                f"The {split} split has labels never seen in training: {shown}. Check `label_column`, or make "
                "the training data cover every class (a stratified split does)."
            )


def run_labels(model_config: dict, column: str) -> Labels:
    """The label set a saved classifier was trained on, in id order, from its config.json."""
    id2label = model_config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
    return Labels(names, model_config.get("problem_type") == "multi_label_classification", column, declared=True)


def known_labels(raw: DatasetDict, config: RunConfig, labels: Labels) -> DatasetDict:
    """New labelled data (`hftl evaluate`) as `labels` ids or multi-hot rows in a saved model's own label set. An
    empty label, or one the model never saw, is bad input: the model cannot be scored on it."""
    split, ds = next(iter(raw.items()))
    source = f"`{config.data.test_file}`" if config.data.test_file else f"the {split} split of `{config.data.dataset}`"
    start = source[0].upper() + source[1:]
    column = config.data.label_column
    feature = ds.features[column]
    inner = getattr(feature, "feature", feature)
    listed = isinstance(feature, (Sequence, list))
    if listed != labels.multi_label and not (labels.multi_label and config.data.label_separator):
        kind = "multi-label (lists of labels, or `label_separator`)" if labels.multi_label else "single-label"
        raise HftlError(f"The run is {kind}, but `{column}` in {source} holds "
                        f"{'lists' if listed else 'single values'}. Give data labelled like the training data.")
    empty = sum(1 for v in ds[column] if v is None or (isinstance(v, str) and not v.strip()) or v == -1)
    if empty:
        raise HftlError(f"{start} has {empty} rows with an empty label in `{column}`. Fill or drop them.")
    values = _values(ds, config, labels.multi_label)
    rows = values if labels.multi_label else [[v] for v in values]
    if isinstance(inner, ClassLabel):  # the data's own ids, by name into the model's
        rows = [[inner.names[x] for x in row] for row in rows]
    index = {name: i for i, name in enumerate(labels.names)}
    unseen = sorted({str(x) for row in rows for x in row} - set(index))
    if unseen:
        shown = ", ".join(f"`{n}`" for n in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise HftlError(
            f"{start} has labels the model never saw: {shown} (in `{column}`). The model's labels are "
            f"{', '.join(labels.names[:30])}{' ...' if len(labels.names) > 30 else ''}. Fix or drop those rows, or "
            "evaluate a run trained with those labels."
        )
    if labels.multi_label:
        encoded = [[1.0 if i in hot else 0.0 for i in range(len(labels.names))]
                   for hot in ({index[str(x)] for x in row} for row in rows)]
    else:
        encoded = [index[str(row[0])] for row in rows]
    ds = ds.remove_columns("labels") if "labels" in ds.column_names else ds
    return DatasetDict({split: ds.add_column("labels", encoded)})


def _used_classes(column, labels: Labels) -> set[int]:
    if labels.multi_label:
        return {i for row in column if row is not None for i, v in enumerate(row) if v}
    return {v for v in column if v is not None and v >= 0}


class ClassificationTask(Task):
    """Single- and multi-label classification metrics, shared by the classification tasks."""

    def compute_metrics_fn(self, labels: Labels):
        return classification_metrics(labels)

    def best_metric(self, labels: Labels) -> str:
        return "f1_micro" if labels.multi_label else "accuracy"

    def metric_names(self, labels: Labels) -> list[str]:
        return ["f1_micro", "subset_accuracy"] if labels.multi_label else ["accuracy", "f1_macro"]


def classification_metrics(labels: Labels):
    from hftl import metrics  # evaluate, imported where metrics are computed: `hftl plan` needs none

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
