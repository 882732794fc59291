"""hftl against a plain HF Trainer script, on this machine, with the built-in model and data.

    make bench                       # or: python bench/bench.py --out bench/results.md

Three comparisons, each interleaving its sides (A B A B ...) in this one process:
1. `full` with layer-wise lrs (hftl's optimizer groups) vs a plain `transformers.Trainer` on the same
   model, data, sampler, collator and hyper-parameters: optimizer steps per second.
2. `feature_extraction` with the feature cache vs without: seconds per epoch after the first, and
   held-out accuracy of both.
3. Text throughput on real variable-length reviews (builtin:fine-foods): hftl's defaults (dynamic
   padding, length-grouped batches) vs padding every example to max_length: samples per second.
4. Comparison 2 for images: DINOv2-small on 1,000 MNIST digits (image demo recipe, no augmentation).
5. `torch_compile` (inductor) vs eager on the demo recipe with gradual unfreezing and dynamic padding, a short
   run: dynamo's compile count, median step time and the whole run's time.
It prints a markdown table and writes it to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from timing import StepTimer, interleave, median, steps_per_second, write_table  # noqa: E402

DEMO = ROOT / "recipes" / "demo" / "text-classification.yaml"
IMAGE_DEMO = ROOT / "recipes" / "demo" / "image-classification.yaml"
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_strategy", "no"]


def _config(tmp: str, *overrides: str, recipe: Path = DEMO):
    from hftl.config import load_config

    return load_config(str(recipe), ["--output_dir", tmp, "--overwrite_output_dir", "true", *QUIET, *overrides])


def full_vs_plain(tmp: str, steps: int, repeats: int) -> list[str]:
    """Steps/s of hftl's layer-wise `full` vs the plain Trainer's single-lr optimizer."""
    from transformers import AutoModelForSequenceClassification, Trainer

    from hftl.commands import train as run
    from hftl.engine.trainer import TransferTrainer

    cfg = _config(tmp, "--strategy", "full", "--max_steps", str(steps + 2), "--eval_strategy", "no",
                  "--train_sampling_strategy", "random")
    built = run.build(cfg)
    data = built.task.encode(cfg, built.raw, built.loaded)["train"]
    collator = built.task.collator(built.loaded)
    plain_model = AutoModelForSequenceClassification.from_pretrained(
        built.task.model_source(cfg), config=built.model.config
    )

    common = {"args": cfg.training, "train_dataset": data, "data_collator": collator}
    results = interleave(
        {
            "plain Trainer": steps_per_second(lambda: Trainer(model=plain_model, **common)),
            "hftl full + layer-wise lrs": steps_per_second(
                lambda: TransferTrainer(model=built.model, assignment=built.assignment, **common)
            ),
        },
        repeats,
    )
    plain, ours = median(results["plain Trainer"]), median(results["hftl full + layer-wise lrs"])
    groups = len({a.group for a in built.assignment.values()})
    return [
        f"`full`, {groups} optimizer groups vs plain Trainer (1 lr)",
        f"{ours:.3f} vs {plain:.3f} steps/s",
        f"**{ours / plain:.2f}x**",
        f"{repeats} rounds x {steps} steps, batch {cfg.training.per_device_train_batch_size}, seq <= 128",
    ]


def cache_vs_none(tmp: str, epochs: int, repeats: int, recipe: Path = DEMO, extra: tuple[str, ...] = (),
                  what: str = "builtin:bbc-news (1,530 train / 426 test)") -> list[str]:
    """Epoch time after the first and held-out accuracy, feature extraction with and without the cache."""
    from hftl.commands import train as run

    accuracy: dict[str, list[float]] = {"off": [], "auto": []}
    totals: dict[str, list[float]] = {"off": [], "auto": []}

    def side(mode: str):
        def measure() -> float:
            cfg = _config(f"{tmp}/fe-{mode}", "--strategy", "feature_extraction", "--cache_features", mode,
                          "--num_train_epochs", str(epochs), "--eval_strategy", "no", "--head_lr", "2e-3", *extra,
                          recipe=recipe)
            timer = StepTimer(skip=0)
            start = time.perf_counter()
            metrics = run.train(cfg, "bench", callbacks=[timer])
            totals[mode].append(time.perf_counter() - start)
            accuracy[mode].append(metrics["test_accuracy"])
            return median(timer.epoch_times[1:])

        return measure

    results = interleave({"off": side("off"), "auto": side("auto")}, repeats)
    off, on = median(results["off"]), median(results["auto"])
    kind = "image " if recipe == IMAGE_DEMO else ""
    return [
        f"{kind}`feature_extraction` epoch after the first: cache vs none",
        f"{on:.2f} s vs {off:.1f} s per epoch; test acc {median(accuracy['auto']):.4f} vs {median(accuracy['off']):.4f}; "
        f"whole run {median(totals['auto']):.0f} s vs {median(totals['off']):.0f} s",
        f"**{off / on:.1f}x**",
        f"{repeats} rounds x {epochs} epochs on {what}",
    ]


def dynamic_vs_max_length(tmp: str, samples: int, repeats: int, max_length: int) -> list[str]:
    """Training samples/s on variable-length reviews: hftl's defaults vs pad-to-max_length."""
    from hftl.commands import train as run
    from hftl.engine.trainer import TransferTrainer

    common = ["--dataset", "builtin:fine-foods", "--max_length", str(max_length), "--max_train_samples", str(samples),
              "--num_train_epochs", "1", "--eval_strategy", "no"]
    ours_cfg = _config(tmp, *common)
    padded_cfg = _config(tmp, *common, "--train_sampling_strategy", "random")
    built = run.build(ours_cfg)
    ours_data = built.task.encode(ours_cfg, built.raw, built.loaded)["train"]
    tokenizer = built.processor
    text = ours_cfg.data.text_column
    padded_data = built.raw["train"].map(
        lambda b: tokenizer(b[text], truncation=True, max_length=max_length, padding="max_length"),
        batched=True, remove_columns=[c for c in built.raw["train"].column_names if c != "labels"],
    )
    lengths = [len(x) for x in ours_data["input_ids"]]

    def side(cfg, data):
        def measure() -> float:
            trainer = TransferTrainer(model=built.model, args=cfg.training, train_dataset=data,
                                      data_collator=built.task.collator(built.loaded), assignment=built.assignment)
            result = trainer.train()
            return result.metrics["train_samples_per_second"]

        return measure

    results = interleave(
        {"hftl defaults": side(ours_cfg, ours_data), f"pad to {max_length}": side(padded_cfg, padded_data)}, repeats
    )
    ours, padded = median(results["hftl defaults"]), median(results[f"pad to {max_length}"])
    return [
        f"text throughput: dynamic padding + length-grouped batches vs pad to {max_length}",
        f"{ours:.1f} vs {padded:.1f} samples/s",
        f"**{ours / padded:.2f}x**",
        f"{repeats} rounds x 1 epoch of {samples} fine-food reviews (median {sorted(lengths)[len(lengths) // 2]} "
        f"tokens, max {max(lengths)}), `partial` plan of the demo",
    ]


def compiled_vs_eager(tmp: str, steps: int, unfreeze_every: float) -> list[str]:
    """One eager and one compiled run of the demo with gradual unfreezing (length-grouped, dynamically padded
    batches): compiles counted by dynamo, steady-state step time (median) and the whole fit."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from hftl.commands import train as run

    measured = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile", "true"])):
        torch._dynamo.reset()
        counters.clear()
        cfg = _config(f"{tmp}/compile-{name}", "--max_steps", str(steps), "--unfreeze_every", str(unfreeze_every),
                      "--eval_strategy", "no", *extra)
        timer = StepTimer(skip=0)
        start = time.perf_counter()
        run.train(cfg, "bench", callbacks=[timer])
        measured[name] = (counters["frames"].get("ok", 0), median(timer.step_times), time.perf_counter() - start)
    (_, eager_step, eager_total), (compiles, step, total) = measured["eager"], measured["compiled"]
    return [
        "`torch_compile` (inductor) vs eager: demo with gradual unfreezing, dynamic padding",
        f"compiles: eager 0, compiled {compiles}; median step {step:.2f} s vs {eager_step:.2f} s; "
        f"whole run {total:.0f} s vs {eager_total:.0f} s",
        f"**{eager_step / step:.2f}x** per step, {eager_total / total:.2f}x whole run",
        f"1 round x {steps} steps (max_steps), unfreeze_every {unfreeze_every} (3 phases), batch 16, "
        "pad_to_multiple_of 16 when compiled",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round, comparison 1")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per comparison (A B A B ...)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, comparison 2")
    parser.add_argument("--samples", type=int, default=800, help="training reviews, comparison 3")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--compile_steps", type=int, default=30, help="optimizer steps per run, comparison 5")
    parser.add_argument("--only", default="1,2,3,4,5", help="comparisons to run, e.g. --only 1,3")
    args = parser.parse_args(argv)
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wanted = {int(x) for x in args.only.split(",")}
        if 1 in wanted:
            print("1/5 full with layer-wise lrs vs plain Trainer", flush=True)
            rows.append(full_vs_plain(tmp, args.steps, args.repeats))
        if 2 in wanted:
            print("2/5 feature extraction: cache vs none", flush=True)
            rows.append(cache_vs_none(tmp, args.epochs, max(1, args.repeats - 1)))
        if 3 in wanted:
            print("3/5 dynamic padding vs pad to max_length", flush=True)
            rows.append(dynamic_vs_max_length(tmp, args.samples, max(1, args.repeats - 1), args.max_length))
        if 4 in wanted:
            print("4/5 image feature extraction: cache vs none", flush=True)
            rows.append(cache_vs_none(
                tmp, args.epochs, max(1, args.repeats - 1), IMAGE_DEMO,
                ("--augment", "false", "--max_train_samples", "1000", "--max_eval_samples", "400", "--head_lr", "1e-2"),
                "builtin:mnist-5k (1,000 train / 400 test digits, 56 px) with builtin:dinov2-small"))
        if 5 in wanted:
            print("5/5 torch_compile vs eager with gradual unfreezing", flush=True)
            rows.append(compiled_vs_eager(tmp, args.compile_steps, 0.1))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    text = write_table(
        args.out, "hftl vs plain Trainer", ["comparison", "measured (median)", "ratio", "setup"], rows,
        [f"device: {device}; torch {torch.__version__}; model builtin:minilm-l6",
         "image row: model builtin:dinov2-small",
         "command: python bench/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])],
    )
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
