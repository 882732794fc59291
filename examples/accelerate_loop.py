"""hftl's plan in a training loop of your own, under `accelerate`: gradual unfreezing, top down.

    python examples/accelerate_loop.py [--model bert-base-uncased] [--out DIR]
    accelerate launch --num_processes 2 examples/accelerate_loop.py --out DIR

Every parameter is in the optimizer from step 0 and trains under DDP from the start: a group that
is not unfrozen yet has its (all-reduced) gradient dropped before clipping and the step, so the
ranks stay in step through every phase change. Each rank writes a fingerprint of its weights (after
each epoch and at the end) to `DIR/rank-N.json`: equal files mean equal replicas.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_linear_schedule_with_warmup

import hftl
from tiny import sentiment, tiny_bert


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint; default: a tiny BERT built here")
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out = Path(args.out or tempfile.mkdtemp(prefix="hftl-example-"))
    path = args.model
    if path is None:  # one rank builds the tiny checkpoint, the others wait for it
        path = str(out / "tiny-bert")
        if accelerator.is_main_process:
            tiny_bert(path)
        accelerator.wait_for_everyone()

    torch.manual_seed(0)  # the same new head on every rank
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    plan = hftl.TransferPlan.build(model, strategy="full", learning_rate=1e-3, layer_decay=0.8, head_lr=1e-2)
    plan.apply()
    phases = hftl.Phases(plan, unfreeze_every=1)  # head, then one more group per epoch, top down
    optimizer = plan.optimizer(torch.optim.AdamW, weight_decay=0.0)

    data = Dataset.from_dict(sentiment(96)).map(lambda b: tokenizer(b["text"], truncation=True), batched=True)
    loader = DataLoader(data.remove_columns("text").rename_column("label", "labels"), batch_size=8, shuffle=True,
                        collate_fn=DataCollatorWithPadding(tokenizer), generator=torch.Generator().manual_seed(0))
    scheduler = get_linear_schedule_with_warmup(optimizer, 2, args.epochs * len(loader))  # scales every group alike
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    per_epoch = []
    for epoch in range(args.epochs):
        phases.on_epoch(epoch)  # enters the phase of this epoch (prints it when it changes)
        model.train()
        for batch in loader:
            loss = model(**batch).loss
            accelerator.backward(loss)
            phases.drop_inactive_grads()  # before clipping and the step
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        per_epoch.append(fingerprint(accelerator.unwrap_model(model)))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank-{accelerator.process_index}.json").write_text(json.dumps(
        {"weights": per_epoch[-1], "per_epoch": per_epoch, "phases": phases.history}, indent=1))
    return {"plan": plan, "phases": phases, "model": accelerator.unwrap_model(model), "optimizer": optimizer}


def fingerprint(model) -> dict[str, list[float]]:
    """Per parameter: (sum, dot with a fixed cosine sequence) in float64; equal weights give equal values."""
    out = {}
    for name, param in model.named_parameters():
        flat = param.detach().double().flatten().cpu()
        out[name] = [float(flat.sum()), float((flat * torch.cos(torch.arange(flat.numel(), dtype=torch.float64))).sum())]
    return out


if __name__ == "__main__":
    main()
