"""Files written whole or not at all: a temporary file beside the target, then an atomic rename.

Every file the package writes goes this way (checkpoints, the log a resumed run cuts back, feature
caches, results, ONNX graphs, inference outputs, figures), but the logs a run appends to as it goes
(``log.jsonl``, TensorBoard events), so a reader never sees half a file and a crash leaves the
previous file as it was. A killed process can leave its temporary file (``.NAME.XXXXXXXX.tmp``
beside ``NAME``) behind; :func:`temporary_files` finds them.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_files(path: str | Path) -> list[Path]:
    """The temporary files :func:`replaced_atomically` makes beside ``path`` (a killed process leaves them)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary path beside ``path`` for the block to write; when the block ends, the
    file's data is synced to disk, the file renamed over ``path`` and the folder synced (the rename
    too is on disk). If the block (or the rename) raises, the temporary file is removed and ``path``
    is as it was; an ``OSError`` about the temporary file names ``path`` instead.

    The file gets the mode a plain ``open`` would give it under the umask, whatever the writer set
    (safetensors writes 0600).
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # O_EXCL as mkstemp, not its 0600
    except OSError as exc:
        raise _naming(exc, tmp, path) from None
    try:
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        yield tmp
        os.chmod(tmp, mode)
        _fsync(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows syncs writable handles only
        os.replace(tmp, path)
    except OSError as exc:
        raise _naming(exc, tmp, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: sync the folder's entries, so the rename survives a power cut
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY, tolerated=(errno.EINVAL, errno.ENOTSUP, errno.EBADF))


def _fsync(path: Path, flags: int, tolerated: tuple[int, ...] = ()) -> None:
    """``fsync`` of ``path`` opened with ``flags``; errors with an errno in ``tolerated`` are ignored
    (some network and FUSE mounts cannot sync a folder)."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in tolerated:
            raise
    finally:
        os.close(fd)


def _naming(exc: OSError, tmp: Path, path: Path) -> OSError:
    """``exc`` with ``path`` as its file where it names the temporary file (the user never saw that name)."""
    if exc.filename is not None and Path(exc.filename) == tmp and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror, str(path))
    return exc


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)
    return Path(path)
