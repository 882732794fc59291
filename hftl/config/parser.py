"""The keys' parser: the recipe's values as defaults, `--key value` overrides on top, read into the four
argument classes with `HfArgumentParser`, so a recipe key and a command-line flag are the same thing.

This is the part of loading that needs transformers (and, through TrainingArguments, torch): it is
imported only after the recipe file and the values hftl can check alone have passed (config/load.py).
Unknown keys are an error naming the nearest valid key, because a silently ignored typo
(`learning_rte`) costs a whole training run.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from types import MappingProxyType
from typing import Any

from transformers import HfArgumentParser

from hftl.config.keys import RunConfig, all_keys, arg_classes, nearest
from hftl.errors import HftlError

ARG_CLASSES = arg_classes()
OWN_METADATA = frozenset({"range"})  # field metadata that is hftl's, not argparse's


class Parser(HfArgumentParser):
    """HfArgumentParser that raises HftlError instead of printing usage and exiting."""

    def error(self, message: str):  # argparse calls this on bad values
        choice = re.match(r"argument --(\w+)(?:/--[\w-]+)?: invalid choice: '?(.*?)'? \(choose from (.*)\)", message)
        if choice:
            name, value = choice.group(1), choice.group(2)
            allowed = [c.strip(" '\"") for c in choice.group(3).split(",")]
            raise HftlError(f"Unknown {name} `{value}`.{nearest(value, allowed)} Choose one of: {', '.join(allowed)}.")
        missing = re.match(r"argument --(\w+)(?:/--[\w-]+)?: expected (?:one|at least one) argument", message)
        if missing:
            raise HftlError(f"`--{missing.group(1)}` needs a value: `--{missing.group(1)} VALUE` (none followed it on "
                            "the command line).")
        raise HftlError(f"Bad value in the recipe or on the command line: {message}. Check the value's type.")

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        """The field's metadata becomes argparse's keywords: hftl's own entries (a key's Range) stay out."""
        if OWN_METADATA & set(field.metadata):
            field = copy.copy(field)
            field.metadata = MappingProxyType({k: v for k, v in field.metadata.items() if k not in OWN_METADATA})
        HfArgumentParser._parse_dataclass_field(parser, field)


# TrainingArguments keys that transformers 5 removed, and what took their place (recipes written for 4.x use them)
RENAMED = {
    "warmup_ratio": "`warmup_steps`, where a value below 1 is a share of the training steps (warmup_steps: 0.1)",
    "evaluation_strategy": "`eval_strategy`",
    "no_cuda": "`use_cpu: true`",
    "per_gpu_train_batch_size": "`per_device_train_batch_size`",
    "per_gpu_eval_batch_size": "`per_device_eval_batch_size`",
    "push_to_hub_token": "`hub_token` (or the HF_TOKEN variable)",
}


def unknown_key_error(key: str, where: str) -> HftlError:
    if key in RENAMED:
        return HftlError(f"Unknown key `{key}` in {where}: transformers 5 removed it. Use {RENAMED[key]} instead.")
    near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    hint = f" Did you mean `{near[0]}`?" if near else " See `hftl train --help` for the keys."
    return HftlError(f"Unknown key `{key}` in {where}.{hint}")


def parse(values: dict[str, Any], overrides: list[str], recipe_path: str, given: dict[str, Any]) -> RunConfig:
    """The recipe's `values` and the command line's `overrides` as a RunConfig (not validated yet); `given`
    is both as {key: value}, the overrides' as strings (config/load.override_values)."""
    known = set(all_keys())
    for key in values:
        if key not in known:
            raise unknown_key_error(str(key), f"recipe `{recipe_path}`")
    parser = Parser(ARG_CLASSES)
    parser.allow_abbrev = False  # `--lr` must not silently mean `--lr_scheduler_type`
    for action in parser._actions:
        action.required = False
    parser.set_defaults(**defaults(given))
    parser.set_defaults(**_typed_for_parser(parser, values, recipe_path))
    overrides = _merge_repeated_lists(parser, overrides)
    try:
        parsed = parser.parse_args_into_dataclasses(args=overrides, return_remaining_strings=True)
    except (ValueError, TypeError) as err:
        raise HftlError(f"Invalid setting in `{recipe_path}` or its overrides: {err}") from None
    *arg_objs, remaining = parsed
    if remaining:
        flag = next((r for r in remaining if r.startswith("--")), remaining[0])
        if flag.startswith("--"):
            raise unknown_key_error(flag[2:].split("=")[0], "the command line")
        raise HftlError(
            f"Unexpected argument `{flag}`. Overrides take the form `--key value`, and the recipe goes right after the "
            "command (`hftl advise RECIPE.yaml --out DIR`)."
        )
    model, data, transfer, training = arg_objs
    return RunConfig(model, data, transfer, training, recipe_path, set(given))


def defaults(given: dict[str, Any]) -> dict[str, Any]:
    """hftl's defaults, applied before validation; the recipe and the command line still win.

    The task's own (e.g. image tasks keep their image column), then: replay needs a static DDP graph,
    `from_scratch` means strategy full, bf16 on GPUs that have it, and on a machine without an accelerator
    `use_cpu` and no pinned memory."""
    from hftl.tasks import get_task

    out = get_task(str(given.get("task", "text-classification"))).defaults(given)
    if "replay_data" in given:
        # the source batch runs the encoder a second time, outside DDP's forward: DDP must expect each
        # parameter's gradient from both uses (a static graph; every step has the same two passes)
        out["ddp_static_graph"] = True
    if str(given.get("from_scratch", "false")).lower() == "true":
        out["strategy"] = "full"  # random weights: every layer trains
    if not set(given) & {"bf16", "fp16", "use_cpu"} and _gpu_has_bf16():
        out["bf16"] = True  # Ampere and newer: about 2x the fp32 speed, same accuracy
    if not _has_accelerator():
        if "use_cpu" not in given:
            out["use_cpu"] = True  # what the machine has; without it `accelerate launch` on CPUs trains unsynchronised copies
        if "dataloader_pin_memory" not in given:
            out["dataloader_pin_memory"] = False  # pinned memory speeds host-to-GPU copies; without a GPU torch warns
    return out


def _gpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


def _list_keys(parser: HfArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.nargs in ("+", "*")}


def _typed_for_parser(parser: HfArgumentParser, values: dict[str, Any], recipe_path: str) -> dict[str, Any]:
    """YAML values as the parser expects them: scalars as strings (so argparse converts and checks
    them like command-line values), a lone string for a list key as a one-item list."""
    lists = _list_keys(parser)
    actions = {a.dest: a for a in parser._actions}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None and key not in lists and getattr(actions.get(key), "default", None) is not None:
            raise HftlError(f"`{key}` is empty (null) in `{recipe_path}`. Give it a value, or drop the line to keep "
                            f"its default ({_plain(actions[key].default)}).")
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
            out[key] = _bool_text(key, value, getattr(actions.get(key), "choices", None), recipe_path)
        elif isinstance(value, (int, float)):
            out[key] = str(value)
        else:
            out[key] = value
    return out


def _bool_text(key: str, value: bool, allowed, recipe_path: str) -> str:
    """YAML 1.1 reads unquoted yes/no/on/off as booleans: for a key whose values are words
    (`eval_strategy: no`, `cache_features: off`) the word was meant."""
    if not allowed:
        return "true" if value else "false"
    words = [str(_plain(a)) for a in allowed]
    meant = next((w for w in (("on", "yes", "true") if value else ("off", "no", "false", "none")) if w in words), None)
    if meant is None:
        raise HftlError(f"`{key}` in `{recipe_path}` was read as the YAML boolean {str(value).lower()}, which is not "
                        f"one of its values ({', '.join(words)}). Write one of them (quote it if YAML takes it for a "
                        "boolean).")
    return meant


def _plain(value):
    return getattr(value, "value", value)  # an Enum's value (IntervalStrategy.NO is `no`)


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


