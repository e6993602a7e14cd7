"""Adapter loads never run on the event loop, and run once per adapter however many miss it
(service/bindings/adapter_cache.py, bindings.py): issue 23, acceptance 5."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.bindings.bindings
from adapters import Adapter, CheckpointError, Manifest
from adapters.checkpoint import serialize
from adapters.folder import FolderStore
from adapters.store import AdapterStore
from encoders import Encoder
from service.bindings.adapter_cache import AdapterCache
from service.ops.metrics import Metrics
from tests.conftest import auth, embeddings, make_linear

WAIT_S = 30.0  # generous: only a broken build waits this long


class GatedStore:
    """The store, with loads counted and held until `release` is set (a slow disk, made
    deterministic): each load records the thread it ran on."""

    def __init__(self, store: AdapterStore, fail: int = 0) -> None:
        self.store = store
        self.fail = fail  # the first `fail` loads raise CheckpointError
        self.loads = 0
        self.threads: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def get(self, adapter_id: str) -> Adapter:
        self.loads += 1
        self.threads.append(threading.get_ident())
        self.started.set()
        self.release.wait(WAIT_S)
        if self.loads <= self.fail:
            raise CheckpointError([f"adapter {adapter_id}: damaged (a test's)"])
        return self.store.get(adapter_id)


def healthz(client: TestClient) -> float:
    """Seconds for one /healthz answer (the client waits in this thread, the app on its loop)."""
    t0 = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    return time.perf_counter() - t0


@dataclass
class Misses:
    """The callers that reached `AdapterCache.get_async` (a miss: hits never do), and the
    threads they called from; `all_in` is set once `expect` have."""

    expect: int
    n: int = 0
    all_in: threading.Event = field(default_factory=threading.Event)
    loop_threads: set[int] = field(default_factory=set)

    def watch(self, cache: AdapterCache, monkeypatch: pytest.MonkeyPatch) -> Misses:
        real = cache.get_async

        async def counted(adapter_id: str) -> Adapter:
            self.n += 1
            self.loop_threads.add(threading.get_ident())
            if self.n >= self.expect:
                self.all_in.set()
            return await real(adapter_id)

        monkeypatch.setattr(cache, "get_async", counted)
        return self


def test_32_requests_missing_one_adapter_load_it_once_off_the_loop(
    make_client: Callable[..., TestClient],
    adapters_bound: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every request encodes (a real batch each); no warm-up competing for the CPU
    client = make_client(query_cache_size=0, warmup=False)
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    adapter_id = adapters_bound["acme"]
    texts = [f"malaria mosquito question {i}" for i in range(32)]

    def post(text: str) -> Any:
        return client.post("/embed", json={"input": text}, headers=auth("acme"))

    expected = {t: embeddings(post(t).json()) for t in texts}  # while it is resident
    healthz(client)  # its first call's costs paid here, not during the load
    runtime.adapters.discard(adapter_id)  # evicted: the next request misses
    gated = GatedStore(runtime.adapters.store)
    monkeypatch.setattr(runtime.adapters, "store", gated)
    misses = Misses(expect=len(texts)).watch(runtime.adapters, monkeypatch)

    with ThreadPoolExecutor(len(texts)) as pool:
        answers = [pool.submit(post, t) for t in texts]
        try:
            assert gated.started.wait(WAIT_S) and misses.all_in.wait(WAIT_S)
            # every request waits on the one load, which holds: the loop still answers
            probes = [healthz(client) for _ in range(5)]
        finally:
            gated.release.set()
        results = [a.result(WAIT_S) for a in answers]

    assert gated.loads == 1 and misses.n == len(texts)
    assert gated.threads[0] not in misses.loop_threads  # the load ran in a worker thread
    # acceptance 5: /healthz answers within 50 ms during the load (the median of 5 probes,
    # each well under the load's hold: a scheduler hiccup of the shared CI box is not a stall)
    assert sorted(probes)[2] < 0.050 and max(probes) < 0.5, probes
    for text, r in zip(texts, results, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["adapter"]["id"] == adapter_id
        np.testing.assert_allclose(embeddings(body), expected[text], atol=1e-5)
    assert adapter_id in runtime.adapters  # kept: the next request is a hit
    assert post(texts[0]).status_code == 200 and gated.loads == 1


# -- the cache's single flight -------------------------------------------------------------------
@pytest.fixture
def one_adapter(
    tmp_path: Any, query_encoder: Encoder, document_encoder: Encoder
) -> tuple[FolderStore, str]:
    store = FolderStore(tmp_path / "s")
    return store, store.put(*make_linear(query_encoder, document_encoder, 3)).id


def test_a_failed_load_answers_every_waiter_and_is_not_kept(
    one_adapter: tuple[AdapterStore, str],
) -> None:
    store, adapter_id = one_adapter
    gated = GatedStore(store, fail=1)
    cache = AdapterCache(gated, budget_bytes=1 << 30, metrics=Metrics())  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        waiters = [asyncio.ensure_future(cache.get_async(adapter_id)) for _ in range(8)]
        await asyncio.to_thread(gated.started.wait, WAIT_S)
        gated.release.set()
        return await asyncio.gather(*waiters, return_exceptions=True)

    failed = asyncio.run(scenario())
    assert gated.loads == 1
    assert all(isinstance(e, CheckpointError) for e in failed), failed
    assert adapter_id not in cache
    # the failure was not cached: the next miss loads again, and this time it is kept
    assert asyncio.run(cache.get_async(adapter_id)).id == adapter_id
    assert gated.loads == 2 and adapter_id in cache


def gated_cache(store: AdapterStore) -> tuple[GatedStore, AdapterCache]:
    """A cache over a store whose loads wait for `release`: a load held open on purpose."""
    gated = GatedStore(store)
    return gated, AdapterCache(gated, budget_bytes=1 << 30, metrics=Metrics())  # type: ignore[arg-type]


def test_thread_and_loop_callers_share_one_load(one_adapter: tuple[AdapterStore, str]) -> None:
    store, adapter_id = one_adapter
    gated, cache = gated_cache(store)

    async def scenario() -> tuple[Adapter, Adapter]:
        on_loop = asyncio.ensure_future(cache.get_async(adapter_id))
        await asyncio.to_thread(gated.started.wait, WAIT_S)
        in_thread = asyncio.ensure_future(asyncio.to_thread(cache.get, adapter_id))
        await asyncio.sleep(0.05)  # the thread caller joins the load in flight
        gated.release.set()
        return await on_loop, await in_thread

    a, b = asyncio.run(scenario())
    assert a is b and gated.loads == 1


def test_a_waiter_that_goes_away_does_not_cancel_the_load(
    one_adapter: tuple[AdapterStore, str],
) -> None:
    store, adapter_id = one_adapter
    gated, cache = gated_cache(store)

    async def scenario() -> Adapter:
        first = asyncio.ensure_future(cache.get_async(adapter_id))
        await asyncio.to_thread(gated.started.wait, WAIT_S)
        second = asyncio.ensure_future(cache.get_async(adapter_id))
        await asyncio.sleep(0)
        first.cancel()  # the client that started the load disconnected
        gated.release.set()
        return await second

    assert asyncio.run(scenario()).id == adapter_id
    assert gated.loads == 1 and adapter_id in cache


def test_an_adapter_discarded_while_it_loads_is_not_kept(
    one_adapter: tuple[AdapterStore, str],
) -> None:
    store, adapter_id = one_adapter
    gated, cache = gated_cache(store)

    async def scenario() -> Adapter:
        waiter = asyncio.ensure_future(cache.get_async(adapter_id))
        await asyncio.to_thread(gated.started.wait, WAIT_S)
        cache.discard(adapter_id)  # deleted by the admin meanwhile
        gated.release.set()
        return await waiter

    assert asyncio.run(scenario()).id == adapter_id  # its waiter is answered
    assert adapter_id not in cache


# -- bindings: loaded and checked before they are swapped in ---------------------------------------
def test_an_activated_adapter_is_loaded_and_applied_before_it_serves(
    client: TestClient,
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    applied: list[tuple[str, bool]] = []
    real = service.bindings.bindings.check_finite_output

    def record(adapter: Adapter) -> None:
        # not yet what acme is served: the load and the apply come first
        applied.append((adapter.id, runtime.binding("acme").adapter_id == adapter.id))
        real(adapter)

    monkeypatch.setattr(service.bindings.bindings, "check_finite_output", record)
    new = store.put(*make_linear(query_encoder, document_encoder, 7))
    store.activate("acme", new.id)
    assert runtime.sync()
    assert applied == [(new.id, False)]
    assert runtime.binding("acme").adapter_id == new.id and new.id in runtime.adapters


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_an_adapter_whose_output_overflows_is_not_swapped_in(
    client: TestClient,
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    before = runtime.binding("acme")
    _, manifest = make_linear(query_encoder, document_encoder, 8)
    din, dout = query_encoder.dim, document_encoder.dim
    # finite tensors whose product is not: sums of 3e38 overflow float32
    tensors = {
        "weight": np.full((dout, din), 3e38, dtype=np.float32),
        "bias": np.zeros(dout, dtype=np.float32),
    }
    bad = store.put(*serialize(Manifest.model_validate_json(manifest), tensors))
    store.activate("acme", bad.id)
    assert runtime.sync()
    assert runtime.binding("acme") == before  # kept what it had
