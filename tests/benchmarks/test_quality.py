"""The quality benchmark's comparisons: which runs it compares, and what its exit status rests on."""

from __future__ import annotations

import pytest

from tests.benchmarks.helpers import import_benchmark


@pytest.fixture(scope="module")
def quality():
    yield from import_benchmark("quality")


def _results(ibot_budget: dict, dino_budget: dict, dino_knn: float = 80.0) -> dict:
    return {
        "ibot": {"knn": 85.0, "linear": 86.0, "finetune": 90.0},
        "raw_pixels": {"knn": 84.0, "linear": 84.5},
        "random_init": {"knn": 60.0, "linear": 65.0},
        "scratch": {"finetune": 88.0},
        "dino_only": {"knn": dino_knn, "linear": 85.0},
        "runs": {"ibot": {"budget": ibot_budget}, "dino-only": {"budget": dino_budget}},
    }


def test_runs_without_a_recorded_size_were_scored_at_the_crop_size(quality):
    old = {"pretrain_epochs": 18, "pretrain_set": []}
    assert quality.same_pretraining(_results(old, {**old, "eval_size": 28}), "ibot", "dino-only")
    assert not quality.same_pretraining(_results(old, {**old, "eval_size": 35}), "ibot", "dino-only")
    larger = {"pretrain_epochs": 18, "pretrain_set": ["data.global_crops_size=35"]}
    assert quality.same_pretraining(_results(larger, {**larger, "eval_size": 35}), "ibot", "dino-only")


def test_ibot_and_dino_only_are_compared_only_on_the_same_budget(quality):
    same = {"pretrain_epochs": 18, "pretrain_set": [], "eval_size": 28}
    checks = quality.checks(_results(same, same))
    assert checks["ibot_beats_dino_only"] and checks["finetune_beats_scratch_and_linear"]
    assert not quality.checks(_results(same, same, dino_knn=85.5))["ibot_beats_dino_only"]
    longer = {**same, "pretrain_epochs": 8}
    assert "ibot_beats_dino_only" not in quality.checks(_results(same, longer))
    on_two_processes = {**same, "pretrain_processes": 2}  # KoLeo saw half the batch
    assert "ibot_beats_dino_only" not in quality.checks(_results(same, on_two_processes))
    assert quality.checks(_results({**same, "pretrain_processes": 1}, same))["ibot_beats_dino_only"]


def test_a_run_without_fine_tuning_is_checked_on_the_frozen_protocols(quality):
    same = {"pretrain_epochs": 18, "pretrain_set": [], "eval_size": 28}
    results = _results(same, same)
    del results["ibot"]["finetune"], results["scratch"]
    checks = quality.checks(results)
    assert "finetune_beats_scratch_and_linear" not in checks
    assert checks["ibot_knn_beats_baselines"] and checks["ibot_beats_dino_only"]
    assert not quality.targets(results)["ibot_finetune_at_least_93"]


def test_pretraining_on_two_processes_trains_the_config_with_the_batch_shared_out(quality, tmp_path):
    import yaml

    from tests.train.helpers import make_image_folder, tiny_config

    folder = make_image_folder(tmp_path / "images", n_per_class=4)
    cfg = tiny_config(tmp_path / "run" / "pretrain", str(folder), "run.max_steps=1", "data.num_workers=2")
    quality.launch_pretraining(cfg, processes=2, threads=1)
    saved = yaml.safe_load((tmp_path / "run" / "pretrain" / "config.yaml").read_text())
    assert saved["optim"]["batch_size_per_device"] == 2 and saved["data"]["num_workers"] == 1
    expected = cfg.to_dict()
    for section, field in (("optim", "batch_size_per_device"), ("data", "num_workers")):
        saved[section].pop(field), expected[section].pop(field)
    assert saved == yaml.safe_load(yaml.safe_dump(expected))
    assert (tmp_path / "run" / "pretrain" / "checkpoint.safetensors").is_file()


def test_fine_tuning_runs_at_the_size_asked_for_else_the_pretraining_size(quality, monkeypatch, tmp_path):
    from types import SimpleNamespace

    import torch

    seen = []

    class Recorder:
        def __init__(self, backbone, arch, data, cfg, run_dir):
            seen.append(cfg)

        def fit(self):
            return {"top1": 90.0, "last_top1": 89.0, "epochs": 1, "history": [{"val_top1": 89.0}]}

    monkeypatch.setattr(quality, "Finetuner", Recorder)
    loaded = SimpleNamespace(backbone=torch.nn.Identity(), arch="vit_tiny", image_size=28)
    at_35 = quality.finetune(loaded, "data", quality.parse_args(["--finetune-size", "35", "--finetune-pool", "grid"]),
                             tmp_path)
    at_crop = quality.finetune(loaded, "data", quality.parse_args([]), tmp_path)
    assert [cfg.image_size for cfg in seen] == [35, 28] and seen[0].pool == "grid"
    assert (at_35["image_size"], at_crop["image_size"]) == (35, 28)


def test_the_budget_and_table_name_the_fine_tuning_pool_and_size(quality):
    tuned = {"top1": 91.9, "pool": "grid", "image_size": 35}
    assert quality.finetune_setting({"ibot": {"finetune": tuned}}) == {"finetune_pool": "grid", "finetune_size": 35}
    assert quality.finetune_setting({"dino_only": {"knn": {"top1": 80.0}}}) == {"finetune_pool": None,
                                                                               "finetune_size": None}
    header = quality.table(quality.flatten({"ibot": {"finetune": tuned}})).splitlines()[0]
    assert "Fin. (grid, 35 px)" in header
