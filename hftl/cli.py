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

Any recipe key (hftl's or transformers.TrainingArguments') can be overridden as --key value.
Run `hftl train --help` for the full list of keys."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hftl", usage=USAGE, add_help=True)
    parser.add_argument("--version", action="version", version=f"hftl {__version__}")
    parser.add_argument("command", choices=["train", "plan"])
    parser.add_argument("recipe", nargs="?")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks badly under DataLoader workers
    if len(argv) >= 1 and argv[0] in ("train", "plan") and any(a in ("-h", "--help") for a in argv[1:]):
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

    config = load_config(recipe, overrides)
    if command == "plan":
        run.plan(config)
    else:
        run.train(config, reproduce_command(recipe, overrides))
    return 0


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
