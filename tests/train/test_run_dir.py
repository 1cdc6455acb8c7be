"""The output folder policy of a pre-training run (``ibot.train.run_dir``)."""

from __future__ import annotations

import pytest

from ibot.train.run_dir import RUN_FILES, check_start_allowed, prepare_output_dir


@pytest.mark.parametrize("name", RUN_FILES)
def test_any_run_file_marks_a_run(tmp_path, name):
    (tmp_path / name).write_text("x")
    with pytest.raises(ValueError) as caught:
        prepare_output_dir(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path} already holds a run ({name}): continue it with --resume auto")
    check_start_allowed(tmp_path, continues_here=True, overwrite=False)  # resuming it is fine
    assert (tmp_path / name).read_text() == "x"


def test_overwrite_removes_the_previous_run_only(tmp_path):
    for name in (*RUN_FILES, "knn.json", "tensorboard/events.out.tfevents.1", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("old")
    notes = prepare_output_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert notes == [f"--overwrite: removed the previous run's checkpoint.safetensors, config.yaml, log.jsonl, "
                     f"knn.json, tensorboard from {tmp_path}"]
    with pytest.raises(ValueError, match="give one of them"):
        prepare_output_dir(tmp_path, continues_here=True, overwrite=True)


def test_other_processes_check_but_change_nothing(tmp_path):
    stale = tmp_path / ".checkpoint.safetensors.abcd1234.tmp"
    stale.write_bytes(b"partial")
    assert prepare_output_dir(tmp_path, continues_here=True, is_main=False) == [] and stale.exists()
    assert prepare_output_dir(tmp_path, continues_here=True) == [
        f"removed 1 temporary file(s) of an interrupted write in {tmp_path}: {stale.name}"]
    assert not stale.exists()


def test_temporaries_of_the_log_and_of_snapshots_are_removed_but_not_a_users_files(tmp_path):
    left = [tmp_path / ".log.jsonl.0a1b2c3d.tmp", tmp_path / ".checkpoint_epoch0004.safetensors.9f8e7d6c.tmp"]
    kept = [tmp_path / ".notes.txt.12345678.tmp", tmp_path / "log.jsonl"]
    for path in (*left, *kept):
        path.write_text("x")
    notes = prepare_output_dir(tmp_path, continues_here=True)
    assert notes and notes[0].startswith("removed 2 temporary file(s)")
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)


def test_the_folder_is_created_or_named_when_it_cannot_be(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b") == [] and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=f"--output-dir {tmp_path / 'file' / 'run'} is not writable"):
        prepare_output_dir(tmp_path / "file" / "run")
