"""Replicas sharing one adapter store converge on a swap without a restart.

The integration test runs real `querylift serve` processes on loopback (each with its own
embedded Qdrant folder, all on one store folder); the unit tests drive the background sync
task directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters.store import AdapterStore, StoreUnavailable
from encoders import Encoder, EncoderSpec
from service.bindings.replica_sync import ReplicaSync
from service.ops.metrics import Metrics
from service.runtime import ServedBinding as Bound
from tests.conftest import (
    ADMIN,
    admin_headers,
    auth,
    make_linear,
    metric,
    querylift_settings,
    server_env,
)
from tests.live import free_port

TEXTS = ["what causes malaria", "the mosquito is the vector of malaria"]
CONVERGENCE_BOUND_S = 2.0  # the bound; the default 0.5 s interval gives about 1 s
SYNC_INTERVAL_S = 0.5  # the default, set explicitly so the test does not drift with it
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


# -- real processes on loopback ----------------------------------------------------------------
@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as e:
            return f"<no log: {e}>"


class Replicas:
    """Starts `querylift serve` processes and always stops them (SIGTERM, then SIGKILL)."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env  # what every replica shares; each gets its own Qdrant folder
        self.started: list[Replica] = []

    def start(self, name: str) -> Replica:
        port = free_port()
        qdrant_path = self.tmp_path / f"qdrant-{name}"
        # local mode: one process per folder
        env = {**self.env, **querylift_settings(qdrant_path=qdrant_path)}
        log_path = self.tmp_path / f"{name}.log"
        workdir = self.tmp_path / f"cwd-{name}"  # empty: no stray .env, nothing to shadow
        workdir.mkdir()
        with open(log_path, "wb") as log_file:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "querylift.cli", "serve"),
                    *("--host", "127.0.0.1", "--port", str(port)),
                ],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, proc, f"http://127.0.0.1:{port}", log_path)
        self.started.append(replica)
        return replica

    def wait_ready(self, *replicas: Replica, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(replicas)
        with httpx.Client(timeout=5.0) as http:
            while pending:
                for r in list(pending):
                    code = r.proc.poll()
                    if code is not None:
                        pytest.fail(f"replica {r.name} exited with {code}:\n{r.log_tail()}")
                    try:
                        if http.get(f"{r.url}/readyz").status_code == 200:
                            pending.remove(r)
                    except httpx.TransportError:
                        pass  # not listening yet
                if pending and time.monotonic() > deadline:
                    tails = "\n".join(f"--- {r.name}:\n{r.log_tail()}" for r in pending)
                    pytest.fail(
                        f"not ready within {timeout_s}s: {[r.name for r in pending]}\n{tails}"
                    )
                if pending:
                    time.sleep(0.2)

    @staticmethod
    def stop(replica: Replica) -> int:
        proc = replica.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        return proc.returncode

    def stop_all(self) -> None:
        for r in self.started:
            self.stop(r)


@pytest.fixture
def replicas(
    tmp_path: Path,
    query_spec: EncoderSpec,
    doc_spec: EncoderSpec,
    tenants_file: Path,
    store: AdapterStore,
) -> Iterator[Replicas]:
    settings = querylift_settings(
        log_level="info",
        tenants_file=tenants_file,
        adapter_store=store.root,
        adapter_sync_interval_s=SYNC_INTERVAL_S,
    )
    group = Replicas(tmp_path, server_env(query_spec, doc_spec, **settings))
    try:
        yield group
    finally:
        group.stop_all()


def _embed(http: httpx.Client, replica: Replica, tenant: str) -> dict:
    r = http.post(f"{replica.url}/embed", json={"input": TEXTS}, headers=auth(tenant))
    assert r.status_code == 200, f"{replica.name}: {r.status_code} {r.text}"
    return r.json()


def _served_id(body: dict) -> str | None:
    return body["adapter"]["id"] if body["adapter"] else None


def _vectors(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)


def _converge(
    http: httpx.Client, replicas: list[Replica], tenant: str, adapter_id: str, t0: float
) -> dict[str, tuple[float, dict]]:
    """Poll each replica until it serves `adapter_id`: name -> (seconds since t0, that body).

    Polls well past the bound so a slow replica is measured, not just reported as late.
    """
    seen: dict[str, tuple[float, dict]] = {}
    deadline = t0 + 5 * CONVERGENCE_BOUND_S
    while len(seen) < len(replicas) and time.monotonic() < deadline:
        for r in replicas:
            if r.name in seen:
                continue
            body = _embed(http, r, tenant)
            if _served_id(body) == adapter_id:
                seen[r.name] = (time.monotonic() - t0, body)
        time.sleep(0.01)
    missing = [r.name for r in replicas if r.name not in seen]
    assert not missing, f"{missing} still not serving {adapter_id} after {deadline - t0:.1f}s"
    return seen


def test_replicas_converge_on_a_swap_within_the_bound(
    replicas: Replicas,
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    a = store.put(*make_linear(query_encoder, document_encoder, 11))
    b = store.put(*make_linear(query_encoder, document_encoder, 12))
    raw = query_encoder.encode(TEXTS, "query").vectors
    expected = {a.id: a.apply(raw), b.id: b.apply(raw)}

    one, two = replicas.start("one"), replicas.start("two")
    replicas.wait_ready(one, two)
    timings: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=10.0) as http:
        for r in (one, two):  # nothing bound yet: acme is served by the document encoder
            body = _embed(http, r, "acme")
            assert body["adapter"] is None and body["model"] == document_encoder.name

        # a swap made through the store (what the admin API of replica one does after
        # validating) is served by replica two, without a restart, within the bound
        t0 = time.monotonic()
        store.activate("acme", a.id, actor="test-replica-one")
        seen = _converge(http, [two, one], "acme", a.id, t0)
        timings["A"] = {name: s for name, (s, _) in seen.items()}
        for name, (seconds, body) in seen.items():
            assert seconds < CONVERGENCE_BOUND_S, f"{name} took {seconds:.2f}s to serve A"
            assert body["adapter"] == {"id": a.id, "version": 1}
            assert body["model"] == query_encoder.name
            np.testing.assert_allclose(_vectors(body), expected[a.id], atol=1e-5)

        # swap again: both replicas converge on B
        t0 = time.monotonic()
        store.activate("acme", b.id, actor="test-replica-two")
        seen = _converge(http, [one, two], "acme", b.id, t0)
        timings["B"] = {name: s for name, (s, _) in seen.items()}
        for name, (seconds, body) in seen.items():
            assert seconds < CONVERGENCE_BOUND_S, f"{name} took {seconds:.2f}s to serve B"
            assert body["adapter"] == {"id": b.id, "version": 2}
            np.testing.assert_allclose(_vectors(body), expected[b.id], atol=1e-5)
        # the other tenants were not touched
        for r in (one, two):
            assert _embed(http, r, "globex")["adapter"] is None

        # a replica started after the swap serves B from its first request
        three = replicas.start("three")
        replicas.wait_ready(three)
        body = _embed(http, three, "acme")
        assert body["adapter"] == {"id": b.id, "version": 2}
        np.testing.assert_allclose(_vectors(body), expected[b.id], atol=1e-5)

        for r in (one, two):
            text = http.get(f"{r.url}/metrics").text
            assert "querylift_adapter_sync_failures_total 0.0" in text, r.name
            assert 'querylift_adapter_swaps_total{tenant="acme"} 2.0' in text, r.name

    print(f"\nconvergence (s): {timings}")
    # a clean shutdown: SIGTERM runs the lifespan's end (the sync task is cancelled);
    # uvicorn then re-raises the signal, so -SIGTERM is a normal exit status too
    for r in (one, two, three):
        code = Replicas.stop(r)
        assert code in (0, -signal.SIGTERM), f"{r.name} exited {code}:\n{r.log_tail()}"
        log_text = r.log_path.read_text(errors="replace")
        assert "Application shutdown complete" in log_text, log_text[-4000:]
        assert "Traceback" not in log_text, log_text[-4000:]
    for r in (one, two):
        log_text = r.log_path.read_text(errors="replace")
        assert f"tenant acme no adapter -> {a.id} v1" in log_text, log_text[-4000:]
        assert f"tenant acme {a.id} v1 -> {b.id} v2" in log_text, log_text[-4000:]


# -- the sync task itself --------------------------------------------------------------------
def test_sync_task_survives_an_exception_and_keeps_syncing(
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
):
    adapter = store.put(*make_linear(query_encoder, document_encoder, 3))
    app = make_app(adapter_sync_interval_s=0.05)
    caplog.set_level(logging.INFO, logger="service.bindings.replica_sync")
    with TestClient(app) as client:
        sync: ReplicaSync = app.state.replica_sync
        runtime = app.state.runtime
        assert sync.running
        real_sync = runtime.sync
        calls = {"n": 0}

        def flaky_sync(force: bool = False) -> bool:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OSError("store volume went away")
            return real_sync(force)

        monkeypatch.setattr(runtime, "sync", flaky_sync)
        deadline = time.monotonic() + 5
        while sync.failures < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sync.failures == 1
        failed_at = time.monotonic()

        store.activate("acme", adapter.id)  # only a sync after the failure can pick this up
        body: dict = {}
        while time.monotonic() < deadline:
            body = client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
            if body.get("adapter"):
                break
            time.sleep(0.01)
        assert body["adapter"] == {"id": adapter.id, "version": 1}
        assert sync.running and calls["n"] >= 2
        assert sync.last_sync_ok > failed_at
        assert sync.staleness_s() < 5
        assert app.state.metrics.adapter_sync_failures._value.get() == 1
        metrics_text = client.get("/metrics").text
        assert "querylift_adapter_sync_failures_total 1.0" in metrics_text
    # shut down cleanly: the task is gone, the lifespan cleared it
    assert not sync.running and app.state.replica_sync is None
    messages = [r.getMessage() for r in caplog.records if r.name == "service.bindings.replica_sync"]
    assert any("adapter sync failed (OSError: store volume went away)" in m for m in messages)
    assert any("recovered after 1 failed attempt" in m for m in messages)
    assert any(f"tenant acme no adapter -> {adapter.id} v1" in m for m in messages)


class _FakeStore:
    def generation(self) -> int:
        return 7


class _FakeTenants:
    tenants = {"acme": object()}  # noqa: RUF012


class _FakeRuntime:
    """Just what ReplicaSync touches; sync() fails on the calls listed in `fail_on`."""

    def __init__(self, fail_on: set[int]) -> None:
        self.store = _FakeStore()
        self.tenants = _FakeTenants()
        self.calls = 0
        self.fail_on = fail_on
        self.bound = Bound(None, 0)

    def binding(self, tenant: str) -> Bound:
        return self.bound

    def sync(self, force: bool = False) -> bool:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ValueError(f"bad generation file (call {self.calls})")
        if self.calls == 3:
            self.bound = Bound("abc", 1)
            return True
        return False


def test_sync_loop_keeps_going_through_failures_and_stops_cleanly():
    runtime = _FakeRuntime(fail_on={1, 2, 5})

    async def scenario() -> ReplicaSync:
        sync = ReplicaSync(runtime, 0.01)  # type: ignore[arg-type]
        await sync.stop()  # never started: nothing to do
        sync.start()
        with pytest.raises(RuntimeError, match="already running"):
            sync.start()
        for _ in range(500):
            if runtime.calls >= 8:
                break
            await asyncio.sleep(0.01)
        await sync.stop()
        await sync.stop()  # idempotent
        return sync

    sync = asyncio.run(scenario())
    assert runtime.calls >= 8
    assert sync.failures == 3
    assert sync.syncs == runtime.calls - 3
    assert not sync.running
    calls_at_stop = runtime.calls
    time.sleep(0.05)
    assert runtime.calls == calls_at_stop  # nothing runs after stop()


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s"):
        ReplicaSync(_FakeRuntime(set()), 0)  # type: ignore[arg-type]


# -- staleness: the metric, /readyz, and a slow store never on the request path --------------
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_staleness_counts_from_the_start_of_the_last_good_sync_and_says_stale_past_the_bound():
    runtime = _FakeRuntime(fail_on={2, 3})
    clock = _Clock()
    metrics = Metrics()
    sync = ReplicaSync(runtime, 0.5, metrics, clock=clock, stale_after_s=10.0)  # type: ignore[arg-type]
    staleness = "querylift_adapter_sync_staleness_seconds"

    def slow_sync(force: bool = False) -> bool:  # the store takes 4 s to answer
        clock.now += 4.0
        return _FakeRuntime.sync(runtime, force)

    runtime.sync = slow_sync  # type: ignore[method-assign]
    assert asyncio.run(sync.tick()) is False  # call 1: fine, started at 100, ended at 104
    assert sync.last_sync_ok == 100.0 and sync.staleness_s() == 4.0
    assert metrics.registry.get_sample_value(staleness) == 4.0
    assert sync.check()[0] == "ok"
    asyncio.run(sync.tick())  # calls 2 and 3 fail: the bindings are as of 100
    asyncio.run(sync.tick())
    assert sync.failures == 2 and sync.staleness_s() == 12.0
    state, why = sync.check()
    assert state == "stale" and "12.0s ago (bound 10s)" in why and "ValueError" in why, why
    assert metrics.registry.get_sample_value(staleness) == 12.0
    clock.now += 30.0  # nothing runs: the age keeps growing at each read (a hung store)
    assert metrics.registry.get_sample_value(staleness) == 42.0
    assert asyncio.run(sync.tick()) is False  # call 4 succeeds: started at 142
    assert sync.last_sync_ok == 142.0 and sync.check()[0] == "ok" and sync.last_error is None
    with pytest.raises(ValueError, match="stale_after_s"):
        ReplicaSync(runtime, 0.5, stale_after_s=0)  # type: ignore[arg-type]


def _ready_body(client: TestClient, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    r = client.get("/readyz", headers=headers or {})
    return r.status_code, r.json()


def test_readyz_reports_a_stale_store_but_keeps_serving(
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
):
    """The store down: /readyz stays 200 with `adapter_sync: stale` (no tenant named, the
    admin hears why and how old), /embed serves the bound adapter, the gauge grows; back:
    `ok` again."""
    adapter = store.put(*make_linear(query_encoder, document_encoder, 5))
    store.activate("acme", adapter.id)
    app = make_app(
        adapter_sync_interval_s=0.05, adapter_stale_after_s=0.3, admin_token=SecretStr(ADMIN)
    )
    with TestClient(app) as client:
        sync: ReplicaSync = app.state.replica_sync
        code, body = _ready_body(client)
        assert code == 200 and body["checks"]["adapter_sync"] == "ok", body

        def down(force: bool = False) -> bool:
            raise StoreUnavailable("object store: read s3://bkt/generation: connection refused")

        monkeypatch.setattr(app.state.runtime, "sync", down)
        deadline = time.monotonic() + 10
        while sync.staleness_s() <= 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, body = _ready_body(client)
        assert code == 200 and body["status"] == "ready", body
        assert body["checks"]["adapter_sync"] == "stale", body
        assert "acme" not in json.dumps(body) and "s3://" not in json.dumps(body)
        code, detail = _ready_body(client, admin_headers())
        why = detail["checks"]["adapter_sync"]
        assert why.startswith("stale: the adapter store was last read") and "refused" in why
        assert detail["adapter_sync_age_s"] > 0.3
        r = client.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
        assert r.status_code == 200 and r.json()["adapter"] == {"id": adapter.id, "version": 1}
        gauge = metric(client.get("/metrics").text, "querylift_adapter_sync_staleness_seconds")
        assert gauge > 0.3

        monkeypatch.undo()  # the store is back
        deadline = time.monotonic() + 10
        while sync.check()[0] != "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        code, body = _ready_body(client)
        assert code == 200 and body["checks"]["adapter_sync"] == "ok", body
        assert metric(client.get("/metrics").text, "querylift_adapter_sync_staleness_seconds") < 1


def test_a_slow_store_never_holds_the_event_loop(
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
):
    """Every store call takes 1 s and one swap is picked up meanwhile: no store call runs on
    the event loop (the swap log's generation included), and /embed stays fast."""
    a = store.put(*make_linear(query_encoder, document_encoder, 6))
    b = store.put(*make_linear(query_encoder, document_encoder, 7))
    store.activate("acme", a.id)
    app = make_app(adapter_sync_interval_s=0.05)
    on_loop: list[str] = []

    def slow(served: AdapterStore, name: str) -> None:
        real = getattr(served, name)

        def call(*args: object, **kwargs: object) -> object:
            try:
                asyncio.get_running_loop()
                on_loop.append(name)
            except RuntimeError:  # a worker thread: no loop runs here
                pass
            time.sleep(1.0)
            return real(*args, **kwargs)

        monkeypatch.setattr(served, name, call)

    with TestClient(app) as client:
        sync: ReplicaSync = app.state.replica_sync
        for name in ("generation", "binding", "get"):  # the store this app opened
            slow(app.state.runtime.store, name)
        store.activate("acme", b.id)  # another replica's admin, on the same store
        latencies = []
        served_at: float | None = None
        deadline = time.monotonic() + 60

        def going() -> bool:
            """Until the swap is served and a later sync finished too (the swap's aftermath,
            its log's generation read, included), and at least 2 s after the swap."""
            if time.monotonic() > deadline:
                return False
            return served_at is None or sync.syncs < 2 or time.monotonic() < served_at + 2.0

        while going():
            t0 = time.perf_counter()
            r = client.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 200
            if served_at is None and r.json()["adapter"]["id"] == b.id:
                served_at = time.monotonic()
        assert served_at is not None, "the swap never arrived"
        assert sync.syncs >= 2 and on_loop == [], on_loop
        assert len(latencies) > 10 and max(latencies) < 0.5, max(latencies)
