"""The fast path (service/http/fastpath.py): it answers exactly as the full app does, serves only
plainly good requests, and hands everything else over with the body intact."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.http import fastpath
from service.http.fastpath import FastPath
from service.http.schemas import EmbedResponse, OpenAIEmbeddingsResponse
from tests.conftest import auth, sample

LONG = "mosquito malaria parasite " * 400  # over the tiny encoders' token limits
JSON = {"content-type": "application/json"}


def outcome(client: TestClient, which: str) -> float:
    return sample(client, "querylift_fast_path_total", {"outcome": which})


# (name, path, body: a dict for JSON or raw bytes, extra headers, served by the fast path)
CASES: list[tuple[str, str, Any, dict[str, str], bool]] = [
    ("one text", "/embed", {"input": "malaria mosquito"}, {}, True),
    ("a list", "/embed", {"input": ["malaria", "cancer cells", "heart"]}, {}, True),
    ("repeat: cache hit", "/embed", {"input": ["malaria", "cancer cells"]}, {}, True),
    ("documents", "/embed", {"input": ["a b"], "input_type": "document"}, {}, True),
    ("instruction", "/embed", {"input": "q", "instruction": "find studies"}, {}, True),
    ("truncate", "/embed", {"input": [LONG, "short"], "truncate": True}, {}, True),
    ("too long", "/embed", {"input": [LONG]}, {}, True),
    ("too many", "/embed", {"input": [str(i) for i in range(9)]}, {}, True),
    ("openai float", "/v1/embeddings", {"input": ["malaria"], "model": "m"}, {}, True),
    ("openai b64", "/v1/embeddings", {"input": "x", "encoding_format": "base64"}, {}, True),
    ("openai dims", "/v1/embeddings", {"input": "x", "dimensions": 3}, {}, True),
    ("openai token ids", "/v1/embeddings", {"input": [1, 2, 3]}, {}, True),
    ("openai empty text", "/v1/embeddings", {"input": [""]}, {}, True),
    ("empty list", "/embed", {"input": []}, {}, False),
    ("unknown field", "/embed", {"input": "x", "extra": 1}, {}, False),
    ("wrong type", "/embed", {"input": 5}, {}, False),
    ("not JSON", "/embed", b'{"input": ["x"', {}, False),
    ("NaN literal", "/embed", b'{"input": ["x"], "truncate": NaN}', {}, False),
    ("lone surrogate", "/embed", b'{"input": ["\\ud800"]}', {}, False),
    ("text/plain", "/embed", b'{"input": ["x"]}', {"content-type": "text/plain"}, False),
    ("search", "/search", {"query": "malaria mosquito", "top_k": 3}, {}, True),
    ("search, no payload", "/search", {"query": "cancer", "with_payload": False}, {}, True),
    (
        "search, filter",
        "/search",
        {"query": "disease", "filter": {"must": [{"key": "topic", "match": {"value": "brain"}}]}},
        {},
        True,
    ),
    ("search, bad filter", "/search", {"query": "x", "filter": {"must": 5}}, {}, True),
    ("search, blank", "/search", {"query": "  "}, {}, False),
    ("search, top_k 0", "/search", {"query": "x", "top_k": 0}, {}, False),
    ("no key", "/embed", {"input": "x"}, {"Authorization": ""}, False),
    ("no key, search", "/search", {"query": "x"}, {"Authorization": ""}, False),
    ("unknown key", "/embed", {"input": "x"}, {"Authorization": "Bearer nope"}, False),
]


def send(client: TestClient, path: str, body: Any, headers: dict[str, str]) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {**JSON, **auth("acme"), **headers}
    if not h.get("Authorization"):
        h.pop("Authorization")
    return client.post(path, content=raw, headers=h)


def comparable(r: Any) -> dict[str, Any]:
    """What must match between the two paths: status, body, the headers a client reads, and
    the names (not durations) of the timings."""
    try:
        body = r.json()
    except ValueError:
        body = r.text
    if isinstance(body, dict) and "timings_ms" in body:  # /search: durations differ, and
        body["timings_ms"] = sorted(body["timings_ms"])  # local Qdrant's float32 scores vary
        for hit in body["results"]:  # in the 7th digit from one identical search to the next
            hit["score"] = round(hit["score"], 5)
    timing = [p.split(";")[0].strip() for p in r.headers.get("server-timing", "").split(",")]
    keep = ("content-type", "x-query-cache", "retry-after", "www-authenticate")
    return {
        "status": r.status_code,
        "body": body,
        "headers": {k: r.headers.get(k) for k in keep},
        "timing": timing,
    }


def test_the_fast_path_answers_exactly_as_the_full_app(make_client: Callable[..., TestClient]):
    fast, full = make_client(fast_path=True), make_client(fast_path=False)
    for name, path, body, headers, served in CASES:
        before = outcome(fast, "served")
        a, b = send(fast, path, body, headers), send(full, path, body, headers)
        assert comparable(a) == comparable(b), name
        assert outcome(fast, "served") - before == (1.0 if served else 0.0), name
    assert outcome(full, "served") == outcome(full, "handed_over") == 0.0


def test_its_answers_match_the_documented_models(client: TestClient):
    r = client.post("/embed", json={"input": ["malaria", "cancer"]}, headers=auth("acme"))
    assert r.status_code == 200
    EmbedResponse.model_validate_json(r.content)
    r = client.post("/v1/embeddings", json={"input": "malaria"}, headers=auth("acme"))
    OpenAIEmbeddingsResponse.model_validate_json(r.content)
    assert outcome(client, "served") == 2.0


def test_vectors_are_the_float32_values_exactly(client: TestClient):
    """Numbers go out in their shortest float32 form: read back as float32 they are the
    service's vectors bit for bit, whichever encoding the client asked for."""
    texts = ["malaria mosquito", "brain disease"]
    floats = client.post("/v1/embeddings", json={"input": texts}, headers=auth("acme")).json()
    b64 = client.post(
        "/v1/embeddings", json={"input": texts, "encoding_format": "base64"}, headers=auth("acme")
    ).json()
    for f, b in zip(floats["data"], b64["data"], strict=True):
        exact = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.array_equal(np.asarray(f["embedding"], dtype=np.float32), exact)


def test_request_metrics_name_the_route(client: TestClient):
    client.post("/embed", json={"input": "x"}, headers=auth("acme"))
    value = client.app.state.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "querylift_requests_total", {"endpoint": "/embed", "method": "POST", "status": "200"}
    )
    assert value == 1.0


def test_a_chunked_body_is_handed_over_and_still_served(client: TestClient):
    def chunks():
        yield b'{"input": '
        yield b'["malaria"]}'

    r = client.post("/embed", content=chunks(), headers={**JSON, **auth("acme")})
    assert r.status_code == 200
    assert len(r.json()["data"]) == 1
    assert outcome(client, "handed_over") == 1.0


def test_an_oversized_body_is_left_to_the_body_limit(make_client: Callable[..., TestClient]):
    small = make_client(max_body_bytes=64)
    r = send(small, "/embed", {"input": ["x" * 100]}, {})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert outcome(small, "handed_over") == 1.0


def test_rate_limits_are_spent_once_per_request(make_client: Callable[..., TestClient]):
    limited = make_client(rate_limit_rps=0.001, rate_limit_burst=2)
    assert send(limited, "/embed", {"input": "a"}, {}).status_code == 200
    assert send(limited, "/embed", {"input": "b"}, {}).status_code == 200
    r = send(limited, "/embed", {"input": "c"}, {})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert "retry-after" in r.headers


def test_while_draining_the_full_app_answers(client: TestClient):
    client.app.state.drain.begin()  # type: ignore[attr-defined]
    r = client.post("/embed", json={"input": "x"}, headers=auth("acme"))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "shutting_down"
    assert outcome(client, "handed_over") == 1.0


def test_a_fault_is_a_500_with_the_request_id(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> Any:
        raise RuntimeError("bug")

    hot = fastpath.HOT_ROUTES["/embed"]
    monkeypatch.setitem(fastpath.HOT_ROUTES, "/embed", dataclasses.replace(hot, handler=broken))
    r = client.post("/embed", json={"input": "x"}, headers={**auth("acme"), "X-Request-ID": "r1"})
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-request-id"] == "r1"


# -- the hand-over, at the ASGI level ----------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.runtime = object()
        self.batcher = object()
        self.drain = None


class _App:
    state = _State()


def _scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/embed",
        "root_path": "",
        "headers": headers,
        "app": _App(),
        "state": {},
    }


@pytest.mark.parametrize(
    ("length", "chunks"),
    [
        (b"20", [b'{"input": ', b'["x"]}']),  # the stream runs past its Content-Length
        (b"99", [b'{"input": ["x"]}']),  # ... or ends short of it
    ],
)
def test_the_full_app_receives_every_message_it_would_have(length: bytes, chunks: list[bytes]):
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ] + [{"type": "http.disconnect"}]
    given = list(messages)
    received: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return given.pop(0)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        for _ in messages:
            received.append(await receive())

    async def send(_: Any) -> None:
        raise AssertionError("the fast path must not answer")

    layer = FastPath(inner, max_body_bytes=1000, cors=False)
    scope = _scope([(b"content-type", b"application/json"), (b"content-length", length)])
    asyncio.run(layer(scope, receive, send))
    assert received == messages
