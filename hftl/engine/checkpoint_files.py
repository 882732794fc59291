"""Whether a Trainer checkpoint folder can be resumed from: its files are read, not just listed.

A checkpoint counts as complete when its weights' safetensors headers parse and promise no more
bytes than the file holds, trainer_state.json parses, and optimizer, scheduler and RNG state load
with torch's safe loader (`weights_only=True`, memory-mapped: the structure is read, not the
tensors). A run killed or out of disk while saving leaves a folder that fails one of these; a
checkpoint whose pickle the safe loader refuses is named as such, because it was not written by
the Trainer (or was altered), and is never loaded.

`problem(folder)` returns why a folder is not resumable (None: it is); `newest_complete(out)` is
the checkpoint `resume_from_checkpoint: true` continues.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
# DeepSpeed and FSDP write model and optimizer state in formats of their own: those are checked by name only
ENGINE_FOLDERS = ("global_step*", "pytorch_model_fsdp_*", "optimizer_0")
MAX_HEADER = 100_000_000  # the safetensors format's own ceiling on its JSON header


def step(folder: Path) -> int:
    tail = folder.name.split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def checkpoints(out: str | Path) -> list[Path]:
    """The checkpoint-N folders of a run folder, newest first."""
    root = Path(out)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("checkpoint-*") if p.is_dir()), key=step, reverse=True)


def problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, in a few words; None when every file it needs reads back."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    engine = any(any(folder.glob(pattern)) for pattern in ENGINE_FOLDERS)
    checks = [_weights(folder, engine), _trainer_state(folder), _json_files(folder), _rng_state(folder)]
    if not engine:
        checks += [_torch_file(folder / "optimizer.pt"), _torch_file(folder / "scheduler.pt")]
    return next((c for c in checks if c), None)


def newest_complete(out: str | Path, say=print) -> str | None:
    """The newest checkpoint-N whose files all read back; each newer one that does not is skipped, saying why."""
    for folder in checkpoints(out):
        reason = problem(folder)
        if reason is None:
            return str(folder)
        say(f"hftl: skipping {folder.name}: {reason}.")
    return None


def _weights(folder: Path, engine: bool) -> str | None:
    present = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    if not present:
        return None if engine else "no model weights (model.safetensors): the run stopped while saving it"
    for path in present:
        if path.name.endswith(".index.json"):
            reason = _index(path)
        elif path.suffix == ".safetensors":
            reason = safetensors_problem(path)
        else:
            reason = _torch_file(path)
        if reason:
            return reason
    return None


def _index(path: Path) -> str | None:
    try:
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{path.name} is not a weight index (truncated or not JSON)"
    for shard in shards:
        reason = safetensors_problem(path.parent / shard) if (path.parent / shard).is_file() else f"{shard} is missing"
        if reason:
            return reason
    return None


def safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes: all of them must be there."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(size - 8, MAX_HEADER):
                return f"{path.name} is truncated or not a safetensors file"
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError):
        return f"{path.name} has no readable safetensors header (junk or truncated)"
    if 8 + length + end > size:
        return f"{path.name} is truncated ({size:,} bytes of the {8 + length + end:,} its header describes)"
    return None


def _trainer_state(folder: Path) -> str | None:
    path = folder / "trainer_state.json"
    if not path.is_file():
        return "no trainer_state.json: the run stopped while saving it"
    try:
        state = json.loads(path.read_text())
        int(state["global_step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "trainer_state.json does not parse (truncated or junk)"
    return None


def _json_files(folder: Path) -> str | None:
    """Every JSON file a save wrote (hftl's plan record, configs, tokenizer) must parse: a kill mid-save can
    leave one empty while the rest of the checkpoint is whole."""
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return f"{path.name} does not parse (truncated or empty)"
    return None


def _rng_state(folder: Path) -> str | None:
    files = sorted(folder.glob("rng_state*.pth"))
    if not files:
        return "no rng_state.pth: the run stopped while saving it"
    return next((r for r in (_torch_file(f) for f in files) if r), None)


def _torch_file(path: Path) -> str | None:
    """Loads with torch's safe loader, memory-mapped: a truncated zip, junk, or a pickle of arbitrary objects fails."""
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    if not path.is_file():
        return f"no {path.name}: the run stopped while saving it (resuming would start a fresh {path.stem})"
    try:
        with safe_globals():  # numpy RNG state: the same allowlist the Trainer loads it with
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it calls `{found.group(1)}`)" if found else ""
        return (f"{path.name} holds Python objects torch's safe loader refuses{what}: the Trainer does not write "
                "such files, so it was altered or comes from elsewhere, and hftl will not load it")
    except Exception:  # a truncated zip, junk bytes, a file of another format: torch raises several types
        return f"{path.name} does not load (truncated or junk)"
    return None
