"""Every recipe key, declared once: its type, default, help, allowed values and range.

A key belongs to one of four dataclasses: `ModelArgs`, `DataArgs`, `TransferArgs` (hftl's) and
`transformers.TrainingArguments`. The help text, the allowed values (a `Literal` annotation, or
`choices` known at run time) and the numbers a key takes (a `Range`) live in the field's metadata;
the ranges of TrainingArguments' keys, which hftl does not declare, in config/ranges.py. `hftl
train --help`, the README's key table (config/docs.py) and validation (config/rules.py) read them
from here.

Importing this module imports neither torch nor transformers: bad recipes are reported before the
heavy imports (TrainingArguments is loaded on first use of `arg_classes()`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hftl.config.ranges import SEED, TRAINING_RANGES, Range, above, at_least, share
from hftl.engine.strategies import STRATEGIES, TOWER_STRATEGIES
from hftl.tasks import TASKS

if TYPE_CHECKING:
    from transformers import TrainingArguments

Strategy = Literal[STRATEGIES]  # the engine's list (engine/strategies.py), spelled once
TowerStrategy = Literal[TOWER_STRATEGIES]
CacheMode = Literal["auto", "off", "memory", "disk"]
ClipMode = Literal["contrastive", "zero_shot", "linear_probe"]
BadImages = Literal["error", "skip"]
Pooling = Literal["cls", "mean"]


def key(default: Any = None, help: str = "", choices: tuple[str, ...] | None = None,
        bounds: Range | None = None) -> Any:
    """A recipe key: its default and its help (shown by `hftl train --help` and in the README's key table).
    Allowed values come from a `Literal` annotation, or `choices` where they are known only at run time;
    `bounds` is the Range of a numeric key."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if bounds is not None:
        metadata["range"] = bounds
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
    allow_pickle: bool = key(False, "Load a checkpoint that has only pickle weights (pytorch_model.bin), which can "
                                    "run code when loaded; off: such a checkpoint is refused (convert it to "
                                    "safetensors).")
    classifier_pooling: Pooling | None = key(None, "ModernBERT's classification head reads the first token (`cls`) "
                                                   "or the masked mean of all tokens (`mean`); set in the model's "
                                                   "config. Unset: the checkpoint's.")
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
                                       "validation when the data has none.",
        bounds=Range(0, 1, False, False, "it is the share of train carved into validation"))
    split_seed: int = key(42, "Seed of that split, apart from `seed`, so every run of a recipe sees the same split.",
        bounds=SEED)
    max_length: int = key(256, "Truncation length in tokens (capped at the model's positions); padding is "
                               "dynamic, per batch.",
        bounds=at_least(1, "it is the truncation length in tokens"))
    pad_to_multiple_of: int | None = key(None, "Text: pad each batch to a multiple of N tokens (never past max_length), a "
                                               "few length buckets instead of one shape per batch; unset: 16 with "
                                               "torch_compile (CUDA graphs record one graph per shape), else 1.",
        bounds=at_least(1, "1 pads to each batch's longest text"))
    class_names: list[str] = key([], "The label set, in order; a label outside it is an error. Empty: the labels "
                                     "in train.")
    image_column: str = key("image", "Images (Hub, image folder) or image paths (csv/json) for image tasks.")
    image_root: str | None = key(None, "Folder that relative image paths start from; unset: the train file's folder.")
    allow_outside_paths: bool = key(False, "Image paths in a data file may point outside its folder (or "
                                           "`image_root`): absolute paths elsewhere, `../`, symlinks out; off: refused.")
    max_image_pixels: int = key(25_000_000, "Largest image accepted, in pixels (width x height), checked before "
                                            "decoding: a tiny file can hold a huge image (a 12000x12000 PNG decodes "
                                            "to 432 MB).",
        bounds=at_least(1, "it caps width x height of any image read"))
    image_size: int | None = key(None, "Side of the model's input in pixels, up to twice the checkpoint's own; unset: "
                                       "its processor decides. ViT/DeiT position tables are resampled once.",
        bounds=at_least(8, "it is the side of the model's input in pixels"))
    max_num_patches: int | None = key(None, "SigLIP2 NaFlex (task siglip): patches per image, its resolution budget "
                                            "(256 = 16x16 of 16 px); unset: the checkpoint's processor.",
        bounds=at_least(1, "it is the number of patches per image"))
    augment: bool = key(True, "Training images get a random resized crop (and flip); eval images never change.")
    crop_min_scale: float = key(0.08, "Smallest area fraction a random crop keeps, in (0, 1]: 0.08 is "
                                      "ImageNet-style; raise it for small objects; 1 turns crops off.",
        bounds=share("1 turns random crops off", low_in=False, high_in=True))
    hflip: bool = key(True, "Random horizontal flip in training; turn off where left and right differ (digits, text).")
    caption_column: str = key("caption", "CLIP/SigLIP: the caption of each image; without it, captions come from "
                                         "labels.")
    prompt_templates: list[str] = key([], "CLIP/SigLIP: templates that turn a label into a caption, each with `{label}`; "
                                          "empty: `a photo of a {label}.`")
    bad_images: BadImages = key("error", "Every image is decoded once before training: `error` names the first "
                                         "unreadable file, `skip` drops and counts them.")
    max_train_samples: int | None = key(None, "Subsample train (seeded) for quick experiments.",
        bounds=at_least(1, "unset trains on all of train"))
    max_eval_samples: int | None = key(None, "Keep the first N validation and test examples.",
        bounds=at_least(1, "unset evaluates every example"))


@dataclass
class TransferArgs:
    task: str = key("text-classification", "The task, from the registry (tasks/__init__.py).", choices=TASKS)
    strategy: Strategy = key("full", "What trains: only the head (feature_extraction), the top `unfrozen_groups` "
                                     "and the head (partial), everything (full), or low-rank adapters and the head "
                                     "(lora).")
    unfrozen_groups: int = key(2, "partial: how many top backbone groups train beside the head (0 to the number "
                                  "of backbone groups).",
        bounds=at_least(0, "0 trains the head only"))
    layer_decay: float = key(0.9, "lr multiplier per layer group of depth below the top block (> 0; 1.0: no decay).",
        bounds=above(0, "1.0 means no decay"))
    head_lr: float | None = key(None, "lr of the new head; unset: learning_rate.",
        bounds=above(0, "a zero lr leaves the new head untrained and a negative one climbs the loss"))
    freeze: list[str] = key([], "Extra regexes searched in parameter names to freeze; one that matches nothing is "
                                "an error.")
    eval_frozen: bool = key(True, "Fully frozen modules run in eval mode (no dropout): deterministic, cacheable "
                                  "features, about 2x faster on CPU. Frozen BatchNorm layers keep their running "
                                  "statistics either way.")
    cache_features: CacheMode = key("auto", "Run a frozen backbone once and train the head on its outputs: `auto` "
                                            "whenever only the head trains, `memory` or `disk` to insist, `off`.")
    head_warmup_epochs: float = key(0, "LP-FT: train the head alone this long, then the plan's groups (0: off).",
        bounds=at_least(0, "0 turns it off"))
    unfreeze_every: float = key(0, "Gradual unfreezing: one more group, top down, every N epochs (0: off).",
        bounds=at_least(0, "0 turns it off"))
    lora_r: int = key(8, "LoRA rank: 8 adapts a base-size encoder with about 0.3% of its weights.",
        bounds=at_least(1, "it is the adapters' rank"))
    lora_alpha: int = key(16, "LoRA scale: alpha/r = 2, the common choice.",
        bounds=above(0, "the adapters' output is scaled by lora_alpha/lora_r: 0 switches them off"))
    lora_dropout: float = key(0.1, "Dropout on the LoRA path.",
        bounds=share("it is a probability"))
    lora_target_modules: list[str] = key([], "Layers to adapt, each name matching the paths that end in it "
                                             "(`attn.Wo`); empty: the family's query/value projections (query, "
                                             "value for BERT; Wqkv for ModernBERT; convolutions for CNNs).")
    merge_lora: bool = key(False, "Save a plain merged model (adapters folded in) instead of the adapter folder.")
    source_eval: str | None = key(None, "Forgetting report: labelled text data whose 5-NN accuracy on the "
                                        "encoder's embeddings is measured before and after.")
    source_eval_samples: int = key(1000, "Memory size of that k-NN; half as many queries.",
        bounds=at_least(2, "the k-NN needs a memory and half as many queries"))
    l2_sp: float = key(0, "L2-SP: l2_sp/2 * ||w - w_pretrained||^2 over the trainable backbone (0: off; "
                          "0.01-0.1 is typical).",
        bounds=at_least(0, "0 turns it off"))
    ewc: float = key(0, "EWC: ewc/2 * sum F_i (w_i - w*_i)^2, a diagonal Fisher on `ewc_data` scaled to mean 1 "
                        "(0: off).",
        bounds=at_least(0, "0 turns it off"))
    ewc_data: str | None = key(None, "Data for the Fisher: text (or images) like the pre-training's, e.g. "
                                     "builtin:bbc-news.")
    ewc_samples: int = key(500, "Examples the Fisher is averaged over.",
        bounds=at_least(1, "the Fisher is averaged over that many examples"))
    replay_data: str | None = key(None, "Source data learnt beside the target: labelled (its own head) or "
                                        "unlabelled text (masked-LM replay through the checkpoint's MLM head).")
    replay_ratio: float = key(0.25, "Source examples per target example in every step (> 0).",
        bounds=above(0, "0.25 mixes one source example into every four target ones"))
    early_stopping_patience: int = key(0, "Stop after N evaluations without improvement of metric_for_best_model "
                                          "(0: off; needs load_best_model_at_end).",
        bounds=at_least(0, "0 turns it off"))
    early_stopping_threshold: float = key(0.0, "The least change that counts as an improvement.",
        bounds=at_least(0, "it is the least improvement that counts"))
    clip_mode: ClipMode = key("contrastive", "Tasks clip and siglip: contrastive fine-tuning, zero_shot (evaluate only) or "
                                             "linear_probe (frozen towers, cached embeddings).")
    gather_features: bool = key(True, "CLIP/SigLIP under DDP: contrast against the whole global batch, features "
                                      "gathered across ranks with their gradients.")
    text_strategy: TowerStrategy | None = key(None, "Dual encoders: the text tower's strategy; unset: `strategy`.")
    vision_strategy: TowerStrategy | None = key(None, "Dual encoders: the vision tower's strategy; unset: `strategy`.")
    text_unfrozen_groups: int | None = key(None, "Dual encoders; unset: `unfrozen_groups`.",
        bounds=at_least(0, "0 trains the tower's head only"))
    vision_unfrozen_groups: int | None = key(None, "Dual encoders; unset: `unfrozen_groups`.",
        bounds=at_least(0, "0 trains the tower's head only"))
    text_learning_rate: float | None = key(None, "Dual encoders: lr of the text tower's top block; unset: "
                                                 "`learning_rate`.",
        bounds=above(0, "a zero lr trains nothing and a negative one climbs the loss"))
    vision_learning_rate: float | None = key(None, "Dual encoders: lr of the vision tower's top block; unset: "
                                                   "`learning_rate`.",
        bounds=above(0, "a zero lr trains nothing and a negative one climbs the loss"))
    text_layer_decay: float | None = key(None, "Dual encoders; unset: `layer_decay`.",
        bounds=above(0, "1.0 means no decay"))
    vision_layer_decay: float | None = key(None, "Dual encoders; unset: `layer_decay`.",
        bounds=above(0, "1.0 means no decay"))
    overwrite_output_dir: bool = key(False, "Write over an output_dir holding a finished run, removing its "
                                            "checkpoints (refused otherwise, unless resuming).")


OWN_CLASSES = (ModelArgs, DataArgs, TransferArgs)

def arg_classes() -> tuple:
    """hftl's three argument classes and TrainingArguments (imported here: it pulls in torch)."""
    from transformers import TrainingArguments

    return (*OWN_CLASSES, TrainingArguments)


def __getattr__(name: str):
    if name == "ARG_CLASSES":  # the four classes, for code that reads them as a constant
        return arg_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ranges() -> dict[str, Range]:
    """Every key with a Range: hftl's (from their metadata) and TrainingArguments' (TRAINING_RANGES)."""
    own = {f.name: f.metadata["range"] for cls in OWN_CLASSES for f in dataclasses.fields(cls) if "range" in f.metadata}
    return {**TRAINING_RANGES, **own}


def own_keys() -> dict[str, tuple[type, dataclasses.Field]]:
    """hftl's keys: {name: (its class, its field)}."""
    return {f.name: (cls, f) for cls in OWN_CLASSES for f in dataclasses.fields(cls)}


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
    return [f.name for cls in arg_classes() for f in dataclasses.fields(cls) if f.init]


def choices(cls, f: dataclasses.Field) -> tuple | None:
    """A key's allowed values: its `Literal` annotation, or `choices` in its metadata."""
    if f.metadata.get("choices"):
        return tuple(f.metadata["choices"])
    if cls not in OWN_CLASSES:
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
