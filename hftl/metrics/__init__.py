"""Metrics through `evaluate`, with the modules bundled so they load offline.

The Hub copy is preferred when the Hub is reachable (it is the reference implementation);
offline (HF_HUB_OFFLINE or HF_EVALUATE_OFFLINE set, or the Hub unreachable) the bundled module
of the same name and interface is loaded from this folder.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import evaluate

BUNDLED = Path(__file__).parent


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))


@functools.lru_cache(maxsize=None)
def load(name: str) -> evaluate.EvaluationModule:
    if not _offline():
        try:
            return evaluate.load(name)
        except Exception:  # unreachable Hub, proxy, rate limit: the bundled copy computes the same thing
            pass
    return evaluate.load(str(BUNDLED / name))
