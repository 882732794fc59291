"""The forgetting report: a source evaluation before and after fine-tuning.

The source metric here is what a sentence encoder was pre-trained for: general-purpose
embeddings. It is measured as k-nearest-neighbour accuracy (scikit-learn's KNeighborsClassifier,
cosine, mean-pooled last hidden state) on a labelled text dataset unrelated to the target task, e.g. `builtin:fine-foods`. A
fine-tuned encoder that kept its general features scores as before; one that forgot scores lower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from hftl.data.sources import load_splits, other_data
from hftl.engine.pooling import mean_pooled
from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.config import RunConfig

K = 5  # neighbours that vote


def _encoder(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


@torch.inference_mode()
def _embed(model, tokenizer, texts: list[str], max_length: int, batch_size: int, device) -> np.ndarray:
    encoder = _encoder(model)
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt").to(device)
        pooled = mean_pooled(encoder, batch)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
    encoder.train(was_training)
    return np.concatenate(out)


def knn_accuracy(model, tokenizer, config: RunConfig) -> float:
    """k-NN accuracy of the encoder's embeddings on `source_eval` (train split as memory, test as queries)."""
    from sklearn.neighbors import KNeighborsClassifier

    name, n = config.transfer.source_eval, config.transfer.source_eval_samples
    data = load_splits(other_data(config.data, name))
    if "text" not in data["train"].column_names or "label" not in data["train"].column_names:
        raise HftlError(f"source_eval `{name}` needs `text` and `label` columns (it has {data['train'].column_names}).")
    memory = data["train"].shuffle(seed=0).select(range(min(n, len(data["train"]))))
    queries_split = data["test"] if "test" in data else data["validation"]
    queries = queries_split.shuffle(seed=0).select(range(min(n // 2, len(queries_split))))
    args = config.training
    embed = lambda ds: _embed(model, tokenizer, ds["text"], min(config.data.max_length, 128),  # noqa: E731
                              args.per_device_eval_batch_size, args.device)
    labels = [str(v) for v in memory["label"]]
    vote = KNeighborsClassifier(n_neighbors=min(K, len(memory)), metric="cosine", algorithm="brute")
    predicted = vote.fit(embed(memory), labels).predict(embed(queries))
    return float(np.mean(predicted == np.array([str(v) for v in queries["label"]])))
