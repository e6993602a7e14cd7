"""Warm-up: forward passes before /readyz says ready; an adapter applied once as it is bound."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from encoders import Encoder
from service.app import create_app
from service.engine.warmup import LENGTHS
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import ADMIN, MODELS, admin_headers, auth, needs_embedded_models


class Spy:
    """An encoder that records its `encode` calls (warm-up's; requests use encode_tokenized)
    and can be held or made to fail."""

    def __init__(self, inner: Encoder) -> None:
        self._inner = inner
        self.calls: list[tuple[str, int, int]] = []  # kind, rows, longest text in words
        self.hold = threading.Event()
        self.hold.set()
        self.fail: Exception | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def ready(self) -> bool:
        return not getattr(self, "starting", False)

    def encode(self, texts: list[str], kind: str, *args: Any, **kwargs: Any) -> Any:
        self.hold.wait(30)
        if self.fail is not None:
            raise self.fail
        self.calls.append((kind, len(texts), max(len(t.split()) for t in texts)))
        return self._inner.encode(texts, kind, *args, **kwargs)  # type: ignore[arg-type]


def _ready(client: TestClient, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.02)


@pytest.fixture
def spies(query_encoder: Encoder, document_encoder: Encoder) -> tuple[Spy, Spy]:
    return Spy(query_encoder), Spy(document_encoder)


def _app(settings: Settings, spies: tuple[Spy, Spy], gateway: QdrantGateway, **update: object):
    return create_app(
        settings.model_copy(update=update),
        query_encoder=spies[0],  # type: ignore[arg-type]
        document_encoder=spies[1],  # type: ignore[arg-type]
        gateway=gateway,
    )


def test_ready_only_after_each_encoder_ran_every_kind_at_several_lengths(
    settings: Settings, spies: tuple[Spy, Spy], gateway: QdrantGateway, adapters_bound: dict
) -> None:
    q, d = spies
    with TestClient(_app(settings, spies, gateway)) as client:
        body = _ready(client)
        assert body["status"] == "ready" and body["checks"]["warmup"] == "ok", body
        assert {(k, w) for k, rows, w in q.calls if rows == 1} >= {("query", n) for n in LENGTHS}
        assert any(rows > 1 for _, rows, _ in q.calls)  # a batch shape too
        assert {k for k, _, _ in d.calls} == {"document", "query"}
        assert {w for _, rows, w in d.calls if rows == 1} >= set(LENGTHS)
        before = len(q.calls)
        r = client.post("/embed", json={"input": ["a query"]}, headers=auth("acme"))
        assert r.status_code == 200
        assert len(q.calls) == before  # requests do not go through warm-up's path


def test_an_engine_that_starts_later_is_warmed_before_ready(
    settings: Settings, spies: tuple[Spy, Spy], gateway: QdrantGateway, adapters_bound: dict
) -> None:
    """Like vLLM: `ready` turns true in the background; the warm-up waits for it, then runs
    on its own thread while /readyz says `running`."""
    q, _ = spies
    q.starting = True  # type: ignore[attr-defined]
    q.hold.clear()
    with TestClient(_app(settings, spies, gateway, admin_token=SecretStr(ADMIN))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["warmup"] == "running", r.text
        assert r.json()["checks"]["encoders"] == "starting"
        r = client.get("/readyz", headers=admin_headers())  # the operator's detail
        assert r.json()["checks"]["encoders"].startswith("not ready: tiny-qwen3 (starting)")
        q.starting = False  # type: ignore[attr-defined]
        time.sleep(0.5)  # up, but its warm-up pass is held
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"] == {
            **r.json()["checks"],
            "encoders": "ok",
            "warmup": "running",
        }, r.text
        assert q.calls == []
        q.hold.set()
        assert _ready(client)["status"] == "ready"
        assert q.calls
    q.fail = RuntimeError("boom")
    with TestClient(_app(settings, spies, gateway, admin_token=SecretStr(ADMIN))) as client:
        body = _ready(client, timeout_s=2)
        assert body["status"] == "not_ready"
        assert body["checks"]["warmup"] == "failing", body
        body = client.get("/readyz", headers=admin_headers()).json()
        assert body["checks"]["warmup"] == "failed: RuntimeError: boom", body


def test_warm_up_off_runs_nothing(
    settings: Settings, spies: tuple[Spy, Spy], gateway: QdrantGateway, adapters_bound: dict
) -> None:
    with TestClient(_app(settings, spies, gateway, warmup=False)) as client:
        assert _ready(client)["checks"]["warmup"] == "ok"
    assert spies[0].calls == [] and spies[1].calls == []


# an adapter's first apply before it serves: tests/service/bindings/test_adapter_loads.py


# -- the first request after ready, on the embedded models ---------------------------------------
@pytest.mark.models
@needs_embedded_models
def test_first_request_after_ready_is_not_the_cold_one() -> None:
    """The first /embed and /search after ready against requests 2..10 of the same process:
    within the noise (twice the median, plus 20 ms of scheduling). With QUERYLIFT_WARMUP=false
    the first /embed on mpnet takes several times the median (bench/first_request.py)."""
    from bench.first_request import measure

    result = measure(MODELS, warmup=True, requests=10)
    assert set(result) == {"/embed", "/search"}
    for endpoint, times in result.items():
        steady = statistics.median(times[1:])
        assert times[0] <= 2 * steady + 20, (endpoint, times)
