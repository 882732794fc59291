"""`hftl evaluate RUN_DIR --test_file F` (or `--dataset NAME`): a finished run scored on new labelled data.

The data is read, labelled and preprocessed by the run's task with the run's own keys (commands/finished.py), and
scored by a Trainer with the task's metric function, so the figures mean what the run's own test figures mean. The
metrics, the per-class table and the confusion matrix (commands/outputs.py) go to a folder of their own
(RUN_DIR/eval/<data name>/ unless `--out`): the run's files are never touched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hftl.commands import finished, outputs
from hftl.errors import HftlError

USAGE = ("hftl evaluate RUN_DIR (--test_file F | --dataset NAME [--dataset_config C] [--split S]) [--out DIR] "
         "[--overwrite true] [--batch_size N] [--bad_images error|skip] [--text_column ...] [--label_column ...] "
         "[--image_column ...] [--image_root DIR]")
METRICS = "metrics.json"


def parser() -> finished.Parser:
    p = finished.Parser("evaluate", USAGE)
    p.add_argument("--test_file", help="a labelled csv, tsv, json, jsonl or parquet file")
    p.add_argument("--dataset", help="a Hub dataset, local folder or builtin:NAME")
    p.add_argument("--dataset_config")
    p.add_argument("--split", help="the split of --dataset (default: test, else validation)")
    p.add_argument("--out", help="the folder to write (default: RUN_DIR/eval/<data name>)")
    p.add_argument("--overwrite", type=finished.boolean, default=False)
    p.add_argument("--batch_size", type=int, help="default: the run's per_device_eval_batch_size")
    p.add_argument("--bad_images", choices=("error", "skip"))
    finished.data_options(p, labelled=True)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse(argv)
    if bool(args.test_file) == bool(args.dataset):
        raise HftlError(f"hftl evaluate needs new labelled data: exactly one of `--test_file F` or `--dataset NAME`. "
                        f"Usage: {USAGE}")
    run_path = finished.check_folder(args.run_dir)
    out = _out_dir(args, run_path)
    data = {**finished.data_values(args), "test_file": args.test_file, "dataset": args.dataset,
            "dataset_config": args.dataset_config}
    if args.test_file and not args.image_root:
        data["image_root"] = str(Path(args.test_file).resolve().parent)  # relative image paths start at the file
    if args.bad_images:
        data["bad_images"] = args.bad_images
    run = finished.open_run(args.run_dir, data)
    labelled = run.task.eval_split(run.config, run.labels, args.split)
    split = next(iter(labelled))
    encoded = run.task.encode(run.config, labelled, run.loaded)[split]
    source = Path(args.test_file).name if args.test_file else f"{args.dataset} ({split} split)"
    evaluate(run, encoded, out, source, args.batch_size or run.config.training.per_device_eval_batch_size)
    return 0


def evaluate(run: finished.Finished, encoded, out: Path, source: str, batch_size: int) -> dict:
    """Score `encoded` with a Trainer and the task's metrics; write metrics.json, per_class.csv and the picture."""
    from transformers import Trainer, TrainingArguments

    names, multi = run.labels.names, run.labels.multi_label
    args = TrainingArguments(
        output_dir=str(out), per_device_eval_batch_size=batch_size, report_to="none",
        use_cpu=finished.device().type != "cuda", dataloader_num_workers=run.config.training.dataloader_num_workers,
        **run.task.required(run.config),
    )
    trainer = Trainer(model=run.loaded.model, args=args, data_collator=run.task.collator(run.loaded),
                      compute_metrics=run.task.compute_metrics_fn(run.labels))
    predicted = trainer.predict(encoded, metric_key_prefix="test")
    metrics = {"run": str(run.folder), "data": source, "test_samples": len(encoded), **predicted.metrics}
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    report = outputs.class_report(predicted.predictions, predicted.label_ids, names, multi)
    files = outputs.write_class_report(out, report, names, "test", where=source)
    trainer.log_metrics("evaluate", predicted.metrics)
    print(f"hftl: {', '.join([METRICS, *files])} written to {out}")
    return metrics


def _out_dir(args, run_path: Path) -> Path:
    """The folder to write, checked before anything is read: never the run folder, never an earlier evaluation's
    unless `--overwrite true`."""
    if args.out:
        out = Path(args.out)
        if not out.parent.is_dir():
            raise HftlError(f"The folder above `--out {args.out}` does not exist. Create it first, or write elsewhere.")
    else:
        name = Path(args.test_file).stem if args.test_file else Path(args.dataset.rstrip("/")).name
        if args.dataset and args.split:
            name += f"-{args.split}"
        out = run_path / "eval" / (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "data")
    if out.resolve() == run_path.resolve():
        raise HftlError(f"`--out {args.out}` is the run folder; hftl evaluate never writes over a run's own files "
                        "(its per_class.csv and confusion matrix). Pass another folder.")
    if out.exists() and not out.is_dir():
        raise HftlError(f"`{out}` is a file, not a folder. Pass `--out DIR` with a folder.")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise HftlError(f"`{out}` holds an earlier evaluation. Pass `--overwrite true` to replace it, or `--out DIR`.")
    return out
