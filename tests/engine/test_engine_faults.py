"""Faults with the real engine: its core process killed under load, SIGTERM of the service,
and a request timeout that must abort the engine's requests.

The process tests run `querylift serve` with `QUERYLIFT_QUERY_ENCODER__BACKEND=vllm` on the
test model, each with an engine of its own (these tests break or stop it).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from adapters.folder import FolderStore
from encoders import Encoder, EncoderSpec
from encoders.engine_errors import EncoderTimeout
from encoders.vllm_backend import VLLMEncoder
from tests.conftest import (
    ADMIN,
    admin_headers,
    fake_encoder,
    make_linear,
    querylift_settings,
    server_env,
)
from tests.engine.conftest import ENGINE_READY_S, engine_spec
from tests.live import ServerProcess, kill, serve_processes

TEXTS = ["what causes malaria", "the heart of mice"]
REQUEST_TIMEOUT_S = 10.0  # the encoder's own deadline in the served process
SLACK_S = 10.0  # 2 shared cores, an engine tearing down


def tree(server: ServerProcess) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children(recursive=True)


def engine_core(server: ServerProcess) -> psutil.Process:
    for p in tree(server):
        try:
            if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline()):
                return p
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no EngineCore process under {server.proc.pid}: {tree(server)}")


def gone_within(procs: list[psutil.Process], seconds: float) -> None:
    """Every one of `procs` exits by itself within `seconds` (the engine's processes, the
    embedded Qdrant's process and its fork server): nothing is left behind."""
    deadline = time.monotonic() + seconds
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(procs) == [], [p.cmdline() for p in alive(procs)]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def start_server(
    tmp_path: Path, engine_model: Path, doc_spec: EncoderSpec, document_encoder: Encoder
) -> Iterator[Any]:
    """`querylift serve` on the engine; the dev tenant has an adapter, so queries use vLLM."""
    store = FolderStore(tmp_path / "store")
    spec = engine_spec(engine_model, timeout_s=REQUEST_TIMEOUT_S)
    adapter = store.put(*make_linear(fake_encoder(spec.name, 256), document_encoder, 3))
    store.activate("default", adapter.id)

    def stop(s: ServerProcess) -> None:
        """The server and every process under it (the engine's)."""
        procs = tree(s) if s.proc.poll() is None else []
        kill(s)
        for p in alive(procs):
            p.kill()

    with serve_processes(tmp_path, ENGINE_READY_S, stop) as start_env:

        def start(**extra: str) -> ServerProcess:
            settings = querylift_settings(
                query_encoder__backend="vllm",
                query_encoder__dtype="float32",
                query_encoder__timeout_s=REQUEST_TIMEOUT_S,
                adapter_store=store.root,
                admin_token=ADMIN,  # /readyz says why only to the admin
                qdrant_path=tmp_path / "qdrant",
                log_format="text",
                shutdown_grace_s=5,
                **extra,
            )
            return start_env(server_env(spec, doc_spec, **settings))

        yield start


_seq = iter(range(10**9))


def embed(client: httpx.Client) -> httpx.Response:
    """A text never sent before: the raw-vector cache must not answer for the engine."""
    n = next(_seq)
    return client.post("/embed", json={"input": [f"{t} {n}" for t in TEXTS]})


def test_killing_the_engine_core_under_load_gives_503s_and_readyz_says_why(
    start_server: Any,
) -> None:
    server = start_server()
    core = engine_core(server)
    outcomes: list[tuple[float, float, int | None, str | None, str | None]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S + SLACK_S) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = embed(c)
                    code = None if r.status_code == 200 else r.json()["error"]["code"]
                    row = (sent, time.monotonic(), r.status_code, code, None)
                except httpx.HTTPError as e:  # a hang shows up here as a read timeout
                    row = (sent, time.monotonic(), None, None, type(e).__name__)
                with lock:
                    outcomes.append(row)

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    time.sleep(2.0)  # steady load first
    killed_at = time.monotonic()
    core.kill()  # SIGKILL: no goodbye from the engine
    time.sleep(4.0)
    stop.set()
    for w in workers:
        w.join(REQUEST_TIMEOUT_S + SLACK_S + 5)
    assert not any(w.is_alive() for w in workers), "a request hung"

    before = [o for o in outcomes if o[1] < killed_at]
    after = [o for o in outcomes if o[0] > killed_at + 0.5]
    assert before and all(o[2] == 200 for o in before), before[:5]
    assert [o for o in outcomes if o[4] is not None] == [], "a request got no HTTP answer"
    # in flight at the kill or sent after it: 503 encoder_unavailable, never a 500 or a hang
    for sent, done, status, code, _ in outcomes:
        if done >= killed_at:
            assert (status, code) in {(200, None), (503, "encoder_unavailable")}, (status, code)
            assert done - sent < REQUEST_TIMEOUT_S + SLACK_S
    assert after and all(o[2] == 503 for o in after), after[:5]

    ready = httpx.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["checks"]["encoders"] == "failing"  # the open answer: a state
    ready = httpx.get(f"{server.url}/readyz", headers=admin_headers(), timeout=5)
    assert ready.status_code == 503
    why = ready.json()["checks"]["encoders"]
    assert why.startswith("not ready: tiny-qwen3-engine (") and "dead" in why.lower(), why
    # new requests after the fact still answer at once
    t0 = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as c:
        r = embed(c)
    assert r.status_code == 503 and r.json()["error"]["code"] == "encoder_unavailable"
    assert time.monotonic() - t0 < 2.0
    # and SIGTERM still leaves nothing behind
    procs = tree(server)
    server.proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal it caught once it has shut down: -SIGTERM is a clean exit
    assert server.proc.wait(5 + SLACK_S) in (0, -signal.SIGTERM), server.log()
    gone_within(procs, 5 + SLACK_S)


def test_sigterm_of_the_service_leaves_no_engine_process(start_server: Any) -> None:
    server = start_server()
    procs = tree(server)
    core = engine_core(server)
    assert core in procs
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert embed(c).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(5 + SLACK_S) in (0, -signal.SIGTERM), server.log()
    gone_within(procs, SLACK_S)


def test_a_request_timeout_aborts_its_engine_requests(vllm_encoder: Encoder) -> None:
    assert isinstance(vllm_encoder, VLLMEncoder)
    long = " ".join(["cancer cells increase the risk of disease"] * 6)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            n = vllm_encoder.unfinished_requests()
            if n:
                seen.append(n)
            time.sleep(0.001)

    # one request first: the engine's first one pays its lazy set-up, which on a loaded
    # machine outlasts the 50 ms below before any request is counted
    vllm_encoder.encode(TEXTS, "query")
    watcher = threading.Thread(target=watch)
    watcher.start()
    saved = vllm_encoder.request_timeout_s
    vllm_encoder.request_timeout_s = 0.05
    try:
        with pytest.raises(EncoderTimeout):
            vllm_encoder.encode([f"{long} {i}" for i in range(256)], "query")
    finally:
        vllm_encoder.request_timeout_s = saved
        done.set()
        watcher.join()
    assert seen and max(seen) > 0  # the requests had reached the engine
    deadline = time.monotonic() + 5
    while vllm_encoder.unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vllm_encoder.unfinished_requests() == 0
    # and the engine serves the next request normally
    assert vllm_encoder.encode(TEXTS, "query").vectors.shape == (2, 256)
