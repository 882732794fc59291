"""The recipe: keys (config/keys.py), reading the YAML (config/recipe.py), loading (config/load.py),
validation (config/rules.py) and their documentation (config/docs.py). Import from here:
`from hftl.config import load_config`.

Names load on first use, so a command that fails on its recipe (a missing file, bad YAML, a value
out of range) reports it before torch and transformers are imported.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "hftl.config.docs": ("README_END", "README_START", "cli_help", "key_table", "sync_readme"),
    "hftl.config.keys": ("ARG_CLASSES", "STRATEGIES", "DataArgs", "ModelArgs", "RunConfig", "TransferArgs", "all_keys",
                         "arg_classes", "choices", "redact"),
    "hftl.config.load": ("load_config", "override_keys", "override_values", "split_tokens", "write_resolved"),
    "hftl.config.recipe": ("read_recipe",),
    "hftl.config.rules": ("validate",),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name in _MODULE:
        return getattr(importlib.import_module(_MODULE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
