"""Measurements decide, the guide's rules are priors.

The guide (guide.py) turns data size, domain and complexity into a depth. Three measurements can
show that depth to be wrong for this data, and each one that does changes the advice and says so:

- the head's own input is weaker than the mean of tokens (the first token, which BERT's and ViT's
  classification heads read): frozen features with that head reach the first token's figure, not
  the mean's, so a frozen backbone is not what the probe promises. Training every group lets the
  first token learn what the mean holds (50 BBC articles: `full` 0.939 against 0.808 frozen);
- random weights of the same architecture probe nearly as well as the pre-trained ones: what the
  frozen features carry is the task's ease, not pre-training, so freezing keeps little of value;
- the classical baseline (baseline.py) scores as well as the probe: frozen features carry the task
  no better than surface features, so only training the encoder can be expected to beat it.

Each of these makes the depth every backbone group (`full`). Plain values in, no command or task.
"""

from __future__ import annotations

from hftl.advice import baseline

PRETRAINING_GAP = 0.15  # lift pre-training must add over random weights before frozen features are worth keeping
HEAD_TOKEN_GAP = 0.1  # lift the head's own input may lose against the mean of tokens before a frozen head is wrong


def head_rule(m, depth: int, groups: int) -> tuple[int, str | None]:
    """A frozen head that reads a weak first token: train everything."""
    first = m.probe_first
    if first is None or m.head_reads != "first" or m.probe.lift - first.lift <= HEAD_TOKEN_GAP or depth >= groups:
        return depth, None
    if depth > 0:
        return depth, None  # trained top groups can move the mean's information into the first token
    return groups, (f"measured: the classification head reads the first token, which probes at {first.score:.3f} (lift "
                    f"{first.lift:.2f}) against {m.probe.score:.3f} (lift {m.probe.lift:.2f}) for the mean of tokens; "
                    "frozen features with this head would reach the first token's figure, so every group trains "
                    "(full, at a small lr) to reach the mean's: changed by the first-token probe")


def random_rule(m, depth: int, groups: int) -> tuple[int, str | None]:
    """Pre-training adds little to frozen features: do not keep them frozen."""
    rand = m.probe_random
    if rand is None or m.probe.lift - rand.lift >= PRETRAINING_GAP or depth >= groups:
        return depth, None
    return groups, (f"measured: random weights of the same architecture probe at {rand.score:.3f} (lift {rand.lift:.2f}) "
                    f"against {m.probe.score:.3f} (lift {m.probe.lift:.2f}) pre-trained: pre-training adds only "
                    f"{m.probe.lift - rand.lift:+.2f} (< {PRETRAINING_GAP}) to frozen features, so freezing keeps little of "
                    "value and every group trains (full): changed by the random-weights probe")


def baseline_rule(m, depth: int, groups: int) -> tuple[int, str | None]:
    """Surface features do as well as frozen ones: only a trained encoder can win."""
    if m.baseline is None:
        return depth, None
    wins, noise = baseline.verdict(m.baseline, m.probe)
    if wins or depth >= groups:
        return depth, None
    return groups, (f"measured: the classical baseline ({m.baseline_kind}) scores {m.baseline.score:.3f} on the probe's "
                    f"folds against {m.probe.score:.3f} for frozen features (noise {noise:.3f}): frozen features carry the "
                    "task no better, so only training the encoder can beat it: every group trains (full): changed by the "
                    "baseline")


RULES = (head_rule, random_rule, baseline_rule)


def apply(m, depth: int, groups: int) -> tuple[int, list[str]]:
    """The depth after the measurements, and a line for each that changed it."""
    changed = []
    for rule in RULES:
        depth, line = rule(m, depth, groups)
        if line:
            changed.append(line)
    return depth, changed


def transfer_line(m) -> str | None:
    """Whether transfer is expected to beat the classical baseline, in one plain sentence; None without one."""
    if m.baseline is None:
        return None
    wins, noise = baseline.verdict(m.baseline, m.probe)
    figures = (f"the classical baseline ({m.baseline_kind}) scores {m.baseline.score:.3f} balanced accuracy on the same "
               f"folds, frozen features {m.probe.score:.3f} (noise {noise:.3f})")
    if wins:
        return f"transfer is expected to win: {figures}"
    return (f"transfer is NOT expected to win here: {figures}. Fine-tuning may still pass the baseline; check it on "
            "validation (`hftl advise --verify`) before spending GPU hours, and keep the baseline if it does not")
