"""Pooling an encoder's token outputs into one vector per example, padding excluded.

Shared by everything that reads an encoder's features outside its task head: EWC's Fisher,
replay's source head, the forgetting report's k-NN and advise's probe.
"""

from __future__ import annotations

import torch


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence of (batch, tokens, dim), padding excluded; every token when there is no mask (images);
    over the positions of a CNN's feature maps (batch, channels, height, width), as its head pools them."""
    if hidden.dim() == 4:
        return hidden.mean((2, 3))
    if mask is None:
        return hidden.mean(1)
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def mean_pooled(encoder, batch: dict) -> torch.Tensor:
    return masked_mean(encoder(**batch).last_hidden_state, batch.get("attention_mask"))
