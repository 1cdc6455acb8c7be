"""``ibot pretrain`` on unlabelled data (a flat folder of images, a text file listing images): it
trains, and says before the first step that the k-NN checks are skipped."""

from __future__ import annotations

import shutil

import pytest

from ibot.cli import main
from tests.commands.test_pretrain import SCHEDULE, logged_steps
from tests.tiny import TINY_CROP_OVERRIDES, TINY_MODEL_OVERRIDES
from tests.train.helpers import make_image_folder


@pytest.mark.parametrize("kind", ["flat folder", "text file"])
def test_unlabelled_data_trains_and_skips_the_knn_checks(tmp_path, capsys, kind):
    tree = make_image_folder(tmp_path / "tree")
    images = tmp_path / "images"  # 8 images directly in it, 8 in a sub-folder
    shutil.copytree(tree / "class1", images / "more")
    for path in sorted((tree / "class0").iterdir()):
        path.rename(images / f"top_{path.name}")
    data = images
    if kind == "text file":
        data = tmp_path / "train.txt"
        data.write_text("\n".join(["# the flat folder's images", *(str(p.relative_to(tmp_path))
                                                                 for p in sorted(images.rglob("*.png")))]))
    out = tmp_path / "run"
    assert main(["pretrain", "--output-dir", str(out), "--data", str(data), "--max-steps", "1", "--eval-every", "1",
                 "--no-progress", "--no-tensorboard", "data.num_workers=0", *TINY_MODEL_OVERRIDES,
                 *TINY_CROP_OVERRIDES, *SCHEDULE]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "no k-NN check" in line]
    assert len(skipped) == 1 and skipped[0].startswith(
        f"ibot pretrain: no k-NN check (end of run, --eval-every) without a labelled val split: {data}")
    assert "unlabelled" in skipped[0] and f"on {data} (16 images)" in err
    assert logged_steps(out) == [1]
