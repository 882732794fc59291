"""Command line: `hftl train|plan|advise|sweep|wise-ft RECIPE.yaml [--key value ...]`, and
`hftl evaluate|predict RUN_DIR ...` on a finished run (commands/evaluate.py, commands/predict.py).

Bad input (HftlError) prints one paragraph and exits with code 2, without a traceback; the same
under `accelerate launch -m hftl`, where each rank would otherwise print a stack. Ctrl-C prints one
line (the last checkpoint and the command that resumes it) and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from hftl import __version__
from hftl.errors import HftlError, Interrupted

USAGE = """hftl train RECIPE.yaml [--key value ...]   fine-tune (writes plan, model, metrics, model card)
       hftl plan  RECIPE.yaml [--key value ...]   build the model and print its layer-group plan
       hftl wise-ft RECIPE.yaml [--alphas 0,0.25,0.5,0.75,1] [--fine_tuned PATH] [--key value ...]
                                                  CLIP: interpolate zero-shot and fine-tuned weights, table + plot
       hftl advise [RECIPE.yaml] [--out DIR] [--probe_samples 1000] [--force] [--verify [--budget 10m] [--resume]]
                   [--key value ...]              measure data, domain, task and a classical baseline; recommend a
                                                  strategy; write its recipe (--verify: short trials decide it)
       hftl sweep RECIPE.yaml [--strategies feature_extraction,partial,full,lora,scratch] [--sweep_dir DIR]
                  [--resume] [--launcher "accelerate launch ..."] [--key value ...]
                                                  train each strategy on the same data and budget; table + CSV + chart
       hftl evaluate RUN_DIR (--test_file F | --dataset NAME [--split S]) [--out DIR] [--overwrite true]
                                                  score a finished run on new labelled data: metrics, per-class table,
                                                  confusion matrix in RUN_DIR/eval/<data name>/
       hftl predict RUN_DIR --input F --output P.csv [--top_k K] [--threshold T] [--bad_rows error|skip]
                                                  label unlabelled rows (csv/tsv/json/jsonl/parquet, image folder)

Any recipe key (hftl's or transformers.TrainingArguments') can be overridden as --key value.
Run `hftl train --help` for the full list of keys, `hftl evaluate --help` and `hftl predict --help` for theirs."""


COMMANDS = ("train", "plan", "wise-ft", "advise", "sweep")
RUN_COMMANDS = ("evaluate", "predict")  # on a finished run's folder, with options of their own (no recipe keys)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hftl", usage=USAGE, add_help=True)
    parser.add_argument("--version", action="version", version=f"hftl {__version__}")
    parser.add_argument("command", choices=COMMANDS + RUN_COMMANDS)
    parser.add_argument("recipe", nargs="?")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers forks badly under DataLoader workers
    if argv and argv[0] in RUN_COMMANDS:
        return _on_run(argv[0], argv[1:])
    if len(argv) >= 1 and argv[0] in COMMANDS and any(a in ("-h", "--help") for a in argv[1:]):
        from hftl.config import cli_help

        print(USAGE + "\n" + cli_help())
        return 0
    if len(argv) >= 2 and argv[0] == "advise" and argv[1].startswith("--"):
        argv.insert(1, "")  # advise takes its keys from the command line alone; `--key value` is no recipe
    args, overrides = _parser().parse_known_args(argv)
    try:
        if not args.recipe and args.command != "advise":
            raise HftlError(f"`hftl {args.command}` needs a recipe file: hftl {args.command} RECIPE.yaml [--key value ...]")
        return _dispatch(args.command, args.recipe, overrides)
    except HftlError as err:
        print(f"hftl: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"hftl: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # outside a training run (loading a recipe, advise, a sweep between its runs)
        print(f"hftl: {args.command} interrupted.", file=sys.stderr)
        return Interrupted.exit_code


def _on_run(command: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(f"hftl.commands.{command}")
    if any(a in ("-h", "--help") for a in argv):
        print(module.parser().format_help())
        return 0
    try:
        return module.main(argv)
    except HftlError as err:
        print(f"hftl: error: {err}", file=sys.stderr)
        return 2


def _dispatch(command: str, recipe: str, overrides: list[str]) -> int:
    """Each command loads its recipe before importing what it runs: a bad recipe is reported without
    paying for torch and transformers (config/load.py checks what it can before it imports them)."""
    from hftl.config import load_config

    if command == "wise-ft":
        alphas = _take(overrides, "--alphas")
        fine_tuned = _take(overrides, "--fine_tuned")
        config = load_config(recipe, overrides)
        from hftl.commands import wise_ft

        wise_ft.run(config, wise_ft.parse_alphas(alphas) if alphas else list(wise_ft.DEFAULT_ALPHAS), fine_tuned)
        return 0
    if command == "advise":
        out, samples, force = _take(overrides, "--out"), _take(overrides, "--probe_samples"), _flag(overrides, "--force")
        samples = _int("--probe_samples", samples, 1000)
        checks = _flag(overrides, "--verify"), _take(overrides, "--budget"), _flag(overrides, "--resume")
        config = load_config(recipe or None, overrides)
        from hftl.commands import advise

        advise.run(config, recipe or None, overrides, out, samples, force, advise.Verify(*checks))
        return 0
    if command == "sweep":
        from hftl.commands import sweep

        options = sweep.Options(
            strategies=sweep.parse_strategies(_take(overrides, "--strategies")),
            folder=_take(overrides, "--sweep_dir"), resume=_flag(overrides, "--resume"),
            launcher=_take(overrides, "--launcher"),
        )
        sweep.run(recipe, overrides, options)
        return 0
    config = load_config(recipe, overrides)
    from hftl.commands import train
    from hftl.commands.card import reproduce_command

    if command == "plan":
        train.plan(config)
    else:
        train.train(config, reproduce_command(recipe, overrides))
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


def _flag(overrides: list[str], flag: str) -> bool:
    """Remove a switch (`--force`, `--force true`); return whether it was on."""
    for i, word in enumerate(overrides):
        if word == flag or word.startswith(flag + "="):
            value = word.split("=", 1)[1] if "=" in word else "true"
            if "=" not in word and i + 1 < len(overrides) and overrides[i + 1].lower() in ("true", "false"):
                value = overrides.pop(i + 1)
            del overrides[i]
            return value.lower() == "true"
    return False


def _int(flag: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise HftlError(f"{flag} takes a whole number (got `{value}`).") from None


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
