"""Recipe loading: a flat YAML of defaults, `--key value` overrides on top.

Every key belongs to one of four dataclasses: `ModelArgs`, `DataArgs`, `TransferArgs` (ours) and
`transformers.TrainingArguments`. They are read with `HfArgumentParser`, so a recipe key and a
command-line flag are the same thing. Unknown keys are an error naming the nearest valid key,
because a silently ignored typo (`learning_rte`) costs a whole training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hftl.errors import HftlError

STRATEGIES = ("feature_extraction", "partial", "full", "lora")
CACHE_MODES = ("auto", "off", "memory", "disk")


@dataclass
class ModelArgs:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id, local folder, or builtin:NAME (e.g. builtin:minilm-l6)."}
    )
    revision: str = "main"  # pin a Hub revision for reproducible runs
    trust_remote_code: bool = False  # off: never run code shipped with a checkpoint unless asked
    from_scratch: bool = False  # random init of the same architecture: the no-transfer baseline
    attn_implementation: str | None = None  # None: SDPA where the architecture supports it, else eager


@dataclass
class DataArgs:
    dataset: str | None = field(
        default=None, metadata={"help": "Hub dataset name, local file or folder, or builtin:NAME."}
    )
    dataset_config: str | None = None  # Hub dataset configuration name, e.g. "mrpc" for glue
    train_file: str | None = None  # local csv/json/jsonl/parquet files, instead of `dataset`
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None  # set for sentence-pair tasks (NLI, paraphrase)
    label_column: str = "label"
    label_separator: str | None = None  # split string labels on it: makes the task multi-label
    validation_split: float = 0.1  # carved from train (seeded) when the data has no validation split
    split_seed: int = 42  # fixed apart from `seed`, so every run of a recipe sees the same split
    max_length: int = 256  # truncation length; padding is dynamic, per batch
    class_names: list[str] = field(default_factory=list)  # the label set, in order; empty: the labels in train
    image_column: str = "image"  # images (Hub, image folder) or image paths (csv/json) for image tasks
    image_root: str | None = None  # folder that relative image paths in csv/json start from; default: the file's folder
    image_size: int | None = None  # side of the model's input; None: the checkpoint's image processor decides
    augment: bool = True  # training images: random resized crop (and flip); eval images never change
    crop_min_scale: float = 0.08  # smallest area fraction a random crop keeps (0.08 ImageNet-style; raise it for small objects)
    hflip: bool = True  # random horizontal flip in training; turn off where left and right differ (digits, text)
    caption_column: str = "caption"  # CLIP: the text paired with each image; without it, captions come from labels
    prompt_templates: list[str] = field(default_factory=list)  # CLIP: "a photo of a {label}." ...; empty: that one
    bad_images: str = field(
        default="error", metadata={"help": "error | skip: what to do with image files that cannot be read"}
    )  # every image is decoded once before training; skip drops and counts the bad ones
    max_train_samples: int | None = None  # subsample for quick experiments
    max_eval_samples: int | None = None


@dataclass
class TransferArgs:
    task: str = "text-classification"
    strategy: str = field(default="full", metadata={"help": "feature_extraction | partial | full | lora"})
    unfrozen_groups: int = 2  # partial: how many top backbone groups train beside the head
    layer_decay: float = 0.9  # lr multiplier per group of depth below the top block
    head_lr: float | None = None  # lr of the new head; None uses learning_rate
    freeze: list[str] = field(default_factory=list)  # extra regexes over parameter names to freeze
    eval_frozen: bool = True  # frozen modules run without dropout: deterministic features, 2x faster on CPU
    cache_features: str = field(
        default="auto", metadata={"help": "auto | off | memory | disk: run a frozen backbone once, train the head on its outputs"}
    )  # auto: on whenever only the head trains
    head_warmup_epochs: float = 0  # LP-FT: train the head alone this long, then the plan's groups
    unfreeze_every: float = 0  # gradual unfreezing: one more group, top down, every N epochs (0: off)
    lora_r: int = 8  # LoRA rank: 8 adapts a base-size encoder with ~0.3% of its weights
    lora_alpha: int = 16  # LoRA scale alpha/r = 2, the common choice
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=list)  # empty: query/value projections of the family
    merge_lora: bool = False  # save a plain merged model (adapters folded in) instead of the adapter folder
    source_eval: str | None = None  # labelled text data for the forgetting report (k-NN on embeddings)
    source_eval_samples: int = 1000  # memory size of that k-NN; half as many queries
    l2_sp: float = 0  # L2-SP: alpha/2 * ||w - w_pretrained||^2 over trainable backbone weights (0: off)
    ewc: float = 0  # EWC: lambda/2 * sum F_i (w_i - w*_i)^2, Fisher scaled to mean 1 (0: off)
    ewc_data: str | None = None  # data for the Fisher: text (or images) like the pre-training's, e.g. builtin:bbc-news
    ewc_samples: int = 500  # examples the Fisher is averaged over
    replay_data: str | None = None  # source data learnt beside the target: labelled (own head) or text (masked LM)
    replay_ratio: float = 0.25  # source examples per target example in every step
    early_stopping_patience: int = 0  # stop after N evaluations without improvement (0: off)
    early_stopping_threshold: float = 0.0  # the least change that counts as an improvement
    clip_mode: str = field(
        default="contrastive", metadata={"help": "contrastive | zero_shot | linear_probe (task clip)"}
    )
    gather_features: bool = True  # CLIP under DDP: contrast against the global batch's negatives, not the local ones
    text_strategy: str | None = None  # dual encoders: the text tower's strategy; None: `strategy`
    vision_strategy: str | None = None  # the vision tower's strategy; None: `strategy`
    text_unfrozen_groups: int | None = None  # None: `unfrozen_groups`
    vision_unfrozen_groups: int | None = None
    text_learning_rate: float | None = None  # the tower's top block; None: `learning_rate`
    vision_learning_rate: float | None = None
    text_layer_decay: float | None = None  # None: `layer_decay`
    vision_layer_decay: float | None = None
    overwrite_output_dir: bool = False  # refuse to train into a folder holding an earlier run


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


def override_keys(overrides: list[str]) -> list[str]:
    """The keys of `--key value` / `--key=value` overrides, in order."""
    return [o[2:].split("=")[0].replace("-", "_") for o in overrides if o.startswith("--")]


def split_tokens(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """(overrides without token-like keys, {key: token}): what may be shown or stored, and what may not."""
    kept, tokens, key = [], {}, None
    for word in overrides:
        if key is not None and not word.startswith("--"):
            tokens[key], key = word, None
            continue
        key = None
        name = word[2:].split("=")[0] if word.startswith("--") else ""
        if "token" not in name:
            kept.append(word)
        elif "=" in word:
            tokens[name] = word.split("=", 1)[1]
        else:
            key = name
    return kept, tokens


def redact(values: dict[str, Any]) -> dict[str, Any]:
    """Drop any token-like value, so a resolved config or card never carries a secret (HF_TOKEN supplies it)."""
    return {k: v for k, v in values.items() if not ("token" in k and isinstance(v, str) and v)}


class _Parser(HfArgumentParser):
    """HfArgumentParser that raises HftlError instead of printing usage and exiting."""

    def error(self, message: str):  # argparse calls this on bad values
        raise HftlError(f"Bad value in the recipe or on the command line: {message}. Check the value's type.")


def all_keys() -> list[str]:
    return [f.name for cls in ARG_CLASSES for f in dataclasses.fields(cls) if f.init]


def _unknown_key_error(key: str, where: str) -> HftlError:
    near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    hint = f" Did you mean `{near[0]}`?" if near else " See `hftl train --help` for the keys."
    return HftlError(f"Unknown key `{key}` in {where}.{hint}")


def read_recipe(path: str) -> dict[str, Any]:
    recipe = Path(path)
    if not recipe.is_file():
        raise HftlError(
            f"Recipe file `{path}` does not exist. Pass the path of a YAML recipe, e.g. "
            "`hftl train recipes/demo/text-classification.yaml`."
        )
    try:
        values = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise HftlError(f"Recipe `{path}` is not valid YAML{where}: {problem}. Fix the YAML syntax there.")
    if not isinstance(values, dict):
        raise HftlError(f"Recipe `{path}` must be a mapping of `key: value` lines, not a {type(values).__name__}.")
    return values


def load_config(recipe_path: str | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe, apply `--key value` overrides, and return the four typed argument objects.

    Without a recipe (`hftl advise --model_name_or_path ... --dataset ...`) every key comes from the overrides."""
    values = read_recipe(recipe_path) if recipe_path else {}
    recipe_path = recipe_path or "the command line"
    known = set(all_keys())
    for key in values:
        if key not in known:
            raise _unknown_key_error(str(key), f"recipe `{recipe_path}`")
    parser = _Parser(ARG_CLASSES)
    parser.allow_abbrev = False  # `--lr` must not silently mean `--lr_scheduler_type`
    for action in parser._actions:
        action.required = False
    parser.set_defaults(**fast_defaults(values, overrides or []))
    parser.set_defaults(**_typed_for_parser(parser, values, recipe_path))
    overrides = _merge_repeated_lists(parser, list(overrides or []))
    try:
        parsed = parser.parse_args_into_dataclasses(args=overrides, return_remaining_strings=True)
    except (ValueError, TypeError) as err:
        raise HftlError(f"Invalid setting in `{recipe_path}` or its overrides: {err}") from None
    *arg_objs, remaining = parsed
    if remaining:
        flag = next((r for r in remaining if r.startswith("--")), remaining[0])
        if flag.startswith("--"):
            raise _unknown_key_error(flag[2:].split("=")[0], "the command line")
        raise HftlError(
            f"Unexpected argument `{flag}`. Overrides take the form `--key value`, and the recipe goes right after the "
            "command (`hftl advise RECIPE.yaml --out DIR`)."
        )
    model, data, transfer, training = arg_objs
    user_keys = set(values) | set(override_keys(overrides))
    config = RunConfig(model, data, transfer, training, recipe_path, user_keys)
    validate(config)
    return config


# TrainingArguments defaults hftl changes, per task: length-grouped batches waste little on padding.
TASK_TRAINING_DEFAULTS = {
    "text-classification": {"train_sampling_strategy": "group_by_length"},
    # images are decoded and augmented on the fly from the `image_column`, which the model's forward does not name
    "image-classification": {"remove_unused_columns": False},
    # CLIP: images and captions feed the transform; the evaluation loss is the contrastive loss (zero-shot
    # accuracy is measured separately, on every image). Gathered batches match across ranks without dropping
    # the last one: Accelerate's even_batches completes a short last batch on every rank.
    "clip": {"remove_unused_columns": False, "prediction_loss_only": True},
}


def fast_defaults(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """hftl's defaults for TrainingArguments fields; the recipe and the command line still win."""
    task = values.get("task", "text-classification")
    if "--task" in overrides[:-1]:
        task = overrides[overrides.index("--task") + 1]
    defaults = dict(TASK_TRAINING_DEFAULTS.get(task, {}))
    given = set(values) | set(override_keys(overrides))
    if "replay_data" in given:
        # the source batch runs the encoder a second time, outside DDP's forward: DDP must expect each
        # parameter's gradient from both uses (a static graph; every step has the same two passes)
        defaults["ddp_static_graph"] = True
    if not given & {"bf16", "fp16", "use_cpu"} and _gpu_has_bf16():
        defaults["bf16"] = True  # Ampere and newer: about 2x the fp32 speed, same accuracy
    return defaults


def _gpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _list_keys(parser: HfArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.nargs in ("+", "*")}


def _typed_for_parser(parser: HfArgumentParser, values: dict[str, Any], recipe_path: str) -> dict[str, Any]:
    """YAML values as the parser expects them: scalars as strings (so argparse converts and checks
    them like command-line values), a lone string for a list key as a one-item list."""
    lists = _list_keys(parser)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in lists:
            value = [] if value is None else value
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list):
                raise HftlError(f"`{key}` in `{recipe_path}` takes a list of strings, not `{value}`.")
            out[key] = [str(v) for v in value]
        elif isinstance(value, (list, dict)) and _accepts(key, type(value).__name__):
            out[key] = value  # e.g. report_to: [tensorboard], fsdp_config: {...}
        elif isinstance(value, (list, dict)):
            raise HftlError(f"`{key}` in `{recipe_path}` takes a single value, not a list ({value}).")
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (int, float)):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def _accepts(key: str, kind: str) -> bool:
    """Whether the dataclass field `key` is annotated to take a list or dict value."""
    for cls in ARG_CLASSES:  # annotations, not dataclass fields: HfArgumentParser rewrites field.type
        annotation = cls.__annotations__.get(key) or next(
            (c.__annotations__[key] for c in cls.__mro__ if key in getattr(c, "__annotations__", {})), None
        )
        if annotation is not None:
            return kind in str(annotation).lower()
    return False


def _merge_repeated_lists(parser: HfArgumentParser, overrides: list[str]) -> list[str]:
    """`--freeze a --freeze b` means both patterns, not only the last."""
    lists = _list_keys(parser)
    merged: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(overrides):
        word = overrides[i]
        key = word[2:].replace("-", "_") if word.startswith("--") else None
        if key in lists:
            j = i + 1
            while j < len(overrides) and not overrides[j].startswith("--"):
                j += 1
            merged.setdefault(key, []).extend(overrides[i + 1 : j])
            i = j
            continue
        rest.append(word)
        i += 1
    for key, items in merged.items():
        rest += [f"--{key}", *items]
    return rest


def validate(config: RunConfig) -> None:
    """Checks that need no model or data; the rest happen where the facts are known."""
    if not config.model.model_name_or_path:
        raise HftlError("No model given. Set `model_name_or_path` in the recipe or pass `--model_name_or_path ID`.")
    if config.transfer.strategy not in STRATEGIES:
        near = difflib.get_close_matches(config.transfer.strategy, STRATEGIES, n=1)
        hint = f" Did you mean `{near[0]}`?" if near else ""
        raise HftlError(
            f"Unknown strategy `{config.transfer.strategy}`.{hint} Choose one of: {', '.join(STRATEGIES)}."
        )
    if config.transfer.cache_features not in CACHE_MODES:
        raise HftlError(
            f"cache_features must be one of {', '.join(CACHE_MODES)} (got `{config.transfer.cache_features}`)."
        )
    if config.transfer.head_warmup_epochs < 0 or config.transfer.unfreeze_every < 0:
        raise HftlError("head_warmup_epochs and unfreeze_every must be >= 0 (0 turns them off).")
    if config.transfer.strategy == "lora" and (
        config.transfer.head_warmup_epochs or config.transfer.unfreeze_every or config.transfer.freeze
    ):
        raise HftlError("strategy lora trains adapters and the head from step 0: drop head_warmup_epochs, unfreeze_every and freeze.")
    if config.transfer.ewc < 0:
        raise HftlError(f"ewc must be >= 0 (got {config.transfer.ewc}); 0 turns it off.")
    if config.transfer.ewc and not config.transfer.ewc_data:
        raise HftlError(
            "ewc needs a dataset to estimate the Fisher on: set `ewc_data` to data like the model's pre-training "
            "(a Hub dataset, a local file or builtin:NAME; its text column must match `text_column`)."
        )
    if config.transfer.ewc and config.transfer.strategy == "feature_extraction":
        raise HftlError("ewc protects trainable backbone weights; with feature_extraction none train. Drop ewc or pick another strategy.")
    if config.transfer.ewc and config.transfer.ewc_samples < 1:
        raise HftlError(f"ewc_samples must be >= 1 (got {config.transfer.ewc_samples}).")
    if config.transfer.replay_data and config.transfer.strategy == "feature_extraction":
        raise HftlError("replay_data keeps a trainable backbone from forgetting; with feature_extraction nothing in it trains. Drop replay_data or pick another strategy.")
    if config.transfer.replay_data and config.transfer.replay_ratio <= 0:
        raise HftlError(f"replay_ratio must be > 0 (got {config.transfer.replay_ratio}); 0.25 mixes one source example per four target ones.")
    if config.transfer.l2_sp < 0:
        raise HftlError(f"l2_sp must be >= 0 (got {config.transfer.l2_sp}); 0 turns it off, 0.01-0.1 is typical.")
    if config.transfer.early_stopping_patience:
        args = config.training
        if not args.load_best_model_at_end or args.eval_strategy == "no":
            raise HftlError(
                "early_stopping_patience needs evaluations and the best model kept: set eval_strategy and "
                "save_strategy (both `epoch` or both `steps`) and `load_best_model_at_end: true`."
            )
    if config.transfer.layer_decay <= 0:
        raise HftlError(f"layer_decay must be > 0 (got {config.transfer.layer_decay}); 1.0 means no decay.")
    if config.transfer.task == "clip":
        _validate_clip(config)
    else:
        defaults = TransferArgs()
        tower_keys = {k for k in config.user_keys & CLIP_ONLY_KEYS if getattr(config.transfer, k) != getattr(defaults, k)}
        if tower_keys:  # a resolved config lists them at their defaults: only set values count
            raise HftlError(
                f"{', '.join(sorted(tower_keys))} apply to dual encoders (task clip) only; task `{config.transfer.task}` "
                "has one tower. Drop them, or use strategy, unfrozen_groups, learning_rate and layer_decay."
            )
    if config.transfer.source_eval and config.transfer.task != "text-classification":
        raise HftlError(
            f"source_eval (the forgetting report) measures text embeddings; task `{config.transfer.task}` has none yet. "
            "Drop `source_eval`."
        )
    if config.data.bad_images not in ("error", "skip"):
        raise HftlError(f"bad_images must be `error` or `skip` (got `{config.data.bad_images}`).")
    if not 0 < config.data.crop_min_scale <= 1:
        raise HftlError(f"crop_min_scale must be in (0, 1] (got {config.data.crop_min_scale}); 1 turns random crops off.")
    if config.data.image_size is not None and config.data.image_size < 8:
        raise HftlError(f"image_size must be at least 8 pixels (got {config.data.image_size}).")
    if not 0 < config.data.validation_split < 1:
        raise HftlError(f"validation_split must be between 0 and 1 (got {config.data.validation_split}).")


CLIP_MODES = ("contrastive", "zero_shot", "linear_probe")
CLIP_ONLY_KEYS = frozenset(
    {"clip_mode", "gather_features"}
    | {f"{tower}_{key}" for tower in ("text", "vision") for key in ("strategy", "unfrozen_groups", "learning_rate", "layer_decay")}
)
DEFAULT_PROMPT = "a photo of a {label}."


def _validate_clip(config: RunConfig) -> None:
    t = config.transfer
    if t.clip_mode not in CLIP_MODES:
        raise HftlError(f"clip_mode must be one of {', '.join(CLIP_MODES)} (got `{t.clip_mode}`).")
    for key in ("strategy", "text_strategy", "vision_strategy"):
        value = getattr(t, key)
        if value is not None and value not in ("feature_extraction", "partial", "full"):
            raise HftlError(f"{key} `{value}` is not available for dual encoders: use feature_extraction, partial or full per tower.")
    for tower in ("text", "vision"):
        decay, lr = getattr(t, f"{tower}_layer_decay"), getattr(t, f"{tower}_learning_rate")
        unfrozen = getattr(t, f"{tower}_unfrozen_groups")
        if decay is not None and decay <= 0:
            raise HftlError(f"{tower}_layer_decay must be > 0 (got {decay}); 1.0 means no decay.")
        if lr is not None and lr < 0:
            raise HftlError(f"{tower}_learning_rate must be >= 0 (got {lr}).")
        if unfrozen is not None and unfrozen < 0:
            raise HftlError(f"{tower}_unfrozen_groups must be >= 0 (got {unfrozen}).")
    if config.data.label_separator:
        raise HftlError("task clip takes one label per image (a caption per class): drop label_separator.")
    if t.head_warmup_epochs or t.unfreeze_every or t.ewc or t.replay_data:
        raise HftlError(
            "head_warmup_epochs, unfreeze_every, ewc and replay_data are not available for task clip yet (l2_sp is); "
            "drop them."
        )
    for template in config.data.prompt_templates:
        if "{label}" not in template:
            raise HftlError(
                f"prompt template `{template}` has no `{{label}}`: each template must name the class, e.g. "
                f"`{DEFAULT_PROMPT}`."
            )
        try:
            template.format(label="x")
        except (KeyError, IndexError, ValueError) as err:
            raise HftlError(f"prompt template `{template}` is not a valid format string ({err}); use only `{{label}}`.") from None


def check_output_dir(config: RunConfig) -> None:
    """Refuse to train into a folder holding an earlier run, unless asked to overwrite or resuming."""
    out = Path(config.training.output_dir)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if config.transfer.overwrite_output_dir or config.training.resume_from_checkpoint:
        return
    raise HftlError(
        f"output_dir `{out}` already holds files from an earlier run. Pick another `--output_dir`, "
        "pass `--overwrite_output_dir true` to replace it, or `--resume_from_checkpoint PATH` to continue it."
    )


def write_resolved(config: RunConfig, path: str | os.PathLike) -> None:
    command = f"# hftl train {path}\n"
    Path(path).write_text(command + yaml.safe_dump(config.resolved(), sort_keys=False))


def cli_help() -> str:
    """All keys, one line each, for `hftl train --help`."""
    lines = []
    for cls in ARG_CLASSES:
        lines.append(f"\n{cls.__name__}:")
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                default = f.default if f.default is not dataclasses.MISSING else "[]"
                lines.append(f"  --{f.name} (default: {default})")
    return "\n".join(lines)

