"""hftl: transfer learning on the Hugging Face stack with layer-wise learning rates and freeze plans."""

__version__ = "0.1.0"
