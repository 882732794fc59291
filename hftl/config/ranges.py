"""The numbers a numeric key takes: `Range`, the helpers that spell one, and the ranges of the
TrainingArguments keys (hftl's own keys carry theirs in their metadata, config/keys.py).

A value outside its key's range is refused by config/rules.py before torch, peft or a DataLoader
sees it, so it fails in a line instead of a traceback, or, worse, runs (a zero lr, a negative
weight decay, max_grad_norm below 0) and saves a model it did not train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SEED_MAX = 2**32 - 1  # numpy's seeds (datasets' shuffles, set_seed) stop here


@dataclass(frozen=True)
class Range:
    """The numbers a key takes: `low` and `high` (None: unbounded), each allowed or not, and why;
    the value of a key outside its range fails validation, before torch, peft or a DataLoader sees it."""

    low: float | None = None
    high: float | None = None
    low_in: bool = True  # the bound itself is allowed
    high_in: bool = True
    why: str = ""
    infinite: bool = False  # `inf` is a value of its own (max_grad_norm: no clipping); NaN never is

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return self.infinite and value > 0 and self.high is None
        low_ok = self.low is None or value > self.low or (self.low_in and value == self.low)
        high_ok = self.high is None or value < self.high or (self.high_in and value == self.high)
        return low_ok and high_ok

    def __str__(self) -> str:
        low, high = _number_text(self.low), _number_text(self.high)
        if self.high is None:
            return f"{'>=' if self.low_in else '>'} {low}"
        if self.low is None:
            return f"{'<=' if self.high_in else '<'} {high}"
        return f"in {'[' if self.low_in else '('}{low}, {high}{']' if self.high_in else ')'}"


def _number_text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def above(low: float, why: str = "") -> Range:
    return Range(low, low_in=False, why=why)


def at_least(low: float, why: str = "") -> Range:
    return Range(low, why=why)


def share(why: str = "", low_in: bool = True, high_in: bool = False) -> Range:
    """A fraction or probability: [0, 1) unless said otherwise."""
    return Range(0, 1, low_in, high_in, why)


SEED = Range(0, SEED_MAX, why="numpy takes seeds in that range")

# The numbers TrainingArguments' keys take, where torch, the DataLoader or the Trainer would fail on
# (or silently misread) a value beyond them; hftl's own keys carry their Range in their metadata.
TRAINING_RANGES = {
    "learning_rate": above(0, "a zero lr trains nothing and a negative one climbs the loss"),
    "num_train_epochs": at_least(0, "0 trains nothing unless max_steps is set"),
    "max_steps": at_least(-1, "-1 lets num_train_epochs decide"),
    "per_device_train_batch_size": at_least(1, "it counts the examples per device in each step"),
    "per_device_eval_batch_size": at_least(1, "it counts the examples per device in each evaluation batch"),
    "gradient_accumulation_steps": at_least(1, "1 steps the optimizer after every batch"),
    "eval_accumulation_steps": at_least(1, "unset keeps every prediction on the device until the end"),
    "weight_decay": at_least(0, "0 turns it off"),
    "adam_beta1": share("it is a decay rate of Adam's moment estimates"),
    "adam_beta2": share("it is a decay rate of Adam's moment estimates"),
    "adam_epsilon": at_least(0, "it keeps the optimizer's update finite"),
    "max_grad_norm": Range(0, why="0 turns gradient clipping off", infinite=True),
    "warmup_steps": at_least(0, "below 1 it is a share of the training steps, from 1 up a number of steps"),
    "label_smoothing_factor": share("it is the share of probability spread over the other classes"),
    "logging_steps": above(0, "below 1 it is a share of the training steps"),
    "eval_steps": at_least(0, "below 1 it is a share of the training steps; 0 or unset uses logging_steps"),
    "save_steps": above(0, "below 1 it is a share of the training steps; save_strategy: no saves no checkpoints"),
    "eval_delay": at_least(0, "0 evaluates from the start"),
    "save_total_limit": at_least(1, "it counts the checkpoints kept; `save_strategy: no` keeps none"),
    "seed": SEED,
    "data_seed": SEED,
    "dataloader_num_workers": at_least(0, "0 loads batches in the main process"),
    "dataloader_prefetch_factor": at_least(1, "it counts the batches each worker loads ahead"),
    "neftune_noise_alpha": at_least(0, "unset turns it off"),
    "torch_empty_cache_steps": at_least(1, "unset never empties the cache"),
    "ddp_timeout": above(0, "it is how many seconds a rank waits for the others"),
    "ddp_bucket_cap_mb": above(0, "it is the size of DDP's gradient buckets in MB"),
}
