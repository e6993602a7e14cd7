"""SIGTERM under load: in-flight requests finish, new ones get 503 or a refused connection, and
the process exits within the grace period (`QUERYLIFT_SHUTDOWN_GRACE_S`).

The process tests run a real `querylift serve` (tiny models) on loopback. Requests are made
slow on purpose with a long batch wait (`QUERYLIFT_BATCH_MAX_WAIT_MS`): every request waits
in the batcher for that long, so it is reliably in flight when the signal arrives.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from encoders import EncoderSpec
from service.ops.shutdown import cutoff_s
from tests.conftest import (
    ADMIN,
    admin_headers,
    assert_error,
    auth,
    querylift_settings,
    server_env,
)
from tests.live import ServerProcess as Server
from tests.live import serve_processes

TEXTS = ["what causes malaria", "the heart of mice"]
READY_TIMEOUT_S = 90.0
SLACK_S = 4.0  # process teardown and scheduling on 2 shared cores


def assert_shutting_down(r: httpx.Response | Any) -> None:
    assert_error(r, 503, "shutting_down")


# -- the drain flag in-process ------------------------------------------------------------------
def test_draining_refuses_new_work_but_answers_health_and_metrics(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(admin_token=SecretStr(ADMIN))
    assert client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).status_code == 200
    client.app.state.drain.begin()
    for path, body in (("/embed", {"input": TEXTS}), ("/search", {"query": "malaria"})):
        r = client.post(path, json=body, headers=auth("acme"))
        assert_shutting_down(r)
        assert r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["shutdown"] == "draining"
    ready = client.get("/readyz", headers=admin_headers())  # the operator's detail
    assert ready.status_code == 503
    assert ready.json()["checks"]["shutdown"].startswith("in progress")
    assert client.get("/metrics").status_code == 200


def test_requests_still_waiting_at_the_grace_cutoff_get_503(
    make_app: Callable[..., FastAPI], adapters_bound: dict[str, str]
) -> None:
    grace = 1.0
    app = make_app(batch_max_wait_ms=20_000.0, shutdown_grace_s=grace)
    with TestClient(app, raise_server_exceptions=False) as c:
        out: dict[str, Any] = {}

        def call() -> None:
            out["r"] = c.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
            out["t"] = time.monotonic()

        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while app.state.batcher.queued_texts < len(TEXTS) and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        app.state.drain.begin()
        t.join(grace + SLACK_S)
        assert_shutting_down(out["r"])
        assert cutoff_s(grace) * 0.9 <= out["t"] - t0 < grace  # before uvicorn would cancel it


# -- a real process -----------------------------------------------------------------------------
@pytest.fixture
def start_server(
    tmp_path: Path, query_spec: EncoderSpec, doc_spec: EncoderSpec, tenants_file: Path
) -> Iterator[Any]:
    """`start_server(shutdown_grace_s="2", ...)`: `querylift serve` with these settings added."""
    with serve_processes(tmp_path, READY_TIMEOUT_S) as start_env:

        def start(**extra: str) -> Server:
            settings = querylift_settings(
                log_level="info",
                tenants_file=tenants_file,
                adapter_store=tmp_path / "store",
                qdrant_path=tmp_path / "qdrant",
                **extra,
            )
            return start_env(server_env(query_spec, doc_spec, **settings))

        yield start


def queued_texts(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("querylift_queue_depth "):
            return float(line.split()[1])
    return 0.0


def wait_queued(url: str, n: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while queued_texts(url) < n:
        assert time.monotonic() < deadline, f"fewer than {n} texts queued after {timeout_s}s"
        time.sleep(0.05)


@dataclass
class Outcome:
    sent: float
    done: float
    status: int | None  # None: no HTTP answer (connection refused or closed)
    code: str | None
    error: str | None = None


def post_embed(url: str, client: httpx.Client | None = None) -> Outcome:
    sent = time.monotonic()
    try:
        if client is None:
            r = httpx.post(f"{url}/embed", json={"input": TEXTS}, headers=auth("acme"), timeout=30)
        else:
            r = client.post(f"{url}/embed", json={"input": TEXTS}, headers=auth("acme"))
    except httpx.TransportError as e:
        return Outcome(sent, time.monotonic(), None, None, type(e).__name__)
    code = r.json()["error"]["code"] if r.status_code != 200 else None
    if r.status_code == 503:
        assert_shutting_down(r)
    return Outcome(sent, time.monotonic(), r.status_code, code)


def test_sigterm_under_load_finishes_in_flight_refuses_new_and_exits_in_time(
    start_server: Any,
) -> None:
    grace = 10.0
    wait_ms = 2500  # every request waits this long in the batcher: reliably in flight
    server: Server = start_server(shutdown_grace_s=str(grace), batch_max_wait_ms=str(wait_ms))
    url = server.url
    keep_alive = httpx.Client(timeout=30)
    assert keep_alive.get(f"{url}/healthz").status_code == 200  # an open, idle connection

    in_flight: list[Outcome] = []
    stream: list[Outcome] = []
    stop = threading.Event()

    def steady() -> None:  # a new request every 100 ms, each on its own connection
        while not stop.is_set():
            threading.Thread(target=lambda: stream.append(post_embed(url))).start()
            time.sleep(0.1)

    workers = [threading.Thread(target=lambda: in_flight.append(post_embed(url))) for _ in range(4)]
    for w in workers:
        w.start()
    wait_queued(url, 4 * len(TEXTS))
    feeder = threading.Thread(target=steady)
    feeder.start()
    time.sleep(0.5)

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    after = [post_embed(url), post_embed(url, keep_alive)]  # a new connection, a kept one
    time.sleep(0.5)
    stop.set()
    feeder.join()
    try:
        server.proc.wait(grace + SLACK_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace + SLACK_S}s after SIGTERM:\n{server.log()}")
    exited = time.monotonic() - signalled
    for w in workers:
        w.join(5)
    time.sleep(0.2)  # the stream's last threads
    keep_alive.close()

    log = server.log()
    assert server.proc.returncode in (0, -signal.SIGTERM), log
    assert exited < wait_ms / 1e3 + SLACK_S, f"exit took {exited:.1f}s"
    assert "draining" in log
    # in flight when the signal came: all finished normally
    assert len(in_flight) == 4 and all(o.status == 200 for o in in_flight), in_flight
    # the stream: before the signal 200 (they were in flight too); after it, never 200
    for o in stream + after:
        assert o.status in (200, 503, None), o
        if o.sent > signalled + 0.3:
            assert o.status != 200, o
        if o.done < signalled - 0.05 or o.sent < signalled - 0.3:
            assert o.status == 200, o
    assert all(o.status != 200 for o in after), after
    assert any(o.status == 200 for o in stream)


def test_sigterm_past_the_grace_answers_waiting_requests_503_and_exits(
    start_server: Any,
) -> None:
    grace = 2.0
    server: Server = start_server(
        shutdown_grace_s=str(grace), batch_max_wait_ms="60000", request_timeout_s="120"
    )
    waiting: list[Outcome] = []
    workers = [
        threading.Thread(target=lambda: waiting.append(post_embed(server.url))) for _ in range(3)
    ]
    for w in workers:
        w.start()
    wait_queued(server.url, 3 * len(TEXTS))
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(grace + SLACK_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace + SLACK_S}s after SIGTERM:\n{server.log()}")
    exited = time.monotonic() - signalled
    for w in workers:
        w.join(5)
    assert exited < grace + SLACK_S
    assert [o.status for o in waiting] == [503, 503, 503], waiting
    assert all(o.code == "shutting_down" for o in waiting)
    assert all(o.done - signalled < grace for o in waiting)  # answered, not cut off
