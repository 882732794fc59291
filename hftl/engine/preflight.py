"""Checks that need no model and run before anything is written: the output folder, the checkpoint
to resume from, the logging integrations, the Hub when pushing; and the hub token moved out of the
Trainer's arguments.

They take plain values, so a training script of its own can run them too.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

from hftl.engine import checkpoint_files, run_folder
from hftl.errors import HftlError, first_line

HUB_TIMEOUT_S = 20  # a Hub that does not answer the token check in this long will not take the upload either
INTEGRATIONS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                "comet_ml": ("comet_ml",), "clearml": ("clearml",), "dvclive": ("dvclive",), "trackio": ("trackio",)}


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> str:
    """Refuse a folder this run may not write into (a file, read-only, a finished run without overwrite, ...).
    Returns what the run does with it: fresh, reuse, overwrite or resume (engine/run_folder.py)."""
    return run_folder.verdict(output_dir, overwrite, resuming)


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`true`/`last` mean the newest complete checkpoint in output_dir; any other value must be a complete
    checkpoint folder. Returns the folder to resume from (None: a fresh run), named in one line."""
    if not value:
        return None
    say = print if int(os.environ.get("RANK", "0") or 0) == 0 else (lambda line: None)
    if str(value).lower() in ("true", "last"):
        last = checkpoint_files.newest_complete(output_dir, say)
        if last is None:
            found = checkpoint_files.checkpoints(output_dir)
            what = (f"no complete checkpoint (the {len(found)} checkpoint-* folder(s) there fail to read back, see "
                    "above)" if found else "no checkpoint-* folder")
            raise HftlError(
                f"resume_from_checkpoint={value} but `{output_dir}` holds {what}. Train with a save_strategy first, "
                "pass a complete checkpoint folder's path, or start a fresh run."
            )
    else:
        last = str(value)
        reason = checkpoint_files.problem(Path(last))
        if reason:
            raise HftlError(
                f"resume_from_checkpoint `{value}` is not a complete checkpoint folder: {reason}. (A run killed or out "
                f"of disk while saving leaves an incomplete one.) Pass another `{output_dir}/checkpoint-N` folder, or "
                "`true` for the newest complete one."
            )
    say(f"hftl: resuming from {last} (step {checkpoint_files.step(Path(last))}).")
    return last


def check_hub(training_args) -> None:
    """push_to_hub needs the Hub at the end of the run: find out now, not after hours of training."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import constants, whoami

    later = ("or set `push_to_hub: false` and push the finished folder later with `hf upload REPO_ID "
             f"{training_args.output_dir}`")
    if constants.HF_HUB_OFFLINE:
        raise HftlError(f"push_to_hub is on but the Hub is switched off here (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE, {later}.")
    err = _ask(whoami, HUB_TIMEOUT_S)
    if err is not None:  # no token, a revoked one, no network, a proxy: huggingface_hub raises several types
        text = first_line(err).lower()
        token = any(w in text for w in ("token", "401", "unauthorized", "login"))
        problem = ("it has no valid token: run `hf auth login` or set HF_TOKEN (or pass `--hub_token`)" if token
                   else f"it cannot reach the Hub ({type(err).__name__}): check the network or proxy")
        raise HftlError(f"push_to_hub is on, but {problem}; {later}.") from None


def _ask(call, timeout: float) -> Exception | None:
    """`call()` in a daemon thread: its exception, a TimeoutError when no answer came in time, or None.
    huggingface_hub's client has no timeout of its own, and a black-holed network would hang here."""
    outcome: list = []

    def run():
        try:
            call()
            outcome.append(None)
        except Exception as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError(f"no answer in {timeout:g} s")


def check_integrations(report_to: list[str] | None) -> None:
    """A report_to backend that is not installed fails after the plan is written; check it first."""
    for name in report_to or []:
        needed = INTEGRATIONS.get(name)
        if needed and not any(importlib.util.find_spec(p) for p in needed):
            raise HftlError(f"report_to includes `{name}` but it is not installed: pip install {needed[0]} (or drop it "
                            "from report_to).")


def hide_token(training_args) -> None:
    """Move a command-line hub token into the environment, where huggingface_hub finds it.

    The Trainer pickles TrainingArguments into training_args.bin in every checkpoint and in the
    pushed folder; a token left in the arguments would be uploaded with the model.
    """
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
