"""The dynamic batcher: merging, backpressure (429), deadlines (504), failures, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.engine.batcher import Batcher
from service.engine.embedding import EmbedOutcome, Prepared
from service.engine.errors import ServiceError
from service.http.errors import APIError, service_error_response, status_of
from service.ops.metrics import Metrics
from tests.conftest import auth, sample


class Blocker:
    """Wraps Runtime.run_prepared: records each batch, holds the first until released."""

    def __init__(self, real: Callable[[list[Prepared]], list]) -> None:
        self.real = real
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[tuple[str, tuple[str, ...]]]] = []

    def __call__(self, items: list[Prepared]) -> list:
        self.calls.append([(p.item.tenant, tuple(p.item.texts)) for p in items])
        self.entered.set()
        assert self.release.wait(30)
        return self.real(items)

    def texts_run(self) -> set[str]:
        return {t for call in self.calls for _, texts in call for t in texts}


def wait_until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def block(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Blocker:
    rt = client.app.state.runtime
    blocker = Blocker(rt.run_prepared)
    monkeypatch.setattr(rt, "run_prepared", blocker)
    return blocker


def post_in_thread(client: TestClient, body: dict, tenant: str, out: dict, key: object):
    def run() -> None:
        out[key] = client.post("/embed", json=body, headers=auth(tenant))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_concurrent_requests_of_several_tenants_are_merged(client, monkeypatch):
    blocker = block(client, monkeypatch)
    tenants = ("acme", "globex", "initech")
    bodies = []
    for i in range(12):
        body: dict = {"input": [f"what causes malaria {i}", "the heart"][: 1 + i % 2]}
        if i % 4 == 3:
            body["input_type"] = "document"
        bodies.append((tenants[i % 3], body))
    results: dict = {}
    threads = [post_in_thread(client, bodies[0][1], bodies[0][0], results, 0)]
    assert blocker.entered.wait(30)  # the first request's batch is running (held)
    for i in range(1, 12):
        threads.append(post_in_thread(client, bodies[i][1], bodies[i][0], results, i))
    waiting = sum(len(b["input"]) for _, b in bodies[1:])
    wait_until(lambda: sample(client, "querylift_queue_depth") == waiting)
    blocker.release.set()
    for t in threads:
        t.join(60)
    assert all(results[i].status_code == 200 for i in range(12)), [
        r.text for r in results.values() if r.status_code != 200
    ]
    # 12 requests, 2 batches: the held one, then the 11 that queued behind it
    assert sample(client, "querylift_batch_requests_sum") == 12
    assert sample(client, "querylift_batch_requests_count") == 2
    assert len(blocker.calls) == 2 and len(blocker.calls[1]) == 11
    assert sample(client, "querylift_batch_size_sum") == sum(len(b["input"]) for _, b in bodies)
    assert sample(client, "querylift_queue_depth") == 0
    assert sample(client, "querylift_queue_wait_seconds_count") == 12
    for i, (tenant, body) in enumerate(bodies):
        single = client.post("/embed", json=body, headers=auth(tenant))
        assert single.status_code == 200
        got = np.asarray([d["embedding"] for d in results[i].json()["data"]])
        want = np.asarray([d["embedding"] for d in single.json()["data"]])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert results[i].json()["adapter"] == single.json()["adapter"]
        assert "queue;dur=" in results[i].headers["server-timing"]


def test_full_queue_answers_429_at_once(make_client, monkeypatch):
    client = make_client(max_queue=1, batch_max_wait_ms=0.0)
    blocker = block(client, monkeypatch)
    results: dict = {}
    first = post_in_thread(client, {"input": "one"}, "acme", results, "first")
    assert blocker.entered.wait(30)
    second = post_in_thread(client, {"input": "two"}, "globex", results, "second")
    wait_until(lambda: sample(client, "querylift_queue_depth") == 1)
    start = time.monotonic()
    r = client.post("/embed", json={"input": "three"}, headers=auth("initech"))
    assert time.monotonic() - start < 10  # answered without waiting for the held batch
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "overloaded"
    assert r.headers["retry-after"] == "1"
    assert sample(client, "querylift_rejected_total", {"reason": "overloaded"}) == 1
    blocker.release.set()
    first.join(60)
    second.join(60)
    assert results["first"].status_code == 200 and results["second"].status_code == 200
    assert "three" not in blocker.texts_run()


def test_deadline_gives_504_and_the_item_never_runs(make_client, monkeypatch):
    client = make_client(request_timeout_s=1.0)
    blocker = block(client, monkeypatch)
    results: dict = {}
    held = post_in_thread(client, {"input": "held"}, "acme", results, "held")
    assert blocker.entered.wait(30)
    queued = post_in_thread(client, {"input": "queued"}, "globex", results, "queued")
    held.join(60)
    queued.join(60)
    for key in ("held", "queued"):
        assert results[key].status_code == 504, results[key].text
        assert results[key].json()["error"]["code"] == "timeout"
    assert sample(client, "querylift_rejected_total", {"reason": "timeout"}) == 2
    blocker.release.set()
    after = client.post("/embed", json={"input": "after"}, headers=auth("initech"))
    assert after.status_code == 200
    run = blocker.texts_run()
    assert "queued" not in run and "after" in run and "held" in run


def test_health_and_metrics_answer_while_a_batch_is_held(client, monkeypatch):
    blocker = block(client, monkeypatch)
    results: dict = {}
    t = post_in_thread(client, {"input": "slow"}, "acme", results, "slow")
    assert blocker.entered.wait(30)
    try:
        assert client.get("/healthz").status_code == 200
        m = client.get("/metrics")
        assert m.status_code == 200 and "querylift_queue_depth" in m.text
        assert "querylift_batch_requests" in m.text
    finally:
        blocker.release.set()
        t.join(60)
    assert results["slow"].status_code == 200


def test_batcher_survives_a_failing_batch(client, monkeypatch):
    rt = client.app.state.runtime
    real = rt.run_prepared
    failures = iter([RuntimeError("boom"), APIError(503, "encoder_unavailable", "down")])

    def flaky(items: list[Prepared]) -> list:
        err = next(failures, None)
        if err is not None:
            raise err
        return real(items)

    monkeypatch.setattr(rt, "run_prepared", flaky)
    r1 = client.post("/embed", json={"input": "a"}, headers=auth("acme"))
    assert r1.status_code == 503 and r1.json()["error"]["code"] == "batch_failed"
    r2 = client.post("/embed", json={"input": "b"}, headers=auth("acme"))
    assert r2.status_code == 503 and r2.json()["error"]["code"] == "encoder_unavailable"
    r3 = client.post("/embed", json={"input": "c"}, headers=auth("acme"))
    assert r3.status_code == 200
    assert client.app.state.batcher.running


def test_shutdown_cancels_the_task(make_client):
    client = make_client()
    batcher = client.app.state.batcher
    task = batcher._task
    assert batcher.running and task is not None
    assert client.post("/embed", json={"input": "x"}, headers=auth("acme")).status_code == 200
    client.__exit__(None, None, None)
    assert task.cancelled()
    assert not batcher.running and client.app.state.batcher is None


# -- the Batcher on its own (a fake runtime) ----------------------------------------------------
@dataclass
class FakePrep:
    """What the batcher reads of a prepared request: rows to encode and their tokens."""

    tenant: str
    texts: list[str]
    tokens_each: int = 1

    @property
    def misses(self) -> int:
        return len(self.texts)

    @property
    def miss_tokens(self) -> int:
        return self.tokens_each * len(self.texts)


class FakeRuntime:
    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[list[FakePrep]] = []
        self.hold = hold

    def run_prepared(self, items: list[FakePrep]) -> list:
        self.batches.append(items)
        if self.hold is not None:
            self.hold.wait(30)
        return [
            EmbedOutcome(np.zeros((len(i.texts), 2), np.float32), [1] * len(i.texts), "m", None)
            for i in items
        ]


def make_batcher(rt: FakeRuntime, **kw: object) -> Batcher:
    opts: dict = {
        "max_items": 64,
        "max_tokens": 16384,
        "max_wait_ms": 20.0,
        "max_queue": 1024,
        "metrics": Metrics(),
    }
    opts.update(kw)
    return Batcher(rt, **opts)  # type: ignore[arg-type]


def test_batches_are_cut_by_items_and_tokens():
    rt = FakeRuntime()

    async def main() -> None:
        b = make_batcher(rt, max_items=4, max_wait_ms=50.0)
        b.start()
        items = [FakePrep(f"t{i}", ["x", "y"]) for i in range(5)]
        outs = await asyncio.gather(*(b.submit(i, 30) for i in items))  # type: ignore[arg-type]
        assert all(o.vectors.shape == (2, 2) for o in outs)
        await b.stop()

    asyncio.run(main())
    assert all(sum(len(i.texts) for i in batch) <= 4 for batch in rt.batches)
    assert sum(len(batch) for batch in rt.batches) == 5

    rt = FakeRuntime()
    long = FakePrep("t", ["w" * 400], tokens_each=102)  # batches are cut by the admitted counts

    async def by_tokens() -> None:
        b = make_batcher(rt, max_tokens=250, max_wait_ms=50.0)
        b.start()
        await asyncio.gather(*(b.submit(long, 30) for _ in range(4)))  # type: ignore[arg-type]
        await b.stop()

    asyncio.run(by_tokens())
    assert [len(batch) for batch in rt.batches] == [2, 2]


def test_stop_answers_queued_requests_503():
    hold = threading.Event()
    rt = FakeRuntime(hold)

    async def main() -> None:
        b = make_batcher(rt, max_wait_ms=0.0)
        b.start()
        running = asyncio.create_task(b.submit(FakePrep("a", ["1"]), 30))  # type: ignore[arg-type]
        while not rt.batches:
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(b.submit(FakePrep("b", ["2"]), 30))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        await b.stop()
        for t in (running, queued):
            with pytest.raises(ServiceError) as e:
                await t
            assert status_of(e.value) == 503
        hold.set()
        with pytest.raises(ServiceError) as e:  # no longer accepting work
            await b.submit(FakePrep("c", ["3"]), 30)  # type: ignore[arg-type]
        assert status_of(e.value) == 503

    asyncio.run(main())
    assert len(rt.batches) == 1


def test_a_request_whose_estimated_wait_is_too_long_gets_a_fast_429():
    hold = threading.Event()
    rt = FakeRuntime(hold)

    async def main() -> None:
        b = make_batcher(rt, max_wait_ms=0.0, max_queue_wait_ms=100.0)
        b.start()
        # never refused while idle, even before any batch has been timed
        b.check_admission(10_000)
        running = asyncio.create_task(b.submit(FakePrep("a", ["1"], tokens_each=5), 30))  # type: ignore[arg-type]
        while not rt.batches:
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(b.submit(FakePrep("b", ["2"], tokens_each=4), 30))  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        b.cost.set(per_batch=0.0, per_token=0.02)  # as if timed by now: 20 ms a token
        # the held batch's rest (at most 5 x 20 ms) + 4 queued tokens (80 ms)
        assert 0.08 <= b.estimated_wait_s() <= 0.18
        start = time.monotonic()
        with pytest.raises(ServiceError) as e:
            await b.submit(FakePrep("c", ["3"], tokens_each=6), 30)  # type: ignore[arg-type]
        assert time.monotonic() - start < 0.05
        assert status_of(e.value) == 429 and e.value.code == "overloaded"
        assert e.value.details["estimated_wait_ms"] > 40
        assert int(service_error_response(e.value).headers["retry-after"]) >= 1
        hold.set()
        await asyncio.gather(running, queued)
        assert b.estimated_wait_s() == 0.0  # drained: admitted again
        await b.submit(FakePrep("d", ["4"], tokens_each=6), 30)  # type: ignore[arg-type]
        await b.stop()

    asyncio.run(main())
    assert [t for batch in rt.batches for p in batch for t in p.texts] == ["1", "2", "4"]


class ConcurrentRuntime(FakeRuntime):
    """Each batch holds its worker until released; records how many ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.release = threading.Event()

    def run_prepared(self, items: list[FakePrep]) -> list:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            assert self.release.wait(30)
            return super().run_prepared(items)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bounds_the_batches_in_flight(concurrency: int):
    rt = ConcurrentRuntime()

    async def main() -> None:
        b = make_batcher(rt, concurrency=concurrency, max_items=1, max_wait_ms=0.0)
        b.start()
        tasks = [
            asyncio.create_task(b.submit(FakePrep(f"t{i}", ["x"]), 30))  # type: ignore[arg-type]
            for i in range(6)
        ]
        deadline = time.monotonic() + 10
        while rt.running < concurrency and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a worker too many would have started by now
        assert rt.running == concurrency
        assert b.queued_texts == 6 - concurrency  # the rest wait for a free worker
        rt.release.set()
        outs = await asyncio.gather(*tasks)
        assert len(outs) == 6
        await b.stop()

    asyncio.run(main())
    assert rt.peak == concurrency
    assert sorted(len(batch) for batch in rt.batches) == [1] * 6


def test_stop_answers_the_requests_of_every_batch_in_flight_503():
    rt = ConcurrentRuntime()

    async def main() -> None:
        b = make_batcher(rt, concurrency=2, max_items=1, max_wait_ms=0.0)
        b.start()
        tasks = [
            asyncio.create_task(b.submit(FakePrep(f"t{i}", ["x"]), 30))  # type: ignore[arg-type]
            for i in range(3)
        ]
        deadline = time.monotonic() + 10
        while rt.running < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await b.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        rt.release.set()
        codes = [r.code for r in results if isinstance(r, ServiceError)]
        assert codes == ["shutting_down"] * 3, results

    asyncio.run(main())


def test_the_query_encoder_sets_the_default_concurrency(make_client):
    assert make_client().app.state.batcher.concurrency == 1  # transformers: one forward
    assert make_client(batch_concurrency=3).app.state.batcher.concurrency == 3
