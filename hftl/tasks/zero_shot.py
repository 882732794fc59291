"""Zero-shot classification with a dual encoder: classes as text, images as their nearest class.

A class embedding is the normalised mean of its prompts' normalised text embeddings (prompt
ensembling); an image's embedding is its normalised projected pooled output. Both go through the
towers' own pooled outputs and projections, exactly as the model's forward computes them (SigLIP's
towers end in their own heads, so their pooled output is the embedding).

CLIP ranks classes by cosine similarity (its softmax keeps that order). SigLIP scores each class
on its own, sigmoid(exp(t) * cos + b), a probability per class as it was trained and as the
zero-shot pipeline reports it; an image takes the class of highest score.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")  # the last two: SigLIP2 NaFlex


def _project(model, projection: str, pooled: torch.Tensor) -> torch.Tensor:
    layer = getattr(model, projection, None)  # CLIP: beside the tower; SigLIP: inside it (its `head`)
    return nn.functional.normalize((layer(pooled) if layer is not None else pooled).float(), dim=-1)


@torch.inference_mode()
def text_embeddings(model, tokenizer, texts: list[str], device, batch_size: int = 256, tokenize=None) -> torch.Tensor:
    """`tokenize(texts)` gives the text tower's inputs (SigLIP: fixed length); None: the tokenizer, padded per batch."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = tokenize(chunk) if tokenize is not None else tokenizer(chunk, padding=True, truncation=True,
                                                                       return_tensors="pt")
        pooled = model.text_model(**{k: v.to(device) for k, v in batch.items()}).pooler_output
        out.append(_project(model, "text_projection", pooled))
    return torch.cat(out)


def image_batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    """The vision tower's inputs of some encoded rows, stacked (pixels; NaFlex also its mask and grid shapes)."""
    return {key: torch.stack([torch.as_tensor(r[key]) for r in rows]) for key in IMAGE_KEYS if key in rows[0]}


@torch.inference_mode()
def image_embeddings(model, dataset, device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = {k: v.to(device) for k, v in image_batch(rows).items()}
        pooled = model.vision_model(**inputs).pooler_output
        feats.append(_project(model, "visual_projection", pooled))
        labels.append(torch.tensor([r["labels"] for r in rows]))
    return torch.cat(feats), torch.cat(labels)


def class_embeddings(model, tokenizer, names: list[str], prompts: list[str], device, tokenize=None) -> torch.Tensor:
    """Per class: the normalised mean of its templates' normalised text embeddings."""
    texts = [p.format(label=n) for n in names for p in prompts]
    emb = text_embeddings(model, tokenizer, texts, device, tokenize=tokenize).view(len(names), len(prompts), -1).mean(1)
    return nn.functional.normalize(emb, dim=-1)


def sigmoid_scores(model, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """SigLIP's probability of each class for each image, sigmoid(exp(t) * cos + b), computed in float64 so
    that two confident classes do not both round to 1.0."""
    logits = (images.double() @ classes.double().T) * model.logit_scale.double().exp() + model.logit_bias.double()
    return torch.sigmoid(logits.cpu())


def zero_shot_accuracy(model, processor, dataset, names: list[str], prompts: list[str], device, batch_size: int,
                       tokenize=None, sigmoid: bool = False) -> float:
    was = model.training
    model.eval()
    try:
        classes = class_embeddings(model, processor.tokenizer, names, prompts, device, tokenize=tokenize)
        feats, labels = image_embeddings(model, dataset, device, batch_size)
        with torch.inference_mode():
            scores = sigmoid_scores(model, feats, classes) if sigmoid else feats @ classes.T
        predicted = scores.argmax(-1).cpu()
        return float((predicted == labels).float().mean())
    finally:
        model.train(was)
