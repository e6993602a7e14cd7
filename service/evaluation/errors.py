"""The evaluation's own errors: the admin routes map them to HTTP (service/http/errors.py's
table), so nothing here knows about HTTP."""

from __future__ import annotations

from typing import Any

from service.engine.errors import ServiceError

# codes (their statuses are in service/http/errors.py's STATUS table)
INVALID_VALIDATION_SET = "invalid_validation_set"
INVALID_QUERY_SET = "invalid_query_set"
SET_TOO_LARGE = "payload_too_large"
TOO_MANY_QUERIES = "too_many_queries"
CODES = (INVALID_VALIDATION_SET, INVALID_QUERY_SET, SET_TOO_LARGE, TOO_MANY_QUERIES)


class EvaluationError(ServiceError):
    """An uploaded set or an evaluation request the evaluation refuses (a 4xx at the edge)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(code, message, details)


class GateUnavailable(Exception):
    """The gate cannot run (e.g. the tenant's collection does not exist)."""
