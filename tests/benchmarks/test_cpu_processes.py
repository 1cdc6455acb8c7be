"""The CPU-layout benchmark: both layouts train the same global batch, and one core is refused."""

from __future__ import annotations

import pytest

from tests.benchmarks.helpers import import_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from import_benchmark("cpu_processes")


def _value(cmd: list[str], key: str) -> str | None:
    return next((arg.split("=", 1)[1] for arg in cmd if arg.startswith(key + "=")), None)


def test_the_layouts_share_out_one_global_batch(bench, tmp_path):
    from ibot.config import get_preset

    preset = get_preset("cpu")
    args = bench.parse_args(["--cores", "4", "--set", "optim.lr=1e-3"])
    one, one_env = bench.command("threads", args, tmp_path / "a")
    many, many_env = bench.command("processes", args, tmp_path / "b")
    assert one_env["OMP_NUM_THREADS"] == "4" and many_env["OMP_NUM_THREADS"] == "1"
    assert "--nproc_per_node=4" in many and many[many.index("-m", 3) + 1] == "ibot.cli"
    assert _value(one, "optim.batch_size_per_device") is None  # the preset's batch, one process
    per_process = int(_value(many, "optim.batch_size_per_device"))
    assert per_process * 4 == preset.optim.batch_size_per_device
    assert int(_value(many, "data.num_workers")) == max(1, preset.data.num_workers // 4)
    assert _value(one, "optim.lr") == _value(many, "optim.lr") == "1e-3"


@pytest.mark.parametrize("argv, message", [(["--cores", "1"], "at least 2"), (["--cores", "3"], "does not divide"),
                                           (["--steps", "20"], "no step record")])
def test_settings_that_cannot_compare_are_refused(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err
