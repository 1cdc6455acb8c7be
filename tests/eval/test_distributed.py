"""The evaluation commands on 2 processes over gloo give the one-process figures.

One spawn of 2 processes (``torchrun``'s environment variables, one port per command) runs every
job of :func:`_jobs` in turn; each test then runs its command in this process and compares.
Feature extraction hands each process whole one-process batches, so the features are the same
numbers; k-NN, the linear sweep, clustering, semi-supervised and the segmentation probe on kept
features agree to 1e-6 (relative), the val counts of fine-tuning exactly. Fine-tuning's training
draws its augmentations per process: there, the schedule and the step count match exactly, the
loss within the noise of the seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from ibot.cli import main
from tests.eval.test_segment import Cells

pytestmark = pytest.mark.distributed

QUIET = ["--no-progress", "--num-workers", "0"]
REL = 1e-6  # float summation order; the features themselves are the one-process numbers


def _jobs(checkpoint: str, data: str, ade: str, out: str) -> dict[str, list[str] | str]:
    """Command lines (``OUT`` the output folder of the run) or names of functions of this module."""
    feature = ["-c", checkpoint, "--data", data, "--batch-size", "5"]  # 25 train images: 5 batches
    segment = ["segment", "-c", checkpoint, "--data", ade, "--image-size", "16", "--epochs", "2", "--lrs", "1e-3",
               "1e-2", "--batch-size", "2", "--train-batch-size", "4", *QUIET]
    finetune = ["finetune", "-c", checkpoint, "--data", data, "--output-dir", f"{out}/finetune", "--batch-size", "8",
                "--warmup-epochs", "0", "--head-init-epochs", "3", "--freeze-backbone-epochs", "1", "--ema",
                "--device", "cpu", *QUIET]
    return {
        "knn": ["knn", *feature, "--output-dir", f"{out}/knn", "--ks", "1", "3", "5", "--num-workers", "0"],
        "knn_cached": ["knn", *feature, "--output-dir", f"{out}/knn", "--ks", "1", "3", "5", *QUIET],
        "linear": ["linear", *feature, "--output-dir", f"{out}/linear", "--epochs", "3", "--lrs", "0.1", "1",
                   "--train-batch-size", "8", *QUIET],
        "cluster": ["cluster", *feature, "--output-dir", f"{out}/cluster", *QUIET],
        "semisup": ["semisup", *feature, "--output-dir", f"{out}/semisup", "--fractions", "0.25", "0.5", *QUIET],
        "segment": [*segment, "--output-dir", f"{out}/segment"],
        "segment_recomputed": [*segment, "--output-dir", f"{out}/segment_recomputed", "--cache-gb", "0",
                               "--eval-mode", "slide"],
        "finetune": [*finetune, "--epochs", "2"],
        "finetune_resumed": [*finetune, "--epochs", "3", "--resume", "auto"],
        "knn_query_chunks": "_knn_query_chunks",
        "finetune_ranks": "_finetune_ranks",
    }


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _random_features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g),
            torch.randn(19, 8, generator=g), torch.randint(0, 4, (19,), generator=g))


def _knn_query_chunks(rank: int, out: Path, setup: dict) -> None:
    """k-NN with 5 chunks of 4 queries shared out: rank 0 takes chunks 0, 2, 4, rank 1 chunks 1, 3."""
    from ibot.distributed import cleanup, init_distributed
    from ibot.eval.knn import knn_classify

    init_distributed("cpu")
    result = knn_classify(*_random_features(), ks=(1, 5), chunk_size=4, sharded=True)
    (out / f"knn_query_chunks.rank{rank}.json").write_text(json.dumps(result))
    cleanup()


def _tuner(setup: dict, out: Path):
    from ibot.eval.checkpoints import load_backbone
    from ibot.eval.finetune import Finetuner
    from ibot.eval.finetune_config import FinetuneConfig

    loaded = load_backbone(setup["checkpoint"], drop_path_rate=0.1)
    cfg = FinetuneConfig(epochs=2, batch_size=8, warmup_epochs=0, image_size=16, num_workers=0, progress=False,
                         device="cpu", freeze_backbone_epochs=1)
    return Finetuner(loaded.backbone, loaded.arch, setup["data"], cfg, out)


def _finetune_ranks(rank: int, out: Path, setup: dict) -> None:
    """Two epochs, the first with the backbone frozen (DDP made again when it starts learning);
    each process keeps its weights."""
    from ibot.distributed import cleanup, init_distributed

    init_distributed("cpu")
    tuner = _tuner(setup, out / "finetune_ranks")
    tuner.fit()
    torch.save(tuner.model.state_dict(), out / f"finetune_ranks.rank{rank}.pt")
    cleanup()


def _worker(rank: int, world: int, ports: list[int], jobs: dict, out: str, setup: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = Path(out)
    for (name, job), port in zip(jobs.items(), ports):
        os.environ["MASTER_PORT"] = str(port)
        with open(out / f"{name}.rank{rank}.out", "w") as stdout, open(out / f"{name}.rank{rank}.err", "w") as stderr, \
                contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(job) if isinstance(job, list) else globals()[job](rank, out, setup) or 0
        if rc:  # mp.spawn stops the other process
            raise RuntimeError(f"{name} failed on rank {rank}: {(out / f'{name}.rank{rank}.err').read_text()}")


def _make_ade(root: Path) -> Path:
    """An ADE20K-layout folder of :class:`Cells` scenes (16 x 24 px): 9 training images and an
    unreadable one, 5 validation images."""
    for split, n, seed in (("training", 9, 0), ("validation", 5, 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        cells = Cells(n, seed, width=24)
        for i, mask in enumerate(cells.masks):
            cells[i][0].save(root / "images" / split / f"ADE_{i}.jpg", quality=100)
            # ADE20K stores class c as c + 1 (0: ignored)
            Image.fromarray((mask + 1).astype(np.uint8), mode="L").save(root / "annotations" / split / f"ADE_{i}.png")
    (root / "images" / "training" / "ADE_9.jpg").write_bytes(b"\xff\xd8 not really")
    shutil.copy(root / "annotations" / "training" / "ADE_0.png", root / "annotations" / "training" / "ADE_9.png")
    return root


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict:
    """The jobs run by 2 processes (under ``two/``); the images have one unreadable file in train/."""
    checkpoint, folder = tiny_run
    root = tmp_path_factory.mktemp("distributed")
    data = shutil.copytree(folder, root / "images")
    (sorted((data / "train").iterdir())[0] / "9_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ade = _make_ade(root / "ade")
    setup = {"checkpoint": str(checkpoint), "data": str(data), "ade": str(ade)}
    two = root / "two"
    two.mkdir()
    jobs = _jobs(str(checkpoint), str(data), str(ade), str(two))
    mp.spawn(_worker, args=(2, _free_ports(len(jobs)), jobs, str(two), setup), nprocs=2, join=True)
    return {"root": root, "two": two, "setup": setup}


@pytest.fixture
def one_process():
    """Run a job of :func:`_jobs` here (one thread, as the spawned processes); returns its output folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(runs: dict, name: str) -> Path:
        out = runs["root"] / "one"
        job = _jobs(runs["setup"]["checkpoint"], runs["setup"]["data"], runs["setup"]["ade"], str(out))[name]
        assert main(job) == 0
        return out

    yield run
    torch.set_num_threads(threads)


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def output(runs: dict, name: str, rank: int, stream: str = "out") -> str:
    return (runs["two"] / f"{name}.rank{rank}.{stream}").read_text()


def test_knn_two_processes_equal_one(runs, one_process, capsys):
    one = read(one_process(runs, "knn") / "knn", "knn.json")
    two = read(runs["two"] / "knn", "knn.json")
    assert (two["num_train"], two["num_val"], two["skipped_images"]) == (24, 12, 1)
    for key in ("num_train", "num_val", "skipped_images", "best_k"):
        assert two[key] == one[key]
    for k, acc in one["results"].items():
        assert two["results"][k] == pytest.approx(acc, rel=REL)
    assert read(runs["two"] / "knn", "knn.json") == two  # the second run read the features rank 0 cached
    for path in sorted((runs["root"] / "one" / "knn" / "features").glob("*.pt")):
        mine, theirs = (torch.load(p, weights_only=True) for p in (path, runs["two"] / "knn" / "features" / path.name))
        torch.testing.assert_close(theirs["features"], mine["features"], rtol=REL, atol=1e-7)
        assert torch.equal(theirs["labels"], mine["labels"]) and theirs["skipped"] == mine["skipped"]
    # console output once: rank 0 prints the figures and shows the bars, rank 1 neither
    assert "k-NN on" in output(runs, "knn", 0) and "results written to" in output(runs, "knn", 0)
    assert output(runs, "knn", 1) == "" and "features" in output(runs, "knn", 0, "err")
    assert "features" not in output(runs, "knn", 1, "err")


def test_knn_query_chunks_shared_out_equal_one_process(runs):
    from ibot.eval.knn import knn_classify

    one = knn_classify(*_random_features(), ks=(1, 5), chunk_size=4)
    for rank in (0, 1):
        two = read(runs["two"], f"knn_query_chunks.rank{rank}.json")
        assert {int(k): v for k, v in two.items()} == one  # hit counts summed: exact


def test_linear_two_processes_equal_one(runs, one_process):
    one = read(one_process(runs, "linear") / "linear", "linear.json")
    two = read(runs["two"] / "linear", "linear.json")
    assert (two["lr"], two["epoch"], two["skipped_images"]) == (one["lr"], one["epoch"], 1)
    assert two["top1"] == pytest.approx(one["top1"], rel=REL) and two["top5"] == pytest.approx(one["top5"], rel=REL)
    for a, b in zip(two["per_lr"], one["per_lr"]):
        assert a == pytest.approx(b, rel=REL)
    assert (runs["two"] / "linear" / "linear_head.safetensors").is_file()
    assert output(runs, "linear", 1) == "" and "best: top-1" in output(runs, "linear", 0)


def test_cluster_and_semisup_two_processes_equal_one(runs, one_process):
    for name in ("cluster", "semisup"):
        one = read(one_process(runs, name) / name, f"{name}.json")
        two = read(runs["two"] / name, f"{name}.json")
        assert two["results"].keys() == one["results"].keys()
        for method, scores in one["results"].items():
            assert two["results"][method] == pytest.approx(scores, rel=REL)
        assert output(runs, name, 1) == ""


@pytest.mark.parametrize("name", ["segment", "segment_recomputed"])
def test_segment_two_processes_equal_one(runs, one_process, name):
    """Kept features: the one-process numbers; recomputed every epoch (and slide inference): each
    process runs the backbone on its half of every batch, the tokens agreeing to float rounding."""
    one = read(one_process(runs, name) / name, "segment.json")
    two = read(runs["two"] / name, "segment.json")
    assert two["cached_features"] == (name == "segment") and two["skipped_images"] == one["skipped_images"] == 1
    assert (two["num_train"], two["num_val"]) == (one["num_train"], one["num_val"]) == (9, 5)
    assert two["lr"] == one["lr"]
    assert (two["miou"], two["pixel_acc"]) == pytest.approx((one["miou"], one["pixel_acc"]), rel=REL)
    iou = [(two["per_class_iou"][c], v) for c, v in one["per_class_iou"].items()]
    assert all((a is None) == (b is None) for a, b in iou)  # classes absent from the val masks
    assert [a for a, b in iou if b is not None] == pytest.approx([b for a, b in iou if b is not None], rel=REL)
    for a, b in zip(two["per_lr"], one["per_lr"]):
        assert a == pytest.approx(b, rel=REL)
    assert (runs["two"] / name / "segment_head.safetensors").is_file()
    assert output(runs, name, 1) == "" and "linear segmentation on" in output(runs, name, 0)


def test_finetune_two_processes(runs, one_process):
    """2 processes x 4 images = 1 process x 8: the same steps and lr; the val counts of the
    checkpointed weights are those one process counts; the log and the results are written once;
    the run resumes on 2 processes."""
    from ibot.eval.finetune import evaluate
    from ibot.formats import ours as ckpt

    one = read(one_process(runs, "finetune") / "finetune", "finetune.json")
    folder = runs["two"] / "finetune"
    two = read(folder, "finetune.json")
    assert [r["epoch"] for r in two["history"]] == [0, 1, 2]  # resumed for a third epoch
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]  # one line per epoch: rank 0 alone writes
    for mine, theirs in zip(one["history"], two["history"]):
        assert theirs["lr"] == pytest.approx(mine["lr"], rel=1e-12)
        assert theirs["skipped_images"] == mine["skipped_images"]  # the same order of the train set
        assert theirs["train_loss"] == pytest.approx(mine["train_loss"], rel=0.05)  # seed noise
    # the figures of the last epoch are those one process counts for the saved weights
    tuner = _tuner(runs["setup"], runs["root"] / "scratch")
    tensors, meta = ckpt.load_checkpoint(folder / "checkpoint.safetensors")
    tuner.model.load_state_dict(ckpt.strip_prefix("model.", tensors))
    again = evaluate(tuner.model, tuner.val_loader, tuner.device)
    last = two["history"][-1]
    assert (last["val_top1"], last["val_top5"]) == (again["top1"], again["top5"])
    assert last["val_loss"] == pytest.approx(again["loss"], rel=1e-6)
    assert meta["epoch"] == 3
    assert output(runs, "finetune", 1) == "" and "fine-tune epoch 1" in output(runs, "finetune", 0)


def test_finetune_processes_keep_the_same_weights(runs):
    """DDP through a frozen-backbone epoch and the epoch after it: both processes end equal."""
    from ibot.eval.checkpoints import load_backbone

    ranks = [torch.load(runs["two"] / f"finetune_ranks.rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in ranks[0].items():
        torch.testing.assert_close(ranks[1][key], value, rtol=0, atol=0)
    start = load_backbone(runs["setup"]["checkpoint"]).backbone.state_dict()
    assert not torch.equal(ranks[0]["backbone.blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])
