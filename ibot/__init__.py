"""iBOT: Image BERT pre-training with online tokenizer.

The Python API (:mod:`ibot.api`): ``load_backbone``, ``extract_features``, ``extract_patch_features``,
``knn_classify``, and ``patch_tokens(backbone, images)`` for a batch already preprocessed.
"""

__version__ = "0.1.0"

API = ("extract_features", "extract_patch_features", "knn_classify", "load_backbone", "patch_tokens")
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    # lazy, so that ``import ibot.infer`` (onnxruntime only) does not import torch
    if name in API:
        from ibot import api

        return getattr(api, name)
    raise AttributeError(f"module 'ibot' has no attribute {name!r}")
