"""Helpers shared by several test modules: CLI error checks, folder snapshots, coloured test images,
tiny image and dual-encoder checkpoints built from configs, the 2-process `accelerate launch`, and a
two-node launch on this one machine.

Test modules import from here (or from conftest), never from each other. Shared pytest fixtures
live in conftest.py. Nothing here downloads anything."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_DDP_CONFIG = REPO / "recipes" / "accelerate" / "cpu-ddp-2.yaml"


# ---------------------------------------------------------------- the command line


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI expecting bad input; check the shape of the report and return the message."""
    from hftl.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "Traceback" not in captured.out
    lines = [line for line in err.splitlines() if line.startswith("hftl: error: ")]
    assert len(lines) == 1, err
    message = lines[0][len("hftl: error: ") :]
    assert err.rstrip().endswith(message)  # the report is the last thing printed, on one line
    assert len(message) > 40
    return message


def launch(recipe: Path, cwd: Path, *extra: str, command: str = "train", check: bool = True,
           timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m hftl COMMAND recipe ...` on CPU (gloo), with
    recipes/accelerate/cpu-ddp-2.yaml; fails the test on a non-zero exit code unless check is False."""
    bin_dir = Path(sys.executable).parent  # the venv's bin: `accelerate` and the Python it runs
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # 2 ranks on a 2-core machine: one thread each, no oversubscription
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    argv = [str(bin_dir / "accelerate"), "launch", "--config_file", str(CPU_DDP_CONFIG), "--multi_gpu",
            "--num_processes", "2", "-m", "hftl", command, str(recipe), *extra]
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def launch_script(script: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 SCRIPT args` on CPU (gloo), like `launch`."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    argv = [str(bin_dir / "accelerate"), "launch", "--config_file", str(CPU_DDP_CONFIG), "--multi_gpu",
            "--num_processes", "2", str(script), *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_nodes(per_node: list[list[str]], cwd: Path, timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """One `accelerate launch --num_machines N --machine_rank R --main_process_ip 127.0.0.1 --main_process_port P`
    per node, all on this machine and started together, one CPU process each (gloo); `per_node[R]` is what node
    R runs (`-m hftl train RECIPE` or a script and its arguments). Returns each node's finished process."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    port, nodes = free_port(), len(per_node)
    procs = [subprocess.Popen(
        [str(bin_dir / "accelerate"), "launch", "--config_file", str(CPU_DDP_CONFIG), "--multi_gpu",
         "--num_machines", str(nodes), "--num_processes", str(nodes), "--machine_rank", str(rank),
         "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), *program],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank, program in enumerate(per_node)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


# ---------------------------------------------------------------- coloured images

COLOURS = {"blue": (40, 50, 210), "green": (40, 190, 60), "red": (210, 40, 40)}
SIZES = [(24, 24), (28, 20), (18, 26), (32, 32), (16, 16)]  # (width, height): mixed aspect ratios, some < 32


def colour_image(colour: str, size=(24, 24), seed: int = 0):
    """An image that is mostly `colour`, with pixel noise, so each class looks clearly different."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    base = np.array(COLOURS[colour], dtype=np.int16)[None, None, :]
    pixels = np.clip(base + rng.integers(-35, 36, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def write_folder(root: Path, classes=("blue", "red"), per_class: int = 12, start: int = 0) -> Path:
    """root/<class>/<class>_<i>.png with images of several sizes."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            colour_image(name, SIZES[i % len(SIZES)], seed=1000 * c + i).save(root / name / f"{name}_{i}.png")
    return root


# ---------------------------------------------------------------- tiny image checkpoints


def make_tiny_vit(path: Path) -> Path:
    """A 2-block ViT (32 px, patch 8) and its image processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return Path(path)


def make_tiny_dinov2(path: Path) -> Path:
    """A 2-block DINOv2 (32 px, patch 8) and its image processor (resize to 36, crop 32)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 36}, do_center_crop=True, crop_size={"height": 32, "width": 32},
                      resample=3).save_pretrained(path)
    return Path(path)


# ---------------------------------------------------------------- tiny dual encoders

CLIP_WORDS = ["a", "an", "image", "photo", "of", "the", "blue", "green", "red", "colour", "picture", "sky", "grass", "fire"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _clip_tokenizer(folder: Path):
    """A byte-pair CLIP tokenizer over single letters, '.', ',' and whole-word merges for CLIP_WORDS."""
    from transformers import CLIPTokenizer

    symbols = list(LETTERS) + [".", ","]
    tokens = ["!"] + symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    for word in CLIP_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
                tokens.append(pair[0] + pair[1])
            parts = [pair[0] + pair[1]] + parts[2:]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32)


def make_tiny_clip(path: Path, projection_dim: int = 16, seed: int = 0) -> Path:
    """A CLIPModel with 2-block towers (32 px images) and its processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    tokenizer = _clip_tokenizer(path)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_tiny_dual(path: Path, projection_dim: int = 16, seed: int = 0) -> Path:
    """A VisionTextDualEncoderModel (2-block ViT + 2-block BERT) and its processor."""
    import torch
    from transformers import (BertConfig, BertTokenizer, ViTConfig, ViTImageProcessor, VisionTextDualEncoderConfig,
                              VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)

    path = Path(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + CLIP_WORDS
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=32)
    # At the default init (std 0.02) a 2-block BERT's and ViT's pooled outputs hardly depend on the input (cosine
    # ~0.99 between any two), and contrastive training collapses to log(batch); std 0.1 gives towers that learn.
    spread = dict(initializer_range=0.1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8, **spread),
        BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64, **spread),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    VisionTextDualEncoderModel(config).save_pretrained(path)
    VisionTextDualEncoderProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
                                   tokenizer=tokenizer).save_pretrained(path)
    return path


def _siglip_tokenizer():
    """A word-level tokenizer over CLIP_WORDS that lowercases and ends each caption with `</s>`, SigLIP's end token
    (which is also its padding, as in Google's checkpoints); a fast tokenizer, so no sentencepiece is needed."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(CLIP_WORDS + [".", ","])}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="<unk>",
                                   model_max_length=16)


def make_tiny_siglip(path: Path, version: int = 1, seed: int = 0) -> Path:
    """A SiglipModel (version 1) or a NaFlex Siglip2Model (version 2) with 2-block towers of width 32, 16 text
    positions, 32 px images in 8 px patches (NaFlex: up to 16 patches), the attention-pooling vision head, and
    SigLIP's initial temperature and bias (log 10, -10); saved with its processor."""
    import math

    import torch
    from transformers import (Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor, SiglipConfig,
                              SiglipImageProcessor, SiglipModel, SiglipProcessor)

    path = Path(path)
    tokenizer = _siglip_tokenizer()
    block = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=16, projection_size=32, pad_token_id=1,
                bos_token_id=None, eos_token_id=1, **block)
    torch.manual_seed(seed)
    if version == 1:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=dict(image_size=32, patch_size=8, **block)))
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                                    tokenizer=tokenizer)
    else:
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(num_patches=16, patch_size=8, **block)))
        processor = Siglip2Processor(image_processor=Siglip2ImageProcessor(patch_size=8, max_num_patches=16),
                                     tokenizer=tokenizer)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---------------------------------------------------------------- tiny checkpoints of the other families

IMAGE_FAMILIES = ("resnet", "convnext", "efficientnet")
TEXT_FAMILIES = ("modernbert", "deberta-v3")


def make_tiny_cnn(kind: str, path: Path, stages: int = 4) -> Path:
    """A tiny ResNet, ConvNeXt (one block per stage, widths 8-32) or EfficientNet (7 stages, 10 blocks) with its
    image processor as the Hub checkpoints ship it: ConvNeXt's processor (crop_pct) for ResNet and ConvNeXt,
    EfficientNet's own (include_top) for EfficientNet; 32 px inputs."""
    import torch
    from transformers import (ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor, EfficientNetConfig,
                              EfficientNetForImageClassification, EfficientNetImageProcessor, ResNetConfig,
                              ResNetForImageClassification)

    torch.manual_seed(0)
    widths, depths = [8, 16, 16, 32][:stages], [1] * stages
    if kind == "resnet":  # the bottleneck layout of ResNet-50
        model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=widths, depths=depths,
                                                          layer_type="bottleneck", num_labels=3))
    elif kind == "convnext":
        model = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=widths, depths=depths, num_labels=3))
    elif kind == "efficientnet":  # width 0.25 of B0 (top conv: 320 channels), half its depth: stages of 1-2 blocks
        model = EfficientNetForImageClassification(EfficientNetConfig(image_size=32, width_coefficient=0.25,
                                                                      depth_coefficient=0.5, hidden_dim=320,
                                                                      num_labels=3))
    else:
        raise ValueError(kind)
    model.save_pretrained(path)
    if kind == "efficientnet":
        EfficientNetImageProcessor(size={"height": 32, "width": 32}, include_top=True).save_pretrained(path)
    else:
        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return Path(path)


def make_tiny_text(kind: str, path: Path, tokenizer_dir: Path, layers: int = 2) -> Path:
    """A tiny ModernBERT (`classifier_pooling` mean, as ModernBERT-base ships) or DeBERTa-v3-style DeBERTa-v2
    (relative attention, no absolute positions, log buckets, shared keys) encoder, with the tokenizer files of
    `tokenizer_dir` (a tiny BERT's)."""
    import shutil

    import torch
    from transformers import AutoModel, AutoTokenizer, DebertaV2Config, ModernBertConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = dict(pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
    if kind == "modernbert":
        config = ModernBertConfig(**common, **ids, bos_token_id=ids["cls_token_id"], eos_token_id=ids["sep_token_id"],
                                  classifier_pooling="mean", global_attn_every_n_layers=2, local_attention=16)
    elif kind == "deberta-v3":
        config = DebertaV2Config(**common, pad_token_id=ids["pad_token_id"], relative_attention=True,
                                 position_biased_input=False, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                                 share_att_key=True, position_buckets=8, max_relative_positions=-1)
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    for item in Path(tokenizer_dir).iterdir():
        if item.name not in ("config.json", "model.safetensors"):
            shutil.copy(item, Path(path) / item.name)
    return Path(path)
