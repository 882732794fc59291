"""Command line: `hftl train RECIPE.yaml [--key value ...]` and `hftl plan RECIPE.yaml [...]`.

Bad input (HftlError) prints one paragraph and exits with code 2, without a traceback; the same
under `accelerate launch -m hftl`, where each rank would otherwise print a stack.
"""

from __future__ import annotations

import argparse
import os
import sys

from hftl import __version__
from hftl.errors import HftlError

USAGE = """hftl train RECIPE.yaml [--key value ...]   fine-tune (writes plan, model, metrics, model card)
       hftl plan  RECIPE.yaml [--key value ...]   build the model and print its layer-group plan
       hftl wise-ft RECIPE.yaml [--alphas 0,0.25,0.5,0.75,1] [--fine_tuned PATH] [--key value ...]
                                                  CLIP: interpolate zero-shot and fine-tuned weights, table + plot

Any recipe key (hftl's or transformers.TrainingArguments') can be overridden as --key value.
Run `hftl train --help` for the full list of keys."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hftl", usage=USAGE, add_help=True)
    parser.add_argument("--version", action="version", version=f"hftl {__version__}")
    parser.add_argument("command", choices=["train", "plan", "wise-ft"])
    parser.add_argument("recipe", nargs="?")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks badly under DataLoader workers
    if len(argv) >= 1 and argv[0] in ("train", "plan", "wise-ft") and any(a in ("-h", "--help") for a in argv[1:]):
        from hftl.config import cli_help

        print(USAGE + "\n" + cli_help())
        return 0
    args, overrides = _parser().parse_known_args(argv)
    try:
        if not args.recipe:
            raise HftlError(f"`hftl {args.command}` needs a recipe file: hftl {args.command} RECIPE.yaml [--key value ...]")
        return _dispatch(args.command, args.recipe, overrides)
    except HftlError as err:
        print(f"hftl: error: {err}", file=sys.stderr)
        return 2


def _dispatch(command: str, recipe: str, overrides: list[str]) -> int:
    from hftl import run
    from hftl.card import reproduce_command
    from hftl.config import load_config

    if command == "wise-ft":
        from hftl import wise_ft

        alphas = _take(overrides, "--alphas")
        fine_tuned = _take(overrides, "--fine_tuned")
        config = load_config(recipe, overrides)
        wise_ft.run(config, wise_ft.parse_alphas(alphas) if alphas else list(wise_ft.DEFAULT_ALPHAS), fine_tuned)
        return 0
    config = load_config(recipe, overrides)
    if command == "plan":
        run.plan(config)
    else:
        run.train(config, reproduce_command(recipe, overrides))
    return 0


def _take(overrides: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` (a command's own option, not a recipe key) from the overrides; return VALUE."""
    for i, word in enumerate(overrides):
        if word == flag or word.startswith(flag + "="):
            if "=" in word:
                del overrides[i]
                return word.split("=", 1)[1]
            if i + 1 >= len(overrides):
                raise HftlError(f"{flag} needs a value.")
            value = overrides[i + 1]
            del overrides[i : i + 2]
            return value
    return None


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
