"""Checks that need no model and run before anything is written: the output folder, the checkpoint
to resume from, the logging integrations, the FSDP settings; and the hub token moved out of the Trainer's arguments.

They take plain values, so a training script of its own can run them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
from pathlib import Path

from hftl.errors import HftlError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
INTEGRATIONS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                "comet_ml": ("comet_ml",), "clearml": ("clearml",), "dvclive": ("dvclive",), "trackio": ("trackio",)}


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse to train into a folder holding an earlier run, unless asked to overwrite or resuming."""
    out = Path(output_dir)
    if not out.is_dir() or not any(out.iterdir()) or overwrite or resuming:
        return
    raise HftlError(
        f"output_dir `{out}` already holds files from an earlier run. Pick another `--output_dir`, "
        "pass `--overwrite_output_dir true` to replace it, or `--resume_from_checkpoint PATH` to continue it."
    )


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`true`/`last` mean the newest complete checkpoint in output_dir; any other value must be a complete
    checkpoint folder. Returns the folder to resume from (None: a fresh run)."""
    if not value:
        return None
    if str(value).lower() in ("true", "last"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            raise HftlError(
                f"resume_from_checkpoint={value} but `{output_dir}` holds no checkpoint-* folder. Train with a "
                "save_strategy first, or pass the checkpoint folder's path."
            )
        return last
    if not complete(Path(value)):
        raise HftlError(
            f"resume_from_checkpoint `{value}` is not a complete checkpoint folder (weights, trainer state and RNG "
            "state; a run killed while saving leaves an incomplete one). Pass a "
            f"`{output_dir}/checkpoint-N` folder, or `true` for the newest one."
        )
    return str(value)


def complete(folder: Path) -> bool:
    """The Trainer writes weights, optimizer, trainer_state.json, then RNG state: all there = finished."""
    weights = any((folder / n).is_file() for n in WEIGHT_FILES)
    return weights and (folder / "trainer_state.json").is_file() and any(folder.glob("rng_state*.pth"))


def last_complete_checkpoint(out: str) -> str | None:
    """Newest checkpoint-N that was fully written; a kill during a save leaves a partial one behind."""
    if not os.path.isdir(out):
        return None

    def step(path: Path) -> int:
        tail = path.name.split("-")[-1]
        return int(tail) if tail.isdigit() else -1

    for folder in sorted(Path(out).glob("checkpoint-*"), key=step, reverse=True):
        if complete(folder):
            return str(folder)
        print(f"hftl: skipping {folder.name}: incomplete (the run stopped while saving it).")
    return None


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
