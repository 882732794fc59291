"""The decision guide of ../shared/MISSION.md as rules over measurements.

Under 100 labelled examples, frozen features and a simple classifier; 100 to 10k, fine-tune the
top layers; over 10k, fine-tune everything; a different domain unfreezes more; a complex task
trains more of the network. The answer is a depth: how many backbone layer groups train. Inside
the 100-10k band the depth grows with the data on a log scale, from the top group at 100 examples
to all but the embeddings at 10k, so "the top layers" becomes a number a recipe can use.
These rules are priors: where a measurement contradicts them (measured.py), the measurement
wins and the advice says so; budget.py sizes the training. `hftl advise` (commands/advise.py)
measures the inputs and writes the outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hftl.advice import baseline, budget, measured, probe, resolution

FEW, MANY = 100, 10_000  # the guide's thresholds on labelled training examples
CLOSE_LIFT, FAR_LIFT = 0.5, 0.25  # probe lift (0 chance, 1 perfect) above which features fit, below which they do not
FRAGMENTED = 2.0  # sub-words per word; English text under an English WordPiece/BPE vocabulary is about 1.1-1.4
UNKNOWN = 0.02  # share of unknown tokens
MLM_FAR = 0.2  # masked-token accuracy of the checkpoint's own MLM head; about 0.5-0.7 on text like its corpus
MANY_CLASSES = 20  # label spaces past this count as complex
MIN_HEAD_STEPS = budget.MIN_HEAD_STEPS
HEAD_TOKEN_GAP = measured.HEAD_TOKEN_GAP  # lift lost when the head reads the first token instead of the mean
SMALL_MODEL = budget.SMALL_MODEL


@dataclass
class Measurements:
    model: str
    dataset: str
    examples: int  # the training split: what the model learns from
    per_class: dict[str, int]
    validation: int
    test: int
    multi_label: bool
    pairs: bool
    probe: probe.Probe  # pre-trained features, mean of tokens
    backbone_groups: int
    parameters: int
    probe_first: probe.Probe | None = None  # pre-trained features, the first token (what a classification head reads)
    probe_random: probe.Probe | None = None  # the same architecture with random weights, mean of tokens
    tokenizer: dict | None = None
    mlm: dict | None = None
    head_reads: str = "first"  # what the task's head reads of the last block: `first` token, or `all` tokens pooled
    baseline: probe.Probe | None = None  # the classical baseline on the probe's folds (baseline.py)
    baseline_kind: str = ""
    resolution: list[dict] | None = None  # images: the probe at several input sizes (resolution.py)

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
    changed_by: list[str] = field(default_factory=list)  # measurements that overrode the guide's rules (measured.py)
    warmup_steps: float = 0.0
    image_size: int | None = None  # images: the input size with the best lift for its cost
    transfer: str | None = None  # whether transfer is expected to beat the classical baseline, in words
    transfer_wins: bool | None = None  # the same as a value; None without a baseline
    reasons: dict[str, str] = field(default_factory=dict)  # why each advised value, for the recipe's comments


def domain(m: Measurements) -> tuple[str, list[str]]:
    """close | moderate | far, and the measurements that decided it."""
    lift = m.probe.lift
    why = [(f"a linear probe on frozen features scores {m.probe.score:.3f} balanced accuracy ({m.probe.folds}-fold, "
            f"{m.probe.examples:,} examples; chance {m.probe.chance:.3f}): lift {lift:.2f}")]
    if m.probe_random is not None:
        why.append(f"the same architecture with random weights: {m.probe_random.score:.3f} (lift "
                   f"{m.probe_random.lift:.2f}), so pre-training adds {lift - m.probe_random.lift:+.2f}")
    verdict = "close" if lift >= CLOSE_LIFT else "far" if lift < FAR_LIFT else "moderate"
    t = m.tokenizer
    if t and t["subwords_per_word"] is not None:
        fragmented = t["subwords_per_word"] >= FRAGMENTED or t["unknown_rate"] >= UNKNOWN
        why.append(f"the tokenizer splits a word into {t['subwords_per_word']:.2f} sub-words on average, "
                   f"{t['unknown_rate']:.1%} unknown" + (" (its vocabulary was built on other text)" if fragmented else ""))
        verdict = "far" if fragmented else verdict
    elif t:
        why.append(f"text without spaces between words: sub-words per word does not apply; {t['unknown_rate']:.1%} unknown")
        verdict = "far" if t["unknown_rate"] >= UNKNOWN else verdict
    if m.mlm:
        far_text = m.mlm["accuracy"] < MLM_FAR
        why.append(f"the checkpoint's MLM head recovers {m.mlm['accuracy']:.1%} of masked tokens (loss "
                   f"{m.mlm['loss']:.2f})" + (" (text unlike its pre-training corpus)" if far_text else ""))
        verdict = "far" if far_text else verdict
    elif m.tokenizer is not None:
        why.append("no masked-LM head ships with the checkpoint: MLM loss n/a")
    return verdict, why


def _depth_from_data(n: int, groups: int) -> tuple[int, str]:
    if n < FEW:
        return 0, f"{n:,} training examples < {FEW}: frozen features and a simple classifier (feature extraction)"
    if n > MANY:
        return groups, f"{n:,} training examples > {MANY:,}: full fine-tuning"
    share = math.log10(n / FEW) / math.log10(MANY / FEW)  # 0 at 100, 1 at 10k
    depth = 1 + int(share * (groups - 2) + 0.5)
    return depth, (f"{n:,} training examples, in {FEW}-{MANY:,}: fine-tune the top layers; with this much data the top "
                   f"{depth} of {groups} backbone groups (1 at {FEW}, {groups - 1} at {MANY:,}, on a log scale)")


def _domain_rule(m: Measurements, depth: int, verdict: str) -> tuple[int, str]:
    signal = f"probe lift {m.probe.lift:.2f}"
    if m.tokenizer and m.tokenizer["subwords_per_word"] is not None:
        signal += f", {m.tokenizer['subwords_per_word']:.2f} sub-words per word"
    if m.mlm:
        signal += f", MLM accuracy {m.mlm['accuracy']:.0%}"
    if verdict == "far":  # the guide's "unfreeze more" holds under 100 examples too: frozen features do not fit
        more = max(1, math.ceil(m.backbone_groups / 3))
        return depth + more, f"a different domain ({signal}): unfreeze more, {more} more group(s)"
    if verdict == "moderate" and depth >= 1:
        return depth + 1, f"a moderate domain shift ({signal}): one more group"
    return depth, f"domain {verdict} to the pre-training as measured: frozen features fit the task ({signal}): no change"


def _complexity_rule(m: Measurements, depth: int) -> tuple[int, str]:
    kind = f"{m.classes} classes" + (", multi-label" if m.multi_label else "") + (", sentence pairs" if m.pairs else "")
    if not (m.multi_label or m.classes > MANY_CLASSES or m.pairs):
        return depth, f"a simple task ({kind}): no change"
    if depth >= 1:
        return depth + 1, f"a complex task ({kind}): one more group"
    return depth, (f"a complex task ({kind}), but with under {FEW} examples the features fit and more trained layers "
                   "would overfit: the backbone stays frozen")


def layer_decay(trained: int) -> float:
    """The bottom trained group learns at about half the top one's rate: 0.7 for 3 groups, 0.9 for 7, 0.95 for 13."""
    if trained <= 1:
        return 0.8
    decay = 0.5 ** (1 / (trained - 1))
    return round(min(0.95, max(0.7, round(decay * 20) / 20)), 2)


def decide(m: Measurements, config) -> Advice:
    """The strategy and its settings: the guide's rules, then the measurements that overrule them (measured.py),
    then the budget (budget.py); the recipe's own learning_rate, head_lr, warmup and larger epochs win."""
    depth, rule = _depth_from_data(m.examples, m.backbone_groups)
    verdict = domain(m)[0]
    depth, domain_rule = _domain_rule(m, depth, verdict)
    depth, complexity_rule = _complexity_rule(m, depth)
    depth, changed = measured.apply(m, min(depth, m.backbone_groups), m.backbone_groups)
    depth = min(depth, m.backbone_groups)
    strategy = "feature_extraction" if depth == 0 else "full" if depth >= m.backbone_groups else "partial"
    t = config.training
    given = {k: getattr(t, k) for k in ("num_train_epochs", "learning_rate", "warmup_steps") if k in config.user_keys}
    if config.transfer.head_lr is not None:
        given["head_lr"] = config.transfer.head_lr
    b = budget.plan(m.examples, strategy, t.per_device_train_batch_size, m.parameters, given)
    advice = Advice(strategy, depth if strategy == "partial" else config.transfer.unfrozen_groups,
                    layer_decay(depth), b.learning_rate, b.head_lr, b.num_train_epochs, verdict,
                    [rule, domain_rule, complexity_rule, *changed], changed_by=changed, warmup_steps=b.warmup_steps,
                    transfer=measured.transfer_line(m), reasons=b.reasons,
                    transfer_wins=baseline.verdict(m.baseline, m.probe)[0] if m.baseline else None)
    if m.resolution:
        advice.image_size = resolution.choose(m.resolution)["size"]
    advice.notes = notes(m, advice, given_lr="learning_rate" in config.user_keys,
                         epochs_raised=strategy == "feature_extraction" and advice.num_train_epochs != t.num_train_epochs)
    return advice


def notes(m: Measurements, a: Advice, given_lr: bool, epochs_raised: bool) -> list[str]:
    out = []
    if epochs_raised:
        out.append(f"{a.num_train_epochs} epochs: the head trains on cached features, so {MIN_HEAD_STEPS}+ steps cost "
                   "seconds")
    if not given_lr and a.strategy != "feature_extraction":
        out.append(f"learning_rate {a.learning_rate:g} for a {m.parameters / 1e6:.0f}M-parameter model (1e-4 under "
                   f"{SMALL_MODEL / 1e6:.0f}M, else 3e-5, in the 2e-5 to 5e-5 BERT range); a recipe's own value wins")
    if (m.probe_first is not None and m.head_reads == "first" and m.probe.lift - m.probe_first.lift > HEAD_TOKEN_GAP
            and not any("first-token probe" in line for line in a.changed_by)):
        out.append(f"the first token, which the classification head reads, probes at {m.probe_first.score:.3f} (lift "
                   f"{m.probe_first.lift:.2f}) against {m.probe.score:.3f} for the mean of tokens: this checkpoint's "
                   "features live in the mean, so frozen features with the standard head reach less than the probe")
    if not m.multi_label and m.balance < 0.2:
        out.append(f"classes are imbalanced (smallest/largest {m.balance:.2f}): judge runs by macro-F1 "
                   "(`metric_for_best_model: f1_macro`)")
    small = [name for name, n in m.per_class.items() if n < 10]
    if small:
        out.append(f"{len(small)} class(es) have under 10 training examples ({', '.join(small[:5])}): their scores "
                   "will be noisy")
    if a.strategy != "feature_extraction" and m.parameters > 300e6:
        out.append(f"{m.parameters / 1e6:.0f}M parameters: `strategy: lora` trains about 0.3% of them at close to the "
                   "same accuracy")
    if a.strategy == "partial" and m.examples < 1000:
        out.append("with this little data, early stopping on the validation loss guards against overfitting "
                   "(`early_stopping_patience`)")
    return out
