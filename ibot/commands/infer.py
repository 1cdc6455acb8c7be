"""``ibot infer``: run an exported ONNX model (``ibot export``) on images with onnxruntime."""

from __future__ import annotations

import argparse

from ibot.commands import add_output_file, command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by 'ibot export'")
    p.add_argument("input", metavar="INPUT", help="an image file, or a folder searched recursively for images")
    add_output_file(p, "features: .npy (+ .json index of files; a model exported with --tokens all writes its "
                       "patch tokens to OUT_patch.npy, --tokens patch to OUT.npy); classifier: top-5 as .json or "
                       ".csv (default: features.npy / predictions.json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("infer", "features or top-5 predictions of an exported ONNX model on images (onnxruntime)")(add_arguments)
def run(args: argparse.Namespace) -> int:
    from ibot.image_io import format_skipped
    from ibot.infer import run_inference, write_results

    from ibot.progress import write

    def report_skip(path: str, reason: str) -> None:  # one line each, above the progress bar
        write(f"ibot infer: {' '.join(reason.split())} (skipped)")

    result = run_inference(args.model, args.input, batch_size=args.batch_size, progress=not args.no_progress,
                           on_skip=report_skip)
    output = args.output or ("features.npy" if result.kind == "features" else "predictions.json")
    written = write_results(result, output)
    print(f"{len(result.files)} images -> {', '.join(map(str, written))}"
          + (f"; {format_skipped(len(result.skipped), result.skipped[0][0])}" if result.skipped else ""))
    return 0
