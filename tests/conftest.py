"""Shared fixtures: tiny BERT/RoBERTa checkpoints built from configs and saved with save_pretrained (tiny ViT
and CLIP ones from helpers.py), an earlier run's output_dir and a recipe that would train into it,
small learnable text datasets, and one finished text run that several modules read. Nothing is downloaded."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

POSITIVE = ["good", "great", "fine", "happy", "nice", "superb", "lovely", "bright"]
NEGATIVE = ["bad", "awful", "poor", "sad", "nasty", "grim", "dull", "dark"]
FILLER = ["the", "a", "movie", "food", "day", "was", "is", "very", "and", "it", "this", "that", "we", "they"]
WORDS = POSITIVE + NEGATIVE + FILLER


def _bert_tokenizer(path: Path):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64)


def _roberta_tokenizer(path: Path):
    from tokenizers import ByteLevelBPETokenizer
    import json

    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(random.Random(i).choices(WORDS, k=8)) for i in range(200)]
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    path.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(path))
    vocab = json.loads((path / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (path / "merges.txt").read_text().splitlines() if line and not line.startswith("#")]
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=64)


def make_tiny_model(kind: str, path: Path, layers: int = 2) -> Path:
    """Save a tiny `kind` (bert|roberta) encoder with tokenizer under path; return path."""
    from transformers import AutoModel, BertConfig, RobertaConfig

    path = Path(path)
    if kind == "bert":
        tokenizer = _bert_tokenizer(path)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=80,
        )
    elif kind == "roberta":
        tokenizer = _roberta_tokenizer(path)
        config = RobertaConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    else:
        raise ValueError(kind)
    import torch

    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """A learnable task: the label is whether positive or negative words dominate."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cue = POSITIVE if label == 1 else NEGATIVE
        words = rng.choices(cue, k=3) + rng.choices(FILLER, k=5)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if label else "neg"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on 2 shared cores they lose up to 10x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_tiny_model("roberta", tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """train.csv (240 rows) and test.csv (60 rows) of the learnable sentiment task, in one folder."""
    folder = tmp_path_factory.mktemp("sentiment")
    write_csv(folder / "train.csv", sentiment_rows(240, seed=1))
    write_csv(folder / "test.csv", sentiment_rows(60, seed=2))
    return folder


def write_recipe(path: Path, **values) -> Path:
    """A recipe YAML with fast defaults for tests; values override them, and a value of None drops the key."""
    import yaml

    base = {
        "task": "text-classification",
        "strategy": "full",
        "max_length": 32,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 5,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "use_cpu": True,
    }
    base.update(values)
    path.write_text(yaml.safe_dump({k: v for k, v in base.items() if v is not None}))
    return path


# ---------------------------------------------------------------- fixtures shared by several test modules


@pytest.fixture
def previous_run(tmp_path) -> Path:
    """An output_dir holding an earlier run's files (and a marker nobody else writes)."""
    out = tmp_path / "previous-run"
    out.mkdir()
    (out / "MARKER.txt").write_text("keep me")
    (out / "model.safetensors").write_bytes(b"earlier weights")
    (out / "README.md").write_text("# earlier run\n")
    (out / "hftl_config.yaml").write_text("learning_rate: 1.0e-05\n")
    return out


@pytest.fixture
def recipe(tmp_path, tiny_bert, sentiment_csv, previous_run):
    """A valid recipe that would train into `previous_run` if it were allowed to."""

    def make(**values):
        base = dict(
            model_name_or_path=str(tiny_bert), train_file=str(sentiment_csv / "train.csv"),
            test_file=str(sentiment_csv / "test.csv"), output_dir=str(previous_run),
        )
        base.update(values)
        return str(write_recipe(tmp_path / "recipe.yaml", **base))

    return make


@pytest.fixture(scope="session")
def finished(tiny_bert, sentiment_csv, tmp_path_factory) -> Path:
    """A finished text-classification run (2 epochs, evaluated each epoch) with its test split scored: its model,
    card, pictures and tables (test_outputs.py), read back by hftl evaluate and predict (test_predict.py)."""
    from hftl.cli import main

    out = tmp_path_factory.mktemp("outputs") / "run"
    recipe = write_recipe(out.parent / "r.yaml", model_name_or_path=str(tiny_bert),
                          train_file=str(sentiment_csv / "train.csv"), test_file=str(sentiment_csv / "test.csv"),
                          output_dir=str(out), num_train_epochs=2, eval_strategy="epoch", learning_rate=3e-3,
                          logging_steps=2)
    assert main(["train", str(recipe)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A 2-block ViT with its image processor (helpers.make_tiny_vit)."""
    from helpers import make_tiny_vit

    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny CLIPModel with its processor (helpers.make_tiny_clip)."""
    from helpers import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    """A tiny SiglipModel with its processor (helpers.make_tiny_siglip)."""
    from helpers import make_tiny_siglip

    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"), version=1)


@pytest.fixture(scope="session")
def tiny_siglip2(tmp_path_factory) -> Path:
    """A tiny NaFlex Siglip2Model with its processor (helpers.make_tiny_siglip)."""
    from helpers import make_tiny_siglip

    return make_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip2"), version=2)
