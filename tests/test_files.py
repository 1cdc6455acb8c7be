import errno
import os
import stat

import pytest

from ibot.files import replaced_atomically, temporary_files, write_text_atomically


def test_text_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"  # the folder is made
    write_text_atomically(path, "one\n")
    write_text_atomically(path, "two\n")
    assert path.read_text() == "two\n" and temporary_files(path) == []


def test_an_error_in_the_block_leaves_the_file_as_it_was(tmp_path):
    path = write_text_atomically(tmp_path / "cache.pt", "before")
    with pytest.raises(RuntimeError, match="killed"):
        with replaced_atomically(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "before" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt"]


@pytest.mark.skipif(not hasattr(os, "O_DIRECTORY"), reason="folders are synced on POSIX only")
def test_the_file_then_its_folder_are_synced(tmp_path, monkeypatch):
    """fsync of the data before the rename, of the target's folder after it (else a power cut can
    lose the rename)."""
    synced = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        synced.append(("folder", info.st_ino) if stat.S_ISDIR(info.st_mode) else ("file", None))
        real_fsync(fd)

    def replace(src, dst):
        synced.append(("rename", None))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomically(tmp_path / "sub" / "results.json", "{}")
    assert synced == [("file", None), ("rename", None), ("folder", (tmp_path / "sub").stat().st_ino)]


@pytest.mark.skipif(not hasattr(os, "O_DIRECTORY"), reason="folders are synced on POSIX only")
def test_a_folder_that_cannot_be_synced_keeps_the_written_file(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")  # as some network and FUSE mounts answer
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert write_text_atomically(tmp_path / "a.json", "{}").read_text() == "{}"


def test_an_error_about_the_temporary_file_names_the_target(tmp_path):
    path = tmp_path / "features.npy"
    with pytest.raises(OSError, match="No space left on device") as caught:
        with replaced_atomically(path) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("x")  # os.replace cannot put a file over a folder
    with pytest.raises(OSError):
        write_text_atomically(target, "text")
    assert temporary_files(target) == [] and target.is_dir()


@pytest.mark.parametrize("umask", [0o022, 0o002])  # both give other than the writer's 0600
def test_the_file_gets_the_mode_open_gives_whatever_the_writer_set(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with replaced_atomically(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
            os.chmod(tmp, 0o600)  # as safetensors leaves its files
        (tmp_path / "plain.txt").write_text("x")  # a file made by open() under the same umask
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)


def test_a_taken_temporary_name_is_refused_and_left_alone(tmp_path, monkeypatch):
    import secrets

    monkeypatch.setattr(secrets, "token_hex", lambda n: "abcd1234")
    other = tmp_path / ".out.txt.abcd1234.tmp"
    other.write_text("another writer's")
    with pytest.raises(FileExistsError):
        write_text_atomically(tmp_path / "out.txt", "mine")
    assert other.read_text() == "another writer's" and not (tmp_path / "out.txt").exists()


def test_temporary_files_of_a_killed_writer_are_found(tmp_path):
    path = tmp_path / "c.safetensors"
    left = [tmp_path / ".c.safetensors.x1y2z3.tmp", tmp_path / ".c.safetensors.q9.tmp"]
    for p in [*left, tmp_path / ".other.safetensors.x.tmp", tmp_path / "c.safetensors.tmp"]:
        p.write_bytes(b"")
    assert temporary_files(path) == sorted(left)
