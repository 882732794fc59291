"""`hftl advise --verify [--budget 10m]`: the advice checked by short trials before a user spends GPU hours.

The two or three strongest candidates (the advised recipe; the other strategies, each with its own
budget from advice/budget.py; for images, the advised strategy at the runner-up input size) train
in turn, in this process, each stopped when its share of the time budget is spent, and are scored
on the validation split, never the test split. The best becomes `recipe.yaml`; the trials are a
table (verify.md, verify.csv) and a chart (verify.png, drawn by sweep.chart). verify.json records
each finished trial, written atomically (sweep's state writer): `--resume` keeps them and runs the rest.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from hftl.advice import budget
from hftl.commands import sweep
from hftl.errors import HftlError

STATE = "verify.json"
DEFAULT_BUDGET = 600.0  # seconds: 10 minutes
TRIAL_SETTINGS = ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                  "--early_stopping_patience", "0", "--push_to_hub", "false", "--overwrite_output_dir", "true",
                  "--report_to", "none"]  # one evaluation at the end, nothing saved mid-run, nothing pushed
COLUMNS = ("strategy", "status", "accuracy", "f1", "settings", "epochs", "stopped", "train_s", "wall_s", "error")


@dataclass
class Trial:
    name: str
    advice: object  # guide.Advice: the settings this trial trains with
    why: str


def parse_budget(text: str | None) -> float:
    """`10m`, `90s`, `1.5h` or plain seconds."""
    if text is None:
        return DEFAULT_BUDGET
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not found or float(found.group(1)) <= 0:
        raise HftlError(f"--budget takes a duration such as 10m, 90s or 1h (got `{text}`).")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


def _variant(m, a, config, strategy: str, name: str, why: str, image_size: int | None = None) -> Trial:
    from hftl.advice import guide

    groups = m.backbone_groups
    depth = {"feature_extraction": 0, "full": groups}.get(strategy, a.unfrozen_groups if a.strategy == "partial"
                                                          else max(1, groups // 2))
    given = {k: getattr(config.training, k) for k in ("num_train_epochs", "learning_rate", "warmup_steps")
             if k in config.user_keys}
    b = budget.plan(m.examples, strategy, config.training.per_device_train_batch_size, m.parameters, given)
    advice = dataclasses.replace(a, strategy=strategy, unfrozen_groups=depth if strategy == "partial" else a.unfrozen_groups,
                                 layer_decay=guide.layer_decay(depth), num_train_epochs=b.num_train_epochs,
                                 warmup_steps=b.warmup_steps, reasons={**a.reasons, **b.reasons},
                                 image_size=image_size or a.image_size)
    return Trial(name, advice, why)


def candidates(m, a, config) -> list[Trial]:
    """The advised recipe first, then the strategies it did not choose (fine-tuning ones first), and for images
    the advised strategy at the recipe's own input size (else the runner-up size): three in all."""
    trials = [Trial("advised", a, "the advice")]
    others = [s for s in ("full", "partial", "feature_extraction") if s != a.strategy]
    if m.resolution and len(m.resolution) > 1 and a.image_size:
        rest = sorted((r for r in m.resolution if r["size"] != a.image_size), key=lambda r: -r["lift"])
        own = config.data.image_size if config.data.image_size not in (None, a.image_size) else None
        size, why = (own, "the recipe's own input size") if own else (rest[0]["size"], "the runner-up input size")
        trials.append(_variant(m, a, config, a.strategy, f"{a.strategy}@{size}", why, size))
        others = others[:1]
    for strategy in others[: 3 - len(trials)]:
        trials.append(_variant(m, a, config, strategy, strategy, "a strategy the advice did not choose"))
    return trials


class Deadline(TrainerCallback):
    """Stops training once its share of the budget is spent. The clock runs from the first step: loading, the
    feature cache and the final evaluation come on top, so a cheap strategy is not cut short by its set-up."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.stopped_at = seconds, time.monotonic(), None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            control.should_training_stop = True
            self.stopped_at = state.epoch
        return control


def _fingerprint(texts: list[str]) -> str:
    """The trials' recipes without their comments (the date in the header changes; the settings must not)."""
    kept = ["\n".join(line.split("  #")[0] for line in t.splitlines() if not line.startswith("#")) for t in texts]
    return hashlib.sha256("\0".join(kept).encode()).hexdigest()[:16]


def _open(folder: Path, fingerprint: str, resume: bool) -> dict:
    state_file = folder / STATE
    if state_file.is_file() and resume:
        state = json.loads(state_file.read_text())
        if state.get("fingerprint") != fingerprint:
            raise HftlError(f"`{folder}` holds trials of other candidates (the data, the recipe or the advice changed): "
                            "resuming would compare unlike trials. Drop `--resume` (with `--force`), or use another `--out`.")
        return state
    return {"fingerprint": fingerprint, "results": {}}


def _settings(a) -> str:
    depth = f" top {a.unfrozen_groups}" if a.strategy == "partial" else ""
    size = f", {a.image_size} px" if a.image_size else ""
    rates = (f"head lr {a.head_lr:g}" if a.strategy == "feature_extraction" else
             f"lr {a.learning_rate:g}, decay {a.layer_decay:g}")
    return f"{a.strategy}{depth}, {rates}, {a.num_train_epochs:g} epochs{size}"


def _train(trial: Trial, recipe: Path, seconds: float) -> dict:
    """One trial in this process, stopped at its deadline; its row, scored on validation."""
    from hftl.commands import train
    from hftl.commands.card import reproduce_command
    from hftl.config import load_config

    row = {"strategy": trial.name, "settings": _settings(trial.advice), "why": trial.why, "status": "ok", "error": ""}
    deadline = Deadline(seconds)
    start = time.perf_counter()
    try:
        metrics = train.train(load_config(str(recipe), TRIAL_SETTINGS), reproduce_command(str(recipe), TRIAL_SETTINGS),
                              callbacks=[deadline])
    except HftlError as err:  # bad input for this candidate only: a row in the table, the others still run
        return {**row, "status": "failed", "error": str(err)[:300], "wall_s": round(time.perf_counter() - start, 1)}
    finally:
        gc.collect()
    multi = "eval_accuracy" not in metrics
    row["metric"], row["f1_metric"] = ("f1_micro", "subset_accuracy") if multi else ("accuracy", "f1_macro")
    row["accuracy"], row["f1"] = metrics.get(f"eval_{row['metric']}"), metrics.get(f"eval_{row['f1_metric']}")
    row["epochs"] = round(float(metrics.get("epoch", deadline.stopped_at or 0) or 0), 2)
    row["stopped"] = deadline.stopped_at is not None
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row["train_s"] = round(float(metrics.get("train_runtime", row["wall_s"])), 1)
    if row["accuracy"] is None:
        row["status"], row["error"] = "failed", "no validation split was evaluated"
    return row


def run(m, a, config, folder: Path, render, seconds: float, resume: bool) -> dict:
    """Train the candidates within `seconds`, write the table and chart, and the winner as folder/recipe.yaml.
    `render(advice, path)` is the recipe text advise writes (commands/advise.recipe_text)."""
    trials = candidates(m, a, config)
    texts = {t.name: render(t.advice, folder / "trials" / t.name / "recipe.yaml") for t in trials}
    state = _open(folder, _fingerprint(list(texts.values())), resume)
    spent = sum(r.get("train_s", 0) for r in state["results"].values())
    for i, trial in enumerate(trials):
        if state["results"].get(trial.name, {}).get("status") == "ok":
            print(f"hftl verify: {trial.name} finished in an earlier run; kept.")
            continue
        recipe = folder / "trials" / trial.name / "recipe.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(texts[trial.name])
        share = max(1.0, (seconds - spent) / (len(trials) - i))
        print(f"\nhftl verify: trial {i + 1}/{len(trials)}, {trial.name} ({_settings(trial.advice)}), {share:.0f} s",
              flush=True)
        state["results"][trial.name] = _train(trial, recipe, share)
        spent += state["results"][trial.name].get("train_s", share)
        _write(folder, state, trials, m)
    _write(folder, state, trials, m)
    rows = [state["results"][t.name] for t in trials]
    done = [r for r in rows if r["status"] == "ok"]
    if not done:
        raise HftlError(f"No trial finished (see {folder / 'verify.md'}); the advised recipe is kept as recipe.yaml.")
    best = max(done, key=lambda r: r["accuracy"])  # the first of equals: the advised one when it ties
    winner = next(t for t in trials if t.name == best["strategy"])
    chosen = (f"# Chosen by `hftl advise --verify`: trial `{winner.name}` scored {best['accuracy']:.4f} validation "
              f"{best['metric']} of {len(done)} trials (verify.md).\n")
    text = render(winner.advice, folder / "recipe.yaml")
    first, rest = text.split("\n", 1)
    (folder / "recipe.yaml").write_text(f"{first}\n{chosen}{rest}")
    print("\n" + markdown(rows, m))
    return best


def _write(folder: Path, state: dict, trials: list[Trial], m) -> None:
    rows = [state["results"][t.name] for t in trials if t.name in state["results"]]
    sweep._save_state(folder, state, STATE)
    (folder / "verify.md").write_text(markdown(rows, m))
    with open(folder / "verify.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    sweep.chart(rows, folder / "verify.png", f"advise --verify: {m.model} on {m.dataset}")


def markdown(rows: list[dict], m) -> str:
    metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
    lines = [f"# advise --verify: {m.model} on {m.dataset}", "",
             f"Each trial trained within its share of the budget (training time; loading and evaluation on top) and was "
             f"scored on the validation split ({metric}).", "",
             f"| trial | settings | validation {metric} | epochs trained | stopped by the budget | train time (s) | "
             "wall time (s) |", "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['strategy']} | {r['settings']} | failed: {r['error'].replace('|', '/')} | | | | "
                         f"{r.get('wall_s', 0):.0f} |")
            continue
        lines.append(f"| {r['strategy']} | {r['settings']} | {r['accuracy']:.4f} | {r['epochs']:g} | "
                     f"{'yes' if r['stopped'] else 'no'} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
    if m.baseline is not None:
        lines += ["", f"Classical baseline ({m.baseline_kind}): {m.baseline.score:.3f} balanced accuracy, cross-validated "
                  f"on {m.baseline.examples:,} training examples (frozen features {m.probe.score:.3f})."]
    return "\n".join(lines) + "\n"
