"""``ibot visualize``: attention maps, patch correspondence and sample masks as PNG pictures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ibot.commands import Formatter, add_output_dir, add_output_file, command


def _add_model(p: argparse.ArgumentParser) -> None:
    from ibot.commands._eval_args import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=int, metavar="PX",
                   help="shorter side the images are resized to, then rounded to a multiple of the patch size "
                        "(default: the pre-training crop size, 224 for official checkpoints)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size and mode Pillow reads)")
    _add_model(p)
    g = p.add_argument_group("attention")
    g.add_argument("--mass", type=float, default=0.6, help="share of each head's attention the thresholded maps keep")
    g.add_argument("--heads-per-row", type=int, default=6, help="heads drawn side by side before wrapping")
    add_output_dir(g, "one IMAGE_attention.png per image goes here", default="attention")


def _add_correspondence(p: argparse.ArgumentParser) -> None:
    p.add_argument("image_a", metavar="IMG_A", help="first image")
    p.add_argument("image_b", metavar="IMG_B", help="second image")
    _add_model(p)
    g = p.add_argument_group("correspondence")
    g.add_argument("--top-k", type=int, default=20, help="draw the K most similar mutual nearest patches")
    g.add_argument("--foreground", type=float, metavar="MASS",
                   help="match only the patches holding this share of each image's [CLS] attention, e.g. 0.6 (ViT)")
    add_output_file(g, "PNG file to write", default="correspondence.png", metavar="PNG")


def _add_masks(p: argparse.ArgumentParser) -> None:
    from ibot.config import PRESETS

    g = p.add_argument_group("configuration (as for 'ibot pretrain': preset, then YAML file, then overrides)")
    g.add_argument("--preset", help=f"{', '.join(PRESETS)} (default: cpu, or the YAML file's 'preset:')")
    g.add_argument("--config", metavar="YAML", help="YAML file of sections, e.g. 'mask: {pred_shape: rand}'")
    g.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="overrides, e.g. mask.pred_ratio=0.3 mask.pred_ratio_var=0.1")
    g.add_argument("--data", help="dataset to crop (default: the config's data.data)")
    s = p.add_argument_group("samples")
    s.add_argument("--num-images", type=int, default=4, help="training images; each gives its global crops")
    s.add_argument("--epoch", type=int, help="epoch the masks are drawn for (default: mask.pred_start_epoch)")
    s.add_argument("--seed", type=int, default=0, help="picks the images, crops and masks")
    add_output_file(s, "PNG file to write", default="masks.png", metavar="PNG")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="picture", metavar="PICTURE", required=True)
    for name, help_text, add in (
        ("attention", "last-block [CLS] attention per head, and the maps keeping 60%% of it (ViT)", _add_attention),
        ("correspondence", "mutual nearest patches between two images, drawn as lines", _add_correspondence),
        ("masks", "sample block-wise and random masks over real crops of the configured data", _add_masks),
    ):
        add(sub.add_parser(name, help=help_text, description=help_text.replace("%%", "%"), formatter_class=Formatter))


def _load(args: argparse.Namespace):
    """The backbone on its device, and the image size to use."""
    from ibot.commands._eval_args import device, image_size, load_model

    try:
        loaded = load_model(args)
    except ValueError as exc:
        raise ValueError(f"{exc}; use one of our .safetensors pre-training checkpoints, or an official .pth "
                         "file with its --arch (and --patch-size)") from None
    return loaded, loaded.backbone.to(device(args)), image_size(args, loaded)


def _attention(args: argparse.Namespace) -> int:
    from ibot.image_io import CorruptImageError, format_skipped
    from ibot.visualize.attention import check_vit, visualize_attention

    if args.heads_per_row < 1:
        raise ValueError(f"--heads-per-row must be at least 1, got {args.heads_per_row}")
    for image in args.images:  # fail before loading the model
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
    loaded, backbone, size = _load(args)
    check_vit(backbone, loaded.arch)
    out_dir = Path(args.output_dir)
    used: set[str] = set()
    unreadable: list[CorruptImageError] = []
    for image in args.images:
        stem = Path(image).stem
        name, n = f"{stem}_attention.png", 1
        while name in used:  # same file name in different folders
            name, n = f"{stem}_{n}_attention.png", n + 1
        try:
            visualize_attention(backbone, image, out_dir / name, size, args.mass, args.heads_per_row)
        except CorruptImageError as exc:  # draw the others
            unreadable.append(exc)
            continue
        used.add(name)
        print(out_dir / name)
    if unreadable:
        message = format_skipped(len(unreadable), str(unreadable[0]))
        if len(unreadable) == len(args.images):
            raise ValueError(f"nothing drawn: {message}")
        print(message, file=sys.stderr)
    return 0


def _correspondence(args: argparse.Namespace) -> int:
    from ibot.visualize.attention import check_vit
    from ibot.visualize.correspondence import visualize_correspondence

    for image in (args.image_a, args.image_b):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
    if args.foreground is not None and not 0 < args.foreground <= 1:
        raise ValueError(f"--foreground must be in (0, 1], got {args.foreground}")
    loaded, backbone, size = _load(args)
    if args.foreground is not None:
        check_vit(backbone, loaded.arch)
    result = visualize_correspondence(backbone, args.image_a, args.image_b, args.output, size, args.top_k,
                                      args.foreground)
    print(f"{len(result.matches.similarity)} of {result.matches.num_mutual} mutual nearest patches -> {args.output}")
    return 0


def _masks(args: argparse.Namespace) -> int:
    from ibot.config import resolve_config
    from ibot.visualize.masks import sample_masks, save_mask_grid

    overrides = [*args.overrides, *([f"data.data={args.data}"] if args.data else [])]
    cfg = resolve_config(args.preset or (None if args.config else "cpu"), args.config, overrides)
    samples = sample_masks(cfg, args.num_images, args.epoch, args.seed)
    path, _ = save_mask_grid(samples, cfg, args.output)
    fractions = [float(m.mean()) for m in samples.masks[cfg.mask.pred_shape]]
    print(f"{len(fractions)} crops of {cfg.data.data}, {cfg.mask.pred_shape} masks, masked fraction "
          f"{min(fractions):.0%} to {max(fractions):.0%} (mean {sum(fractions) / len(fractions):.0%}) -> {path}")
    return 0


@command("visualize", "pictures: attention maps, patch correspondence, sample masks")(add_arguments)
def run(args: argparse.Namespace) -> int:
    return {"attention": _attention, "correspondence": _correspondence, "masks": _masks}[args.picture](args)
