"""The classical baseline beside every probe: what a user gets in seconds without transfer.

Text: TF-IDF of word 1-2-grams and character 2-5-grams (within word boundaries), logistic
regression; sentence pairs get each side's vector and their element-wise product, so the model
sees what the two sides share. Images: raw pixels resized to a small square (grey where the data
is grey), standardised, logistic regression. Multi-label data fits one classifier per label.

`cross_validated` scores it exactly as the probe is scored (probe.py: the same folds of the same
sample, the same balanced accuracy), so "baseline >= probe" compares like with like. The TF-IDF
vocabulary and weights are fitted once on the whole sample: they use no labels, and refitting
them per fold would cost five times as much for the same comparison. `fit` / `predict` train on a
whole split and score another, for the proving ground (bench/proving_ground.py) and the README.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hftl.advice import probe

C = 10.0  # inverse L2 strength: TF-IDF rows are unit-length and sparse, a weak penalty fits them best
PIXEL_SIDE = 24  # px: small enough to fit in seconds, large enough to keep a digit or a silhouette
SMALL_VOCABULARY = 500  # under this many texts every n-gram counts; above, n-grams seen once are dropped


@dataclass
class Kind:
    """What the baseline is, in words for the report."""

    name: str
    about: str


TEXT = Kind("tfidf", "TF-IDF (word 1-2-grams + character 2-5-grams) + logistic regression")
PAIRS = Kind("tfidf-pairs", "TF-IDF (word 1-2-grams + character 2-5-grams) of each side and their product + "
             "logistic regression")
PIXELS = Kind("pixels", f"raw pixels at {PIXEL_SIDE}x{PIXEL_SIDE} + logistic regression")


def _vectorizer(n: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    min_df = 1 if n < SMALL_VOCABULARY else 2
    return make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df),
                      TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=min_df))


class TextFeatures:
    """TF-IDF rows of texts, or of (text, pair) with the product of both sides' rows."""

    def __init__(self, pairs: bool):
        self.pairs = pairs
        self.vectorizer = None

    def fit(self, texts: list[str], second: list[str] | None = None) -> TextFeatures:
        self.vectorizer = _vectorizer(len(texts)).fit(list(texts) + list(second or []))
        return self

    def transform(self, texts: list[str], second: list[str] | None = None):
        from scipy import sparse

        a = self.vectorizer.transform(texts)
        if not self.pairs:
            return a
        b = self.vectorizer.transform(second)
        return sparse.hstack([a, b, a.multiply(b)]).tocsr()


def pixels(images, side: int = PIXEL_SIDE) -> np.ndarray:
    """PIL images as rows of pixels in [0, 1] at side x side: grey when every image is grey, else RGB."""
    grey = all(image.mode in ("L", "1", "I", "I;16", "F") for image in images)
    mode = "L" if grey else "RGB"
    rows = [np.asarray(image.convert(mode).resize((side, side)), dtype=np.float32).reshape(-1) / 255.0 for image in images]
    return np.stack(rows)


def _classifier(multi_label: bool, dense: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=C if not dense else 1.0, max_iter=2000)
    model = OneVsRestClassifier(model) if multi_label else model
    return make_pipeline(StandardScaler(), model) if dense else model


def _fit_predict(x_fit, y_fit, x_eval, multi_label: bool) -> np.ndarray:
    """Predictions for x_eval; a label that is constant in the fit rows is predicted constant (sklearn refuses it)."""
    dense = isinstance(x_fit, np.ndarray)
    if not multi_label:
        if len(np.unique(y_fit)) < 2:
            return np.full(x_eval.shape[0], y_fit[0])
        return _classifier(False, dense).fit(x_fit, y_fit).predict(x_eval)
    y_fit = np.asarray(y_fit).astype(int)
    out = np.zeros((x_eval.shape[0], y_fit.shape[1]), dtype=int)
    varied = [j for j in range(y_fit.shape[1]) if 0 < y_fit[:, j].sum() < len(y_fit)]
    for j in range(y_fit.shape[1]):
        if j not in varied:
            out[:, j] = y_fit[0, j]
    if varied:
        out[:, varied] = _classifier(True, dense).fit(x_fit, y_fit[:, varied]).predict(x_eval)
    return out


def cross_validated(x, targets: np.ndarray, multi_label: bool, seed: int = 0) -> probe.Probe:
    """The baseline's balanced accuracy on the probe's folds of the same sample (x: TF-IDF rows or pixels)."""
    folds = probe._folds(targets, multi_label, seed)
    pred = np.zeros_like(targets, dtype=int) if multi_label else np.zeros(len(targets), dtype=targets.dtype)
    for held in folds:
        fit = np.setdiff1d(np.arange(len(targets)), held)
        pred[held] = _fit_predict(x[fit], targets[fit], x[held], multi_label)
    present = targets.shape[1] if multi_label else len(np.unique(targets))
    chance = 0.5 if multi_label else 1.0 / present
    return probe.Probe(probe.balanced_accuracy(pred, targets, multi_label), chance, len(targets), len(folds))


def text_rows(texts: list[str], second: list[str] | None) -> tuple:
    """TF-IDF rows of a sample (fitted on the sample itself: no labels involved)."""
    features = TextFeatures(pairs=second is not None).fit(texts, second)
    return features.transform(texts, second)


def train_and_predict(train_inputs, train_targets: np.ndarray, test_inputs, multi_label: bool) -> np.ndarray:
    """The baseline trained on a whole split, its predictions on another. Inputs: pixel rows, or (texts, pairs or
    None) for text, whose TF-IDF is fitted on the training texts alone."""
    if isinstance(train_inputs, np.ndarray):
        return _fit_predict(train_inputs, train_targets, test_inputs, multi_label)
    features = TextFeatures(pairs=train_inputs[1] is not None).fit(*train_inputs)
    return _fit_predict(features.transform(*train_inputs), train_targets, features.transform(*test_inputs), multi_label)


def verdict(baseline: probe.Probe, transfer: probe.Probe) -> tuple[bool, float]:
    """(transfer is expected to win, noise): it wins when the probe beats the baseline by more than the noise.

    The noise is two standard errors of a score on this many examples, at least one point: folds of a few
    hundred examples move a score by that much between seeds."""
    p = min(max(transfer.score, 1e-3), 1 - 1e-3)
    noise = max(0.01, 2 * float(np.sqrt(p * (1 - p) / max(transfer.examples, 1))))
    return transfer.score - baseline.score > noise, noise
