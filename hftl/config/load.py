"""Recipe loading: a flat YAML of defaults, `--key value` overrides on top, hftl's and the task's
defaults beneath both, then validation (config/rules.py). After `load_config` the config is not
changed: a value the run cannot honour is an error there, not an override later.

Keys are read with `HfArgumentParser`, so a recipe key and a command-line flag are the same thing.
Unknown keys are an error naming the nearest valid key, because a silently ignored typo
(`learning_rte`) costs a whole training run.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hftl.config.keys import ARG_CLASSES, RunConfig, all_keys, nearest
from hftl.config.rules import validate
from hftl.errors import HftlError


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


class _Parser(HfArgumentParser):
    """HfArgumentParser that raises HftlError instead of printing usage and exiting."""

    def error(self, message: str):  # argparse calls this on bad values
        choice = re.match(r"argument --(\w+)(?:/--[\w-]+)?: invalid choice: '?(.*?)'? \(choose from (.*)\)", message)
        if choice:
            name, value = choice.group(1), choice.group(2)
            allowed = [c.strip(" '\"") for c in choice.group(3).split(",")]
            raise HftlError(f"Unknown {name} `{value}`.{nearest(value, allowed)} Choose one of: {', '.join(allowed)}.")
        raise HftlError(f"Bad value in the recipe or on the command line: {message}. Check the value's type.")


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
    `from_scratch` means strategy full, bf16 on GPUs that have it, and on a machine without an accelerator
    `use_cpu` and no pinned memory."""
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


def write_resolved(config: RunConfig, path: str | os.PathLike) -> None:
    command = f"# hftl train {path}\n"
    Path(path).write_text(command + yaml.safe_dump(config.resolved(), sort_keys=False))
