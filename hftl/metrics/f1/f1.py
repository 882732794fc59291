"""F1 score with binary, micro, macro and weighted averaging (bundled for offline use).

Same call as the Hub module: compute(predictions, references, average="macro", labels=None, pos_label=1).
A class with no predicted and no true examples contributes F1 = 0, as in scikit-learn.
"""

import datasets
import evaluate
import numpy as np


def _counts(pred, ref, label):
    tp = float(np.sum((pred == label) & (ref == label)))
    fp = float(np.sum((pred == label) & (ref != label)))
    fn = float(np.sum((pred != label) & (ref == label)))
    return tp, fp, fn


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Harmonic mean of precision and recall.",
            citation="",
            inputs_description="predictions and references: lists of integer labels of equal length.",
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        pred, ref = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            return {"f1": _f1(*_counts(pred, ref, pos_label))}
        classes = np.unique(np.concatenate([pred, ref])) if labels is None else np.asarray(labels)
        per_class = [_counts(pred, ref, c) for c in classes]
        if average == "micro":
            tp, fp, fn = (sum(c[i] for c in per_class) for i in range(3))
            return {"f1": _f1(tp, fp, fn)}
        scores = np.array([_f1(*c) for c in per_class])
        if average == "macro":
            return {"f1": float(scores.mean())}
        if average == "weighted":
            support = np.array([c[0] + c[2] for c in per_class])
            return {"f1": float((scores * support).sum() / max(support.sum(), 1))}
        if average is None:
            return {"f1": scores.tolist()}
        raise ValueError(f"average must be binary, micro, macro, weighted or None, not {average!r}")
