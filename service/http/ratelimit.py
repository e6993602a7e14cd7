"""Per-tenant rate limit: one token bucket per tenant, spent once per request after auth.

Off unless `QUERYLIFT_RATE_LIMIT_RPS` (or a tenant's `rate_limit_rps`) is set: the batcher's
queue bound already protects the process, and a default limit would only distort load tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from fastapi import Request

from service.bindings.tenants import Tenant
from service.http.errors import APIError
from service.ops import logs


class TokenBucketLimiter:
    """Token buckets by key: O(1) per call under one lock; the clock is injectable for tests.

    A bucket holds at most `burst` tokens and refills at `rate` per second; a request spends
    one. Keys are tenant names, so the table is bounded by the tenants file."""

    def __init__(
        self, rate: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]

    @staticmethod
    def default_burst(rate: float) -> float:
        """One second's worth of requests, at least one."""
        return float(max(1, math.ceil(rate)))

    def limits(self, rate: float | None, burst: int | None) -> tuple[float, float]:
        """(rate, burst) for a key: its own values where set, else the defaults; a rate of
        its own without a burst of its own gets one second's worth, not the default burst."""
        if rate is None:
            rate, burst = self.rate, burst if burst is not None else self.burst
        return rate, float(burst) if burst is not None else self.default_burst(rate)

    def acquire(
        self, key: str, rate: float | None = None, burst: int | None = None, cost: float = 1.0
    ) -> float:
        """Spend `cost` tokens of `key`'s bucket: 0.0 when admitted, else the seconds until
        the bucket holds enough (nothing is spent then). A rate of 0 admits everything."""
        rate, cap = self.limits(rate, burst)
        if rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = [cap, now]
            tokens = min(cap, bucket[0] + max(0.0, now - bucket[1]) * rate)
            bucket[1] = now
            if tokens >= cost:
                bucket[0] = tokens - cost
                return 0.0
            bucket[0] = tokens
            return (cost - tokens) / rate


def admit(request: Request, tenant: Tenant) -> None:
    """Called once the tenant is known: names it in the request's logs, then spends one token
    of its bucket or refuses with `429 rate_limited` and `Retry-After`."""
    logs.bind_tenant(tenant.name)
    limiter: TokenBucketLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    wait = limiter.acquire(tenant.name, tenant.rate_limit_rps, tenant.rate_limit_burst)
    if wait <= 0:
        return
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rate_limited.labels(tenant.name).inc()
    raise APIError(
        429,
        "rate_limited",
        f"tenant {tenant.name!r} is over its rate limit; retry in {wait:.2f}s",
        {"retry_after_s": round(wait, 3)},
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )
