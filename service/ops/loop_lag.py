"""Event-loop lag: how late the loop wakes a task that asked to sleep a fixed interval.

Everything the service answers (requests, probes, /metrics) waits while something blocks the
loop, so the overshoot of a short sleep is a direct reading of that stall. Sampled every
`interval_s` into `querylift_event_loop_lag_seconds` (bench/interference.py reads it while a
gate runs beside live traffic).
"""

from __future__ import annotations

import asyncio
import time

from service.ops.metrics import Metrics

INTERVAL_S = 0.05


async def watch_loop_lag(metrics: Metrics, interval_s: float = INTERVAL_S) -> None:
    """Runs until cancelled (the lifespan's end)."""
    while True:
        start = time.perf_counter()
        await asyncio.sleep(interval_s)
        metrics.event_loop_lag.observe(max(0.0, time.perf_counter() - start - interval_s))
