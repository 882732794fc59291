"""A run's output folder: what it holds, and the marker that tells a finished run from a stopped one.

`hftl train` writes `_hftl_run.json` ({"status": "running"}) before its first file and rewrites it
as {"status": "finished"} after its last (only the main process writes). A folder is then:

- `empty`: missing, or no files;
- `plan`: only `hftl plan`'s files (plan.md, plan.csv, plan.png);
- `unfinished`: the marker says running: a run that failed or was stopped, maybe with checkpoints;
- `finished`: the marker says finished;
- `unknown`: files and no marker (an older hftl's run, or someone else's files).

So a failed run never blocks its corrected rerun (an unfinished folder without a complete checkpoint
is simply reused), a finished one is never written over unless asked (`overwrite_output_dir`), and
overwriting removes the earlier run's checkpoints, so no later `resume` continues one of them.
Checks here read only; `claim` (after every input check) and `finish` write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hftl.engine import checkpoint_files
from hftl.errors import HftlError

MARKER = "_hftl_run.json"  # the leading underscore keeps this local state out of Hub uploads (Trainer ignores `_*`)
PLAN_FILES = frozenset({"plan.md", "plan.csv", "plan.png"})


@dataclass
class Folder:
    path: Path
    kind: str  # empty | plan | unfinished | finished | unknown
    checkpoints: list[Path] = field(default_factory=list)  # checkpoint-N folders, newest first

    def complete(self) -> list[Path]:
        return [c for c in self.checkpoints if checkpoint_files.problem(c) is None]


def inspect(output_dir: str | os.PathLike) -> Folder:
    out = Path(output_dir)
    files = [p.name for p in out.iterdir()] if out.is_dir() else []
    found = checkpoint_files.checkpoints(out)
    if not files:
        return Folder(out, "empty")
    status = _status(out / MARKER)
    if status in ("running", "finished"):
        return Folder(out, "unfinished" if status == "running" else "finished", found)
    if set(files) <= PLAN_FILES:
        return Folder(out, "plan")
    return Folder(out, "unknown", found)


def _status(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def check_writable(output_dir: str | os.PathLike) -> None:
    """A file in the way, or a folder this user cannot write: said before anything is loaded."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise HftlError(f"output_dir `{out}` is a file, not a folder. Point `--output_dir` at a folder (it is created "
                        "if missing), or move the file away.")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise HftlError(f"output_dir `{out}` cannot be created: `{probe}` is a file. Point `--output_dir` at a folder "
                        "path whose parents are folders.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HftlError(f"output_dir `{out}` is not writable: `{probe}` is read-only for this user. Point "
                        "`--output_dir` at a folder you can write to.")


def verdict(output_dir: str, overwrite: bool, resuming: bool) -> str:
    """What a new run may do with output_dir: `fresh`, `reuse` (a stopped run with no checkpoint to keep),
    `overwrite` or `resume`; bad combinations and finished runs without a flag are refused, naming the fix."""
    check_writable(output_dir)
    folder = inspect(output_dir)
    if overwrite and resuming:
        raise HftlError(
            "overwrite_output_dir and resume_from_checkpoint are both set: overwriting removes the earlier run's "
            "checkpoints, resuming continues one. Drop `overwrite_output_dir` to continue the run, or "
            "`resume_from_checkpoint` to start over."
        )
    if resuming:
        return "resume"
    if folder.kind in ("empty", "plan"):
        return "fresh"
    if overwrite:
        return "overwrite"
    if folder.kind == "unfinished":
        complete = folder.complete()
        if not complete:
            return "reuse"
        raise HftlError(
            f"output_dir `{folder.path}` holds a run that stopped before it finished, with checkpoint "
            f"`{complete[0].name}`. Continue it with `--resume_from_checkpoint true`, pass `--overwrite_output_dir "
            "true` to start over (its checkpoints are removed), or pick another `--output_dir`."
        )
    what = "a finished run" if folder.kind == "finished" else "files from an earlier run"
    raise HftlError(
        f"output_dir `{folder.path}` already holds {what}. Pick another `--output_dir`, pass "
        "`--overwrite_output_dir true` to replace it (its checkpoints are removed), or `--resume_from_checkpoint "
        "PATH` to continue it."
    )


def claim(output_dir: str, action: str) -> None:
    """Mark the folder as this run's, before its first file. Overwriting or reusing removes the earlier
    run's checkpoints (saying so), so a later `resume_from_checkpoint: true` cannot continue one of them."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if action in ("overwrite", "reuse"):
        old = checkpoint_files.checkpoints(out)
        for folder in old:
            shutil.rmtree(folder)
        removed = f"; removed its {len(old)} checkpoint(s) ({', '.join(f.name for f in old[::-1])})" if old else ""
        if action == "overwrite":
            print(f"hftl: overwrite_output_dir: writing over the earlier run in {out}{removed}.")
        else:
            print(f"hftl: reusing {out}: the run there stopped before its first complete checkpoint{removed}.")
    _write_marker(out, "running")


def finish(output_dir: str) -> None:
    """The last write of a run: from here the folder is a finished run."""
    _write_marker(Path(output_dir), "finished")


def _write_marker(out: Path, status: str) -> None:
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid()}
    temporary = out / (MARKER + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(out / MARKER)  # whole or not at all: a kill mid-write never leaves half a marker


def how_to_continue(output_dir: str, command: str, first: str = "") -> str:
    """For a run that stopped: its last complete checkpoint and the command that continues from it (or,
    with none, the rerun). `first` is what to do before that (free some space, ...)."""
    last = checkpoint_files.newest_complete(output_dir, say=lambda line: None)
    if last is None:
        return (f"No checkpoint was saved in {output_dir}, so there is nothing to resume: {first}rerun `{command}` "
                "(set save_strategy to keep checkpoints).")
    again = re.sub(r"\s--resume_from_checkpoint(?:=|\s+)\S+", "", command) + " --resume_from_checkpoint true"
    return f"The last checkpoint, {last}, is kept: {first}continue with `{again}`."


def plan_may_write(output_dir: str) -> bool:
    """`hftl plan` writes its files where no run's files would be replaced: an empty folder, an earlier plan,
    or a run that stopped before its first complete checkpoint."""
    folder = inspect(output_dir)
    return folder.kind in ("empty", "plan") or (folder.kind == "unfinished" and not folder.complete())
