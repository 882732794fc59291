"""Loading a task's checkpoint and processor: one path for every task, and one error for every failure.

`model_source` resolves built-in names to their folders. `load` reads the config (with the label
set for classifiers: a new head of the right size, `ignore_mismatched_sizes` for a checkpoint
that has its own), the processor, and the weights, or builds the same architecture from its
config for `from_scratch`. `trust_remote_code` and `revision` come from the recipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hftl.data import builtin
from hftl.errors import HftlError, first_line

if TYPE_CHECKING:
    from hftl.config import RunConfig


def model_source(config: RunConfig) -> str:
    name = config.model.model_name_or_path
    return builtin.model_path(name) if builtin.is_builtin(name) else name


KINDS = {
    "text": "a text model (BERT, RoBERTa and their family)",
    "image": "an image model (ViT, DeiT, DINOv2 and their family)",
    "dual": "a dual encoder (CLIP, VisionTextDualEncoder)",
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
    try:
        model_config = AutoConfig.from_pretrained(source, **head, **common)
        check_kind(config, model_config, kind)
        processor = processor_class.from_pretrained(source, **common)
        if config.model.from_scratch:
            model = model_class.from_config(model_config, trust_remote_code=config.model.trust_remote_code, **attention)
        else:
            model = model_class.from_pretrained(source, config=model_config, ignore_mismatched_sizes=bool(head), **common,
                                                **attention)
    except (OSError, ValueError, KeyError) as err:
        raise HftlError(
            f"Could not load {what} `{config.model.model_name_or_path}`: {first_line(err)}. Check `model_name_or_path` "
            f"({expected})."
        ) from None
    return model, processor
