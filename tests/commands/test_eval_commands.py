"""``ibot knn | linear | cluster | semisup | finetune`` end to end on a tiny checkpoint and image folder."""

from __future__ import annotations

import json

import pytest

from ibot.cli import main
from ibot.data.datasets import build_dataset
from ibot.data.views import EvalDataset
from ibot.eval.checkpoints import load_backbone
from ibot.eval.features import IMAGE_FEATURES, evaluation_transform, extract_features
from ibot.eval.knn import knn_classify
from ibot.formats.ours import read_metadata
from ibot.models.tokens import patch_tokens
from tests.eval.helpers import session_tiny_run
from tests.train.helpers import make_image_folder

QUIET = ["--no-progress", "--num-workers", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return session_tiny_run(tmp_path_factory)


def run_json(argv, path):
    assert main(argv) == 0
    return json.loads(path.read_text())


def test_knn_command_caches_features(tiny_run, tmp_path):
    checkpoint, folder = tiny_run
    argv = ["knn", "-c", str(checkpoint), "--data", str(folder), "--output-dir", str(tmp_path), "--ks", "1", "3",
            *QUIET]
    first = run_json(argv, tmp_path / "knn.json")
    assert set(first["results"]) == {"1", "3"} and (first["num_train"], first["num_val"]) == (24, 12)
    assert first["holdout"] is None  # the folder's own val/
    cached = sorted((tmp_path / "features").glob("*.pt"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert run_json(argv, tmp_path / "knn.json")["results"] == first["results"]
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read, not rewritten


def test_knn_command_patch_grid_features(tiny_run, tmp_path):
    """``--features patch-grid``: k-NN on the flattened patch tokens, cached apart from the [CLS] ones."""
    checkpoint, folder = tiny_run
    common = ["knn", "-c", str(checkpoint), "--data", str(folder), "--ks", "1", "3", "--cache-dir",
              str(tmp_path / "features"), *QUIET]
    results = {kind: run_json([*common, "--output-dir", str(tmp_path / kind), "--features", kind],
                              tmp_path / kind / "knn.json") for kind in IMAGE_FEATURES}  # every kind runs
    assert results["patch-grid"]["features"] == "patch-grid"
    assert len(list((tmp_path / "features").glob("*.pt"))) == 2 * len(IMAGE_FEATURES)  # kinds x splits
    loaded = load_backbone(checkpoint)
    transform = evaluation_transform(loaded.image_size)
    train, val = (extract_features(lambda x: patch_tokens(loaded.backbone, x).flatten(1),
                                   EvalDataset(build_dataset(str(folder), split), transform), progress=False)
                  for split in ("train", "val"))
    expected = knn_classify(train[0], train[1], val[0], val[1], ks=(1, 3))
    assert {k: v["top1"] for k, v in results["patch-grid"]["results"].items()} == \
        {str(k): v["top1"] for k, v in expected.items()}


def test_linear_command(tiny_run, tmp_path):
    checkpoint, folder = tiny_run
    result = run_json(["linear", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--epochs", "3",
                       "--lrs", "0.1", "1", "--train-batch-size", "8", *QUIET], tmp_path / "linear.json")
    assert result["data"] == str(folder)  # the checkpoint's own pre-training data by default
    assert result["features"] == "linear-n1-avgpool0" and result["feature_dim"] == 32
    assert [r["lr"] for r in result["per_lr"]] == [0.1, 1.0] and result["lr"] in (0.1, 1.0)
    assert (tmp_path / "linear_head.safetensors").is_file()
    assert read_metadata(tmp_path / "linear_head.safetensors")["kind"] == "linear_head"


def test_linear_command_augmented_protocol(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    result = run_json(["linear", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--epochs", "2",
                       "--protocol", "augmented", "--min-crop-scale", "0.5", "--lrs", "0.1", "--train-batch-size", "8",
                       *QUIET], tmp_path / "linear.json")
    assert result["protocol"] == "augmented" and result["feature_dim"] == 32 and result["num_train"] == 24
    assert result["num_val"] == 12 and 0 <= result["top1"] <= 100
    features = list((tmp_path / "features").glob("*.pt"))
    assert len(features) == 1  # only the val split's center crops are cached


def test_linear_command_patch_grid_features(tiny_run, tmp_path):
    """``--features patch-grid``: the probe reads the flattened patch tokens (grid x width values)."""
    checkpoint, folder = tiny_run
    result = run_json(["linear", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--epochs", "2",
                       "--features", "patch-grid", "--lrs", "0.1", "--train-batch-size", "8", *QUIET],
                      tmp_path / "linear.json")
    loaded = load_backbone(checkpoint)
    grid = (loaded.image_size // loaded.patch_size) ** 2
    assert result["features"] == "patch-grid" and result["feature_dim"] == grid * loaded.backbone.embed_dim
    assert read_metadata(tmp_path / "linear_head.safetensors")["features"] == "patch-grid"


def test_cluster_command(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    result = run_json(["cluster", "-c", str(checkpoint), "--output-dir", str(tmp_path), *QUIET],
                      tmp_path / "cluster.json")
    assert result["results"]["prototypes"]["num_prototypes"] == 64
    assert result["results"]["kmeans"]["k"] == 3 and result["results"]["kmeans"]["num_clusters"] == 3
    for scores in result["results"].values():
        assert {"nmi", "ari", "acc", "purity"} <= set(scores)


def test_semisup_command(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    result = run_json(["semisup", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--fractions", "0.25", "0.5",
                       *QUIET], tmp_path / "semisup.json")
    assert result["results"]["25%"]["num_labels"] == 6 and result["results"]["50%"]["num_labels"] == 12


def test_finetune_command_and_resume(tiny_run, tmp_path):
    checkpoint, _ = tiny_run

    def argv(epochs, *extra):
        return ["finetune", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--epochs", str(epochs),
                "--batch-size", "8", "--warmup-epochs", "0", "--device", "cpu", *QUIET, *extra]

    first = run_json(argv(1), tmp_path / "finetune.json")
    assert first["epochs"] == 1 and first["config"]["image_size"] == 16
    assert (tmp_path / "checkpoint.safetensors").is_file()
    second = run_json(argv(2, "--resume", "auto"), tmp_path / "finetune.json")
    assert [r["epoch"] for r in second["history"]] == [0, 1]


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    """24 images in 3 class folders, no split folders."""
    return make_image_folder(tmp_path_factory.mktemp("flat") / "images", n_per_class=8, classes=3, size=20, seed=2)


@pytest.mark.parametrize("command", ["knn", "linear", "finetune", "cluster", "semisup"])
def test_a_flat_tree_is_not_evaluated_on_its_training_images(command, tiny_run, flat_folder, tmp_path, capsys):
    checkpoint, _ = tiny_run
    assert main([command, "-c", str(checkpoint), "--data", str(flat_folder), "--output-dir", str(tmp_path),
                 *QUIET]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(flat_folder) in err[0] and "--holdout" in err[0]
    assert not list(tmp_path.glob("*.json"))


def test_holdout_is_stated_in_the_output_and_the_results(tiny_run, flat_folder, tmp_path, capsys):
    checkpoint, _ = tiny_run
    common = ["-c", str(checkpoint), "--data", str(flat_folder), "--output-dir", str(tmp_path), "--holdout", "0.25",
              "--holdout-seed", "3", *QUIET]
    knn = run_json(["knn", *common, "--ks", "1"], tmp_path / "knn.json")
    assert (knn["num_train"], knn["num_val"]) == (18, 6)
    assert knn["holdout"]["fraction"] == 0.25 and knn["holdout"]["seed"] == 3
    out = capsys.readouterr().out
    assert "25% of the train split held out as val (seed 3): 18 train / 6 val images" in out
    cluster = run_json(["cluster", *common, "--methods", "kmeans"], tmp_path / "cluster.json")
    assert cluster["holdout"] == knn["holdout"] and "held out" in capsys.readouterr().out
    finetune = run_json(["finetune", *common, "--epochs", "1", "--batch-size", "6", "--warmup-epochs", "0",
                         "--device", "cpu"], tmp_path / "finetune.json")
    assert finetune["holdout"] == knn["holdout"] and "18 train / 6 val images" in capsys.readouterr().out
    assert main(["knn", *common[:6], "--holdout-seed", "1", *QUIET]) == 2  # a seed without --holdout
    assert "--holdout-seed needs --holdout" in capsys.readouterr().err


def test_finetune_command_recipe_and_overrides(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    result = run_json(["finetune", "-c", str(checkpoint), "--output-dir", str(tmp_path), "--recipe", "short",
                       "--epochs", "1", "--batch-size", "8", "--cutmix", "0.5", "--auto-augment", "none",
                       "--device", "cpu", *QUIET], tmp_path / "finetune.json")
    config = result["config"]
    assert config["mixup"] == 0 and config["reprob"] == 0 and config["auto_augment"] is None  # the recipe's
    assert config["cutmix"] == 0.5 and config["epochs"] == 1  # given on the command line


@pytest.mark.parametrize("argv, message", [
    (["knn", "-c", "/nonexistent/ckpt.safetensors"], "/nonexistent/ckpt.safetensors"),
    (["knn", "-c", "CKPT", "--data", "/nonexistent/images"], "/nonexistent/images"),
    (["knn", "-c", "CKPT", "--ks", "0"], "--ks"),
    (["linear", "-c", "CKPT", "--arch", "vit_base"], "vit_tiny/4"),
    (["linear", "-c", "CKPT", "--features", "patch-grid", "--n-last-blocks", "2"], "--n-last-blocks"),
    (["cluster", "-c", "OFFICIAL"], "--arch"),
    (["finetune", "-c", "CKPT", "--resume", "/nonexistent/ft.safetensors"], "/nonexistent/ft.safetensors"),
])
def test_user_errors_are_one_line(argv, message, tiny_run, tmp_path, capsys):
    official = tmp_path / "official.pth"
    official.write_bytes(b"")
    argv = [{"CKPT": str(tiny_run[0]), "OFFICIAL": str(official)}.get(a, a) for a in argv]
    assert main([*argv, "--output-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ibot: error:") and message in err[0]


@pytest.mark.parametrize("baseline", [None, "raw-pixels", "random-init"])
def test_segment_command_on_an_ade20k_folder(tiny_run, tmp_path, baseline):
    import numpy as np

    from tests.data.test_segmentation import make_ade

    rng = np.random.default_rng(0)
    masks = {split: [rng.integers(0, 4, size=(20, 24)) for _ in range(n)] for split, n in (("training", 6),
                                                                                           ("validation", 3))}
    data = make_ade(tmp_path / "ade", masks)
    argv = ["segment", "-c", str(tiny_run[0]), "--data", str(data), "--output-dir", str(tmp_path / "out"),
            "--image-size", "16", "--epochs", "2", "--lrs", "1e-3", "1e-2", *QUIET]
    name = "segment" if baseline is None else f"segment_{baseline.replace('-', '_')}"
    result = run_json(argv + (["--baseline", baseline] if baseline else []), tmp_path / "out" / f"{name}.json")
    assert (result["num_train"], result["num_val"], result["image_size"]) == (6, 3, 16)
    assert result["feature_dim"] == (48 if baseline == "raw-pixels" else 32)  # 3 x 4 x 4 pixels, or the width
    assert len(result["per_class_iou"]) == 150 and 0 <= result["miou"] <= 100 and result["lr"] in (1e-3, 1e-2)
    assert read_metadata(tmp_path / "out" / f"{name}_head.safetensors")["kind"] == "linear_head"


def test_segment_command_refuses_sizes_off_the_token_grid(tiny_run, tmp_path, capsys):
    assert main(["segment", "-c", str(tiny_run[0]), "--image-size", "18", "--output-dir", str(tmp_path), *QUIET]) == 2
    assert capsys.readouterr().err.strip() == ("ibot: error: --image-size 18 must be a positive multiple of the "
                                               "token stride 4")
