"""``ibot export``: an ONNX model of a backbone (features) or of a fine-tuned classifier (logits)."""

from __future__ import annotations

import argparse

from ibot.commands import add_old_positionals, add_output_file, command, fill_old_positionals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", metavar="PATH", help="our pre-training or fine-tuning .safetensors, "
                                                                "or an official .pth (with --arch) (required)")
    add_output_file(p, "the ONNX model to write (required)", metavar="OUT.onnx")
    add_old_positionals(p)  # the checkpoint and the output file were positionals
    p.add_argument("--kind", choices=("features", "classifier"), default="features",
                   help="features: the normed [CLS] of a backbone; classifier: logits of an 'ibot finetune' model")
    p.add_argument("--tokens", choices=("cls", "patch", "all"), default="cls",
                   help="outputs of --kind features: cls: the normed [CLS] (batch, D) named features; patch: the "
                        "patch tokens (batch, h, w, D) named patch_tokens; all: both")
    p.add_argument("--image-size", type=int, help="input side (default: the size the network was trained on)")
    p.add_argument("--crop-pct", type=float,
                   help="resize to image-size / crop-pct, then centre-crop (default: 0.875, 1.0 under 64 px)")
    p.add_argument("--key", choices=("teacher", "student"), default="teacher", help="network of a pre-training checkpoint")
    p.add_argument("--arch", help="architecture of an official .pth checkpoint")
    p.add_argument("--patch-size", type=int, help="patch size of an official .pth checkpoint (default: from the weights)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check")


@command("export", "export a backbone or a fine-tuned classifier to ONNX (dynamic batch)")(add_arguments)
def run(args: argparse.Namespace) -> int:
    from ibot.export import export_checkpoint

    fill_old_positionals(args, {"checkpoint": "-c/--checkpoint", "output": "-o/--output"}, "export")
    report = export_checkpoint(args.checkpoint, args.output, kind=args.kind, image_size=args.image_size,
                               crop_pct=args.crop_pct, key=args.key, arch=args.arch, patch_size=args.patch_size,
                               verify=not args.no_verify, tokens=args.tokens)
    pre = report["preprocess"]
    outputs = ", ".join(f"{name} ({', '.join(map(str, shape))})" for name, shape in report["outputs"].items())
    line = (f"wrote {report['path']} ({report['kind']}, input (batch, 3, {pre['image_size']}, {pre['image_size']}), "
            f"resize {pre['resize_size']} + centre crop; outputs {outputs}")
    if report["grid"] is not None:
        line += f"; token grid {report['grid'][0]}x{report['grid'][1]}"
    line += ")"
    if "max_abs_diff" in report:
        line += f"; onnxruntime vs PyTorch: max |diff| {report['max_abs_diff']:.2e}"
    print(line)
    return 0
