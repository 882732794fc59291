"""The task registry: recipe `task:` names map to task classes here, never to import paths in YAML.

The interface every task implements is `tasks.base.Task` (with its `Capabilities` and the `Loaded`
bundle that `build_model` returns). Adding a task is one module with a `Task` subclass and one
line below.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from typing import TYPE_CHECKING

from hftl.errors import HftlError

if TYPE_CHECKING:
    from hftl.tasks.base import Task

TASKS = {  # name -> "module:class", imported on first use (a task's dependencies load only when it runs)
    "text-classification": "hftl.tasks.text_classification:TextClassification",
    "image-classification": "hftl.tasks.image_classification:ImageClassification",
    "clip": "hftl.tasks.clip:Clip",
    "siglip": "hftl.tasks.siglip:Siglip",
}


@functools.lru_cache(maxsize=None)
def get_task(name: str) -> Task:
    if name not in TASKS:
        near = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f" Did you mean `{near[0]}`?" if near else ""
        raise HftlError(f"Unknown task `{name}`.{hint} Tasks: {', '.join(TASKS)}.")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
