"""The label-free gate's teacher vectors of candidate documents, kept across activations and
across restarts.

The teacher (the query encoder on each candidate's text) is nearly all of a gate run's cost:
on the embedded CPU profile 40 queries x 30 candidates took about 200 s, for the same
documents every time (a query's candidates depend on the document model and the collection,
never on the adapter being gated). So the vectors stay in memory (an LRU by entries) and go to
disk, beside a folder adapter store by default (a local `var/teacher-cache` with an object
store), where a restarted service (or, on a shared folder, another replica) finds them.

On disk: one folder per encoder fingerprint (named by its hash), holding shards that are
safetensors files of `keys` (uint8 [n, 32], each text's sha256) and `vectors` (float32 [n, dim])
- vectors of the tenant's own documents, no text. A shard is written whole (temp file, fsync,
rename) under a unique name, so replicas sharing the folder never write the same file; each
reads the shards it has not seen yet before a lookup. When the shards hold more than
`max_entries` rows the oldest are deleted. A disk that refuses (full, read-only) costs a
warning and leaves the memory cache working.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from adapters.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_SUFFIX = ".safetensors"


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _rows(name: str) -> int:
    """A shard's row count, from its name (`<time_ns>-<rows>-<random>.safetensors`)."""
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return 0


class TeacherCache:
    """The query encoder's vectors of candidate documents, by encoder fingerprint and text."""

    def __init__(self, max_entries: int, folder: Path | None = None) -> None:
        self.max_entries = max_entries
        self.folder = folder if max_entries > 0 else None
        self._data: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._seen: set[Path] = set()  # shards already read (or written) by this process
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def _dir(self, fingerprint: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / hashlib.sha256(fingerprint.encode()).hexdigest()[:32]

    def _remember(self, fingerprint: str, keys: list[bytes], vectors: np.ndarray) -> None:
        for k, v in zip(keys, vectors, strict=True):
            self._data[(fingerprint, k)] = v
            self._data.move_to_end((fingerprint, k))
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def _load_new(self, fingerprint: str) -> None:
        """Read the shards of `fingerprint` this process has not seen, oldest first."""
        folder = self._dir(fingerprint)
        if folder is None or not folder.is_dir():
            return
        try:
            shards = sorted(p for p in folder.iterdir() if p.name.endswith(_SUFFIX))
        except OSError as e:
            log.warning("teacher cache %s: cannot list: %s", folder, e)
            return
        for path in shards:
            if path in self._seen:
                continue
            self._seen.add(path)
            try:
                tensors = load_file(str(path))
                keys, vectors = tensors["keys"], tensors["vectors"]
                if keys.ndim != 2 or keys.shape[1] != 32 or len(keys) != len(vectors):
                    raise ValueError(f"shapes {keys.shape} and {vectors.shape}")
            except FileNotFoundError:
                continue  # pruned by another replica in the meantime
            except Exception as e:  # safetensors raises its own error types; skip, not fail
                log.warning("teacher cache: skipping unreadable shard %s: %s", path, e)
                continue
            self._remember(fingerprint, [bytes(k) for k in keys], vectors.astype(np.float32))

    def get_many(self, fingerprint: str, texts: list[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            self._load_new(fingerprint)
            for t in texts:
                key = (fingerprint, _key(t))
                hit = self._data.get(key)
                if hit is not None:
                    self._data.move_to_end(key)
                out.append(hit)
        return out

    def put_many(self, fingerprint: str, texts: list[str], vectors: np.ndarray) -> None:
        if self.max_entries <= 0 or not texts:
            return
        keys = [_key(t) for t in texts]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            self._remember(fingerprint, keys, vectors)
            self._write(fingerprint, keys, vectors)

    def _write(self, fingerprint: str, keys: list[bytes], vectors: np.ndarray) -> None:
        folder = self._dir(fingerprint)
        if folder is None:
            return
        name = f"{time.time_ns():020d}-{len(keys)}-{os.urandom(6).hex()}{_SUFFIX}"
        data = save(
            {"keys": np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32), "vectors": vectors},
            metadata={"fingerprint": fingerprint},
        )
        try:
            atomic_write_bytes(folder / name, data)
            self._seen.add(folder / name)
            self._prune(folder)
        except OSError as e:
            log.warning("teacher cache %s: not written (memory only): %s", folder, e)

    def _prune(self, folder: Path) -> None:
        """Delete the oldest shards while the rest still hold `max_entries` rows."""
        shards = sorted(p for p in folder.iterdir() if p.name.endswith(_SUFFIX))
        total = sum(_rows(p.name) for p in shards)
        for path in shards[:-1]:
            if total - _rows(path.name) < self.max_entries:
                break
            total -= _rows(path.name)
            path.unlink(missing_ok=True)
