"""Task siglip: SigLIP (SiglipModel) and SigLIP2 NaFlex (Siglip2Model) on tiny checkpoints built from configs and
saved with their processors (tiny_siglip, tiny_siglip2 in conftest): per-tower layer groups with the
attention-pooling head and the logit_scale/logit_bias group; the sigmoid loss against the paper's formula and
the model's own loss; (slow) 2-process DDP with gathered texts against one process over the global batch;
fixed-length captions; NaFlex inputs against the processor; per-tower freeze plans in training; zero-shot with
sigmoid scores; linear probe; WiSE-FT; bad input. Nothing is downloaded."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_recipe
from helpers import cli_error, colour_image, launch_script, write_folder

from hftl.cli import main

GROUPS = [f"{t}.{g}" for t in ("text", "vision") for g in ("embeddings", "layer.0", "layer.1", "head")]
GROUPS += ["logit_scale_bias"]
FAST = dict(task="siglip", clip_mode="contrastive", per_device_train_batch_size=8, per_device_eval_batch_size=8,
            learning_rate=1e-3, seed=0, prompt_templates=["a {label} image"], max_length=None)  # siglip has no max_length
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def models(tiny_siglip, tiny_siglip2) -> dict[int, Path]:
    return {1: tiny_siglip, 2: tiny_siglip2}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """train/ (3 classes x 8) and test/ (3 classes x 3) folders of blue, green and red images of mixed sizes."""
    root = tmp_path_factory.mktemp("siglip-colours") / "images"
    write_folder(root / "train", classes=CLASSES, per_class=8)
    write_folder(root / "test", classes=CLASSES, per_class=3, start=50)
    return root


def _recipe(path: Path, **values) -> Path:
    return write_recipe(path, **{**FAST, **values})


def _run(*argv: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(list(argv))
    assert rc == 0, buffer.getvalue()[-3000:]
    return buffer.getvalue()


def _load(folder: Path):
    from transformers import AutoModel, AutoProcessor

    return AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _built(recipe: Path, out: Path):
    from hftl.commands.train import build
    from hftl.config import load_config

    return build(load_config(str(recipe), ["--output_dir", str(out)]))


# ---------------------------------------------------------------- 1. layer groups and the plan


@pytest.mark.parametrize("version", [1, 2])
def test_tower_groups_heads_and_no_decay(version, models):
    from hftl.engine.layers import layer_groups
    from hftl.engine.optim import no_decay

    model, _ = _load(models[version])
    groups = {g.name: [n for n, _ in g.params] for g in layer_groups(model)}
    assert list(groups) == GROUPS
    every = [n for names in groups.values() for n in names]
    assert sorted(every) == sorted(n for n, _ in model.named_parameters()) and len(every) == len(set(every))
    assert groups["logit_scale_bias"] == ["logit_scale", "logit_bias"]
    assert set(groups["text.head"]) == {"text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias",
                                        "text_model.head.weight", "text_model.head.bias"}
    head = {"vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias", "vision_model.head.probe"}
    assert head < set(groups["vision.head"])  # the attention-pooling head and the final norm
    assert all(n in head or n.startswith("vision_model.head.") for n in groups["vision.head"])
    assert all(n.startswith("vision_model.embeddings.") for n in groups["vision.embeddings"])
    for i in range(2):
        assert all(n.startswith(f"text_model.encoder.layers.{i}.") for n in groups[f"text.layer.{i}"])
    params = dict(model.named_parameters())
    free = {n for n in every if no_decay(n, params[n]) and params[n].ndim > 1}  # not a bias or norm, yet no decay
    assert free == {"vision_model.head.probe", "text_model.embeddings.position_embedding.weight",
                    "vision_model.embeddings.position_embedding.weight"}
    assert no_decay("logit_scale", params["logit_scale"]) and no_decay("logit_bias", params["logit_bias"])
    assert not no_decay("vision_model.head.attention.in_proj_weight", params["vision_model.head.attention.in_proj_weight"])


@pytest.mark.parametrize("version", [1, 2])
def test_hftl_plan_per_tower(version, models, colours, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(models[version]), dataset=str(colours),
                     vision_strategy="partial", vision_unfrozen_groups=1, vision_learning_rate=1e-3,
                     vision_layer_decay=0.5, text_strategy="full", text_learning_rate=2e-4, head_lr=5e-3,
                     learning_rate=1e-2, weight_decay=0.1, output_dir=str(tmp_path / "out"))
    assert main(["plan", str(recipe)]) == 0
    rows = {line.split()[0]: line.split()[2:4] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("text.", "vision.", "logit_"))}
    assert list(rows) == GROUPS
    frozen = {g for g, (state, _) in rows.items() if state == "frozen"}
    assert frozen == {"vision.embeddings", "vision.layer.0"}
    lrs = {g: float(lr) for g, (_, lr) in rows.items()}
    assert lrs["vision.layer.1"] == pytest.approx(1e-3) and lrs["vision.layer.0"] == pytest.approx(5e-4, rel=1e-2)
    assert lrs["text.layer.1"] == pytest.approx(2e-4) and lrs["text.head"] == lrs["vision.head"] == pytest.approx(5e-3)
    assert lrs["logit_scale_bias"] == pytest.approx(1e-2)  # learning_rate, as CLIP's logit_scale
    assert (tmp_path / "out" / "plan.md").is_file()


# ---------------------------------------------------------------- 2. the sigmoid loss


def _paper_loss(image, text, t_prime, b, positive) -> float:
    """Zhai et al. 2023, eq. 1: -1/|B| sum_i sum_j log 1/(1 + exp(z_ij (-t x_i.y_j - b))), t = exp(t'), written out."""
    t, total = math.exp(t_prime), 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            z = 1.0 if positive(i, j) else -1.0
            dot = sum(float(a) * float(c) for a, c in zip(image[i], text[j]))
            total += math.log(1.0 / (1.0 + math.exp(z * (-t * dot - b))))
    return -total / len(image)


def test_sigmoid_loss_equals_the_papers_formula():
    from hftl.engine.contrastive import sigmoid_loss

    g = torch.Generator().manual_seed(3)
    image = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale, bias = torch.tensor([math.log(10)]), torch.tensor([-10.0])
    ours = sigmoid_loss(image, text, scale, bias)
    assert ours.item() == pytest.approx(_paper_loss(image, text, math.log(10), -10.0, lambda i, j: i == j), rel=1e-6)
    labels = torch.tensor([0, 1, 0, 2, 1])  # same label: a positive pair too
    same = sigmoid_loss(image, text, scale, bias, labels)
    assert same.item() == pytest.approx(_paper_loss(image, text, math.log(10), -10.0,
                                                    lambda i, j: labels[i] == labels[j]), rel=1e-6)
    assert same.item() != pytest.approx(ours.item(), rel=1e-3)


@pytest.mark.parametrize("version", [1, 2])
def test_task_loss_equals_the_models_own_on_a_batch(version, models, colours, tmp_path):
    """Through the task's collator (fixed-length captions; NaFlex patches), distinct captions: the model's own loss."""
    from hftl.tasks.siglip import sigmoid_loss

    built = _built(_recipe(tmp_path / "r.yaml", model_name_or_path=str(models[version]), dataset=str(colours),
                           prompt_templates=["a {label} image", "the {label} colour"]), tmp_path / "out")
    encoded = built.task.encode(built.config, built.raw, built.loaded)
    rows = [encoded["test"][i] for i in (0, 3, 6)]  # blue, green, red
    batch = built.task.collator(built.loaded)(rows)
    length = built.model.config.text_config.max_position_embeddings
    assert batch["input_ids"].shape == (3, length) and "attention_mask" not in batch  # padded to 16, no mask
    assert set(batch) >= ({"pixel_values", "pixel_attention_mask", "spatial_shapes"} if version == 2 else {"pixel_values"})
    model = built.model.eval()
    with torch.no_grad():
        ours, outputs = sigmoid_loss(model, dict(batch), model.logit_scale, model.logit_bias, gather=False)
        own = model(**{k: v for k, v in batch.items() if k != "labels"}, return_loss=True).loss
    assert ours.item() == pytest.approx(own.item(), rel=1e-5)
    assert ours.item() > 1.0  # the bias of -10 at the start: the positives are far from matched


def test_from_scratch_starts_at_the_papers_temperature_and_bias(tiny_siglip, tmp_path):
    """transformers initialises logit_scale and logit_bias at 0; SigLIP's paper starts them at log 10 and -10."""
    from hftl.config import load_config
    from hftl.tasks import get_task
    from hftl.tasks.classification import Labels

    config = load_config(str(_recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_siglip), dataset="unused",
                                     from_scratch=True)))
    model = get_task("siglip").build_model(config, Labels(CLASSES, False, "label")).model
    assert model.logit_scale.item() == pytest.approx(math.log(10)) and model.logit_bias.item() == -10.0
    from transformers import AutoModel

    plain = AutoModel.from_config(model.config)  # what from_scratch would start from without hftl's values
    assert plain.logit_scale.item() == 0 and plain.logit_bias.item() == 0


@pytest.mark.slow
def test_two_process_gather_equals_one_process_over_the_global_batch(tmp_path):
    """Each rank: its 4 images against all 8 texts. The mean of the ranks' losses is the one-process loss of the 8;
    DDP's mean of the ranks' gradients is its gradient (a text's gradient comes back from both ranks)."""
    from ddp_sigmoid_loss import global_batch

    from hftl.engine.contrastive import sigmoid_loss

    result = launch_script(Path(__file__).parent / "ddp_sigmoid_loss.py", tmp_path, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    batch = global_batch()
    image, text = batch["image"].requires_grad_(True), batch["text"].requires_grad_(True)
    scale, bias = batch["logit_scale"].requires_grad_(True), batch["logit_bias"].requires_grad_(True)
    loss = sigmoid_loss(image, text, scale, bias, batch["labels"])
    loss.backward()
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(loss.item(), rel=1e-5)
    assert all(abs(r["local_loss"] - r["loss"]) > 1e-3 for r in ranks)  # 4 texts, not 8
    grad_image = torch.tensor([row for r in ranks for row in r["image_grad"]]) / 2
    grad_text = torch.tensor([row for r in ranks for row in r["text_grad"]]) / 2
    assert torch.allclose(grad_image, image.grad, atol=1e-6) and torch.allclose(grad_text, text.grad, atol=1e-6)
    assert sum(r["scale_grad"] for r in ranks) / 2 == pytest.approx(scale.grad.item(), rel=1e-5)
    assert sum(r["bias_grad"] for r in ranks) / 2 == pytest.approx(bias.grad.item(), rel=1e-5)


# ---------------------------------------------------------------- 3. inputs


def test_naflex_inputs_equal_the_processors(tiny_siglip2, colours, tmp_path):
    from transformers import AutoProcessor

    from hftl.config import load_config
    from hftl.data.naflex import NaflexPreprocess

    processor = AutoProcessor.from_pretrained(tiny_siglip2).image_processor
    config = load_config(str(_recipe(tmp_path / "r.yaml", model_name_or_path="x", dataset="y")))
    ours = NaflexPreprocess(processor, config.data)
    for size in [(40, 16), (16, 40), (32, 32), (20, 27)]:  # wide, tall, square, odd: different grids
        image = colour_image("green", size, seed=1)
        got = ours.patches(image, train=False)
        want = processor(images=[image], return_tensors="pt")
        assert got["spatial_shapes"].tolist() == want["spatial_shapes"][0].tolist()
        assert torch.equal(got["pixel_attention_mask"], want["pixel_attention_mask"][0].to(torch.int32))
        assert torch.allclose(got["pixel_values"], want["pixel_values"][0], atol=1e-5)
    train = ours.patches(colour_image("red", (40, 16)), train=True)
    assert train["pixel_values"].shape == (16, 192) and train["spatial_shapes"].prod() <= 16


# ---------------------------------------------------------------- 4. training: frozen towers stay, the rest moves


def test_per_tower_freeze_plan_holds_in_training(tiny_siglip, colours, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_siglip), dataset=str(colours), output_dir=str(out),
                     vision_strategy="feature_extraction", text_strategy="partial", text_unfrozen_groups=1,
                     freeze=["^logit_bias$"], learning_rate=1e-2, head_lr=1e-2, num_train_epochs=1)
    _run("train", str(recipe))
    start, end = load_file(str(tiny_siglip / "model.safetensors")), load_file(str(out / "model.safetensors"))

    def moved(prefix: str) -> bool:
        return any(not torch.equal(start[k], end[k]) for k in start if k.startswith(prefix))

    for frozen in ("vision_model.embeddings.", "vision_model.encoder.", "text_model.embeddings.",
                   "text_model.encoder.layers.0.", "logit_bias"):
        assert not moved(frozen), frozen
    for trains in ("vision_model.head.", "vision_model.post_layernorm.", "text_model.encoder.layers.1.",
                   "text_model.head.", "logit_scale"):
        assert moved(trains), trains
    results = json.loads((out / "all_results.json").read_text())
    assert {"zero_shot_test_accuracy_before", "zero_shot_test_accuracy_after"} <= set(results)


# ---------------------------------------------------------------- 5. zero-shot, linear probe, WiSE-FT


@pytest.mark.parametrize("version", [1, 2])
def test_zero_shot_takes_the_class_of_highest_sigmoid_score(version, models, colours, tmp_path):
    """hftl's zero-shot accuracy and scores equal sigmoid(logits_per_image) of the model's own forward on the
    processor's inputs, captions padded to max_length as SigLIP's pipeline does."""
    from hftl.tasks.zero_shot import class_embeddings, image_embeddings, sigmoid_scores

    built = _built(_recipe(tmp_path / "r.yaml", model_name_or_path=str(models[version]), dataset=str(colours),
                           clip_mode="zero_shot"), tmp_path / "out")
    task, loaded = built.task, built.loaded
    encoded = task.encode(built.config, built.raw, loaded)
    accuracy = task.zero_shot_metrics(built.config, loaded, encoded)["zero_shot_test_accuracy"]
    model, processor = _load(models[version])
    files = sorted((colours / "test").rglob("*.png"))
    from PIL import Image

    pixels = processor.image_processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")
    text = processor.tokenizer([f"a {c} image" for c in CLASSES], padding="max_length", max_length=16,
                               return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.sigmoid(model(input_ids=text["input_ids"], **pixels).logits_per_image)
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    assert accuracy == pytest.approx(float((probabilities.argmax(-1) == labels).float().mean()))
    classes = class_embeddings(model, processor.tokenizer, CLASSES, ["a {label} image"], "cpu",
                               tokenize=task.captions(loaded))
    feats, _ = image_embeddings(model, encoded["test"], "cpu", 4)
    assert torch.allclose(sigmoid_scores(model, feats, classes).float(), probabilities, atol=1e-5)


def test_contrastive_run_then_wise_ft_and_linear_probe(tiny_siglip2, colours, tmp_path):
    """SigLIP2 NaFlex end to end: contrastive fine-tuning, WiSE-FT between its two ends, the linear probe."""
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_siglip2), dataset=str(colours), output_dir=str(out),
                     num_train_epochs=1, max_num_patches=9)
    _run("train", str(recipe))
    results = json.loads((out / "all_results.json").read_text())
    assert _load(out)[1].image_processor.max_num_patches == 9  # the saved processor sizes images as training did
    stdout = _run("wise-ft", str(recipe), "--alphas", "0,1")
    assert "alpha 0.00" in stdout
    rows = (out / "wise-ft" / "wise_ft.csv").read_text().splitlines()[1:]
    assert float(rows[0].split(",")[1]) == pytest.approx(results["zero_shot_test_accuracy_before"])
    assert float(rows[1].split(",")[1]) == pytest.approx(results["zero_shot_test_accuracy_after"])
    probe = _recipe(tmp_path / "p.yaml", model_name_or_path=str(tiny_siglip2), dataset=str(colours),
                    output_dir=str(tmp_path / "probe"), clip_mode="linear_probe", head_lr=1e-1, num_train_epochs=1)
    _run("train", str(probe))
    probed = json.loads((tmp_path / "probe" / "all_results.json").read_text())
    assert (tmp_path / "probe" / "linear_probe.safetensors").is_file() and "test_accuracy" in probed


# ---------------------------------------------------------------- 6. bad input


@pytest.mark.parametrize("task, extra, expected", [
    ("clip", {"max_num_patches": 64}, "max_num_patches is not available for task clip (it sizes SigLIP2 NaFlex"),
    ("siglip", {"image_size": 64}, "image_size is not available for task siglip"),
    ("siglip", {"max_length": 32}, "max_length is not available for task siglip: SigLIP pads every caption"),
])
def test_keys_of_the_other_family_are_refused_by_name(task, extra, expected, tmp_path, capsys):
    recipe = _recipe(tmp_path / "r.yaml", task=task, model_name_or_path="some/model", dataset="some/data", **extra)
    assert expected in cli_error(capsys, ["plan", str(recipe)])


def test_a_checkpoint_of_the_other_family_names_its_task(tiny_siglip, tiny_clip, colours, tmp_path, capsys):
    clip = _recipe(tmp_path / "c.yaml", task="clip", model_name_or_path=str(tiny_siglip), dataset=str(colours))
    assert "loads as SiglipModel, which task clip does not train: set `task: siglip`" in cli_error(capsys, ["plan", str(clip)])
    siglip = _recipe(tmp_path / "s.yaml", model_name_or_path=str(tiny_clip), dataset=str(colours))
    assert "loads as CLIPModel, which task siglip does not train: set `task: clip`" in cli_error(capsys, ["plan", str(siglip)])
    fixed = _recipe(tmp_path / "f.yaml", model_name_or_path=str(tiny_siglip), dataset=str(colours), max_num_patches=16)
    assert "fixed-resolution SiglipModel: drop `max_num_patches`" in cli_error(capsys, ["plan", str(fixed)])


def test_a_dual_encoder_family_hftl_cannot_group_names_the_class_and_the_closest(colours, tmp_path, capsys):
    from transformers import (AlignConfig, AlignModel, AlignProcessor, BertTokenizer, EfficientNetImageProcessor)

    import hftl

    folder = tmp_path / "align"
    config = AlignConfig(text_config=dict(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=32),
                         vision_config=dict(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=32),
                         projection_dim=16)
    model = AlignModel(config)
    model.save_pretrained(folder)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red"])})
    AlignProcessor(image_processor=EfficientNetImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tokenizer).save_pretrained(folder)
    for task in ("clip", "siglip"):
        recipe = _recipe(tmp_path / f"{task}.yaml", task=task, model_name_or_path=str(folder), dataset=str(colours))
        message = cli_error(capsys, ["plan", str(recipe)])
        assert message.startswith("`AlignModel` is an image-text dual encoder that hftl cannot map to layer groups")
        assert "The closest supported family is CLIP (task clip)" in message
    with pytest.raises(hftl.HftlError, match="`AlignModel` is an image-text dual encoder"):
        hftl.TransferPlan.build(model)


def test_a_missing_tokenizer_package_is_named(tiny_siglip, colours, tmp_path, capsys, monkeypatch):
    """Google's SigLIP tokenizer is sentencepiece's; without the package transformers raises ImportError."""
    import transformers

    def missing(*args, **kwargs):
        raise ImportError("SiglipTokenizer requires the SentencePiece library but it was not found in your environment.")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", missing)
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_siglip), dataset=str(colours))
    message = cli_error(capsys, ["plan", str(recipe)])
    assert "requires the SentencePiece library" in message and 'pip install "hftl[siglip]"' in message
