"""An LRU cache of raw (pre-adapter) query vectors, one partition per tenant.

Keyed by the encoder's fingerprint and the prompt-formatted text (which holds the instruction),
so a hit is exactly the vector the encoder would produce. Adapters are applied after the cache,
so an adapter swap never invalidates it; a different model, prompt or max_tokens is a different
fingerprint. Rows a client asked to truncate are keyed the same way: the cut is deterministic.

Partitioned by tenant because a hit shows (`X-Query-Cache`, `Server-Timing`, and the latency
itself): a shared entry would tell tenant B that tenant A recently sent the same text. Each
partition has its own fixed share of the capacity (`max_entries` split evenly over the tenants),
so one tenant's traffic can neither hit nor evict another's entries; each keeps the value of its
own repeats, and memory stays bounded by `max_entries` in all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from service.ops.metrics import Metrics

_Entry = tuple[np.ndarray, int]


class QueryVectorCache:
    """Thread-safe: requests look up on the event loop, batches fill it from the worker."""

    def __init__(self, max_entries: int, metrics: Metrics, tenants: int = 1) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        if tenants < 1:
            raise ValueError("tenants must be >= 1")
        self.max_entries = max_entries
        # each tenant's share; at least one entry so a configured cache is never a no-op
        self.per_tenant = max(1, max_entries // tenants) if max_entries else 0
        self.metrics = metrics
        self._parts: dict[str, OrderedDict[tuple[str, str], _Entry]] = {}
        self._size = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return self._size

    def get_many(
        self, tenant: str, fingerprint: str, encoder: str, texts: list[str]
    ) -> list[_Entry | None]:
        """(vector, token count) per text from `tenant`'s own partition, None for a miss; hits
        become most recent."""
        if not self.enabled:
            return [None] * len(texts)
        out: list[_Entry | None] = []
        with self._lock:
            part = self._parts.get(tenant)
            for t in texts:
                hit = None
                if part is not None:
                    key = (fingerprint, t)
                    hit = part.get(key)
                    if hit is not None:
                        part.move_to_end(key)
                out.append(hit)
        hits = sum(1 for h in out if h is not None)
        if hits:
            self.metrics.query_cache_hits.labels(encoder).inc(hits)
        if hits < len(texts):
            self.metrics.query_cache_misses.labels(encoder).inc(len(texts) - hits)
        return out

    def put_many(
        self,
        tenant: str,
        fingerprint: str,
        texts: list[str],
        vectors: np.ndarray,
        counts: list[int],
    ) -> None:
        if not self.enabled:
            return
        evicted = 0
        with self._lock:
            part = self._parts.setdefault(tenant, OrderedDict())
            before = len(part)
            for t, v, c in zip(texts, vectors, counts, strict=True):
                row = np.array(v, dtype=np.float32)  # a copy: never a view of a batch
                row.flags.writeable = False
                key = (fingerprint, t)
                part[key] = (row, c)
                part.move_to_end(key)
            while len(part) > self.per_tenant:
                part.popitem(last=False)
                evicted += 1
            self._size += len(part) - before
            size = self._size
        if evicted:
            self.metrics.query_cache_evictions.inc(evicted)
        self.metrics.query_cache_entries.set(size)

    def clear(self) -> None:
        with self._lock:
            self._parts.clear()
            self._size = 0
        self.metrics.query_cache_entries.set(0)
