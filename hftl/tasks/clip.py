"""CLIP-style dual encoders: contrastive fine-tuning, zero-shot classification, linear probe.

Models: `CLIPModel` and `VisionTextDualEncoderModel` (any vision encoder and text encoder joined
by projections), loaded with AutoModel. Each tower has its own freeze plan and layer-wise lrs
(engine/towers.py); `logit_scale` trains without weight decay. Inputs: tasks/clip_inputs.py. SigLIP and
SigLIP2 are task siglip (tasks/siglip.py), this task with their own loss, captions and scores.

Data: images with captions (`caption_column`), or labelled images whose captions come from
`prompt_templates` ("a photo of a {label}."). With labels, every run reports zero-shot accuracy
on held-out images before and after fine-tuning: class embeddings are the mean of the templates'
normalised text embeddings, and an image takes the class it is closest to.

The contrastive loss is CLIP's symmetric cross-entropy over image-text similarities. Examples
with the same label are positives of each other (their captions say the same thing), not
negatives. With `gather_features` under DDP every rank contrasts its images and texts against
the whole global batch (features gathered with their gradients), as in CLIP's training.

Modes (`clip_mode`): `contrastive` trains through the Trainer; `zero_shot` evaluates only;
`linear_probe` trains a linear classifier on frozen, cached image embeddings, initialised from
the zero-shot class embeddings, so its first step starts at zero-shot accuracy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from datasets import DatasetDict
from torch import nn

from hftl.engine import contrastive
from hftl.engine.towers import TOWER_NAMES, TOWER_STRATEGIES, TowerPlan
from hftl.engine.transfer import TransferPlan
from hftl.errors import HftlError
from hftl.tasks import clip_inputs
from hftl.tasks.base import Capabilities, Loaded, Task
from hftl.tasks.classification import Labels
from hftl.tasks.clip_inputs import DEFAULT_PROMPT, templates
from hftl.tasks.zero_shot import zero_shot_accuracy

if TYPE_CHECKING:
    from hftl.config import RunConfig

MAX_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100
TOWER_KEYS = ("strategy", "unfrozen_groups", "learning_rate", "layer_decay")
MODE_TEXT = {
    "contrastive": "contrastive image-text fine-tuning, a freeze plan per tower",
    "zero_shot": "zero-shot classification: no training",
    "linear_probe": "linear probe on frozen, cached image embeddings (zero-shot initialised)",
}


# ---------------------------------------------------------------- loss


def contrastive_loss(model, inputs: dict, scale: torch.Tensor, gather: bool) -> tuple[torch.Tensor, object]:
    """Symmetric image-text cross-entropy; same-label pairs are positives; optionally over the global batch."""
    labels = inputs.pop("labels", None)
    outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    pixel_values=inputs["pixel_values"])
    image, text = outputs.image_embeds, outputs.text_embeds
    all_image, all_text, all_labels, offset = image, text, labels, 0
    world, rank = contrastive.world()
    if gather and world > 1:
        all_image = contrastive.gather_with_grad(image)  # gradients flow back to the owning rank
        all_text = contrastive.gather_with_grad(text)
        if labels is not None:
            all_labels = contrastive.gather_plain(labels)
        offset = rank * image.shape[0]
    scale = scale.exp().clamp(max=MAX_SCALE)
    logits_image = scale * image @ all_text.T  # local images against every text
    logits_text = scale * text @ all_image.T
    if labels is not None:
        targets = (labels[:, None] == all_labels[None, :]).float()
        targets = targets / targets.sum(1, keepdim=True)
    else:
        targets = torch.arange(image.shape[0], device=image.device) + offset
    loss = (nn.functional.cross_entropy(logits_image, targets) + nn.functional.cross_entropy(logits_text, targets)) / 2
    return loss, outputs


def tower_setting(config: RunConfig, tower: str, key: str):
    """The tower's own value of `key` (`vision_learning_rate`), or the recipe-wide one (`learning_rate`)."""
    own = getattr(config.transfer, f"{tower}_{key}", None)
    if own is not None:
        return own
    if key == "learning_rate":
        return config.training.learning_rate
    return getattr(config.transfer, key)


def tower_plans(config: RunConfig) -> dict[str, TowerPlan]:
    plans = {}
    for tower in TOWER_NAMES:
        own = getattr(config.transfer, f"{tower}_unfrozen_groups", None) is not None
        plans[tower] = TowerPlan(*(tower_setting(config, tower, k) for k in TOWER_KEYS),
                                 key=f"{tower}_unfrozen_groups" if own else "unfrozen_groups")
    return plans


class Clip(Task):
    name = "clip"
    pipeline_task = "zero-shot-image-classification"
    capabilities = Capabilities(zero_shot=True, towers=TOWER_NAMES, phases=False, strategies=TOWER_STRATEGIES)
    model_kind = "dual"
    # images and captions feed the transform: the Trainer must keep their columns
    required_training = {"remove_unused_columns": False}

    LINEAR_PROBE_NEEDS = {"prediction_loss_only": False, "label_names": ["labels"]}  # to score its classifier
    sigmoid_scores = False  # zero-shot classes ranked by cosine (CLIP's softmax keeps that order)
    head_words, logit_words = "projections", "logit_scale"  # the model card's names for them

    def required(self, config: RunConfig) -> dict:
        probe = self.LINEAR_PROBE_NEEDS if config.transfer.clip_mode == "linear_probe" else {}
        return {**super().required(config), **probe}

    def who(self, config: RunConfig) -> str:
        mode = config.transfer.clip_mode
        return f"task {self.name}" if mode == "contrastive" else f"clip_mode {mode}"

    def why_required(self, key: str) -> str:
        if key in self.LINEAR_PROBE_NEEDS:
            return "the linear probe is scored by its accuracy on the labels"
        return "images and captions are turned into model inputs on the fly from their columns"

    def defaults(self, given: dict) -> dict:
        out = super().defaults(given)
        if given.get("clip_mode", "contrastive") == "contrastive":
            # the evaluation loss is the contrastive loss; zero-shot accuracy is measured separately, on every image.
            # Gathered batches match across ranks without dropping the last one: even_batches completes it.
            out["prediction_loss_only"] = True
        else:
            out["augment"] = False  # each image is embedded once
            out.update(self.LINEAR_PROBE_NEEDS)  # the linear probe's accuracy
        return out

    def mode(self, config: RunConfig) -> str:
        return "trainer" if config.transfer.clip_mode == "contrastive" else config.transfer.clip_mode

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        t = config.transfer  # clip_mode, the tower strategies and the towers' numbers are checked with their keys
        if t.clip_mode != "contrastive" and config.data.augment and "augment" in config.user_keys:
            raise HftlError(f"clip_mode {t.clip_mode} embeds each image once, so it cannot augment: drop `augment: true`.")
        if config.data.label_separator:
            raise HftlError(f"task {self.name} takes one label per image (a caption per class): drop label_separator.")
        for template in config.data.prompt_templates:
            if "{label}" not in template:
                raise HftlError(f"prompt template `{template}` has no `{{label}}`: each template must name the class, "
                                f"e.g. `{DEFAULT_PROMPT}`.")
            try:
                template.format(label="x")
            except (KeyError, IndexError, ValueError) as err:
                raise HftlError(f"prompt template `{template}` is not a valid format string ({err}); use only "
                                "`{label}`.") from None

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, Labels]:
        raw, labels = clip_inputs.load_data(config)
        if config.transfer.clip_mode != "contrastive" and len(labels.names) < 2:
            raise HftlError("Zero-shot classification and the linear probe need at least 2 classes in `label_column`.")
        return raw, labels

    def build_model(self, config: RunConfig, labels: Labels) -> Loaded:
        return clip_inputs.build_model(config, labels)

    def encode(self, config: RunConfig, raw: DatasetDict, loaded: Loaded) -> DatasetDict:
        return clip_inputs.encode(config, raw, loaded)

    def collator(self, loaded: Loaded):
        return clip_inputs.collator(loaded.processor)

    def captions(self, loaded: Loaded):
        """How zero-shot prompts become text-tower inputs; None: the tokenizer, padded per batch (CLIP)."""
        return None

    def plan(self, config: RunConfig, model) -> TransferPlan:
        """A plan per tower; `logit_scale` at `learning_rate`, without weight decay."""
        return TransferPlan.build(model, learning_rate=config.training.learning_rate, head_lr=config.transfer.head_lr,
                                  weight_decay=config.training.weight_decay, freeze=config.transfer.freeze,
                                  towers=tower_plans(config))

    def loss_fn(self, config: RunConfig):
        gather = config.transfer.gather_features

        def compute(trainer, model, inputs, return_outputs=False):  # TransferTrainer.compute_loss hands itself in
            inner = trainer.accelerator.unwrap_model(model)
            loss, outputs = contrastive_loss(model, dict(inputs), inner.logit_scale, gather and model.training)
            return (loss, outputs) if return_outputs else loss

        return compute

    def zero_shot_metrics(self, config: RunConfig, loaded: Loaded, encoded: DatasetDict,
                          splits: tuple[str, ...] | None = None) -> dict[str, float]:
        """Zero-shot accuracy per split (default: the held-out one, test else validation); empty without labels."""
        if not loaded.labels.names:
            return {}
        device = config.training.device
        loaded.model.to(device)
        out = {}
        for split in splits or (eval_split(encoded),):
            if split in encoded:
                out[f"zero_shot_{split}_accuracy"] = zero_shot_accuracy(
                    loaded.model, loaded.processor, encoded[split], loaded.labels.names, templates(config), device,
                    config.training.per_device_eval_batch_size, tokenize=self.captions(loaded),
                    sigmoid=self.sigmoid_scores)
        return out

    def describe_inputs(self, config: RunConfig) -> str:
        data = config.data
        prompts = "; ".join(data.prompt_templates) or DEFAULT_PROMPT
        return f"image column `{data.image_column}` with captions `{data.caption_column}` or prompts `{prompts}`"

    def describe_strategy(self, config: RunConfig) -> str:
        return MODE_TEXT[config.transfer.clip_mode]

    def describe_rates(self, config: RunConfig) -> str:
        t, lr = config.transfer, config.training.learning_rate
        head = t.head_lr if t.head_lr is not None else lr
        if t.clip_mode != "contrastive":
            return f"head {head:g} (mode {t.clip_mode}; the towers are frozen)"
        parts = []
        for tower, plan in tower_plans(config).items():
            top = f" (top {plan.unfrozen_groups})" if plan.strategy == "partial" else ""
            parts.append(f"{tower} tower {plan.strategy}{top}, top block {plan.learning_rate:g}, layer_decay "
                         f"{plan.layer_decay:g}")
        return f"{'; '.join(parts)}; {self.head_words} {head:g}; {self.logit_words} {lr:g} (mode {t.clip_mode})"


def eval_split(encoded: DatasetDict) -> str:
    return "test" if "test" in encoded else "validation"
