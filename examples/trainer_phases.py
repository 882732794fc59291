"""hftl's plan in a plain `transformers.Trainer`: layer-wise lrs, a partial freeze and LP-FT.

    python examples/trainer_phases.py [--model bert-base-uncased] [--out runs/example-trainer]

The Trainer is the stock one: hftl gives it an optimizer whose groups carry the planned lrs (the
scheduler scales them all alike) and a callback that trains the head alone for the first epoch,
then the top block with it. The embeddings and the lower block stay frozen throughout.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from datasets import Dataset
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

import hftl
from tiny import sentiment, tiny_bert


def main(argv: list[str] | None = None, callbacks: list | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint; default: a tiny BERT built here")
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=float, default=3)
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="hftl-example-")
    path = args.model or tiny_bert(f"{out}/tiny-bert")

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    plan = hftl.TransferPlan.build(model, strategy="partial", unfrozen_groups=1, learning_rate=1e-3, layer_decay=0.8,
                                   head_lr=1e-2, weight_decay=0.01)
    plan.apply()  # embeddings and block 0 frozen; block 1 and the head train
    print(plan.table())
    phases = hftl.Phases(plan, head_warmup_epochs=1)  # LP-FT: the head alone first

    data = Dataset.from_dict(sentiment(128)).map(lambda b: tokenizer(b["text"], truncation=True), batched=True)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=16,
                               lr_scheduler_type="linear", warmup_steps=2, report_to="none", save_strategy="no",
                               logging_steps=4, use_cpu=not torch.cuda.is_available()),
        train_dataset=data.remove_columns("text"),
        data_collator=DataCollatorWithPadding(tokenizer),
        optimizers=(plan.optimizer(torch.optim.AdamW), None),  # the planned lrs, every parameter once
        callbacks=[phases, *(callbacks or [])],
    )
    trainer.train()
    return {"plan": plan, "phases": phases, "trainer": trainer, "model": model}


if __name__ == "__main__":
    main()
