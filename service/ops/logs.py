"""Logging in one place: every record carries its request's id and tenant; JSON or text lines.

The request context is a mutable object in a contextvar: the middleware binds it per request,
and the tenant is filled in later by the auth dependency, which FastAPI may run on a worker
thread (a copied context that still points at the same object).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal, TextIO

LogFormat = Literal["json", "text"]


@dataclass
class RequestContext:
    request_id: str
    tenant: str | None = None


_CONTEXT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "querylift_request", default=None
)


def current() -> RequestContext | None:
    return _CONTEXT.get()


def bind(ctx: RequestContext) -> contextvars.Token[RequestContext | None]:
    return _CONTEXT.set(ctx)


def unbind(token: contextvars.Token[RequestContext | None]) -> None:
    _CONTEXT.reset(token)


def bind_tenant(name: str) -> None:
    """Name the tenant of the current request in its log lines (no-op outside a request)."""
    ctx = _CONTEXT.get()
    if ctx is not None:
        ctx.tenant = name


class ContextFilter(logging.Filter):
    """Adds `request_id` and `tenant` to every record (explicit `extra=` values win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _CONTEXT.get()
        if not hasattr(record, "request_id"):
            record.request_id = ctx.request_id if ctx else None
        if not hasattr(record, "tenant"):
            record.tenant = ctx.tenant if ctx else None
        return True


# attributes every LogRecord has; anything else on a record came from `extra=` and is emitted
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
    "tenant",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, tenant, then extras.

    ASCII-escaped so that no message (lone surrogates included) can break the line or the
    stream's encoding."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "tenant": getattr(record, "tenant", None),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    """Human-readable lines; the request id and tenant in brackets where known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if rid := getattr(record, "request_id", None):
            parts.append(f"req={rid}")
        if tenant := getattr(record, "tenant", None):
            parts.append(f"tenant={tenant}")
        record.ctx = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def _iso(created: float) -> str:
    t = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(created % 1 * 1000):03d}Z"


def configure_logging(
    level: str = "info", fmt: LogFormat = "json", stream: TextIO | None = None
) -> logging.Handler:
    """Route every logger (uvicorn's too) to one stderr handler with the request context.

    Called once by `querylift serve`; uvicorn must then run with `log_config=None` so that it
    keeps these handlers, and `access_log=False`: the service writes its own access line."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    return handler
