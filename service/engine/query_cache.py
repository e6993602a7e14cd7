"""An LRU cache of raw (pre-adapter) query vectors.

Keyed by the encoder's fingerprint and the prompt-formatted text (which holds the
instruction), so a hit is exactly the vector the encoder would produce. Adapters are applied
after the cache, so an adapter swap never invalidates it; a different model, prompt or
max_tokens is a different fingerprint. Rows a client asked to truncate are keyed the same
way: the cut is deterministic.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from service.ops.metrics import Metrics


class QueryVectorCache:
    """Thread-safe: requests look up on the event loop, batches fill it from the worker."""

    def __init__(self, max_entries: int, metrics: Metrics) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.metrics = metrics
        self._data: OrderedDict[tuple[str, str], tuple[np.ndarray, int]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._data)

    def get_many(
        self, fingerprint: str, encoder: str, texts: list[str]
    ) -> list[tuple[np.ndarray, int] | None]:
        """(vector, token count) per text, None for a miss; hits become most recent."""
        if not self.enabled:
            return [None] * len(texts)
        out: list[tuple[np.ndarray, int] | None] = []
        with self._lock:
            for t in texts:
                key = (fingerprint, t)
                hit = self._data.get(key)
                if hit is not None:
                    self._data.move_to_end(key)
                out.append(hit)
        hits = sum(1 for h in out if h is not None)
        if hits:
            self.metrics.query_cache_hits.labels(encoder).inc(hits)
        if hits < len(texts):
            self.metrics.query_cache_misses.labels(encoder).inc(len(texts) - hits)
        return out

    def put_many(
        self, fingerprint: str, texts: list[str], vectors: np.ndarray, counts: list[int]
    ) -> None:
        if not self.enabled:
            return
        with self._lock:
            for t, v, c in zip(texts, vectors, counts, strict=True):
                row = np.array(v, dtype=np.float32)  # a copy: never a view of a batch
                row.flags.writeable = False
                self._data[(fingerprint, t)] = (row, c)
                self._data.move_to_end((fingerprint, t))
            evicted = 0
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                evicted += 1
            size = len(self._data)
        if evicted:
            self.metrics.query_cache_evictions.inc(evicted)
        self.metrics.query_cache_entries.set(size)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
        self.metrics.query_cache_entries.set(0)
