"""Validation: one rule per concern, all called from `validate`, before anything reads data.

Rules that only a feature knows sit beside it and are called from here: the forgetting features'
(forgetting/__init__.py), the image keys' (data/images.py), and each task's own
(`Task.validate`). A key whose feature the task lacks is an error naming the tasks that have it.
"""

from __future__ import annotations

import dataclasses

from hftl.config.keys import TASKS, RunConfig, TransferArgs, choices, nearest
from hftl.errors import HftlError


def validate(config: RunConfig) -> None:
    """Every rule that needs no model or data, one per concern, called from here; the rest run where the
    facts are known (columns, labels, layer groups). The config is not changed after this."""
    from hftl import forgetting
    from hftl.data import images
    from hftl.tasks import get_task

    task = get_task(config.transfer.task)
    for rule in (_model_rule, _choice_rule, _range_rule, _strategy_rule, _early_stopping_rule, _capability_rule,
                 _fsdp_rule):
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
                raise HftlError(f"Unknown {f.name} `{value}`.{nearest(value, allowed)} Choose one of: "
                                f"{', '.join(allowed)}.")


def _fsdp_rule(config: RunConfig, task) -> None:
    """The FSDP settings from `accelerate launch` (its environment) or the recipe (`fsdp`, `fsdp_config`)."""
    import os

    from hftl.engine.preflight import check_fsdp

    check_fsdp(os.environ, config.training.fsdp, config.training.fsdp_config)


# key -> (bound, whether the bound itself is allowed, what it means)
RANGES = {
    "layer_decay": (0, False, "1.0 means no decay"),
    "head_warmup_epochs": (0, True, "0 turns it off"),
    "unfreeze_every": (0, True, "0 turns it off"),
    "pad_to_multiple_of": (1, True, "1 pads to each batch's longest text"),
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
