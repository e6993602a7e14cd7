"""Crash-safe writes: nothing half-written is ever visible under its final name."""

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
