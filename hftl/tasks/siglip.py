"""SigLIP and SigLIP2 dual encoders: task clip's modes, plans and data, with SigLIP's own loss and inputs.

Models: `SiglipModel` (SigLIP, and SigLIP2's fixed-resolution checkpoints such as
google/siglip2-base-patch16-224) and `Siglip2Model` (SigLIP2 NaFlex), loaded with AutoModel.
Everything task clip does applies (tasks/clip.py: contrastive, zero_shot and linear_probe modes,
prompts, a freeze plan and layer-wise lrs per tower, WiSE-FT); what differs:

- the loss is SigLIP's sigmoid loss with its learnt bias (engine/contrastive.py), each rank's
  images against the texts of the whole global batch under DDP (`gather_features`);
- captions are padded to the text tower's positions (64) without an attention mask, as SigLIP
  was trained: its text embedding is read at the last position;
- zero-shot scores are sigmoid(exp(t) * cos + b), one probability per class;
- the towers end in their own heads (the text projection; the vision tower's attention pooling),
  which are the `text.head` and `vision.head` groups; `logit_scale` and `logit_bias` form the
  `logit_scale_bias` group, at `learning_rate`, without weight decay;
- NaFlex images are patch sequences of their own aspect ratio (data/naflex.py, `max_num_patches`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from hftl.data.naflex import NaflexPreprocess
from hftl.data.preprocess import Preprocess
from hftl.engine import contrastive
from hftl.engine.layers import SIGLIP_TOWERS
from hftl.engine.towers import TOWER_NAMES, TOWER_STRATEGIES
from hftl.errors import HftlError
from hftl.tasks import clip_inputs
from hftl.tasks.base import Capabilities, Loaded
from hftl.tasks.classification import Labels
from hftl.tasks.clip import Clip

if TYPE_CHECKING:
    from hftl.config import RunConfig

# SigLIP's initial temperature and bias (Zhai et al. 2023), for `from_scratch`: t' = log 10, b = -10 keep the
# first steps from being swamped by the many negatives; transformers initialises both at 0.
SCRATCH_LOGIT_SCALE, SCRATCH_LOGIT_BIAS = math.log(10), -10.0
# keys of task clip's inputs that do not fit SigLIP's -> why
NOT_FOR_SIGLIP = {
    "image_size": "it resamples the DINOv2 vision tower of a CLIP-style dual encoder; SigLIP keeps its checkpoint's "
                  "size (for SigLIP2 NaFlex, `max_num_patches` sets the resolution)",
    "max_length": "SigLIP pads every caption to its text tower's positions, as it was trained, and reads the text "
                  "embedding at the last one",
}


def sigmoid_loss(model, inputs: dict, scale: torch.Tensor, bias: torch.Tensor,
                 gather: bool) -> tuple[torch.Tensor, object]:
    """SigLIP's sigmoid loss; same-label pairs are positives; optionally over the global batch's texts."""
    labels = inputs.pop("labels", None)
    outputs = model(**inputs)  # pixel_values (NaFlex: with its mask and grid shapes) and input_ids
    loss = contrastive.sigmoid_loss(outputs.image_embeds, outputs.text_embeds, scale, bias, labels, gather)
    return loss, outputs


def text_length(model) -> int:
    """The text tower's positions: the fixed length SigLIP's captions are padded to (64 for Google's checkpoints)."""
    return int(model.config.text_config.max_position_embeddings)


def is_naflex(model) -> bool:
    return getattr(model.config, "model_type", "") == "siglip2"


class Siglip(Clip):
    name = "siglip"
    capabilities = Capabilities(zero_shot=True, towers=TOWER_NAMES, phases=False, strategies=TOWER_STRATEGIES,
                                naflex=True)
    sigmoid_scores = True
    head_words, logit_words = "tower heads", "logit_scale and logit_bias"

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        for key, why in NOT_FOR_SIGLIP.items():
            if key in config.user_keys:
                raise HftlError(f"{key} is not available for task siglip: {why}. Drop `{key}`.")

    def build_model(self, config: RunConfig, labels: Labels) -> Loaded:
        name = config.model.model_name_or_path
        try:
            model, processor = clip_inputs.load_dual(config, SIGLIP_TOWERS)
        except ImportError as err:  # SigLIP's sentencepiece tokenizer, when sentencepiece is not installed
            raise HftlError(f"Could not load `{name}`: {str(err).strip().splitlines()[0]} Install the tokenizer's "
                            "packages with `pip install \"hftl[siglip]\"` (sentencepiece, protobuf).") from None
        if is_naflex(model) and not hasattr(processor.image_processor, "max_num_patches"):
            raise HftlError(f"`{name}` is a NaFlex Siglip2Model, but its image processor makes fixed-size images, not "
                            "patch sequences: use the checkpoint's own Siglip2 processor.")
        if config.data.max_num_patches and not is_naflex(model):
            raise HftlError(f"max_num_patches sizes SigLIP2 NaFlex inputs; `{name}` is a fixed-resolution "
                            f"{type(model).__name__}: drop `max_num_patches`.")
        if config.model.from_scratch:
            with torch.no_grad():
                model.logit_scale.fill_(SCRATCH_LOGIT_SCALE)
                model.logit_bias.fill_(SCRATCH_LOGIT_BIAS)
        kind = NaflexPreprocess if is_naflex(model) else Preprocess
        return Loaded(model, processor, labels, kind(processor.image_processor, config.data))

    def captions(self, loaded: Loaded) -> clip_inputs.CaptionTokens:
        return clip_inputs.CaptionTokens(loaded.processor.tokenizer, text_length(loaded.model), fixed=True)

    def collator(self, loaded: Loaded):
        return clip_inputs.Collator(self.captions(loaded))

    def loss_fn(self, config: RunConfig):
        gather = config.transfer.gather_features

        def compute(trainer, model, inputs, return_outputs=False):  # TransferTrainer.compute_loss hands itself in
            inner = trainer.accelerator.unwrap_model(model)
            loss, outputs = sigmoid_loss(model, dict(inputs), inner.logit_scale, inner.logit_bias,
                                         gather and model.training)
            return (loss, outputs) if return_outputs else loss

        return compute
