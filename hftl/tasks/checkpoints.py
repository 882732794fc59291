"""Loading a task's checkpoint and processor: one path for every task, and one error for every failure.

`model_source` resolves built-in names to their folders. `load` reads the config (with the label
set for classifiers: a new head of the right size, `ignore_mismatched_sizes` for a checkpoint
that has its own), the processor, and the weights, or builds the same architecture from its
config for `from_scratch`. `trust_remote_code` and `revision` come from the recipe.

transformers logs a table (its "LOAD REPORT") after every load whose keys differ from the checkpoint's.
For hftl that is the normal case (a new head, a pre-training head left out), so `load` says it in one
line of its own, naming what is new and what was left out; when the load fails, transformers' table is
printed as it was, since it then explains the error.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from hftl.data import builtin
from hftl.errors import HftlError, first_line

if TYPE_CHECKING:
    from hftl.config import RunConfig


def model_source(config: RunConfig) -> str:
    name = config.model.model_name_or_path
    return builtin.model_path(name) if builtin.is_builtin(name) else name


def load(config: RunConfig, model_class, processor_class, labels=None, what: str = "model", expected: str = ""):
    """(model, processor) from the recipe's checkpoint; `labels` (tasks.classification.Labels) sizes a new head."""
    from transformers import AutoConfig

    source = model_source(config)
    common = {"revision": config.model.revision, "trust_remote_code": config.model.trust_remote_code}
    head = {}
    if labels is not None:
        head = dict(num_labels=len(labels.names), id2label=dict(enumerate(labels.names)),
                    label2id={n: i for i, n in enumerate(labels.names)}, problem_type=labels.problem_type)
    attention = {"attn_implementation": config.model.attn_implementation} if config.model.attn_implementation else {}
    try:
        model_config = AutoConfig.from_pretrained(source, **head, **common)
        processor = processor_class.from_pretrained(source, **common)
        if config.model.from_scratch:
            model = model_class.from_config(model_config, trust_remote_code=config.model.trust_remote_code, **attention)
        else:
            with _held_load_report():
                model, info = model_class.from_pretrained(source, config=model_config, ignore_mismatched_sizes=bool(head),
                                                          output_loading_info=True, **common, **attention)
            if (summary := loading_summary(info)) and config.training.process_index == 0:
                print(f"hftl: {summary}")
    except (OSError, ValueError, KeyError) as err:
        raise HftlError(
            f"Could not load {what} `{config.model.model_name_or_path}`: {first_line(err)}. Check `model_name_or_path` "
            f"({expected})."
        ) from None
    return model, processor


SHOWN = 6  # modules named per kind; a load where most of the model is new says how much more


def _modules(keys) -> str:
    """`classifier (2 tensors), pooler.dense (2 tensors)`: parameter names grouped by their module."""
    counts: dict[str, int] = {}
    for key in sorted(keys):
        module = key.rsplit(".", 1)[0] if "." in key else key
        counts[module] = counts.get(module, 0) + 1
    shown = [f"{m} ({n} tensor{'s' if n > 1 else ''})" for m, n in counts.items()]
    more = f" and {len(shown) - SHOWN} more modules ({sum(counts.values())} tensors in all)" if len(shown) > SHOWN else ""
    return ", ".join(shown[:SHOWN]) + more


def loading_summary(info: dict) -> str:
    """One line for what a load changed: weights new to the task model, replaced (other shape), left out."""
    mismatched = {k[0] for k in info.get("mismatched_keys", ())}
    missing = set(info.get("missing_keys", ())) - mismatched
    parts = []
    if missing:
        parts.append(f"initialised at random (not in the checkpoint): {_modules(missing)}")
    if mismatched:
        parts.append(f"replaced by new weights (the checkpoint's have another shape): {_modules(mismatched)}")
    if info.get("unexpected_keys"):
        parts.append(f"checkpoint weights this model does not use: {_modules(info['unexpected_keys'])}")
    return "; ".join(parts) + "." if parts else ""


@contextlib.contextmanager
def _held_load_report():
    """Hold back transformers' load-report warning (loading_summary says it in one line); print it after all if
    the load fails, because then it explains the error."""
    logger = logging.getLogger("transformers.modeling_utils")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            held.append(record)
            return False
        return True

    logger.addFilter(hold)
    try:
        yield
    except BaseException:
        logger.removeFilter(hold)
        for record in held:
            logger.handle(record)
        raise
    finally:
        logger.removeFilter(hold)
