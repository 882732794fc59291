"""The training budget from the data: epochs, warmup and learning rates for a strategy, each with its reason.

A head on cached features costs milliseconds a step, so it gets at least MIN_HEAD_STEPS steps
whatever the epoch count. A fine-tune of a small set gets enough epochs for MIN_TUNE_STEPS optimizer
steps (50 BBC articles, batch 16: 25 epochs, where `full` reached 0.939), between MIN_EPOCHS and
MAX_EPOCHS; a large set needs no more than MIN_EPOCHS. A recipe's own larger epoch count, and its
own learning rates and warmup, win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIN_HEAD_STEPS = 100  # feature extraction: a linear head on cached features converges in about this many steps
MAX_HEAD_EPOCHS = 100
MIN_TUNE_STEPS = 100  # fine-tuning: optimizer steps a small set needs to move the encoder
MIN_EPOCHS, MAX_EPOCHS = 3, 30
WARMUP = 0.1  # share of all steps: the new head's first large gradients do not hit the pre-trained weights at full lr
SMALL_MODEL = 60e6  # parameters; smaller encoders take larger steps
HEAD_LR = 1e-3


@dataclass
class Budget:
    num_train_epochs: float | int
    warmup_steps: float
    learning_rate: float
    head_lr: float
    reasons: dict[str, str] = field(default_factory=dict)


def plan(examples: int, strategy: str, batch: int, parameters: int, given: dict) -> Budget:
    """The budget for `strategy` on `examples` training examples at batch size `batch` (one process).
    `given` holds the recipe's own values of num_train_epochs, learning_rate, head_lr and warmup_steps."""
    steps = max(1, math.ceil(examples / max(batch, 1)))
    head_only = strategy == "feature_extraction"
    if head_only:
        needed = min(MAX_HEAD_EPOCHS, math.ceil(MIN_HEAD_STEPS / steps))
        why = f"{steps} steps an epoch; a head on cached features gets {MIN_HEAD_STEPS}+ steps, which cost seconds"
    else:
        needed = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_TUNE_STEPS / steps)))
        why = (f"{steps} steps an epoch; a fine-tune gets {MIN_TUNE_STEPS}+ optimizer steps and {MIN_EPOCHS} to "
               f"{MAX_EPOCHS} epochs")
    own = given.get("num_train_epochs")
    epochs = max(needed, own) if own is not None else needed
    if own is not None and own >= needed:
        why += f"; the recipe's {own:g} is enough and is kept"
    lr = given.get("learning_rate") or (1e-4 if parameters < SMALL_MODEL else 3e-5)
    lr_why = ("the recipe's own" if "learning_rate" in given else
              f"the top backbone group: {lr:g} for a {parameters / 1e6:.0f}M-parameter model (1e-4 under "
              f"{SMALL_MODEL / 1e6:.0f}M, else 3e-5)")
    warmup = given.get("warmup_steps", 0.0 if head_only else WARMUP)
    warmup_why = ("the recipe's own" if "warmup_steps" in given else "a linear head on fixed features needs no warmup"
                  if head_only else f"{WARMUP:.0%} of the steps: the new head's first gradients reach the encoder gently")
    head_lr = given.get("head_lr") or HEAD_LR
    reasons = {"num_train_epochs": why, "learning_rate": lr_why, "warmup_steps": warmup_why,
               "head_lr": "the recipe's own" if given.get("head_lr") else "the new head starts from random: a normal lr"}
    return Budget(int(epochs) if float(epochs).is_integer() else epochs, warmup, lr, head_lr, reasons)
