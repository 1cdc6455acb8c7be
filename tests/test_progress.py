"""Progress bars on a terminal and on a log file (``ibot.progress``)."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import pytest

from ibot.progress import MAX_LINES, progress_bar

PACKAGE = Path(__file__).resolve().parents[1] / "ibot"
STEPS = 1000


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def one_second_per_step(monkeypatch):
    """tqdm's clock advances one second per reading, so its own minimum interval between redraws
    (0.1 s) never holds a line back: the line count depends on the bar's settings alone."""
    clock = itertools.count()
    monkeypatch.setattr("tqdm.std.time", lambda: float(next(clock)))


def status_lines(text: str, desc: str) -> list[str]:
    """The redraws of a bar as they show in a log file (tqdm separates them with \\r)."""
    return [part for part in re.split(r"[\r\n]", text) if desc in part]


def test_a_log_file_gets_a_line_every_few_percent():
    log = io.StringIO()
    for _ in progress_bar(range(STEPS), desc="features", file=log):
        pass
    lines = status_lines(log.getvalue(), "features")
    assert MAX_LINES // 2 <= len(lines) <= MAX_LINES + 2  # + the first (0%) and the last (100%) line
    assert f"{STEPS}/{STEPS}" in lines[-1]


def test_a_manual_bar_resumed_part_way_obeys_the_same_rule():
    log = io.StringIO()
    bar = progress_bar(total=STEPS, initial=STEPS // 2, desc="epoch 3", file=log)
    for _ in range(STEPS // 2):
        bar.update(1)
    bar.close()
    assert len(status_lines(log.getvalue(), "epoch 3")) <= MAX_LINES + 2


def test_a_bar_of_unknown_length_prints_no_lines_in_between():
    log = io.StringIO()
    for _ in progress_bar((i for i in range(STEPS)), desc="infer", file=log):
        pass
    assert len(status_lines(log.getvalue(), "infer")) <= 2


def test_a_terminal_keeps_the_redrawn_bar():
    screen = Terminal()
    for _ in progress_bar(range(STEPS), desc="features", file=screen):
        pass
    assert len(status_lines(screen.getvalue(), "features")) > MAX_LINES + 2


def test_disabled_bar_prints_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(STEPS), desc="features", file=log, disable=True):
        pass
    assert log.getvalue() == ""


def test_every_bar_of_the_package_goes_through_the_helper():
    importing = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                 if path.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", path.read_text(), re.MULTILINE)]
    assert importing == []
