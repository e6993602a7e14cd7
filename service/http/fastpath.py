"""The hot path: well-formed JSON POSTs to /embed, /v1/embeddings and /search, served
without FastAPI's routing, dependency solving and body handling.

Why: at concurrency 1 a query's latency is the encoder's plus what the service adds, and
on the 2-core dev VM FastAPI's layers were the largest part of that addition (about 0.6 ms
of 2.8 ms; bench.serve measures the rest). The encoder's own time cannot shrink here; this
can.

How it stays honest: a request is served here only when it is plainly fine: a known key,
a JSON body within the size limit that parses and validates, no CORS preflight to answer,
not draining. Anything else is handed, body replayed, to the full app, so every answer that
can be told before work starts (401, 400, 413, 415, 422, 503) has one source: the FastAPI
routes and handlers. Past that point both paths run the same functions
(`routes.embed_response`, `openai_response`, `search_response`), and a `ServiceError` raised
there is rendered by the same `service_error_response`. `QUERYLIFT_FAST_PATH=false` turns it off.
"""

from __future__ import annotations

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.engine.errors import ServiceError
from service.http.deps import serving, tenant_of
from service.http.errors import internal_error, service_error_response
from service.http.ratelimit import admit
from service.http.routes import HOT_ROUTES, Handler
from service.ops.metrics import Metrics


class _Route:
    """What the request metrics read from `scope["route"]`: the route's path, as FastAPI's
    own route would give it."""

    def __init__(self, path: str) -> None:
        self.path = path


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


class FastPath:
    """ASGI layer just inside the request context (ids, logs, request metrics)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, cors: bool, metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.cors = cors
        self.metrics = metrics
        self.routes = {path: _Route(path) for path in HOT_ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = HOT_ROUTES.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        served = await self._serve(scope, receive, send, route.request, route.handler)
        if self.metrics is not None:
            self.metrics.fast_path.labels("served" if served else "handed_over").inc()

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: type[BaseModel],
        handler: Handler,
    ) -> bool:
        """True when answered here; False when handed over to the full app."""
        ready = serving(scope["app"].state)  # not ready: the full app answers 503
        length = self._plain_length(scope)
        if length is None or ready is None:
            await self.app(scope, receive, send)
            return False
        runtime, batcher = ready
        body, seen = await self._read_body(receive, length)
        request = Request(scope, receive)  # the body is read: only a disconnect is left
        tenant = tenant_of(request, runtime) if body is not None else None
        parsed = _parse(model, body) if body is not None and tenant is not None else None
        if tenant is None or parsed is None:
            await self.app(scope, _replay(seen, receive), send)
            return False
        scope["route"] = self.routes[scope["path"]]
        try:
            admit(request, tenant)
            response = await handler(request, runtime, batcher, tenant, parsed)
        except ServiceError as e:
            response = service_error_response(e)
        except Exception as e:
            response = internal_error(request, e)
        await response(scope, receive, send)
        return True

    def _plain_length(self, scope: Scope) -> int | None:
        """The declared body length when the headers are those of a plain JSON request
        within the body limit; None when the full app should look at it."""
        length: int | None = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
            elif name == b"content-type":
                json_body = _is_json(value)
            elif name == b"transfer-encoding" or (name == b"origin" and self.cors):
                return None
        if not json_body or length is None or not 0 < length <= self.max_body_bytes:
            return None
        return length

    @staticmethod
    async def _read_body(receive: Receive, length: int) -> tuple[bytes | None, list[Message]]:
        """(body, the messages read); body is None when the stream ended early, ran past
        its Content-Length or was not a request body."""
        seen: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] != "http.request":
                return None, seen
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:
                return None, seen
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size != length:
            return None, seen
        return b"".join(chunks), seen


def _parse(model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The validated request, or None for the full app to answer (its own JSON decoder and
    error shapes decide what is wrong)."""
    try:
        return model.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None


def _replay(seen: list[Message], receive: Receive) -> Receive:
    """`receive` as if nothing had been read: the messages already read, then the stream's own."""
    pending = list(seen)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
