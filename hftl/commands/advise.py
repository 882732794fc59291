"""`hftl advise`: measure what the decision guide asks about, apply it (advice/guide.py), write a recipe.

Nothing trains. The data and the checkpoint load as `hftl train` would load them; probe.py
measures the frozen features, the tokenizer and the MLM head on a stratified sample; the report
(terminal, advice.md, advice.json) shows every number and the rule it fed, and recipe.yaml is the
user's recipe with the advised keys filled in, ready for `hftl train`.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import yaml
from transformers import set_seed

from hftl.advice import probe, resolution
from hftl.advice.guide import Advice, Measurements, decide, domain
from hftl.commands import advise_probes
from hftl.commands import verify as verify_trials
from hftl.config import RunConfig, override_keys, read_recipe
from hftl.engine.layers import layer_groups
from hftl.errors import HftlError
from hftl.tasks import get_task


def measure(config: RunConfig, samples: int) -> Measurements:
    """Everything the guide asks about, from the data and the frozen checkpoint."""
    task = get_task(config.transfer.task)
    if not task.capabilities.compare:
        from hftl.tasks import TASKS

        covered = [name for name in TASKS if get_task(name).capabilities.compare]
        raise HftlError(
            f"hftl advise covers {' and '.join(covered)}; task `{config.transfer.task}` is not one of them. For CLIP, "
            "`clip_mode: zero_shot` measures how far the pre-trained model already gets."
        )
    if config.model.from_scratch:
        raise HftlError("hftl advise measures a pre-trained checkpoint: drop `from_scratch`.")
    raw, labels = task.load_data(config)
    per_class = _class_counts(raw["train"]["labels"], labels)
    probe.check_probe_size(per_class, labels.multi_label)
    loaded = task.build_model(config, labels)
    model, processor = loaded.model, loaded.processor
    sample = probe.stratified_sample(raw["train"], samples, config.data.split_seed, labels.multi_label)
    pretrained, first, random_weights = _probes(config, task, loaded, sample)
    m = Measurements(
        model=config.model.model_name_or_path, dataset=config.data.dataset or config.data.train_file or "",
        examples=len(raw["train"]), per_class=per_class, validation=len(raw.get("validation", [])),
        test=len(raw["test"]) if "test" in raw else 0, multi_label=labels.multi_label,
        pairs=bool(config.data.text_pair_column), probe=pretrained,
        backbone_groups=sum(1 for g in layer_groups(model) if not g.is_head),
        parameters=sum(p.numel() for p in model.parameters()), probe_first=first, probe_random=random_weights,
        head_reads=task.cache_tokens(model),
    )
    images = loaded.preprocess is not None  # image inputs: pixels for the baseline, and an input size to choose
    m.baseline, m.baseline_kind, seconds = advise_probes.classical(config, sample, labels.multi_label, images)
    print(f"hftl: classical baseline {m.baseline.score:.3f} ({seconds:.1f} s)")
    if images:
        m.resolution = advise_probes.sizes_of(config, task, loaded, sample) or None
    if task.capabilities.text_embeddings:
        texts = [t or "" for t in sample[config.data.text_column]]
        m.tokenizer = probe.tokenizer_stats(processor, texts)
        scored = probe.masked_lm(task.model_source(config), config.model.revision, config.model.trust_remote_code, processor,
                                 texts[:256], config.data.max_length, config.training.device)
        m.mlm = {"loss": scored[0], "accuracy": scored[1]} if scored else None
    return m


def _probes(config: RunConfig, task, loaded, sample):
    """Linear probes on the sample: pre-trained mean of tokens, pre-trained first token, random weights' mean."""
    labels = loaded.labels
    targets = np.asarray(sample["labels"], dtype=np.float32 if labels.multi_label else np.int64)

    def fit(x):
        return probe.linear_probe(x, targets, labels.multi_label, len(labels.names), seed=config.training.seed)

    batch = config.training.per_device_eval_batch_size
    print(f"hftl: probing frozen features of {len(sample):,} training examples, pre-trained and random ...")
    mean, first = probe.features(config, task, loaded, sample, batch)
    random_config = copy.deepcopy(config)
    random_config.model.from_scratch = True
    set_seed(config.training.seed)
    random_weights = task.build_model(random_config, labels)
    return fit(mean), fit(first), fit(probe.features(config, task, random_weights, sample, batch)[0])


def _class_counts(column, labels) -> dict[str, int]:
    if labels.multi_label:
        totals = np.asarray(column).sum(0)
        return {name: int(totals[i]) for i, name in enumerate(labels.names) if totals[i]}
    counts = Counter(column)
    return {name: counts.get(i, 0) for i, name in enumerate(labels.names) if counts.get(i, 0)}


def report(m: Measurements, a: Advice, recipe_path: Path | None = None) -> str:
    counts = sorted(m.per_class.values())
    lines = [
        f"# hftl advise: {m.model} on {m.dataset}",
        "",
        "## Measured",
        f"- labelled data: {m.examples:,} training examples ({m.validation:,} validation, {m.test:,} test); "
        f"{m.classes} {'labels (multi-label)' if m.multi_label else 'classes'}, {counts[0]:,} to {counts[-1]:,} "
        f"examples each (balance {m.balance:.2f})",
        f"- domain: {a.domain}",
        *[f"  - {line}" for line in domain(m)[1]],
        f"- model: {m.parameters / 1e6:.1f}M parameters, {m.backbone_groups} backbone layer groups",
        *([f"- classical baseline: {m.baseline_kind}: {m.baseline.score:.3f} balanced accuracy on the probe's folds "
           f"(lift {m.baseline.lift:.2f}), frozen features {m.probe.score:.3f}"] if m.baseline else []),
        *(["- input size (the probe at each, same folds):", *[f"  - {line}" for line in resolution.lines(m.resolution)]]
          if m.resolution else []),
        "",
        "## Rules applied",
        *[f"{i}. {rule}" for i, rule in enumerate(a.rules, 1)],
        "",
        "## Recommendation",
        f"- strategy: **{a.strategy}**" + (f", the top {a.unfrozen_groups} of {m.backbone_groups} groups"
                                         if a.strategy == "partial" else ""),
        f"- layer_decay {a.layer_decay}, learning_rate {a.learning_rate:g}, head_lr {a.head_lr:g}, "
        f"num_train_epochs {a.num_train_epochs:g}, warmup_steps {a.warmup_steps:g}"
        + (f", image_size {a.image_size}" if a.image_size else ""),
        *[f"- changed by a measurement: {line.rsplit('changed by ', 1)[-1]} (rule {a.rules.index(line) + 1})"
          for line in a.changed_by],
        *([f"- **{a.transfer}**"] if a.transfer else []),
        *[f"- note: {n}" for n in a.notes],
    ]
    if recipe_path is not None:
        lines += ["", f"Recipe: `{recipe_path}`. Run it: `hftl train {recipe_path}`"]
    return "\n".join(lines) + "\n"


FILES = ("recipe.yaml", "advice.md", "advice.json")
ADVISED = ("strategy", "unfrozen_groups", "layer_decay", "learning_rate", "head_lr", "num_train_epochs", "warmup_steps",
           "image_size")
NOT_COPIED = {"overwrite_output_dir", "resume_from_checkpoint", "from_scratch"}


def recipe_text(config: RunConfig, order: list[str], m: Measurements, a: Advice, path: Path) -> str:
    """The user's keys as given (recipe order, then overrides), the advised keys after them with their reasons."""
    resolved = config.resolved()
    keys = [k for k in dict.fromkeys(["task", *order, "output_dir"])
            if k in resolved and k not in NOT_COPIED and k not in ADVISED]
    values = {k: resolved[k] for k in keys}
    values["task"] = config.transfer.task
    values["output_dir"] = str(path.parent / "model")  # the run lands beside its recipe and advice
    changed = "; changed by a measurement (advice.md)" if a.changed_by else ""
    reasons = {
        "strategy": a.rules[0].split(":")[0] + f"; domain {a.domain}" + changed,
        "unfrozen_groups": f"of {m.backbone_groups} backbone groups" if a.strategy == "partial" else "used by partial only",
        "layer_decay": "the bottom trained group learns at about half the top's rate",
        "image_size": "the cheapest probed input size within the probe's noise of the best lift (advice.md)",
        **a.reasons,
    }
    epochs = int(a.num_train_epochs) if float(a.num_train_epochs).is_integer() else a.num_train_epochs
    advised = {"strategy": a.strategy, "unfrozen_groups": a.unfrozen_groups, "layer_decay": a.layer_decay,
               "learning_rate": a.learning_rate, "head_lr": a.head_lr, "num_train_epochs": epochs,
               "warmup_steps": a.warmup_steps, **({"image_size": a.image_size} if a.image_size else {})}
    header = [f"# hftl train {path}", "#",
              f"# Written by `hftl advise` on {date.today().isoformat()}: {m.model} on {m.dataset}, "
              f"{m.examples:,} training examples. The report is beside this file (advice.md)."]
    if m.baseline is not None:
        expected = "expected" if a.transfer_wins else "NOT expected"
        header.append(f"# Classical baseline ({m.baseline_kind}): {m.baseline.score:.3f} balanced accuracy against "
                      f"{m.probe.score:.3f} for frozen features, cross-validated: transfer is {expected} to win.")
    body = yaml.safe_dump(values, sort_keys=False).rstrip("\n").splitlines()
    lines = [*header, *body, "", "# advised by the decision guide"]
    for key, value in advised.items():
        line = yaml.safe_dump({key: value}, default_flow_style=False).strip()
        lines.append(f"{line}  # {reasons[key]}" if reasons.get(key) else line)
    return "\n".join(lines) + "\n"


def default_out(config: RunConfig) -> Path:
    out = config.training.output_dir if "output_dir" in config.user_keys else "runs/advised"
    return Path(f"{str(out).rstrip('/')}-advice")


@dataclass
class Verify:
    """`--verify [--budget 10m] [--resume]`: short trials of the strongest candidates decide the recipe."""

    on: bool = False
    budget: str | None = None
    resume: bool = False


def run(config: RunConfig, recipe: str | None, overrides: list[str], out: str | None, samples: int, force: bool,
        verify: Verify | None = None) -> Advice:
    verify = verify or Verify()
    if (verify.budget or verify.resume) and not verify.on:
        raise HftlError("--budget and --resume belong to --verify: add `--verify`, or drop them.")
    seconds = verify_trials.parse_budget(verify.budget)
    folder = Path(out) if out else default_out(config)
    recipe_path = folder / "recipe.yaml"
    found = [name for name in FILES if (folder / name).exists()]
    if found and not (force or verify.resume):
        raise HftlError(
            f"`{folder}` already holds advice ({', '.join(found)}). Pass `--out` with another folder, or `--force` to "
            "replace it."
        )
    if samples < 2 * probe.MIN_PER_CLASS:
        raise HftlError(f"--probe_samples must be at least {2 * probe.MIN_PER_CLASS} (got {samples}).")
    m = measure(config, samples)
    a = decide(m, config)
    order = list(read_recipe(recipe)) if recipe else []
    order += override_keys(overrides)
    text = report(m, a, recipe_path)
    folder.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(recipe_text(config, order, m, a, recipe_path))
    (folder / "advice.md").write_text(text)
    record = {"measurements": {**asdict(m), "probe_lift": m.probe.lift, "balance": m.balance}, "advice": asdict(a)}
    (folder / "advice.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n" + text)
    if verify.on:
        def render(advice: Advice, path: Path) -> str:
            return recipe_text(config, order, m, advice, path)

        best = verify_trials.run(m, a, config, folder, render, seconds, verify.resume)
        print(f"hftl advise: `{best['strategy']}` won the trials; {recipe_path} holds it.")
    return a
