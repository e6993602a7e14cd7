"""One error shape for every failure: {"error": {"code", "message", "details"}}; and the one
table from the core's error codes to HTTP statuses (`STATUS`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine import errors
from service.engine.errors import ServiceError
from service.evaluation import errors as evaluation

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}


REQUEST_ID_HEADER = "X-Request-ID"


# The one mapping from the core's error codes (service/engine/errors.py) to HTTP statuses.
STATUS: dict[str, int] = {
    errors.INPUT_TOO_LONG: 413,
    errors.ADAPTER_UNAVAILABLE: 503,
    errors.QDRANT_UNAVAILABLE: 503,
    errors.ENCODER_UNAVAILABLE: 503,
    errors.OUT_OF_MEMORY: 503,
    errors.OVERLOADED: 429,
    errors.TIMEOUT: 504,
    errors.NOT_READY: 503,
    errors.SHUTTING_DOWN: 503,
    errors.BATCH_FAILED: 503,
    errors.COLLECTION_NOT_FOUND: 404,
    errors.COLLECTION_DIM_MISMATCH: 409,
    errors.SEARCH_TARGET_INVALID: 409,
    errors.INVALID_FILTER: 422,
    evaluation.INVALID_VALIDATION_SET: 422,
    evaluation.INVALID_QUERY_SET: 422,
    evaluation.SET_TOO_LARGE: 413,
    evaluation.TOO_MANY_QUERIES: 413,
}


class APIError(ServiceError):
    """An error raised at the HTTP edge itself (validation, auth, admin), status in hand."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code, message, details)
        self.status = status
        self.headers = headers

    def response(self) -> JSONResponse:
        """This error in the one shape (the handler's and the fast path's answer)."""
        return error_response(self.status, self.code, self.message, self.details, self.headers)


def status_of(exc: ServiceError) -> int:
    return exc.status if isinstance(exc, APIError) else STATUS[exc.code]


def service_error_response(exc: ServiceError) -> JSONResponse:
    """A core error in the one shape: its status from STATUS, Retry-After (whole seconds,
    at least 1) where the core said a retry helps."""
    if isinstance(exc, APIError):
        return exc.response()
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, int(exc.retry_after_s + 0.999)))}
    return error_response(STATUS[exc.code], exc.code, exc.message, exc.details, headers)


class HTTPAPIError(StarletteHTTPException):
    """An APIError for code that runs where FastAPI only lets HTTPExceptions through as they
    are (e.g. an ASGI `receive` that refuses a body mid-read), answered in the one shape."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.status, error.message, error.headers)
        self.error = error


class _ErrorJSON(JSONResponse):
    """ASCII-escaped JSON: an error that quotes a client's key (a lone surrogate, say) can
    always be encoded, so a bad request never turns into a 500 while answering it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return _ErrorJSON(body, status_code=status, headers=headers)


_MAX_LOC_CHARS = 64
_MAX_ERRORS = 20


def _loc_part(p: Any) -> Any:
    # a location part can be a client's own dict key: keep it short
    return p if isinstance(p, int) or len(str(p)) <= _MAX_LOC_CHARS else str(p)[:_MAX_LOC_CHARS]


def _clean_validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    # Never echo the offending input back: it can be huge or sensitive.
    return [
        {
            "loc": [_loc_part(p) for p in e.get("loc", ())],
            "msg": e.get("msg"),
            "type": e.get("type"),
        }
        for e in errors[:_MAX_ERRORS]
    ]


def _json_error(exc: BaseException | None) -> str | None:
    """Why the body is not JSON, when FastAPI's generic 400 came from decoding it."""
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not valid UTF-8"
    if isinstance(exc, RecursionError):
        return "the body is nested too deeply"
    if isinstance(exc, ValueError):  # e.g. an integer with more digits than Python parses
        return f"the body is not valid JSON: {str(exc)[:200]}"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            e = errors[0]
            pos = e.get("loc", ("body", "?"))[-1]
            why = (e.get("ctx") or {}).get("error", "decode error")
            return error_response(
                400,
                "invalid_json",
                f"the body is not valid JSON: {why} at position {pos}",
                {"position": pos},
            )
        details = _clean_validation_errors(errors)
        first = details[0] if details else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        msg = f"{where}: {first.get('msg')}" if where else str(first.get("msg", "invalid request"))
        return error_response(422, "invalid_request", msg, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and (why := _json_error(exc.__cause__)):
            return error_response(400, "invalid_json", why)
        if isinstance(exc, HTTPAPIError):
            return exc.error.response()
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request, exc)


def internal_error(request: Request, exc: BaseException) -> JSONResponse:
    """A 500 for a fault (a bug, not bad input): logged with its traceback, answered in the
    one shape. The handler runs outside the request middleware (Starlette's outermost layer),
    so the request is named from its scope, in the log line and in the response."""
    rid = getattr(request.state, "request_id", None)
    log.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": rid, "tenant": getattr(request.state, "tenant", None)},
    )
    headers = {REQUEST_ID_HEADER: rid} if rid else None
    return error_response(500, "internal_error", "internal server error", headers=headers)
