"""The core's error codes and the one table at the HTTP edge that gives each its status."""

from __future__ import annotations

import ast

from service.engine import errors
from service.engine.errors import ServiceError
from service.evaluation import errors as evaluation
from service.http.errors import STATUS, service_error_response
from tests.conftest import REPO

CORE = ("service/engine", "service/bindings", "service/search", "service/evaluation")


def test_every_core_code_has_a_status() -> None:
    assert set(errors.CODES) | set(evaluation.CODES) == set(STATUS)
    assert all(400 <= s < 600 for s in STATUS.values())


def test_the_core_raises_only_listed_codes_and_no_http_errors() -> None:
    """Every ServiceError the engine, bindings and search build names a listed code, and none
    of them imports the HTTP layer's APIError."""
    seen = set()
    for folder in CORE:
        for path in (REPO / folder).glob("*.py"):
            text = path.read_text()
            assert "APIError" not in text, path
            for node in ast.walk(ast.parse(text)):
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", None) == "ServiceError"
                    and node.args
                ):
                    first = node.args[0]
                    if isinstance(first, ast.Constant):
                        seen.add(first.value)
    known = set(errors.CODES) | set(evaluation.CODES)
    assert seen and seen <= known, seen - known


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    r = service_error_response(ServiceError("overloaded", "busy", retry_after_s=0.2))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    r = service_error_response(ServiceError("overloaded", "busy", retry_after_s=2.5))
    assert r.headers["retry-after"] == "3"
    r = service_error_response(ServiceError("collection_not_found", "no such collection"))
    assert r.status_code == 404 and "retry-after" not in r.headers
