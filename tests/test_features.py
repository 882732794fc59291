"""Cached features for frozen backbones: same result as the uncached run, whole model saved."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from safetensors.torch import load_file

from conftest import write_recipe
from hftl.cli import main


def _run(recipe, *extra) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(["train", str(recipe), *extra])
    return rc, buffer.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, sentiment_csv):
    """The same feature-extraction recipe with the cache off, in memory and on disk."""
    root = tmp_path_factory.mktemp("cache")
    out = {}
    for mode in ("off", "auto", "disk"):
        recipe = write_recipe(
            root / f"{mode}.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
            test_file=str(sentiment_csv / "test.csv"), output_dir=str(root / mode), strategy="feature_extraction",
            head_lr=3e-3, learning_rate=3e-3, num_train_epochs=2, seed=0, cache_features=mode,
            save_strategy="epoch",
        )
        rc, stdout = _run(recipe)
        assert rc == 0, stdout[-2000:]
        out[mode] = {"dir": root / mode, "stdout": stdout, "recipe": recipe}
    return out


def test_cache_is_used_only_when_asked_or_automatic(runs):
    assert "cached 216 train features" not in runs["off"]["stdout"]
    assert "cached 216 train features" in runs["auto"]["stdout"]
    # read from one folder per rank, removed after the fit (a cache would be pushed with the run folder)
    assert f"memory-mapped from {runs['disk']['dir']}/feature_cache/rank0/train" in runs["disk"]["stdout"]
    assert not (runs["disk"]["dir"] / "feature_cache").exists()


@pytest.mark.parametrize("mode", ["auto", "disk"])
def test_cached_training_equals_uncached(runs, mode):
    """Frozen modules run in eval mode either way, so the head sees identical inputs and RNG draws."""
    plain = load_file(str(runs["off"]["dir"] / "model.safetensors"))
    cached = load_file(str(runs[mode]["dir"] / "model.safetensors"))
    assert set(plain) == set(cached)  # the whole model is saved, backbone included
    for key in plain:
        assert (plain[key] - cached[key]).abs().max().item() < 1e-5, key
    a = json.loads((runs["off"]["dir"] / "all_results.json").read_text())
    b = json.loads((runs[mode]["dir"] / "all_results.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"]
    assert abs(a["test_loss"] - b["test_loss"]) < 1e-4


def test_checkpoints_hold_the_whole_model_and_resume(runs, tiny_bert):
    folder = runs["auto"]["dir"]
    checkpoint = folder / "checkpoint-14"
    weights = load_file(str(checkpoint / "model.safetensors"))
    assert any(k.startswith("bert.embeddings.") for k in weights)
    assert any(k.startswith("bert.encoder.layer.1.") for k in weights)
    rc, stdout = _run(runs["auto"]["recipe"], "--resume_from_checkpoint", str(checkpoint))
    assert rc == 0, stdout[-2000:]
    resumed = load_file(str(folder / "model.safetensors"))
    plain = load_file(str(runs["off"]["dir"] / "model.safetensors"))
    assert all((resumed[k] - plain[k]).abs().max().item() < 1e-5 for k in plain)


def test_saved_folder_predicts_like_the_cached_run(runs):
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(runs["auto"]["dir"]))
    assert len(classify(["good great nice the movie"])) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strategy", "partial", "--unfrozen_groups", "1", "--cache_features", "memory"], "backbone groups train"),
        (["--cache_features", "sometimes"], "Unknown cache_features `sometimes`. Choose one of: auto, off, memory, disk"),
    ],
)
def test_impossible_cache_requests_are_refused(runs, tmp_path, capsys, extra, message):
    rc = main(["train", str(runs["auto"]["recipe"]), "--output_dir", str(tmp_path / "new"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_torch_compile_works_with_the_freeze_plan(tmp_path, tiny_bert, sentiment_csv):
    """torch_compile on a partly frozen model: it trains, frozen weights stay put, names stay clean."""
    from transformers import AutoModel

    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
        test_file=str(sentiment_csv / "test.csv"), output_dir=str(tmp_path / "out"), strategy="partial",
        unfrozen_groups=1, learning_rate=3e-3, num_train_epochs=4, seed=0, torch_compile=True,
    )
    rc, stdout = _run(recipe)
    assert rc == 0, stdout[-2000:]
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any("_orig_mod" in k for k in saved)
    original = AutoModel.from_pretrained(tiny_bert).state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        assert (saved[f"bert.{key}"] == original[key]).all(), key
    assert not (saved["bert.encoder.layer.1.output.dense.weight"] == original["encoder.layer.1.output.dense.weight"]).all()
    assert json.loads((tmp_path / "out" / "all_results.json").read_text())["test_accuracy"] >= 0.9
