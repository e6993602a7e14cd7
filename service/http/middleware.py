"""Pure ASGI middleware: request ids, access log and request metrics; request body limits.

Pure ASGI rather than `@app.middleware("http")` (BaseHTTPMiddleware): no extra task and
stream per request, and `receive` stays the server's own, so disconnects are still seen.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.evaluation.sets import MAX_QUERY_SET_BYTES, MAX_VALIDATION_BYTES
from service.http.errors import REQUEST_ID_HEADER, APIError, HTTPAPIError
from service.http.fastpath import FastPath
from service.http.limits import RouteLimit, declared_length
from service.http.ratelimit import TokenBucketLimiter
from service.ops import logs
from service.ops.metrics import Metrics
from service.ops.settings import Settings

access_log = logging.getLogger("querylift.access")

# an incoming id is kept only when it is short and plain: it goes into every log line
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")
_HEADER = REQUEST_ID_HEADER.lower().encode()


def request_id_from(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is sane (1-128 of `A-Za-z0-9._:+/=-`), else a new
    one: the id is the key that joins a client's report to the service's log lines."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER:
            try:
                given = value.decode("ascii")
            except UnicodeDecodeError:
                break
            if _REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


class RequestContextMiddleware:
    """The outermost layer: binds the request id (and, once auth knows it, the tenant) to
    every log line, returns the id on every response, writes one access line, and counts
    the request in `querylift_requests_total` / `querylift_request_duration_seconds`."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None, access: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = rid
        ctx = logs.RequestContext(rid)
        token = logs.bind(ctx)
        status = 500  # what the server answers when the app raises before responding
        header = (_HEADER, rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            tenant = ctx.tenant or scope["state"].get("tenant")
            method = scope.get("method", "")
            if self.metrics is not None:
                route = scope.get("route")
                labels = (getattr(route, "path", "unmatched"), method, str(status))
                self.metrics.requests.labels(*labels).inc()
                self.metrics.request_latency.labels(*labels).observe(elapsed)
            if self.access:
                # the path only: no query string, no headers (keys live in Authorization)
                path = scope.get("path", "")
                access_log.info(
                    "%s %s %d %.1fms",
                    method,
                    path,
                    status,
                    elapsed * 1e3,
                    extra={
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(elapsed * 1e3, 3),
                        "tenant": tenant,
                    },
                )
            logs.unbind(token)


class BodyLimitMiddleware:
    """Refuses request bodies over the limit with `413 payload_too_large`: at once on a
    declared Content-Length, else while the body streams in (chunked or lying about its
    length), before the app has it all. The limit is `max_bytes` (QUERYLIFT_MAX_BODY_BYTES)
    except on the `routes` that have their own (ROUTE_LIMITS: the uploads of the admin API);
    one with no limit here (the adapter upload, which caps each part) passes through."""

    def __init__(self, app: ASGIApp, max_bytes: int, routes: Sequence[RouteLimit] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.routes = tuple(routes)

    def _limit(self, scope: Scope) -> tuple[int | None, str]:
        method, path = scope.get("method", ""), scope.get("path", "")
        for route in self.routes:
            if route.matches(method, path):
                return route.max_bytes, route.what
        return self.max_bytes, "QUERYLIFT_MAX_BODY_BYTES"

    @staticmethod
    def _too_large(limit: int, what: str) -> APIError:
        return APIError(
            413,
            "payload_too_large",
            f"the request body is over {limit} bytes ({what})",
            {"max_bytes": limit},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self._limit(scope)
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope.get("headers", ()))
        if declared is not None and declared > limit:
            # the body is never read: the server closes the connection after the answer
            response = self._too_large(limit, what).response()
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPAPIError(self._too_large(limit, what))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPAPIError as e:
            # raised by our receive where the app did not turn it into a response itself
            # (FastAPI does: it lets HTTPExceptions through to the error handlers)
            if started or e.error.code != "payload_too_large":
                raise
            response = e.error.response()
            response.headers["Connection"] = "close"
            await response(scope, receive, send)


# Routes with a body limit of their own, the same the route applies to what it reads (so the
# documented 16 MiB of a validation or query set is what gets through, not the 8 MiB default)
ROUTE_LIMITS = (
    # streams up to 512 MiB under its own per-part caps (service/admin/adapters.py)
    RouteLimit.of("POST", "/admin/adapters", None, "the adapter upload"),
    RouteLimit.of(
        "PUT", "/admin/tenants/{tenant}/validation", MAX_VALIDATION_BYTES, "a validation set"
    ),
    RouteLimit.of("PUT", "/admin/tenants/{tenant}/queries", MAX_QUERY_SET_BYTES, "a query set"),
)


def install_middleware(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """The layers around the routes, outermost first: request context (id, logs, metrics),
    the embed fast path (service/http/fastpath.py), CORS (only when origins are configured), body
    limit. Also the per-tenant rate limiter,
    which the auth dependency spends (service/http/ratelimit.py)."""
    app.state.rate_limiter = TokenBucketLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    # add_middleware puts each new layer outside the previous ones
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, routes=ROUTE_LIMITS)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Server-Timing", "Retry-After"],
            max_age=600,
        )
    if settings.fast_path:
        # inside the request context (ids, logs, metrics), outside everything else: what it
        # does not serve itself it hands to the layers below, unread
        app.add_middleware(
            FastPath,
            max_body_bytes=settings.max_body_bytes,
            cors=bool(settings.cors_origins),
            metrics=metrics,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access=settings.access_log)
