"""Adapters resident in memory: least-recently-used eviction under a byte budget, with pins.

Loading validates the checkpoint (hash, finite values) through the store, so an adapter file
corrupted on disk is refused when it is (re)loaded and never served.

A load reads and hashes up to the checkpoint's size (512 MiB at most), so it is single
flight: one load per adapter id however many callers miss at once; the others wait for that
load's result (a failure included, which is never cached). `get` blocks and is for worker
threads; the request path uses `peek` (a hit, no I/O) and `get_async`, which waits for a load
running in a worker thread and so never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

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
        self._loading: dict[str, Future[Adapter]] = {}  # adapter id -> the one load in flight
        self._lock = threading.Lock()

    def peek(self, adapter_id: str) -> Adapter | None:
        """The resident adapter (now the most recently used), or None: never loads."""
        with self._lock:
            hit = self._items.get(adapter_id)
            if hit is not None:
                self._items.move_to_end(adapter_id)
            return hit

    def get(self, adapter_id: str) -> Adapter:
        """The adapter, loading (and validating) it on a miss; KeyError / CheckpointError.

        Blocks while the adapter loads: call it from a worker thread, never the event loop.
        """
        hit, flight, mine = self._claim(adapter_id)
        if hit is not None:
            return hit
        assert flight is not None
        if mine:
            self._load(adapter_id, flight)
        return flight.result()

    async def get_async(self, adapter_id: str) -> Adapter:
        """`get` for the event loop: a miss is loaded in a worker thread and awaited."""
        hit, flight, mine = self._claim(adapter_id)
        if hit is not None:
            return hit
        assert flight is not None
        if mine:  # the load runs to the end even if this caller goes away: others may wait
            try:
                asyncio.get_running_loop().run_in_executor(None, self._load, adapter_id, flight)
            except RuntimeError as e:  # the executor is shut down (the app is stopping)
                self._settle_failed(adapter_id, flight, e)
        return await asyncio.wrap_future(flight)

    def put(self, adapter: Adapter) -> None:
        with self._lock:
            self._items[adapter.id] = adapter
            self._evict(keep=adapter.id)
            self._report()

    def discard(self, adapter_id: str) -> None:
        """Forget the adapter; a load in flight still answers its waiters but is not kept."""
        with self._lock:
            self._items.pop(adapter_id, None)
            self._loading.pop(adapter_id, None)
            self._report()

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._items

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._items.values())

    def _claim(self, adapter_id: str) -> tuple[Adapter | None, Future[Adapter] | None, bool]:
        """(hit, None, False); or (None, the load in flight, whether this caller must run it)."""
        with self._lock:
            hit = self._items.get(adapter_id)
            if hit is not None:
                self._items.move_to_end(adapter_id)
                return hit, None, False
            flight = self._loading.get(adapter_id)
            if flight is not None:
                return None, flight, False
            flight = Future()
            flight.set_running_or_notify_cancel()  # a waiter that goes away cannot cancel it
            self._loading[adapter_id] = flight
            return None, flight, True

    def _load(self, adapter_id: str, flight: Future[Adapter]) -> None:
        """Load from the store (disk + validation, outside the lock) and settle `flight`."""
        try:
            adapter = self.store.get(adapter_id)
        except BaseException as e:
            self._settle_failed(adapter_id, flight, e)
            if not isinstance(e, Exception):
                raise
            return
        with self._lock:
            if self._loading.get(adapter_id) is flight:  # not discarded meanwhile
                del self._loading[adapter_id]
                self._items[adapter_id] = adapter
                self._items.move_to_end(adapter_id)
                self._evict(keep=adapter_id)
                self._report()
        flight.set_result(adapter)

    def _settle_failed(self, adapter_id: str, flight: Future[Adapter], e: BaseException) -> None:
        with self._lock:  # a failure is not kept: the next miss tries again
            if self._loading.get(adapter_id) is flight:
                del self._loading[adapter_id]
        flight.set_exception(e)

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
