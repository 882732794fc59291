"""The recipe: keys (config/keys.py), loading (config/load.py), validation (config/rules.py) and
their documentation (config/docs.py). Import from here: `from hftl.config import load_config`."""

from hftl.config.docs import README_END, README_START, cli_help, key_table, sync_readme
from hftl.config.keys import (
                              ARG_CLASSES,
                              STRATEGIES,
                              DataArgs,
                              ModelArgs,
                              RunConfig,
                              TransferArgs,
                              all_keys,
                              choices,
                              redact,
)
from hftl.config.load import load_config, override_keys, override_values, read_recipe, split_tokens, write_resolved
from hftl.config.rules import validate

__all__ = [
    "ARG_CLASSES", "README_END", "README_START", "STRATEGIES", "DataArgs", "ModelArgs", "RunConfig", "TransferArgs",
    "all_keys", "choices", "cli_help", "key_table", "load_config", "override_keys", "override_values", "read_recipe",
    "redact", "split_tokens", "sync_readme", "validate", "write_resolved",
]
