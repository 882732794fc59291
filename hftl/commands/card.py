"""The model card (README.md in output_dir): what was trained from what, how, and how well.

It never holds a token: the reproduce command and the config pass through `redact`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from hftl.commands.outline import Run
from hftl.config import RunConfig, split_tokens
from hftl.data import builtin
from hftl.engine.plan import markdown

STRATEGY_TEXT = {
    "feature_extraction": "feature extraction: the pre-trained backbone is frozen and only the new head trains",
    "partial": "partial fine-tuning: the top {n} backbone groups and the head train; the rest is frozen",
    "full": "full fine-tuning: every layer trains, with lower learning rates toward the input",
    "lora": "LoRA: low-rank adapters in every block's attention projections train, with the head; the backbone is frozen",
}


def reproduce_command(recipe: str, overrides: list[str]) -> str:
    """`hftl train RECIPE --k v ...` with the value of any token-like key replaced."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    launcher = ["accelerate", "launch", "--num_processes", str(world), "-m"] if world > 1 else []
    kept, tokens = split_tokens(overrides)
    words = [*launcher, "hftl", "train", recipe, *kept, *(f"--{key}=<redacted>" for key in tokens)]
    return " ".join(shlex.quote(w) if "<redacted>" not in w else w for w in words)


def _reported(key: str) -> bool:
    """Quality metrics and the training time; throughput counters are noise in a card."""
    return key == "train_runtime" or not (key.endswith(("_runtime", "_per_second")) or key in ("total_flos", "epoch"))


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _source(name: str | None) -> str:
    if builtin.is_builtin(name):
        return f"`{name}`: {builtin.describe(name)}"
    return f"`{name}`"


# metric key (without split prefix) -> (Hub metric id, its config, a readable name)
METRICS = {
    "accuracy": ("accuracy", None, "Accuracy"), "f1_macro": ("f1", "macro", "Macro F1"),
    "f1_micro": ("f1", "micro", "Micro F1"), "subset_accuracy": ("accuracy", "subset", "Subset accuracy"),
}


def _eval_results(config: RunConfig, task_type: str, metrics: dict) -> list:
    """One EvalResult per held-out metric (test_*, eval_*, zero-shot after training), for the Hub's model-index."""
    from huggingface_hub import EvalResult

    data = config.data
    source = data.dataset or data.train_file or ""
    local = bool(source) and Path(source).exists()
    name = Path(source).name if local else source
    kind = (Path(source).suffix.lstrip(".") or "folder") if local else source
    found = []
    for key, value in sorted(metrics.items()):
        split, _, rest = key.partition("_")
        if split in ("test", "eval") and rest in METRICS:
            found.append(("test" if split == "test" else "validation", rest, "", value))
        elif key.startswith("zero_shot_") and key.endswith(("_accuracy", "_accuracy_after")):
            split = key.removeprefix("zero_shot_").split("_accuracy")[0]
            found.append((split, "accuracy", "Zero-shot ", value))
    out = []
    for split, metric, prefix, value in found:
        metric_id, metric_config, readable = METRICS[metric]
        out.append(EvalResult(task_type=task_type, dataset_type=kind, dataset_name=name or "unnamed",
                              dataset_config=data.dataset_config, dataset_split=split, metric_type=metric_id,
                              metric_value=float(value), metric_config=metric_config, metric_name=prefix + readable))
    return out


def _license(config: RunConfig) -> str | None:
    """The recipe's `license`, else the base model's when hftl knows it (built-in table, a local card); never invented."""
    if config.model.license:
        return config.model.license
    name = config.model.model_name_or_path
    if builtin.is_builtin(name):
        return builtin.license_of(name)
    readme = Path(name, "README.md")
    if readme.is_file():
        from huggingface_hub import ModelCard

        try:
            return ModelCard.load(readme).data.license
        except Exception:  # a card hftl cannot parse gives no license, not an invented one
            return None
    return None


def _metadata(config: RunConfig, task_type: str, metrics: dict) -> str:
    """The card's YAML header, written by huggingface_hub's own ModelCardData (model-index included)."""
    from huggingface_hub import ModelCardData

    name = config.model.model_name_or_path
    base = builtin.hub_id(name) if builtin.is_builtin(name) else (None if Path(name).exists() else name)
    dataset = config.data.dataset
    results = _eval_results(config, task_type, metrics)
    data = ModelCardData(
        library_name="transformers", pipeline_tag=task_type, tags=["hftl", "transfer-learning", config.transfer.strategy],
        base_model=base if base and not config.model.from_scratch else None, license=_license(config),
        datasets=[dataset] if dataset and not builtin.is_builtin(dataset) and not Path(dataset).exists() else None,
        metrics=sorted({r.metric_type for r in results}) or None,
        model_name=Path(config.training.output_dir).name if results else None, eval_results=results or None,
    )
    return data.to_yaml()


def _pictures(run: Run) -> str:
    from hftl.commands import outputs

    if not run.pictures and run.report is None:
        return ""
    lines = ["## Pictures", ""]
    captions = {outputs.CURVES: "Training loss and validation metrics per step",
                outputs.CONFUSION: f"Confusion matrix on the {run.report_split} split",
                outputs.PER_LABEL_F1: f"F1 per label on the {run.report_split} split"}
    lines += [f"![{captions[p]}]({p})" for p in run.pictures if p in captions]
    if run.report is not None:
        lines += ["", f"Per class on the {run.report_split} split (also `{outputs.PER_CLASS}`):", "",
                  outputs.class_table(run.report["rows"])]
    return "\n".join(lines) + "\n"


def render(run: Run, metrics: dict) -> str:
    config, task, rows, labels = run.config, run.task, run.rows, run.labels.names
    strategy = STRATEGY_TEXT[config.transfer.strategy].format(n=config.transfer.unfrozen_groups)
    if config.model.from_scratch:
        strategy = "from scratch: random initialisation of the architecture, every layer trains (no transfer)"
    strategy = task.describe_strategy(config) or strategy
    pipeline_tag, command = task.pipeline_task, run.command
    data = config.data.dataset or config.data.train_file
    metric_lines = [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items()) if _reported(k)]
    front = _metadata(config, pipeline_tag, metrics).strip()
    return f"""---
{front}
---

# {Path(config.training.output_dir).name}

Fine-tuned with hftl (layer-wise learning rates and a freeze plan on the Hugging Face Trainer) for {pipeline_tag}.

- **Base model:** {_source(config.model.model_name_or_path)}
- **Data:** {_source(data)}; {task.describe_inputs(config)}, labels `{config.data.label_column}` ({len(labels)} classes: {", ".join(labels[:20])}{" ..." if len(labels) > 20 else ""})
- **Strategy:** {strategy}
- **Learning rates:** {task.describe_rates(config)}; {config.training.num_train_epochs:g} epochs, batch {config.training.per_device_train_batch_size} per device, seed {config.training.seed}

## Layer-group plan

{markdown(rows)}
## Results

| metric | value |
|---|---|
{chr(10).join(metric_lines) if metric_lines else "| (not evaluated) | |"}

{_pictures(run)}
## Reproduce

```bash
{command}
```

## Use

```python
from transformers import pipeline
classifier = pipeline("{pipeline_tag}", model="path/to/this/folder")
```
"""


def write(path: str | Path, text: str) -> None:
    Path(path, "README.md").write_text(text)
