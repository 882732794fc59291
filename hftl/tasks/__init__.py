"""The task registry: recipe `task:` names map to task modules here, never to import paths in YAML.

A task module provides: load_data(config) -> (DatasetDict, labels), build_model(config, labels)
-> (model, processor), encode(config, raw, processor), collator(processor),
compute_metrics_fn(labels), best_metric(labels), model_source(config) and PIPELINE_TASK.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from hftl.errors import HftlError

TASKS = {
    "text-classification": "hftl.tasks.text_classification",
    "image-classification": "hftl.tasks.image_classification",
    "clip": "hftl.tasks.clip",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        near = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean `{near[0]}`?" if near else ""
        raise HftlError(f"Unknown task `{name}`.{hint} Tasks: {', '.join(TASKS)}.")
    return importlib.import_module(TASKS[name])
