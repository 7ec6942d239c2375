"""Atomic file writes and checksums: a file appears complete under its final name, or not at all.

Every writer in the project goes through ``atomic_write``: it hands out a temp path beside the
destination (a dot file with ``.tmp<pid>`` in its name, the real suffix kept last so writers
that pick a format from it still work), and on success fsyncs it, renames it over the
destination and fsyncs the folder. On any error the temp file is removed. A process killed
mid-write leaves only a temp file, which ``sweep_temp`` removes on the next start.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_path(dest: Path) -> Path:
    """The temp name a write to ``dest`` by this thread uses."""
    dest = Path(dest)
    return dest.with_name(f".{dest.stem}.tmp{os.getpid()}-{threading.get_ident()}{dest.suffix}")


_TEMP = re.compile(r"^\..*\.tmp(\d+)")


def is_temp(path: Path) -> bool:
    """Whether a file is a temp file of a write (finished or interrupted)."""
    return _TEMP.match(Path(path).name) is not None


def _writer_alive(path: Path) -> bool:
    # The writer's pid is in the temp name; a live process may still be writing it.
    pid = int(_TEMP.match(path.name).group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(dest: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``dest`` durably (``mode``: its permissions)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        if mode is not None:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(dest: Path, data: bytes, mode: int | None = None) -> None:
    """Write bytes to ``dest`` atomically."""
    with atomic_write(dest, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def sweep_temp(folder: Path) -> list[Path]:
    """Delete the temp files that writers which have since died left under ``folder``; returns them.

    Folders shared by concurrent writers (upscales, imports, thumbnails) are swept this way: a
    temp file whose process is still alive may be mid-write and is left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob(".*"):
        if is_temp(path) and path.is_file() and not path.is_symlink() and not _writer_alive(path):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
