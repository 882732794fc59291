"""`hftl advise`: the measurements, the decision guide's thresholds, the written recipe, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import NEGATIVE, POSITIVE, WORDS, make_tiny_model, sentiment_rows, write_csv, write_recipe
from helpers import cli_error, write_folder
from hftl.commands import advise, verify
from hftl.advice import baseline, budget, guide, probe, resolution
from hftl.errors import HftlError
from hftl.cli import main
from hftl.config import load_config


def _advise(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["advise", *[str(a) for a in args]])
    return rc, out.getvalue(), err.getvalue()


# --- the probe -------------------------------------------------------------------------------------------------


def test_linear_probe_separable_features_score_near_one_and_noise_near_chance():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(3), 40)
    centres = rng.normal(size=(3, 16)) * 4
    separable = centres[targets] + rng.normal(size=(120, 16))
    noise = rng.normal(size=(120, 16))
    good = probe.linear_probe(separable, targets, False, 3)
    bad = probe.linear_probe(noise, targets, False, 3)
    assert good.chance == pytest.approx(1 / 3) and good.folds == 5
    assert good.lift > 0.9
    assert abs(bad.lift) < 0.25


def test_linear_probe_multi_label_uses_per_label_balanced_accuracy():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, size=(100, 3)).astype(np.float32)
    x = np.concatenate([targets * 3 + rng.normal(size=(100, 3)) * 0.3, rng.normal(size=(100, 5))], axis=1)
    fit = probe.linear_probe(x, targets, True, 3)
    assert fit.chance == 0.5 and fit.score > 0.95


def test_probe_too_small_names_the_minimum_and_the_classes():
    with pytest.raises(HftlError) as err:
        probe.check_probe_size({"a": 5, "b": 1}, multi_label=False)
    assert "at least 2" in str(err.value) and "`b` (1)" in str(err.value)
    probe.check_probe_size({"a": 2, "b": 2}, multi_label=False)
    with pytest.raises(HftlError, match="per label"):
        probe.check_probe_size({"a": 5, "b": 1}, multi_label=True)
    with pytest.raises(HftlError, match="single class"):
        probe.check_probe_size({"a": 5}, multi_label=False)


def test_tokenizer_fragmentation_separates_known_words_from_gibberish(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    words = probe.tokenizer_stats(tokenizer, ["the movie was very good", "it is a sad day"])
    gibberish = probe.tokenizer_stats(tokenizer, ["qzx vvkj plorp", "zzyzx wq"])
    assert words == {"subwords_per_word": 1.0, "unknown_rate": 0.0}
    assert gibberish["unknown_rate"] == 1.0


# --- the decision guide ---------------------------------------------------------------------------------------


def _measured(examples: int, lift: float = 0.8, classes: int = 2, multi_label: bool = False, groups: int = 7,
              tokenizer=None, mlm=None) -> guide.Measurements:
    per_class = {f"c{i}": examples // classes for i in range(classes)}
    chance = 1 / classes
    fit = probe.Probe(chance + lift * (1 - chance), chance, min(examples, 1000), 5)
    return guide.Measurements("m", "d", examples, per_class, 10, 10, multi_label, False, fit, groups, 20_000_000,
                              tokenizer=tokenizer, mlm=mlm)


@pytest.fixture(scope="module")
def base_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guide")
    (folder / "t.csv").write_text("text,label\n")  # never read: the guide works on measurements
    path = write_recipe(folder / "r.yaml", model_name_or_path="x", train_file=str(folder / "t.csv"))
    return load_config(str(path))


@pytest.mark.parametrize(
    ("examples", "strategy", "groups"),
    [(50, "feature_extraction", None), (99, "feature_extraction", None), (100, "partial", 1), (500, "partial", 3),
     (1_530, "partial", 4), (10_000, "partial", 6), (10_001, "full", None), (200_000, "full", None)],
)
def test_data_size_follows_the_guide_thresholds(base_config, examples, strategy, groups):
    advice = guide.decide(_measured(examples), base_config)
    assert advice.strategy == strategy
    if groups is not None:
        assert advice.unfrozen_groups == groups
    assert advice.domain == "close"


def test_a_different_domain_unfreezes_more(base_config):
    close = guide.decide(_measured(500, lift=0.8), base_config)
    far = guide.decide(_measured(500, lift=0.1), base_config)
    moderate = guide.decide(_measured(500, lift=0.4), base_config)
    assert (close.unfrozen_groups, moderate.unfrozen_groups, far.unfrozen_groups) == (3, 4, 6)
    assert far.domain == "far" and "unfreeze more" in far.rules[1]
    # even under 100 examples a far domain leaves the frozen features
    assert guide.decide(_measured(50, lift=0.1), base_config).strategy == "partial"
    # the tokenizer or the MLM head alone can make the domain far
    shredded = _measured(500, tokenizer={"subwords_per_word": 3.1, "unknown_rate": 0.0})
    assert guide.decide(shredded, base_config).domain == "far"
    strange = _measured(500, mlm={"loss": 6.0, "accuracy": 0.05})
    assert guide.decide(strange, base_config).domain == "far"


def test_complex_tasks_train_more(base_config):
    simple = guide.decide(_measured(500, classes=2), base_config)
    many = guide.decide(_measured(5000, classes=30), base_config)
    assert guide.decide(_measured(500, multi_label=True), base_config).unfrozen_groups == simple.unfrozen_groups + 1
    assert many.unfrozen_groups == guide.decide(_measured(5000, classes=2), base_config).unfrozen_groups + 1
    assert "complex" in many.rules[2]


def test_a_weak_head_token_changes_frozen_features_to_full_and_unspaced_text_skips_fragmentation(base_config):
    m = _measured(50)
    m.probe_first = probe.Probe(0.6, 0.5, 50, 5)  # lift 0.2 against 0.8 for the mean
    advice = guide.decide(m, base_config)
    assert advice.strategy == "full" and advice.num_train_epochs == 25 and advice.warmup_steps == 0.1
    assert advice.rules[0].startswith("50 training examples < 100") and "first-token probe" in advice.changed_by[0]
    m.head_reads = "all"  # a head that pools every token (DINOv2's) is not limited by the first token
    assert guide.decide(m, base_config).strategy == "feature_extraction"
    unspaced = _measured(500, tokenizer={"subwords_per_word": None, "unknown_rate": 0.0})
    assert guide.decide(unspaced, base_config).domain == "close"
    assert any("without spaces" in line for line in guide.domain(unspaced)[1])


def test_unspaced_text_is_detected(tiny_bert):
    from transformers import AutoTokenizer

    stats = probe.tokenizer_stats(AutoTokenizer.from_pretrained(tiny_bert), ["这部电影非常好看我们都很开心" * 2])
    assert stats["subwords_per_word"] is None


def test_layer_decay_and_head_steps(base_config):
    assert guide.layer_decay(3) == 0.7 and guide.layer_decay(7) == 0.9 and guide.layer_decay(13) == 0.95
    few = guide.decide(_measured(50), base_config)  # 50 examples, batch 16: 4 steps an epoch
    assert few.num_train_epochs == 25 and few.head_lr == 1e-3


def test_random_weights_as_good_as_pretrained_change_the_advice(base_config):
    m = _measured(500)  # lift 0.8: the guide says partial
    m.probe_random = probe.Probe(0.88, 0.5, 500, 5)  # lift 0.76: pre-training adds 0.04
    advice = guide.decide(m, base_config)
    assert advice.strategy == "full" and "random-weights probe" in advice.changed_by[0]
    m.probe_random = probe.Probe(0.6, 0.5, 500, 5)  # lift 0.2: pre-training adds 0.6
    assert guide.decide(m, base_config).strategy == "partial" and not guide.decide(m, base_config).changed_by


def test_a_baseline_as_good_as_the_probe_changes_the_advice_and_says_transfer_may_not_win(base_config):
    m = _measured(500)  # probe 0.9
    m.baseline, m.baseline_kind = probe.Probe(0.91, 0.5, 500, 5), "tf-idf"
    advice = guide.decide(m, base_config)
    assert advice.strategy == "full" and "changed by the baseline" in advice.changed_by[0]
    assert advice.transfer_wins is False and advice.transfer.startswith("transfer is NOT expected to win")
    m.baseline = probe.Probe(0.7, 0.5, 500, 5)
    weaker = guide.decide(m, base_config)
    assert weaker.strategy == "partial" and weaker.transfer_wins and "0.700" in weaker.transfer


def test_budget_from_the_data_and_the_strategy():
    few = budget.plan(50, "full", 16, 20_000_000, {})
    assert (few.num_train_epochs, few.warmup_steps, few.learning_rate) == (25, 0.1, 1e-4)
    head = budget.plan(50, "feature_extraction", 16, 20_000_000, {})
    assert (head.num_train_epochs, head.warmup_steps) == (25, 0.0)
    assert budget.plan(20_000, "full", 16, 110_000_000, {}).num_train_epochs == 3
    assert budget.plan(20_000, "full", 16, 110_000_000, {}).learning_rate == 3e-5
    own = budget.plan(50, "full", 16, 20_000_000, {"num_train_epochs": 40, "learning_rate": 2e-5})
    assert (own.num_train_epochs, own.learning_rate) == (40, 2e-5) and "kept" in own.reasons["num_train_epochs"]
    assert budget.plan(50, "full", 16, 20_000_000, {"num_train_epochs": 3}).num_train_epochs == 25


def test_text_baseline_on_the_probe_folds_single_multi_label_and_pairs():
    rows = sentiment_rows(80, seed=9)
    texts = [r["text"] for r in rows]
    targets = np.array([r["label"] == "pos" for r in rows], dtype=np.int64)
    good = baseline.cross_validated(baseline.text_rows(texts, None), targets, False)
    shuffled = baseline.cross_validated(baseline.text_rows(texts, None), np.random.default_rng(0).permutation(targets), False)
    assert good.score > 0.9 and good.folds == 5 and abs(shuffled.lift) < 0.35
    multi = np.stack([targets, 1 - targets, (np.arange(80) % 2 == 0)], 1).astype(np.float32)
    assert baseline.cross_validated(baseline.text_rows(texts, None), multi, True).chance == 0.5
    same = np.array([i % 2 for i in range(80)], dtype=np.int64)  # pairs: is the second text the first one again?
    second = [t if same[i] else texts[(i + 7) % 80] for i, t in enumerate(texts)]
    assert baseline.cross_validated(baseline.text_rows(texts, second), same, False).score > 0.8


def test_pixel_baseline_and_the_verdict():
    from helpers import colour_image

    images = [colour_image(c, (20, 20), seed=i) for i in range(20) for c in ("blue", "red")]
    targets = np.array([0, 1] * 20)
    x = baseline.pixels(images)
    assert x.shape == (40, 3 * baseline.PIXEL_SIDE ** 2) and baseline.cross_validated(x, targets, False).score == 1.0
    assert baseline.pixels([images[0].convert("L")]).shape == (1, baseline.PIXEL_SIDE ** 2)
    wins, noise = baseline.verdict(probe.Probe(0.7, 0.5, 400, 5), probe.Probe(0.9, 0.5, 400, 5))
    assert wins and 0.01 <= noise < 0.05
    assert not baseline.verdict(probe.Probe(0.89, 0.5, 400, 5), probe.Probe(0.9, 0.5, 400, 5))[0]


def test_resolution_sizes_and_the_cheapest_size_within_a_tie():
    assert resolution.sizes(28, 224, 14) == [28, 84, 224]
    assert resolution.sizes(8, 224, 14) == [28, 84, 224]  # never under 2 x 2 patches
    assert resolution.sizes(300, 224, 14, recipe=56) == [56, 224]
    rows = [{"size": 28, "patches": 4, "score": 0.7, "lift": 0.6, "seconds": 1.0},
            {"size": 84, "patches": 36, "score": 0.85, "lift": 0.8, "seconds": 3.0},
            {"size": 224, "patches": 256, "score": 0.86, "lift": 0.81, "seconds": 9.0}]
    assert resolution.choose(rows)["size"] == 84
    assert "advised image_size 84" in resolution.lines(rows)[-1] and "cost x64.0" in resolution.lines(rows)[2]
    flat = [dict(r, lift=0.8) for r in rows]  # every size as good: the cheapest with 16+ patches, not 2 x 2
    assert resolution.choose(flat)["size"] == 84 and "does not matter" in resolution.lines(flat)[-1]
    noisy = [dict(r, noise=0.1) for r in rows[1:]] + [dict(rows[2], size=112, patches=64, lift=0.9)]
    assert resolution.choose(noisy)["size"] == 84  # 0.1 better at 112 px, within a noise of 0.1
    fit = probe.Probe(0.85, 0.1, 256, 5)
    assert 0.04 < resolution.row(56, 14, fit, 1.0)["noise"] < 0.06  # two standard errors of 256 images, in lift


# --- end to end on tiny checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "prior"), [(40, "< 100: frozen features"), (400, "in 100-10,000: fine-tune the top"),
                                             (12_000, "> 10,000: full fine-tuning")])
def test_advise_on_tiny_datasets_of_three_sizes(tmp_path, tiny_bert, rows, prior):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(rows, seed=3))
    recipe = write_recipe(tmp_path / "recipe.yaml", model_name_or_path=str(tiny_bert), train_file=str(data),
                          output_dir=str(tmp_path / "run"), validation_split=0.05)
    rc, out, err = _advise(recipe, "--probe_samples", 200)
    assert rc == 0, err[-2000:]
    folder = tmp_path / "run-advice"
    record = json.loads((folder / "advice.json").read_text())
    advice = record["advice"]
    assert prior in advice["rules"][0], advice["rules"]  # the guide's rule for the data size is the prior ...
    # ... and the tiny checkpoint's weights are random: its features are no better than random ones, nor than
    # TF-IDF on these word-cued texts, so the measurements make it full wherever the guide froze something
    assert advice["strategy"] == "full", out
    if rows < 10_000:
        assert "random-weights probe" in advice["changed_by"][0] and "changed by a measurement" in out
    assert record["measurements"]["examples"] == round(rows * 0.95)
    assert record["measurements"]["baseline"]["folds"] == record["measurements"]["probe"]["folds"]
    assert "transfer is NOT expected to win" in out and "classical baseline: TF-IDF" in out
    assert record["measurements"]["probe_random"]["examples"] == record["measurements"]["probe"]["examples"]
    assert "strategy: **full**" in out and "## Rules applied" in out
    written = folder / "recipe.yaml"
    text = written.read_text()
    assert text.startswith(f"# hftl train {written}") and "transfer is NOT expected to win" in text
    config = load_config(str(written))  # a ready-to-run recipe: every key valid
    assert config.transfer.strategy == "full" and config.training.warmup_steps == 0.1
    assert config.training.output_dir == str(folder / "model")
    assert config.model.model_name_or_path == str(tiny_bert)


def test_advise_without_a_recipe_and_refusing_to_overwrite(tmp_path, tiny_bert):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(60, seed=4))
    args = ["--model_name_or_path", tiny_bert, "--train_file", data, "--max_length", 32, "--use_cpu", "true",
            "--out", tmp_path / "advice", "--probe_samples", 60]
    rc, _, err = _advise(*args)
    assert rc == 0, err[-2000:]
    written = yaml.safe_load((tmp_path / "advice" / "recipe.yaml").read_text())
    assert written["train_file"] == str(data) and written["max_length"] == 32
    assert written["strategy"] == "full"  # 54 examples, but random-weight features: changed by a measurement
    before = (tmp_path / "advice" / "recipe.yaml").read_bytes()
    rc, _, err = _advise(*args)
    assert rc == 2 and "already holds advice" in err and "--force" in err
    assert (tmp_path / "advice" / "recipe.yaml").read_bytes() == before
    rc, _, err = _advise(*args, "--force")
    assert rc == 0, err[-2000:]


def test_advise_refuses_data_too_small_for_the_probe(tmp_path, tiny_bert):
    rows = sentiment_rows(20, seed=5) + [{"text": "good good", "label": "rare"}]
    data = write_csv(tmp_path / "train.csv", rows)
    valid = write_csv(tmp_path / "valid.csv", sentiment_rows(6, seed=6))
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(data),
                          validation_file=str(valid), output_dir=str(tmp_path / "run"))
    rc, _, err = _advise(recipe)
    assert rc == 2
    assert "too small to split for the similarity probe" in err and "at least 2" in err and "`rare` (1)" in err
    assert not (tmp_path / "run-advice").exists()


# --- the similarity signal: data the model was trained on vs random data -------------------------------------------

NOUNS = ["movie", "food", "day"]


def _templated(n: int, seed: int) -> list[dict]:
    """Text with structure a small MLM learns: `the NOUN was very ADJ and it is happy|sad`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        feeling = "happy" if positive else "sad"
        rows.append({"text": f"the {rng.choice(NOUNS)} was very {adjective} and it is {feeling}",
                     "label": "pos" if positive else "neg"})
    return rows


def _random_rows(n: int, seed: int) -> list[dict]:
    """The same vocabulary without the structure, labels at random."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(WORDS, k=10)), "label": rng.choice(["pos", "neg"])} for _ in range(n)]


@pytest.fixture(scope="module")
def pretrained_mlm(tmp_path_factory) -> Path:
    """A tiny BERT with its MLM head, pre-trained here on the templated text."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling

    path = make_tiny_model("bert", tmp_path_factory.mktemp("mlm"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    from transformers import BertConfig

    model = BertForMaskedLM(BertConfig.from_pretrained(path))
    texts = [r["text"] for r in _templated(512, seed=0)]
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    encoded = [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(300):
        batch = collate(encoded[(step * 32) % 512 : (step * 32) % 512 + 32])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


def test_similarity_signal_separates_pretraining_data_from_random_data(tmp_path, pretrained_mlm):
    measured = {}
    for name, rows in (("seen", _templated(200, seed=1)), ("random", _random_rows(200, seed=2))):
        data = write_csv(tmp_path / f"{name}.csv", rows)
        recipe = write_recipe(tmp_path / f"{name}.yaml", model_name_or_path=str(pretrained_mlm), train_file=str(data),
                              output_dir=str(tmp_path / name))
        config = load_config(str(recipe))
        m = advise.measure(config, samples=200)
        measured[name] = (m, guide.domain(m)[0])
    seen, random_data = measured["seen"][0], measured["random"][0]
    assert seen.mlm is not None and random_data.mlm is not None  # the head shipped with the checkpoint was found
    assert seen.mlm["accuracy"] > random_data.mlm["accuracy"] + 0.3
    assert seen.mlm["loss"] < random_data.mlm["loss"]
    assert seen.probe.lift > 0.8 and random_data.probe.lift < 0.25
    assert measured["seen"][1] == "close" and measured["random"][1] == "far"


def test_advise_on_an_image_folder(tmp_path, tiny_vit):
    folder = write_folder(tmp_path / "images", classes=("blue", "red"), per_class=30)
    rc, out, err = _advise("--task", "image-classification", "--model_name_or_path", tiny_vit, "--dataset", folder,
                           "--use_cpu", "true", "--out", tmp_path / "advice")
    assert rc == 0, err[-2000:]
    record = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert record["measurements"]["tokenizer"] is None and record["measurements"]["mlm"] is None
    assert record["measurements"]["probe_lift"] > 0.5  # plain colours: even random features separate them
    assert "random-weights probe" in record["advice"]["changed_by"][0]  # 54 images: the guide froze the backbone
    assert record["measurements"]["baseline"]["score"] == 1.0 and "raw pixels" in out
    sizes = [r["size"] for r in record["measurements"]["resolution"]]
    assert sizes == [24, 32] and "input size (the probe at each, same folds)" in out  # native 16-32 px, ViT's 32
    written = load_config(str(tmp_path / "advice" / "recipe.yaml"))
    assert written.transfer.task == "image-classification" and written.data.image_size == record["advice"]["image_size"]
    assert written.data.image_size in sizes


def test_multi_label_advice_and_no_token_in_any_file(tmp_path, tiny_bert):
    rows = [{"text": r["text"], "label": r["label"] + (";long" if i % 3 == 0 else "")}
            for i, r in enumerate(sentiment_rows(300, seed=7))]
    data = write_csv(tmp_path / "train.csv", rows)
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(data),
                          label_separator=";", output_dir=str(tmp_path / "run"))
    rc, out, err = _advise(recipe, "--probe_samples", 200, "--hub_token", "hf_SECRET_advise")
    assert rc == 0, err[-2000:]
    record = json.loads((tmp_path / "run-advice" / "advice.json").read_text())
    assert record["measurements"]["multi_label"] and record["measurements"]["probe"]["chance"] == 0.5
    assert record["advice"]["strategy"] in ("partial", "full")
    assert "a complex task (3 classes, multi-label): one more group" in record["advice"]["rules"]
    assert "3 labels (multi-label)" in out
    for path in (tmp_path / "run-advice").iterdir():
        assert "hf_SECRET_advise" not in path.read_text()
    assert "hf_SECRET_advise" not in out + err


# --- --verify: short trials decide the recipe ---------------------------------------------------------------


def test_verify_trains_three_candidates_on_validation_writes_the_winner_and_resumes(tmp_path, tiny_bert, capsys):
    data = write_csv(tmp_path / "train.csv", sentiment_rows(60, seed=11))
    args = ["--model_name_or_path", tiny_bert, "--train_file", data, "--max_length", 16, "--use_cpu", "true",
            "--out", tmp_path / "advice", "--probe_samples", 60, "--num_train_epochs", 1, "--verify", "--budget", "3s"]
    rc, out, err = _advise(*args)
    assert rc == 0, err[-3000:]
    folder = tmp_path / "advice"
    state = json.loads((folder / "verify.json").read_text())
    rows = list(state["results"].values())
    assert [r["strategy"] for r in rows] == ["advised", "partial", "feature_extraction"]  # advised: full
    assert all(r["status"] == "ok" and 0 <= r["accuracy"] <= 1 for r in rows), rows
    best = max(rows, key=lambda r: r["accuracy"])
    recipe = (folder / "recipe.yaml").read_text()
    assert recipe.splitlines()[1].startswith(f"# Chosen by `hftl advise --verify`: trial `{best['strategy']}`")
    assert load_config(str(folder / "recipe.yaml")).training.output_dir == str(folder / "model")
    table = (folder / "verify.md").read_text()
    assert "| advised | full" in table and "validation accuracy" in table and "Classical baseline" in table
    assert (folder / "verify.png").stat().st_size > 1000 and (folder / "verify.csv").read_text().count("\n") == 4
    rc, out, err = _advise(*args, "--resume")  # every trial finished: kept, nothing trains again
    assert rc == 0, err[-3000:]
    assert out.count("finished in an earlier run; kept") == 3
    assert json.loads((folder / "verify.json").read_text())["results"] == state["results"]
    message = cli_error(capsys, ["advise", *map(str, args[:-3]), "--budget", "10m"])
    assert "--budget and --resume belong to --verify" in message
    with pytest.raises(HftlError, match="duration such as 10m"):
        verify.parse_budget("ten minutes")
    assert verify.parse_budget("1.5h") == 5400 and verify.parse_budget("90") == 90


def test_train_warns_when_the_image_size_leaves_few_patches(tmp_path, tiny_vit, capsys):
    from hftl.tasks import get_task

    folder = write_folder(tmp_path / "images", classes=("blue", "red"), per_class=4)
    task = get_task("image-classification")
    for size, warned in ((16, True), (32, False)):  # patch 8: 2 x 2 patches, then 4 x 4
        config = load_config(None, ["--task", "image-classification", "--model_name_or_path", str(tiny_vit), "--dataset",
                                    str(folder), "--image_size", str(size), "--use_cpu", "true"])
        task.build_model(config, task.load_data(config)[1])
        assert ("leave the backbone 4 patches" in capsys.readouterr().out) is warned
