"""Layer groups: exact groups for the named families, the generic rule, and clear errors."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
)

from conftest import write_recipe
from hftl.engine import layers
from hftl.cli import main
from hftl.errors import HftlError
from hftl.engine.layers import layer_groups

GROUP_NAMES = ["embeddings", "layer.0", "layer.1", "head"]


def _tiny_configs():
    common = {"vocab_size": 50, "max_position_embeddings": 32}
    return {
        "distilbert": DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **common),
        # embedding_size != hidden_size gives ELECTRA its `embeddings_project` (input side).
        "electra": ElectraConfig(
            embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **common
        ),
        # relative attention without absolute positions: rel_embeddings + encoder LayerNorm exist.
        "deberta-v2": DebertaV2Config(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm", **common,
        ),
    }


def _names(groups):
    return {g.name: [n for n, _ in g.params] for g in groups}


def _assert_partition(model, groups):
    """Every parameter of the model is in exactly one group, and the groups hold nothing else."""
    grouped = [n for g in groups for n, _ in g.params]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())
    ids = [id(p) for g in groups for _, p in g.params]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def _expected_group(name: str, prefix: str, blocks: str, input_side_extras: tuple[str, ...] = ()) -> str:
    """Independent statement of the rule, used to check every parameter's group by name."""
    if name.startswith(f"{prefix}.{blocks}."):
        return "layer." + name[len(f"{prefix}.{blocks}.") :].split(".")[0]
    if name.startswith(f"{prefix}.embeddings") or any(name.startswith(f"{prefix}.{e}.") for e in input_side_extras):
        return "embeddings"
    return "head"


@pytest.fixture(scope="module")
def bert_model(tiny_bert):
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)


@pytest.fixture(scope="module")
def roberta_model(tiny_roberta):
    return AutoModelForSequenceClassification.from_pretrained(tiny_roberta, num_labels=2)


def test_bert_groups_exact(bert_model):
    groups = layer_groups(bert_model)
    assert [g.name for g in groups] == GROUP_NAMES
    _assert_partition(bert_model, groups)
    names = _names(groups)
    for group, params in names.items():
        for name in params:
            assert _expected_group(name, "bert", "encoder.layer") == group, name
    assert "bert.embeddings.word_embeddings.weight" in names["embeddings"]
    assert "bert.embeddings.position_embeddings.weight" in names["embeddings"]
    assert "bert.embeddings.LayerNorm.weight" in names["embeddings"]
    assert set(names["head"]) == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias",
    }
    assert all(n.startswith("bert.encoder.layer.0.") for n in names["layer.0"])
    assert all(n.startswith("bert.encoder.layer.1.") for n in names["layer.1"])
    # each block has the same parameters (16 tensors in a BERT layer)
    assert len(names["layer.0"]) == len(names["layer.1"]) == 16
    assert [g.is_head for g in groups] == [False, False, False, True]
    assert sum(g.numel for g in groups) == sum(p.numel() for p in bert_model.parameters())


def test_roberta_groups_exact(roberta_model):
    groups = layer_groups(roberta_model)
    assert [g.name for g in groups] == GROUP_NAMES
    _assert_partition(roberta_model, groups)
    names = _names(groups)
    for group, params in names.items():
        for name in params:
            assert _expected_group(name, "roberta", "encoder.layer") == group, name
    # RoBERTa's classification head has no pooler: dense + out_proj outside the base model
    assert set(names["head"]) == {
        "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias",
    }
    assert "roberta.embeddings.word_embeddings.weight" in names["embeddings"]


def test_deeper_model_gets_one_group_per_block(tmp_path):
    from conftest import make_tiny_model

    path = make_tiny_model("bert", tmp_path / "bert4", layers=4)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "head"]
    assert layers.backbone_size(groups) == 5
    _assert_partition(model, groups)


FAMILIES = {
    # model_type: (base prefix, block path, encoder-level modules that belong to the input side, head params)
    "distilbert": ("distilbert", "transformer.layer", (), {"pre_classifier", "classifier"}),
    "electra": ("electra", "encoder.layer", ("embeddings_project",), {"classifier.dense", "classifier.out_proj"}),
    "deberta-v2": ("deberta", "encoder.layer", ("encoder.rel_embeddings", "encoder.LayerNorm"), {"pooler.dense", "classifier"}),
}


@pytest.mark.parametrize("rule", ["named", "generic"])
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_other_families(model_type, rule, monkeypatch):
    if rule == "generic":  # drop the named rule: the structural fallback must find the same groups
        monkeypatch.delitem(layers.BLOCK_PATHS, model_type)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(_tiny_configs()[model_type])
    assert model.config.model_type == model_type
    groups = layer_groups(model)
    assert [g.name for g in groups] == GROUP_NAMES
    _assert_partition(model, groups)
    prefix, blocks, extras, head_modules = FAMILIES[model_type]
    names = _names(groups)
    for group, params in names.items():
        for name in params:
            assert _expected_group(name, prefix, blocks, extras) == group, name
    assert {n.rsplit(".", 1)[0] for n in names["head"]} == head_modules
    if model_type == "deberta-v2":
        assert "deberta.encoder.rel_embeddings.weight" in names["embeddings"]
        assert "deberta.encoder.LayerNorm.weight" in names["embeddings"]
    if model_type == "electra":
        assert "electra.embeddings_project.weight" in names["embeddings"]


def _tiny_gpt2():
    return AutoModelForSequenceClassification.from_config(
        GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    )


class _NoBlocks(nn.Module):
    """A model with a base model and a head but no list of blocks."""

    base_model_prefix = "base"

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(model_type="toy")
        self.base = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
        self.head = nn.Linear(4, 2)


@pytest.mark.parametrize(
    "make, expected",
    [
        (_tiny_gpt2, ["GPT2ForSequenceClassification", "no embedding parameters", "Supported"]),
        (_NoBlocks, ["_NoBlocks", "no list of encoder blocks", "Supported"]),
        (lambda: nn.Sequential(nn.Linear(4, 4)), ["Sequential", "no base model", "task head"]),
    ],
    ids=["gpt2", "no-blocks", "no-base-model"],
)
def test_unmappable_model_raises_clear_error(make, expected):
    model = make()
    with pytest.raises(HftlError) as info:
        layer_groups(model)
    message = str(info.value)
    assert "hftl cannot map" in message
    for part in expected:
        assert part in message


def test_bare_backbone_without_head_is_refused(tiny_bert):
    model = AutoModel.from_pretrained(tiny_bert)  # BertModel: no task head
    with pytest.raises(HftlError, match="AutoModelForSequenceClassification"):
        layer_groups(model)


def test_unmappable_model_through_cli_exits_2(tiny_bert, sentiment_csv, tmp_path, capsys):
    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    for f in tiny_bert.iterdir():  # reuse the BERT tokenizer files; the model is a GPT-2
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, folder / f.name)
    _tiny_gpt2().save_pretrained(folder)
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "r.yaml", model_name_or_path=str(folder), train_file=str(sentiment_csv / "train.csv"),
        output_dir=str(out),
    )
    for command in ("plan", "train"):
        assert main([command, str(recipe)]) == 2
        err = capsys.readouterr().err
        assert "hftl: error: hftl cannot map `GPT2ForSequenceClassification`" in err
        assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # nothing written on bad input
