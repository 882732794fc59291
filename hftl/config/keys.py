"""Every recipe key, declared once: its type, default, help and allowed values.

A key belongs to one of four dataclasses: `ModelArgs`, `DataArgs`, `TransferArgs` (hftl's) and
`transformers.TrainingArguments`. The help text and the allowed values (a `Literal` annotation,
or `choices` known at run time) live in the field's metadata: `hftl train --help`, the README's
key table (config/docs.py) and validation (config/rules.py) all read them from here.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments

from hftl.engine.freeze import STRATEGIES
from hftl.engine.towers import TOWER_STRATEGIES
from hftl.tasks import TASKS

Strategy = Literal[STRATEGIES]  # the engine's list (engine/freeze.py), spelled once
TowerStrategy = Literal[TOWER_STRATEGIES]
CacheMode = Literal["auto", "off", "memory", "disk"]
ClipMode = Literal["contrastive", "zero_shot", "linear_probe"]
BadImages = Literal["error", "skip"]


def key(default: Any = None, help: str = "", choices: tuple[str, ...] | None = None) -> Any:
    """A recipe key: its default and its help (shown by `hftl train --help` and in the README's key table).
    Allowed values come from a `Literal` annotation, or `choices` where they are known only at run time."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelArgs:
    model_name_or_path: str | None = key(None, "Hub id, local folder, or builtin:NAME (builtin:minilm-l6, "
                                         "builtin:dinov2-small, builtin:dual-encoder-small).")
    revision: str = key("main", "Hub revision (branch, tag or commit): pin one for reproducible runs.")
    trust_remote_code: bool = key(False, "Run code shipped with a checkpoint or dataset; off unless asked.")
    from_scratch: bool = key(False, "Random init of the same architecture, every layer training (strategy full): "
                                    "the no-transfer baseline.")
    attn_implementation: str | None = key(None, "Force `sdpa` or `eager`; unset: SDPA where the architecture "
                                                "supports it, else eager.")
    license: str | None = key(None, "The model card's license (a Hub license id, e.g. apache-2.0); unset: the base "
                                    "model's when hftl knows it (built-in models, a local card), else none.")


@dataclass
class DataArgs:
    dataset: str | None = key(None, "Hub dataset, local file, folder (a saved DatasetDict, or an image folder "
                                    "class/*.jpg), or builtin:NAME (builtin:bbc-news, builtin:fine-foods, "
                                    "builtin:mnist-5k).")
    dataset_config: str | None = key(None, "Hub dataset configuration name, e.g. `mrpc` for glue.")
    train_file: str | None = key(None, "Local csv, tsv, json, jsonl or parquet file, instead of `dataset`.")
    validation_file: str | None = key(None, "Local validation file (same type as train_file).")
    test_file: str | None = key(None, "Local test file (same type as train_file).")
    text_column: str = key("text", "Column with the text.")
    text_pair_column: str | None = key(None, "Second text column: makes it a sentence-pair task (NLI, paraphrase).")
    label_column: str = key("label", "Column with the labels.")
    label_separator: str | None = key(None, "Split string labels on it (e.g. `;`): multi-label classification.")
    validation_split: float = key(0.1, "Share of train carved (seeded, stratified for single-label data) into "
                                       "validation when the data has none.")
    split_seed: int = key(42, "Seed of that split, apart from `seed`, so every run of a recipe sees the same split.")
    max_length: int = key(256, "Truncation length in tokens (capped at the model's positions); padding is "
                               "dynamic, per batch.")
    pad_to_multiple_of: int | None = key(None, "Text: pad each batch to a multiple of N tokens (never past max_length), a "
                                               "few length buckets instead of one shape per batch; unset: 16 with "
                                               "torch_compile (CUDA graphs record one graph per shape), else 1.")
    class_names: list[str] = key([], "The label set, in order; a label outside it is an error. Empty: the labels "
                                     "in train.")
    image_column: str = key("image", "Images (Hub, image folder) or image paths (csv/json) for image tasks.")
    image_root: str | None = key(None, "Folder that relative image paths start from; unset: the train file's folder.")
    image_size: int | None = key(None, "Side of the model's input in pixels; unset: the checkpoint's processor "
                                       "decides. ViT/DeiT position tables are resampled once.")
    augment: bool = key(True, "Training images get a random resized crop (and flip); eval images never change.")
    crop_min_scale: float = key(0.08, "Smallest area fraction a random crop keeps, in (0, 1]: 0.08 is "
                                      "ImageNet-style; raise it for small objects; 1 turns crops off.")
    hflip: bool = key(True, "Random horizontal flip in training; turn off where left and right differ (digits, text).")
    caption_column: str = key("caption", "CLIP: the caption of each image; without it, captions come from labels.")
    prompt_templates: list[str] = key([], "CLIP: templates that turn a label into a caption, each with `{label}`; "
                                          "empty: `a photo of a {label}.`")
    bad_images: BadImages = key("error", "Every image is decoded once before training: `error` names the first "
                                         "unreadable file, `skip` drops and counts them.")
    max_train_samples: int | None = key(None, "Subsample train (seeded) for quick experiments.")
    max_eval_samples: int | None = key(None, "Keep the first N validation and test examples.")


@dataclass
class TransferArgs:
    task: str = key("text-classification", "The task, from the registry (tasks/__init__.py).", choices=TASKS)
    strategy: Strategy = key("full", "What trains: only the head (feature_extraction), the top `unfrozen_groups` "
                                     "and the head (partial), everything (full), or low-rank adapters and the head "
                                     "(lora).")
    unfrozen_groups: int = key(2, "partial: how many top backbone groups train beside the head (0 to the number "
                                  "of backbone groups).")
    layer_decay: float = key(0.9, "lr multiplier per layer group of depth below the top block (> 0; 1.0: no decay).")
    head_lr: float | None = key(None, "lr of the new head; unset: learning_rate.")
    freeze: list[str] = key([], "Extra regexes searched in parameter names to freeze; one that matches nothing is "
                                "an error.")
    eval_frozen: bool = key(True, "Fully frozen modules run in eval mode (no dropout): deterministic, cacheable "
                                  "features, about 2x faster on CPU.")
    cache_features: CacheMode = key("auto", "Run a frozen backbone once and train the head on its outputs: `auto` "
                                            "whenever only the head trains, `memory` or `disk` to insist, `off`.")
    head_warmup_epochs: float = key(0, "LP-FT: train the head alone this long, then the plan's groups (0: off).")
    unfreeze_every: float = key(0, "Gradual unfreezing: one more group, top down, every N epochs (0: off).")
    lora_r: int = key(8, "LoRA rank: 8 adapts a base-size encoder with about 0.3% of its weights.")
    lora_alpha: int = key(16, "LoRA scale: alpha/r = 2, the common choice.")
    lora_dropout: float = key(0.1, "Dropout on the LoRA path.")
    lora_target_modules: list[str] = key([], "Linear layers to adapt; empty: the family's query/value projections "
                                             "(e.g. query, value for BERT).")
    merge_lora: bool = key(False, "Save a plain merged model (adapters folded in) instead of the adapter folder.")
    source_eval: str | None = key(None, "Forgetting report: labelled text data whose 5-NN accuracy on the "
                                        "encoder's embeddings is measured before and after.")
    source_eval_samples: int = key(1000, "Memory size of that k-NN; half as many queries.")
    l2_sp: float = key(0, "L2-SP: l2_sp/2 * ||w - w_pretrained||^2 over the trainable backbone (0: off; "
                          "0.01-0.1 is typical).")
    ewc: float = key(0, "EWC: ewc/2 * sum F_i (w_i - w*_i)^2, a diagonal Fisher on `ewc_data` scaled to mean 1 "
                        "(0: off).")
    ewc_data: str | None = key(None, "Data for the Fisher: text (or images) like the pre-training's, e.g. "
                                     "builtin:bbc-news.")
    ewc_samples: int = key(500, "Examples the Fisher is averaged over.")
    replay_data: str | None = key(None, "Source data learnt beside the target: labelled (its own head) or "
                                        "unlabelled text (masked-LM replay through the checkpoint's MLM head).")
    replay_ratio: float = key(0.25, "Source examples per target example in every step (> 0).")
    early_stopping_patience: int = key(0, "Stop after N evaluations without improvement of metric_for_best_model "
                                          "(0: off; needs load_best_model_at_end).")
    early_stopping_threshold: float = key(0.0, "The least change that counts as an improvement.")
    clip_mode: ClipMode = key("contrastive", "Task clip: contrastive fine-tuning, zero_shot (evaluate only) or "
                                             "linear_probe (frozen towers, cached embeddings).")
    gather_features: bool = key(True, "CLIP under DDP: contrast against the whole global batch, features gathered "
                                      "across ranks with their gradients.")
    text_strategy: TowerStrategy | None = key(None, "Dual encoders: the text tower's strategy; unset: `strategy`.")
    vision_strategy: TowerStrategy | None = key(None, "Dual encoders: the vision tower's strategy; unset: `strategy`.")
    text_unfrozen_groups: int | None = key(None, "Dual encoders; unset: `unfrozen_groups`.")
    vision_unfrozen_groups: int | None = key(None, "Dual encoders; unset: `unfrozen_groups`.")
    text_learning_rate: float | None = key(None, "Dual encoders: lr of the text tower's top block; unset: "
                                                 "`learning_rate`.")
    vision_learning_rate: float | None = key(None, "Dual encoders: lr of the vision tower's top block; unset: "
                                                   "`learning_rate`.")
    text_layer_decay: float | None = key(None, "Dual encoders; unset: `layer_decay`.")
    vision_layer_decay: float | None = key(None, "Dual encoders; unset: `layer_decay`.")
    overwrite_output_dir: bool = key(False, "Write over an output_dir holding an earlier run (refused otherwise, "
                                            "unless resuming).")


ARG_CLASSES = (ModelArgs, DataArgs, TransferArgs, TrainingArguments)


@dataclass
class RunConfig:
    model: ModelArgs
    data: DataArgs
    transfer: TransferArgs
    training: TrainingArguments
    recipe_path: str
    user_keys: set[str]  # keys set by the recipe or the command line

    def resolved(self) -> dict[str, Any]:
        """A flat recipe that reproduces this run: all hftl keys, plus the training keys set."""
        out: dict[str, Any] = {}
        for args in (self.model, self.data, self.transfer):
            out.update(dataclasses.asdict(args))
        training = self.training.to_dict()
        for key in sorted(self.user_keys):
            if key in training:
                out[key] = training[key]
        return redact(out)


def all_keys() -> list[str]:
    return [f.name for cls in ARG_CLASSES for f in dataclasses.fields(cls) if f.init]


def choices(cls, f: dataclasses.Field) -> tuple | None:
    """A key's allowed values: its `Literal` annotation, or `choices` in its metadata."""
    if f.metadata.get("choices"):
        return tuple(f.metadata["choices"])
    if cls is TrainingArguments:
        return None
    hint = typing.get_type_hints(cls).get(f.name)
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is Literal:
            return typing.get_args(candidate)
    return None


def nearest(value, allowed) -> str:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" Did you mean `{near[0]}`?" if near else ""


def redact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop any token-like value, so a resolved config or card never carries a secret (HF_TOKEN supplies it)."""
    return {k: v for k, v in values.items() if not ("token" in k and isinstance(v, str) and v)}
