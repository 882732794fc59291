"""What `hftl advise` measures about a model and a dataset, before any training.

- A linear probe: a logistic-regression head (scikit-learn) on the frozen backbone's mean-pooled
  features of a stratified sample, scored by stratified k-fold cross-validation as balanced accuracy. It is feature extraction in miniature, so its
  score says how much of the task the pre-trained features already carry; against chance it is
  the toolkit's measure of domain similarity.
- For text, how the tokenizer sees the data: sub-words per whitespace word (fragmentation) and
  the unknown-token rate. A tokenizer that shreds the data's words was trained on other text.
- When the checkpoint ships a masked-language-model head: its loss and accuracy on masked tokens
  of the data, the most direct sign of how close the data is to the pre-training corpus.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from hftl.engine.pooling import masked_mean
from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.config import RunConfig

MIN_PER_CLASS = 2  # a cross-validated probe fits on one example of a class and scores on another
FOLDS = 5


@dataclass
class Probe:
    score: float  # balanced accuracy (mean recall per class; per label for multi-label), cross-validated
    chance: float  # the same score of a guess: 1 / classes, or 0.5 per label
    examples: int
    folds: int

    @property
    def lift(self) -> float:
        """0 at chance, 1 when every held-out example is right."""
        return (self.score - self.chance) / (1 - self.chance)


def check_probe_size(counts: dict[str, int], multi_label: bool) -> None:
    """Every class (every label, for multi-label data) needs MIN_PER_CLASS examples for the probe's folds."""
    short = {name: n for name, n in counts.items() if n < MIN_PER_CLASS}
    kind, kinds = ("label", "labels") if multi_label else ("class", "classes")
    if short:
        shown = ", ".join(f"`{k}` ({v})" for k, v in list(short.items())[:10])
        raise HftlError(
            f"The training data is too small to split for the similarity probe: it needs at least {MIN_PER_CLASS} "
            f"labelled examples per {kind} (one to fit, one to score), and these have fewer: {shown}. Add examples "
            f"of those {kinds}, or drop them from the data."
        )
    if not multi_label and len(counts) < 2:
        raise HftlError("The training data holds a single class: a probe (and a classifier) needs at least 2.")


def stratified_sample(train: Dataset, n: int, seed: int, multi_label: bool) -> Dataset:
    """Up to n examples, every class kept in proportion (at least MIN_PER_CLASS each where it has them)."""
    if len(train) <= n:
        return train
    if multi_label:
        return train.shuffle(seed=seed).select(range(n))
    labels = np.asarray(train["labels"])
    rng = np.random.default_rng(seed)
    chosen = []
    for value in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == value))
        take = max(MIN_PER_CLASS, int(round(n * len(where) / len(labels))))
        chosen.extend(where[:take].tolist())
    return train.select(sorted(chosen))


@torch.inference_mode()
def features(config: RunConfig, task, loaded, sample: Dataset, batch_size: int = 32):
    """(mean of tokens, first token) of the frozen backbone's last hidden state, inputs prepared exactly as
    the task does for evaluation (no augmentation), padding excluded from the mean. The first token is what
    BERT's and ViT's classification heads read; the mean is what sentence encoders were trained to make."""
    eval_config = copy.deepcopy(config)
    eval_config.data.augment = False
    encoded = task.encode(eval_config, DatasetDict(train=sample), loaded)["train"]
    collate = task.collator(loaded)
    encoder = loaded.model.base_model
    encoder.eval()
    device = config.training.device
    encoder.to(device)
    means, firsts = [], []
    for start in range(0, len(encoded), batch_size):
        batch = collate([encoded[i] for i in range(start, min(start + batch_size, len(encoded)))])
        batch = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "label")}
        hidden = encoder(**batch).last_hidden_state.float()
        means.append(masked_mean(hidden, batch.get("attention_mask")).cpu().numpy())
        first = hidden[:, 0] if hidden.dim() == 3 else masked_mean(hidden, None)  # a CNN's head reads the pooled map
        firsts.append(first.cpu().numpy())
    return np.concatenate(means), np.concatenate(firsts)


def _folds(targets: np.ndarray, multi_label: bool, seed: int) -> list[np.ndarray]:
    """Held-out indices per fold: stratified for single-label (StratifiedKFold, as many folds as the smallest
    class allows, up to FOLDS), plain shuffled folds for multi-label (scikit-learn has no multi-label stratifier)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if multi_label:
        splitter = KFold(n_splits=min(FOLDS, len(targets)), shuffle=True, random_state=seed)
        return [held for _, held in splitter.split(targets)]
    smallest = int(np.bincount(targets)[np.unique(targets)].min())
    splitter = StratifiedKFold(n_splits=min(FOLDS, smallest), shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(targets)), targets)]


def _logistic(n: int):
    """Logistic regression on standardised features. C = 50 / n is an L2 penalty of 1e-2 * ||w||^2 on the mean
    loss, whatever the fold's size; lbfgs converges well within max_iter on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=50.0 / n, max_iter=1000))


def _fit_predict(x_fit, y_fit, x_eval, multi_label: bool) -> np.ndarray:
    """Predictions for x_eval; multi-label: one binary regression per label, a label constant in the fit
    split predicted as that constant."""
    if not multi_label:
        return _logistic(len(x_fit)).fit(x_fit, y_fit).predict(x_eval)
    pred = np.zeros((len(x_eval), y_fit.shape[1]), dtype=int)
    for j in range(y_fit.shape[1]):
        column = y_fit[:, j].astype(int)
        pred[:, j] = _logistic(len(x_fit)).fit(x_fit, column).predict(x_eval) if len(np.unique(column)) > 1 \
            else column[0]
    return pred


def balanced_accuracy(pred: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Mean recall per class; multi-label: the mean over labels the sample holds both with and without."""
    from sklearn.metrics import balanced_accuracy_score

    if not multi_label:
        return float(balanced_accuracy_score(targets, pred))
    scores = [balanced_accuracy_score(targets[:, j].astype(int), pred[:, j]) for j in range(targets.shape[1])
              if len(np.unique(targets[:, j])) == 2]
    return float(np.mean(scores)) if scores else 0.5


def linear_probe(x: np.ndarray, targets: np.ndarray, multi_label: bool, classes: int, seed: int = 0) -> Probe:
    """Cross-validated balanced accuracy of a linear head on frozen features (`classes`: the label set's size)."""
    folds = _folds(targets, multi_label, seed)
    pred = np.zeros(targets.shape, dtype=int) if multi_label else np.zeros(len(targets), dtype=int)
    for held in folds:
        fit = np.setdiff1d(np.arange(len(targets)), held)
        pred[held] = _fit_predict(x[fit], targets[fit], x[held], multi_label)
    present = targets.shape[1] if multi_label else len(np.unique(targets))
    chance = 0.5 if multi_label else 1.0 / present
    return Probe(balanced_accuracy(pred, targets, multi_label), chance, len(targets), len(folds))


def tokenizer_stats(tokenizer, texts: list[str]) -> dict[str, float]:
    """Sub-word tokens per whitespace word, and the share of tokens that are the unknown token."""
    from transformers.utils import logging as hf_logging

    words = sum(len(t.split()) for t in texts)
    unspaced = sum(len(t) for t in texts) > 15 * max(words, 1)  # Chinese, Japanese, Thai: words are not space-separated
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # whole texts are counted: past-max-length warnings do not apply
    try:
        ids = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(verbosity)
    tokens = sum(len(row) for row in ids)
    unk = tokenizer.unk_token_id
    unknown = sum(row.count(unk) for row in ids) if unk is not None else 0
    return {"subwords_per_word": None if unspaced else tokens / max(words, 1), "unknown_rate": unknown / max(tokens, 1)}


@torch.inference_mode()
def masked_lm(source: str, revision: str, trust_remote_code: bool, tokenizer, texts: list[str], max_length: int, device,
              seed: int = 0):
    """(loss, accuracy) of the checkpoint's own MLM head on 15% masked tokens; None without such a head."""
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a checkpoint without the head is an expected case, not a warning
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(source, revision=revision, output_loading_info=True,
                                                           trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if info["missing_keys"] or tokenizer.mask_token_id is None:
        return None
    model.eval().to(device)
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    losses, hits, masked = [], 0, 0
    for start in range(0, len(encoded), 16):
        batch = collate([{"input_ids": ids} for ids in encoded[start : start + 16]])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        chosen = batch["labels"] != -100
        if not chosen.any():
            continue
        losses.append(float(out.loss) * int(chosen.sum()))
        hits += int((out.logits.argmax(-1)[chosen] == batch["labels"][chosen]).sum())
        masked += int(chosen.sum())
    if not masked:
        return None
    return sum(losses) / masked, hits / masked
