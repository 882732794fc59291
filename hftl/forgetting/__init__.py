"""Catastrophic forgetting: penalties (L2-SP, EWC), replay of source data, and the report that
measures it (a source evaluation before and after fine-tuning)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.config import RunConfig


def validate(config: RunConfig) -> None:
    """The recipe rules of the forgetting features (EWC, replay) across keys, checked with the rest of the recipe
    (each key's own range is declared with the key, config/keys.py)."""
    t = config.transfer
    if t.ewc and not t.ewc_data:
        raise HftlError(
            "ewc needs a dataset to estimate the Fisher on: set `ewc_data` to data like the model's pre-training "
            "(a Hub dataset, a local file or builtin:NAME; its text column must match `text_column`)."
        )
    if t.ewc and t.strategy == "feature_extraction":
        raise HftlError("ewc protects trainable backbone weights; with feature_extraction none train. Drop ewc or pick "
                        "another strategy.")
    if t.replay_data and t.strategy == "feature_extraction":
        raise HftlError("replay_data keeps a trainable backbone from forgetting; with feature_extraction nothing in it "
                        "trains. Drop replay_data or pick another strategy.")
