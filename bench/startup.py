"""Whole-process time of hftl's fast errors and of `hftl plan`, against the import of torch and
transformers measured in the same run.

    python bench/startup.py [--runs 5] [--no-plan] [--against DIR]

Each command runs as its own process, `--runs` times, interleaved (A B C A B C ...) so that load on
a shared machine falls on every command alike; the report gives each median and its ratio to the
baseline `python -c "import torch, transformers"`: an error reported before the heavy imports costs
a fraction of it, one reported after them costs more than it. `--against DIR` times the same hftl
commands from another checkout too (e.g. `git worktree add /tmp/old <commit>`), in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo" / "text-classification.yaml"


def commands(folder: Path, plan: bool, sources: dict[str, Path]) -> dict[str, tuple[list[str], Path, int]]:
    """{name: (argv, the hftl source tree on PYTHONPATH, the exit code it must give)}."""
    out = {"baseline: python -c 'import torch, transformers'": ([sys.executable, "-c", "import torch, transformers"],
                                                                 REPO, 0)}
    for label, source in sources.items():
        hftl = [sys.executable, "-m", "hftl"]
        out[f"hftl train missing.yaml{label}"] = ([*hftl, "train", str(folder / "missing.yaml")], source, 2)
        out[f"hftl train bad.yaml (learning_rate: -1){label}"] = ([*hftl, "train", str(folder / "bad.yaml")], source, 2)
        if plan:
            out[f"hftl plan recipes/demo/text-classification.yaml{label}"] = (
                [*hftl, "plan", str(DEMO), "--output_dir", str(folder / "plan")], source, 0)
    return out


def run_once(argv: list[str], source: Path, cwd: Path) -> tuple[float, int]:
    """One process; run outside any checkout, since `python -m` puts the working directory first on the path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(source))
    start = time.perf_counter()
    code = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.perf_counter() - start, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-plan", action="store_true",
                        help="skip `hftl plan` on the demo (it loads its model and data)")
    parser.add_argument("--against", type=Path, help="another checkout whose hftl is timed beside this one")
    args = parser.parse_args(argv)
    sources = {"": REPO, **({f" [{args.against}]": args.against.resolve()} if args.against else {})}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bad.yaml").write_text(f"model_name_or_path: x\ntrain_file: {DEMO}\nlearning_rate: -1\n")
        todo = commands(folder, not args.no_plan, sources)
        times: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(args.runs):
            for name, (command, source, expected) in todo.items():
                seconds, code = run_once(command, source, folder)
                if code != expected:
                    print(f"`{name}` exited with {code}, not {expected}", file=sys.stderr)
                    return 1
                times[name].append(seconds)
    base = statistics.median(next(iter(times.values())))
    print(f"| command | median of {args.runs} (s) | ratio to the baseline |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {median / base:.2f}x |")
    print(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPU(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
