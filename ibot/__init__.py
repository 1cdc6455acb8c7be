"""iBOT: Image BERT pre-training with online tokenizer."""

__version__ = "0.1.0"

__all__ = ["load_backbone", "__version__"]


def __getattr__(name: str):
    # lazy, so that ``import ibot.infer`` (onnxruntime only) does not import torch
    if name == "load_backbone":
        from ibot.hub import load_backbone

        return load_backbone
    raise AttributeError(f"module 'ibot' has no attribute {name!r}")
