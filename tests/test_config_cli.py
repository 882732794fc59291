"""Recipes and the command line: every bad input is exit code 2 with one clear paragraph, and
nothing already on disk is touched; overrides, the resolved config, and secrets kept out of files."""

from __future__ import annotations

import pytest
import yaml

from conftest import sentiment_rows, write_csv, write_recipe
from helpers import cli_error, snapshot
from hftl.cli import main
from hftl.config import load_config
from hftl.errors import HftlError


def _bad(capsys, previous_run, argv: list[str]) -> str:
    """Bad input, with permission to overwrite: still nothing in output_dir may change."""
    before = snapshot(previous_run)
    message = cli_error(capsys, argv + ["--overwrite_output_dir", "true"])
    assert snapshot(previous_run) == before
    return message


# ---------------------------------------------------------------- recipe files


def test_missing_recipe_file(capsys, tmp_path):
    message = cli_error(capsys, ["train", str(tmp_path / "nope.yaml")])
    assert "nope.yaml" in message and "does not exist" in message and "hftl train recipes/" in message


def test_missing_recipe_argument(capsys):
    message = cli_error(capsys, ["train"])
    assert "needs a recipe file" in message


def test_invalid_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nlearning_rate: [1e-3\nstrategy: full\n")
    message = cli_error(capsys, ["train", str(bad)])
    assert "not valid YAML" in message and "line" in message and "Fix the YAML" in message


def test_yaml_that_is_not_a_mapping(capsys, tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- learning_rate\n- 1e-3\n")
    message = cli_error(capsys, ["train", str(bad)])
    assert "must be a mapping" in message


def test_unknown_key_in_yaml_names_nearest_key(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(learning_rte=1e-3)])
    assert "Unknown key `learning_rte`" in message and "Did you mean `learning_rate`?" in message


@pytest.mark.parametrize(
    "flag, nearest",
    [("--learning_rte", "learning_rate"), ("--stratgy", "strategy"), ("--unfrozen_group", "unfrozen_groups")],
)
def test_unknown_key_on_command_line_names_nearest_key(capsys, recipe, previous_run, flag, nearest):
    message = _bad(capsys, previous_run, ["train", recipe(), flag, "1"])
    assert f"Unknown key `{flag[2:]}` in the command line" in message
    assert f"Did you mean `{nearest}`?" in message


def test_unknown_key_without_near_match_points_to_help(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(), "--zzqqxx", "1"])
    assert "Unknown key `zzqqxx`" in message and "hftl train --help" in message


def test_bad_value_type(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(), "--learning_rate", "fast"])
    assert "learning_rate" in message and "fast" in message


def test_unknown_strategy(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(strategy="parital")])
    assert "Unknown strategy `parital`" in message and "Did you mean `partial`?" in message
    assert "feature_extraction, partial, full" in message


def test_missing_model(capsys, tmp_path, sentiment_csv):
    r = write_recipe(tmp_path / "r.yaml", train_file=str(sentiment_csv / "train.csv"), output_dir=str(tmp_path / "o"))
    message = cli_error(capsys, ["train", str(r)])
    assert "No model given" in message and "--model_name_or_path" in message


def test_unfrozen_groups_out_of_range(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(strategy="partial", unfrozen_groups=4)])
    assert "unfrozen_groups=4 is out of range" in message
    assert "3 backbone groups" in message and "from 0 (head only) to 3" in message
    message = _bad(capsys, previous_run, ["train", recipe(strategy="partial", unfrozen_groups=-1)])
    assert "`unfrozen_groups` must be >= 0 (got -1)" in message  # known without the model: before it loads


def test_freeze_pattern_matching_nothing(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(freeze=["encoder.layers.9"])])
    assert "matches no parameter" in message and "hftl plan" in message


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("key, column", [("text_column", "sentence"), ("label_column", "stars")])
def test_absent_column_lists_the_columns_there_are(capsys, recipe, previous_run, key, column):
    message = _bad(capsys, previous_run, ["train", recipe(**{key: column})])
    assert f"Column `{column}` (from `{key}`)" in message
    assert "Its columns are: text, label" in message and f"--{key}" in message


def test_absent_text_pair_column(capsys, recipe, previous_run):
    message = _bad(capsys, previous_run, ["train", recipe(), "--text_pair_column", "hypothesis"])
    assert "Column `hypothesis`" in message and "text, label" in message


def test_validation_labels_never_seen_in_training(capsys, recipe, previous_run, tmp_path):
    val = write_csv(tmp_path / "val.csv", sentiment_rows(10, seed=5) + [{"text": "it was a day", "label": "neutral"}])
    message = _bad(capsys, previous_run, ["train", recipe(validation_file=str(val))])
    assert "validation split" in message and "never seen in training" in message
    assert "neutral" in message  # the offending class is named


def test_test_labels_never_seen_in_training(capsys, recipe, previous_run, tmp_path):
    test = write_csv(tmp_path / "t.csv", sentiment_rows(10, seed=5) + [{"text": "it was a day", "label": "meh"}])
    message = _bad(capsys, previous_run, ["train", recipe(test_file=str(test))])
    assert "test split" in message and "meh" in message


@pytest.mark.parametrize("which", ["train_file", "validation_file", "test_file"])
def test_empty_csv(capsys, recipe, previous_run, tmp_path, which):
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")  # header only
    message = _bad(capsys, previous_run, ["train", recipe(**{which: str(empty)})])
    split = which.replace("_file", "")
    assert f"The {split} file `{empty}` is empty (0 rows)" in message and f"`{which}`" in message
    assert "network" not in message  # not blamed on the network: the file has no rows


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet"])
def test_empty_file_of_other_types(capsys, recipe, previous_run, tmp_path, suffix):
    import pandas as pd

    empty = tmp_path / f"empty.{suffix}"
    if suffix == "parquet":
        pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(empty)
    else:
        empty.write_text("[]\n" if suffix == "json" else "\n")
    message = _bad(capsys, previous_run, ["train", recipe(train_file=str(empty), test_file=None)])
    assert f"The train file `{empty}` is empty (0 rows)" in message


def test_missing_data_file(capsys, recipe, previous_run, tmp_path):
    message = _bad(capsys, previous_run, ["train", recipe(train_file=str(tmp_path / "gone.csv"))])
    assert "gone.csv" in message and "does not exist" in message and "train_file" in message


def test_unsupported_data_file_type(capsys, recipe, previous_run, tmp_path):
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    message = _bad(capsys, previous_run, ["train", recipe(train_file=str(odd), test_file=None)])
    assert "unsupported type `.xlsx`" in message and ".csv" in message


# ---------------------------------------------------------------- output_dir


def test_output_dir_with_previous_run_is_refused(capsys, recipe, previous_run):
    before = snapshot(previous_run)
    message = cli_error(capsys, ["train", recipe()])
    assert str(previous_run) in message and "earlier run" in message
    assert "--overwrite_output_dir true" in message and "--output_dir" in message
    assert (previous_run / "MARKER.txt").read_text() == "keep me"
    assert snapshot(previous_run) == before
    # allowed when asked
    assert main(["train", recipe(), "--overwrite_output_dir", "true"]) == 0
    capsys.readouterr()
    assert (previous_run / "model.safetensors").read_bytes() != b"earlier weights"
    assert (previous_run / "config.json").is_file()


def test_empty_output_dir_is_fine(recipe, tmp_path, capsys):
    empty = tmp_path / "empty-out"
    empty.mkdir()
    assert main(["train", recipe(output_dir=str(empty)), "--max_steps", "1"]) == 0
    assert (empty / "model.safetensors").is_file()


# ---------------------------------------------------------------- overrides and resolved config


def test_overrides_beat_yaml(recipe):
    path = recipe(learning_rate=3e-3, strategy="full", num_train_epochs=4, seed=1, freeze=["LayerNorm"])
    config = load_config(
        path,
        [
            "--learning_rate", "1e-4", "--strategy", "partial", "--unfrozen_groups=1", "--num_train_epochs", "2",
            "--per_device_train_batch_size", "4", "--lr_scheduler_type", "constant", "--revision", "v2",
            "--freeze", "attention", "bias",
        ],
    )
    assert config.training.learning_rate == 1e-4
    assert config.transfer.strategy == "partial" and config.transfer.unfrozen_groups == 1
    assert config.training.num_train_epochs == 2
    assert config.training.per_device_train_batch_size == 4
    assert str(getattr(config.training.lr_scheduler_type, "value", config.training.lr_scheduler_type)) == "constant"
    assert config.model.revision == "v2"
    assert config.transfer.freeze == ["attention", "bias"]
    assert config.training.seed == 1  # YAML value where nothing overrides it
    assert config.data.max_length == 32


def test_yaml_values_reach_the_dataclasses(recipe):
    config = load_config(recipe(learning_rate=3e-3, layer_decay=0.5, head_lr=1e-2, text_column="body", seed=9))
    assert config.training.learning_rate == 3e-3
    assert config.transfer.layer_decay == 0.5 and config.transfer.head_lr == 1e-2
    assert config.data.text_column == "body" and config.training.seed == 9
    assert {"learning_rate", "layer_decay", "seed"} <= config.user_keys


def test_layer_decay_and_validation_split_are_checked(recipe):
    with pytest.raises(HftlError, match="`layer_decay` must be > 0"):
        load_config(recipe(layer_decay=0))
    with pytest.raises(HftlError, match=r"`validation_split` must be in \(0, 1\)"):
        load_config(recipe(validation_split=1.5))


def test_help_lists_keys(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("--learning_rate", "--layer_decay", "--strategy", "--text_column", "--model_name_or_path"):
        assert key in out


def test_train_writes_resolved_config_and_keeps_token_secret(recipe, tmp_path, tiny_bert, capfd, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "placeholder")  # restored after the test, whatever hftl does with it
    secret = "hf_SECRETtoken0123456789"
    out = tmp_path / "run"
    path = recipe(output_dir=str(out), learning_rate=3e-3, num_train_epochs=1, save_strategy="steps", save_steps=5)
    argv = [
        "train", path, "--learning_rate", "2e-3", "--layer_decay", "0.7", "--max_steps", "5", "--seed", "3",
        "--hub_token", secret,
    ]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert secret not in captured.out and secret not in captured.err
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and (out / "checkpoint-5").is_dir()
    for p in files:  # text and binary (pickled TrainingArguments, optimizer state) alike
        assert secret.encode() not in p.read_bytes(), f"token leaked into {p.relative_to(out)}"
    resolved_path = out / "hftl_config.yaml"
    resolved = yaml.safe_load(resolved_path.read_text())
    assert resolved["learning_rate"] == 2e-3 and resolved["layer_decay"] == 0.7
    assert resolved["max_steps"] == 5 and resolved["seed"] == 3 and resolved["save_steps"] == 5
    assert resolved["model_name_or_path"] == str(tiny_bert)
    assert resolved["strategy"] == "full" and resolved["train_file"].endswith("train.csv")
    assert resolved.get("hub_token") in (None, "<redacted>")
    # the resolved config is itself a recipe that loads to the same settings
    again = load_config(str(resolved_path), ["--hub_token", secret])
    assert again.training.learning_rate == 2e-3 and again.transfer.layer_decay == 0.7
    assert again.training.max_steps == 5 and again.training.seed == 3
    assert again.model.model_name_or_path == resolved["model_name_or_path"]
    # the model card's reproduce command keeps the overrides but not the token
    card = (out / "README.md").read_text()
    assert "--learning_rate 2e-3" in card and "--layer_decay 0.7" in card and "--hub_token" in card


def test_token_given_as_key_equals_value_is_redacted_in_card(recipe, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "placeholder")
    secret = "hf_OTHERsecret987654321"
    out = tmp_path / "run2"
    assert main(["train", recipe(output_dir=str(out)), "--max_steps", "1", f"--hub_token={secret}"]) == 0
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err
    for p in out.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p.name
    assert "--hub_token=<redacted>" in (out / "README.md").read_text()


@pytest.mark.parametrize("flag, value", [("--vision_strategy", "partial"), ("--text_learning_rate", "1e-4"), ("--clip_mode", "zero_shot")])
def test_dual_encoder_keys_are_refused_for_single_tower_tasks(flag, value, recipe, capsys):
    message = cli_error(capsys, ["train", recipe(), flag, value])
    assert flag[2:] in message and "task clip" in message


def test_from_scratch_means_full_and_refuses_another_explicit_strategy(recipe):
    """A value the run cannot honour is an error, not an override: from_scratch trains every layer."""
    base = recipe()
    assert load_config(base, ["--from_scratch", "true"]).transfer.strategy == "full"
    scratch = recipe(from_scratch=True)
    assert load_config(scratch).transfer.strategy == "full"
    with pytest.raises(HftlError, match="from_scratch .* needs strategy full, not `partial`"):
        load_config(base, ["--from_scratch", "true", "--strategy", "partial"])


@pytest.mark.parametrize("where", ["recipe", "command line"])
def test_allowed_values_are_checked_in_recipes_and_on_the_command_line(recipe, where):
    """The parser checks command-line values only; recipe values get the same check and the same message."""
    args = (recipe(cache_features="on"), []) if where == "recipe" else (recipe(), ["--cache_features", "on"])
    with pytest.raises(HftlError, match="Unknown cache_features `on`.*Choose one of: auto, off, memory, disk"):
        load_config(*args)
