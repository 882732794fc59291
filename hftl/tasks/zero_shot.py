"""Zero-shot classification with a dual encoder: classes as text, images as their nearest class.

A class embedding is the normalised mean of its prompts' normalised text embeddings (prompt
ensembling); an image's embedding is its normalised projected pooled output. Both go through the
towers' own pooled outputs and projections, exactly as the model's forward computes them.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def text_embeddings(model, tokenizer, texts: list[str], device, batch_size: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt").to(device)
        pooled = model.text_model(**batch).pooler_output
        out.append(nn.functional.normalize(model.text_projection(pooled).float(), dim=-1))
    return torch.cat(out)


@torch.inference_mode()
def image_embeddings(model, dataset, device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        pixels = torch.stack([r["pixel_values"] for r in rows]).to(device)
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        feats.append(nn.functional.normalize(model.visual_projection(pooled).float(), dim=-1))
        labels.append(torch.tensor([r["labels"] for r in rows]))
    return torch.cat(feats), torch.cat(labels)


def class_embeddings(model, tokenizer, names: list[str], prompts: list[str], device) -> torch.Tensor:
    """Per class: the normalised mean of its templates' normalised text embeddings."""
    texts = [p.format(label=n) for n in names for p in prompts]
    emb = text_embeddings(model, tokenizer, texts, device).view(len(names), len(prompts), -1).mean(1)
    return nn.functional.normalize(emb, dim=-1)


def zero_shot_accuracy(model, processor, dataset, names: list[str], prompts: list[str], device, batch_size: int) -> float:
    was = model.training
    model.eval()
    try:
        classes = class_embeddings(model, processor.tokenizer, names, prompts, device)
        feats, labels = image_embeddings(model, dataset, device, batch_size)
        predicted = (feats @ classes.T).argmax(-1).cpu()
        return float((predicted == labels).float().mean())
    finally:
        model.train(was)
