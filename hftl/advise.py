"""`hftl advise`: measure what the decision guide asks about, apply the guide, write a recipe.

The guide (../shared/MISSION.md): under 100 labelled examples, frozen features and a simple
classifier; 100 to 10k, fine-tune the top layers; over 10k, fine-tune everything; a different
domain unfreezes more; a complex task trains more of the network. Here each of those inputs is
measured, not asked (probe.py), and the answer is a depth: how many backbone layer groups train.
Inside the 100-10k band that depth grows with the data on a log scale, from the top group at 100
examples to all but the embeddings at 10k, so "the top layers" has a number a recipe can use.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import yaml

from hftl import probe
from hftl.config import RunConfig, read_recipe
from hftl.errors import HftlError
from hftl.layers import layer_groups
from hftl.tasks import get_task

FEW, MANY = 100, 10_000  # the guide's thresholds on labelled training examples
CLOSE_LIFT, FAR_LIFT = 0.5, 0.25  # probe lift (0 chance, 1 perfect) above which features fit, below which they do not
FRAGMENTED = 2.0  # sub-words per word; English text under an English WordPiece/BPE vocabulary is about 1.1-1.4
UNKNOWN = 0.02  # share of unknown tokens
MLM_FAR = 0.2  # masked-token accuracy of the checkpoint's own MLM head; about 0.5-0.7 on text like its corpus
MANY_CLASSES = 20  # label spaces past this count as complex
MIN_HEAD_STEPS = 100  # feature extraction trains a head on cached features: cheap, so it gets at least this many steps
SUPPORTED = ("text-classification", "image-classification")


@dataclass
class Measurements:
    model: str
    dataset: str
    examples: int
    per_class: dict[str, int]
    validation: int
    test: int
    multi_label: bool
    pairs: bool
    probe: probe.Probe
    backbone_groups: int
    parameters: int
    tokenizer: dict[str, float] | None = None
    mlm: dict[str, float] | None = None

    @property
    def classes(self) -> int:
        return len(self.per_class)

    @property
    def balance(self) -> float:
        """Smallest class over largest: 1 is balanced."""
        counts = list(self.per_class.values())
        return min(counts) / max(counts) if counts and max(counts) else 0.0


@dataclass
class Advice:
    strategy: str
    unfrozen_groups: int
    layer_decay: float
    learning_rate: float
    head_lr: float
    num_train_epochs: float | int
    domain: str  # close | moderate | far
    rules: list[str] = field(default_factory=list)  # the guide's rules as applied, with the measurements
    notes: list[str] = field(default_factory=list)  # what the strategy does not settle


def measure(config: RunConfig, samples: int) -> Measurements:
    """Everything the guide asks about, from the data and the frozen checkpoint."""
    if config.transfer.task not in SUPPORTED:
        raise HftlError(
            f"hftl advise covers {' and '.join(SUPPORTED)}; task `{config.transfer.task}` is not one of them. For CLIP, "
            "`clip_mode: zero_shot` measures how far the pre-trained model already gets."
        )
    if config.model.from_scratch:
        raise HftlError("hftl advise measures a pre-trained checkpoint: drop `from_scratch`.")
    task = get_task(config.transfer.task)
    raw, labels = task.load_data(config)
    per_class = _class_counts(raw["train"]["labels"], labels)
    probe.check_probe_size(per_class, labels.multi_label)
    model, processor = task.build_model(config, labels)
    groups = layer_groups(model)
    sample = probe.stratified_sample(raw["train"], samples, config.data.split_seed, labels.multi_label)
    print(f"hftl: probing frozen features of {len(sample):,} training examples ...")
    x = probe.features(config, task, model, processor, sample, config.training.per_device_eval_batch_size)
    targets = np.asarray(sample["labels"], dtype=np.float32 if labels.multi_label else np.int64)
    fit = probe.linear_probe(x, targets, labels.multi_label, len(labels.names), seed=config.training.seed)
    m = Measurements(
        model=config.model.model_name_or_path, dataset=config.data.dataset or config.data.train_file or "",
        examples=len(raw["train"]), per_class=per_class, validation=len(raw.get("validation", [])),
        test=len(raw["test"]) if "test" in raw else 0, multi_label=labels.multi_label,
        pairs=bool(config.data.text_pair_column), probe=fit,
        backbone_groups=sum(1 for g in groups if not g.is_head), parameters=sum(p.numel() for p in model.parameters()),
    )
    if config.transfer.task == "text-classification":
        texts = [t or "" for t in sample[config.data.text_column]]
        m.tokenizer = probe.tokenizer_stats(processor, texts)
        from hftl.tasks.checkpoints import model_source

        scored = probe.masked_lm(model_source(config), config.model.revision, processor, texts[:256],
                                 config.data.max_length, config.training.device)
        m.mlm = {"loss": scored[0], "accuracy": scored[1]} if scored else None
    return m


def _class_counts(column, labels) -> dict[str, int]:
    if labels.multi_label:
        totals = np.asarray(column).sum(0)
        return {name: int(totals[i]) for i, name in enumerate(labels.names)}
    counts = Counter(column)
    return {name: counts.get(i, 0) for i, name in enumerate(labels.names) if counts.get(i, 0)}


def domain(m: Measurements) -> tuple[str, list[str]]:
    """close | moderate | far, and the measurements that decided it."""
    lift = m.probe.lift
    why = [f"a linear probe on frozen features scores {m.probe.score:.3f} balanced accuracy ({m.probe.folds}-fold, "
           f"{m.probe.examples:,} examples; chance {m.probe.chance:.3f}): lift {lift:.2f}"]
    verdict = "close" if lift >= CLOSE_LIFT else "far" if lift < FAR_LIFT else "moderate"
    if m.tokenizer:
        t = m.tokenizer
        fragmented = t["subwords_per_word"] >= FRAGMENTED or t["unknown_rate"] >= UNKNOWN
        why.append(f"the tokenizer splits a word into {t['subwords_per_word']:.2f} sub-words on average, "
                   f"{t['unknown_rate']:.1%} unknown" + (" (its vocabulary was built on other text)" if fragmented else ""))
        if fragmented:
            verdict = "far"
    if m.mlm:
        far_text = m.mlm["accuracy"] < MLM_FAR
        why.append(f"the checkpoint's MLM head recovers {m.mlm['accuracy']:.1%} of masked tokens (loss "
                   f"{m.mlm['loss']:.2f})" + (" (text unlike its pre-training corpus)" if far_text else ""))
        if far_text:
            verdict = "far"
    return verdict, why


def _depth_from_data(n: int, groups: int) -> tuple[int, str]:
    if n < FEW:
        return 0, f"{n:,} labelled examples < {FEW}: frozen features and a simple classifier (feature extraction)"
    if n > MANY:
        return groups, f"{n:,} labelled examples > {MANY:,}: full fine-tuning"
    share = math.log10(n / FEW) / math.log10(MANY / FEW)  # 0 at 100, 1 at 10k
    depth = 1 + int(share * (groups - 2) + 0.5)
    return depth, (f"{n:,} labelled examples, in {FEW}-{MANY:,}: fine-tune the top layers; with this much data the top "
                   f"{depth} of {groups} backbone groups (1 at {FEW}, {groups - 1} at {MANY:,}, on a log scale)")


def _layer_decay(trained: int) -> float:
    """The bottom trained group learns at about half the top one's rate: 0.7 for 3 groups, 0.9 for 7, 0.95 for 13."""
    if trained <= 1:
        return 0.8
    decay = 0.5 ** (1 / (trained - 1))
    return round(min(0.95, max(0.7, round(decay * 20) / 20)), 2)


def decide(m: Measurements, config: RunConfig) -> Advice:
    groups = m.backbone_groups
    depth, rule = _depth_from_data(m.examples, groups)
    rules = [rule]
    verdict, why = domain(m)
    signal = f"probe lift {m.probe.lift:.2f}" + (f", {m.tokenizer['subwords_per_word']:.2f} sub-words per word"
                                                  if m.tokenizer else "")
    if verdict == "far":
        more = max(1, math.ceil(groups / 3))
        depth += more
        rules.append(f"a different domain ({signal}): unfreeze more, {more} more group(s)")
    elif verdict == "moderate" and depth >= 1:
        depth += 1
        rules.append(f"a moderate domain shift ({signal}): one more group")
    else:
        rules.append(f"domain {verdict} to the pre-training ({signal}): no change")
    complex_task = m.multi_label or m.classes > MANY_CLASSES or m.pairs
    kind = (f"{m.classes} classes" + (", multi-label" if m.multi_label else "") + (", sentence pairs" if m.pairs else ""))
    if complex_task and depth >= 1:
        depth += 1
        rules.append(f"a complex task ({kind}): one more group")
    elif complex_task:
        rules.append(f"a complex task ({kind}), but with under {FEW} examples more trained layers would overfit: "
                     "the backbone stays frozen")
    else:
        rules.append(f"a simple task ({kind}): no change")
    depth = min(depth, groups)
    strategy = "feature_extraction" if depth == 0 else "full" if depth >= groups else "partial"
    trained = {"feature_extraction": 0, "partial": depth, "full": groups}[strategy]
    user = config.user_keys
    t = config.training
    lr = t.learning_rate if "learning_rate" in user else (1e-4 if m.parameters < 60e6 else 3e-5)
    head_lr = config.transfer.head_lr if config.transfer.head_lr else 1e-3
    epochs = t.num_train_epochs
    notes = []
    if strategy == "feature_extraction":
        world = max(1, t.world_size)
        steps = math.ceil(m.examples / (t.per_device_train_batch_size * world))
        if epochs * steps < MIN_HEAD_STEPS:
            epochs = min(100, math.ceil(MIN_HEAD_STEPS / steps))
            notes.append(f"{int(epochs)} epochs: the head trains on cached features, so {MIN_HEAD_STEPS}+ steps cost "
                         "seconds")
    advice = Advice(strategy, depth if strategy == "partial" else config.transfer.unfrozen_groups,
                    _layer_decay(trained), lr, head_lr, epochs, verdict, rules, notes)
    _notes(m, advice)
    return advice


def _notes(m: Measurements, advice: Advice) -> None:
    if not m.multi_label and m.balance < 0.2:
        advice.notes.append(f"classes are imbalanced (smallest/largest {m.balance:.2f}): judge runs by macro-F1 "
                            "(`metric_for_best_model: f1_macro`)")
    small = [name for name, n in m.per_class.items() if n < 10]
    if small:
        advice.notes.append(f"{len(small)} class(es) have under 10 training examples ({', '.join(small[:5])}): their "
                            "scores will be noisy")
    if advice.strategy != "feature_extraction" and m.parameters > 300e6:
        advice.notes.append(f"{m.parameters / 1e6:.0f}M parameters: `strategy: lora` trains about 0.3% of them at "
                            "close to the same accuracy")
    if advice.strategy == "partial" and m.examples < 1000:
        advice.notes.append("with this little data, early stopping on the validation loss guards against "
                            "overfitting (`early_stopping_patience`)")


def report(m: Measurements, a: Advice, recipe_path: Path | None = None) -> str:
    counts = sorted(m.per_class.values())
    lines = [
        f"# hftl advise: {m.model} on {m.dataset}",
        "",
        "## Measured",
        f"- labelled data: {m.examples:,} training examples ({m.validation:,} validation, {m.test:,} test); "
        f"{m.classes} classes, {counts[0]:,} to {counts[-1]:,} examples each "
        f"(balance {m.balance:.2f}){', multi-label' if m.multi_label else ''}",
        f"- domain: {a.domain}",
        *[f"  - {line}" for line in domain(m)[1]],
        f"- model: {m.parameters / 1e6:.1f}M parameters, {m.backbone_groups} backbone layer groups",
        "",
        "## Rules applied",
        *[f"{i}. {rule}" for i, rule in enumerate(a.rules, 1)],
        "",
        "## Recommendation",
        f"- strategy: **{a.strategy}**" + (f", the top {a.unfrozen_groups} of {m.backbone_groups} groups"
                                         if a.strategy == "partial" else ""),
        f"- layer_decay {a.layer_decay}, learning_rate {a.learning_rate:g}, head_lr {a.head_lr:g}, "
        f"num_train_epochs {a.num_train_epochs:g}",
        *[f"- note: {n}" for n in a.notes],
    ]
    if recipe_path is not None:
        lines += ["", f"Recipe: `{recipe_path}`. Run it: `hftl train {recipe_path}`"]
    return "\n".join(lines) + "\n"


ADVISED = ("strategy", "unfrozen_groups", "layer_decay", "learning_rate", "head_lr", "num_train_epochs")
NOT_COPIED = {"overwrite_output_dir", "resume_from_checkpoint", "from_scratch"}


def recipe_text(config: RunConfig, order: list[str], m: Measurements, a: Advice, path: Path) -> str:
    """The user's keys as given (recipe order, then overrides), the advised keys after them with their reasons."""
    resolved = config.resolved()
    keys = [k for k in dict.fromkeys(["task", *order, "output_dir"]) if k in resolved and k not in NOT_COPIED and k not in ADVISED]
    values = {k: resolved[k] for k in keys}
    values["task"] = config.transfer.task
    values["output_dir"] = str(path.parent / "model")  # the run lands beside its recipe and advice
    reasons = {
        "strategy": a.rules[0].split(":")[0] + f"; domain {a.domain}",
        "unfrozen_groups": f"of {m.backbone_groups} backbone groups" if a.strategy == "partial" else "used by partial only",
        "layer_decay": "the bottom trained group learns at about half the top's rate",
        "learning_rate": "the top backbone group",
        "head_lr": "the new head starts from random: a normal lr",
        "num_train_epochs": "",
    }
    epochs = int(a.num_train_epochs) if float(a.num_train_epochs).is_integer() else a.num_train_epochs
    advised = {"strategy": a.strategy, "unfrozen_groups": a.unfrozen_groups, "layer_decay": a.layer_decay,
               "learning_rate": a.learning_rate, "head_lr": a.head_lr, "num_train_epochs": epochs}
    header = [f"# hftl train {path}", "#",
              f"# Written by `hftl advise` on {date.today().isoformat()}: {m.model} on {m.dataset}, "
              f"{m.examples:,} training examples. The report is beside this file (advice.md)."]
    body = yaml.safe_dump(values, sort_keys=False).rstrip("\n").splitlines()
    lines = [*header, *body, "", "# advised by the decision guide"]
    for key, value in advised.items():
        line = yaml.safe_dump({key: value}, default_flow_style=False).strip()
        lines.append(f"{line}  # {reasons[key]}" if reasons[key] else line)
    return "\n".join(lines) + "\n"


def default_out(config: RunConfig) -> Path:
    out = config.training.output_dir if "output_dir" in config.user_keys else "runs/advised"
    return Path(f"{str(out).rstrip('/')}-advice")


def run(config: RunConfig, recipe: str | None, overrides: list[str], out: str | None, samples: int, force: bool) -> Advice:
    folder = Path(out) if out else default_out(config)
    recipe_path = folder / "recipe.yaml"
    if recipe_path.exists() and not force:
        raise HftlError(
            f"`{folder}` already holds advice (recipe.yaml). Pass `--out` with another folder, or `--force` to replace it."
        )
    if samples < 2 * probe.MIN_PER_CLASS:
        raise HftlError(f"--probe_samples must be at least {2 * probe.MIN_PER_CLASS} (got {samples}).")
    m = measure(config, samples)
    a = decide(m, config)
    order = list(read_recipe(recipe)) if recipe else []
    order += [o[2:].split("=")[0].replace("-", "_") for o in overrides if o.startswith("--")]
    text = report(m, a, recipe_path)
    folder.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(recipe_text(config, order, m, a, recipe_path))
    (folder / "advice.md").write_text(text)
    record = {"measurements": {**asdict(m), "probe_lift": m.probe.lift, "balance": m.balance}, "advice": asdict(a)}
    (folder / "advice.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n" + text)
    return a
