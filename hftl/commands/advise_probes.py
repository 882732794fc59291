"""What `hftl advise` measures beside the frozen-feature probe: the classical baseline and, for images, the
probe at several input sizes. The scoring and the choices live in advice/ (baseline.py, resolution.py);
this module reads the sample through the task, as `hftl train` would.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from hftl.advice import baseline, probe, resolution
from hftl.data.images import decode

RESOLUTION_SAMPLES = 256  # images per size: three sizes of a ViT-S forward stay under a minute on a CPU


def targets_of(sample, multi_label: bool) -> np.ndarray:
    return np.asarray(sample["labels"], dtype=np.float32 if multi_label else np.int64)


def classical(config, sample, multi_label: bool, images: bool) -> tuple[probe.Probe, str, float]:
    """(the baseline's cross-validated score on the probe's folds, what it is, seconds)."""
    start = time.perf_counter()
    targets = targets_of(sample, multi_label)
    data = config.data
    if images:
        x = baseline.pixels([decode(v) for v in sample[data.image_column]])
        kind = baseline.PIXELS
    else:
        texts = [t or "" for t in sample[data.text_column]]
        second = [t or "" for t in sample[data.text_pair_column]] if data.text_pair_column else None
        x = baseline.text_rows(texts, second)
        kind = baseline.PAIRS if second is not None else baseline.TEXT
    score = baseline.cross_validated(x, targets, multi_label, seed=config.training.seed)
    return score, kind.about, time.perf_counter() - start


def patch_size(model) -> int | None:
    patch = getattr(model.config, "patch_size", None)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None


def own_size(config) -> int:
    """The side the checkpoint's own image processor gives, whatever the recipe's image_size."""
    from transformers import AutoImageProcessor

    from hftl.data.preprocess import Preprocess
    from hftl.tasks.checkpoints import model_source

    processor = AutoImageProcessor.from_pretrained(model_source(config), revision=config.model.revision,
                                                   trust_remote_code=config.model.trust_remote_code)
    data = copy.deepcopy(config.data)
    data.image_size = None
    return int(Preprocess(processor, data).side[0])


def sizes_of(config, task, loaded, sample) -> list[dict]:
    """The probe (mean of tokens, the same folds) at the native size, the checkpoint's own size and between."""
    patch = patch_size(loaded.model)
    if patch is None:
        return []
    small = sample.select(range(min(RESOLUTION_SAMPLES, len(sample)))) if len(sample) > RESOLUTION_SAMPLES else sample
    column = config.data.image_column
    native = float(np.median([max(decode(v).size) for v in small[column]]))
    candidates = resolution.sizes(native, own_size(config), patch, config.data.image_size)
    targets = targets_of(small, loaded.labels.multi_label)
    rows = []
    for side in candidates:
        sized = copy.deepcopy(config)
        sized.data.image_size = side
        start = time.perf_counter()
        model = task.build_model(sized, loaded.labels)
        mean, _ = probe.features(sized, task, model, small, config.training.per_device_eval_batch_size)
        fit = probe.linear_probe(mean, targets, loaded.labels.multi_label, len(loaded.labels.names),
                                 seed=config.training.seed)
        rows.append(resolution.row(side, patch, fit, time.perf_counter() - start))
        print(f"hftl: probe at {side} px: {fit.score:.3f}")
    return rows
