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
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments

from hftl.errors import HftlError
from hftl.tasks import TASKS

STRATEGIES = ("feature_extraction", "partial", "full", "lora")
Strategy = Literal["feature_extraction", "partial", "full", "lora"]
TowerStrategy = Literal["feature_extraction", "partial", "full"]
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
        choice = re.match(r"argument --(\w+)(?:/--[\w-]+)?: invalid choice: '?(.*?)'? \(choose from (.*)\)", message)
        if choice:
            name, value = choice.group(1), choice.group(2)
            allowed = [c.strip(" '\"") for c in choice.group(3).split(",")]
            raise HftlError(f"Unknown {name} `{value}`.{_nearest(value, allowed)} Choose one of: {', '.join(allowed)}.")
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
    parser.set_defaults(**defaults(values, overrides or []))
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


def override_values(overrides: list[str]) -> dict[str, str]:
    """`--key value` / `--key=value` overrides as {key: first value}, for decisions made before parsing."""
    out: dict[str, str] = {}
    for i, word in enumerate(overrides):
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            if not value and i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
                value = overrides[i + 1]
            out[name.replace("-", "_")] = value
    return out


def defaults(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """hftl's defaults, applied before validation; the recipe and the command line still win.

    The task's own (e.g. image tasks keep their image column), then: replay needs a static DDP graph,
    `from_scratch` means strategy full, and bf16 on GPUs that have it."""
    from hftl.tasks import get_task

    given = {**values, **override_values(overrides)}
    out = get_task(str(given.get("task", "text-classification"))).defaults(given)
    if "replay_data" in given:
        # the source batch runs the encoder a second time, outside DDP's forward: DDP must expect each
        # parameter's gradient from both uses (a static graph; every step has the same two passes)
        out["ddp_static_graph"] = True
    if str(given.get("from_scratch", "false")).lower() == "true":
        out["strategy"] = "full"  # random weights: every layer trains
    if not set(given) & {"bf16", "fp16", "use_cpu"} and _gpu_has_bf16():
        out["bf16"] = True  # Ampere and newer: about 2x the fp32 speed, same accuracy
    return out


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
    """Every rule that needs no model or data, one per concern, called from here; the rest run where the
    facts are known (columns, labels, layer groups). The config is not changed after this."""
    from hftl import forgetting
    from hftl.data import images
    from hftl.tasks import get_task

    task = get_task(config.transfer.task)
    for rule in (_model_rule, _choice_rule, _range_rule, _strategy_rule, _early_stopping_rule, _capability_rule):
        rule(config, task)
    forgetting.validate(config)  # l2_sp, ewc, replay
    images.check_settings(config.data)  # crop, size
    task.validate(config)  # what only the task knows (CLIP's towers, modes and prompts)


def _model_rule(config: RunConfig, task) -> None:
    if not config.model.model_name_or_path:
        raise HftlError("No model given. Set `model_name_or_path` in the recipe or pass `--model_name_or_path ID`.")


def _choice_rule(config: RunConfig, task) -> None:
    """The parser checks command-line values only, not the recipe's: every key with allowed values, here."""
    for args in (config.model, config.data, config.transfer):
        for f in dataclasses.fields(args):
            allowed, value = choices(type(args), f), getattr(args, f.name)
            if allowed and value is not None and value not in allowed:
                raise HftlError(f"Unknown {f.name} `{value}`.{_nearest(value, allowed)} Choose one of: "
                                f"{', '.join(allowed)}.")


def _nearest(value, allowed) -> str:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    return f" Did you mean `{near[0]}`?" if near else ""


# key -> (bound, whether the bound itself is allowed, what it means)
RANGES = {
    "layer_decay": (0, False, "1.0 means no decay"),
    "head_warmup_epochs": (0, True, "0 turns it off"),
    "unfreeze_every": (0, True, "0 turns it off"),
}


def _range_rule(config: RunConfig, task) -> None:
    for name, (low, inclusive, meaning) in RANGES.items():
        value = _value(config, name)
        if value is not None and (value < low or (value == low and not inclusive)):
            raise HftlError(f"{name} must be {'>=' if inclusive else '>'} {low} (got {value}); {meaning}.")
    if not 0 < config.data.validation_split < 1:
        raise HftlError(f"validation_split must be between 0 and 1 (got {config.data.validation_split}).")


def _strategy_rule(config: RunConfig, task) -> None:
    t = config.transfer
    if t.strategy not in task.capabilities.strategies:
        raise HftlError(f"strategy `{t.strategy}` is not available for task {task.name}: use "
                        f"{', '.join(task.capabilities.strategies)}.")
    if config.model.from_scratch and t.strategy != "full":
        raise HftlError(f"from_scratch trains every layer from random weights, so it needs strategy full, not "
                        f"`{t.strategy}`: drop `strategy` (from_scratch implies full) or set `--strategy full`.")
    if t.strategy == "lora" and (t.head_warmup_epochs or t.unfreeze_every or t.freeze):
        raise HftlError("strategy lora trains adapters and the head from step 0: drop head_warmup_epochs, "
                        "unfreeze_every and freeze.")


def _early_stopping_rule(config: RunConfig, task) -> None:
    args = config.training
    if config.transfer.early_stopping_patience and (not args.load_best_model_at_end or args.eval_strategy == "no"):
        raise HftlError(
            "early_stopping_patience needs evaluations and the best model kept: set eval_strategy and "
            "save_strategy (both `epoch` or both `steps`) and `load_best_model_at_end: true`."
        )


# key -> (the task capability it needs (tasks/base.Capabilities), why)
NEEDS = {
    "source_eval": ("text_embeddings", "the forgetting report measures text embeddings"),
    "ewc": ("source_batches", "EWC reads another dataset as model inputs for its Fisher"),
    "replay_data": ("replay", "replay learns source data through the task's own loading"),
    "head_warmup_epochs": ("phases", "phases unfreeze a single tower's layer groups"),
    "unfreeze_every": ("phases", "phases unfreeze a single tower's layer groups"),
}
TOWER_KEYS = frozenset({"clip_mode", "gather_features"} | {
    f"{tower}_{k}" for tower in ("text", "vision") for k in ("strategy", "unfrozen_groups", "learning_rate", "layer_decay")
})


def _capability_rule(config: RunConfig, task) -> None:
    """A key whose feature the task lacks is an error, never silently ignored."""
    from hftl.tasks import get_task

    for name, (capability, why) in NEEDS.items():
        if _value(config, name) and not getattr(task.capabilities, capability):
            able = [n for n in TASKS if getattr(get_task(n).capabilities, capability)]
            raise HftlError(f"{name} is not available for task {task.name} ({why}; tasks that have it: "
                            f"{', '.join(able)}). Drop `{name}`.")
    if not task.capabilities.towers:
        fresh = TransferArgs()  # a resolved config lists them at their defaults: only set values count
        given = {k for k in config.user_keys & TOWER_KEYS if getattr(config.transfer, k) != getattr(fresh, k)}
        if given:
            dual = [n for n in TASKS if get_task(n).capabilities.towers]
            raise HftlError(
                f"{', '.join(sorted(given))} apply to dual encoders (task {', '.join(dual)}) only; task `{task.name}` "
                "has one tower. Drop them, or use strategy, unfrozen_groups, learning_rate and layer_decay."
            )


def _value(config: RunConfig, name: str):
    for args in (config.model, config.data, config.transfer, config.training):
        if hasattr(args, name):
            return getattr(args, name)
    raise KeyError(name)


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


def write_resolved(config: RunConfig, path: str | os.PathLike) -> None:
    command = f"# hftl train {path}\n"
    Path(path).write_text(command + yaml.safe_dump(config.resolved(), sort_keys=False))


def _first_sentence(text: str, limit: int = 160) -> str:
    text = " ".join(str(text or "").split())
    end = re.search(r"\.\s+(?=[A-Z(`])", text)  # a sentence ends where the next one starts ("e.g." does not)
    text = text[: end.start() + 1] if end and end.start() < limit else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(getattr(value, "value", value))


def cli_help() -> str:
    """Every key with its default, allowed values and help, for `hftl train --help`."""
    parsed = {a.dest: a.choices for a in _Parser(ARG_CLASSES)._actions}  # Literal and Enum keys alike
    lines = []
    for cls in ARG_CLASSES:
        lines.append(f"\n{cls.__name__}:")
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            allowed = choices(cls, f) or parsed.get(f.name)
            allowed = [getattr(a, "value", a) for a in allowed] if allowed else None
            spec = f"default {_default_text(f)}" + (f"; one of: {', '.join(map(str, allowed))}" if allowed else "")
            lines.append(f"  --{f.name}  ({spec})")
            if f.metadata.get("help"):
                help_text = f.metadata["help"]
                lines.append(f"      {help_text if cls is not TrainingArguments else _first_sentence(help_text)}")
    return "\n".join(lines)


README_START, README_END = "<!-- keys:start: generated by `make readme-keys` from config.py -->", "<!-- keys:end -->"


def key_table() -> str:
    """hftl's own keys as a markdown table, from the same metadata as `hftl train --help`."""
    rows = ["| key | default | allowed values | meaning |", "|---|---|---|---|"]
    for cls in (ModelArgs, DataArgs, TransferArgs):
        for f in dataclasses.fields(cls):
            allowed = choices(cls, f)
            values = ", ".join(f"`{v}`" for v in allowed) if allowed else ""
            meaning = f.metadata.get("help", "").replace("|", "\\|")
            rows.append(f"| `{f.name}` | `{_default_text(f)}` | {values} | {meaning} |")
    return "\n".join(rows) + "\n"


def sync_readme(path: str | os.PathLike = "README.md") -> bool:
    """Rewrite the key table between the README's markers; True when it changed."""
    readme = Path(path)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise HftlError(f"`{path}` has no key-table markers ({README_START} ... {README_END}).")
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    new = f"{head}{README_START}\n{key_table()}{README_END}{tail}"
    readme.write_text(new)
    return new != text
