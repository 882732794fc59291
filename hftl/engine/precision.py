"""Precision settings known to break a model family, as data: one table, read wherever a checkpoint loads.

A run in a precision its family cannot take does not fail: its loss turns NaN (or its gradients
overflow and every step is skipped) hours in. hftl says so before the first step, with the reason
and the setting to use instead; it warns rather than refuses, since a fix in a later transformers
release (or a short run to see for oneself) is the user's call.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Break:
    family: str  # as users know it
    reason: str  # what goes wrong, and where it was reported
    instead: str  # the setting to use


# (model_type, precision) -> what breaks. Precision is the TrainingArguments flag that selects it.
KNOWN_BREAKS = {
    ("deberta-v2", "fp16"): Break(
        "DeBERTa-v2/v3 (and mDeBERTa-v3)",
        "its disentangled attention adds content-to-position and position-to-content scores whose range "
        "overflows fp16, and losses turn NaN or fp16 loss scaling skips step after step (widely reported, e.g. "
        "microsoft/DeBERTa#77; transformers#24116 moved a scaling to avoid one overflow)",
        "`--fp16 false --bf16 true` on an Ampere or newer GPU (bf16 has fp32's range), else fp32 (`--fp16 false`)",
    ),
}


def precisions(fp16: bool, bf16: bool) -> list[str]:
    """The reduced precisions a run asks for."""
    return [name for name, on in (("fp16", fp16), ("bf16", bf16)) if on]


def warnings_for(model_type: str, fp16: bool, bf16: bool) -> list[str]:
    """One sentence per known break of this family in the run's precision."""
    out = []
    for precision in precisions(fp16, bf16):
        known = KNOWN_BREAKS.get((model_type, precision))
        if known is not None:
            out.append(f"{known.family} in {precision} is known to break: {known.reason}. Use {known.instead}.")
    return out
