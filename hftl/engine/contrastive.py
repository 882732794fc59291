"""Image-text losses over the global batch, with features gathered across ranks with their gradients.

CLIP's softmax loss (tasks/clip.py) and SigLIP's sigmoid loss (here) contrast each rank's images
with the texts of every rank under DDP. `torch.distributed.nn.functional.all_gather` sends the
gradient of each gathered copy back to the rank that owns it, summed over ranks, so a text
embedding learns from every image it was compared with; DDP's mean over ranks then gives the
gradient of the global batch's loss. The model's own SigLIP loss (`return_loss=True`) sees only
the local batch.
"""

from __future__ import annotations

import torch
from torch import nn


def world() -> tuple[int, int]:
    """(world size, rank); (1, 0) outside an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor`, concatenated in rank order; gradients flow back to the owning rank."""
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(tensor))


def gather_plain(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (labels), concatenated in rank order; no gradient."""
    gathered = [torch.empty_like(tensor) for _ in range(world()[0])]
    torch.distributed.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def sigmoid_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                 labels: torch.Tensor | None = None, gather: bool = False) -> torch.Tensor:
    """SigLIP's loss (Zhai et al. 2023) of this rank's images against every text of the (global) batch:

        -1/n * sum_i sum_j log sigmoid(z_ij * (exp(logit_scale) * x_i . y_j + logit_bias))

    over normalised embeddings, z_ij = +1 for a matching pair and -1 otherwise. With `labels`, examples
    with the same label match (their captions say the same thing); without, image i matches text i.
    With `gather` under DDP, j runs over every rank's texts: the mean of the ranks' losses is then the
    loss of the global batch, each pair counted once (by the rank that holds its image)."""
    all_text, all_labels, offset = text, labels, 0
    size, rank = world()
    if gather and size > 1:
        all_text = gather_with_grad(text)
        if labels is not None:
            all_labels = gather_plain(labels)
        offset = rank * image.shape[0]  # equal batches on every rank (the Trainer's even_batches)
    logits = (image @ all_text.T).float() * logit_scale.float().exp() + logit_bias.float()
    if labels is not None:
        positive = labels[:, None] == all_labels[None, :]
    else:
        rows = torch.arange(image.shape[0], device=image.device)[:, None] + offset
        positive = rows == torch.arange(all_text.shape[0], device=image.device)[None, :]
    signs = positive.float() * 2 - 1
    return -nn.functional.logsigmoid(signs * logits).sum(1).mean()
