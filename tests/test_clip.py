"""Task clip: dual encoders (CLIPModel, VisionTextDualEncoderModel) on tiny checkpoints built from
configs and saved with their processors, so the real `from_pretrained` code runs: per-tower layer
groups, freeze plans and lrs; the contrastive loss (same-label positives, CLIP's own loss without
labels); zero-shot accuracy; the three modes through the CLI; WiSE-FT; captions from a CSV; bad
input; and (slow) 2-process DDP with and without gathered features. Nothing is downloaded."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import write_csv, write_recipe
from helpers import COLOURS, cli_error, colour_image, launch, make_tiny_clip, make_tiny_dual, snapshot, write_folder

from hftl.cli import main

TEXT_LAYERS = ["text.embeddings", "text.layer.0", "text.layer.1", "text.head"]
VISION_LAYERS = ["vision.embeddings", "vision.layer.0", "vision.layer.1", "vision.head"]
GROUPS = TEXT_LAYERS + VISION_LAYERS + ["logit_scale"]
FAST = dict(
    task="clip", clip_mode="contrastive", num_train_epochs=1, per_device_train_batch_size=8,
    per_device_eval_batch_size=16, learning_rate=1e-3, seed=0, prompt_templates=["a {label} image"],
)


# ---------------------------------------------------------------- fixtures (tiny_clip is in conftest.py)


@pytest.fixture(scope="module")
def tiny_dual(tmp_path_factory) -> Path:
    return make_tiny_dual(tmp_path_factory.mktemp("tiny-dual"))


@pytest.fixture(scope="module")
def models(tiny_clip, tiny_dual) -> dict[str, Path]:
    return {"clip": tiny_clip, "dual": tiny_dual}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """train/ (3 classes x 12) and test/ (3 classes x 4) image folders of blue, green and red images, 16-32 px."""
    root = tmp_path_factory.mktemp("clip-colours") / "images"
    write_folder(root / "train", classes=("blue", "green", "red"), per_class=12)
    write_folder(root / "test", classes=("blue", "green", "red"), per_class=4, start=50)
    return root


def _recipe(path: Path, **values) -> Path:
    return write_recipe(path, **{**FAST, **values})


def _train(*argv: str) -> str:
    """`hftl CMD ...` in-process; its stdout. Fails the test on a non-zero exit code."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(list(argv))
    assert rc == 0, buffer.getvalue()[-3000:]
    return buffer.getvalue()


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def _load(folder: Path):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


# ---------------------------------------------------------------- 0. the tiny checkpoints


@pytest.mark.parametrize("which", ["clip", "dual"])
def test_tiny_checkpoints_load_as_the_task_loads_them(which, models, tmp_path):
    from hftl.config import load_config
    from hftl.engine.layers import is_dual_encoder
    from hftl.tasks import clip
    from hftl.tasks.classification import Labels

    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(models[which]), dataset="unused")
    loaded = clip.Clip().build_model(load_config(str(recipe)), Labels(["blue", "red"], False, "label"))
    model, processor = loaded.model, loaded.processor
    assert type(model).__name__ == {"clip": "CLIPModel", "dual": "VisionTextDualEncoderModel"}[which]
    assert is_dual_encoder(model)
    tokens = processor.tokenizer.convert_ids_to_tokens(processor.tokenizer("a green image.")["input_ids"])
    words = [t.removesuffix("</w>") for t in tokens[1:-1]]
    assert words == ["a", "green", "image", "."]  # the label words are whole tokens, not unknowns
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=torch.zeros(1, 3, 32, 32)).pooler_output
    assert model.visual_projection(pooled).shape == (1, 16)


# ---------------------------------------------------------------- 1. per-tower layer groups, freeze plans and lrs

HEADS = {
    "clip": {
        "text.head": {"text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias", "text_projection.weight"},
        "vision.head": {"vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias", "visual_projection.weight"},
        "vision.embeddings": {"vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
                              "vision_model.embeddings.position_embedding.weight", "vision_model.pre_layrnorm.weight",
                              "vision_model.pre_layrnorm.bias"},
        "text.embeddings": {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight"},
        "blocks": ("text_model.encoder.layers.", "vision_model.encoder.layers."),
    },
    "dual": {
        "text.head": {"text_model.pooler.dense.weight", "text_model.pooler.dense.bias", "text_projection.weight"},
        "vision.head": {"vision_model.layernorm.weight", "vision_model.layernorm.bias", "vision_model.pooler.dense.weight",
                        "vision_model.pooler.dense.bias", "visual_projection.weight"},
        "vision.embeddings": {"vision_model.embeddings.cls_token", "vision_model.embeddings.position_embeddings",
                              "vision_model.embeddings.patch_embeddings.projection.weight",
                              "vision_model.embeddings.patch_embeddings.projection.bias"},
        "text.embeddings": {f"text_model.embeddings.{n}" for n in (
            "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight", "LayerNorm.weight",
            "LayerNorm.bias")},
        "blocks": ("text_model.encoder.layer.", "vision_model.layers."),
    },
}


@pytest.mark.parametrize("which", ["clip", "dual"])
def test_tower_layer_groups(which, models):
    from hftl.engine.layers import layer_groups

    model, _ = _load(models[which])
    groups = layer_groups(model)
    names = {g.name: [n for n, _ in g.params] for g in groups}
    assert list(names) == GROUPS
    every = [n for g in groups for n, _ in g.params]
    assert sorted(every) == sorted(n for n, _ in model.named_parameters())  # every parameter exactly once
    assert len(every) == len(set(every))
    expected = HEADS[which]
    for group in ("text.head", "vision.head", "vision.embeddings", "text.embeddings"):
        assert set(names[group]) == expected[group], group
    assert names["logit_scale"] == ["logit_scale"]
    text_blocks, vision_blocks = expected["blocks"]
    for i in range(2):
        assert names[f"text.layer.{i}"] and all(n.startswith(f"{text_blocks}{i}.") for n in names[f"text.layer.{i}"])
        assert names[f"vision.layer.{i}"] and all(n.startswith(f"{vision_blocks}{i}.") for n in names[f"vision.layer.{i}"])
        assert len(names[f"text.layer.{i}"]) == 16 and len(names[f"vision.layer.{i}"]) == 16
    assert [g.tower for g in groups] == ["text"] * 4 + ["vision"] * 4 + [None]
    assert [g.is_head for g in groups] == [False, False, False, True] * 2 + [True]


TOWER_PLAN = dict(
    vision_strategy="partial", vision_unfrozen_groups=1, vision_learning_rate=1e-3, vision_layer_decay=0.5,
    text_strategy="full", text_learning_rate=2e-4, text_layer_decay=0.8, head_lr=5e-3, learning_rate=1e-2,
    weight_decay=0.1, strategy="feature_extraction", layer_decay=0.3,  # the recipe-wide values the towers override
)
EXPECTED_LR = {
    "text.embeddings": 2e-4 * 0.8**2, "text.layer.0": 2e-4 * 0.8, "text.layer.1": 2e-4, "text.head": 5e-3,
    "vision.embeddings": 1e-3 * 0.5**2, "vision.layer.0": 1e-3 * 0.5, "vision.layer.1": 1e-3, "vision.head": 5e-3,
    "logit_scale": 1e-2,
}
EXPECTED_TRAINS = {g: g not in ("vision.embeddings", "vision.layer.0") for g in GROUPS}
CLIP_BLOCK = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
VIT_BLOCK = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2")
BERT_BLOCK = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense")


def _block_weights(prefix: str, layers: tuple[str, ...]) -> set[str]:
    return {f"{prefix}{i}.{layer}.weight" for i in range(2) for layer in layers}


# Weight decay falls on the weight matrices of the linear, convolution and token-embedding layers, written out here;
# every other parameter (biases, norms, position embeddings, class tokens, logit_scale) gets none.
DECAYED = {
    "clip": {"text_model.embeddings.token_embedding.weight", "vision_model.embeddings.patch_embedding.weight",
             "text_projection.weight", "visual_projection.weight"}
    | _block_weights("text_model.encoder.layers.", CLIP_BLOCK) | _block_weights("vision_model.encoder.layers.", CLIP_BLOCK),
    "dual": {"text_model.embeddings.word_embeddings.weight", "text_model.embeddings.token_type_embeddings.weight",
             "text_model.pooler.dense.weight", "vision_model.embeddings.patch_embeddings.projection.weight",
             "vision_model.pooler.dense.weight", "text_projection.weight", "visual_projection.weight"}
    | _block_weights("text_model.encoder.layer.", BERT_BLOCK) | _block_weights("vision_model.layers.", VIT_BLOCK),
}
NOT_DECAYED_ALTHOUGH_NOT_A_BIAS_OR_NORM = {
    "clip": {"logit_scale", "text_model.embeddings.position_embedding.weight", "vision_model.embeddings.class_embedding",
             "vision_model.embeddings.position_embedding.weight"},
    "dual": {"logit_scale", "text_model.embeddings.position_embeddings.weight", "vision_model.embeddings.cls_token",
             "vision_model.embeddings.position_embeddings"},
}


@pytest.mark.parametrize("which", ["clip", "dual"])
def test_tower_freeze_plan_and_lrs_through_build(which, models, colours, tmp_path):
    from hftl.config import load_config
    from hftl.commands.train import build

    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(models[which]), dataset=str(colours),
                     output_dir=str(tmp_path / "out"), **TOWER_PLAN)
    built = build(load_config(str(recipe)))
    assert [g.name for g in built.groups] == GROUPS
    for group in built.groups:
        states = {p.requires_grad for _, p in group.params}
        assert states == {EXPECTED_TRAINS[group.name]}, group.name
        for name, _ in group.params:
            a = built.assignment[name]
            assert a.lr == pytest.approx(EXPECTED_LR[group.name], rel=1e-12), name  # frozen groups keep their lr too
            assert a.weight_decay == (0.1 if name in DECAYED[which] else 0.0), name
    assert len(DECAYED[which]) == {"clip": 4 + 2 * 2 * 6, "dual": 7 + 2 * 2 * 6}[which]
    assert {n for n, a in built.assignment.items() if a.weight_decay == 0.1} == DECAYED[which]
    no_decay = {n for n, a in built.assignment.items() if a.weight_decay == 0.0}
    assert no_decay == set(built.assignment) - DECAYED[which] and NOT_DECAYED_ALTHOUGH_NOT_A_BIAS_OR_NORM[which] <= no_decay
    assert built.assignment["logit_scale"].weight_decay == 0.0 and built.assignment["logit_scale"].group == "logit_scale/no_decay"
    assert {r.group: r.status for r in built.rows} == {g: "trainable" if t else "frozen" for g, t in EXPECTED_TRAINS.items()}
    assert {r.group: r.lr for r in built.rows} == pytest.approx(EXPECTED_LR)

    pinned = load_config(str(recipe), ["--freeze", "^logit_scale$"])
    built = build(pinned)
    state = {n: p.requires_grad for n, p in built.model.named_parameters()}
    assert state.pop("logit_scale") is False
    assert state == {n: EXPECTED_TRAINS[g.name] for g in built.groups for n, _ in g.params if n != "logit_scale"}


def test_tower_settings_fall_back_to_the_recipe_wide_ones(tiny_clip, colours, tmp_path):
    from hftl.config import load_config
    from hftl.commands.train import build

    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(tmp_path / "o"),
                     strategy="partial", unfrozen_groups=2, learning_rate=1e-3, layer_decay=0.5, vision_strategy="feature_extraction")
    built = build(load_config(str(recipe)))
    trains = {g.name: any(p.requires_grad for _, p in g.params) for g in built.groups}
    assert trains == {"text.embeddings": False, "text.layer.0": True, "text.layer.1": True, "text.head": True,
                      "vision.embeddings": False, "vision.layer.0": False, "vision.layer.1": False, "vision.head": True,
                      "logit_scale": True}
    lrs = {r.group: r.lr for r in built.rows}
    assert lrs == pytest.approx({"text.embeddings": 2.5e-4, "text.layer.0": 5e-4, "text.layer.1": 1e-3, "text.head": 1e-3,
                                 "vision.embeddings": 2.5e-4, "vision.layer.0": 5e-4, "vision.layer.1": 1e-3,
                                 "vision.head": 1e-3, "logit_scale": 1e-3})


def test_frozen_tower_parts_do_not_move_in_training(tiny_clip, colours, tmp_path):
    """vision feature_extraction, text partial (top block): with weight decay on, only text.layer.1, the heads and
    logit_scale change; everything else is bit-for-bit the checkpoint's."""
    from safetensors.torch import load_file

    from hftl.engine.layers import layer_groups

    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(out),
                     vision_strategy="feature_extraction", text_strategy="partial", text_unfrozen_groups=1,
                     weight_decay=0.1, learning_rate=1e-2, head_lr=1e-2, num_train_epochs=1)
    _train("train", str(recipe))
    original, trained = load_file(tiny_clip / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(original) == set(trained)
    model, _ = _load(tiny_clip)
    group_of = {n: g.name for g in layer_groups(model) for n, _ in g.params}
    moving = {"text.layer.1", "text.head", "vision.head", "logit_scale"}
    changed = {k for k in original if not torch.equal(original[k], trained[k])}
    assert {k for k in original if group_of[k] not in moving} & changed == set()  # frozen: untouched, decay included
    assert {k for k in original if group_of[k] in moving} == changed  # every trainable tensor moved


# ---------------------------------------------------------------- 2. the contrastive loss

CAPTIONS = {"blue": "a photo of the blue sky", "green": "an image of green grass", "red": "a red fire"}


def _batch(folder: Path, labels: list[int] | None = None) -> dict:
    """One image of each colour with its own caption, as the task's collator would give them."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    images = [colour_image(c, (32, 32), seed=i) for i, c in enumerate(COLOURS)]
    text = processor.tokenizer(list(CAPTIONS.values()), padding=True, return_tensors="pt")
    batch = {"pixel_values": processor.image_processor(images=images, return_tensors="pt")["pixel_values"],
             "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}
    if labels is not None:
        batch["labels"] = torch.tensor(labels)
    return batch


@pytest.mark.parametrize("which", ["clip", "dual"])
def test_contrastive_loss_falls_on_a_learnable_pairing(which, models):
    from hftl.tasks.clip import contrastive_loss

    model, _ = _load(models[which])
    model.train()
    batch = _batch(models[which])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, _ = contrastive_loss(model, dict(batch), model.logit_scale, gather=False)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5  # random towers: about log(3), not yet paired
    assert losses[-1] < 0.1 * losses[0], losses[::5]
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    assert out.logits_per_image.argmax(-1).tolist() == [0, 1, 2]  # each image picks its own caption


class _Fixed(nn.Module):
    """A stand-in dual encoder whose forward returns fixed, normalised embeddings."""

    def __init__(self, image: torch.Tensor, text: torch.Tensor):
        super().__init__()
        self.image, self.text = nn.functional.normalize(image, dim=-1), nn.functional.normalize(text, dim=-1)

    def forward(self, input_ids, attention_mask, pixel_values):
        return SimpleNamespace(image_embeds=self.image, text_embeds=self.text)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with target distributions, written out: mean over rows of -sum t * log softmax."""
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(targets * log_p).sum(1).mean()


def test_same_label_examples_are_positives():
    from hftl.tasks.clip import contrastive_loss

    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(4, 8, generator=g, dtype=torch.float64)
    model = _Fixed(image, text)
    i, t = model.image, model.text
    scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    dummy = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3, dtype=torch.long),
             "pixel_values": torch.zeros(4, 3, 32, 32)}
    labels = torch.tensor([1, 0, 1, 2])  # rows 0 and 2 share a label
    targets = torch.tensor([[0.5, 0, 0.5, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 1]], dtype=torch.float64)
    expected = (_soft_ce(20 * i @ t.T, targets) + _soft_ce(20 * t @ i.T, targets)) / 2
    inputs = {**dummy, "labels": labels}
    loss, _ = contrastive_loss(model, inputs, scale, gather=False)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)

    eye = torch.eye(4, dtype=torch.float64)
    hard = (_soft_ce(20 * i @ t.T, eye) + _soft_ce(20 * t @ i.T, eye)) / 2
    assert abs(hard.item() - expected.item()) > 1e-3  # the soft targets matter here
    loss, _ = contrastive_loss(model, {**dummy, "labels": torch.tensor([3, 0, 1, 2])}, scale, gather=False)
    assert loss.item() == pytest.approx(hard.item(), rel=1e-9)  # all labels distinct: CLIP's diagonal
    loss, _ = contrastive_loss(model, dict(dummy), scale, gather=False)
    assert loss.item() == pytest.approx(hard.item(), rel=1e-9)  # no labels: the diagonal
    loss, _ = contrastive_loss(model, dict(dummy), torch.tensor(10.0, dtype=torch.float64), gather=False)
    assert loss.item() == pytest.approx(((_soft_ce(100 * i @ t.T, eye) + _soft_ce(100 * t @ i.T, eye)) / 2).item(),
                                        rel=1e-9)  # exp(logit_scale) is clamped at 100, as in CLIP


@pytest.mark.parametrize("which", ["clip", "dual"])
def test_loss_without_labels_equals_the_models_own(which, models):
    """The non-gathered path is CLIP's loss; in one process gathering changes nothing."""
    from hftl.tasks.clip import contrastive_loss

    model, _ = _load(models[which])
    batch = _batch(models[which])
    with torch.no_grad():
        model.logit_scale.fill_(math.log(30.0))  # not the init value, so a wrong scale would show
        own = model(**batch, return_loss=True).loss
        ours, outputs = contrastive_loss(model, dict(batch), model.logit_scale, gather=False)
        gathered, _ = contrastive_loss(model, dict(batch), model.logit_scale, gather=True)
    assert own.item() > 0.1
    assert ours.item() == pytest.approx(own.item(), rel=1e-5)
    assert gathered.item() == pytest.approx(own.item(), rel=1e-5)
    assert outputs.image_embeds.shape == (3, 16)


def test_loss_fn_leaves_the_batch_alone(tiny_clip, tmp_path):
    from hftl.config import load_config
    from hftl.tasks import clip

    model, _ = _load(tiny_clip)
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset="unused")
    compute = clip.Clip().loss_fn(load_config(str(recipe)))
    trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    batch = _batch(tiny_clip, labels=[0, 0, 1])
    with torch.no_grad():
        loss, outputs = compute(trainer, model, batch, return_outputs=True)
        alone = compute(trainer, model, batch)
        expected, _ = clip.contrastive_loss(model, dict(batch), model.logit_scale, gather=False)
    assert batch["labels"].tolist() == [0, 0, 1]
    assert loss.item() == alone.item() == pytest.approx(expected.item())
    assert hasattr(outputs, "logits_per_image")


# ---------------------------------------------------------------- 3. zero-shot classification

RGB = ["red", "green", "blue"]  # the channel each class is brightest in


class _ChannelModel(nn.Module):
    """A dual encoder whose answer is known: an image's embedding is its mean per channel (R, G, B); a text's is
    the one-hot of the colour word it names (red, green, blue), plus a component shared by all texts."""

    def __init__(self, tokenizer):
        super().__init__()
        self.word_ids = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in RGB]
        self.text_model = self._Text(self.word_ids)
        self.vision_model = self._Vision()
        self.text_projection = nn.Identity()
        self.visual_projection = nn.Identity()

    class _Text(nn.Module):
        def __init__(self, word_ids):
            super().__init__()
            self.word_ids = word_ids

        def forward(self, input_ids, attention_mask=None, **_):
            hot = torch.stack([(input_ids == w).any(1).float() for w in self.word_ids], dim=1)
            return SimpleNamespace(pooler_output=hot + 0.2 * attention_mask.sum(1, keepdim=True).float() / 10)

    class _Vision(nn.Module):
        def forward(self, pixel_values):
            return SimpleNamespace(pooler_output=pixel_values.mean((2, 3)))


def test_zero_shot_accuracy_with_a_known_answer(tiny_clip):
    from transformers import AutoProcessor

    from hftl.tasks.zero_shot import class_embeddings, zero_shot_accuracy

    processor = AutoProcessor.from_pretrained(tiny_clip)
    model = _ChannelModel(processor.tokenizer).train()
    images = [colour_image(c, (28, 20), seed=i) for i in range(3) for c in RGB]
    rows = [{"pixel_values": processor.image_processor(images=im, return_tensors="pt")["pixel_values"][0], "labels": i % 3}
            for i, im in enumerate(images)]
    prompts = ["a {label} image", "a photo of the {label} sky"]
    classes = class_embeddings(model, processor.tokenizer, RGB, prompts, "cpu")
    assert classes.shape == (3, 3) and torch.allclose(classes.norm(dim=-1), torch.ones(3))
    assert classes.argmax(-1).tolist() == [0, 1, 2]
    assert zero_shot_accuracy(model, processor, rows, RGB, prompts, "cpu", batch_size=4) == 1.0
    assert model.training  # the mode is given back
    shifted = RGB[1:] + RGB[:1]  # class i now named after the colour of class i + 1: every answer wrong
    assert zero_shot_accuracy(model, processor, rows, shifted, prompts, "cpu", batch_size=4) == 0.0
    only_red = [r for r in rows if r["labels"] == 0]
    assert zero_shot_accuracy(model, processor, only_red, RGB, prompts, "cpu", batch_size=2) == 1.0


@pytest.mark.parametrize("which", ["clip", "dual"])
def test_class_embeddings_average_the_normalised_template_embeddings(which, models):
    from hftl.tasks.zero_shot import class_embeddings

    model, processor = _load(models[which])
    prompts = ["a {label} image", "a photo of the {label} sky", "{label}"]
    names = ["blue", "green", "red"]
    got = class_embeddings(model, processor.tokenizer, names, prompts, "cpu")
    pixels = torch.zeros(1, 3, 32, 32)
    expected = []
    for name in names:
        rows = []
        for prompt in prompts:  # one text at a time through the model's own forward: no padding
            text = processor.tokenizer([prompt.format(label=name)], return_tensors="pt")
            with torch.no_grad():
                rows.append(model(**text, pixel_values=pixels).text_embeds[0])  # normalised by the model
        mean = torch.stack(rows).mean(0)
        expected.append(mean / mean.norm())
    expected = torch.stack(expected)
    assert got.shape == (3, 16)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got - expected).abs().max() < 1e-5 < (got[0] - got[1]).abs().max()


def _hf_zero_shot(folder: Path, images: list[Path], labels: list[int], names: list[str], prompt: str) -> float:
    """Zero-shot accuracy through the checkpoint's own processor and forward (one template)."""
    from PIL import Image

    model, processor = _load(folder)
    text = processor.tokenizer([prompt.format(label=n) for n in names], padding=True, return_tensors="pt")
    pixels = processor.image_processor(images=[Image.open(p).convert("RGB") for p in images], return_tensors="pt")
    with torch.no_grad():
        logits = model(**text, pixel_values=pixels["pixel_values"]).logits_per_image
    return float((logits.argmax(-1) == torch.tensor(labels)).float().mean())


def _test_images(colours: Path) -> tuple[list[Path], list[int]]:
    files = sorted((colours / "test").rglob("*.png"))
    names = ["blue", "green", "red"]
    return files, [names.index(f.parent.name) for f in files]


CONTRASTIVE = dict(num_train_epochs=8, learning_rate=1e-3, per_device_train_batch_size=8)  # 32 steps, ~1 s


@pytest.fixture(scope="module")
def trained_dual(tiny_dual, colours, tmp_path_factory):
    """`hftl train` contrastive on the colour folder (train/ and test/): the recipe, its output_dir, stdout."""
    root = tmp_path_factory.mktemp("trained-dual")
    out = root / "run"
    recipe = _recipe(root / "recipe.yaml", model_name_or_path=str(tiny_dual), dataset=str(colours),
                     output_dir=str(out), **CONTRASTIVE)
    return {"recipe": recipe, "out": out, "stdout": _train("train", str(recipe))}


def test_contrastive_training_improves_zero_shot(trained_dual, tiny_dual, colours):
    out = trained_dual["out"]
    results = _results(out)
    before, after = results["zero_shot_test_accuracy_before"], results["zero_shot_test_accuracy_after"]
    assert after >= 0.9 and after > before  # 3 clearly different colours; chance is 1/3
    assert not any(k.startswith("zero_shot_validation") for k in results)  # measured on test, the held-out split
    assert math.isfinite(results["train_loss"]) and results["train_loss"] > 0
    stdout = trained_dual["stdout"]
    assert "vision.layer.1" in stdout and "logit_scale" in stdout  # the per-tower plan table was printed
    for name in ("README.md", "hftl_config.yaml", "plan.md", "model.safetensors", "config.json"):
        assert (out / name).is_file(), name
    assert "zero_shot_test_accuracy_after" in (out / "README.md").read_text()

    from transformers import AutoModel

    model = AutoModel.from_pretrained(out)
    assert type(model).__name__ == "VisionTextDualEncoderModel"
    original = AutoModel.from_pretrained(tiny_dual)
    assert not torch.equal(model.text_projection.weight, original.text_projection.weight)  # it trained
    files, labels = _test_images(colours)
    names = ["blue", "green", "red"]
    assert _hf_zero_shot(out, files, labels, names, "a {label} image") == pytest.approx(after)
    assert _hf_zero_shot(tiny_dual, files, labels, names, "a {label} image") == pytest.approx(before)


def test_contrastive_run_reports_held_out_losses(trained_dual):
    results = _results(trained_dual["out"])  # 4 validation and 12 test images, per_device_eval_batch_size 16
    assert math.isfinite(results["eval_loss"]) and math.isfinite(results["test_loss"])


# ---------------------------------------------------------------- 4. modes: zero_shot and linear_probe


def test_zero_shot_mode_evaluates_and_trains_nothing(trained_dual, tiny_dual, colours, tmp_path):
    runs = {}
    sizes = {"zero_shot_test_accuracy": 12, "zero_shot_validation_accuracy": 4}  # 3 x 4 test images; 10% of 36 carved
    for name, model in (("untrained", tiny_dual), ("trained", trained_dual["out"])):
        out = tmp_path / name
        recipe = _recipe(tmp_path / f"{name}.yaml", model_name_or_path=str(model), dataset=str(colours),
                         clip_mode="zero_shot", output_dir=str(out))
        stdout = _train("train", str(recipe))
        runs[name] = _results(out)
        assert set(runs[name]) - {"trainable_params", "peak_rss_mb"} == {"zero_shot_test_accuracy", "zero_shot_validation_accuracy"}
        assert runs[name]["trainable_params"] == 0
        for key, n in sizes.items():  # a share of the split's n images, each one right or wrong
            assert runs[name][key] * n == pytest.approx(round(runs[name][key] * n)), (key, runs[name][key])
        assert (out / "README.md").is_file() and (out / "hftl_config.yaml").is_file()
        assert not list(out.glob("*.safetensors")) and not list(out.glob("checkpoint-*"))  # nothing trained or saved
        assert not (out / "trainer_state.json").exists()
        assert "zero_shot_test_accuracy" in stdout
    trained = _results(trained_dual["out"])
    assert runs["untrained"]["zero_shot_test_accuracy"] == pytest.approx(trained["zero_shot_test_accuracy_before"])
    assert runs["trained"]["zero_shot_test_accuracy"] == pytest.approx(trained["zero_shot_test_accuracy_after"])
    # the contrastively trained towers tell the 3 colours apart on the carved validation images too (chance is 1/3)
    assert runs["trained"]["zero_shot_validation_accuracy"] >= 0.75 > runs["untrained"]["zero_shot_validation_accuracy"]


def test_linear_probe_starts_at_zero_shot():
    from hftl.commands.clip_eval import LinearProbe

    g = torch.Generator().manual_seed(0)
    classes = nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    features = nn.functional.normalize(torch.randn(50, 16, generator=g), dim=-1)
    probe = LinearProbe(classes, 14.0)
    logits = probe(features)["logits"]
    assert torch.allclose(logits, 14.0 * features @ classes.T, atol=1e-5)
    labels = torch.arange(50) % 4
    expected = nn.functional.cross_entropy(14.0 * features @ classes.T, labels)
    assert probe(features, labels)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_linear_probe_mode(tiny_clip, colours, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "probe"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), clip_mode="linear_probe",
                     augment=False, head_lr=0.05, num_train_epochs=10, eval_strategy="epoch", output_dir=str(out))
    stdout = _train("train", str(recipe))
    assert "cached 32 train image embeddings of size 16" in stdout
    results = _results(out)
    assert results["test_accuracy"] >= max(results["zero_shot_test_accuracy"], 0.9)  # an easy colour task
    assert results["eval_accuracy"] >= 0.75 and math.isfinite(results["test_loss"])  # 4 validation images, chance 1/3
    assert json.loads((out / "linear_probe_labels.json").read_text()) == ["blue", "green", "red"]
    probe = load_file(out / "linear_probe.safetensors")
    assert probe["weight"].shape == (3, 16) and probe["bias"].shape == (3,)
    assert (out / "README.md").is_file() and (out / "trainer_state.json").is_file()
    assert not (out / "model.safetensors").exists()  # the towers are not saved again: they did not change
    zero_shot = tmp_path / "zero-shot"  # the probe's "before" comes from its cached embeddings: the same figure
    _train("train", str(recipe), "--clip_mode", "zero_shot", "--output_dir", str(zero_shot))
    assert results["zero_shot_test_accuracy"] == pytest.approx(_results(zero_shot)["zero_shot_test_accuracy"])

    from PIL import Image

    model, processor = _load(tiny_clip)  # the saved probe over the checkpoint's own image embeddings
    files, labels = _test_images(colours)
    pixels = processor.image_processor(images=[Image.open(p).convert("RGB") for p in files], return_tensors="pt")
    text = processor.tokenizer(["a blue image"], return_tensors="pt")
    with torch.no_grad():
        image = model(**text, pixel_values=pixels["pixel_values"]).image_embeds
    predicted = (image @ probe["weight"].T + probe["bias"]).argmax(-1)
    assert float((predicted == torch.tensor(labels)).float().mean()) == pytest.approx(results["test_accuracy"])


# ---------------------------------------------------------------- 5. WiSE-FT


def test_interpolate_endpoints_and_midpoint(tiny_dual, tmp_path):
    from transformers import AutoModel

    from hftl.commands.wise_ft import interpolate

    a = AutoModel.from_pretrained(tiny_dual).state_dict()
    b = AutoModel.from_pretrained(make_tiny_dual(tmp_path / "other", seed=7)).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    a_before = {k: v.clone() for k, v in a.items()}
    for alpha, end in ((0.0, a), (1.0, b), (0, a), (1, b)):
        mixed = interpolate(a, b, alpha)
        assert set(mixed) == set(a)
        assert all(torch.equal(mixed[k], end[k]) and mixed[k].dtype == end[k].dtype for k in a), alpha
        assert all(mixed[k].data_ptr() != end[k].data_ptr() for k in a)  # copies, not the endpoint's tensors
    half = interpolate(a, b, 0.5)
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(half[k], (a[k] + b[k]) / 2, atol=1e-7), k
    quarter = interpolate(a, b, 0.25)
    k = "text_projection.weight"
    assert torch.allclose(quarter[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-7)
    assert all(torch.equal(a[k], a_before[k]) for k in a)  # the inputs are untouched


def test_interpolate_refuses_mismatched_checkpoints(tiny_dual, tmp_path):
    from transformers import AutoModel

    from hftl.errors import HftlError
    from hftl.commands.wise_ft import interpolate

    a = AutoModel.from_pretrained(tiny_dual).state_dict()
    wide = AutoModel.from_pretrained(make_tiny_dual(tmp_path / "p8", projection_dim=8)).state_dict()
    with pytest.raises(HftlError, match=r"_projection.weight` is \(16, 32\) in the zero-shot model and \(8, 32\) in the fine-tuned"):
        interpolate(a, wide, 0.5)
    fewer = {k: v for k, v in a.items() if k != "logit_scale"}
    with pytest.raises(HftlError, match="only in the zero-shot model \\['logit_scale'\\]"):
        interpolate(a, fewer, 0.5)


def test_wise_ft_cli_table_and_plot(trained_dual, tiny_dual, colours, tmp_path):
    out = trained_dual["out"]
    before = snapshot(out)
    stdout = _train("wise-ft", str(trained_dual["recipe"]), "--alphas", "0,0.5,1")
    folder = out / "wise-ft"
    for name in ("wise_ft.md", "wise_ft.csv", "wise_ft.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    with open(folder / "wise_ft.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.5, 1.0]
    accuracy = [float(r["zero_shot_test_accuracy"]) for r in rows]
    results = _results(out)
    assert accuracy[0] == pytest.approx(results["zero_shot_test_accuracy_before"])
    assert accuracy[2] == pytest.approx(results["zero_shot_test_accuracy_after"])
    # the midpoint's accuracy is that of the averaged weights, evaluated here through the checkpoint's own forward
    from transformers import AutoModel, AutoProcessor

    zero_shot, fine_tuned = AutoModel.from_pretrained(tiny_dual).state_dict(), AutoModel.from_pretrained(out).state_dict()
    midpoint = AutoModel.from_pretrained(tiny_dual)
    midpoint.load_state_dict({k: (v + fine_tuned[k]) / 2 if v.is_floating_point() else v for k, v in zero_shot.items()})
    midpoint.save_pretrained(tmp_path / "midpoint")
    AutoProcessor.from_pretrained(out).save_pretrained(tmp_path / "midpoint")
    files, labels = _test_images(colours)
    assert accuracy[1] == pytest.approx(_hf_zero_shot(tmp_path / "midpoint", files, labels, ["blue", "green", "red"], "a {label} image"))
    table = (folder / "wise_ft.md").read_text()
    assert table.count("\n| ") == 4 and "| 0.50 |" in table  # header + 3 rows
    assert "alpha 0.50" in stdout
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("wise-ft/")} == before  # the run itself is untouched


# ---------------------------------------------------------------- 6. bad input through the CLI


def _refused(capsys, previous_run, recipe: Path, *extra: str, command: str = "train") -> str:
    """Exit 2, one message, no traceback, and the earlier run in output_dir untouched (overwrite allowed)."""
    before = snapshot(previous_run)
    message = cli_error(capsys, [command, str(recipe), "--overwrite_output_dir", "true", *extra])
    assert snapshot(previous_run) == before
    return message


def _caption_rows(folder: Path, n: int) -> list[dict]:
    """n images of the 3 colours under folder/pics, with a caption each (paths relative to folder)."""
    (folder / "pics").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = ("blue", "green", "red")[i % 3]
        colour_image(colour, (24, 24), seed=i).save(folder / "pics" / f"{colour}_{i}.png")
        rows.append({"image": f"pics/{colour}_{i}.png", "caption": CAPTIONS[colour]})
    return rows


def test_data_without_captions_or_labels(tiny_clip, tmp_path, previous_run, capsys):
    rows = [{"image": r["image"], "notes": "seen on a tuesday"} for r in _caption_rows(tmp_path, 9)]
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), train_file=str(write_csv(tmp_path / "t.csv", rows)),
                     output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "`caption`" in message and "caption_column" in message and "label_column" in message
    assert "image, notes" in message  # the columns it has
    message = _refused(capsys, previous_run, recipe, "--caption_column", "notes", "--clip_mode", "zero_shot")
    assert "zero_shot" in message and "label column" in message  # zero-shot needs classes, not captions


def test_empty_caption_is_named_by_its_row(tiny_clip, tmp_path, previous_run, capsys):
    rows = _caption_rows(tmp_path, 18)
    rows[7]["caption"] = "   "
    train = write_csv(tmp_path / "train.csv", rows[:12])
    validation = write_csv(tmp_path / "validation.csv", rows[12:])
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), train_file=str(train),
                     validation_file=str(validation), output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "empty caption" in message and "`caption`" in message and "train" in message
    assert "pics/green_7.png" in message  # the image whose caption is empty


def test_empty_caption_row_names_the_file_row_when_validation_is_carved(tiny_clip, tmp_path, previous_run, capsys):
    rows = _caption_rows(tmp_path, 20)
    rows[7]["caption"] = ""
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), train_file=str(write_csv(tmp_path / "t.csv", rows)),
                     output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "empty caption" in message
    assert "red_7.png" in message or "blue_7.png" in message or "green_7.png" in message, message


def test_unreadable_image_is_named(tiny_clip, tmp_path, previous_run, capsys):
    folder = write_folder(tmp_path / "images", classes=("blue", "red"), per_class=6)
    (folder / "blue" / "x.png").write_text("this is text, not a picture\n")
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(folder), output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "x.png" in message and "cannot be read" in message and "bad_images" in message


@pytest.mark.parametrize("templates, expected", [
    (["a photo of a thing"], "has no `{label}`"),
    (["a {label} image", "a photo"], "`a photo` has no `{label}`"),
    (["a {label} of {colour}"], "not a valid format string"),
    (["a {label} image {"], "not a valid format string"),
])
def test_prompt_templates_must_name_the_label(templates, expected, tiny_clip, colours, tmp_path, previous_run, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), prompt_templates=templates,
                     output_dir=str(previous_run))
    assert expected in _refused(capsys, previous_run, recipe)
    good = _recipe(tmp_path / "good.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(previous_run))
    assert expected in _refused(capsys, previous_run, good, "--prompt_templates", *templates)  # the same on the command line


@pytest.mark.parametrize("alphas", ["0,1.5", "-0.5,1", "0,half,1", ","])
def test_wise_ft_alphas_out_of_range(alphas, trained_dual, capsys):
    out = trained_dual["out"]
    before = snapshot(out)
    message = cli_error(capsys, ["wise-ft", str(trained_dual["recipe"]), f"--alphas={alphas}"])
    assert "--alphas" in message and "between 0" in message and f"`{alphas}`" in message
    if alphas == "0,1.5":
        message = cli_error(capsys, ["wise-ft", str(trained_dual["recipe"]), "--alphas", alphas])  # as two words, too
        assert "--alphas" in message
    assert snapshot(out) == before


def _vit_classifier(path: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=8, num_labels=3)
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.mark.parametrize("other", ["projection_dim", "vit_classifier", "clip", "missing"])
def test_wise_ft_between_different_checkpoints(other, trained_dual, tmp_path, capsys):
    fine_tuned = {
        "projection_dim": lambda: make_tiny_dual(tmp_path / "p8", projection_dim=8),
        "vit_classifier": lambda: _vit_classifier(tmp_path / "vit"),
        "clip": lambda: make_tiny_clip(tmp_path / "clip"),
        "missing": lambda: tmp_path / "nothing-here",
    }[other]()
    watched = [trained_dual["out"]] + ([fine_tuned] if fine_tuned.exists() else [])
    before = [snapshot(f) for f in watched]
    message = cli_error(capsys, ["wise-ft", str(trained_dual["recipe"]), "--alphas", "0,1", "--fine_tuned", str(fine_tuned)])
    expected = {
        "projection_dim": "is (16, 32) in the zero-shot model and (8, 32) in the fine-tuned one",
        "vit_classifier": "the zero-shot model is VisionTextDualEncoderModel",
        "clip": "holds CLIPModel",
        "missing": "holds no fine-tuned model",
    }[other]
    assert expected in message and (str(fine_tuned) in message or other == "projection_dim")
    assert [snapshot(f) for f in watched] == before
    assert not (fine_tuned / "wise-ft").exists()


def test_wise_ft_needs_a_clip_recipe(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path="unused", dataset="unused")  # text-classification
    assert "task `text-classification` has no zero-shot metrics" in cli_error(capsys, ["wise-ft", str(recipe)])


def test_train_split_smaller_than_one_batch_still_trains_and_reports_losses(tiny_clip, tmp_path):
    """No batch is dropped: 6 training images with batch 8 make one short batch, and evaluation keeps its last one."""
    folder = write_folder(tmp_path / "images", classes=("blue", "red"), per_class=4)
    out = tmp_path / "out"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(folder), validation_split=0.25,
                     output_dir=str(out))
    assert main(["train", str(recipe)]) == 0
    metrics = json.loads((out / "all_results.json").read_text())
    assert metrics["train_loss"] > 0 and "eval_loss" in metrics


@pytest.mark.parametrize("extra, expected", [
    (["--clip_mode", "zeroshot"], "Unknown clip_mode `zeroshot`. Did you mean `zero_shot`? Choose one of: contrastive, zero_shot, linear_probe"),
    (["--strategy", "lora"], "strategy `lora` is not available for task clip: use feature_extraction, partial, full"),
    (["--text_strategy", "lora"], "Unknown text_strategy `lora`. Choose one of: feature_extraction, partial, full"),
    (["--vision_strategy", "partail"], "Unknown vision_strategy `partail`. Did you mean `partial`?"),
    (["--unfreeze_every", "1"], "not available for task clip"),
    (["--freeze", "^no_such_parameter$"], "matches no parameter"),
    (["--image_size", "48"], "image_size is available for DINOv2 vision towers"),
])
def test_settings_a_dual_encoder_refuses(extra, expected, tiny_clip, colours, tmp_path, previous_run, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(previous_run))
    assert expected in _refused(capsys, previous_run, recipe, *extra)
    assert expected in cli_error(capsys, ["plan", str(recipe), *extra])


def test_cached_features_are_refused(tiny_clip, colours, tmp_path, previous_run, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(previous_run),
                     strategy="feature_extraction", cache_features="memory")
    assert "does not support cached features" in _refused(capsys, previous_run, recipe)


@pytest.mark.parametrize("mode", ["zero_shot", "linear_probe"])
def test_modes_refuse_an_earlier_runs_output_dir(mode, tiny_clip, colours, tmp_path, previous_run, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), clip_mode=mode,
                     output_dir=str(previous_run))
    before = snapshot(previous_run)
    assert "already holds files" in cli_error(capsys, ["train", str(recipe)])
    assert snapshot(previous_run) == before


@pytest.mark.parametrize("extra", [["--vision_layer_decay", "0"], ["--text_layer_decay", "-0.5"],
                                   ["--text_learning_rate", "-0.001"]])
def test_tower_lr_settings_are_checked(extra, tiny_clip, colours, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(tmp_path / "o"))
    message = cli_error(capsys, ["plan", str(recipe), *extra])
    assert extra[0][2:] in message


def test_tower_unfrozen_groups_out_of_range_names_the_tower_key(tiny_clip, colours, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours), output_dir=str(tmp_path / "o"),
                     vision_strategy="partial", vision_unfrozen_groups=5)
    message = cli_error(capsys, ["plan", str(recipe)])
    assert "out of range" in message  # refused: this much works
    assert "vision_unfrozen_groups" in message


# ---------------------------------------------------------------- 7. captions from a CSV, no labels


def test_captions_csv_trains_contrastively(tiny_clip, tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    rows = _caption_rows(data, 48)
    train = write_csv(data / "train.csv", rows[:36])
    validation = write_csv(data / "validation.csv", rows[36:])  # 12 = 2 full eval batches of 6
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_clip), train_file=str(train),
                     validation_file=str(validation), per_device_eval_batch_size=6, output_dir=str(out), **CONTRASTIVE)
    _train("train", str(recipe))
    results = _results(out)
    assert not [k for k in results if k.startswith("zero_shot")]  # no labels: no zero-shot metrics
    assert math.isfinite(results["train_loss"]) and 0 < results["eval_loss"] < results["train_loss"]
    model, processor = _load(out)
    assert type(model).__name__ == "CLIPModel"
    # the captions were learnt: each held-out image now picks its own caption out of the three
    images = [Image.open(data / r["image"]).convert("RGB") for r in rows[36:]]
    text = processor.tokenizer(list(CAPTIONS.values()), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**text, pixel_values=processor.image_processor(images=images, return_tensors="pt")["pixel_values"]).logits_per_image
    expected = torch.tensor([list(CAPTIONS.values()).index(r["caption"]) for r in rows[36:]])
    assert (logits.argmax(-1) == expected).float().mean() >= 0.9


# ---------------------------------------------------------------- 8. distributed (slow)


def _first_step_loss(out: Path) -> float:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return next(h["loss"] for h in history if h.get("step") == 1 and "loss" in h)


@pytest.mark.slow
def test_two_process_ddp_with_and_without_gathered_features(tmp_path):
    """8 training images, 4 per rank: one optimizer step per epoch sees the whole training set, so with gathered
    features the first step's loss (the mean of the ranks' losses) is the contrastive loss of all 8 images in one
    process, whatever the order; without gathering each rank contrasts only its own 4."""
    from hftl.config import load_config
    from hftl.commands.train import build
    from hftl.tasks import clip

    tiny = make_tiny_clip(tmp_path / "clip")
    data = tmp_path / "images"
    write_folder(data / "train", classes=("blue", "red"), per_class=4)
    write_folder(data / "validation", classes=("blue", "red"), per_class=2, start=50)
    runs = {}
    for gather in (True, False):
        out = tmp_path / f"run-gather-{gather}"
        recipe = _recipe(tmp_path / f"gather-{gather}.yaml", model_name_or_path=str(tiny), dataset=str(data),
                         gather_features=gather, augment=False, per_device_train_batch_size=4, per_device_eval_batch_size=2,
                         num_train_epochs=2, learning_rate=1e-3, logging_steps=1, output_dir=str(out))
        launch(recipe, tmp_path)
        report = json.loads((out / "replica_check.json").read_text())
        assert report["world_size"] == 2 and report["in_sync"] is True, gather
        assert report["fingerprints"][0] == report["fingerprints"][1]
        runs[gather] = {"recipe": recipe, "out": out, "results": _results(out), "first": _first_step_loss(out)}
        assert math.isfinite(runs[gather]["results"]["train_loss"])

    config = load_config(str(runs[True]["recipe"]), ["--output_dir", str(tmp_path / "unused")])
    built = build(config)
    encoded = built.task.encode(config, built.raw, built.loaded)
    batch = built.task.collator(built.loaded)([encoded["train"][i] for i in range(len(encoded["train"]))])
    assert batch["pixel_values"].shape[0] == 8 and sorted(batch["labels"].tolist()) == [0] * 4 + [1] * 4
    with torch.no_grad():
        global_loss, _ = clip.contrastive_loss(built.model.train(), batch, built.model.logit_scale, gather=False)
    assert runs[True]["first"] == pytest.approx(global_loss.item(), rel=1e-4)
    assert abs(runs[False]["first"] - global_loss.item()) > 1e-3  # 4 local negatives, not 8
    assert runs[True]["results"]["train_loss"] != pytest.approx(runs[False]["results"]["train_loss"], rel=1e-4)
    files = sorted((data / "validation").rglob("*.png"))
    labels = [["blue", "red"].index(f.parent.name) for f in files]
    for gather in (True, False):  # the zero-shot evaluation runs under DDP too: each of the 4 images counted once
        expected = _hf_zero_shot(runs[gather]["out"], files, labels, ["blue", "red"], "a {label} image")
        assert runs[gather]["results"]["zero_shot_validation_accuracy_after"] == pytest.approx(expected), gather


def test_l2sp_holds_both_towers_near_their_pretrained_weights(tiny_dual, colours, tmp_path):
    from safetensors.torch import load_file

    start = load_file(str(tiny_dual / "model.safetensors"))
    distances = {}
    for alpha in (0, 100):
        out = tmp_path / f"a{alpha}"
        recipe = _recipe(tmp_path / f"{alpha}.yaml", model_name_or_path=str(tiny_dual), dataset=str(colours),
                         output_dir=str(out), l2_sp=alpha, learning_rate=1e-2, weight_decay=0.0, num_train_epochs=2)
        _train("train", str(recipe))
        end = load_file(str(out / "model.safetensors"))
        towers = [k for k in start if k.startswith(("vision_model.encoder.", "text_model.encoder."))]
        assert towers
        distances[alpha] = sum(((end[k].float() - start[k].float()) ** 2).sum().item() for k in towers)
    assert 0 < distances[100] < 0.5 * distances[0], distances
