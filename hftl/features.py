"""Cached features for frozen backbones.

When nothing below the head trains (feature extraction) and inputs are not augmented, every
epoch would recompute the same backbone outputs. Instead the backbone runs once, in eval mode,
over every split; the head then trains on those features. The model keeps its own forward: the
embeddings module is swapped for a pass-through that returns `inputs_embeds` (the cached
feature, as a sequence of length 1) and the block list for an empty one, so the head modules
(pooler, classifier) run exactly as in the full model. The swap is undone around every save, so
checkpoints and the final folder hold the whole model.

Text heads read only the first token of the last hidden state, so that token is what is cached.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn

from hftl.config import RunConfig
from hftl.errors import HftlError
from hftl.layers import LayerGroup, find_blocks

FEATURES = "inputs_embeds"


class PassThroughEmbeddings(nn.Module):
    """Stands in for the embeddings module: the cached feature is already the encoder output."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            raise RuntimeError("the backbone is swapped out for cached features; pass inputs_embeds")
        return inputs_embeds


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, leaf = path.rpartition(".")
    return (model.get_submodule(parent) if parent else model), leaf


@dataclass
class BackboneSwap:
    """Swap the embeddings and blocks of `model` out (detach) and back in (attach)."""

    model: nn.Module
    embeddings_path: str
    blocks_path: str
    embeddings: nn.Module
    blocks: nn.ModuleList
    detached: bool = False

    @classmethod
    def of(cls, model: nn.Module) -> BackboneSwap:
        prefix, path, blocks = find_blocks(model)
        embeddings_path = f"{prefix}.embeddings"
        try:
            embeddings = model.get_submodule(embeddings_path)
        except AttributeError:
            raise HftlError(
                f"Cached features need a `{embeddings_path}` module in `{type(model).__name__}`; turn the cache "
                "off with `--cache_features off`."
            ) from None
        return cls(model, embeddings_path, f"{prefix}.{path}", embeddings, blocks)

    def _set(self, path: str, module: nn.Module) -> None:
        parent, leaf = _parent(self.model, path)
        setattr(parent, leaf, module)

    def detach(self) -> None:
        if not self.detached:
            self._set(self.embeddings_path, PassThroughEmbeddings())
            self._set(self.blocks_path, nn.ModuleList())
            self.detached = True

    def attach(self) -> None:
        if self.detached:
            self._set(self.embeddings_path, self.embeddings)
            self._set(self.blocks_path, self.blocks)
            self.detached = False

    @contextlib.contextmanager
    def whole(self):
        """The full model for the duration (saving, loading a checkpoint)."""
        was = self.detached
        self.attach()
        try:
            yield self.model
        finally:
            if was:
                self.detach()


def should_cache(config: RunConfig, groups: list[LayerGroup], task) -> bool:
    """Cache when asked, or by default when nothing upstream of the head can change."""
    mode = config.transfer.cache_features
    if mode == "off":
        return False
    reasons = []
    if any(p.requires_grad for g in groups if not g.is_head for _, p in g.params):
        reasons.append("backbone groups train (use strategy feature_extraction)")
    if not config.transfer.eval_frozen:
        reasons.append("eval_frozen is false, so the frozen backbone would apply dropout")
    if not getattr(task, "CACHEABLE", False):
        reasons.append(f"task `{config.transfer.task}` does not support cached features")
    if config.model.from_scratch:
        reasons.append("from_scratch")
    if reasons and mode in ("memory", "disk", "on"):
        raise HftlError(f"cache_features={mode} is not possible here: {'; '.join(reasons)}. Use cache_features auto or off.")
    return not reasons


@torch.inference_mode()
def extract(model: nn.Module, dataset: Dataset, collator, batch_size: int, device) -> np.ndarray:
    """First-token hidden state of the last block for every example, in dataset order."""
    model.eval()
    base = model.base_model.to(device)
    lengths = np.array([len(x) for x in dataset["input_ids"]])
    order = np.argsort(-lengths, kind="stable")  # similar lengths per batch: least padding
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size].tolist()
        rows = [{k: v for k, v in dataset[i].items() if k != "labels"} for i in idx]
        batch = {k: v.to(device) for k, v in collator(rows).items()}
        hidden = base(**batch).last_hidden_state[:, 0].float().cpu().numpy()
        if out is None:
            out = np.empty((len(dataset), hidden.shape[-1]), dtype=np.float32)
        out[idx] = hidden
    return out


def cached_splits(model, encoded: DatasetDict, collator, config: RunConfig) -> DatasetDict:
    """Every split as (inputs_embeds [1, hidden], attention_mask [1], labels)."""
    args = config.training
    result = DatasetDict()
    for split, ds in encoded.items():
        feats = extract(model, ds, collator, args.per_device_eval_batch_size, args.device)
        table = Dataset.from_dict(
            {FEATURES: feats[:, None, :], "attention_mask": np.ones((len(ds), 1), dtype=np.int64), "labels": ds["labels"]}
        )
        if config.transfer.cache_features == "disk":
            path = f"{args.output_dir}/feature_cache/{split}"
            table.save_to_disk(path)
            table = Dataset.load_from_disk(path)  # memory-mapped: the features need not fit in RAM
        result[split] = table.with_format("torch")
        print(f"hftl: cached {len(ds)} {split} features of size {feats.shape[-1]} (backbone runs once).")
    return result
