"""Accuracy: the fraction of predictions equal to their reference (bundled for offline use)."""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the reference label.",
            citation="",
            inputs_description="predictions and references: lists of integer labels of equal length.",
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        hits = (np.asarray(predictions) == np.asarray(references)).astype(float)
        weights = np.ones_like(hits) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        total = float((hits * weights).sum())
        return {"accuracy": total / float(weights.sum()) if normalize else total}
