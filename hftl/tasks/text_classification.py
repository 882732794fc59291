"""Text classification: single sentences or pairs, single-label or multi-label.

Labels and metrics are shared with the other classification tasks (tasks/classification.py).
Padding is dynamic (per batch): padding every example to max_length wastes most of the compute
on short texts. With torch_compile each batch is padded up to a multiple of `pad_to_multiple_of`
(16 by default there): a few length buckets, so CUDA graphs (compile modes reduce-overhead and
max-autotune record one per shape) see a bounded set of shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from datasets import DatasetDict
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hftl.data.sources import load_split, load_splits, sample_of
from hftl.errors import BadRow, HftlError
from hftl.tasks import checkpoints
from hftl.tasks.base import Capabilities, Loaded
from hftl.tasks.classification import ClassificationTask, Labels, known_labels, labelled

if TYPE_CHECKING:
    from hftl.config import RunConfig


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


def pad_multiple(config: RunConfig) -> int:
    """`pad_to_multiple_of`, or its default: 16 under torch_compile, else 1 (pad to the batch's longest only)."""
    given = config.data.pad_to_multiple_of
    return given if given is not None else (16 if config.training.torch_compile else 1)


class Padding:
    """Pads a batch to its longest text rounded up to a multiple of `multiple`, never past `limit` (the model's
    positions end there): dynamic padding in length buckets."""

    def __init__(self, tokenizer, multiple: int = 1, limit: int | None = None):
        self.tokenizer, self.multiple, self.limit = tokenizer, multiple, limit

    def __call__(self, features: list[dict]):
        longest = max(len(f["input_ids"]) for f in features)
        target = -(-longest // self.multiple) * self.multiple
        if self.limit is not None:
            target = max(longest, min(target, self.limit))
        return self.tokenizer.pad(features, padding="max_length", max_length=target, return_tensors="pt")


class TextClassification(ClassificationTask):
    name = "text-classification"
    pipeline_task = "text-classification"
    capabilities = Capabilities(
        cached_features=True,  # the heads read only the first token of the last hidden state; no augmentation
        text_embeddings=True, source_batches=True, replay=True, lora_task_type="SEQ_CLS", compare=True,
        finished_runs=True,
    )
    model_kind = "text"
    training_defaults = {"train_sampling_strategy": "group_by_length"}  # length-grouped batches waste little on padding

    def cache_blockers(self, config: RunConfig, model=None) -> list[str]:
        """A head that pools every token (ModernBERT's `classifier_pooling: mean`) needs them all; cached text
        features keep the first token only (the model's own pooling stays the one path, never an hftl copy)."""
        if getattr(getattr(model, "config", None), "classifier_pooling", "cls") == "mean":
            return ["the head pools every token (classifier_pooling mean), and cached text features keep only the "
                    "first (`classifier_pooling: cls` caches)"]
        return []

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, Labels]:
        stratify = None if config.data.label_separator else config.data.label_column  # multi-label: no strata
        raw = load_splits(config.data, config.model.trust_remote_code, stratify_column=stratify)
        _check_columns(raw, config)
        return labelled(raw, config)

    def build_model(self, config: RunConfig, labels: Labels) -> Loaded:
        model, tokenizer = checkpoints.load(config, AutoModelForSequenceClassification, AutoTokenizer, labels,
                                            expected="a Hub id, a folder with config.json, or builtin:minilm-l6",
                                            kind=self.model_kind)
        limit = min(config.data.max_length, getattr(tokenizer, "model_max_length", None) or config.data.max_length)
        return Loaded(model, tokenizer, labels, extra={"padding": Padding(tokenizer, pad_multiple(config), limit)})

    def encode(self, config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
        data, tokenizer = config.data, loaded.processor
        max_length = self.max_length(config, tokenizer)

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

    def eval_split(self, config: RunConfig, labels: Labels, split: str | None) -> DatasetDict:
        raw = load_split(config.data, split, config.model.trust_remote_code)
        _check_columns(raw, config)
        return known_labels(raw, config, labels)

    def input_columns(self, config: RunConfig) -> dict[str, str]:
        data = config.data
        return {"text_column": data.text_column, **({"text_pair_column": data.text_pair_column}
                                                    if data.text_pair_column else {})}

    def row_inputs(self, config: RunConfig, loaded: Loaded):
        """Tokenised as `encode` tokenises eval data (same truncation; the collator pads each batch)."""
        tokenizer, columns = loaded.processor, self.input_columns(config)
        max_length = self.max_length(config, tokenizer)

        def one(row: dict):
            texts = [row.get(column) for column in columns.values()]
            for column, text in zip(columns.values(), texts):
                if not isinstance(text, str) or not text.strip():
                    raise BadRow(f"empty text in `{column}`" if text is None or isinstance(text, str)
                                 else f"`{column}` holds {type(text).__name__}, not text")
            return tokenizer(*texts, truncation=True, max_length=max_length)

        return one

    @staticmethod
    def max_length(config: RunConfig, tokenizer) -> int:
        """`max_length`, capped at the model's positions: past its position table the model would index out of range."""
        wanted = config.data.max_length
        limit = getattr(tokenizer, "model_max_length", None) or wanted
        if limit < wanted:
            print(f"hftl: max_length {wanted} exceeds the model's {limit} positions; using {limit}.")
        return min(wanted, limit)

    def collator(self, loaded: Loaded):
        return loaded.extra.get("padding") or Padding(loaded.processor)

    def source_batches(self, config: RunConfig, loaded: Loaded, name: str, samples: int, batch_size: int = 16):
        """Tokenised like the task's inputs; all read and checked here, before the first batch."""
        data = config.data
        train = sample_of(config.data, name, samples)
        if data.text_column not in train.column_names:
            raise HftlError(
                f"`{name}` has no `{data.text_column}` column (from `text_column`); its columns are "
                f"{', '.join(train.column_names)}. Give data with the task's text column."
            )
        texts = [t or "" for t in train[data.text_column]]
        return [
            loaded.processor(texts[start : start + batch_size], truncation=True, max_length=data.max_length,
                             padding=True, return_tensors="pt")
            for start in range(0, len(texts), batch_size)
        ]

    def describe_inputs(self, config: RunConfig) -> str:
        data = config.data
        pair = f" + `{data.text_pair_column}`" if data.text_pair_column else ""
        return f"text column `{data.text_column}`{pair}"

