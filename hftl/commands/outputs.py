"""The pictures and tables a run leaves beside its model: training curves, and for classification the
per-class precision/recall/F1 (`per_class.csv`) with a confusion matrix (single-label) or a per-label F1
chart (multi-label), all on the held-out split (test, else validation). The model card shows them.
Also the run's peak memory, one of its metrics.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

CURVES = "curves.png"
CONFUSION = "confusion_matrix.png"
PER_LABEL_F1 = "per_label_f1.png"
PER_CLASS = "per_class.csv"


def held_out(splits) -> tuple[str, str] | None:
    """(split, metric prefix) the pictures describe: test, else validation; None without either."""
    if "test" in splits:
        return "test", "test"
    return ("validation", "eval") if "validation" in splits else None


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt

    return plt


def write_curves(folder: str | Path, log_history: list[dict]) -> str | None:
    """Training loss and every logged eval metric against the step, one line per series, epochs marked."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith("eval_") and not key.endswith(("_runtime", "_per_second")) and key != "eval_loss" \
                    and isinstance(value, (int, float)):
                evals.setdefault(key.removeprefix("eval_"), []).append((entry["step"], value))
    eval_loss = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train and not eval_loss:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, series in ((left, {"training loss": train, "validation loss": eval_loss}), (right, evals)):
        for name, points in series.items():
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    left.set_ylabel("loss")
    right.set_ylabel("validation metric")
    right.set_title("validation metrics" if evals else "no evaluation during training (set eval_strategy)")
    left.set_title("loss")
    epochs = _epoch_steps(log_history)
    for ax in (left, right):
        for step in epochs:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Training curves (dotted lines: epoch ends)")
    fig.tight_layout()
    fig.savefig(Path(folder) / CURVES, dpi=110)
    plt.close(fig)
    return CURVES


def _epoch_steps(log_history: list[dict]) -> list[int]:
    """Steps at which a whole epoch ended, from the epoch fractions the Trainer logs."""
    out, last = [], 0.0
    for entry in log_history:
        epoch, step = entry.get("epoch"), entry.get("step")
        if epoch is None or step is None:
            continue
        if int(epoch + 1e-6) > int(last + 1e-6) and abs(epoch - round(epoch)) < 1e-6:
            out.append(step)
        last = epoch
    return sorted(set(out))


def class_report(logits: np.ndarray, label_ids: np.ndarray, names: list[str], multi_label: bool) -> dict:
    """Per class (per label): precision, recall, F1, support; and the confusion matrix for single-label."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    logits = logits[0] if isinstance(logits, tuple) else logits
    if multi_label:
        predicted, truth = (np.asarray(logits) > 0).astype(int), np.asarray(label_ids).astype(int)
        labels = None
    else:
        predicted, truth = np.asarray(logits).argmax(-1), np.asarray(label_ids)
        labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels, zero_division=0)
    rows = [{"class": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, support)]
    matrix = None if multi_label else confusion_matrix(truth, predicted, labels=labels)
    return {"rows": rows, "matrix": matrix}


def write_class_report(folder: str | Path, report: dict, names: list[str], split: str,
                       where: str | None = None) -> list[str]:
    """per_class.csv, and the confusion matrix (counts and row-normalised) or the per-label F1 chart; `where` names
    the data in the titles (default: the split)."""
    folder = Path(folder)
    where = where or f"the {split} split"
    with open(folder / PER_CLASS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "precision", "recall", "f1", "support"])
        writer.writeheader()
        writer.writerows(report["rows"])
    plt = _plt()
    if report["matrix"] is None:
        fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(names) + 2), 4))
        ax.barh([r["class"] for r in report["rows"]], [r["f1"] for r in report["rows"]], color="#4c72b0")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel(f"F1 on {where}")
        ax.set_title("F1 per label")
        picture = PER_LABEL_F1
    else:
        matrix = report["matrix"]
        rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
        side = max(4, 0.5 * len(names) + 2)
        fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
        for ax, values, title, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], rates, "share of each true class", ".2f")):
            ax.imshow(values, cmap="Blues", vmin=0)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
            ax.set_yticks(range(len(names)), names)
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            ax.set_title(title)
            if len(names) <= 20:
                high = values.max() / 2 if values.size else 0
                for i in range(len(names)):
                    for j in range(len(names)):
                        ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                                color="white" if values[i, j] > high else "black")
        fig.suptitle(f"Confusion matrix on {where} ({int(matrix.sum())} examples)")
        picture = CONFUSION
    fig.tight_layout()
    fig.savefig(folder / picture, dpi=110)
    plt.close(fig)
    return [PER_CLASS, picture]


def class_table(rows: list[dict]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def reset_peak_memory(device) -> None:
    """A process that trains more than once (an in-process sweep) reports each run's own GPU peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict:
    """Peak memory of this process: what torch allocated on the GPU, or the resident set size on CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    unit = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit, 1)}
