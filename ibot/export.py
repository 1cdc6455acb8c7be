"""ONNX export of a pre-trained backbone (features) or a fine-tuned classifier (logits).

The graph takes ``images`` (batch, 3, S, S), already preprocessed, with a dynamic batch
dimension, and returns ``logits`` (batch, C) or, for a backbone, by ``tokens``
(:class:`ibot.models.tokens.TokenOutputs`): ``features`` (batch, D) = the normed [CLS] token,
``patch_tokens`` (batch, h, w, D), or both. The preprocessing it expects
(:class:`ibot.infer.Preprocess`), the kind of model, its tokens and their grid, and a
classifier's class names travel in the ONNX ``metadata_props`` (keys ``ibot.*``), so
``ibot infer`` needs nothing but the ``.onnx`` file.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``, which needs no extra
package; it decomposes the fused scaled-dot-product attention into plain ONNX ops.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ibot.data.transforms import default_crop_pct
from ibot.files import replaced_atomically
from ibot.formats.onnx_outputs import KINDS
from ibot.infer import META_PREFIX, Preprocess
from ibot.models.tokens import TOKEN_CHOICES, TokenOutputs, check_dense_size, token_grid

__all__ = ["KINDS", "OPSET", "Exportable", "check_tokens", "compare_with_onnx", "export_checkpoint",
           "export_onnx", "load_exportable", "output_shapes"]

OPSET = 17  # LayerNormalization is a single op from opset 17


@dataclass
class Exportable:
    """A network ready for export: ``model`` maps (B, 3, S, S) to (B, D) features or (B, C) logits."""

    model: nn.Module
    kind: str
    image_size: int  # the size it was trained on
    patch_size: int  # exported sizes must be a multiple of it (ViT)
    class_names: list[str] | None = None
    crop_pct: float | None = None  # the evaluation crop recorded with a fine-tuned model
    source: dict[str, Any] = field(default_factory=dict)


def _load_classifier(path: Path) -> Exportable:
    """The fine-tuned model of an ``ibot finetune`` checkpoint (:mod:`ibot.eval.finetune`)."""
    from ibot.eval.finetune_model import FinetuneModel
    from ibot.formats.ours import checkpoint_kind, load_checkpoint, strip_prefix
    from ibot.models import build_backbone

    tensors, meta = load_checkpoint(path, prefix="model.")
    if checkpoint_kind(meta, path) != "finetune":
        raise ValueError(f"{path} is not an 'ibot finetune' checkpoint; export a backbone with --kind features")
    info = meta.get("backbone") or {}
    state = strip_prefix("model.", tensors)
    try:
        arch, patch_size, kwargs = info["arch"], int(info["patch_size"]), dict(info.get("build_kwargs") or {})
    except KeyError as exc:
        raise ValueError(f"{path}: its metadata does not describe the backbone (no {exc})") from None
    backbone = build_backbone(arch, patch_size=patch_size, masked_im_modeling="backbone.masked_embed" in state, **kwargs)
    finetune = meta.get("finetune") or {}
    image_size = int(finetune.get("image_size") or info.get("image_size") or kwargs.get("img_size", 224))
    pool = finetune.get("pool") or "cls"  # fine-tuned before the option existed: the [CLS]
    model = FinetuneModel(backbone, num_classes=state["head.weight"].shape[0], pool=pool, image_size=image_size)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the fine-tuned weights do not fit {arch}/{patch_size}: "
                         f"{' '.join(str(exc).split())[:300]}") from None
    classes = list(meta.get("classes") or []) or None
    return Exportable(model.eval(), "classifier", image_size, patch_size, classes, finetune.get("crop_pct"),
                      {"checkpoint": path.name, "arch": arch, "data": meta.get("data")})


def load_exportable(checkpoint: str | Path, kind: str = "features", key: str = "teacher", arch: str | None = None,
                    patch_size: int | None = None) -> Exportable:
    """The ``key`` backbone of a pre-training checkpoint (ours or official: ``arch`` needed) for
    ``kind="features"``, or the model of a fine-tuning checkpoint for ``kind="classifier"``."""
    from ibot.eval.checkpoints import load_backbone
    from ibot.formats.ours import checkpoint_kind, is_our_checkpoint, read_metadata

    path = Path(checkpoint)
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if kind == "classifier":
        return _load_classifier(path)
    if is_our_checkpoint(path) and checkpoint_kind(read_metadata(path), path) == "finetune":
        raise ValueError(f"{path} is a fine-tuning checkpoint: export it with --kind classifier")
    loaded = load_backbone(path, key=key, arch=arch, patch_size=patch_size)
    return Exportable(loaded.backbone.eval(), "features", loaded.image_size, loaded.patch_size,
                      source={"checkpoint": path.name, "key": key, "arch": loaded.name, "data": loaded.data})


def _bake_position_embedding(model: nn.Module, image_size: int) -> None:
    """Interpolate every ViT position embedding of ``model`` to ``image_size`` once, in place: the
    traced graph has a fixed size, and tracing the interpolation would record its scale factors
    as tensors, which ``F.interpolate`` refuses."""
    from ibot.models.vision_transformer import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            side = image_size // module.patch_size
            with torch.no_grad():
                pos_embed = module.interpolate_pos_encoding((side, side))  # (1, 1 + side**2, D)
            module.pos_embed = nn.Parameter(pos_embed.clone(), requires_grad=False)


def _as_tuple(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _set_output_shapes(graph: Any, shapes: list[tuple[int, ...]]) -> None:
    """Write the traced outputs' sizes into the graph's outputs, the batch dimension named
    ``batch``: the exporter may leave the others symbolic (after a reshape, a norm)."""
    for out, shape in zip(graph.graph.output, shapes):
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        dims.add().dim_param = "batch"
        for size in shape[1:]:
            dims.add().dim_value = size


def check_tokens(kind: str, tokens: str) -> None:
    """One line if ``tokens`` is unknown, or other than ``cls`` for a classifier."""
    if tokens not in TOKEN_CHOICES:
        raise ValueError(f"--tokens must be one of {', '.join(TOKEN_CHOICES)}, got {tokens!r}")
    if kind != "features" and tokens != "cls":
        raise ValueError(f"--tokens {tokens} needs --kind features: a classifier exports its logits only")


def export_onnx(model: nn.Module, output: str | Path, preprocess: Preprocess, kind: str = "features",
                class_names: list[str] | None = None, source: dict[str, Any] | None = None,
                opset: int = OPSET, tokens: str = "cls") -> Path:
    """Trace ``model`` at ``preprocess.image_size`` with a dynamic batch on every output (a
    backbone through :class:`TokenOutputs`), record the metadata, check the graph with
    ``onnx.checker`` and write it to ``output``."""
    import onnx

    check_tokens(kind, tokens)
    output = Path(output)
    size = preprocess.image_size
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model stays as it was
    _bake_position_embedding(model, size)
    props = {f"{META_PREFIX}kind": kind, f"{META_PREFIX}preprocess": json.dumps(asdict(preprocess)),
             f"{META_PREFIX}source": json.dumps(source or {})}
    if kind == "features":
        if tokens != "cls":
            check_dense_size(model, size, size)
        props[f"{META_PREFIX}tokens"] = tokens
        if hasattr(model, "mask_stride"):  # every backbone of ibot.models
            props[f"{META_PREFIX}grid"] = json.dumps(list(token_grid(model, size, size)))
        model = TokenOutputs(model, tokens).eval()
        out_names = model.output_names
    else:
        out_names = ["logits"]
    example = torch.zeros(2, 3, size, size)
    with replaced_atomically(output) as tmp:  # a failed check or a crash leaves no graph behind
        with warnings.catch_warnings():  # tracer notes on Python-side shape checks; the exporter's deprecation
            warnings.simplefilter("ignore")
            with torch.no_grad():
                shapes = [tuple(t.shape) for t in _as_tuple(model(example))]
                torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["images"], output_names=out_names,
                                  dynamic_axes={name: {0: "batch"} for name in ["images", *out_names]})
        graph = onnx.load(str(tmp))
        _set_output_shapes(graph, shapes)
        if class_names:
            props[f"{META_PREFIX}class_names"] = json.dumps(list(class_names))
        onnx.helper.set_model_props(graph, props)
        graph.doc_string = (f"iBOT {kind} model on (batch, 3, {size}, {size}) images, "
                            "preprocessed as metadata ibot.preprocess says")
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(tmp))
    return output


def output_shapes(onnx_path: str | Path) -> dict[str, list[int | str]]:
    """The outputs of an ONNX graph, by name: their dimensions, a name (``batch``) where dynamic."""
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return {out.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                       for d in out.type.tensor_type.shape.dim] for out in graph.output}


def compare_with_onnx(model: nn.Module, onnx_path: str | Path, images: np.ndarray) -> tuple[float, bool]:
    """Max |onnxruntime - PyTorch| over ``images`` (B, 3, S, S) and every output, and whether the
    argmax (top-1) of every row of the first 2-D output agrees (True without one). ``model``
    (returning a tensor or a tuple of them) is put in eval mode on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = np.ascontiguousarray(images, dtype=np.float32)
    onnx_outs = session.run(None, {session.get_inputs()[0].name: images})
    with torch.no_grad():
        torch_outs = model.float().cpu().eval()(torch.from_numpy(images))
    torch_outs = [t.numpy() for t in _as_tuple(torch_outs)]
    if len(onnx_outs) != len(torch_outs):
        raise ValueError(f"the ONNX model has {len(onnx_outs)} outputs, the PyTorch model {len(torch_outs)}")
    for onnx_out, torch_out in zip(onnx_outs, torch_outs):
        if onnx_out.shape != torch_out.shape:
            raise ValueError(f"ONNX output {onnx_out.shape} != PyTorch output {torch_out.shape}")
    max_diff = max(float(np.abs(o - t).max()) for o, t in zip(onnx_outs, torch_outs))
    flat = next(((o, t) for o, t in zip(onnx_outs, torch_outs) if o.ndim == 2), None)
    same_top1 = flat is None or bool((flat[0].argmax(axis=1) == flat[1].argmax(axis=1)).all())
    return max_diff, same_top1


def export_checkpoint(checkpoint: str | Path, output: str | Path, kind: str = "features", image_size: int | None = None,
                      crop_pct: float | None = None, key: str = "teacher", arch: str | None = None,
                      patch_size: int | None = None, verify: bool = True, tokens: str = "cls") -> dict[str, Any]:
    """Export a checkpoint (see :func:`load_exportable`) with the outputs ``tokens`` names; with
    ``verify``, compare onnxruntime with PyTorch on a random batch of 3. Returns what was written
    (path, kind, preprocessing, tokens, grid, output shapes, max diff)."""
    if Path(output).suffix != ".onnx":
        raise ValueError(f"output {output} must end in .onnx")
    check_tokens(kind, tokens)
    exportable = load_exportable(checkpoint, kind, key, arch, patch_size)
    size = image_size or exportable.image_size
    if size < 1 or size % exportable.patch_size:
        raise ValueError(f"--image-size {size} must be a positive multiple of the patch size {exportable.patch_size}")
    crop_pct = crop_pct or exportable.crop_pct or default_crop_pct(size)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"--crop-pct must be in (0, 1], got {crop_pct}")
    preprocess = Preprocess(image_size=size, resize_size=math.floor(size / crop_pct))
    path = export_onnx(exportable.model, output, preprocess, kind, exportable.class_names, exportable.source,
                       tokens=tokens)
    grid = list(token_grid(exportable.model, size, size)) if kind == "features" else None
    report: dict[str, Any] = {"path": str(path), "kind": kind, "preprocess": asdict(preprocess),
                              "classes": len(exportable.class_names or []), "tokens": tokens, "grid": grid,
                              "outputs": output_shapes(path)}
    if verify:
        model = TokenOutputs(exportable.model, tokens) if kind == "features" else exportable.model
        images = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
        report["max_abs_diff"], report["same_top1"] = compare_with_onnx(model, path, images)
    return report
