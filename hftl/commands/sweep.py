"""`hftl sweep`: the strategies of one recipe side by side, on the same data and budget.

Each strategy trains in its own process (`python -m hftl train`, or the `--launcher` given, e.g.
`accelerate launch --num_processes 8`), so one that fails, even hard, leaves the others running,
and each has its own peak memory. Under a multi-process launch of the sweep itself, every rank
runs the strategies in turn in-process instead. The table (markdown, CSV) and the chart are
rewritten after every strategy; sweep.json records each finished strategy, so `--resume` skips
what is done and a sweep folder is never overwritten by accident.
"""

from __future__ import annotations

import csv
import difflib
import gc
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hftl.config import STRATEGIES, split_tokens
from hftl.errors import HftlError

CHOICES = (*STRATEGIES, "scratch")  # scratch: the same architecture from random weights, every layer training
DEFAULT = CHOICES
STATE = "sweep.json"
COLUMNS = ("strategy", "status", "accuracy", "f1", "trainable_params", "wall_s", "train_s", "peak_memory_mb", "split",
           "accuracy_metric", "f1_metric", "memory_kind", "error")


@dataclass
class Options:
    strategies: tuple[str, ...] = DEFAULT
    folder: str | None = None  # default: <output_dir>-sweep
    resume: bool = False
    launcher: str | None = None  # command that runs `-m hftl train ...` in place of `python`


def parse_strategies(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in CHOICES:
            near = difflib.get_close_matches(name, CHOICES, n=1)
            hint = f" Did you mean `{near[0]}`?" if near else ""
            raise HftlError(f"Unknown strategy `{name}` in --strategies.{hint} Choose from: {', '.join(CHOICES)}.")
    if len(set(names)) != len(names) or not names:
        raise HftlError(f"--strategies must name each strategy once (got `{text}`).")
    return tuple(names)


def strategy_overrides(strategy: str, folder: Path) -> list[str]:
    """What changes per strategy; everything else is the recipe's, so the budget is the same."""
    words = ["--output_dir", str(folder / strategy), "--overwrite_output_dir", "true", "--push_to_hub", "false"]
    if strategy == "scratch":
        return [*words, "--strategy", "full", "--from_scratch", "true"]
    return [*words, "--strategy", strategy, "--from_scratch", "false"]


def _fingerprint(recipe: str, overrides: list[str], launcher: str | None, world: int) -> str:
    """The recipe's content, the overrides and how it is launched: a resumed sweep compares like with like."""
    digest = hashlib.sha256(Path(recipe).read_bytes())
    digest.update("\0".join([*overrides, launcher or "", str(world)]).encode())
    return digest.hexdigest()[:16]


def _open(folder: Path, recipe: str, overrides: list[str], options: Options, world: int) -> dict:
    """The sweep's state: new, or resumed from sweep.json. Never a silent overwrite."""
    fingerprint = _fingerprint(recipe, overrides, options.launcher, world)
    state_file = folder / STATE
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if not options.resume:
            done = ", ".join(state.get("results", {})) or "none"
            raise HftlError(
                f"`{folder}` holds a previous sweep (finished: {done}). Pass `--resume` to continue it (finished "
                "strategies are kept), or `--sweep_dir` with a new folder."
            )
        if state.get("fingerprint") != fingerprint:
            raise HftlError(
                f"`{folder}` holds a sweep of a different recipe, different overrides or another launch (`--launcher`, "
                "number of processes): resuming would mix budgets. Use the same ones, or `--sweep_dir` with a new folder."
            )
        return state
    if folder.is_dir() and any(folder.iterdir()):
        raise HftlError(f"`{folder}` already holds files that are not a sweep. Pass `--sweep_dir` with a new folder.")
    return {"recipe": recipe, "overrides": overrides, "fingerprint": fingerprint, "results": {}}


def _command(recipe: str, overrides: list[str], launcher: str | None) -> list[str]:
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    return [*prefix, "-m", "hftl", "train", recipe, *overrides]


def _tee(stream, *sinks) -> None:
    for chunk in iter(lambda: stream.read1(4096), b""):
        for sink in sinks:
            sink.write(chunk)
            sink.flush()


def _run_process(command: list[str], log: Path) -> tuple[int, str]:
    """Run one strategy, its output shown live and kept in `log`; (exit code, last error line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        screen = getattr(sys.stdout, "buffer", None)
        reader = threading.Thread(target=_tee, args=(process.stdout, *([screen] if screen else []), sink))
        reader.start()
        code = process.wait()
        reader.join()
    return code, _last_error(log.read_text(errors="replace"))


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("hftl: error:"):
            return line.removeprefix("hftl: error:").strip()
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else "no output"


def _run_in_process(recipe: str, overrides: list[str]) -> tuple[int, str]:
    """Under a multi-process launch: every rank runs the strategy here, like any `hftl train`. A crash
    mid-training may hit one rank only, and the others would wait for it in a collective: it ends the
    sweep instead (sweep.json keeps what finished; `--resume` goes on). `--launcher` isolates crashes."""
    import torch

    from hftl.commands import train
    from hftl.commands.card import reproduce_command
    from hftl.config import load_config

    try:
        train.train(load_config(recipe, overrides), reproduce_command(recipe, overrides))
    except HftlError as err:  # bad input is found before training, on every rank alike: a row in the table
        return 2, str(err)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next strategy starts from an empty GPU
    return 0, ""


def _row(strategy: str, code: int, error: str, out: Path, wall: float) -> dict:
    row = {"strategy": strategy, "status": "ok" if code == 0 else "failed", "wall_s": round(wall, 1), "error": ""}
    results = out / "all_results.json"
    if code != 0 or not results.is_file():
        row["status"], row["error"] = "failed", (error or "no all_results.json written")[:300]
        return row
    metrics = json.loads(results.read_text())
    split = "test" if any(k.startswith("test_") for k in metrics) else "eval"
    multi = f"{split}_accuracy" not in metrics and f"{split}_subset_accuracy" in metrics
    row["accuracy_metric"], row["f1_metric"] = ("subset_accuracy", "f1_micro") if multi else ("accuracy", "f1_macro")
    row["accuracy"] = metrics.get(f"{split}_{row['accuracy_metric']}")
    row["f1"] = metrics.get(f"{split}_{row['f1_metric']}")
    row["split"] = split
    row["trainable_params"] = metrics.get("trainable_params")
    row["train_s"] = round(metrics["train_runtime"], 1) if "train_runtime" in metrics else None
    row["peak_memory_mb"] = metrics.get("peak_gpu_memory_mb", metrics.get("peak_rss_mb"))
    row["memory_kind"] = "GPU allocated" if "peak_gpu_memory_mb" in metrics else "process RSS"
    return row


def _move_tokens(overrides: list[str]) -> list[str]:
    """A hub token moves into HF_TOKEN, which every strategy's process inherits (gated checkpoints still load);
    it never reaches sweep.json, the logs or a command line."""
    kept, tokens = split_tokens(overrides)
    for token in tokens.values():
        os.environ["HF_TOKEN"] = token
    return kept


def run(recipe: str, overrides: list[str], options: Options) -> list[dict]:
    from hftl.config import load_config

    overrides = _move_tokens(overrides)
    base = load_config(recipe, overrides)  # a bad recipe or override fails here, once, not in every strategy
    folder = Path(options.folder or f"{str(base.training.output_dir).rstrip('/')}-sweep")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    main_process = int(os.environ.get("RANK", "0") or 0) == 0
    if world > 1 and options.launcher:
        raise HftlError("--launcher starts each strategy's processes itself: run `hftl sweep` without accelerate launch.")
    from hftl.tasks import get_task

    if not get_task(base.transfer.task).capabilities.compare:
        raise HftlError(f"hftl sweep compares classification strategies; task `{base.transfer.task}` has its own "
                        "comparisons (for CLIP: clip_mode zero_shot / linear_probe / contrastive, and hftl wise-ft).")
    state = _open(folder, recipe, overrides, options, world)
    if world > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # every rank has checked the folder before any rank writes to it
    if main_process:
        _save_state(folder, state)  # from here on the folder is a sweep: a killed one resumes
    for strategy in options.strategies:
        if state["results"].get(strategy, {}).get("status") == "ok":
            print(f"hftl sweep: {strategy} finished in an earlier run; kept.")
            continue
        words = [*overrides, *strategy_overrides(strategy, folder)]
        print(f"\nhftl sweep: {strategy} ({options.strategies.index(strategy) + 1}/{len(options.strategies)})", flush=True)
        start = time.perf_counter()
        if world > 1:
            code, error = _run_in_process(recipe, words)
        else:
            code, error = _run_process(_command(recipe, words, options.launcher), folder / "logs" / f"{strategy}.log")
        state["results"][strategy] = _row(strategy, code, error, folder / strategy, time.perf_counter() - start)
        if main_process:
            _write(folder, state, options.strategies, base, in_process=world > 1)
    rows = [state["results"][s] for s in options.strategies]
    if main_process:
        _write(folder, state, options.strategies, base, in_process=world > 1)  # also when every strategy was kept
        print("\n" + markdown(rows, base, in_process=world > 1))
        print(f"hftl sweep: table, CSV and chart written to {folder}")
    return rows


def _save_state(folder: Path, state: dict, name: str = STATE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / (name + ".tmp")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    temporary.replace(folder / name)  # a sweep killed mid-write still resumes from the last whole state


def _write(folder: Path, state: dict, strategies: tuple[str, ...], base, in_process: bool) -> None:
    rows = [state["results"][s] for s in strategies if s in state["results"]]
    _save_state(folder, state)
    (folder / "sweep.md").write_text(markdown(rows, base, in_process))
    with open(folder / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    chart(rows, folder / "sweep.png", _title(base))


def _title(base) -> str:
    return f"{base.model.model_name_or_path} on {base.data.dataset or base.data.train_file}"


def _number(value, form: str) -> str:
    return "" if value is None else format(value, form)


def markdown(rows: list[dict], base, in_process: bool = False) -> str:
    split = next((r["split"] for r in rows if r.get("split")), "test")
    memory = next((r["memory_kind"] for r in rows if r.get("memory_kind")), "process RSS")
    multi = any(r.get("accuracy_metric") == "subset_accuracy" for r in rows)
    names = ("subset accuracy", "micro-F1") if multi else ("accuracy", "macro-F1")
    lines = [
        f"# Strategy sweep: {_title(base)}",
        "",
        f"Same data, epochs ({base.training.num_train_epochs:g}), batch size ({base.training.per_device_train_batch_size}) "
        f"and learning rates for every strategy; metrics on the {split} split.",
        "",
        f"| strategy | {names[0]} | {names[1]} | trainable params | wall time (s) | train time (s) | peak memory (MB, {memory}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            error = r["error"].replace("|", "\\|")
            lines.append(f"| {r['strategy']} | failed: {error} | | | {r['wall_s']:.0f} | | |")
            continue
        lines.append(
            f"| {r['strategy']} | {_number(r['accuracy'], '.4f')} | {_number(r['f1'], '.4f')} | "
            f"{_number(r['trainable_params'], ',')} | {r['wall_s']:.0f} | {_number(r['train_s'], '.1f')} | "
            f"{_number(r['peak_memory_mb'], ',.0f')} |"
        )
    lines += ["", "Wall time is the whole `hftl train` process (start-up, data, training, evaluation, saving)."]
    if in_process:
        lines.append("In-process sweep (multi-process launch): on CPU the peak RSS is the process's so far, not the strategy's "
                     "(GPU peaks are reset for each strategy).")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["strategy"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.6 * len(rows) + 2), sharey=True)
    y = range(len(rows))
    accuracy = [r.get("accuracy") or 0 for r in rows]
    f1 = [r.get("f1") or 0 for r in rows]
    left.barh([i - 0.2 for i in y], accuracy, height=0.4, label="accuracy", color="#3b75af")
    left.barh([i + 0.2 for i in y], f1, height=0.4, label="macro-F1", color="#8fbbd9")
    for i, r in enumerate(rows):
        text = "failed" if r["status"] != "ok" else f"{accuracy[i]:.3f}"
        left.text(max(accuracy[i], 0) + 0.01, i - 0.2, text, va="center", fontsize=8)
    left.set_xlim(0, 1.12)
    left.set_yticks(list(y), names)
    left.invert_yaxis()
    left.set_xlabel("score")
    left.legend(loc="lower right", fontsize=8)
    right.barh(list(y), [r["wall_s"] for r in rows], color=["#c44e52" if r["status"] != "ok" else "#55a868" for r in rows])
    right.set_xlabel("wall time (s)")
    fig.suptitle(f"Strategy sweep: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
