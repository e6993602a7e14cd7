"""Crash-safe writes: nothing half-written is ever visible under its final name.

A write that fails (disk full: ENOSPC / EDQUOT on a write or an fsync, a crash) raises its
OSError after removing its temp file, so the old file stays whole and nothing is left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked (and then fail with ENOSPC)
        view = view[os.write(fd, view) :]


def stage_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to a hidden temp file beside `path` and fsync it; return the temp path.

    Publish it with `commit` (or drop it with `discard`); on failure nothing is left behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit(tmp: Path, path: Path) -> None:
    """Rename a staged file over `path` (atomic), then fsync the folder."""
    try:
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    fsync_dir(path.parent)


def discard(*tmps: Path) -> None:
    for tmp in tmps:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over `path`, fsync the folder."""
    commit(stage_bytes(path, data), path)


def atomic_publish_dir(staging: Path, final: Path) -> None:
    """Move a fully written (and fsynced) staging folder to `final`; a no-op if it exists."""
    for p in staging.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(staging)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staging, final)
    except OSError:
        if final.exists():  # someone published the same content first: identical by construction
            shutil.rmtree(staging, ignore_errors=True)
            return
        raise
    fsync_dir(final.parent)
