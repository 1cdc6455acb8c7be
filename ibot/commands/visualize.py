"""``ibot visualize``: attention maps, patch correspondence, patch-head patterns and sample masks
as PNG pictures."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ibot.commands import Formatter, add_output_dir, add_output_file, command


def _add_model(p: argparse.ArgumentParser, sizing: str = "shorter side the images are resized to, then rounded to "
                                                        "a multiple of the patch size") -> None:
    from ibot.commands._eval_args import add_model_arguments

    add_model_arguments(p)
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=int, metavar="PX",
                   help=f"{sizing} (default: the pre-training crop size, 224 for official checkpoints)")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")


def _add_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size and mode Pillow reads)")
    _add_model(p)
    g = p.add_argument_group("attention")
    g.add_argument("--mass", type=float, default=0.6, help="share of each head's attention the thresholded maps keep")
    g.add_argument("--heads-per-row", type=int, default=6, help="heads drawn side by side before wrapping")
    add_output_dir(g, "one IMAGE_attention.png per image goes here", default="attention")


def _add_correspondence(p: argparse.ArgumentParser) -> None:
    p.add_argument("image_a", nargs="?", metavar="IMG_A", help="first image (or give --data instead)")
    p.add_argument("image_b", nargs="?", metavar="IMG_B", help="second image")
    _add_model(p)
    g = p.add_argument_group("correspondence")
    g.add_argument("--top-k", type=int, default=20, help="draw the K most similar mutual nearest patches")
    g.add_argument("--foreground", type=float, metavar="MASS",
                   help="match only the patches holding this share of each image's [CLS] attention, e.g. 0.6 (ViT)")
    add_output_file(g, "PNG file of IMG_A IMG_B's picture (default: correspondence.png)", metavar="PNG")
    d = p.add_argument_group("pairs from a dataset (instead of IMG_A IMG_B)")
    d.add_argument("--data", metavar="SPEC", help="draw pairs of different images of one class from this dataset: "
                                                  "fashion-mnist, cifar10:PATH, ... or an ImageFolder path")
    d.add_argument("--split", help="split the pairs come from (default: train)")
    d.add_argument("--pairs", type=int, metavar="N", help="pairs drawn, one picture each (default: 4)")
    d.add_argument("--seed", type=int, help="seed of the drawn pairs (default: 0)")
    add_output_dir(d, "one correspondence_CLASS_I.png per pair goes here (default: correspondence)")


def _add_patterns(p: argparse.ArgumentParser) -> None:
    _add_model(p, "side of the evaluation transform's center crop, a multiple of the token stride")
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="SPEC", help="dataset searched: fashion-mnist, cifar10:PATH, ... or an "
                                                  "ImageFolder path (default: the checkpoint's pre-training data)")
    d.add_argument("--split", default="train", help="split whose images are searched")
    d.add_argument("--max-images", type=int, default=2000, metavar="N", help="images searched, spread evenly over "
                                                                             "the split")
    d.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    d.add_argument("--num-workers", type=int, default=2, help="data-loading processes")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("patterns")
    g.add_argument("--prototypes", type=int, default=8, metavar="K",
                   help="show the K prototypes that are the argmax of the most patches")
    g.add_argument("--prototype-ids", type=int, nargs="+", metavar="ID", help="show these prototypes instead")
    g.add_argument("--top-k", type=int, default=8, help="patches shown per prototype")
    g.add_argument("--context", type=int, default=1, metavar="CELLS",
                   help="token cells of the image shown on each side of a patch")
    g.add_argument("--temperature", type=float,
                   help="softmax temperature of the patch head's logits (default: the checkpoint's "
                        "loss.teacher_patch_temp, 0.07 for official files)")
    add_output_file(g, "PNG file to write", default="patterns.png", metavar="PNG")


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
        ("correspondence", "mutual nearest patches between two images (or same-class pairs of a dataset), drawn "
                           "as lines", _add_correspondence),
        ("patterns", "the dataset's patches each patch-head prototype gives the highest probability (patch "
                     "semantics)", _add_patterns),
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

    images = [image for image in (args.image_a, args.image_b) if image is not None]
    if args.data is not None:
        if images:
            raise ValueError("give two images IMG_A IMG_B or --data SPEC, not both")
        if args.output is not None:
            raise ValueError("-o/--output names the picture of IMG_A IMG_B; with --data, pictures go to --output-dir")
    elif len(images) != 2:
        raise ValueError("give two images IMG_A IMG_B, or --data SPEC to draw pairs of images of one class")
    else:
        misplaced = [flag for flag, value in (("--split", args.split), ("--pairs", args.pairs), ("--seed", args.seed),
                                              ("--output-dir", args.output_dir)) if value is not None]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)} go with --data; two images make one picture, named with "
                             "-o/--output")
    for image in images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
    if args.foreground is not None and not 0 < args.foreground <= 1:
        raise ValueError(f"--foreground must be in (0, 1], got {args.foreground}")
    if args.data is not None:
        return _dataset_correspondence(args)
    loaded, backbone, size = _load(args)
    if args.foreground is not None:
        check_vit(backbone, loaded.arch)
    output = args.output or "correspondence.png"
    result = visualize_correspondence(backbone, args.image_a, args.image_b, output, size, args.top_k,
                                      args.foreground)
    print(f"{len(result.matches.similarity)} of {result.matches.num_mutual} mutual nearest patches -> {output}")
    return 0


def _file_part(name: str) -> str:
    """``name`` as part of a file name: runs of other characters than letters, digits, ``.-_`` become ``-``."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-")


def _dataset_correspondence(args: argparse.Namespace) -> int:
    """Seeded pairs of different images of one class of ``--data``, one picture each."""
    from ibot.data.datasets import build_dataset, dataset_labels
    from ibot.image_io import CorruptImageError, format_skipped
    from ibot.visualize.attention import check_vit
    from ibot.visualize.correspondence import draw_correspondence, same_class_pairs

    base = build_dataset(args.data, args.split or "train")
    pairs = same_class_pairs(dataset_labels(base), 4 if args.pairs is None else args.pairs, args.seed or 0)
    loaded, backbone, size = _load(args)
    if args.foreground is not None:
        check_vit(backbone, loaded.arch)
    classes = list(getattr(base, "classes", []))
    out_dir = Path(args.output_dir or "correspondence")
    unreadable: list[CorruptImageError] = []
    for i, (label, a, b) in enumerate(pairs):
        name = classes[label] if label < len(classes) else str(label)
        path = out_dir / f"correspondence_{_file_part(name) or label}_{i}.png"
        try:
            image_a, image_b = base[a][0], base[b][0]
        except CorruptImageError as exc:  # draw the others
            unreadable.append(exc)
            continue
        draw_correspondence(backbone, image_a, image_b, path, size, args.top_k, args.foreground,
                            (f"{name} #{a}", f"#{b}"))
        print(f"{path}: {name} #{a} - #{b}")
    if unreadable:
        message = format_skipped(len(unreadable), str(unreadable[0]))
        if len(unreadable) == len(pairs):
            raise ValueError(f"nothing drawn: {message}")
        print(message, file=sys.stderr)
    return 0


def _patterns(args: argparse.Namespace) -> int:
    from ibot.commands._eval_args import data_spec, device
    from ibot.data.datasets import build_dataset
    from ibot.eval.checkpoints import load_head
    from ibot.eval.features import evaluation_transform
    from ibot.image_io import format_skipped
    from ibot.visualize.images import to_uint8
    from ibot.visualize.patterns import check_prototype_ids, save_patterns, scan_dataset, spread_indices

    for flag, value, least in (("--prototypes", args.prototypes, 1), ("--top-k", args.top_k, 1),
                               ("--max-images", args.max_images, 1), ("--batch-size", args.batch_size, 1),
                               ("--num-workers", args.num_workers, 0), ("--context", args.context, 0)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.temperature is not None and args.temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {args.temperature}")
    loaded, backbone, size = _load(args)
    head = load_head(args.checkpoint, args.key, needed_by="'ibot visualize patterns'").to(device(args))
    if args.prototype_ids is not None:
        check_prototype_ids(args.prototype_ids, head.patch_out_dim)
    temperature = args.temperature or loaded.meta.get("config", {}).get("loss", {}).get("teacher_patch_temp", 0.07)
    data = data_spec(args, loaded)
    base = build_dataset(data, args.split)
    indices = spread_indices(len(base), args.max_images)
    transform = evaluation_transform(size)
    top, skipped = scan_dataset(backbone, head, base, transform, indices, args.top_k, args.prototypes,
                                args.prototype_ids, temperature, args.batch_size, args.num_workers, device(args),
                                progress=not args.no_progress)
    if skipped:
        print(format_skipped(len(skipped), skipped[0]), file=sys.stderr)
    title = (f"{data} ({args.split}, {len(indices) - len(skipped)} images): top {args.top_k} patches of "
             f"{len(top.prototypes)} patch-head prototypes (softmax at T={temperature:g})")
    path, _ = save_patterns(top, lambda i: to_uint8(transform(base[i][0])), args.output, backbone.mask_stride,
                            args.context, title)
    picked = ", ".join(f"#{int(p)} ({int(c)})" for p, c in zip(top.prototypes, top.counts))
    print(f"prototypes (argmax of how many of {top.num_patches} patches): {picked} -> {path}")
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


@command("visualize", "pictures: attention maps, patch correspondence, patch patterns, sample masks")(add_arguments)
def run(args: argparse.Namespace) -> int:
    pictures = {"attention": _attention, "correspondence": _correspondence, "patterns": _patterns, "masks": _masks}
    return pictures[args.picture](args)
