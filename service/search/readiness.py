"""What /readyz knows about Qdrant and the tenants' search targets: one snapshot, refreshed in
the background, so the probe rate never becomes Qdrant load.

A refresh pings Qdrant and inspects every target (collection lookups and counts: calls that
grow with the tenants). It runs on its own thread, never on the event loop, and one at a time
(single flight): a probe reads the last snapshot, and when that is older than the period it
starts one refresh and still answers from the last snapshot. Before the first snapshot exists
a probe waits for the first refresh: a replica's first answer is then the truth rather than a
`not_ready` that costs a whole probe interval of rollout.

A refresh is bounded like the probe it replaced: the ping within `bound_s`, the inspection
within twice that. One that overruns (a client with no timeout, a hung connection) is given up
on: the snapshot says `timeout`, the replica leaves rotation, and the next period starts a new
refresh; the late thread's answer is still taken if no newer refresh has published. A period of
0 turns the cache off: every probe runs its own refresh and waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.search.qdrant_gateway import QdrantUnavailable
from service.search.targets import Inspection

Clock = Callable[[], float]


@dataclass(frozen=True)
class Snapshot:
    """One refresh's findings. `qdrant` is "ok" or the reason in words; `qdrant_state` the
    same as one word of a fixed set (ok, unreachable, timeout, error) that names nothing."""

    at: float  # clock time the refresh started
    qdrant: str
    qdrant_state: str
    found: tuple[Inspection, ...] = ()

    @property
    def qdrant_ok(self) -> bool:
        return self.qdrant_state == "ok"


@dataclass
class _Flight:
    """One refresh in progress: its phase sets the deadline a waiting probe keeps."""

    id: int
    started: float
    phase_started: float
    phase_bound: float
    done: threading.Event = field(default_factory=threading.Event)
    result: Snapshot | None = None
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(
        default_factory=list
    )

    @property
    def deadline(self) -> float:
        return self.phase_started + self.phase_bound


class TargetReadiness:
    """The snapshot cache of one runtime: `ping` and `inspect` are its gateway's ping and its
    `inspect_targets`; `period_s` is QUERYLIFT_READINESS_CACHE_S; `bound_s` the ping's bound
    (the Qdrant timeout plus a second)."""

    def __init__(
        self,
        ping: Callable[[], None],
        inspect: Callable[[], list[Inspection]],
        period_s: float,
        bound_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._ping = ping
        self._inspect = inspect
        self.period_s = period_s
        self.bound_s = bound_s
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._snapshot: Snapshot | None = None
        self._published = 0  # id of the flight whose snapshot is held
        self._flight: _Flight | None = None  # the cache's single flight

    async def snapshot(self) -> Snapshot:
        """The snapshot a probe answers from: the last one (starting a background refresh
        when it is stale), or, before the first one or with the cache off, a fresh one."""
        if self.period_s <= 0:
            return await self._wait(self._start())
        with self._lock:
            now = self._clock()
            flight = self._flight
            if flight is not None and not flight.done.is_set() and now > flight.deadline:
                self._give_up(flight)  # overrun: say so, and let the next period try again
                flight = None
            held = self._snapshot
            if flight is None and (held is None or now - held.at >= self.period_s):
                flight = self._start_locked(now)
        if held is not None:
            return held
        assert flight is not None
        return await self._wait(flight)

    def age(self, snap: Snapshot) -> float:
        return max(0.0, self._clock() - snap.at)

    # -- refreshes ------------------------------------------------------------------------------
    def _start(self) -> _Flight:
        with self._lock:
            return self._start_locked(self._clock())

    def _start_locked(self, now: float) -> _Flight:
        flight = _Flight(next(self._ids), now, now, self.bound_s)
        if self.period_s > 0:
            self._flight = flight
        threading.Thread(
            target=self._refresh, args=(flight,), name="querylift-readiness", daemon=True
        ).start()
        return flight

    def _refresh(self, flight: _Flight) -> None:
        """On the refresh's own thread: ping, then inspect every target."""
        try:
            self._ping()
            with self._lock:
                flight.phase_started = self._clock()
                flight.phase_bound = 2 * self.bound_s
            found = self._inspect()
            snap = Snapshot(flight.started, "ok", "ok", tuple(found))
        except QdrantUnavailable as e:
            snap = Snapshot(flight.started, e.reason, e.kind)
        except Exception as e:
            snap = Snapshot(flight.started, f"error: {type(e).__name__}", "error")
        with self._lock:
            self._publish(flight, snap)
            if self._flight is flight:
                self._flight = None
        self._finish(flight, snap)

    def _give_up(self, flight: _Flight) -> None:
        """Under the lock: the flight overran its bound; its snapshot says timeout."""
        snap = Snapshot(flight.started, f"timeout: no answer within {self.bound_s:g} s", "timeout")
        self._publish(flight, snap)
        if self._flight is flight:
            self._flight = None

    def _publish(self, flight: _Flight, snap: Snapshot) -> None:
        if flight.id >= self._published:
            self._snapshot = snap
            self._published = flight.id

    def _finish(self, flight: _Flight, snap: Snapshot) -> None:
        with self._lock:
            if flight.done.is_set():
                return
            flight.result = snap
            flight.done.set()
            waiters, flight.waiters = flight.waiters, []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, fut)

    async def _wait(self, flight: _Flight) -> Snapshot:
        """The flight's snapshot, or a timeout one once it overruns its phase's bound."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not flight.done.is_set():
                flight.waiters.append((loop, fut))
        while True:
            with self._lock:
                if flight.result is not None:
                    return flight.result
                remaining = flight.deadline - self._clock()
                if remaining <= 0:
                    self._give_up(flight)
                    return Snapshot(
                        flight.started, f"timeout: no answer within {self.bound_s:g} s", "timeout"
                    )
            try:
                await asyncio.wait_for(asyncio.shield(fut), remaining)
            except TimeoutError:
                continue  # the phase may have moved on (ping -> inspect): a new deadline


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
