"""Checks that need no model and run before anything is written: the output folder, the checkpoint
to resume from, the logging integrations, the Hub when pushing, the FSDP settings; and the hub token
moved out of the Trainer's arguments.

They take plain values, so a training script of its own can run them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
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


def _true(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def fsdp_settings(env, fsdp, fsdp_config) -> list[tuple[str, int, bool]]:
    """(where it was set, FSDP version, use_orig_params) for each FSDP setting in force: `accelerate launch`
    with an FSDP config exports ACCELERATE_USE_FSDP, FSDP_VERSION and FSDP_USE_ORIG_PARAMS to every rank;
    TrainingArguments take `fsdp` and `fsdp_config` (keys with or without the `fsdp_` prefix)."""
    found = []
    if _true(env.get("ACCELERATE_USE_FSDP", "")):
        found.append(("the accelerate config's `fsdp_use_orig_params` (FSDP_USE_ORIG_PARAMS)",
                      int(env.get("FSDP_VERSION", "1")), _true(env.get("FSDP_USE_ORIG_PARAMS", "false"))))
    if fsdp:
        config = {k.removeprefix("fsdp_"): v for k, v in (fsdp_config or {}).items()} if isinstance(fsdp_config, dict) else {}
        found.append(("the recipe's `fsdp_config.use_orig_params`", int(config.get("version", 2)),
                      _true(config.get("use_orig_params", "true"))))  # transformers' defaults: FSDP2, orig params on
    return found


def check_fsdp(env, fsdp, fsdp_config) -> None:
    """FSDP1 without use_orig_params flattens each wrapped unit into one FlatParameter: hftl's optimizer groups
    (an explicit lr per layer group, built from the original parameter names) cannot be built over it, and a unit
    that mixes frozen and trainable tensors fails. Refused before anything is read or written."""
    for where, version, orig in fsdp_settings(env, fsdp, fsdp_config):
        if version == 1 and not orig:
            raise HftlError(
                f"FSDP1 with use_orig_params false ({where}) cannot run hftl: FSDP1 then flattens each wrapped unit "
                "into one FlatParameter, but hftl builds its optimizer groups (one lr per layer group) from the original "
                "parameter names, and a unit mixing frozen and trainable tensors fails (\"FlatParameter requires uniform "
                "requires_grad\"). Set use_orig_params to true, or use FSDP2 (`fsdp_version: 2`, "
                "recipes/accelerate/fsdp.yaml), which keeps every original parameter."
            )


def recipe_fingerprint(resolved: dict) -> str:
    """sha256 of a resolved recipe (every key, sorted): equal recipes give equal fingerprints on every node."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same_recipe(resolved: dict, recipe_path: str) -> None:
    """Under distributed training, every rank must run the same resolved recipe: a file changed on one node
    would train different ranks differently (another lr, another freeze plan) and hang or drift silently.
    One all-gather at start; ranks that disagree all stop with the same message."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    mine = {"fingerprint": recipe_fingerprint(resolved), "recipe": recipe_path, "host": socket.gethostname(),
            "values": resolved}
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    compare_recipes(gathered)


def compare_recipes(gathered: list[dict]) -> None:
    """Each rank's {fingerprint, recipe, host, values}; refuse when a rank's differs from rank 0's, naming the
    file on each side and the keys with both values."""
    first = gathered[0]
    for rank, other in enumerate(gathered):
        if other["fingerprint"] == first["fingerprint"]:
            continue
        a, b = first["values"], other["values"]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        shown = "; ".join(f"{k}: {a.get(k, 'unset')!r} on rank 0, {b.get(k, 'unset')!r} on rank {rank}" for k in keys[:6])
        raise HftlError(
            f"The ranks disagree on the recipe: rank {rank} runs `{other['recipe']}` on {other['host']} (fingerprint "
            f"{other['fingerprint']}), rank 0 runs `{first['recipe']}` on {first['host']} (fingerprint "
            f"{first['fingerprint']}); they differ in {len(keys)} key(s): {shown}{' ...' if len(keys) > 6 else ''}. "
            "Every node must run the same recipe file and overrides: copy the file to every node (or keep it on shared "
            "storage) and launch again."
        )


def hide_token(training_args) -> None:
    """Move a command-line hub token into the environment, where huggingface_hub finds it.

    The Trainer pickles TrainingArguments into training_args.bin in every checkpoint and in the
    pushed folder; a token left in the arguments would be uploaded with the model.
    """
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
