"""Faults, each injected: Qdrant down or slow, an adapter damaged on disk after activation,
a full disk while the admin API writes the store.

Qdrant faults go through qdrant-client's real HTTP transport, against a loopback fake that
speaks the slice of Qdrant's REST API querylift uses (answering from a local-mode client) and
that can refuse, hang, answer late or answer 503. The SIGTERM fault is in
tests/service/ops/test_shutdown.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from qdrant_client import QdrantClient, models
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from adapters import Adapter, fsutil
from adapters.checkpoint import MANIFEST_FILE, TENSORS_FILE
from adapters.store import AdapterStore
from encoders import Encoder
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway, QdrantTimeout, QdrantUnreachable
from tests.conftest import (
    ADMIN,
    admin_headers,
    assert_error,
    auth,
    embeddings,
    make_linear,
    metric,
)
from tests.live import free_port

TEXTS = ["what causes malaria", "the heart of mice"]
TIMEOUT_S = 1.0  # the Qdrant timeout the service gets in these tests
SLACK_S = 2.0  # scheduling slack on 2 shared cores


# -- a fake Qdrant on loopback ----------------------------------------------------------------
class FakeQdrant:
    """Qdrant's REST API (the calls querylift makes), answered from a local-mode client.

    `mode`: "ok"; "hang" (read the request, never answer until stopped); "error" (503).
    `delay_s` delays every answer. Safe to restart on the same port.
    """

    def __init__(self, backend: QdrantClient, port: int) -> None:
        self.backend = backend
        self.port = port
        self.mode = "ok"
        self.delay_s = 0.0
        self.requests: list[str] = []
        self._lock = threading.Lock()  # local mode is not thread-safe
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeQdrant:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, None)

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                fake.handle(self, json.loads(self.rfile.read(n)) if n else {})

        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()  # hanging handlers give up
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, h: BaseHTTPRequestHandler, body: dict[str, Any] | None) -> None:
        path = h.path.split("?")[0].strip("/").split("/")
        self.requests.append(f"{h.command} /{'/'.join(path)}")
        if self.mode == "hang":
            self._release.wait(60)
            h.close_connection = True
            return
        time.sleep(self.delay_s)
        if self.mode == "error":
            self._send(h, 503, {"status": {"error": "service unavailable"}})
            return
        with self._lock:
            result = self._answer(path, body)
        if result is None:
            self._send(h, 404, {"status": {"error": "not found"}})
        else:
            self._send(h, 200, {"result": result, "status": "ok", "time": 0.0})

    def _answer(self, path: list[str], body: dict[str, Any] | None) -> Any:
        b = self.backend
        if path == [""]:
            return {"title": "qdrant", "version": "1.16.0"}
        if path == ["collections"]:
            return b.get_collections().model_dump(mode="json")
        if len(path) == 3 and path[2] == "exists":
            return {"exists": b.collection_exists(path[1])}
        if len(path) == 2:
            info = b.get_collection(path[1]).model_dump(mode="json")
            # what `querylift index` makes on a server (local mode keeps no payload index)
            info["payload_schema"] = {
                "tenant": {
                    "data_type": "keyword",
                    "params": {"type": "keyword", "is_tenant": True},
                    "points": info.get("points_count") or 0,
                }
            }
            return info
        if path[2:] == ["points", "count"] and body is not None:
            flt = models.Filter.model_validate(body["filter"]) if body.get("filter") else None
            return {"count": b.count(path[1], count_filter=flt).count}
        if path[2:] == ["points", "query"] and body is not None:
            q = models.QueryRequest.model_validate(body)
            res = b.query_points(
                path[1],
                query=q.query,
                query_filter=q.filter,
                limit=q.limit or 10,
                with_payload=q.with_payload if q.with_payload is not None else True,
            )
            return res.model_dump(mode="json")
        return None

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


@pytest.fixture
def engine() -> str:
    """The fake server answers from qdrant-client's local mode (a client, like the server's)."""
    return "local-mode"


@pytest.fixture
def fake_qdrant(gateway: QdrantGateway) -> Iterator[FakeQdrant]:
    """Not started: a test starts it (or leaves the port closed: Qdrant unreachable)."""
    fake = FakeQdrant(gateway.backend.client, free_port())  # type: ignore[attr-defined]
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def remote_client(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
    fake_qdrant: FakeQdrant,
) -> Iterator[TestClient]:
    """The service with QUERYLIFT_QDRANT_URL pointing at the fake (its own gateway), the admin
    token for /readyz's detail, and no readiness cache: each probe sees Qdrant as it is now."""
    s = settings.model_copy(
        update={
            "qdrant_url": fake_qdrant.url,
            "qdrant_timeout_s": TIMEOUT_S,
            "admin_token": SecretStr(ADMIN),
            "readiness_cache_s": 0.0,
        }
    )
    app = create_app(s, query_encoder=query_encoder, document_encoder=document_encoder)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def search(c: TestClient) -> Any:
    return c.post("/search", json={"query": "malaria mosquito", "top_k": 3}, headers=auth("acme"))


def embed(c: TestClient, tenant: str = "acme") -> Any:
    return c.post("/embed", json={"input": TEXTS}, headers=auth(tenant))


def assert_search_ok(c: TestClient) -> None:
    r = search(c)
    assert r.status_code == 200, r.text
    ids = [h["id"] for h in r.json()["results"]]
    assert ids and set(ids) <= {"d1", "d2", "d3", "d4", "d5", "d6"}  # acme's own documents


# -- Qdrant unreachable or slow -----------------------------------------------------------------
def test_qdrant_unreachable_then_back_without_restart(
    remote_client: TestClient, fake_qdrant: FakeQdrant
) -> None:
    c = remote_client  # nothing listens on the fake's port yet: connection refused
    r, took = timed(lambda: search(c))
    err = assert_error(r, 503, "search_unavailable")
    assert "QdrantUnreachable" in err["message"]
    assert r.headers["retry-after"] == "1"
    assert took < TIMEOUT_S + SLACK_S
    assert embed(c).status_code == 200  # embedding does not need Qdrant
    ready = c.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["qdrant"] == "unreachable"  # the open answer: a state
    ready = c.get("/readyz", headers=admin_headers())
    assert ready.status_code == 503
    assert ready.json()["checks"]["qdrant"].startswith("unreachable: ConnectError")
    assert ready.json()["checks"]["encoders"] == "ok"

    fake_qdrant.start()  # Qdrant comes back: the next calls just work
    assert c.get("/readyz").status_code == 200
    assert_search_ok(c)
    metrics = c.get("/metrics").text
    assert 'querylift_qdrant_request_duration_seconds_count{operation="get_collection",' in (
        metrics
    )
    assert 'outcome="unreachable"' in metrics


def test_qdrant_hanging_times_out_and_recovers(
    remote_client: TestClient, fake_qdrant: FakeQdrant
) -> None:
    c = remote_client
    fake_qdrant.start()
    assert_search_ok(c)  # the collection info is cached from here on
    fake_qdrant.mode = "hang"  # accepts, reads the request, never answers

    results: dict[str, Any] = {}

    def slow_search() -> None:
        results["search"] = timed(lambda: search(c))

    t = threading.Thread(target=slow_search)
    t.start()
    time.sleep(0.2)
    # /embed answers while the search waits on Qdrant
    r, took = timed(lambda: embed(c))
    assert r.status_code == 200 and took < TIMEOUT_S
    t.join(TIMEOUT_S + SLACK_S + 5)
    r, took = results["search"]
    err = assert_error(r, 503, "search_unavailable")
    assert "QdrantTimeout" in err["message"]
    assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + SLACK_S  # the timeout, not a hang

    ready, took = timed(lambda: c.get("/readyz", headers=admin_headers()))
    assert ready.status_code == 503 and took < TIMEOUT_S + SLACK_S
    assert ready.json()["checks"]["qdrant"].startswith("timeout: no answer within 1 s")
    ready, took = timed(lambda: c.get("/readyz"))
    assert ready.status_code == 503 and took < TIMEOUT_S + SLACK_S
    assert ready.json()["checks"]["qdrant"] == "timeout"

    fake_qdrant.mode = "ok"
    assert c.get("/readyz").status_code == 200
    assert_search_ok(c)


def test_a_failed_collection_lookup_is_not_cached(
    remote_client: TestClient, fake_qdrant: FakeQdrant
) -> None:
    fake_qdrant.start()
    fake_qdrant.mode = "hang"  # the first /search fails at the collection lookup
    assert_error(search(remote_client), 503, "search_unavailable")
    fake_qdrant.mode = "ok"
    assert_search_ok(remote_client)  # looked up again, not a remembered failure


def test_slow_qdrant_within_the_timeout_is_fine_and_5xx_is_503(
    remote_client: TestClient, fake_qdrant: FakeQdrant
) -> None:
    fake_qdrant.start()
    fake_qdrant.delay_s = TIMEOUT_S / 4
    assert_search_ok(remote_client)
    fake_qdrant.delay_s = 0.0
    fake_qdrant.mode = "error"
    err = assert_error(search(remote_client), 503, "search_unavailable")
    assert "QdrantUnavailable" in err["message"]
    ready = remote_client.get("/readyz", headers=admin_headers())
    assert ready.status_code == 503
    assert ready.json()["checks"]["qdrant"] == "error: HTTP 503 (get_collections)"
    assert remote_client.get("/readyz").json()["checks"]["qdrant"] == "error"
    fake_qdrant.mode = "ok"
    assert_search_ok(remote_client)


def test_gateway_applies_the_exact_timeout_to_every_call(fake_qdrant: FakeQdrant) -> None:
    fake_qdrant.start()
    fake_qdrant.mode = "hang"
    gw = QdrantGateway(url=fake_qdrant.url, timeout_s=0.5)  # below qdrant-client's 1 s step
    try:
        for call in (gw.ping, lambda: gw.collection_info("docs")):
            t0 = time.monotonic()
            with pytest.raises(QdrantTimeout):
                call()
            assert 0.4 <= time.monotonic() - t0 < 0.5 + SLACK_S
    finally:
        gw.close()
    closed = QdrantGateway(url=f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    try:
        with pytest.raises(QdrantUnreachable) as e:
            closed.ping()
        assert e.value.reason.startswith("unreachable: ConnectError")
    finally:
        closed.close()


def test_readyz_is_bounded_even_when_the_ping_itself_hangs(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    gateway: QdrantGateway,
    adapters_bound: dict[str, str],
) -> None:
    class StuckPing:
        """The local gateway, except that its ping never returns (a client with no timeout)."""

        def __init__(self, inner: QdrantGateway) -> None:
            self.inner = inner
            self.release = threading.Event()

        def ping(self) -> None:
            self.release.wait(30)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    stuck = StuckPing(gateway)
    s = settings.model_copy(update={"qdrant_timeout_s": 0.5, "admin_token": SecretStr(ADMIN)})
    app = create_app(
        s,
        query_encoder=query_encoder,
        document_encoder=document_encoder,
        gateway=stuck,  # type: ignore[arg-type]
    )
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            r, took = timed(lambda: c.get("/readyz", headers=admin_headers()))
            assert r.status_code == 503 and took < 1.5 + SLACK_S
            assert r.json()["checks"]["qdrant"] == "timeout: no answer within 1.5 s"
            r, took = timed(lambda: c.get("/readyz"))  # the snapshot held: no second wait
            assert r.status_code == 503 and took < 1.5 + SLACK_S
            assert r.json()["checks"]["qdrant"] == "timeout"
            assert embed(c).status_code == 200
    finally:
        stuck.release.set()


# -- an adapter damaged on disk after activation ------------------------------------------------
def tamper(store: AdapterStore, adapter_id: str, how: str) -> None:
    """Damage the stored tensor file of `adapter_id` in place."""
    folder = store.root / "adapters" / adapter_id
    path = folder / TENSORS_FILE
    data = bytearray(path.read_bytes())
    if how == "flip":
        for i in range(len(data) - 40, len(data), 7):  # inside the weights
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how in ("nan", "nan-rehashed"):
        tensors = st_load(bytes(data))
        tensors["weight"] = np.full_like(tensors["weight"], np.nan)
        new = st_save(tensors, metadata={"format": "querylift-adapter"})  # a valid header
        path.write_bytes(new)
        if how == "nan-rehashed":  # the manifest updated to match: still refused
            import hashlib

            m = json.loads((folder / MANIFEST_FILE).read_text())
            m["tensors_sha256"] = hashlib.sha256(new).hexdigest()
            (folder / MANIFEST_FILE).write_text(json.dumps(m))
    else:
        raise ValueError(how)


def load_failures(c: TestClient, tenant: str) -> float:
    return metric(c.get("/metrics").text, "querylift_adapter_load_failures_total", tenant=tenant)


@pytest.fixture
def two_versions(
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
) -> tuple[Adapter, Adapter]:
    """acme: A (v1, from adapters_bound) then B (v2, active)."""
    a = store.get(adapters_bound["acme"])
    b = store.put(*make_linear(query_encoder, document_encoder, 7))
    store.activate("acme", b.id)
    return a, b


@pytest.mark.parametrize("how", ["flip", "truncate", "nan", "nan-rehashed"])
def test_damaged_active_adapter_is_never_served_the_previous_version_is(
    how: str,
    admin_settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    two_versions: tuple[Adapter, Adapter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = two_versions
    raw = query_encoder.encode(TEXTS, "query").vectors
    with TestClient(make_app(admin_settings), raise_server_exceptions=False) as c:
        assert embed(c).json()["adapter"] == {"id": b.id, "version": 2}
        tamper(store, b.id, how)
        # resident in memory: B is what was validated and is still what is served
        body = embed(c).json()
        assert body["adapter"] == {"id": b.id, "version": 2}
        np.testing.assert_allclose(embeddings(body), b.apply(raw), atol=1e-5)
        assert load_failures(c, "acme") == 0

        c.app.state.runtime.adapters.discard(b.id)  # evicted: the next use reloads from disk
        with caplog.at_level(logging.ERROR, logger="service.runtime"):
            r = embed(c)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["adapter"] == {"id": a.id, "version": 1}  # the previous binding
        np.testing.assert_allclose(embeddings(body), a.apply(raw), atol=1e-5)
        assert load_failures(c, "acme") == 1
        logged = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert any(b.id in m and "not served" in m and f"adapter {a.id} v1" in m for m in logged)
        for _ in range(3):  # decided once: later requests read the fallback directly
            assert embed(c).json()["adapter"] == {"id": a.id, "version": 1}
        assert load_failures(c, "acme") == 1
        info = c.get("/admin/tenants/acme", headers=admin_headers()).json()
        assert info["active"]["adapter_id"] == b.id and info["active"]["version"] == 2
        assert info["served"] == {"adapter_id": a.id, "version": 1}
        assert embed(c, "globex").status_code == 200  # other tenants are untouched


def test_damaged_only_version_falls_back_to_the_document_encoder(
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    adapters_bound: dict[str, str],
) -> None:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        g = adapters_bound["globex"]
        assert embed(c, "globex").json()["adapter"]["id"] == g
        tamper(store, g, "flip")
        c.app.state.runtime.adapters.discard(g)
        r = embed(c, "globex")
        assert r.status_code == 200 and r.json()["adapter"] is None
        assert r.json()["model"] == document_encoder.name
        np.testing.assert_allclose(
            embeddings(r.json()), document_encoder.encode(TEXTS, "query").vectors, atol=1e-5
        )
        assert load_failures(c, "globex") == 1


def test_a_new_process_over_a_damaged_store_serves_the_previous_binding(
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    two_versions: tuple[Adapter, Adapter],
) -> None:
    a, b = two_versions
    tamper(store, b.id, "truncate")
    with TestClient(make_app(), raise_server_exceptions=False) as c:  # a restart
        assert embed(c).json()["adapter"] == {"id": a.id, "version": 1}
        assert load_failures(c, "acme") == 1
        # re-uploading the good checkpoint repairs the stored copy; every replica re-reads
        good = make_linear(query_encoder, document_encoder, 7)
        assert store.put(*good).id == b.id
        assert store.get(b.id).id == b.id
        assert c.app.state.runtime.sync() is True
        assert embed(c).json()["adapter"] == {"id": b.id, "version": 2}
        assert [p for p in os.listdir(store.root / "adapters") if p.startswith(".")] == []


def test_a_swap_to_an_adapter_damaged_before_this_replica_loads_it_keeps_the_old_one(
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    two_versions: tuple[Adapter, Adapter],
) -> None:
    _, b = two_versions
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        assert embed(c).json()["adapter"] == {"id": b.id, "version": 2}
        c3 = store.put(*make_linear(query_encoder, document_encoder, 9))
        store.activate("acme", c3.id)  # another replica's admin call, validated there
        tamper(store, c3.id, "nan")
        c.app.state.runtime.sync()
        assert embed(c).json()["adapter"] == {"id": b.id, "version": 2}
        assert load_failures(c, "acme") == 1


# -- disk full while writing the store (admin API) ----------------------------------------------
def _in(root: Path, fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
    except OSError:
        return False


def disk_full(root: Path, m: pytest.MonkeyPatch, where: str) -> None:
    """ENOSPC for writes under `root`: half of the first write lands, then the disk is full
    ("write"), or every write lands and fsync reports it ("fsync"), as on delayed allocation."""
    real_write, real_fsync, real_write_bytes = os.write, os.fsync, Path.write_bytes
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(fd: int, data: Any) -> int:
        if not _in(root, fd):
            return real_write(fd, data)
        real_write(fd, bytes(data[: max(1, len(data) // 2)]))
        raise full

    def write_bytes(self: Path, data: Any) -> int:  # publish_checkpoint's staged files
        if not str(self).startswith(str(root)):
            return real_write_bytes(self, data)
        real_write_bytes(self, bytes(data[: len(data) // 2]))
        raise full

    def fsync(fd: int) -> None:
        if _in(root, fd) and not os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise full
        real_fsync(fd)

    if where == "write":
        m.setattr(fsutil.os, "write", write)
        m.setattr(Path, "write_bytes", write_bytes)
    else:
        m.setattr(fsutil.os, "fsync", fsync)


def store_files(store: AdapterStore) -> dict[str, bytes]:
    return {
        str(p.relative_to(store.root)): p.read_bytes()
        for p in sorted(store.root.rglob("*"))
        if p.is_file() and p.name not in ("audit.log", ".bindings.lock")
    }


def upload(c: TestClient, ckpt: tuple[bytes, bytes]) -> Any:
    return c.post(
        "/admin/adapters",
        headers=admin_headers(),
        files={
            TENSORS_FILE: (TENSORS_FILE, ckpt[0], "application/octet-stream"),
            MANIFEST_FILE: (MANIFEST_FILE, ckpt[1], "application/json"),
        },
    )


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_during_upload_is_507_and_changes_nothing(
    where: str,
    admin_settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    adapters_bound: dict[str, str],
    audit_lines: Callable[[], list[dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt = make_linear(query_encoder, document_encoder, 21)
    with TestClient(make_app(admin_settings), raise_server_exceptions=False) as c:
        before = store_files(store)
        with monkeypatch.context() as m:
            disk_full(store.root, m, where)
            err = assert_error(upload(c, ckpt), 507, "storage_full")
        assert "disk is full" in err["message"] and err["details"]["errno"] == "ENOSPC"
        assert store_files(store) == before  # nothing new, nothing half-written, no temp files
        assert sorted(os.listdir(store.root / "adapters")) == sorted(set(adapters_bound.values()))
        assert embed(c).json()["adapter"]["id"] == adapters_bound["acme"]
        audit = audit_lines()
        assert audit[-1]["action"] == "upload" and audit[-1]["outcome"] == "refused"
        r = upload(c, ckpt)  # space again: the same upload succeeds
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_during_activation_is_507_and_keeps_the_binding(
    where: str,
    admin_settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    adapters_bound: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    new = store.put(*make_linear(query_encoder, document_encoder, 22))
    old = adapters_bound["acme"]
    admin = admin_headers()
    with TestClient(make_app(admin_settings), raise_server_exceptions=False) as c:
        before = store_files(store)
        with monkeypatch.context() as m:
            disk_full(store.root, m, where)
            r = c.put("/admin/tenants/acme/adapter", json={"adapter_id": new.id}, headers=admin)
            err = assert_error(r, 507, "storage_full")
        assert err["details"]["reasons"] == [err["message"]]
        assert store_files(store) == before  # binding, generation: byte for byte; no temp files
        assert store.binding("acme").active.adapter_id == old  # type: ignore[union-attr]
        assert embed(c).json()["adapter"] == {"id": old, "version": 1}
        info = c.get("/admin/tenants/acme", headers=admin).json()
        assert info["served"] == {"adapter_id": old, "version": 1}

        r = c.put("/admin/tenants/acme/adapter", json={"adapter_id": new.id}, headers=admin)
        assert r.status_code == 200, r.text
        assert embed(c).json()["adapter"] == {"id": new.id, "version": 2}


def test_activation_while_qdrant_is_unreachable_is_a_503_not_a_bad_adapter(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
    fake_qdrant: FakeQdrant,
    store: AdapterStore,
) -> None:
    s = settings.model_copy(
        update={
            "qdrant_url": fake_qdrant.url,
            "qdrant_timeout_s": TIMEOUT_S,
            "admin_token": SecretStr(ADMIN),
        }
    )
    candidate = store.put(*make_linear(query_encoder, document_encoder, 11))
    app = create_app(s, query_encoder=query_encoder, document_encoder=document_encoder)
    with TestClient(app, raise_server_exceptions=False) as c:
        admin = admin_headers()
        put = {"adapter_id": candidate.id}
        err = assert_error(c.put("/admin/tenants/acme/adapter", json=put, headers=admin), 503,
                           "qdrant_unavailable")  # fmt: skip
        assert err["details"]["collection"] == "docs"
        assert store.binding("acme").active.adapter_id == adapters_bound["acme"]  # unchanged
        fake_qdrant.start()  # Qdrant back: the same call activates
        r = c.put("/admin/tenants/acme/adapter", json=put, headers=admin)
        assert r.status_code == 200, r.text
        assert store.binding("acme").active.adapter_id == candidate.id
