"""Input limits (issue 7): request body size, JSON and UTF-8 errors, odd strings and filters.

Inputs per request, characters and tokens per input, and unknown fields are covered in
tests/service/http/test_routes.py; this file covers what sits in front of and around them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from functools import partial

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from encoders import Encoder
from service.http.middleware import BodyLimitMiddleware
from service.http.schemas import MAX_FILTER_DEPTH
from service.ops.settings import Settings
from tests.conftest import ADMIN, admin_headers, auth, make_linear
from tests.conftest import assert_error as error_shape
from tests.live import serve

LIMIT = 4096
# the one error shape, and every answer here carries a request id
assert_error = partial(error_shape, request_id=True)


@pytest.fixture
def small(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_body_bytes=LIMIT)


def json_headers(tenant: str = "acme") -> dict[str, str]:
    return {**auth(tenant), "content-type": "application/json"}


# -- body size ---------------------------------------------------------------------------------
def test_declared_body_over_the_limit_is_413_before_anything_else(small: TestClient):
    body = json.dumps({"input": "x" * LIMIT}).encode()
    r = small.post("/embed", content=body, headers=json_headers())
    err = assert_error(r, 413, "payload_too_large")
    assert err["details"] == {"max_bytes": LIMIT}
    assert "QUERYLIFT_MAX_BODY_BYTES" in err["message"]
    # refused before auth and before the body is read: no key needed to be told
    r = small.post("/search", content=body, headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_body_at_the_limit_is_served(small: TestClient):
    body = json.dumps({"input": "malaria", "instruction": "i" * 100}).encode()
    body += b" " * (LIMIT - len(body))
    assert len(body) == LIMIT
    r = small.post("/embed", content=body, headers=json_headers())
    assert r.status_code == 200, r.text


def test_streamed_body_without_a_length_is_counted(small: TestClient):
    """A chunked body declares no length: it is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(LIMIT // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    r = small.post("/embed", content=chunks(), headers=json_headers())
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large")


def test_streamed_body_over_the_limit_on_a_real_server(
    make_client: Callable[..., TestClient],
):
    """Through uvicorn: chunked transfer encoding, and a Content-Length that lies low."""
    app = make_client(max_body_bytes=LIMIT).app
    with serve(app) as url:

        def chunks() -> Iterator[bytes]:
            yield b'{"input": "'
            for _ in range(LIMIT // 256 + 1):
                yield b"y" * 256
            yield b'"}'

        r = httpx.post(url + "/embed", content=chunks(), headers=json_headers(), timeout=30)
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert_error(r, 413, "payload_too_large")
        ok = httpx.post(url + "/embed", json={"input": "malaria"}, headers=auth("acme"))
        assert ok.status_code == 200, ok.text


def test_the_middleware_answers_when_the_app_reads_the_body_itself():
    """An app that reads `receive` directly (not through FastAPI) still gets a 413."""
    seen: list[int] = []

    async def raw_app(scope, receive, send) -> None:
        while True:
            message = await receive()
            seen.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = BodyLimitMiddleware(raw_app, max_bytes=10)
    messages = [
        {"type": "http.request", "body": b"12345", "more_body": True},
        {"type": "http.request", "body": b"67890", "more_body": True},
        {"type": "http.request", "body": b"X", "more_body": False},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(mw(scope, receive, send))
    assert seen == [5, 5]  # the third chunk went over: the app never got it
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


def test_the_admin_upload_keeps_its_own_caps(
    make_client: Callable[..., TestClient], query_encoder: Encoder, document_encoder: Encoder
):
    tensors, manifest = make_linear(query_encoder, document_encoder, 11)
    assert len(tensors) > LIMIT
    c = make_client(max_body_bytes=LIMIT, admin_token=SecretStr(ADMIN))
    files = {
        "adapter.safetensors": ("adapter.safetensors", tensors, "application/octet-stream"),
        "manifest.json": ("manifest.json", manifest, "application/json"),
    }
    r = c.post("/admin/adapters", files=files, headers=admin_headers())
    assert r.status_code == 201, r.text
    # every other admin route has the general limit
    big = json.dumps({"adapter_id": "x" * LIMIT})
    r = c.put(
        "/admin/tenants/acme/adapter",
        content=big,
        headers={**admin_headers(), "content-type": "application/json"},
    )
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("route", ["validation", "queries"])
def test_the_set_uploads_take_the_documented_16_mib(start_admin: Callable[..., TestClient], route):
    """docs/api.md promises validation and query sets up to 16 MiB; the general body limit is
    8 MiB. A 10 MiB set gets past it; a 17 MiB one is the documented 413."""
    c = start_admin()
    assert c.app.state.settings.max_body_bytes == 8 << 20
    head = json.dumps(
        [{"query": "malaria", "positive_ids": ["d1"]}] if route == "validation" else ["malaria"]
    )
    ten_mib = (head[:-1] + " " * (10 << 20) + "]").encode()  # JSON whitespace: one entry
    path = f"/admin/tenants/acme/{route}"
    r = c.put(path, content=ten_mib, headers=admin_headers())
    assert r.status_code == 200, r.text[:300]
    assert r.json()[route]["n_queries"] == 1
    seventeen = ten_mib[:-1] + b" " * (7 << 20) + b"]"
    err = assert_error(
        c.put(path, content=seventeen, headers=admin_headers()), 413, "payload_too_large"
    )
    assert err["details"] == {"max_bytes": 16 << 20}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(seventeen), 1 << 20):
            yield seventeen[start : start + (1 << 20)]

    err = assert_error(
        c.put(path, content=chunks(), headers=admin_headers()), 413, "payload_too_large"
    )
    assert err["details"] == {"max_bytes": 16 << 20}
    # the other routes keep the general limit
    r = c.put("/admin/tenants/acme/adapter", content=ten_mib, headers=admin_headers())
    assert assert_error(r, 413, "payload_too_large")["details"] == {"max_bytes": 8 << 20}


def test_default_limit_is_a_few_megabytes():
    assert 1 << 20 <= Settings().max_body_bytes <= 16 << 20


# -- JSON and UTF-8 ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"input": ', "Expecting value at position 10"),
        (b'{"input": "a",}', "position"),
        (b'{"input": "caf\xe9"}', "UTF-8"),  # latin-1, not UTF-8
        (b'{"input": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # too many digits
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_body_that_is_not_json_is_400_invalid_json(client: TestClient, body: bytes, says: str):
    for path in ("/embed", "/v1/embeddings", "/search"):
        err = assert_error(
            client.post(path, content=body, headers=json_headers()), 400, "invalid_json"
        )
        assert says in err["message"], err


@pytest.mark.parametrize(
    ("path", "payload", "where"),
    [
        ("/embed", {"input": ["ok", "a\ud800b"]}, "input[1]"),
        ("/embed", {"input": "ok", "instruction": "\udfff"}, "instruction"),
        ("/search", {"query": "\ud83d"}, "query"),
        (
            "/search",
            {"query": "x", "filter": {"must": [{"key": "t", "match": {"value": "\ud800"}}]}},
            "filter",
        ),
        ("/v1/embeddings", {"input": "ok", "model": "m\ud800"}, "model"),
        ("/v1/embeddings", {"input": ["\udc00"]}, "input"),
    ],
)
def test_lone_surrogates_are_422_naming_the_field(
    client: TestClient, path: str, payload: dict, where: str
):
    """JSON can spell a lone surrogate as an escape; no tokenizer or encoder can take one."""
    body = json.dumps(payload).encode()  # ensure_ascii: the surrogate travels as \\udXXX
    err = assert_error(
        client.post(path, content=body, headers=json_headers()), 422, "invalid_request"
    )
    msg = err["message"]
    assert where in msg and ("surrogate" in msg or "unicode" in msg), err


def test_an_encoded_surrogate_is_a_lone_surrogate(client: TestClient):
    """Python's JSON parser lets UTF-8-encoded surrogates through; they are refused alike."""
    body = b'{"input": "\xed\xa0\x80"}'
    err = assert_error(
        client.post("/embed", content=body, headers=json_headers()), 422, "invalid_request"
    )
    assert "surrogate" in err["message"]


def test_an_unknown_field_named_with_a_surrogate_is_answered(client: TestClient):
    """The error names the field: its name must not break encoding the answer."""
    body = json.dumps({"input": "ok", "\ud800" * 100: 1}).encode()
    err = assert_error(
        client.post("/embed", content=body, headers=json_headers()), 422, "invalid_request"
    )
    assert len(err["details"][0]["loc"][-1]) <= 64


def test_nan_and_infinity_are_refused(client: TestClient):
    for body in (b'{"query": "x", "top_k": NaN}', b'{"input": "x", "truncate": Infinity}'):
        path = "/search" if b"query" in body else "/embed"
        assert_error(
            client.post(path, content=body, headers=json_headers()), 422, "invalid_request"
        )


# -- filters -----------------------------------------------------------------------------------
def nested_filter(depth: int) -> dict:
    flt: dict = {"must": [{"key": "topic", "match": {"value": "malaria"}}]}
    for _ in range(depth - 1):
        flt = {"must": [flt]}
    return flt


def test_filter_nesting_is_bounded(client: TestClient):
    ok = client.post(
        "/search",
        json={"query": "x", "filter": {"must": [{"key": "topic", "match": {"value": "malaria"}}]}},
        headers=auth("acme"),
    )
    assert ok.status_code == 200, ok.text
    deep = nested_filter(MAX_FILTER_DEPTH)
    r = client.post("/search", json={"query": "x", "filter": deep}, headers=auth("acme"))
    err = assert_error(r, 422, "invalid_request")
    assert "nested deeper" in err["message"]
    wide = {"should": [{"key": "topic", "match": {"value": str(i)}} for i in range(1000)]}
    r = client.post("/search", json={"query": "x", "filter": wide}, headers=auth("acme"))
    assert "more than" in assert_error(r, 422, "invalid_request")["message"]


@pytest.mark.parametrize(
    "flt",
    [
        {"must": [{"key": "", "match": {"value": "a"}}]},
        {"must": [{"key": "a..b", "match": {"value": "a"}}]},
        {"must": [{"is_empty": {"key": "tenant]"}}]},
        {"must": [{"nested": {"key": "x[", "filter": {}}}]},
        {"min_should": {"conditions": [{"key": "topic", "match": {"value": "x"}}], "min_count": 0}},
    ],
)
def test_filters_qdrant_refuses_at_search_time_are_422(client: TestClient, flt: dict):
    r = client.post("/search", json={"query": "x", "filter": flt}, headers=auth("acme"))
    assert_error(r, 422, "invalid_request")
