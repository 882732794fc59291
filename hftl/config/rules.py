"""Validation: one rule per concern, all called from here, before anything reads data or writes a file.

Two entry points. `check_given(values)` runs on the values as the recipe and the command line give
them, before the keys' parser imports transformers and torch: each key's allowed values and range
(declared once, in config/keys.py), where the data comes from, and the paths. `validate(config)`
runs those rules again on the typed config (a RunConfig built by a script of its own gets the same
checks), then the rules that need the task or TrainingArguments.

Rules that only a feature knows sit beside it and are called from here: the forgetting features'
(forgetting/__init__.py) and each task's own (`Task.validate`). A key whose feature the task lacks
is an error naming the tasks that have it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from typing import Any

from hftl.config import paths
from hftl.config.keys import TASKS, RunConfig, TransferArgs, choices, nearest, own_keys, ranges
from hftl.config.ranges import TRAINING_RANGES
from hftl.errors import HftlError


def check_given(values: Mapping[str, Any], check_paths: bool = True) -> None:
    """The rules that need nothing but the values: {key: value as given (a string from the command line)}.
    `check_paths=False` for a finished run's saved recipe, whose data and base model may have moved since."""
    for rule in (_value_rule, _column_rule, _source_rule, *([paths.check] if check_paths else [])):
        rule(values)


def validate(config: RunConfig, check_paths: bool = True) -> None:
    """Every rule, on the typed config; the rest run where the facts are known (columns, labels, layer groups).
    The config is not changed after this."""
    from hftl import forgetting
    from hftl.tasks import get_task

    check_given(_flat(config), check_paths)
    task = get_task(config.transfer.task)
    for rule in (_model_rule, _strategy_rule, _length_rule, _loader_rule, _early_stopping_rule, _capability_rule,
                 _advice_rule, _fsdp_rule):
        rule(config, task)
    forgetting.validate(config)  # ewc, replay
    task.validate(config)  # what only the task knows (CLIP's towers, modes and prompts)


def _flat(config: RunConfig) -> dict[str, Any]:
    """hftl's keys and the TrainingArguments keys with a range, as {key: value}."""
    out = {name: getattr(config.training, name) for name in TRAINING_RANGES if hasattr(config.training, name)}
    for args in (config.model, config.data, config.transfer):
        out.update({f.name: getattr(args, f.name) for f in dataclasses.fields(args)})
    return out


# ---------------------------------------------------------------- rules on the values alone


def _value_rule(values: Mapping[str, Any]) -> None:
    """Each key's value against its allowed values (a Literal or `choices`) and its Range."""
    own, bounds = own_keys(), ranges()
    for name, value in values.items():
        if value is None or not isinstance(name, str):
            continue
        if name in own:
            allowed = choices(*own[name])
            if allowed and isinstance(value, str) and value not in allowed:
                raise HftlError(f"Unknown {name} `{value}`.{nearest(value, allowed)} Choose one of: "
                                f"{', '.join(allowed)}.")
            if value == "" and not str(own[name][1].type).startswith("list"):
                raise HftlError(f"`{name}` is an empty string. Give it a value, or drop it for its default.")
        number = _number(value)
        if name in bounds and number is not None and not bounds[name].holds(number):
            finite = "a finite number " if not math.isfinite(number) else ""
            why = f"; {bounds[name].why}" if bounds[name].why else ""
            raise HftlError(f"`{name}` must be {finite}{bounds[name]} (got {value}){why}. Set `{name}` to a value "
                            f"{bounds[name]}.")


def _number(value) -> float | None:
    """A numeric value as given (YAML reads `1e-4` as a string); None where it is no number (the parser says so)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _column_rule(values: Mapping[str, Any]) -> None:
    """The label column is no input: a model that reads its own labels learns nothing it can use."""
    own = own_keys()
    given = {k: values.get(k, own[k][1].default) for k in ("text_column", "text_pair_column", "label_column")}
    for key in ("text_column", "text_pair_column"):
        if given[key] is not None and given[key] == given["label_column"]:
            raise HftlError(
                f"{key} and label_column are both `{given[key]}`: the model would read the labels it is to predict. "
                f"Set `{key}` to the column with the text."
            )


def _source_rule(values: Mapping[str, Any]) -> None:
    """One source of data: `dataset`, or local files (train_file, with validation_file and test_file)."""
    dataset, train = values.get("dataset"), values.get("train_file")
    if dataset and train:
        raise HftlError(
            f"Both `dataset` ({dataset}) and `train_file` ({train}) are set; hftl reads one source of data. Drop "
            "`dataset` to train on the file, or `train_file` to use the dataset."
        )
    others = [k for k in ("validation_file", "test_file") if values.get(k)]
    if others and not train and not paths.is_local_file(dataset):
        raise HftlError(
            f"{' and '.join(f'`{k}`' for k in others)} {'go' if len(others) > 1 else 'goes'} with `train_file`: a "
            "local file of the same type. "
            + (f"`dataset` ({dataset}) brings its own splits (validation is carved from train when it has none); drop "
               f"{' and '.join(others)} or give `train_file` instead of `dataset`." if dataset else "Set `train_file`.")
        )


# ---------------------------------------------------------------- rules on the typed config


def _model_rule(config: RunConfig, task) -> None:
    if not config.model.model_name_or_path:
        raise HftlError("No model given. Set `model_name_or_path` in the recipe or pass `--model_name_or_path ID`.")


def _fsdp_rule(config: RunConfig, task) -> None:
    """The FSDP settings from `accelerate launch` (its environment) or the recipe (`fsdp`, `fsdp_config`)."""
    import os

    from hftl.engine.preflight import check_fsdp

    check_fsdp(os.environ, config.training.fsdp, config.training.fsdp_config)


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


def _length_rule(config: RunConfig, task) -> None:
    """A run the Trainer fits must have steps to take: num_train_epochs 0 without max_steps trains nothing."""
    args = config.training
    if task.mode(config) == "trainer" and args.num_train_epochs == 0 and args.max_steps <= 0:
        raise HftlError(
            "num_train_epochs is 0 and max_steps is not set: the run would train nothing and save the untrained model "
            "as fine-tuned. Set num_train_epochs > 0 or max_steps > 0; `hftl plan` shows the plan without training."
        )


def _loader_rule(config: RunConfig, task) -> None:
    """A setting of the DataLoader's workers without workers: torch refuses it at the first batch."""
    args = config.training  # (TrainingArguments itself refuses dataloader_prefetch_factor without workers)
    if args.dataloader_num_workers == 0 and args.dataloader_persistent_workers:
        raise HftlError(
            "dataloader_persistent_workers keeps DataLoader worker processes alive between epochs, and "
            "dataloader_num_workers is 0 (batches load in the main process). Set dataloader_num_workers >= 1, or drop "
            "dataloader_persistent_workers."
        )


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
    "max_num_patches": ("naflex", "it sizes SigLIP2 NaFlex image inputs, patch sequences of their own aspect ratio"),
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


# key -> (the value above which it is probably a mistake, why): a warning, not an error, since it can be meant
ADVICE = {
    f"{prefix}layer_decay": (1.0, "it gives every layer group a larger lr than the one above it, so the lowest, most "
                                  "general layers change most: the reverse of discriminative fine-tuning. 1.0 means "
                                  "no decay; 0.65 to 0.95 is usual")
    for prefix in ("", "text_", "vision_")
}


def _advice_rule(config: RunConfig, task) -> None:
    """Settings that are allowed but probably not meant: a warning each, with the reason."""
    for name, (limit, why) in ADVICE.items():
        value = _value(config, name)
        if value is not None and value > limit:
            _warn(f"{name} {value:g} is above {limit:g}: {why}.")
    args, t = config.training, config.transfer
    start = t.head_warmup_epochs or t.unfreeze_every  # where the first phase after the head's begins
    if start and args.max_steps <= 0 and start >= args.num_train_epochs:  # (with max_steps, the data decides)
        key = "head_warmup_epochs" if t.head_warmup_epochs else "unfreeze_every"
        _warn(f"{key} {start:g} starts the first unfreezing at epoch {start:g}, but the run ends after "
              f"num_train_epochs {args.num_train_epochs:g}: only the head will train. Lower {key} or raise "
              "num_train_epochs.")


def _warn(text: str) -> None:
    print(f"hftl: warning: {text}", file=sys.stderr)


def _value(config: RunConfig, name: str):
    for args in (config.model, config.data, config.transfer, config.training):
        if hasattr(args, name):
            return getattr(args, name)
    raise KeyError(name)
