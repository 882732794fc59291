"""CLIP modes beside contrastive fine-tuning: zero-shot evaluation and the linear probe.

Both read the same recipe keys as the contrastive mode and write into `output_dir`: metrics
(`all_results.json`), the resolved recipe and a model card; the linear probe also its classifier
(`linear_probe.safetensors`, with `linear_probe_labels.json`) and the Trainer's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hftl import metrics
from hftl.commands import card
from hftl.config import RunConfig, write_resolved
from hftl.errors import HftlError
from hftl.engine.layers import LayerGroup
from hftl.engine.optim import assign
from hftl.engine.plan import plan_rows
from hftl.tasks.classification import Labels
from hftl.tasks.zero_shot import class_embeddings, image_embeddings, zero_shot_accuracy


def run(config: RunConfig, command: str) -> dict:
    from hftl.commands import train as engine
    from hftl.tasks import clip

    engine._preflight(config)
    if config.data.augment:
        print(f"hftl: clip_mode {config.transfer.clip_mode} embeds each image once: augment is turned off.")
        config.data.augment = False
    task = clip
    raw, labels = task.load_data(config)
    if len(labels.names) < 2:
        raise HftlError("Zero-shot classification and the linear probe need at least 2 classes in `label_column`.")
    model, processor = task.build_model(config, labels)
    model.requires_grad_(False)
    encoded = task.encode(config, raw, processor)
    device = config.training.device
    model.to(device).eval()
    out = Path(config.training.output_dir)
    main_process = config.training.process_index == 0
    if config.transfer.clip_mode == "zero_shot":
        metrics = task.zero_shot_metrics(config, model, processor, labels, encoded)
        for split in ("validation", "test"):
            if split in encoded and f"zero_shot_{split}_accuracy" not in metrics:
                metrics[f"zero_shot_{split}_accuracy"] = zero_shot_accuracy(
                    model, processor, encoded[split], labels.names, clip.templates(config), device,
                    config.training.per_device_eval_batch_size)
        rows = []
    else:
        metrics, rows = _linear_probe(config, model, processor, labels, encoded)
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "all_results.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        write_resolved(config, out / "hftl_config.yaml")
        card.write(out, card.render(config, rows, metrics, command, labels.names, clip.PIPELINE_TASK))
        for key, value in sorted(metrics.items()):
            print(f"  {key:<40} = {value:.4f}" if isinstance(value, float) else f"  {key:<40} = {value}")
        print(f"hftl: metrics and model card written to {out}")
    return metrics


def _linear_probe(config: RunConfig, model, processor, labels, encoded) -> tuple[dict, list]:
    """Train a linear classifier on cached, normalised image embeddings (zero-shot initialised); the zero-shot
    accuracy before it comes from the same cached embeddings."""
    from hftl.tasks import clip
    from hftl.engine.trainer import TransferTrainer

    args = config.training
    device = args.device
    features = {split: features_dataset(model, ds, device, args.per_device_eval_batch_size) for split, ds in encoded.items()}
    for split, ds in features.items():
        print(f"hftl: cached {len(ds)} {split} image embeddings of size {ds[0]['features'].shape[-1]} (the towers run once).")
    classes = class_embeddings(model, processor.tokenizer, labels.names, clip.templates(config), device).cpu()
    split = clip.eval_split(encoded)
    held = features[split][:]  # every row at once, as tensors
    predicted = (held["features"] @ classes.T).argmax(-1)
    before = {f"zero_shot_{split}_accuracy": float((predicted == held["labels"]).float().mean())}
    scale = float(model.logit_scale.exp().clamp(max=clip.MAX_SCALE))
    probe = LinearProbe(classes, scale)
    head = LayerGroup("head", list(probe.named_parameters()))
    lr = config.transfer.head_lr if config.transfer.head_lr is not None else args.learning_rate
    assignment = assign([head], {"head": lr}, args.weight_decay)
    args.label_names = ["labels"]
    args.prediction_loss_only = False
    trainer = TransferTrainer(
        model=probe, args=args, train_dataset=features["train"], eval_dataset=features.get("validation"),
        compute_metrics=probe_metrics(labels), assignment=assignment,
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = dict(before)
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split in features:
            metrics.update(trainer.evaluate(features[split], metric_key_prefix=prefix))
    if args.process_index == 0:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        write_probe(args.output_dir, probe.classifier, labels.names)
        trainer.save_state()
    return metrics, plan_rows([head], assignment)


def write_probe(folder: str, probe: nn.Linear, names: list[str]) -> None:
    from safetensors.torch import save_file

    save_file({"weight": probe.weight.detach().cpu().contiguous(), "bias": probe.bias.detach().cpu().contiguous()},
              str(Path(folder) / "linear_probe.safetensors"))
    Path(folder, "linear_probe_labels.json").write_text(json.dumps(names, indent=2) + "\n")


def features_dataset(model, encoded_split, device, batch_size: int):
    from datasets import Dataset

    feats, labels = image_embeddings(model, encoded_split, device, batch_size)
    return Dataset.from_dict({"features": feats.cpu().numpy(), "labels": labels.numpy()}).with_format("torch")


class LinearProbe(nn.Module):
    """A linear classifier over normalised image embeddings, scaled like CLIP's logits."""

    def __init__(self, classes: torch.Tensor, scale: float):
        super().__init__()
        self.classifier = nn.Linear(classes.shape[1], classes.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(classes * scale)  # zero-shot head: step 0 predicts as zero-shot does
            self.classifier.bias.zero_()

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.classifier(features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


def probe_metrics(labels: Labels):
    accuracy, f1 = metrics.load("accuracy"), metrics.load("f1")

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        pred = np.asarray(logits).argmax(-1)
        refs = eval_pred.label_ids
        return {"accuracy": accuracy.compute(predictions=pred, references=refs)["accuracy"],
                "f1_macro": f1.compute(predictions=pred, references=refs, average="macro")["f1"]}

    return compute
