"""``ibot convert``: an official iBOT checkpoint (``.pth``) as one of our ``.safetensors`` files."""

from __future__ import annotations

import argparse

from ibot.commands import add_old_positionals, add_output_file, command, fill_old_positionals


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN.pth", help="official checkpoint: full checkpoint.pth or a published "
                                                   "backbone ({'state_dict': ...})")
    add_output_file(p, "where to write our checkpoint (required)", metavar="OUT.safetensors")
    add_old_positionals(p)  # the output file was the second positional
    p.add_argument("--arch", help="vit_tiny, vit_small, vit_base, vit_large or swin_tiny "
                                  "(default: the checkpoint's args; required for backbone-only files)")
    p.add_argument("--patch-size", type=int, help="default: read from the weights")
    p.add_argument("--key", choices=("teacher", "student"), default="teacher",
                   help="which network a backbone-only file holds (a full checkpoint keeps both)")
    p.add_argument("--window-size", type=int, help="Swin window (default: the checkpoint's args, else 7)")
    s = p.add_argument_group("non-standard sizes (ViT)")
    s.add_argument("--embed-dim", type=int)
    s.add_argument("--depth", type=int)
    s.add_argument("--num-heads", type=int)


@command("convert", "write an official iBOT checkpoint in our .safetensors format")(add_arguments)
def run(args: argparse.Namespace) -> int:
    from ibot.convert import convert_checkpoint

    fill_old_positionals(args, {"output": "-o/--output"}, "convert")
    path, meta = convert_checkpoint(args.input, args.output, arch=args.arch, patch_size=args.patch_size, key=args.key,
                                    window_size=args.window_size, embed_dim=args.embed_dim, depth=args.depth,
                                    num_heads=args.num_heads)
    model = meta["config"]["model"]
    print(f"wrote {path}: {', '.join(meta['source']['networks'])} of {model['arch']}/{model['patch_size']}"
          f" (epoch {meta['epoch']})")
    return 0
