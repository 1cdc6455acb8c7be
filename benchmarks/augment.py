"""Multi-crop augmentation throughput: crops per second of one data-loader worker.

Decodes real JPEG photos of mixed sizes (300-800 px, made from scikit-learn's sample photographs
unless ``--image-dir`` is given) and produces the official 2 x 224 + 10 x 96 crops with

- ``ours``: :class:`ibot.data.transforms.MultiCropAugmentation` (official setting);
- ``torchvision-pil``: the baseline, DINO's recipe written here with ``torchvision.transforms``
  (v1) on PIL images: RandomResizedCrop (bicubic), flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8,
  grayscale p 0.2, PIL Gaussian blur (p 1.0 / 0.1 / 0.5), solarisation p 0.2 on global crop 2,
  ToTensor, Normalize;
- ``ours-batched``: ``MultiCropAugmentation(batched_color=True)``, what a worker does when colour
  jitter, grayscale, blur and solarisation run batched on the training device
  (``data.batched_color``): decoding, crop, flip, uint8 tensors and the colour parameters. The
  batched colour step itself is timed apart (``apply_color`` on the crops of 16 images at once),
  on this CPU with one thread by default, on a GPU with ``--colour-device cuda``;
- ``ours-batched-crops``: ``MultiCropAugmentation(batched_color=True, batched_crops=True)``, what a
  worker does when the crops are cut on the training device too (``data.batched_crops``): decoding,
  one uint8 tensor of the image, each crop's box, flip and colour parameters. The cut
  (``cut_crops`` on the 16 images, padded to one size) is timed apart like the colour step.

One process, one torch thread (as in a DataLoader worker); the implementations are interleaved
``--repeats`` times and the medians reported.

    python benchmarks/augment.py
    python benchmarks/augment.py --colour-device cuda   # where a GPU takes the colour step
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import _common
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps

from ibot.data.batched_color import apply_color
from ibot.data.batched_crops import CropPlan, cut_crops, pad_images
from ibot.data.pretrain import crop_major, split_global_local
from ibot.data.transforms import IMAGENET_MEAN, IMAGENET_STD, MultiCropAugmentation

N_GLOBAL, N_LOCAL = 2, 10


class _PILBlur:
    """DINO's blur: with probability p, PIL Gaussian blur of radius U[0.1, 2] (python ``random``)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class _PILSolarize:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def torchvision_pil_baseline() -> Callable[[Image.Image], list[torch.Tensor]]:
    """The paper's multi-crop transforms as DINO writes them, torchvision v1 on PIL."""
    colour = T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    bicubic = T.InterpolationMode.BICUBIC
    global1 = T.Compose([T.RandomResizedCrop(224, scale=(0.25, 1.0), interpolation=bicubic), colour,
                         _PILBlur(1.0), to_tensor])
    global2 = T.Compose([T.RandomResizedCrop(224, scale=(0.25, 1.0), interpolation=bicubic), colour,
                         _PILBlur(0.1), _PILSolarize(0.2), to_tensor])
    local = T.Compose([T.RandomResizedCrop(96, scale=(0.05, 0.25), interpolation=bicubic), colour,
                       _PILBlur(0.5), to_tensor])

    def crops(img: Image.Image) -> list[torch.Tensor]:
        return [global1(img), *(global2(img) for _ in range(N_GLOBAL - 1)), *(local(img) for _ in range(N_LOCAL))]

    return crops


def _augmented(augmentation: MultiCropAugmentation, files: list[Path]) -> list:
    """``augmentation`` of each of ``files`` (seeded)."""
    torch.manual_seed(0)
    outputs = []
    for path in files:
        with Image.open(path) as f:
            outputs.append(augmentation(f.convert("RGB")))
    return outputs


def _median_ms_per_image(step: Callable[[], object], n_images: int, repeats: int, device: str) -> float:
    """Median wall ms per image of ``step`` over ``repeats`` rounds after one warm-up round (CUDA
    kernels), synchronising a GPU around each round."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(repeats + 1):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(1e3 * (time.perf_counter() - start) / n_images)
    return _common.median(times[1:])


def batched_colour_ms(augmentation: MultiCropAugmentation, files: list[Path], repeats: int,
                      device: str = "cpu") -> float:
    """Median ms per image of ``apply_color`` on the global and the local crops of ``files``, the
    crops already on ``device`` (as after the training step's copy)."""
    pairs = _augmented(augmentation, files)
    groups = [[pair[c] for pair in pairs for c in crops] for crops in (range(N_GLOBAL), range(N_GLOBAL, N_GLOBAL + N_LOCAL))]
    batches = [(torch.stack([c for c, _ in g]).to(device), torch.stack([p for _, p in g])) for g in groups]

    def step() -> None:
        for crops, params in batches:
            apply_color(crops, params, augmentation.mean, augmentation.std)

    return _median_ms_per_image(step, len(files), repeats, device)


def batched_cut_ms(augmentation: MultiCropAugmentation, files: list[Path], repeats: int,
                   device: str = "cpu") -> float:
    """Median ms per image of ``cut_crops`` for the global and the local crops of ``files``, their
    images padded to one size and already on ``device``."""
    plans = _augmented(augmentation, files)
    images = pad_images([p.image for p in plans]).to(device)
    global_boxes, local_boxes = split_global_local(crop_major([p.boxes for p in plans]), N_GLOBAL * len(plans))

    def step() -> None:
        cut_crops(images, global_boxes, augmentation.global_crops_size)
        cut_crops(images, local_boxes, augmentation.local_crops_size)

    return _median_ms_per_image(step, len(files), repeats, device)


def run_once(pipeline: Callable[[Image.Image], list[torch.Tensor] | CropPlan], files: list[Path], seed: int) -> dict[str, float]:
    """Decode every file and make its crops; returns crops per second (wall clock and CPU time,
    which a shared machine's load disturbs less) and ms per image."""
    torch.manual_seed(seed)
    random.seed(seed)
    n_crops = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for path in files:
        with Image.open(path) as f:
            img = f.convert("RGB")
        out = pipeline(img)
        n_crops += len(out.boxes) if isinstance(out, CropPlan) else len(out)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"crops_per_s": n_crops / wall, "crops_per_cpu_s": n_crops / cpu, "ms_per_image": 1e3 * wall / len(files),
            "crops": n_crops}


def decode_ms(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as f:
            f.convert("RGB")
    return 1e3 * (time.perf_counter() - start) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="number of generated JPEGs")
    parser.add_argument("--min-size", type=int, default=300)
    parser.add_argument("--max-size", type=int, default=800)
    parser.add_argument("--image-dir", help="use the JPEG/PNG files of this folder (recursively) instead")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of every pipeline")
    parser.add_argument("--out", help="results file (default benchmarks/results/augment.json)")
    parser.add_argument("--colour-device", default="cpu", help="where to time the batched colour step (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker's setting

    with tempfile.TemporaryDirectory() as tmp:
        if args.image_dir:
            root = Path(args.image_dir)
            if not root.is_dir():
                parser.error(f"--image-dir: no such folder {root}")
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not files:
                parser.error(f"--image-dir: no JPEG or PNG files under {root}")
        else:
            files = sorted((_common.make_jpeg_folder(tmp, args.images, (args.min_size, args.max_size))
                            / "photos").glob("*.jpg"))
        sizes = []
        for path in files:
            with Image.open(path) as f:
                sizes.append(f.size)
        pipelines = {"ours": MultiCropAugmentation(), "torchvision-pil": torchvision_pil_baseline(),
                     "ours-batched": MultiCropAugmentation(batched_color=True),
                     "ours-batched-crops": MultiCropAugmentation(batched_color=True, batched_crops=True)}
        for name, pipeline in pipelines.items():  # warm-up: imports, caches
            run_once(pipeline, files[:4], seed=0)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
        for r in range(args.repeats):
            for name, pipeline in pipelines.items():
                runs[name].append(run_once(pipeline, files, seed=r))
        decode = decode_ms(files)
        colour_ms = batched_colour_ms(pipelines["ours-batched"], files[:16], args.repeats, args.colour_device)
        cut_ms = batched_cut_ms(pipelines["ours-batched-crops"], files[:16], args.repeats, args.colour_device)

    keys = ("crops_per_s", "crops_per_cpu_s", "ms_per_image")
    figures = {name: {**{k: _common.median([x[k] for x in rs]) for k in keys}, "runs": rs}
               for name, rs in runs.items()}
    base, base_cpu = figures["torchvision-pil"]["crops_per_s"], figures["torchvision-pil"]["crops_per_cpu_s"]
    ratio = figures["ours"]["crops_per_s"] / base
    ratio_cpu = figures["ours"]["crops_per_cpu_s"] / base_cpu
    pair_ratios = [o["crops_per_s"] / b["crops_per_s"] for o, b in zip(runs["ours"], runs["torchvision-pil"])]
    print(f"{len(files)} images, {min(min(s) for s in sizes)}-{max(max(s) for s in sizes)} px, "
          f"{N_GLOBAL} x 224 + {N_LOCAL} x 96 crops, 1 thread; JPEG decoding alone {decode:.1f} ms/image")
    _common.print_table(["pipeline", "crops/s", "crops/CPU-s", "ms/image", "x baseline (CPU-s)"],
                        [[name, f["crops_per_s"], f["crops_per_cpu_s"], f["ms_per_image"],
                          f["crops_per_cpu_s"] / base_cpu] for name, f in figures.items()])
    batched = figures["ours-batched"]
    ratio_batched = batched["crops_per_s"] / base
    crops_per_image = N_GLOBAL + N_LOCAL
    # everything on this one CPU: the worker's part, then the colour step
    cpu_only = crops_per_image / ((batched["ms_per_image"] + colour_ms) / 1e3)
    print(f"ours / torchvision-pil: {ratio:.2f}x crops/s (per round: {', '.join(f'{x:.2f}' for x in pair_ratios)}), "
          f"{ratio_cpu:.2f}x crops/CPU-s")
    print(f"ours-batched per worker / torchvision-pil: {ratio_batched:.2f}x crops/s "
          f"(target >= 2x: {'met' if ratio_batched >= 2 else 'NOT met'}); the batched colour step costs "
          f"{colour_ms:.1f} ms/image on {args.colour_device} (1 CPU thread), "
          f"{cpu_only / base:.2f}x the baseline with both in one process")
    cut = figures["ours-batched-crops"]
    cut_cpu_only = crops_per_image / ((cut["ms_per_image"] + cut_ms + colour_ms) / 1e3)
    print(f"ours-batched-crops per worker / torchvision-pil: {cut['crops_per_s'] / base:.2f}x crops/s; cutting the "
          f"crops costs {cut_ms:.1f} ms/image on {args.colour_device}, {cut_cpu_only / base:.2f}x the baseline "
          f"with the worker's part, the cut and the colour step in one process")
    path = _common.write_results("augment", {
        "setting": {"images": len(files), "sizes_px": [min(min(s) for s in sizes), max(max(s) for s in sizes)],
                    "source": args.image_dir or "generated from sklearn sample photos", "crops_per_image":
                    [f"{N_GLOBAL} x 224", f"{N_LOCAL} x 96"], "torch_threads": 1, "repeats": args.repeats},
        "decode_ms_per_image": decode,
        "pipelines": figures,
        "ratio_ours_over_baseline": ratio,
        "ratio_ours_over_baseline_cpu_time": ratio_cpu,
        "ratio_per_round": pair_ratios,
        "batched_colour_ms_per_image": colour_ms,
        "batched_colour_device": args.colour_device,
        "ratio_batched_worker_over_baseline": ratio_batched,
        "ratio_batched_both_halves_in_one_process_over_baseline": cpu_only / base,
        "batched_cut_ms_per_image": cut_ms,
        "ratio_batched_crops_worker_over_baseline": cut["crops_per_s"] / base,
        "ratio_batched_crops_all_in_one_process_over_baseline": cut_cpu_only / base,
        "target_ratio": 2.0,
    }, path=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
