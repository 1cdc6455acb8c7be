"""Names in an exported ONNX model (``ibot export``), shared by the exporter and by inference
(which must not import torch): the kinds of model, what ``--tokens`` may ask for and the graph
output of each."""

from __future__ import annotations

__all__ = ["CLS_OUTPUT", "KINDS", "OUTPUT_NAMES", "PATCH_OUTPUT", "TOKEN_CHOICES"]

KINDS = ("features", "classifier")  # a backbone or a fine-tuned classifier, recorded as ibot.kind

CLS_OUTPUT = "features"  # (batch, D): the [CLS] (ViT) or pooled (Swin) token
PATCH_OUTPUT = "patch_tokens"  # (batch, h, w, D): the last block's patch tokens on their grid
OUTPUT_NAMES = {"cls": (CLS_OUTPUT,), "patch": (PATCH_OUTPUT,), "all": (CLS_OUTPUT, PATCH_OUTPUT)}
TOKEN_CHOICES = tuple(OUTPUT_NAMES)
