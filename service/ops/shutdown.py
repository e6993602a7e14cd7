"""Graceful shutdown: what the service does between SIGTERM and exit.

`querylift serve` calls `Drain.begin()` from uvicorn's signal handler. From then on:
- requests that reach the app get `503 shutting_down` (error shape, `Retry-After`,
  `Connection: close`) instead of starting work; `/healthz` and `/metrics` still answer, and
  `/readyz` answers 503 so a load balancer stops routing here;
- uvicorn closes the listening socket within about 0.1 s (new connections are refused) and
  closes idle keep-alive connections; requests already in flight run to the end;
- at `shutdown_grace_s` minus a margin, embed requests still waiting for the encoder get
  `503 shutting_down` (the batcher is stopped), so a client gets an answer before uvicorn
  cancels whatever is left at `shutdown_grace_s`; then the lifespan closes the rest and the
  process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# still answered while draining: liveness, readiness (it says why) and the metrics scrape
PASS_THROUGH = frozenset({"/healthz", "/readyz", "/metrics"})


class Drain:
    """The shutdown flag; `begin()` is safe to call from a signal handler."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called in the lifespan: lets `wait()` be woken from the signal handler."""
        self._loop = loop
        self._event = asyncio.Event()
        if self.active:
            self._event.set()

    def begin(self) -> None:
        if self.since is not None:
            return
        self.since = time.monotonic()
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)  # a signal handler must not touch the loop

    async def wait(self) -> None:
        assert self._event is not None, "bind() first"
        await self._event.wait()


def cutoff_s(grace_s: float) -> float:
    """When waiting requests are answered 503: a second (at most half the grace) before
    uvicorn cancels what is left."""
    return max(0.0, grace_s - min(1.0, grace_s / 2))


async def stop_at_cutoff(drain: Drain, grace_s: float, stop: Callable[[], Awaitable[None]]) -> None:
    """After `begin()`, wait until the cutoff, then run `stop` (the batcher's)."""
    await drain.wait()
    log.info("shutting down: in-flight requests have %.1f s to finish", grace_s)
    await asyncio.sleep(cutoff_s(grace_s))
    log.warning("shutdown grace nearly over: answering waiting requests 503 shutting_down")
    await stop()


class DrainGate:
    """ASGI middleware: 503 `shutting_down` for requests that arrive once draining began."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.active or scope["path"] in PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "code": "shutting_down",
                    "message": "the service is shutting down; retry on another replica",
                    "details": None,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn's server, plus: its first exit signal begins the drain before uvicorn's own
    handling (close the listener, wait for in-flight requests up to the graceful timeout)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.drain.active:
            log.info("received signal %d: draining", sig)
        self.drain.begin()
        super().handle_exit(sig, frame)
