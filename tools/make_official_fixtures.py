"""Regenerate ``tests/fixtures/official/`` by running the official iBOT code on random weights.

The official code (``bytedance/ibot``, commit da316d8) is imported at run time from a checkout
outside this repository; nothing of it is copied here. Every tensor in the fixtures is computed by
its classes (``VisionTransformer``, ``iBOTHead``, ``MultiCropWrapper``, ``iBOTLoss``, the
argument parser of ``main_ibot.py`` and ``extract_backbone_weights.py``) on a small network with
fixed seeds, on the CPU in float32:

- ``vit_full_checkpoint.pth``: the ``checkpoint.pth`` layout of ``main_ibot.py`` (``student`` saved
  from DistributedDataParallel, so ``module.``-prefixed; ``teacher``; ``optimizer``; ``epoch``;
  ``args``, the official Namespace; ``ibot_loss``), weight-norm heads (``weight_g`` / ``weight_v``);
- ``vit_checkpoint_teacher.pth``: ``{'state_dict': ...}``, written by the official
  ``extract_backbone_weights.py --checkpoint_key teacher`` from the full checkpoint;
- ``vit_reference_outputs.pt``: teacher tokens at the global size and at a local size that needs
  the position embedding interpolated, the last block's attention, ``get_intermediate_layers(n=2)``,
  the teacher head's outputs and the masked student's tokens, with their inputs;
- ``vit_loss_reference.pt``: ``iBOTLoss`` called once per epoch of a sequence that crosses the
  teacher-temperature warm-up and the start of masked image modelling, with the centres after
  each call.

    python tools/make_official_fixtures.py --official /path/to/ibot [--output tests/fixtures/official]

Optional packages the official modules import but these outputs do not use (``tensorboardX``,
``munkres``) are replaced by empty stand-ins when they are not installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"
OFFICIAL_COMMIT = "da316d8"

# the network: ViT with patch 16 at 80 px (5 x 5 patches); 48-px local crops (3 x 3) need the
# position embedding interpolated by a non-integer factor, as 224 -> 96 px does (14 x 14 -> 6 x 6)
ARCH = dict(patch_size=16, img_size=80, local_size=48, embed_dim=64, depth=3, num_heads=2,
            out_dim=128, patch_out_dim=128, hidden_dim=64, bottleneck_dim=32)
BATCH = 2
CHECKPOINT_EPOCH = 4  # ``epoch + 1`` as main_ibot.py saves it after epoch 3
# official main_ibot.py arguments of the run the full checkpoint claims to come from
OFFICIAL_ARGV = ["--arch", "vit_tiny", "--patch_size", "16", "--out_dim", "128", "--patch_out_dim", "128",
                 "--shared_head", "true", "--norm_last_layer", "false", "--epochs", "10",
                 "--teacher_temp", "0.07", "--warmup_teacher_temp_epochs", "3", "--pred_start_epoch", "2",
                 "--local_crops_number", "4", "--use_fp16", "false"]

# iBOTLoss constructor arguments: K != K2 so the two centres cannot be mixed up; the patch
# temperature waits for mim_start_epoch, then warms up over warmup_teacher_temp_epochs
LOSS_CONFIG = dict(out_dim=32, patch_out_dim=24, ngcrops=2, nlcrops=3, warmup_teacher_temp=0.04,
                   teacher_temp=0.07, warmup_teacher_temp2=0.04, teacher_temp2=0.07,
                   warmup_teacher_temp_epochs=3, nepochs=10, student_temp=0.1, center_momentum=0.9,
                   center_momentum2=0.9, lambda1=1.0, lambda2=1.0, mim_start_epoch=2)
LOSS_EPOCHS = (0, 1, 2, 3, 4, 7)
LOSS_BATCH, LOSS_GRID = 3, (4, 4)


def import_official(checkout: Path) -> dict[str, types.ModuleType]:
    """The official modules, imported from ``checkout`` (stand-ins for missing optional packages)."""
    for name in ("main_ibot.py", "extract_backbone_weights.py", "models/vision_transformer.py", "models/head.py"):
        if not (checkout / name).is_file():
            raise FileNotFoundError(f"{checkout / name} not found: --official must be a checkout of bytedance/ibot")
    stand_ins = {"tensorboardX": {"SummaryWriter": object}, "munkres": {"Munkres": object}}
    for name, attributes in stand_ins.items():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            sys.modules[name] = types.SimpleNamespace(**attributes)  # type: ignore[assignment]
    sys.path.insert(0, str(checkout))
    names = ("main_ibot", "models", "models.head", "utils", "extract_backbone_weights")
    return {name: importlib.import_module(name) for name in names}


@torch.no_grad()
def randomise(module: nn.Module, gen: torch.Generator) -> None:
    """Random weights far from the official initialisation, so that a layer loaded wrongly shows:
    N(0, 1) [CLS] token, position and mask embeddings; weight-norm gains U(0.5, 1.5); every other
    parameter plus N(0, 0.1²) (LayerNorm weights around 1, biases around 0)."""
    for name, param in module.named_parameters():
        if name.endswith(("cls_token", "pos_embed", "masked_embed")):
            param.copy_(torch.randn(param.shape, generator=gen))
        elif name.endswith("weight_g"):
            param.copy_(torch.rand(param.shape, generator=gen) + 0.5)
        else:
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)


@torch.no_grad()
def perturb(module: nn.Module, gen: torch.Generator, scale: float) -> None:
    """Every parameter plus N(0, ``scale``²)."""
    for param in module.parameters():
        param.add_(torch.randn(param.shape, generator=gen) * scale)


def build_networks(official: dict[str, types.ModuleType], gen: torch.Generator) -> tuple[nn.Module, nn.Module]:
    """Student (DDP-wrapped, as main_ibot.py saves it) and teacher ``MultiCropWrapper``s, in eval mode."""
    models, utils, iBOTHead = official["models"], official["utils"], official["models.head"].iBOTHead

    def vit(**kwargs) -> nn.Module:  # the official vit_* factories with other sizes
        return models.VisionTransformer(img_size=[ARCH["img_size"]], patch_size=ARCH["patch_size"],
                                        embed_dim=ARCH["embed_dim"], depth=ARCH["depth"],
                                        num_heads=ARCH["num_heads"], mlp_ratio=4, qkv_bias=True,
                                        return_all_tokens=True, **kwargs)

    def head(**kwargs) -> nn.Module:
        return iBOTHead(ARCH["embed_dim"], ARCH["out_dim"], patch_out_dim=ARCH["patch_out_dim"], norm=None,
                        act="gelu", hidden_dim=ARCH["hidden_dim"], bottleneck_dim=ARCH["bottleneck_dim"],
                        shared_head=True, **kwargs)

    student = utils.MultiCropWrapper(vit(drop_path_rate=0.1, masked_im_modeling=True), head(norm_last_layer=False))
    teacher = utils.MultiCropWrapper(vit(), head())
    randomise(student, gen)
    student = nn.parallel.DistributedDataParallel(student)
    teacher.load_state_dict(student.module.state_dict(), strict=False)  # as main_ibot.py does
    perturb(teacher, gen, 0.01)  # the teacher drifts from the student, as after EMA updates
    for param in teacher.parameters():
        param.requires_grad = False
    return student.eval(), teacher.eval()


@torch.no_grad()
def reference_outputs(student: nn.Module, teacher: nn.Module, gen: torch.Generator) -> dict:
    """Official outputs on fixed inputs (see the module docstring and the fixtures' README)."""
    size, local, patch = ARCH["img_size"], ARCH["local_size"], ARCH["patch_size"]
    x_global = torch.randn(BATCH, 3, size, size, generator=gen)
    x_local = torch.randn(BATCH, 3, local, local, generator=gen)
    grid = size // patch
    mask = torch.rand(BATCH, grid, grid, generator=gen) < 0.4
    backbone = teacher.backbone
    head_cls, head_patch = teacher(x_global)  # MultiCropWrapper: backbone (all tokens), then head
    return {
        "x_global": x_global, "x_local": x_local,
        "tokens_global": backbone(x_global, return_all_tokens=True),
        "tokens_local": backbone(x_local, return_all_tokens=True),
        "last_attn": backbone.get_last_selfattention(x_global),
        "intermediate_n2": torch.stack(backbone.get_intermediate_layers(x_global, n=2)),
        "teacher_head_cls": head_cls, "teacher_head_patch": head_patch,
        "student_mask": mask,
        "student_masked_tokens": student.module.backbone(x_global, mask=mask, return_all_tokens=True),
        "arch": dict(ARCH),
    }


def full_checkpoint(official: dict[str, types.ModuleType], student: nn.Module, teacher: nn.Module,
                    reference: dict) -> dict:
    """What main_ibot.py saves as ``checkpoint.pth``; the centres hold one official update from the
    teacher's outputs on ``x_global``."""
    main_ibot, utils = official["main_ibot"], official["utils"]
    parser = argparse.ArgumentParser("iBOT", parents=[main_ibot.get_args_parser()])
    args = parser.parse_args(OFFICIAL_ARGV)
    args.arch = "vit_custom"  # not one of the official sizes: readers must be told the architecture
    ibot_loss = main_ibot.iBOTLoss(args.out_dim, args.out_dim, args.global_crops_number, args.local_crops_number,
                                   args.warmup_teacher_temp, args.teacher_temp, args.warmup_teacher_patch_temp,
                                   args.teacher_patch_temp, args.warmup_teacher_temp_epochs, args.epochs,
                                   lambda1=args.lambda1, lambda2=args.lambda2, mim_start_epoch=args.pred_start_epoch)
    ibot_loss.update_center(reference["teacher_head_cls"], reference["teacher_head_patch"])
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))  # before any step: empty state
    return {"student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": CHECKPOINT_EPOCH, "args": args, "ibot_loss": ibot_loss.state_dict()}


def extract_teacher_backbone(official: dict[str, types.ModuleType], full: Path, output: Path) -> None:
    """The official ``extract_backbone_weights.py FULL OUTPUT --checkpoint_key teacher``."""
    argv = sys.argv
    sys.argv = ["extract_backbone_weights.py", str(full), str(output), "--checkpoint_key", "teacher"]
    try:  # its plain torch.load is weights_only: allow the Namespace under 'args'
        with torch.serialization.safe_globals([argparse.Namespace]):
            official["extract_backbone_weights"].main()
    finally:
        sys.argv = argv


def loss_reference(official: dict[str, types.ModuleType], gen: torch.Generator) -> dict:
    """``iBOTLoss`` called once per epoch of ``LOSS_EPOCHS`` on random logits; centres carry over.

    Before ``mim_start_epoch`` every mask is empty, as the official ``ImageFolderMask`` gives
    (``get_pred_ratio`` returns 0), so the patch term is 0; afterwards each global crop has random
    masks with one image left unmasked."""
    cfg = LOSS_CONFIG
    loss = official["main_ibot"].iBOTLoss(**cfg)
    rows, tokens = cfg["ngcrops"] * LOSS_BATCH, LOSS_GRID[0] * LOSS_GRID[1]
    steps = []
    for epoch in LOSS_EPOCHS:
        step = {
            "epoch": epoch,
            "student_cls": torch.randn(rows, cfg["out_dim"], generator=gen),
            "student_patch": torch.randn(rows, tokens, cfg["patch_out_dim"], generator=gen),
            "teacher_cls": torch.randn(rows, cfg["out_dim"], generator=gen),
            "teacher_patch": torch.randn(rows, tokens, cfg["patch_out_dim"], generator=gen),
            "student_local_cls": torch.randn(cfg["nlcrops"] * LOSS_BATCH, cfg["out_dim"], generator=gen),
        }
        masks = [torch.rand(LOSS_BATCH, *LOSS_GRID, generator=gen) < 0.5 for _ in range(cfg["ngcrops"])]
        if epoch < cfg["mim_start_epoch"]:
            masks = [torch.zeros_like(m) for m in masks]
        else:
            masks[epoch % cfg["ngcrops"]][epoch % LOSS_BATCH] = False
        step["masks"] = masks
        with torch.no_grad():
            out = loss((step["student_cls"], step["student_patch"]), (step["teacher_cls"], step["teacher_patch"]),
                       step["student_local_cls"], masks, epoch)
        step["expected"] = {key: value.item() for key, value in out.items()}
        step["center_after"], step["center2_after"] = loss.center.clone(), loss.center2.clone()
        steps.append(step)
    return {"config": dict(cfg), "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True,
                        help=f"checkout of bytedance/ibot (commit {OFFICIAL_COMMIT}), outside this repository")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        official = import_official(args.official.resolve())
    except FileNotFoundError as exc:
        parser.error(str(exc))
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # one process: iBOTLoss and DDP all-reduce over gloo
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            gen = torch.Generator().manual_seed(args.seed)
            torch.manual_seed(args.seed)  # the official initialisation draws from the global generator
            student, teacher = build_networks(official, gen)
            reference = reference_outputs(student, teacher, gen)
            full = args.output / "vit_full_checkpoint.pth"
            torch.save(full_checkpoint(official, student, teacher, reference), full)
            extract_teacher_backbone(official, full, args.output / "vit_checkpoint_teacher.pth")
            torch.save(reference, args.output / "vit_reference_outputs.pt")
            torch.save(loss_reference(official, gen), args.output / "vit_loss_reference.pt")
        finally:
            dist.destroy_process_group()
    for path in sorted(args.output.glob("*.p*")):
        print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
