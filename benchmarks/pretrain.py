"""Steady-state pre-training throughput, data/compute split and peak memory, ours beside the
official implementation.

Settings: ``cpu`` (the ``cpu`` preset: 4-block ViT, patch 7, 28 + 14 px crops, batch 64, without
its KoLeo term, which the official step does not have; its data-loader run uses the preset's
batched crops and colour) and
``vit_small`` (the official ViT-S/16 recipe: 2 x 224 global + 10 x 96 local crops, block masks,
out_dim 8192) at a small batch (``--vit-batch``, 4 by default on CPU).

Measured per setting, each run in its own process (so peak memory is that implementation's):

- ``model`` step, ours and official, on the same synthetic batches (random crops and block masks
  drawn from one seed), the same initial weights and the same schedules; the runs alternate
  ours / official / official / ours ... ``--repeats`` times so that a ratio is not an artefact of
  load on a shared machine. Ours is :meth:`ibot.train.trainer.Pretrainer.train_step`; the
  official step is ``main_ibot.train_one_epoch`` of the checkout given by ``--official-repo``,
  called unchanged on the synthetic batches. Only what it needs to run on one process is patched
  at run time: a one-process process group (gloo on CPU), a stand-in for DDP's ``.module``
  (no DDP, which can only favour the official step), and on CPU ``Tensor.cuda``,
  ``torch.cuda.synchronize`` and the epoch-end ``cuda`` tensor of its metric logger become no-ops.
- ``loader`` step, ours only (each ``--ours`` variant, in the same alternating order): the full
  step fed by the real data loader (JPEG photos of mixed sizes for ``vit_small``, the
  Fashion-MNIST subset for ``cpu``), with the time spent waiting for data.

CPU memory is the peak RSS of the process (``ru_maxrss``; ``setup`` is the RSS before the first
step), GPU memory ``torch.cuda.max_memory_allocated``. Steps run at epoch ``freeze_last_layer``
(the first epoch in which every parameter is trained).

After the timed steps each model run counts the work of one more step on the first batch
(``gflop_per_image``: ``torch.utils.flop_counter`` over matmuls and convolutions, forward and
backward; our attention runs in its explicit form for that step so that it is counted too). The
ratio official / ours is the speed-up to expect where both run their matmuls equally fast.

    python benchmarks/pretrain.py --official-repo /tmp/official_ibot
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch

from ibot.build import build_mask_generator
from ibot.config import PretrainConfig, resolve_config
from ibot.data.pretrain import PretrainBatch, masked_token_index
from ibot.models import use_explicit_attention

SETTINGS = {"cpu": "cpu", "vit_small": "vit_small_16"}


# ---------------------------------------------------------------------------------- set-up
def make_config(spec: dict[str, Any]) -> PretrainConfig:
    overrides = [f"data.data={spec['data']}", f"data.num_workers={spec['workers']}", f"run.device={spec['device']}",
                 f"run.output_dir={spec['tmp']}/run", "run.progress=false", "run.tensorboard=false",
                 "run.knn_eval=false",
                 "loss.koleo_weight=0"]  # the cpu preset's KoLeo term is not in the official step: same maths
    if spec["batch"]:
        overrides.append(f"optim.batch_size_per_device={spec['batch']}")
    return resolve_config(SETTINGS[spec["setting"]], overrides=overrides + spec.get("overrides", []))


def synthetic_batches(cfg: PretrainConfig, count: int, epoch: int, pin: bool = False,
                      seed: int = 0) -> list[PretrainBatch]:
    """``count`` batches of normal-noise crops with the recipe's masks, the same for any caller;
    in pinned memory with ``pin`` (as a CUDA run's data loaders deliver them)."""
    d, b = cfg.data, cfg.optim.batch_size_per_device
    masker = build_mask_generator(cfg.mask)
    grid = (d.global_crops_size // cfg.model.patch_size,) * 2
    batches = []
    for step in range(count):
        gen = torch.Generator().manual_seed(seed + step)
        global_crops = torch.randn(d.global_crops_number * b, 3, d.global_crops_size, d.global_crops_size,
                                   generator=gen)
        local_crops = None
        if d.local_crops_number:
            local_crops = torch.randn(d.local_crops_number * b, 3, d.local_crops_size, d.local_crops_size,
                                      generator=gen)
        rng = np.random.default_rng([seed, step])
        masks = torch.from_numpy(np.stack([masker(grid, epoch, rng) for _ in range(d.global_crops_number * b)]))
        batch = PretrainBatch(global_crops, local_crops, masks, *masked_token_index(masks))
        batches.append(batch.pin_memory() if pin else batch)
    return batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _speed(wall: float, cpu: float, steps: int, batch: int) -> dict[str, float]:
    """Wall-clock figures, and the process's CPU time per step (all threads), which a shared
    machine's load disturbs less."""
    return {"s_per_step": wall / steps, "images_per_s": steps * batch / wall, "cpu_s_per_step": cpu / steps,
            "images_per_cpu_s": steps * batch / cpu}


def _gflop_per_image(step, batch: int) -> float:
    """GFLOP of one call of ``step`` (a training step) per image, as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch / 1e9


def _memory(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": _common.peak_rss_mb()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ---------------------------------------------------------------------------------- ours
def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from ibot.train.trainer import Pretrainer

    cfg = make_config(spec)
    trainer = Pretrainer(cfg)
    trainer.student.train()
    epoch, device = cfg.optim.freeze_last_layer, trainer.device
    it0 = epoch * trainer.steps_per_epoch
    warmup, steps, batch = spec["warmup"], spec["steps"], cfg.optim.batch_size_per_device
    losses, times, data_time = [], [], 0.0
    if spec["mode"] == "model":
        batches = synthetic_batches(cfg, warmup + steps, epoch, pin=device.type == "cuda")
        source = iter(batches)
    else:
        trainer.sampler.epoch = epoch
        source = _endless(trainer.loader)
    setup_rss = _common.current_rss_mb()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start, cpu_start, data_time = time.perf_counter(), time.process_time(), 0.0
        tic = time.perf_counter()
        item = next(source)
        data_time += time.perf_counter() - tic
        out = trainer.train_step(item, epoch, it0 + step)
        losses.append(out["loss"])
        if device.type == "cpu":
            float(out["loss"])  # the trainer's per-step finiteness check on CPU
        times.append(time.perf_counter() - tic)
    _sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    result = {**_speed(wall, cpu, steps, batch), "step_times": times[warmup:],
              "losses": [float(x) for x in losses], "setup_rss_mb": setup_rss, **_memory(device),
              "precision": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(trainer.amp_dtype, "fp32"),
              "params": sum(p.numel() for p in trainer.student.parameters())}
    if spec["mode"] == "model" and not cfg.run.compile:
        use_explicit_attention(trainer.student, trainer.teacher)  # the counter does not see inside the fused kernel
        first = synthetic_batches(cfg, 1, epoch)[0]
        result["gflop_per_image"] = _gflop_per_image(lambda: trainer.train_step(first, epoch, it0), batch)
    if spec["mode"] == "loader":
        result["data_wait_s_per_step"] = data_time / steps
        result["data_wait_share"] = data_time / wall
        result["worker_peak_rss_mb"] = _common.children_peak_rss_mb()
    return result


def _endless(loader):
    while True:  # one epoch per iterator; the sampler moves on to the next epoch
        yield from loader


# ---------------------------------------------------------------------------------- official
class _NoDDP(torch.nn.Module):
    """What ``train_one_epoch`` needs of DDP at world size 1: ``.module`` and the forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class _TimedBatches:
    """The official loop's data loader: yields the batches, stamping the time of each request."""

    def __init__(self, batches: list) -> None:
        self.batches, self.stamps, self.cpu_stamps = batches, [], []

    def __len__(self) -> int:
        return len(self.batches)

    def _stamp(self) -> None:
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())

    def __iter__(self):
        for batch in self.batches:
            self._stamp()
            yield batch
        self._stamp()


def _import_official(repo: Path, device: torch.device) -> types.SimpleNamespace:
    """The official ``models``, ``utils`` and ``main_ibot``, patched for one process."""
    if not (repo / "main_ibot.py").is_file():
        raise FileNotFoundError(f"--official-repo: no main_ibot.py in {repo}")
    sys.path.insert(0, str(repo))
    for name in ("tensorboardX", "munkres"):  # logging / clustering-accuracy imports the step never uses
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.SimpleNamespace(SummaryWriter=None, Munkres=None)
    import main_ibot
    import models
    import utils
    from models.head import iBOTHead

    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
        torch.cuda.synchronize = lambda *args, **kwargs: None
        utils.MetricLogger.synchronize_between_processes = lambda self: None  # builds a cuda tensor
    return types.SimpleNamespace(main=main_ibot, models=models, utils=utils, head=iBOTHead)


def run_official(spec: dict[str, Any]) -> dict[str, Any]:
    cfg, device = make_config(spec), torch.device(spec["device"])
    official = _import_official(Path(spec["official_repo"]), device)
    torch.distributed.init_process_group("gloo" if device.type == "cpu" else "nccl",
                                         init_method=f"file://{spec['tmp']}/pg-{os.getpid()}", rank=0, world_size=1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train_ibot sets it
    m, d, o, loss_cfg = cfg.model, cfg.data, cfg.optim, cfg.loss
    dims = spec["dims"]

    def network(student: bool) -> torch.nn.Module:
        backbone = official.models.VisionTransformer(
            img_size=[d.global_crops_size], patch_size=m.patch_size, embed_dim=dims["embed_dim"],
            depth=dims["depth"], num_heads=dims["num_heads"], mlp_ratio=4, qkv_bias=True,
            drop_path_rate=m.drop_path_rate if student else 0.0, return_all_tokens=True,
            masked_im_modeling=student)
        head = official.head(dims["embed_dim"], m.out_dim, patch_out_dim=m.patch_out_dim, norm=None, act="gelu",
                             norm_last_layer=m.norm_last_layer if student else True,
                             shared_head=m.shared_head if student else m.shared_head_teacher,
                             nlayers=m.head_nlayers, hidden_dim=m.head_hidden_dim,
                             bottleneck_dim=m.head_bottleneck_dim)
        return official.utils.MultiCropWrapper(backbone, head).to(device)

    student, teacher = network(True), network(False)
    student.load_state_dict(torch.load(spec["init"], map_location=device, weights_only=True))  # ours, strict
    teacher.load_state_dict(student.state_dict(), strict=False)
    for p in teacher.parameters():
        p.requires_grad = False
    same_dim = m.shared_head or m.shared_head_teacher
    ibot_loss = official.main.iBOTLoss(
        m.out_dim, m.out_dim if same_dim else m.patch_out_dim, d.global_crops_number, d.local_crops_number,
        loss_cfg.warmup_teacher_temp, loss_cfg.teacher_temp, loss_cfg.warmup_teacher_patch_temp,
        loss_cfg.teacher_patch_temp, loss_cfg.warmup_teacher_temp_epochs, o.epochs, lambda1=loss_cfg.lambda1,
        lambda2=loss_cfg.lambda2, mim_start_epoch=cfg.mask.pred_start_epoch).to(device)
    losses: list[torch.Tensor] = []
    ibot_loss.register_forward_hook(lambda module, inputs, output: losses.append(output["loss"].detach()))
    optimizer = torch.optim.AdamW(official.utils.get_params_groups(student))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None  # official: fp16 on GPU

    epoch, warmup, steps, batch = o.freeze_last_layer, spec["warmup"], spec["steps"], o.batch_size_per_device
    b, g = batch, d.global_crops_number
    data = _TimedBatches([
        (list(x.global_crops.split(b)) + (list(x.local_crops.split(b)) if x.local_crops is not None else []),
         torch.zeros(b, dtype=torch.long), list(x.masks.split(b)))
        for x in synthetic_batches(cfg, warmup + steps, epoch, pin=device.type == "cuda")])
    # our schedules' values at our iterations it0 + i, indexed as the official loop does (len * epoch + i)
    shift = epoch * spec["steps_per_epoch"] - epoch * len(data)
    if shift < 0:
        raise ValueError(f"--steps: {len(data)} steps exceed an epoch of {spec['steps_per_epoch']}")
    lr, n = o.lr * batch / 256.0, spec["steps_per_epoch"]
    schedules = [official.utils.cosine_scheduler(lr, o.min_lr, o.epochs, n, warmup_epochs=o.warmup_epochs),
                 official.utils.cosine_scheduler(o.weight_decay, o.weight_decay_end, o.epochs, n),
                 official.utils.cosine_scheduler(o.momentum_teacher, 1, o.epochs, n)]
    args = argparse.Namespace(global_crops_number=g, clip_grad=o.clip_grad, freeze_last_layer=o.freeze_last_layer,
                              epochs=o.epochs, use_masked_im_modeling=True)

    def train(batches) -> None:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # its metric logger prints
            official.main.train_one_epoch(_NoDDP(student), teacher, teacher, ibot_loss, batches, optimizer,
                                          *(s[shift:] for s in schedules), epoch, scaler, args)

    torch.manual_seed(cfg.run.seed + 1000)
    setup_rss = _common.current_rss_mb()
    train(data)
    stamps, cpu = data.stamps, data.cpu_stamps
    wall = stamps[warmup + steps] - stamps[warmup]
    result = {**_speed(wall, cpu[warmup + steps] - cpu[warmup], steps, batch), "precision": "fp32" if scaler is None
              else "fp16", "step_times": [stamps[i + 1] - stamps[i] for i in range(warmup, warmup + steps)],
              "losses": [float(x) for x in losses], "setup_rss_mb": setup_rss, **_memory(device),
              "params": sum(p.numel() for p in student.parameters())}
    result["gflop_per_image"] = _gflop_per_image(lambda: train(data.batches[:1]), batch)
    return result


# ---------------------------------------------------------------------------------- driver
def child(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run one measurement in a fresh process; returns its result."""
    spec_path = Path(spec["tmp"]) / f"spec-{spec['setting']}-{spec['name']}-{spec['mode']}.json"
    spec_path.write_text(json.dumps(spec))
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, __file__, "--child", str(spec_path)], stdout=out, stderr=out)
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{spec['name']} {spec['setting']} {spec['mode']} run failed (exit {code}):\n{tail}")
    return json.loads(spec_path.with_suffix(".out.json").read_text())


def initial_weights(spec: dict[str, Any]) -> tuple[str, dict[str, int]]:
    """Our student's initial weights (as the trainer makes them) in a file, and its sizes."""
    from ibot.build import build_student_teacher

    cfg = make_config(spec)
    torch.manual_seed(cfg.run.seed)
    student, _ = build_student_teacher(cfg)
    path = Path(spec["tmp"]) / f"init-{spec['setting']}.pt"
    torch.save(student.state_dict(), path)
    bb = student.backbone
    return str(path), {"embed_dim": bb.embed_dim, "depth": len(bb.blocks), "num_heads": bb.num_heads}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["images_per_s", "s_per_step", "images_per_cpu_s", "cpu_s_per_step", "peak_rss_mb", "setup_rss_mb",
            "peak_gpu_mb", "data_wait_share", "gflop_per_image"]
    out = {k: _common.median([r[k] for r in runs]) for k in keys if k in runs[0]}
    out["precision"] = runs[0]["precision"]
    out["runs"] = runs
    return out


def compare(ours: list[dict[str, Any]], official: list[dict[str, Any]], device: str, drop_path: float) -> dict:
    """Ratios ours / official: medians and round by round."""
    a, b = summarise(ours), summarise(official)
    mem = "peak_gpu_mb" if device.startswith("cuda") else "peak_rss_mb"
    la, lb = np.array(ours[0]["losses"]), np.array(official[0]["losses"])
    return {
        "images_per_s": a["images_per_s"] / b["images_per_s"],
        "images_per_s_per_round": [x["images_per_s"] / y["images_per_s"] for x, y in zip(ours, official)],
        "images_per_cpu_s": a["images_per_cpu_s"] / b["images_per_cpu_s"],
        "peak_memory": a[mem] / b[mem],
        "memory_growth": (a["peak_rss_mb"] - a["setup_rss_mb"]) / (b["peak_rss_mb"] - b["setup_rss_mb"]),
        "loss_max_rel_diff": float(np.max(np.abs(la - lb) / np.abs(lb))),
        "loss_comparable": drop_path == 0,  # drop path draws differ otherwise
        "official_over_ours_gflop": b["gflop_per_image"] / a["gflop_per_image"] if "gflop_per_image" in a else None,
    }


def parse_variant(text: str) -> dict[str, Any]:
    """``NAME[:KEY=VALUE,...]``: a name for a run of ours and its config overrides."""
    name, _, overrides = text.partition(":")
    pairs = [o.strip() for o in overrides.split(",") if o.strip()]
    bad = [o for o in pairs if "=" not in o]
    if not name or bad:
        raise ValueError(f"--ours {text!r}: expected NAME[:section.key=value,...]")
    return {"name": name if name.startswith("ours") else f"ours-{name}", "overrides": pairs}


def bench_setting(setting: str, args: argparse.Namespace, tmp: str, log: Path) -> dict[str, Any]:
    from ibot.data.datasets import build_dataset

    spec = {"setting": setting, "device": args.device, "tmp": tmp, "workers": 0,
            "data": "fashion-mnist:subset", "batch": args.vit_batch if setting == "vit_small" else args.cpu_batch,
            "warmup": args.warmup, "steps": args.steps or (10 if setting == "cpu" else 2), "threads": args.threads}
    cfg = make_config(spec)
    batch = cfg.optim.batch_size_per_device
    spec["steps_per_epoch"] = len(build_dataset(cfg.data.data)) // batch
    variants = [{"impl": "ours", **variant} for variant in args.ours or [parse_variant("ours")]]
    if args.official_repo:
        variants.append({"name": "official", "impl": "official"})
        spec["official_repo"] = str(Path(args.official_repo).resolve())
        spec["init"], spec["dims"] = initial_weights(spec)
    runs: dict[str, list] = {v["name"]: [] for v in variants}
    for r in range(args.repeats):
        for variant in variants if r % 2 == 0 else variants[::-1]:  # ABBA order against drifting load
            result = child({**spec, **variant, "mode": "model"}, log)
            runs[variant["name"]].append(result)
            print(f"  {setting} {variant['name']} model step, round {r + 1}: {result['images_per_s']:.3g} img/s "
                  f"({result['images_per_cpu_s']:.3g} per CPU-s), peak RSS {result['peak_rss_mb']:.0f} MiB", flush=True)
    out: dict[str, Any] = {
        "arch": f"{cfg.model.arch}/{cfg.model.patch_size}", "batch": batch, "out_dim": cfg.model.out_dim,
        "crops": f"{cfg.data.global_crops_number} x {cfg.data.global_crops_size} + "
                 f"{cfg.data.local_crops_number} x {cfg.data.local_crops_size}",
        "steps": spec["steps"], "warmup": spec["warmup"], "threads": args.threads or torch.get_num_threads(),
        "model_step": {name: summarise(rs) for name, rs in runs.items()}}
    if args.official_repo:
        out["ours_over_official"] = {name: compare(rs, runs["official"], args.device, cfg.model.drop_path_rate)
                                     for name, rs in runs.items() if name != "official"}
    else:
        out["baseline"] = "skipped: no --official-repo given"
    if args.loader:  # every variant fed by the real data loader, in the same ABBA order
        loader_spec = {**spec, "mode": "loader", "workers": args.workers}
        if setting == "vit_small":
            loader_spec["data"] = str(_common.make_jpeg_folder(Path(tmp) / "jpegs", n=max(64, 8 * batch)))
        fed: dict[str, list] = {v["name"]: [] for v in variants if v["impl"] == "ours"}
        for r in range(args.repeats):
            for variant in [v for v in (variants if r % 2 == 0 else variants[::-1]) if v["impl"] == "ours"]:
                result = child({**loader_spec, **variant}, log)
                fed[variant["name"]].append(result)
                print(f"  {setting} {variant['name']} + data loader, round {r + 1}: {result['images_per_s']:.3g} "
                      f"img/s, data wait {100 * result['data_wait_share']:.1f}%", flush=True)
        out["loader_steps"] = {}
        for name, rs in fed.items():
            summary = {"workers": args.workers, "data": "JPEG photos 300-800 px" if setting == "vit_small"
                       else loader_spec["data"], **summarise(rs)}
            summary["slowdown_vs_model_step"] = out["model_step"][name]["images_per_s"] / summary["images_per_s"]
            out["loader_steps"][name] = summary
    return out


def report(results: dict[str, Any], device: str) -> None:
    mem = "peak_gpu_mb" if device.startswith("cuda") else "peak_rss_mb"
    rows = []
    for setting, r in results.items():
        for name, m in r["model_step"].items():
            rows.append([setting, f"{name} ({m['precision']})", r["batch"], m["images_per_s"], m["s_per_step"],
                         m["images_per_cpu_s"], "-", m[mem]])
        for name, m in r.get("loader_steps", {}).items():
            rows.append([setting, f"{name} + data loader ({m['workers']} workers)", r["batch"],
                         m["images_per_s"], m["s_per_step"], m["images_per_cpu_s"],
                         f"{100 * m['data_wait_share']:.1f}%", m[mem]])
    _common.print_table(["setting", "implementation", "batch", "images/s", "s/step", "images/CPU-s", "data wait",
                         f"{mem} (MiB)"], rows)
    for setting, r in results.items():
        for name, c in r.get("ours_over_official", {}).items():
            rounds = ", ".join(f"{x:.2f}" for x in c["images_per_s_per_round"])
            print(f"{setting}: {name} / official: images/s {c['images_per_s']:.2f}x (rounds: {rounds}), "
                  f"per CPU-s {c['images_per_cpu_s']:.2f}x; peak memory {c['peak_memory']:.2f}x (growth "
                  f"{c['memory_growth']:.2f}x); losses max rel. diff {c['loss_max_rel_diff']:.1e}"
                  + ("" if c["loss_comparable"] else " (drop path: not comparable)"))
            if c["official_over_ours_gflop"]:
                gflop = {n: r["model_step"][n]["gflop_per_image"] for n in (name, "official")}
                print(f"{setting}: work per image {gflop[name]:.3g} GFLOP ({name}) vs {gflop['official']:.3g} (official): "
                      f"{c['official_over_ours_gflop']:.2f}x less, the speed-up at equal matmul speed")
        if "baseline" in r:
            print(f"{setting}: official baseline {r['baseline']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", help="work tree of bytedance/ibot to measure beside ours")
    parser.add_argument("--settings", default="cpu,vit_small", help="comma-separated: cpu, vit_small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--ours", action="append", type=parse_variant, metavar="NAME[:KEY=VALUE,...]",
                        help="a variant of ours with config overrides, e.g. bf16:run.precision=bf16 or "
                             "compiled:run.compile=true (repeatable; default: one run of the preset as it is)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--vit-batch", type=int, default=4, help="per-device batch of vit_small")
    parser.add_argument("--cpu-batch", type=int, default=0, help="batch of the cpu setting (0: the preset's 64)")
    parser.add_argument("--steps", type=int, default=0, help="measured steps per run (0: 10 cpu, 2 vit_small)")
    parser.add_argument("--warmup", type=int, default=1, help="steps before measuring")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of ours + official, interleaved")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="data-loader workers")
    parser.add_argument("--no-loader", dest="loader", action="store_false", help="skip the data-loader run")
    parser.add_argument("--out", help="results file (default benchmarks/results/pretrain.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(Path(args.child).read_text())
        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        result = (run_ours if spec["impl"] == "ours" else run_official)(spec)
        Path(args.child).with_suffix(".out.json").write_text(json.dumps(result))
        return

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    if args.official_repo and not (Path(args.official_repo) / "main_ibot.py").is_file():
        parser.error(f"--official-repo: no main_ibot.py in {args.official_repo}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "children.log"
        for setting in settings:
            results[setting] = bench_setting(setting, args, tmp, log)
    report(results, args.device)
    path = _common.write_results("pretrain", {"settings": results}, device=args.device, path=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
