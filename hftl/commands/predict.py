"""`hftl predict RUN_DIR --input F --output P.csv`: a finished run's predictions for unlabelled rows.

Rows stream from the input (data/rows.py) a batch at a time through the task's own eval preprocessing
(`Task.row_inputs`), the model runs on the GPU when there is one, and each batch's rows go straight into the CSV,
so a file of any size needs the memory of one batch. The CSV is written under a temporary name and renamed at the
end: a run stopped by a bad row (`--bad_rows error`, the default) leaves nothing behind; `--bad_rows skip` counts the
skipped rows and lists them with their reason in P.skipped.csv.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from hftl.commands import finished
from hftl.errors import BadRow, HftlError

USAGE = ("hftl predict RUN_DIR --input F --output P.csv [--top_k K] [--threshold T] [--bad_rows error|skip] "
         "[--batch_size N] [--overwrite true] [--text_column ...] [--image_column ...] [--image_root DIR]")
DEFAULT_THRESHOLD = 0.5  # what the run's multi-label metrics count as predicted: sigmoid(logit) > 0.5


def parser() -> finished.Parser:
    p = finished.Parser("predict", USAGE)
    p.add_argument("--input", help="csv, tsv, json, jsonl or parquet rows, or a folder of images")
    p.add_argument("--output", help="the CSV to write")
    p.add_argument("--top_k", type=int, help="single-label runs: the K best labels and their scores")
    p.add_argument("--threshold", type=float, help=f"multi-label runs: labels scored over it (default "
                                                  f"{DEFAULT_THRESHOLD})")
    p.add_argument("--bad_rows", choices=("error", "skip"), default="error")
    p.add_argument("--batch_size", type=int, help="default: the run's per_device_eval_batch_size")
    p.add_argument("--overwrite", type=finished.boolean, default=False)
    finished.data_options(p, labelled=False)
    return p


def main(argv: list[str]) -> int:
    from hftl.data.rows import open_rows

    args = parser().parse(argv)
    if not args.input or not args.output:
        raise HftlError(f"hftl predict needs `--input F` (the rows) and `--output P.csv`. Usage: {USAGE}")
    run_path = finished.check_folder(args.run_dir)
    output = finished.check_new_file(args.output, args.overwrite, run_path, "--output")
    side = finished.check_new_file(str(skipped_path(output)), args.overwrite, run_path, "The skipped-rows file")
    data = finished.data_values(args)
    if not args.image_root and Path(args.input).is_file():
        data["image_root"] = str(Path(args.input).resolve().parent)  # relative image paths start at the file
    run = finished.open_run(args.run_dir, data)
    decide = Decision(run.labels, args.top_k, args.threshold, run.config.data.label_separator or ";")
    columns = run.task.input_columns(run.config)
    rows = open_rows(args.input, columns.get("image_column"))
    missing = [f"`{c}` (from `{k}`)" for k, c in columns.items() if c not in rows.columns]
    if missing:
        raise HftlError(f"Input `{args.input}` has no column {', '.join(missing)}; its columns are "
                        f"{', '.join(rows.columns) or 'none'}. Pass `--{next(iter(columns))} NAME` with the column "
                        "to read.")
    batch_size = args.batch_size or run.config.training.per_device_eval_batch_size
    written, skipped = predict(run, rows, output, decide, batch_size, args.bad_rows, args.input)
    _report(written, skipped, output, side)
    return 0


def skipped_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.skipped.csv")


class Decision:
    """Logits into the CSV's prediction columns: the best label and its softmax score (and the K best with
    `top_k`), or for a multi-label run every label whose sigmoid score is over the threshold."""

    def __init__(self, labels, top_k: int | None, threshold: float | None, separator: str):
        self.names, self.multi, self.separator = labels.names, labels.multi_label, separator
        if self.multi and top_k is not None:
            raise HftlError("--top_k ranks the labels of a single-label run; this run is multi-label: it writes every "
                            "label whose score is over --threshold. Drop --top_k.")
        if not self.multi and threshold is not None:
            raise HftlError("--threshold applies to multi-label runs; this run is single-label (one label per row, "
                            "`--top_k K` for the K best). Drop --threshold.")
        if top_k is not None and not 1 <= top_k <= len(self.names):
            raise HftlError(f"--top_k must be between 1 and the run's {len(self.names)} labels (got {top_k}).")
        if threshold is not None and not 0 < threshold < 1:
            raise HftlError(f"--threshold is a score between 0 and 1 (got {threshold}).")
        self.top_k, self.threshold = top_k or 1, DEFAULT_THRESHOLD if threshold is None else threshold
        self.header = ["labels", "scores"] if self.multi or self.top_k > 1 else []
        self.header = (["label", "score"] if not self.multi else []) + self.header

    def __call__(self, logits) -> list[list]:
        import torch

        if self.multi:
            scores = torch.sigmoid(logits)
            return [self._joined([(i, s) for i, s in enumerate(row.tolist()) if s > self.threshold]) for row in scores]
        scores = torch.softmax(logits, dim=-1)
        best = torch.topk(scores, self.top_k, dim=-1)
        out = []
        for values, indices in zip(best.values.tolist(), best.indices.tolist()):
            cells = [self.names[indices[0]], round(values[0], 6)]
            out.append(cells + (self._joined(list(zip(indices, values))) if self.top_k > 1 else []))
        return out

    def _joined(self, pairs: list[tuple[int, float]]) -> list[str]:
        return [self.separator.join(self.names[i] for i, _ in pairs),
                self.separator.join(f"{round(s, 6)}" for _, s in pairs)]


def predict(run: finished.Finished, rows, output: Path, decide: Decision, batch_size: int, bad_rows: str,
            source: str) -> tuple[int, list[tuple[int, str, str]]]:
    """Every row into the CSV, batch by batch; returns (rows written, skipped rows as (number, where, reason))."""
    from tqdm.auto import tqdm

    prepare, collate = run.task.row_inputs(run.config, run.loaded), run.task.collator(run.loaded)
    columns = list(run.task.input_columns(run.config).values())
    model = run.loaded.model.to(finished.device()).eval()
    partial = output.with_name(output.name + ".partial")
    skipped, batch, written = [], [], 0
    try:
        with open(partial, "w", newline="") as f, tqdm(total=rows.total, unit=" rows", desc="Predicting") as bar:
            writer = csv.writer(f)
            writer.writerow(["row", *columns, *decide.header])
            for number, where, row in rows.items:
                try:
                    if isinstance(row, BadRow):
                        raise row
                    batch.append((number, row, prepare(row)))
                except BadRow as bad:
                    if bad_rows == "error":
                        raise HftlError(
                            f"Row {number} ({where}) of `{source}` cannot be used: {bad}. Fix or drop it, or pass "
                            f"`--bad_rows skip` to skip such rows (counted, and listed in {skipped_path(output).name})."
                        ) from None
                    skipped.append((number, where, str(bad)))
                if len(batch) == batch_size:
                    written += _write(writer, model, collate, batch, columns, decide)
                    batch = []
                bar.update(1)
            written += _write(writer, model, collate, batch, columns, decide)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return written, skipped


def _write(writer, model, collate, batch: list, columns: list[str], decide: Decision) -> int:
    """One batch through the model, its rows into the CSV."""
    import torch

    if not batch:
        return 0
    inputs = collate([item for _, _, item in batch])
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float().cpu()
    for (number, row, _), cells in zip(batch, decide(logits)):
        writer.writerow([number, *(_cell(row.get(c)) for c in columns), *cells])
    return len(batch)


def _cell(value) -> str:
    """An input value as the CSV shows it: text as it is, an embedded image by its path (or nothing)."""
    if isinstance(value, dict):
        return str(value.get("path") or "")
    return "" if value is None else str(value)


def _report(written: int, skipped: list, output: Path, side: Path) -> None:
    side.unlink(missing_ok=True)  # an earlier prediction's list (`--overwrite true`) would not describe this one
    if skipped:
        with open(side, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "where", "reason"])
            writer.writerows(skipped)
        print(f"hftl: skipped {len(skipped)} rows that cannot be used (bad_rows: skip); they are listed in {side}.")
    print(f"hftl: predictions for {written} rows written to {output}")
