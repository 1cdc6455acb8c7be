"""The README's examples hold on a fresh clone: the Python API block runs, the paths its commands
read exist after ``./run.sh`` (or in the repository), and it says how ``ibot`` gets on ``PATH``."""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from pathlib import Path

from ibot import cycle
from ibot.data import datasets
from ibot.data.fashion_mnist import FashionMNIST
from tests.eval.helpers import session_tiny_run

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
OUTPUT_FLAGS = {"-o", "--output", "--output-dir"}  # what follows them is written, not read


def code_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def python_api_block() -> str:
    section = README[README.index("\n## Python API\n"):]
    return code_blocks("python", section)[0]


def read_paths() -> list[str]:
    """Relative paths the README's examples read: arguments of its shell commands (not those after
    an output flag, dataset specs, overrides or code) and strings of its Python blocks."""
    paths = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            for previous, word in zip([None, *words], words):
                if previous in OUTPUT_FLAGS or word.startswith("-") or any(c in word for c in ":= "):
                    continue
                if "/" in word and not word.startswith("/"):
                    paths.append(word)
    for block in code_blocks("python"):
        paths += [s for s in re.findall(r"\"([^\"]+)\"", block) if "/" in s and ":" not in s]
    return paths


def run_sh_outputs() -> set[Path]:
    """What ``./run.sh`` with no arguments leaves: its output folder, the pre-training run folder
    (log.jsonl, config.yaml) and its checkpoint."""
    args = cycle.parse_args([])
    checkpoint = cycle.pretrain_checkpoint(args)
    return {Path(args.output_dir), checkpoint.parent, checkpoint}


def test_example_paths_exist_after_run_sh():
    outputs = run_sh_outputs()
    paths = read_paths()
    assert any(Path(p) in outputs for p in paths)  # the examples do use the run's checkpoint
    missing = [p for p in paths if Path(p) not in outputs and not (ROOT / p).exists()]
    assert missing == []


def test_readme_says_how_to_put_ibot_on_path():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["ibot"] == "ibot.cli:main"
    assert '"$ROOT/.venv"' in (ROOT / "scripts" / "env.sh").read_text()  # where ./run.sh and ./test.sh install it
    assert "source .venv/bin/activate" in README and "pip install -e ." in README


class FirstFashionMNIST(FashionMNIST):
    """The first 60 images of a split: the block's calls unchanged, in seconds rather than the
    minute that 7,000 images take here."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.images, self.targets = self.images[:60], self.targets[:60]


def test_python_api_block_runs(tmp_path_factory, tmp_path, monkeypatch, capsys):
    checkpoint, _ = session_tiny_run(tmp_path_factory)
    monkeypatch.setattr(datasets, "FashionMNIST", FirstFashionMNIST)
    target = tmp_path / cycle.pretrain_checkpoint(cycle.parse_args([]))
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoint, target)  # a tiny run stands in for ./run.sh's
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_api_block(), "README.md: Python API", "exec"), {"__name__": "__main__"})
    assert "'top1'" in capsys.readouterr().out
