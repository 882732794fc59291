"""Run by tests/test_siglip.py under `accelerate launch --num_processes 2` (gloo): each rank takes its half of a
fixed global batch of embeddings, computes SigLIP's sigmoid loss with and without gathered texts, backpropagates
the gathered one, and writes its loss and gradients to OUT/rank<r>.json. Only torch and hftl's loss are imported,
so the two processes start fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hftl.engine.contrastive import sigmoid_loss

GLOBAL_LABELS = [0, 1, 2, 3, 4, 5, 0, 1]  # labels 0 and 1 on both ranks: positives across ranks


def global_batch() -> dict[str, torch.Tensor]:
    """The same 8 normalised image and text embeddings (dim 16) on every rank, with a temperature and a bias."""
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(image + 0.8 * torch.randn(8, 16, generator=generator), dim=-1)
    return {"image": image, "text": text, "labels": torch.tensor(GLOBAL_LABELS),
            "logit_scale": torch.tensor([2.0]), "logit_bias": torch.tensor([-3.0])}


def main(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    batch = global_batch()
    size = batch["image"].shape[0] // world
    mine = slice(rank * size, (rank + 1) * size)
    image = batch["image"][mine].clone().requires_grad_(True)
    text = batch["text"][mine].clone().requires_grad_(True)
    scale = batch["logit_scale"].clone().requires_grad_(True)
    bias = batch["logit_bias"].clone().requires_grad_(True)
    labels = batch["labels"][mine]
    loss = sigmoid_loss(image, text, scale, bias, labels, gather=True)
    loss.backward()
    with torch.no_grad():
        local = sigmoid_loss(image, text, scale, bias, labels, gather=False)
    result = {"rank": rank, "world": world, "loss": loss.item(), "local_loss": local.item(),
              "image_grad": image.grad.tolist(), "text_grad": text.grad.tolist(),
              "scale_grad": scale.grad.item(), "bias_grad": bias.grad.item()}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.barrier()  # both ranks done before the group goes
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
