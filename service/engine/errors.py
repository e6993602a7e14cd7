"""The core's errors: what it cannot do for a request, in its own words, with no HTTP in them.

The engine, the bindings and the search raise `ServiceError(code, message, details,
retry_after_s=...)`; service/http/errors.py holds the one table that maps each code to an HTTP
status (`STATUS`) and answers it in the one error shape, with `Retry-After` where a retry is
the cure. A new code without a row there fails tests/service/http/test_errors_table.py.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the core cannot serve: `code` names the case (the error shape's `code`)."""

    def __init__(
        self,
        code: str,
        message: str,
        details: Any = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.retry_after_s = retry_after_s


# every code the core raises; service/http/errors.py maps each one to a status
INPUT_TOO_LONG = "input_too_long"
ADAPTER_UNAVAILABLE = "adapter_unavailable"
QDRANT_UNAVAILABLE = "qdrant_unavailable"
ENCODER_UNAVAILABLE = "encoder_unavailable"
OUT_OF_MEMORY = "out_of_memory"
OVERLOADED = "overloaded"
TIMEOUT = "timeout"
NOT_READY = "not_ready"
SHUTTING_DOWN = "shutting_down"
BATCH_FAILED = "batch_failed"
COLLECTION_NOT_FOUND = "collection_not_found"
COLLECTION_DIM_MISMATCH = "collection_dim_mismatch"
SEARCH_TARGET_INVALID = "search_target_invalid"
INVALID_FILTER = "invalid_filter"

CODES = (
    INPUT_TOO_LONG,
    ADAPTER_UNAVAILABLE,
    QDRANT_UNAVAILABLE,
    ENCODER_UNAVAILABLE,
    OUT_OF_MEMORY,
    OVERLOADED,
    TIMEOUT,
    NOT_READY,
    SHUTTING_DOWN,
    BATCH_FAILED,
    COLLECTION_NOT_FOUND,
    COLLECTION_DIM_MISMATCH,
    SEARCH_TARGET_INVALID,
    INVALID_FILTER,
)
