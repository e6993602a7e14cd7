"""Adapters resident in memory: least-recently-used eviction under a byte budget, with pins.

Loading validates the checkpoint (hash, finite values) through the store, so an adapter file
corrupted on disk is refused when it is (re)loaded and never served.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from adapters import Adapter
from adapters.store import AdapterStore
from service.ops.metrics import Metrics


class AdapterCache:
    def __init__(
        self,
        store: AdapterStore,
        budget_bytes: int,
        metrics: Metrics,
        pinned: Callable[[], set[str]] = set,
    ) -> None:
        self.store = store
        self.budget = budget_bytes
        self.metrics = metrics
        self._pinned = pinned
        self._items: OrderedDict[str, Adapter] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, adapter_id: str) -> Adapter:
        """The adapter, loading (and validating) it on a miss; KeyError / CheckpointError."""
        with self._lock:
            hit = self._items.get(adapter_id)
            if hit is not None:
                self._items.move_to_end(adapter_id)
                return hit
        adapter = self.store.get(adapter_id)  # disk + validation outside the lock
        with self._lock:
            self._items[adapter_id] = adapter
            self._items.move_to_end(adapter_id)
            self._evict(keep=adapter_id)
            self._report()
        return adapter

    def put(self, adapter: Adapter) -> None:
        with self._lock:
            self._items[adapter.id] = adapter
            self._evict(keep=adapter.id)
            self._report()

    def discard(self, adapter_id: str) -> None:
        with self._lock:
            self._items.pop(adapter_id, None)
            self._report()

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._items

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._items.values())

    def _evict(self, keep: str) -> None:
        pinned = self._pinned()
        for victim in list(self._items):
            if self.nbytes <= self.budget:
                break
            if victim == keep or victim in pinned:
                continue
            del self._items[victim]
            self.metrics.adapter_cache_evictions.inc()

    def _report(self) -> None:
        self.metrics.adapter_cache_bytes.set(self.nbytes)
        self.metrics.adapter_cache_entries.set(len(self._items))
