from pathlib import Path

import pytest

from tests.train.helpers import make_image_folder


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")
