"""The bad-input catalogue (issue 17): one row per case of a recipe, a value, a path or a data file that
once gave a traceback, was accepted silently, or was reported unclearly. Each row asserts the promise:
exit code 2, one paragraph without a traceback (`cli_error`), a message naming the problem, and
nothing written, in the output folder or anywhere under the working directory.

Every case fails before training starts, most before a model loads, so the catalogue runs
in-process in a few seconds. `KIND` records what the case did before it was fixed (the counts in
the issue's closing note): `traceback`, `silent` (accepted), `unclear` (a message that misled),
`hang` (memory or time without end), and `clear` for kinds of input that were already reported well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sentiment_rows, write_csv, write_recipe
from helpers import cli_error, snapshot, write_folder

from hftl.cli import main

ROWS = sentiment_rows(40, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Good and broken data files, side by side, written once for the module."""
    folder = tmp_path_factory.mktemp("catalogue-data")
    text = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in ROWS)
    write_csv(folder / "train.csv", ROWS)
    (folder / "latin1.csv").write_bytes((text + "caf\xe9 au lait,pos\n").encode("latin-1"))
    (folder / "utf16.csv").write_bytes(text.encode("utf-16"))
    lines = text.splitlines(keepends=True)
    (folder / "fields.csv").write_text("".join(lines[:10] + ["one,two,three\n"] + lines[10:]))
    (folder / "quote.csv").write_text(text + '"never closed,pos\nbad day,neg\n')
    (folder / "tabs.csv").write_text(text.replace(",", "\t"))
    (folder / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.csv").write_text("")
    (folder / "header.csv").write_text("text,label\n")
    (folder / "empty-label.csv").write_text(text + "a day with no label,\n")
    records = [json.dumps(r) for r in ROWS]
    (folder / "broken.jsonl").write_text("\n".join(records[:5] + ['{"text": "cut off", "label": '] + records[5:]))
    (folder / "latin1.jsonl").write_bytes(("\n".join(records) + '\n{"text": "caf\xe9", "label": "pos"}\n').encode("latin-1"))
    (folder / "list-line.jsonl").write_text("\n".join(records + ['["good", "pos"]']))
    (folder / "prose.json").write_text("these are not records\n")
    (folder / "trailing-comma.json").write_text("[" + ",\n".join(records) + ",\n]\n")
    (folder / "csv.parquet").write_text(text)
    (folder / "a-folder").mkdir()
    (folder / "no-model").mkdir()
    write_folder(folder / "images", per_class=3)
    return folder


def _recipe(tmp: Path, text: str | bytes) -> list[str]:
    path = tmp / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["train", str(path)]


def _raw(tmp: Path, data: Path, model: Path, extra: bytes) -> list[str]:
    """A valid recipe with `extra` appended as raw bytes."""
    path = tmp / "recipe.yaml"
    base = f"model_name_or_path: {model}\ntrain_file: {data / 'train.csv'}\noutput_dir: {tmp / 'out'}\n"
    path.write_bytes(base.encode() + extra)
    return ["train", str(path)]


def _keys(tmp: Path, model: Path, data: Path, *cli: str, **keys) -> list[str]:
    """A recipe with fast test defaults and `keys` (None drops a key), then `cli` overrides."""
    values = dict(model_name_or_path=str(model), train_file=str(data / "train.csv"), output_dir=str(tmp / "out"))
    values.update(keys)
    values = {k: v for k, v in values.items() if v is not None}
    return ["train", str(write_recipe(tmp / "recipe.yaml", **values)), *cli]


def _file(name: str):
    return lambda tmp, w: _keys(tmp, w.bert, w.data, train_file=str(w.data / name))


def _laughs() -> str:
    """The 'billion laughs' recipe under a real key: nine levels of nine aliases, 9**9 strings once expanded
    (about 3 GB as text, which is what stringifying the list's items did)."""
    text = "class_names:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for prev, name in zip("abcdefgh", "bcdefghi"):
        text += f"  - &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return text


def _case(kind, name, build, fragment):
    return pytest.param(kind, build, fragment, id=name)


CASES = [
    # ------------------------------------------------------------ the recipe file
    _case("traceback", "recipe-not-utf8", lambda t, w: _raw(t, w.data, w.bert, "# caf\xe9\n".encode("latin-1")),
          "is not UTF-8 text: byte 0xe9 at line 4, column 6"),
    _case("traceback", "recipe-utf16", lambda t, w: _recipe(t, "strategy: full\n".encode("utf-16")), "UTF-16"),
    _case("unclear", "recipe-empty", lambda t, w: _recipe(t, ""), "is empty: it sets no keys"),
    _case("unclear", "recipe-only-comments", lambda t, w: _recipe(t, "# hftl train r.yaml\n# nothing yet\n"),
          "is empty: it sets no keys"),
    _case("unclear", "recipe-is-a-folder", lambda t, w: ["train", str(w.data / "a-folder")], "is a folder, not a file"),
    _case("silent", "recipe-duplicate-key", lambda t, w: _raw(t, w.data, w.bert, b"learning_rate: 1.0e-3\n"
          b"strategy: full\nlearning_rate: 2.0e-5\n"), "sets `learning_rate` twice, at lines 4 and 6"),
    _case("hang", "recipe-billion-laughs", lambda t, w: _recipe(t, _laughs()), "uses the YAML alias `*a` at line 3"),
    _case("unclear", "recipe-two-documents", lambda t, w: _raw(t, w.data, w.bert, b"---\nstrategy: full\n"),
          "more than one YAML document"),
    _case("clear", "recipe-python-tag", lambda t, w: _recipe(t, "seed: !!python/object/apply:os.getpid []\n"),
          "uses a YAML tag at line 1"),
    _case("traceback", "recipe-null-value", lambda t, w: _raw(t, w.data, w.bert, b"learning_rate:\n"),
          "`learning_rate` is empty (null)"),
    _case("unclear", "recipe-yes-for-a-word-key", lambda t, w: _raw(t, w.data, w.bert, b"strategy: yes\n"),
          "was read as the YAML boolean true"),
    # ------------------------------------------------------------ values torch, peft or the DataLoader would reject
    _case("silent", "learning_rate-zero", lambda t, w: _keys(t, w.bert, w.data, learning_rate=0),
          "`learning_rate` must be > 0 (got 0)"),
    _case("clear", "learning_rate-negative", lambda t, w: _keys(t, w.bert, w.data, learning_rate=-1e-4),
          "`learning_rate` must be > 0 (got -0.0001)"),
    _case("unclear", "learning_rate-negative-on-the-command-line",
          lambda t, w: _keys(t, w.bert, w.data, "--learning_rate", "-1e-4"), "`learning_rate` must be > 0 (got -1e-4)"),
    _case("unclear", "flag-without-a-value", lambda t, w: _keys(t, w.bert, w.data, "--learning_rate"),
          "`--learning_rate` needs a value"),
    _case("silent", "learning_rate-infinite", lambda t, w: _keys(t, w.bert, w.data, "--learning_rate", "inf"),
          "`learning_rate` must be a finite number > 0 (got inf)"),
    _case("clear", "head_lr-negative", lambda t, w: _keys(t, w.bert, w.data, head_lr=-1e-3), "`head_lr` must be > 0"),
    _case("silent", "num_train_epochs-zero", lambda t, w: _keys(t, w.bert, w.data, num_train_epochs=0),
          "num_train_epochs is 0 and max_steps is not set"),
    _case("silent", "num_train_epochs-zero-max_steps-zero",
          lambda t, w: _keys(t, w.bert, w.data, num_train_epochs=0, max_steps=0), "the run would train nothing"),
    _case("silent", "num_train_epochs-negative", lambda t, w: _keys(t, w.bert, w.data, "--num_train_epochs", "-2"),
          "`num_train_epochs` must be >= 0"),
    _case("silent", "max_steps-below-minus-one", lambda t, w: _keys(t, w.bert, w.data, max_steps=-5),
          "`max_steps` must be >= -1"),
    _case("silent", "max_length-zero", lambda t, w: _keys(t, w.bert, w.data, max_length=0), "`max_length` must be >= 1"),
    _case("traceback", "max_length-negative", lambda t, w: _keys(t, w.bert, w.data, max_length=-8),
          "`max_length` must be >= 1"),
    _case("silent", "max_train_samples-zero", lambda t, w: _keys(t, w.bert, w.data, max_train_samples=0),
          "`max_train_samples` must be >= 1"),
    _case("silent", "max_eval_samples-zero", lambda t, w: _keys(t, w.bert, w.data, max_eval_samples=0),
          "`max_eval_samples` must be >= 1"),
    _case("traceback", "per_device_train_batch_size-zero",
          lambda t, w: _keys(t, w.bert, w.data, per_device_train_batch_size=0), "`per_device_train_batch_size` must be >= 1"),
    _case("traceback", "per_device_eval_batch_size-zero",
          lambda t, w: _keys(t, w.bert, w.data, per_device_eval_batch_size=0), "`per_device_eval_batch_size` must be >= 1"),
    _case("traceback", "gradient_accumulation_steps-zero",
          lambda t, w: _keys(t, w.bert, w.data, gradient_accumulation_steps=0), "`gradient_accumulation_steps` must be >= 1"),
    _case("traceback", "lora_r-zero", lambda t, w: _keys(t, w.bert, w.data, strategy="lora", lora_r=0),
          "`lora_r` must be >= 1"),
    _case("silent", "lora_alpha-zero", lambda t, w: _keys(t, w.bert, w.data, strategy="lora", lora_alpha=0),
          "`lora_alpha` must be > 0"),
    _case("traceback", "lora_dropout-above-one", lambda t, w: _keys(t, w.bert, w.data, strategy="lora", lora_dropout=1.5),
          "`lora_dropout` must be in [0, 1)"),
    _case("clear", "layer_decay-zero", lambda t, w: _keys(t, w.bert, w.data, layer_decay=0), "`layer_decay` must be > 0"),
    _case("clear", "layer_decay-negative", lambda t, w: _keys(t, w.bert, w.data, layer_decay=-0.5),
          "`layer_decay` must be > 0"),
    _case("unclear", "warmup_steps-negative", lambda t, w: _keys(t, w.bert, w.data, warmup_steps=-0.1),
          "below 1 it is a share of the training steps"),
    _case("clear", "warmup_ratio-of-transformers-4", lambda t, w: _keys(t, w.bert, w.data, warmup_ratio=0.1),
          "transformers 5 removed it. Use `warmup_steps`, where a value below 1 is a share"),
    _case("clear", "evaluation_strategy-of-transformers-4",
          lambda t, w: _keys(t, w.bert, w.data, "--evaluation_strategy", "epoch"), "Use `eval_strategy` instead"),
    _case("silent", "weight_decay-negative", lambda t, w: _keys(t, w.bert, w.data, weight_decay=-0.01),
          "`weight_decay` must be >= 0"),
    _case("traceback", "adam_beta1-one-or-more", lambda t, w: _keys(t, w.bert, w.data, adam_beta1=1.0),
          "`adam_beta1` must be in [0, 1)"),
    _case("traceback", "adam_epsilon-negative", lambda t, w: _keys(t, w.bert, w.data, adam_epsilon=-1e-8),
          "`adam_epsilon` must be >= 0"),
    _case("silent", "max_grad_norm-negative", lambda t, w: _keys(t, w.bert, w.data, max_grad_norm=-1.0),
          "0 turns gradient clipping off"),
    _case("silent", "label_smoothing_factor-one", lambda t, w: _keys(t, w.bert, w.data, label_smoothing_factor=1.0),
          "`label_smoothing_factor` must be in [0, 1)"),
    _case("silent", "save_steps-zero", lambda t, w: _keys(t, w.bert, w.data, save_strategy="steps", save_steps=0),
          "`save_steps` must be > 0"),
    _case("silent", "save_total_limit-zero", lambda t, w: _keys(t, w.bert, w.data, save_total_limit=0),
          "`save_strategy: no` keeps none"),
    _case("traceback", "seed-negative", lambda t, w: _keys(t, w.bert, w.data, seed=-1), "`seed` must be in [0, 4294967295]"),
    _case("traceback", "split_seed-negative", lambda t, w: _keys(t, w.bert, w.data, split_seed=-3),
          "`split_seed` must be in [0, 4294967295]"),
    _case("traceback", "dataloader_num_workers-negative", lambda t, w: _keys(t, w.bert, w.data, dataloader_num_workers=-1),
          "`dataloader_num_workers` must be >= 0"),
    _case("traceback", "persistent_workers-without-workers",
          lambda t, w: _keys(t, w.bert, w.data, dataloader_persistent_workers=True), "dataloader_num_workers is 0"),
    _case("unclear", "early_stopping_patience-negative",
          lambda t, w: _keys(t, w.bert, w.data, early_stopping_patience=-1), "`early_stopping_patience` must be >= 0"),
    _case("traceback", "label_separator-empty", lambda t, w: _keys(t, w.bert, w.data, label_separator=""),
          "`label_separator` is an empty string"),
    _case("silent", "text_column-is-the-label-column", lambda t, w: _keys(t, w.bert, w.data, text_column="label"),
          "the model would read the labels it is to predict"),
    # ------------------------------------------------------------ where the data comes from, and the paths
    _case("silent", "dataset-and-train_file", lambda t, w: _keys(t, w.bert, w.data, dataset="builtin:bbc-news"),
          "Both `dataset` (builtin:bbc-news) and `train_file`"),
    _case("silent", "validation_file-with-a-dataset",
          lambda t, w: _keys(t, w.bert, w.data, train_file=None, dataset="builtin:bbc-news",
                             validation_file=str(w.data / "train.csv")), "`validation_file` goes with `train_file`"),
    _case("unclear", "train_file-is-a-folder", lambda t, w: _keys(t, w.bert, w.data, train_file=str(w.data / "a-folder")),
          "is a folder, not a file"),
    _case("unclear", "dataset-local-path-missing", lambda t, w: _keys(t, w.bert, w.data, train_file=None,
                                                                     dataset="data/gone.csv"), "which does not exist"),
    _case("unclear", "model-folder-missing", lambda t, w: _keys(t, w.data / "gone-model", w.data),
          "(`model_name_or_path`) does not exist"),
    _case("unclear", "model-path-is-a-file", lambda t, w: _keys(t, w.data / "train.csv", w.data), "is a file"),
    _case("unclear", "model-folder-without-config", lambda t, w: _keys(t, w.data / "no-model", w.data),
          "has no config.json"),
    _case("silent", "image_root-missing", lambda t, w: _keys(t, w.bert, w.data, image_root=str(w.data / "gone")),
          "image_root `"),
    # ------------------------------------------------------------ data files
    _case("unclear", "csv-not-utf8", _file("latin1.csv"), "is not UTF-8 text: byte 0xe9 at line 42, column 4"),
    _case("unclear", "csv-utf16", _file("utf16.csv"), "UTF-16 byte-order mark"),
    _case("unclear", "csv-binary", _file("binary.csv"), "is not UTF-8 text"),
    _case("unclear", "csv-line-with-extra-fields", _file("fields.csv"),
          "is not valid CSV: line 11 has 3 fields, the header (line 1) has 2"),
    _case("unclear", "csv-unclosed-quote", _file("quote.csv"), "an unclosed quote"),
    _case("unclear", "csv-tab-separated", _file("tabs.csv"), "looks tab-separated"),
    _case("clear", "csv-empty-file", _file("empty.csv"), "is empty (0 rows)"),
    _case("clear", "csv-header-only", _file("header.csv"), "is empty (0 rows)"),
    _case("unclear", "jsonl-broken-line", _file("broken.jsonl"), "is not valid JSON Lines: line 6, column"),
    _case("traceback", "jsonl-not-utf8", _file("latin1.jsonl"), "byte 0xe9 at line 41"),
    _case("unclear", "jsonl-line-not-an-object", _file("list-line.jsonl"), "line 41 is a JSON list, not an object"),
    _case("unclear", "json-not-json", _file("prose.json"), "is not valid JSON: line 1"),
    _case("unclear", "json-array-trailing-comma", _file("trailing-comma.json"), "is not valid JSON: line 41"),
    _case("traceback", "parquet-that-is-not-parquet", _file("csv.parquet"), "is not a Parquet file"),
    # ------------------------------------------------------------ labels and the model's kind
    _case("unclear", "empty-label-in-the-carved-train-file", _file("empty-label.csv"),
          "empty-label.csv` has 1 row(s) with an empty label in `label` (the first is data row 41)"),
    _case("unclear", "text-model-for-the-image-task",
          lambda t, w: _keys(t, w.bert, w.data, train_file=None, dataset=str(w.data / "images"),
                             task="image-classification"),
          "a text model (BERT, RoBERTa, DeBERTa, ModernBERT and their family), but task image-classification needs an image model"),
    _case("unclear", "image-model-for-the-text-task", lambda t, w: _keys(t, w.vit, w.data),
          "an image model (ViT, DeiT, DINOv2, ResNet, ConvNeXt, EfficientNet and their family), but task text-classification needs a text model"),
    _case("clear", "single-tower-model-for-clip",
          lambda t, w: _keys(t, w.vit, w.data, train_file=None, dataset=str(w.data / "images"), task="clip"),
          "task clip needs a dual encoder"),
]


class World:
    def __init__(self, bert: Path, vit: Path, data: Path):
        self.bert, self.vit, self.data = bert, vit, data


@pytest.mark.parametrize("kind, build, fragment", CASES)
def test_bad_input(kind, build, fragment, tiny_bert, tiny_vit, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths and anything written by mistake land here
    argv = build(tmp_path, World(tiny_bert, tiny_vit, data))
    before, data_before = snapshot(tmp_path), snapshot(data / "images")
    message = cli_error(capsys, argv)
    assert fragment in message, message
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
    assert snapshot(data / "images") == data_before


def test_the_billion_laughs_fail_fast_in_little_memory(tmp_path):
    """In a child process capped at 1 GiB of address space: an alias bomb must be refused, not expanded."""
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(_laughs())
    assert len(bomb.read_bytes()) < 1000
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
            "from hftl.cli import main; sys.exit(main(['plan', sys.argv[1]]))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "YAML alias" in result.stderr and "MemoryError" not in result.stderr


def test_recipe_errors_come_before_torch_and_transformers(tmp_path, data):
    """A missing recipe, bad YAML, a value out of range and a missing data file are reported without the
    heavy imports, which cost seconds (bench/startup.py measures the whole process)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model_name_or_path: x\ntrain_file: {data / 'train.csv'}\nlearning_rate: -1\n")
    gone = tmp_path / "gone.yaml"
    gone.write_text(f"model_name_or_path: x\ntrain_file: {tmp_path / 'gone.csv'}\n")
    argvs = [["train", str(tmp_path / "missing.yaml")], ["plan", str(bad)], ["train", str(gone)],
             ["train", str(bad), "--strategy", "parital"]]
    code = ("import sys, json; from hftl.cli import main; "
            f"codes = [main(a) for a in {argvs!r}]; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules); "
            "print(json.dumps([codes, heavy]))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    codes, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert codes == [2, 2, 2, 2] and heavy == [], result.stderr[-2000:]
    assert "`learning_rate` must be > 0" in result.stderr and "gone.csv` does not exist" in result.stderr


def test_allowed_but_probably_unmeant_settings_are_warnings_with_the_reason(recipe, capsys):
    """layer_decay above 1, and phases that begin after the last epoch (`hftl plan` still shows them)."""
    from hftl.config import load_config

    config = load_config(recipe(layer_decay=1.2))
    assert config.transfer.layer_decay == 1.2
    err = capsys.readouterr().err
    assert "hftl: warning: layer_decay 1.2 is above 1" in err and "reverse of discriminative fine-tuning" in err
    load_config(recipe(head_warmup_epochs=2, num_train_epochs=1))
    assert "head_warmup_epochs 2 starts the first unfreezing at epoch 2" in capsys.readouterr().err
    load_config(recipe(unfreeze_every=1, num_train_epochs=3))
    assert "warning" not in capsys.readouterr().err


def test_yaml_booleans_of_word_valued_keys_are_the_words(tmp_path, recipe):
    """YAML 1.1 reads unquoted `no` and `off` as false: `eval_strategy: no` and `cache_features: off` mean the words."""
    from hftl.config import load_config

    path = Path(recipe())
    path.write_text(path.read_text().replace("eval_strategy: 'no'", "eval_strategy: no") + "cache_features: off\n")
    assert "eval_strategy: no\n" in path.read_text()
    config = load_config(str(path))
    assert config.training.eval_strategy == "no" and config.transfer.cache_features == "off"


def test_a_class_too_small_to_stratify_stays_in_train(tmp_path, recipe, capsys):
    """One `neutral` row: the carved validation split would hold it alone and fail as 'never seen in training'."""
    from hftl.config import load_config
    from hftl.tasks import get_task

    rows = sentiment_rows(40, seed=4) + [{"text": "the day was a day", "label": "neutral"}]
    config = load_config(recipe(train_file=str(write_csv(tmp_path / "t.csv", rows)), test_file=None))
    found = []
    for seed in range(6):  # some seeds put the lone row in validation; every one must keep it in train
        config.data.split_seed = seed
        raw, labels = get_task("text-classification").load_data(config)
        names = [labels.names[i] for i in raw["train"]["labels"]]
        found.append("neutral" in names and len(raw["train"]) + len(raw["validation"]) == 41)
    assert all(found)
    assert "kept in train" in capsys.readouterr().out


def test_max_grad_norm_may_be_infinite_and_nan_never(recipe):
    """`inf` is max_grad_norm's own value (no clipping); no key takes NaN."""
    from hftl.config import load_config
    from hftl.errors import HftlError

    assert load_config(recipe(), ["--max_grad_norm", "inf"]).training.max_grad_norm == float("inf")
    with pytest.raises(HftlError, match=r"must be a finite number >= 0 \(got nan\)"):
        load_config(recipe(), ["--max_grad_norm", "nan"])


def test_a_saved_recipe_whose_files_moved_loads_without_the_paths_rule(tmp_path, recipe):
    """A finished run's hftl_config.yaml names the data and base model it was trained on, which may be gone."""
    from hftl.config import load_config
    from hftl.errors import HftlError

    path = recipe(train_file=str(tmp_path / "moved.csv"), model_name_or_path=str(tmp_path / "moved" / "model"))
    with pytest.raises(HftlError, match="does not exist"):
        load_config(path)
    assert load_config(path, check_paths=False).data.train_file == str(tmp_path / "moved.csv")
