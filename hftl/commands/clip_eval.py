"""CLIP modes beside contrastive fine-tuning: zero-shot evaluation and the linear probe.

Both are `Mode`s of `hftl train` (commands/outline.py): they read the same recipe keys as the
contrastive mode, keep the towers frozen, and write into `output_dir`: the resolved recipe,
metrics (`all_results.json`) and a model card; the linear probe also its classifier
(`linear_probe.safetensors`, with `linear_probe_labels.json`) and the Trainer's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hftl.commands import card
from hftl.commands.outline import Inputs, Mode, Run
from hftl.engine.transfer import TransferPlan
from hftl.tasks.zero_shot import class_embeddings, image_embeddings


class ZeroShotMode(Mode):
    """No training: zero-shot accuracy on every held-out split."""

    def build(self, config, task, resume=None) -> Run:
        raw, labels = task.load_data(config)
        loaded = task.build_model(config, labels)
        loaded.model.requires_grad_(False)
        loaded.model.to(config.training.device).eval()
        return Run(config, task, raw, loaded, resume)

    def metric_names(self, run: Run) -> list[str] | None:
        return None  # nothing trains, no best model to keep

    def fit(self, run: Run, inputs: Inputs, callbacks: list) -> dict:
        return run.task.zero_shot_metrics(run.config, run.loaded, inputs.datasets, splits=("validation", "test"))

    def save(self, run: Run, metrics: dict) -> None:
        if not run.main_process:
            return
        out = Path(run.config.training.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "all_results.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        card.write(out, card.render(run, metrics))
        for key, value in sorted(metrics.items()):
            print(f"  {key:<40} = {value:.4f}" if isinstance(value, float) else f"  {key:<40} = {value}")
        print(f"hftl: metrics and model card written to {out}")


class LinearProbeMode(ZeroShotMode):
    """A linear classifier on cached, normalised image embeddings, initialised from the zero-shot class
    embeddings; the zero-shot accuracy before it comes from the same cached embeddings."""

    def metric_names(self, run: Run) -> list[str] | None:
        return ["accuracy", "loss", "f1_macro"]

    def fit(self, run: Run, inputs: Inputs, callbacks: list) -> dict:
        from hftl.engine.trainer import TransferTrainer
        from hftl.tasks import clip

        config, model, names = run.config, run.model, run.labels.names
        args = config.training
        features = {split: features_dataset(model, ds, args.device, args.per_device_eval_batch_size)
                    for split, ds in inputs.datasets.items()}
        for split, ds in features.items():
            print(f"hftl: cached {len(ds)} {split} image embeddings of size {ds[0]['features'].shape[-1]} (the towers "
                  "run once).")
        classes = class_embeddings(model, run.loaded.processor.tokenizer, names, clip.templates(config), args.device,
                                   tokenize=run.task.captions(run.loaded)).cpu()
        split = clip.eval_split(inputs.datasets)
        held = features[split][:]  # every row at once, as tensors
        predicted = (held["features"] @ classes.T).argmax(-1)
        metrics = {f"zero_shot_{split}_accuracy": float((predicted == held["labels"]).float().mean())}
        self.probe = probe = LinearProbe(classes, float(model.logit_scale.exp().clamp(max=clip.MAX_SCALE)))
        lr = config.transfer.head_lr if config.transfer.head_lr is not None else args.learning_rate
        run.plan = TransferPlan.build(probe, groups={"head": "."}, head_lr=lr, weight_decay=args.weight_decay)
        self.trainer = trainer = TransferTrainer(
            model=probe, args=args, train_dataset=features["train"], eval_dataset=features.get("validation"),
            compute_metrics=probe_metrics(), assignment=run.plan.assignment, callbacks=callbacks or None,
        )
        trainer.train(resume_from_checkpoint=run.resume)
        for split, prefix in (("validation", "eval"), ("test", "test")):
            if split in features:
                metrics.update(trainer.evaluate(features[split], metric_key_prefix=prefix))
        return metrics

    def save(self, run: Run, metrics: dict) -> None:
        if run.main_process:
            out = Path(run.config.training.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_probe(out, self.probe.classifier, run.labels.names)
            self.trainer.save_state()
        super().save(run, metrics)


def write_probe(folder: str | Path, probe: nn.Linear, names: list[str]) -> None:
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


def probe_metrics():
    from hftl import metrics as metric_modules  # evaluate, only where a probe is scored

    accuracy, f1 = metric_modules.load("accuracy"), metric_modules.load("f1")

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        pred = np.asarray(logits).argmax(-1)
        refs = eval_pred.label_ids
        return {"accuracy": accuracy.compute(predictions=pred, references=refs)["accuracy"],
                "f1_macro": f1.compute(predictions=pred, references=refs, average="macro")["f1"]}

    return compute
