"""Recipe loading: the recipe file (config/recipe.py), `--key value` overrides on top, hftl's and the
task's defaults beneath both, then validation (config/rules.py). After `load_config` the config is
not changed: a value the run cannot honour is an error there, not an override later.

The order is what makes bad input fast: the recipe file and every value hftl can check on its own
(allowed values, ranges, paths) are checked before transformers and torch are imported for the
keys' parser (config/parser.py) and the rules that need the task or TrainingArguments.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from hftl.config.recipe import read_recipe

if TYPE_CHECKING:
    from hftl.config.keys import RunConfig

NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


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


def load_config(recipe_path: str | None, overrides: list[str] | None = None, check_paths: bool = True) -> RunConfig:
    """Read a recipe, apply `--key value` overrides, and return the four typed argument objects.

    Without a recipe (`hftl advise --model_name_or_path ... --dataset ...`) every key comes from the overrides.
    `check_paths=False` skips the paths rule (config/paths.py): for a finished run's hftl_config.yaml, which
    names the files it was trained on, not the ones it is used with."""
    from hftl.config import rules

    values = read_recipe(recipe_path) if recipe_path else {}
    recipe_path = recipe_path or "the command line"
    overrides = join_negative_numbers(list(overrides or []))
    given = {**values, **override_values(overrides)}
    rules.check_given(given, check_paths)  # before the heavy imports below
    from hftl.config.parser import parse

    config = parse(values, overrides, recipe_path, given)
    rules.validate(config, check_paths)
    return config


def join_negative_numbers(overrides: list[str]) -> list[str]:
    """`--key -1e-4` as `--key=-1e-4`: argparse takes a word that starts with `-` for an option and would
    report the key as missing its value."""
    out: list[str] = []
    for word in overrides:
        if out and NEGATIVE_NUMBER.match(word) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


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


def write_resolved(config: RunConfig, path: str | os.PathLike) -> None:
    command = f"# hftl train {path}\n"
    Path(path).write_text(command + yaml.safe_dump(config.resolved(), sort_keys=False))
