"""The model families beyond BERT and ViT: ModernBERT, DeBERTa-v3, ResNet, ConvNeXt and EfficientNet, each as
a tiny checkpoint built from its config and saved with save_pretrained (tests/helpers.py). Per family: exact
layer groups (named and generic rule), no-decay sets, LoRA defaults, `hftl plan`, cached features equal to the
whole model's forward; then ModernBERT's pooling key, the precision table, the processors of the CNN
checkpoints, frozen BatchNorm statistics (through the Trainer, across phases, and under 2-process DDP) and
the errors for families hftl cannot group. Nothing is downloaded."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import write_recipe
from helpers import (IMAGE_FAMILIES, REPO, TEXT_FAMILIES, cli_error, colour_image, launch, make_tiny_cnn, make_tiny_text,
                     write_folder)
from hftl.cli import main
from hftl.engine import layers, lora
from hftl.engine.layers import layer_groups
from hftl.engine.transfer import TransferPlan
from hftl.errors import HftlError

FAMILIES = TEXT_FAMILIES + IMAGE_FAMILIES
FAST = dict(num_train_epochs=1, per_device_train_batch_size=8, per_device_eval_batch_size=16, seed=0,
            learning_rate=1e-2, logging_steps=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """kind -> a saved tiny checkpoint: 2-block ModernBERT and DeBERTa-v3, 4-stage ResNet and ConvNeXt, a
    7-stage EfficientNet."""
    root = tmp_path_factory.mktemp("families")
    out = {kind: make_tiny_text(kind, root / kind, tiny_bert) for kind in TEXT_FAMILIES}
    out.update({kind: make_tiny_cnn(kind, root / kind) for kind in IMAGE_FAMILIES})
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("family-images") / "images", classes=("blue", "green", "red"), per_class=6)


def _recipe(path: Path, kind: str, tiny, images, sentiment_csv, **values) -> Path:
    data = ({"task": "image-classification", "dataset": str(images)} if kind in IMAGE_FAMILIES
            else {"train_file": str(sentiment_csv / "train.csv"), "max_train_samples": 40})
    base = dict(model_name_or_path=str(tiny[kind]), output_dir=str(path.parent / "out"), **data, **FAST)
    return write_recipe(path, **{**base, **values})


def _model(kind: str, folder: Path):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    auto = AutoModelForImageClassification if kind in IMAGE_FAMILIES else AutoModelForSequenceClassification
    torch.manual_seed(0)
    return auto.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)


# ---------------------------------------------------------------- 1. groups, no decay, LoRA, plan


def _stage_of_block(config) -> list[int]:
    """EfficientNet's stages, restated: stage i repeats ceil(depth_coefficient * num_block_repeats[i]) times."""
    return [i for i, n in enumerate(config.num_block_repeats) for _ in range(math.ceil(config.depth_coefficient * n))]


def _expected_group(kind: str, name: str, config) -> str:
    """Each family's rule, stated independently of layers.py."""
    prefix, blocks = {"modernbert": ("model", "layers"), "deberta-v3": ("deberta", "encoder.layer"),
                      "resnet": ("resnet", "encoder.stages"), "convnext": ("convnext", "encoder.stages"),
                      "efficientnet": ("efficientnet", "encoder.blocks")}[kind]
    if name.startswith(f"{prefix}.{blocks}."):
        index = int(name[len(f"{prefix}.{blocks}."):].split(".")[0])
        return f"layer.{_stage_of_block(config)[index] if kind == 'efficientnet' else index}"
    input_side = {"modernbert": ("embeddings.",), "deberta-v3": ("embeddings.", "encoder.rel_embeddings.",
                  "encoder.LayerNorm."), "resnet": ("embedder.",), "convnext": ("embeddings.",),
                  "efficientnet": ("embeddings.",)}[kind]
    if name.startswith(tuple(f"{prefix}.{p}" for p in input_side)):
        return "embeddings"
    if kind == "efficientnet" and name.startswith(("efficientnet.encoder.top_conv.", "efficientnet.encoder.top_bn.")):
        return "layer.7"  # the 1x1 top convolution to 1280 (here 320) channels: the backbone's last group
    return "head"


HEADS = {  # the modules each family's head group holds
    "modernbert": {"model.final_norm", "head.dense", "head.norm", "classifier"},
    "deberta-v3": {"pooler.dense", "classifier"},
    "resnet": {"classifier.1"}, "convnext": {"convnext.layernorm", "classifier"}, "efficientnet": {"classifier"},
}
BACKBONE_GROUPS = {"modernbert": 2, "deberta-v3": 2, "resnet": 4, "convnext": 4, "efficientnet": 8}


@pytest.mark.parametrize("kind", FAMILIES)
def test_groups_and_no_decay(kind, tiny):
    model = _model(kind, tiny[kind])
    groups = layer_groups(model)
    names = [g.name for g in groups]
    assert names == ["embeddings", *(f"layer.{i}" for i in range(BACKBONE_GROUPS[kind])), "head"]
    grouped = [n for g in groups for n, _ in g.params]
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())  # each parameter exactly once
    for group in groups:
        for name, _ in group.params:
            assert _expected_group(kind, name, model.config) == group.name, name
    assert {n.rsplit(".", 1)[0] for n, _ in groups[-1].params} == HEADS[kind]

    plan = TransferPlan.build(model, weight_decay=0.1)
    decays = {n: a.weight_decay for n, a in plan.assignment.items()}
    for name, param in model.named_parameters():  # no decay: biases and norm scales, and DeBERTa's position table
        assert (decays[name] == 0.0) == (param.ndim <= 1 or "rel_embeddings" in name), name
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d))]
    assert norms and all(decays[n] == 0.0 for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in
                         {k for k, m in model.named_modules() if m in norms})
    if kind == "modernbert":  # LayerNorm weights without a bias
        assert all(m.bias is None for m in norms)
    if kind == "deberta-v3":
        assert model.deberta.encoder.rel_embeddings.weight.ndim == 2 and decays["deberta.encoder.rel_embeddings.weight"] == 0
    if kind == "convnext":
        assert decays["convnext.encoder.stages.0.layers.0.layer_scale_parameter"] == 0.0


@pytest.mark.parametrize("kind", ["modernbert", "resnet", "convnext", "efficientnet"])
def test_generic_rule_finds_the_same_groups(kind, tiny, monkeypatch):
    model = _model(kind, tiny[kind])
    named = [(g.name, [n for n, _ in g.params]) for g in layer_groups(model)]
    monkeypatch.delitem(layers.BLOCK_PATHS, model.config.model_type)  # only the structure is left to go by
    assert [(g.name, [n for n, _ in g.params]) for g in layer_groups(model)] == named


ADAPTED = {  # kind -> suffix of every adapted layer, and how many there are
    "modernbert": (("attn.Wqkv",), 2), "deberta-v3": (("query_proj", "value_proj"), 4),
    "resnet": (("layer.1.convolution",), 4), "convnext": (("pwconv1", "pwconv2"), 8),
    "efficientnet": (("expand_conv", "project_conv"), 19),  # 10 blocks, the first without an expansion
}


SAVED = {"modernbert": {"model.final_norm", "head", "classifier"}, "deberta-v3": {"pooler", "classifier"},
         "resnet": {"classifier"}, "convnext": {"convnext.layernorm", "classifier"}, "efficientnet": {"classifier"}}


def _adapted(model) -> list[str]:
    return sorted({n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n})


@pytest.mark.parametrize("kind", FAMILIES)
def test_lora_defaults(kind, tiny):
    model = _model(kind, tiny[kind])
    wrapped = lora.wrap(model, layer_groups(model), lora.LoraSpec(r=2))
    suffixes, count = ADAPTED[kind]
    adapted = _adapted(wrapped)
    assert len(adapted) == count and all(a.endswith(suffixes) for a in adapted), adapted
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    saved = {n.split(".modules_to_save.")[0].removeprefix("base_model.model.") for n in trainable if ".modules_to_save." in n}
    assert saved == SAVED[kind]  # the head's modules only: ConvNeXt's block norms are `layernorm` too
    assert all(".lora_" in n or ".modules_to_save." in n for n in trainable)


def test_lora_suffix_targets_one_attention_layer(tiny):
    """`attn.Wo` adapts ModernBERT's attention output and not its MLP's `mlp.Wo`; a bare `Wo` would take both."""
    model = _model("modernbert", tiny["modernbert"])
    wrapped = lora.wrap(model, layer_groups(model), lora.LoraSpec(r=2, targets=("attn.Wo",)))
    assert _adapted(wrapped) == [f"base_model.model.model.layers.{i}.attn.Wo" for i in range(2)]


@pytest.mark.parametrize("kind", ["modernbert", "resnet"])
def test_lora_targets_matching_nothing_list_the_candidates(kind, tiny, images, sentiment_csv, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", kind, tiny, images, sentiment_csv, strategy="lora")
    message = cli_error(capsys, ["plan", str(recipe), "--lora_target_modules", "query"])
    assert "['query'] match no linear or convolution layer" in message
    expected = ("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo") if kind == "modernbert" else (
        "layers.0.layer.1.convolution", "layers.0.shortcut.convolution")
    assert all(c in message for c in expected), message


@pytest.mark.parametrize("kind", FAMILIES)
def test_hftl_plan(kind, tiny, images, sentiment_csv, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", kind, tiny, images, sentiment_csv, strategy="partial", unfrozen_groups=1)
    assert main(["plan", str(recipe)]) == 0
    rows = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("embeddings", "layer.", "head"))}
    top = f"layer.{BACKBONE_GROUPS[kind] - 1}"
    assert list(rows) == ["embeddings", *(f"layer.{i}" for i in range(BACKBONE_GROUPS[kind])), "head"]
    assert {g for g, s in rows.items() if s == "trainable"} == {top, "head"}
    assert (tmp_path / "out" / "plan.md").is_file()


# ---------------------------------------------------------------- 2. cached features


def _inputs(kind: str, folder: Path):
    from transformers import AutoTokenizer

    if kind in IMAGE_FAMILIES:
        from hftl.config import DataArgs
        from hftl.data.preprocess import Preprocess
        from transformers import AutoImageProcessor

        pre = Preprocess(AutoImageProcessor.from_pretrained(folder), DataArgs())
        return {"pixel_values": torch.stack([pre.pixels(colour_image(c, (30, 26), seed=i), train=False)
                                             for i, c in enumerate(["blue", "red", "green"])])}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["good great day", "bad awful sad the movie was dull"], padding=True, return_tensors="pt")
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


@pytest.mark.parametrize("kind", FAMILIES)
def test_cached_features_give_the_whole_models_logits(kind, tiny):
    """The head on the stored last-block outputs (the backbone swapped out) equals the whole model's forward:
    a CNN's feature maps, DeBERTa-v2's one stand-in block, ModernBERT's first token with `cls` pooling."""
    from datasets import Dataset

    from hftl.engine.features import BackboneSwap, extract

    model = _model(kind, tiny[kind]).eval()
    if kind == "modernbert":
        model.config.classifier_pooling = "cls"  # mean pooling reads every token: not cacheable (tested below)
    inputs = _inputs(kind, tiny[kind])
    with torch.no_grad():
        whole = model(**inputs).logits
    tokens = "all" if kind in IMAGE_FAMILIES else "first"
    rows = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(len(whole))]
    collate = (lambda batch: {k: torch.tensor([r[k] for r in batch]) for k in batch[0]})
    features = torch.from_numpy(extract(model, Dataset.from_list(rows), collate, 8, "cpu", tokens))
    swap = BackboneSwap.of(model)
    swap.detach()
    with torch.no_grad():
        key = "pixel_values" if kind in IMAGE_FAMILIES else "inputs_embeds"
        extra = {} if kind in IMAGE_FAMILIES else {"attention_mask": torch.ones(features.shape[:2], dtype=torch.long)}
        cached = model(**{key: features}, **extra).logits
    swap.attach()
    assert torch.allclose(cached, whole, atol=1e-5), (cached, whole)


def test_mean_pooling_of_feature_maps_is_the_cnn_heads(tiny):
    """hftl's pooled features outside the head (advise's probe, EWC's Fisher) of a CNN: its own global pooling."""
    from hftl.engine.pooling import masked_mean

    model = _model("resnet", tiny["resnet"]).eval()
    with torch.no_grad():
        out = model.resnet(pixel_values=torch.randn(2, 3, 32, 32))
    assert torch.allclose(masked_mean(out.last_hidden_state, None), out.pooler_output.flatten(1), atol=1e-6)


# ---------------------------------------------------------------- 3. ModernBERT's pooling, precision


def test_classifier_pooling_reaches_the_model_config(tiny, images, sentiment_csv, tmp_path, capsys):
    from hftl.commands import train as run
    from hftl.commands.extras import FeatureCache
    from hftl.config import load_config

    recipe = _recipe(tmp_path / "r.yaml", "modernbert", tiny, images, sentiment_csv, strategy="feature_extraction")
    checkpoint = run.build(load_config(str(recipe)))  # the checkpoint's own: mean (as ModernBERT-base ships)
    assert checkpoint.model.config.classifier_pooling == "mean"
    assert not any(isinstance(e, FeatureCache) for e in checkpoint.extras)  # mean reads every token: no first-token cache
    chosen = run.build(load_config(str(recipe), ["--classifier_pooling", "cls"]))
    assert chosen.model.config.classifier_pooling == "cls"
    assert any(isinstance(e, FeatureCache) for e in chosen.extras)
    with pytest.raises(HftlError, match="cache_features=memory is not possible here: the head pools every token"):
        run.build(load_config(str(recipe), ["--cache_features", "memory"]))

    other = _recipe(tmp_path / "d.yaml", "deberta-v3", tiny, images, sentiment_csv)
    message = cli_error(capsys, ["plan", str(other), "--classifier_pooling", "cls"])
    assert "`classifier_pooling`" in message and "deberta-v2" in message and "Drop `classifier_pooling`" in message
    assert cli_error(capsys, ["plan", str(recipe), "--classifier_pooling", "max"]).startswith(
        "Unknown classifier_pooling `max`")


@pytest.mark.parametrize("kind, warned", [("deberta-v3", True), ("modernbert", False)])
def test_fp16_warning_for_deberta(kind, warned, tiny, images, sentiment_csv, tmp_path, capsys):
    from hftl.engine.precision import KNOWN_BREAKS, warnings_for

    assert KNOWN_BREAKS[("deberta-v2", "fp16")].instead.startswith("`--fp16 false --bf16 true`")
    assert warnings_for("deberta-v2", fp16=False, bf16=True) == [] and warnings_for("bert", True, False) == []
    recipe = _recipe(tmp_path / "r.yaml", kind, tiny, images, sentiment_csv)
    assert main(["plan", str(recipe), "--fp16", "true"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("hftl: warning:")]
    if warned:
        assert len(lines) == 1 and "DeBERTa-v2/v3" in lines[0] and "fp16" in lines[0] and "--bf16 true" in lines[0]
        assert "NaN" in lines[0]  # the reason, not only the advice
    else:
        assert lines == []


# ---------------------------------------------------------------- 4. the CNN checkpoints' processors and sizes


def _random_image(width: int, height: int, seed: int):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("processor_kwargs", [
    dict(kind="convnext", size={"shortest_edge": 32}, crop_pct=0.875),  # ResNet and ConvNeXt checkpoints
    dict(kind="convnext", size={"shortest_edge": 384}),  # from 384 px on: warped, not cropped
    dict(kind="efficientnet", size={"height": 32, "width": 32}, include_top=True),
    dict(kind="efficientnet", size={"height": 32, "width": 32}, include_top=False, rescale_offset=True,
         rescale_factor=1 / 127.5),
], ids=["convnext-crop", "convnext-384", "efficientnet-top", "efficientnet-offset"])
def test_eval_transform_equals_the_cnn_processors(processor_kwargs):
    from transformers import ConvNextImageProcessor, EfficientNetImageProcessor

    from hftl.config import DataArgs
    from hftl.data.preprocess import Preprocess

    kwargs = dict(processor_kwargs)
    processor = (ConvNextImageProcessor if kwargs.pop("kind") == "convnext" else EfficientNetImageProcessor)(**kwargs)
    apply = Preprocess(processor, DataArgs()).transform("image", train=False)
    for seed, (w, h) in enumerate([(50, 40), (20, 30), (64, 48), (9, 9)]):
        image = _random_image(w, h, seed)
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        got = apply({"image": [image]})["pixel_values"][0].numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4, (w, h)


def test_image_size_on_a_cnn(tiny, tmp_path):
    """A CNN takes any size: no position table to resample; ConvNeXt's processor keeps its crop_pct at the new size."""
    from transformers import AutoImageProcessor

    from hftl.config import DataArgs
    from hftl.data.preprocess import Preprocess, set_image_size

    model = _model("convnext", tiny["convnext"])
    processor = AutoImageProcessor.from_pretrained(tiny["convnext"])
    preprocess = Preprocess(processor, DataArgs(image_size=48))
    assert preprocess.side == (48, 48) and processor.size["shortest_edge"] == 48
    set_image_size(model, 48)
    assert model.config.image_size == 48
    processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    image = _random_image(70, 50, 0)
    expected = reloaded(images=image, return_tensors="np")["pixel_values"][0]
    got = preprocess.transform("image", train=False)({"image": [image]})["pixel_values"][0].numpy()
    assert expected.shape == got.shape == (3, 48, 48) and np.abs(got - expected).max() < 1e-4
    with torch.no_grad():
        assert model(pixel_values=torch.from_numpy(got)[None]).logits.shape == (1, 3)


# ---------------------------------------------------------------- 5. BatchNorm statistics of frozen stages


def _statistics(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix) and k.endswith(("running_mean", "running_var"))}


def _moved(before: dict, after: dict, prefix: str) -> tuple[list[str], list[str]]:
    stats = _statistics(before, prefix)
    assert stats, prefix
    moved = [k for k in stats if not torch.equal(before[k], after[k])]
    return moved, [k for k in stats if k not in moved]


def test_frozen_batchnorm_keeps_its_statistics_through_the_trainer(tiny, images, sentiment_csv, tmp_path):
    """partial, the last stage trains; eval_frozen off (dropout would run in frozen modules), yet the frozen
    stages' BatchNorm layers stay in eval mode through every model.train() of the Trainer."""
    from safetensors.torch import load_file

    recipe = _recipe(tmp_path / "r.yaml", "resnet", tiny, images, sentiment_csv, strategy="partial", unfrozen_groups=1,
                     eval_frozen=False, cache_features="off", max_steps=3, per_device_train_batch_size=4)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", str(recipe)]) == 0
    before, after = load_file(tiny["resnet"] / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    for frozen in ("resnet.embedder.", "resnet.encoder.stages.0.", "resnet.encoder.stages.1.", "resnet.encoder.stages.2."):
        moved, _ = _moved(before, after, frozen)
        assert moved == [], f"frozen statistics moved: {moved}"
    moved, kept = _moved(before, after, "resnet.encoder.stages.3.")
    assert kept == [], f"the trainable stage's statistics did not move: {kept}"


@pytest.mark.parametrize("kind", ["resnet", "efficientnet"])
def test_batchnorm_modes_follow_the_phases(kind, tiny):
    """Gradual unfreezing: a waiting group's BatchNorm layers stay in eval mode across model.train() and switch
    to train mode (their statistics moving) in the phase the group joins, and back when a phase before it is
    entered again; eval_frozen is off, so the BatchNorm rule alone decides."""
    from hftl.engine.phases import Phases

    model = _model(kind, tiny[kind])
    plan = TransferPlan.build(model, strategy="full")
    plan.apply(eval_frozen=False)
    phases = Phases(plan, head_warmup_epochs=1, unfreeze_every=1, eval_frozen=False)
    owner = {n: g.name for g in plan.groups for n, _ in g.params}
    bn = {}  # backbone group -> its BatchNorm layers
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            bn.setdefault(owner[f"{name}.weight"], []).append(module)
    assert set(bn) == {g.name for g in plan.groups if not g.is_head}  # the stem and every stage normalise
    pixels = torch.randn(4, 3, 32, 32)
    top, below = f"layer.{BACKBONE_GROUPS[kind] - 1}", f"layer.{BACKBONE_GROUPS[kind] - 2}"
    for phase, training in [(0, set()), (1, {top}), (2, {top, below}), (1, {top})]:  # phase 1 again: `below` waits
        phases.enter(phase)
        model.train()  # as the Trainer does every step
        assert {g for g, norms in bn.items() if all(m.training for m in norms)} == training, phase
        assert all(not m.training for g in set(bn) - training for m in bn[g])
        before = {g: norms[0].running_var.clone() for g, norms in bn.items()}  # EfficientNet's top mean stays ~0
        model(pixel_values=pixels)
        assert {g for g, norms in bn.items() if not torch.equal(before[g], norms[0].running_var)} == training
    phases.close()


@pytest.mark.slow
def test_frozen_batchnorm_under_two_process_ddp(tiny, tmp_path):
    """2 ranks, gradual unfreezing (epoch 0 the head, epoch 1 the last stage joins), eval_frozen off: the saved
    model's frozen stages keep the checkpoint's statistics, the joined stage's statistics and weights moved,
    and the replicas agree."""
    from safetensors.torch import load_file

    data = write_folder(tmp_path / "images" / "train", classes=("blue", "red"), per_class=8)
    recipe = write_recipe(tmp_path / "r.yaml", task="image-classification", model_name_or_path=str(tiny["resnet"]),
                          dataset=str(data.parent), strategy="full", head_warmup_epochs=1, unfreeze_every=1,
                          eval_frozen=False, num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-2,
                          validation_split=0.25, output_dir=str(tmp_path / "out"), seed=0)
    launch(recipe, tmp_path)
    out = tmp_path / "out"
    assert json.loads((out / "replica_check.json").read_text())["in_sync"] is True
    before, after = load_file(tiny["resnet"] / "model.safetensors"), load_file(out / "model.safetensors")
    for frozen in ("resnet.embedder.", "resnet.encoder.stages.0.", "resnet.encoder.stages.1.", "resnet.encoder.stages.2."):
        moved, _ = _moved(before, after, frozen)
        assert moved == [], f"frozen statistics moved under DDP: {moved}"
    moved, kept = _moved(before, after, "resnet.encoder.stages.3.")
    assert kept == [], f"the joined stage's statistics did not move: {kept}"
    conv = "resnet.encoder.stages.3.layers.0.layer.1.convolution.weight"
    assert not torch.equal(before[conv], after[conv])


# ---------------------------------------------------------------- 6. families hftl cannot group, and the README


def test_a_family_hftl_cannot_group_names_the_closest(tmp_path, images, capsys):
    from transformers import MobileNetV1Config, MobileNetV1ForImageClassification, MobileNetV1ImageProcessor

    folder = tmp_path / "mobilenet"
    MobileNetV1ForImageClassification(MobileNetV1Config(depth_multiplier=0.25, image_size=32)).save_pretrained(folder)
    MobileNetV1ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    recipe = write_recipe(tmp_path / "r.yaml", task="image-classification", model_name_or_path=str(folder),
                          dataset=str(images), output_dir=str(tmp_path / "out"))
    message = cli_error(capsys, ["plan", str(recipe)])
    assert "hftl cannot map `MobileNetV1ForImageClassification`" in message
    assert "The closest supported family is ResNet" in message and "groups=" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type, class_name, convolutional, closest", [
    ("deberta-v3", "DebertaV3ForSequenceClassification", False, "DeBERTa-v2/v3"),  # by spelling
    ("gpt2", "GPT2ForSequenceClassification", False, "BERT"),  # a text model
    ("levit", "LevitForImageClassification", False, "ViT"),  # an image model without convolutions
    ("regnetz", "RegNetZForImageClassification", True, "ResNet"),  # an image model of convolutions
])
def test_closest_family(model_type, class_name, convolutional, closest):
    from types import SimpleNamespace

    model = type(class_name, (nn.Module,), {})()
    model.config = SimpleNamespace(model_type=model_type)
    model.body = nn.Conv2d(3, 4, 3) if convolutional else nn.Linear(4, 4)
    assert layers.closest_family(model).startswith(f"The closest supported family is {closest}:")


def test_readme_model_table_lists_every_family():
    text = (REPO / "README.md").read_text()
    table = text[text.index("<!-- families:start -->"):text.index("<!-- families:end -->")]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    for family in layers.FAMILIES.values():
        assert any(family in row for row in rows), family
