"""Loading a task's checkpoint and processor: one path for every task, and one error for every failure.

`model_source` resolves built-in names to their folders. `load` reads the config (with the label
set for classifiers: a new head of the right size, `ignore_mismatched_sizes` for a checkpoint
that has its own; with the recipe's model options such as `classifier_pooling`), warns where the
run's precision is known to break the family (engine/precision.py), then the processor and the
weights, or builds the same architecture from its config for `from_scratch`. `trust_remote_code`
and `revision` come from the recipe.

transformers logs a table (its "LOAD REPORT") after every load whose keys differ from the checkpoint's.
For hftl that is the normal case (a new head, a pre-training head left out), so `load` says it in one
line of its own, naming what is new and what was left out; when the load fails, transformers' table is
printed as it was, since it then explains the error.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from hftl.data import builtin
from hftl.engine import precision
from hftl.errors import HftlError, first_line

if TYPE_CHECKING:
    from hftl.config import RunConfig

PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SAFE_INDEX = "model.safetensors.index.json"


def model_source(config: RunConfig) -> str:
    name = config.model.model_name_or_path
    return builtin.model_path(name) if builtin.is_builtin(name) else name


KINDS = {
    "text": "a text model (BERT, RoBERTa, DeBERTa, ModernBERT and their family)",
    "image": "an image model (ViT, DeiT, DINOv2, ResNet, ConvNeXt, EfficientNet and their family)",
    "dual": "a dual encoder (CLIP, VisionTextDualEncoder, SigLIP)",
}


def kinds_of(model_config) -> set[str]:
    """What a checkpoint's config is (`text`, `image`, `dual`; a few are two); empty where hftl cannot tell."""
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    found = set()
    if getattr(model_config, "text_config", None) is not None and getattr(model_config, "vision_config", None) is not None:
        found.add("dual")
    if type(model_config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        found.add("image")
    if type(model_config) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        found.add("text")
    return found


def check_kind(config: RunConfig, model_config, kind: str) -> None:
    """A checkpoint of another kind than the task's is named with the task it fits, before its processor
    loader fails on it (a tokenizer asked of an image model, an image processor of a text model)."""
    found = kinds_of(model_config)
    if not kind or not found or kind in found:
        return
    from hftl.tasks import TASKS, get_task

    fitting = [name for name in TASKS if get_task(name).model_kind in found]
    architecture = (getattr(model_config, "architectures", None) or [type(model_config).__name__])[0]
    raise HftlError(
        f"`{config.model.model_name_or_path}` is a {architecture} (model type `{model_config.model_type}`), "
        f"{KINDS[sorted(found)[0]]}, but task {config.transfer.task} needs {KINDS[kind]}. Use task "
        f"{' or '.join(fitting) or '(none fits)'} for this checkpoint, or give the task a checkpoint of its kind."
    )


def load(config: RunConfig, model_class, processor_class, labels=None, what: str = "model", expected: str = "",
         kind: str = ""):
    """(model, processor) from the recipe's checkpoint; `labels` (tasks.classification.Labels) sizes a new head;
    `kind` (KINDS) is what the task needs, checked before the processor loads."""
    from transformers import AutoConfig

    source = model_source(config)
    common = {"revision": config.model.revision, "trust_remote_code": config.model.trust_remote_code}
    head = {}
    if labels is not None:
        head = dict(num_labels=len(labels.names), id2label=dict(enumerate(labels.names)),
                    label2id={n: i for i, n in enumerate(labels.names)}, problem_type=labels.problem_type)
    attention = {"attn_implementation": config.model.attn_implementation} if config.model.attn_implementation else {}
    weights = {} if config.model.from_scratch else _weights_format(config, source)
    try:
        model_config = AutoConfig.from_pretrained(source, **head, **common)
        check_kind(config, model_config, kind)
        _set_config_keys(config, model_config)
        for warning in precision.warnings_for(model_config.model_type, config.training.fp16, config.training.bf16):
            print(f"hftl: warning: {warning}", flush=True)
        processor = processor_class.from_pretrained(source, **common)
        if config.model.from_scratch:
            model = model_class.from_config(model_config, trust_remote_code=config.model.trust_remote_code, **attention)
        else:
            with _held_load_report():
                model, info = model_class.from_pretrained(source, config=model_config, ignore_mismatched_sizes=bool(head),
                                                          output_loading_info=True, **common, **attention, **weights)
            if (summary := loading_summary(info)) and config.training.process_index == 0:
                print(f"hftl: {summary}")
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        hint = PICKLE_FIX if weights and "safetensors" in str(err) else ""
        raise HftlError(
            f"Could not load {what} `{config.model.model_name_or_path}`: {first_line(err)}. Check `model_name_or_path` "
            f"({expected}){hint}."
        ) from None
    return model, processor


PICKLE_FIX = ("; hftl loads safetensors weights only, since pickle weights (pytorch_model.bin) can run code when "
              "loaded: convert the checkpoint to safetensors (load it once where you trust it and `save_pretrained`), "
              "or set `allow_pickle: true` if you trust its source")


def _weights_format(config: RunConfig, source: str) -> dict:
    """safetensors only, unless `allow_pickle`: a local folder with only pickle weights is refused by name;
    for a Hub id, `use_safetensors=True` makes transformers refuse a repo without safetensors."""
    folder = Path(source)
    pickled = [n for n in PICKLE_FILES if (folder / n).is_file()]
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or (folder / SAFE_INDEX).is_file() or not pickled:
        return {} if config.model.allow_pickle else {"use_safetensors": True}
    if config.model.allow_pickle:
        print(f"hftl: loading pickle weights {pickled[0]} from {folder} (allow_pickle: true).")
        return {}
    raise HftlError(
        f"`{config.model.model_name_or_path}` has only pickle weights ({pickled[0]}) and no model.safetensors. A pickle "
        "can run code when loaded, so hftl refuses it by default. Convert it to safetensors (load it once where you "
        "trust it and `save_pretrained` the model), or set `allow_pickle: true` if you trust its source."
    )


# recipe key -> the model-config attribute it sets (the model's own option, never an hftl copy of it)
CONFIG_KEYS = {"classifier_pooling": "classifier_pooling"}


def _set_config_keys(config: RunConfig, model_config) -> None:
    """Recipe keys that are options of the model itself go into its config (saved with it, so a pipeline
    runs the same head); a checkpoint whose config lacks the option is refused, not silently ignored."""
    for key, attribute in CONFIG_KEYS.items():
        value = getattr(config.model, key)
        if value is None:
            continue
        if not hasattr(model_config, attribute):
            raise HftlError(
                f"`{key}` is an option of ModernBERT's classification head; `{config.model.model_name_or_path}` "
                f"(model_type `{model_config.model_type}`) has no such option in its config. Drop `{key}`."
            )
        setattr(model_config, attribute, value)


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
