"""The model card (README.md in output_dir): what was trained from what, how, and how well.

It never holds a token: the reproduce command and the config pass through `redact`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

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


def _metadata(config: RunConfig, pipeline_tag: str, metrics: dict) -> dict:
    meta = {"library_name": "transformers", "pipeline_tag": pipeline_tag, "tags": ["hftl", "transfer-learning", config.transfer.strategy]}
    name = config.model.model_name_or_path
    base = builtin.hub_id(name) if builtin.is_builtin(name) else (None if Path(name).exists() else name)
    if base and not config.model.from_scratch:
        meta["base_model"] = base
    dataset = config.data.dataset
    if dataset and not builtin.is_builtin(dataset) and not Path(dataset).exists():
        meta["datasets"] = [dataset]
    return meta


def render(run: Run, metrics: dict) -> str:
    config, task, rows, labels = run.config, run.task, run.rows, run.labels.names
    strategy = STRATEGY_TEXT[config.transfer.strategy].format(n=config.transfer.unfrozen_groups)
    if config.model.from_scratch:
        strategy = "from scratch: random initialisation of the architecture, every layer trains (no transfer)"
    strategy = task.describe_strategy(config) or strategy
    pipeline_tag, command = task.pipeline_task, run.command
    data = config.data.dataset or config.data.train_file
    metric_lines = [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items()) if _reported(k)]
    front = yaml.safe_dump(_metadata(config, pipeline_tag, metrics), sort_keys=False).strip()
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
