"""Cached features for frozen backbones.

When nothing below the head trains (feature extraction) and inputs are not augmented, every
epoch would recompute the same backbone outputs. Instead the backbone runs once, in eval mode,
over every split; the head then trains on those features. The model keeps its own forward: the
embeddings module is swapped for a pass-through that returns `inputs_embeds` (the cached
feature, as a sequence of length 1) and the block list for an empty one, so the head modules
(pooler, classifier) run exactly as in the full model. The swap is undone around every save, so
checkpoints and the final folder hold the whole model.

What is cached is the output of the last block: only its first token where the head reads no
other (BERT-style text heads, ViT, DeiT), every token where the head pools them (DINOv2), the
whole feature map of a CNN's last stage (ResNet, ConvNeXt, EfficientNet).
Text features go in as `inputs_embeds`; image features go where `pixel_values` went.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn

from hftl.engine.layers import LayerGroup, find_blocks
from hftl.errors import HftlError

FEATURES = "inputs_embeds"


class PassThroughEmbeddings(nn.Module):
    """Stands in for the embeddings module: the cached feature is already the encoder output.

    Attributes it lacks are read from the original (ViT's forward reads the patch projection's
    dtype), which is kept outside the module tree so its parameters leave the model."""

    def __init__(self, original: nn.Module):
        super().__init__()
        object.__setattr__(self, "_original", original)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def forward(self, *args, inputs_embeds=None, **kwargs):
        if inputs_embeds is not None:
            return inputs_embeds
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point() and args[0].dim() in (3, 4):
            return args[0]  # image models: cached [batch, tokens, hidden] (or a CNN's feature maps) for pixel_values
        raise RuntimeError("the backbone is swapped out for cached features; pass them as inputs_embeds or pixel_values")


class PassThroughBlock(nn.Module):
    """Stands in for the blocks where an encoder's forward needs at least one (DeBERTa-v2/v3 reads the last
    block's output from inside its loop): returns its input, with no attention weights."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


KEEPS_ONE_BLOCK = frozenset({"deberta-v2"})  # model types whose encoder cannot run over an empty block list


def _embeddings_names(base: nn.Module) -> list[str]:
    """The base model's input-side module: `embeddings`, or the one child named like it (ResNet's `embedder`)."""
    children = [name for name, _ in base.named_children()]
    return ["embeddings"] if "embeddings" in children else [n for n in children if "embed" in n.lower()]


def swap_blockers(model: nn.Module) -> list[str]:
    """Why the backbone of `model` cannot be swapped out for cached features (empty: it can)."""
    prefix, _, _ = find_blocks(model)
    base = model.get_submodule(prefix)
    found = _embeddings_names(base)
    reasons = []
    if len(found) != 1:
        reasons.append(f"`{prefix}` of `{type(model).__name__}` has no single embeddings module (found "
                       f"{', '.join(found) or 'none'})")
    if getattr(getattr(base, "encoder", None), "conv", None) is not None:
        reasons.append("DeBERTa's convolution beside the first block would run again on the cached features")
    return reasons


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
        reasons = swap_blockers(model)
        if reasons:
            raise HftlError(f"Cached features are not possible here: {'; '.join(reasons)}. Turn the cache off with "
                            "`--cache_features off`.")
        prefix, path, blocks = find_blocks(model)
        embeddings_path = f"{prefix}.{_embeddings_names(model.get_submodule(prefix))[0]}"
        return cls(model, embeddings_path, f"{prefix}.{path}", model.get_submodule(embeddings_path), blocks)

    def _set(self, path: str, module: nn.Module) -> None:
        parent, leaf = _parent(self.model, path)
        setattr(parent, leaf, module)

    def detach(self) -> None:
        if not self.detached:
            self._set(self.embeddings_path, PassThroughEmbeddings(self.embeddings))
            one = getattr(getattr(self.model, "config", None), "model_type", "") in KEEPS_ONE_BLOCK
            self._set(self.blocks_path, nn.ModuleList([PassThroughBlock()] if one else []))
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


def should_cache(mode: str, groups: list[LayerGroup], blockers: list[str], model: nn.Module | None = None) -> bool:
    """Cache when asked, or by default (`auto`) when nothing upstream of the head can change.

    `blockers` are the caller's reasons against it (the task's, dropout in frozen modules, random
    weights); a backbone group that trains is one more, and so is a `model` whose backbone cannot be
    swapped out. Asked for (`memory`, `disk`) but blocked is an error."""
    if mode == "off":
        return False
    reasons = list(blockers)
    if any(p.requires_grad for g in groups if not g.is_head for _, p in g.params):
        reasons.insert(0, "backbone groups train (use strategy feature_extraction)")
    if not reasons and model is not None:
        reasons = swap_blockers(model)
    if reasons and mode != "auto":
        raise HftlError(f"cache_features={mode} is not possible here: {'; '.join(reasons)}. Use cache_features auto or off.")
    return not reasons


@dataclass(frozen=True)
class CacheSpec:
    batch_size: int
    device: object
    input_key: str = FEATURES  # where the features enter the model's forward: inputs_embeds or pixel_values
    tokens: str = "first"  # first: the head reads the first token only; all: it pools every token
    disk_dir: str | None = None  # memory-map the features from files here (one folder per rank) instead of RAM


@torch.inference_mode()
def extract(model: nn.Module, dataset: Dataset, collator, batch_size: int, device, tokens: str = "first") -> np.ndarray:
    """The last block's output for every example, in dataset order: [N, 1, hidden] for the first
    token, [N, tokens, hidden] for all."""
    from tqdm.auto import tqdm

    model.eval()
    base = model.base_model.to(device)
    _, _, blocks = find_blocks(model)
    captured = []
    hook = blocks[-1].register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    if "input_ids" in dataset.column_names:
        lengths = np.array([len(x) for x in dataset["input_ids"]])
        order = np.argsort(-lengths, kind="stable")  # similar lengths per batch: least padding
    else:
        order = np.arange(len(dataset))
    out: np.ndarray | None = None
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="Extracting features", disable=len(order) <= 4 * batch_size):
            idx = order[start : start + batch_size].tolist()
            rows = [{k: v for k, v in dataset[i].items() if k != "labels"} for i in idx]
            batch = {k: v.to(device) for k, v in collator(rows).items()}
            captured.clear()
            base(**batch)
            hidden = captured[-1]
            hidden = (hidden[:, :1] if tokens == "first" else hidden).float().cpu().numpy()
            if out is None:
                out = np.empty((len(dataset), *hidden.shape[1:]), dtype=np.float32)
            out[idx] = hidden
    finally:
        hook.remove()
    return out


def cached_splits(model, encoded: DatasetDict, collator, spec: CacheSpec) -> DatasetDict:
    """Every split as (features, labels): text adds an all-ones attention_mask to its inputs_embeds."""
    result = DatasetDict()
    for split, ds in encoded.items():
        feats = extract(model, ds, collator, spec.batch_size, spec.device, spec.tokens)
        columns = {spec.input_key: feats, "labels": ds["labels"]}
        if spec.input_key == FEATURES:
            columns["attention_mask"] = np.ones(feats.shape[:2], dtype=np.int64)
        table, where = Dataset.from_dict(columns), ""
        if spec.disk_dir is not None:
            path = f"{spec.disk_dir}/{split}"
            table.save_to_disk(path)
            table, where = Dataset.load_from_disk(path), f", memory-mapped from {path}"  # need not fit in RAM
        result[split] = table.with_format("torch")
        print(f"hftl: cached {len(ds)} {split} features of shape {list(feats.shape[1:])} (backbone runs once{where}).")
    return result
