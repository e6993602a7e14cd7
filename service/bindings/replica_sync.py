"""Background adapter sync: every replica polls the shared store and picks up swaps.

Several service processes share one adapter store (a shared volume, or an object store). A
swap made through any of them (or straight in the store) bumps the store's `generation`;
this task calls `Runtime.sync()` every `adapter_sync_interval_s`, which re-reads the tenant
bindings only when that generation moved and then swaps them in with one pointer write.
A swap is therefore served everywhere within about one interval plus one sync (load the
new adapter), i.e. within about 2 x `adapter_sync_interval_s`.

Every store call runs in a worker thread, and the event loop never waits for one: a store
that is down or slow (seconds per call) delays the next sync, never a request, which reads
the bindings by one pointer read. The task never dies on an error (an unreachable store, a
half-written file on a flaky volume): it logs the exception type, counts it, keeps the
bindings it has, and tries again at the next tick.

`last_sync_ok` (monotonic seconds) is when the last successful sync started, i.e. the
moment the served bindings were last known to match the store; `staleness_s()` is its age,
exported as `querylift_adapter_sync_staleness_seconds` and read by `/readyz`, whose
`adapter_sync` check says `stale` past `adapter_stale_after_s` (reported, not a reason to
leave rotation: the last good bindings keep serving).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from anyio import to_thread

from service.ops.metrics import Metrics
from service.ops.tasks import cancel_and_wait
from service.runtime import Runtime, ServedBinding

log = logging.getLogger(__name__)

STALE_AFTER_S = 30.0  # the setting's default (QUERYLIFT_ADAPTER_STALE_AFTER_S)


class ReplicaSync:
    """Polls the adapter store for binding changes; start() in the lifespan, stop() at the end."""

    def __init__(
        self,
        runtime: Runtime,
        interval_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        self.runtime = runtime
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self.metrics = metrics
        self._clock = clock
        # the Runtime synced once (force=True) while it was built: that is the first good sync
        self.last_sync_ok: float = clock()
        self.syncs = 0  # completed sync calls (changed or not)
        self.failures = 0  # failed sync calls since start
        self._failing = 0  # consecutive failures (for log throttling)
        self.last_error: str | None = None  # the failing streak's last error, for the admin
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:  # read at each scrape: it grows while a sync hangs, too
            metrics.adapter_sync_staleness.set_function(self.staleness_s)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        if self._task is not None and not self._task.done():
            raise RuntimeError("replica sync already running")
        self._task = asyncio.create_task(self._run(), name="querylift-adapter-sync")
        return self._task

    async def stop(self) -> None:
        """Cancel the loop and wait for it (a sync already in its thread is let finish)."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled() and task.exception() is not None:
                log.error("adapter sync had stopped: %r", task.exception())
            return
        await cancel_and_wait(task)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def staleness_s(self) -> float:
        """Seconds since the bindings were last confirmed current against the store."""
        return self._clock() - self.last_sync_ok

    def check(self) -> tuple[str, str]:
        """`/readyz`'s `adapter_sync` check: (`ok` | `stale`, the operator's detail).

        The detail names no tenant; the error it quotes is the store's (its URL and key)."""
        age = self.staleness_s()
        if age <= self.stale_after_s:
            return "ok", f"ok: last synced {age:.1f}s ago"
        why = f"; last error: {self.last_error}" if self.last_error else ""
        return "stale", (
            f"stale: the adapter store was last read {age:.1f}s ago (bound "
            f"{self.stale_after_s:g}s), serving the last good bindings{why}"
        )

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        log.info("adapter sync: polling the store every %.3gs", self.interval_s)
        while True:
            await asyncio.sleep(self.interval_s)
            await self.tick()

    async def tick(self) -> bool:
        """One sync in a worker thread; returns whether the bindings were re-read.

        Never raises an Exception (only cancellation propagates).
        """
        started = self._clock()  # what a success confirms: the store as of now, or later
        try:
            before, changed, after, generation = await to_thread.run_sync(self._sync_once)
        except Exception as e:
            self._failed(e)
            return False
        self.syncs += 1
        self.last_sync_ok = max(self.last_sync_ok, started)
        if self._failing:
            log.warning("adapter sync recovered after %d failed attempt(s)", self._failing)
            self._failing = 0
            self.last_error = None
        if changed:
            self._log_swaps(before, after, generation)
        return changed

    def _sync_once(
        self,
    ) -> tuple[dict[str, ServedBinding | None], bool, dict[str, ServedBinding | None], int | None]:
        """In the worker thread: every store call (the swap log's generation included)."""
        names = list(self.runtime.tenants.tenants)
        before = {t: self.runtime.binding(t) for t in names}
        changed = self.runtime.sync()
        if not changed:
            return before, False, before, None
        after = {t: self.runtime.binding(t) for t in names}
        return before, True, after, self.runtime.store.generation()

    def _failed(self, e: Exception) -> None:
        self.failures += 1
        self._failing += 1
        self.last_error = f"{type(e).__name__}: {e}"
        if self.metrics is not None:
            self.metrics.adapter_sync_failures.inc()
        # the first failure of a streak with its traceback, then one line each
        log.error(
            "adapter sync failed (%s: %s); keeping the current bindings, retrying in %.3gs"
            " (%d consecutive failure(s))",
            type(e).__name__,
            e,
            self.interval_s,
            self._failing,
            exc_info=e if self._failing == 1 else None,
        )

    def _log_swaps(
        self,
        before: dict[str, ServedBinding | None],
        after: dict[str, ServedBinding | None],
        generation: int | None,
    ) -> None:
        for tenant, new in after.items():
            old = before.get(tenant)
            if new == old:
                continue
            log.info(
                "adapter swap (store generation %s): tenant %s %s -> %s",
                generation,
                tenant,
                _describe(old),
                _describe(new),
            )


def _describe(b: ServedBinding | None) -> str:
    if b is None or b.adapter_id is None:
        return "no adapter"
    return f"{b.adapter_id} v{b.version}"
