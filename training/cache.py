"""Embedding cache: encode each (encoder, text) once, reuse it across runs.

One file per (encoder fingerprint, kind, instruction) namespace holding the vectors (fp16 for
documents, which are many; fp32 for queries, so evaluation matches what the service computes)
and the sha256 of every text, so a cached row is only used for the exact text it came from.
Files are written atomically and carry a checksum: a corrupted file is detected, reported and
rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from tqdm import tqdm

from adapters.fsutil import atomic_write_bytes
from encoders import Encoder, InputKind

log = logging.getLogger(__name__)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass
class CacheStats:
    hits: int = 0
    encoded: int = 0
    encode_seconds: float = 0.0


class EmbeddingCache:
    def __init__(self, root: Path, batch_size: int = 256) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.stats = CacheStats()

    def _path(self, encoder: Encoder, kind: InputKind, instruction: str | None) -> Path:
        ns = json.dumps(
            [encoder.spec.fingerprint(), kind, instruction if kind == "query" else None]
        )
        digest = hashlib.sha256(ns.encode()).hexdigest()[:20]
        return self.root / f"{encoder.name.replace('/', '_')}-{kind}-{digest}.safetensors"

    def _load(
        self, path: Path, dim: int, dtype: type[np.floating]
    ) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.zeros((0, 32), np.uint8), np.zeros((0, dim), dtype))
        if not path.is_file():
            return empty
        try:
            data = st_load(path.read_bytes())
            keys, vecs, check = data["keys"], data["vectors"], data["checksum"]
            ok = (
                keys.ndim == 2
                and keys.shape[1] == 32
                and vecs.shape == (keys.shape[0], dim)
                and vecs.dtype == dtype
                and bytes(check.tobytes()) == _checksum(keys, vecs)
            )
        except Exception as e:  # unreadable file: same treatment as a bad checksum
            ok, reason = False, str(e)
        else:
            reason = "checksum or shape mismatch"
        if not ok:
            log.warning("embedding cache %s is corrupted (%s): rebuilding it", path, reason)
            path.unlink(missing_ok=True)
            return empty
        return keys, vecs

    def encode(
        self,
        encoder: Encoder,
        texts: list[str],
        kind: InputKind,
        instruction: str | None = None,
        desc: str | None = None,
    ) -> np.ndarray:
        """float32 vectors for `texts`, encoding only those not cached yet (then saving)."""
        path = self._path(encoder, kind, instruction)
        dtype = _dtype(kind)
        keys, vecs = self._load(path, encoder.dim, dtype)
        index = {bytes(k): i for i, k in enumerate(keys)}
        wanted = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(i for i, k in enumerate(wanted) if k not in index))
        new_rows: dict[bytes, np.ndarray] = {}
        if missing:
            uniq: dict[bytes, str] = {}
            for i in missing:
                uniq.setdefault(wanted[i], texts[i])
            items = list(uniq.items())
            start = time.perf_counter()
            bar = tqdm(total=len(items), unit="text", desc=desc or f"encode {encoder.name} {kind}")
            for s in range(0, len(items), self.batch_size):
                chunk = items[s : s + self.batch_size]
                res = encoder.encode([t for _, t in chunk], kind, instruction, truncate=True)
                for (k, _), v in zip(chunk, res.vectors, strict=True):
                    new_rows[k] = v
                bar.update(len(chunk))
            bar.close()
            self.stats.encode_seconds += time.perf_counter() - start
            self.stats.encoded += len(items)
            new_keys = np.frombuffer(b"".join(new_rows), dtype=np.uint8).reshape(-1, 32)
            new_vecs = np.stack(list(new_rows.values())).astype(dtype)
            keys = np.concatenate([keys, new_keys])
            vecs = np.concatenate([vecs, new_vecs])
            check = np.frombuffer(_checksum(keys, vecs), dtype=np.uint8)
            atomic_write_bytes(
                path, st_save({"keys": keys, "vectors": vecs, "checksum": check.copy()})
            )
            index = {bytes(k): i for i, k in enumerate(keys)}
        self.stats.hits += len(texts) - len(missing)
        out = vecs[[index[k] for k in wanted]].astype(np.float32)
        return out


def _dtype(kind: InputKind) -> type[np.floating]:
    """By kind, never by file name: an encoder may well be called "x-document-y"."""
    return np.float16 if kind == "document" else np.float32


def _checksum(keys: np.ndarray, vecs: np.ndarray) -> bytes:
    h = hashlib.sha256(np.ascontiguousarray(keys).tobytes())
    h.update(np.ascontiguousarray(vecs).tobytes())
    return h.digest()
