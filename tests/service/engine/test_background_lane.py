"""The batcher's background lane (issue 23): admin work runs on the batcher's worker, in small
chunks, only while no live request waits, and never on an admin thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.engine.background import BackgroundLane
from service.engine.embedding import EmbedItem
from service.engine.errors import ServiceError
from tests.conftest import auth, sample
from tests.service.engine.test_batcher import block, post_in_thread, wait_until


def lane_of(client: TestClient, max_tokens: int = 256) -> BackgroundLane:
    app = client.app
    return BackgroundLane(app.state.batcher, app.state.runtime, max_tokens)  # type: ignore[attr-defined]


def test_a_background_chunk_waits_for_live_work_and_runs_on_the_batch_worker(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    batcher = client.app.state.batcher  # type: ignore[attr-defined]
    chunks = sample(client, "querylift_background_chunk_seconds_count")  # the warm-up's
    blocker = block(client, monkeypatch)
    results: dict = {}
    first = post_in_thread(client, {"input": "live one"}, "acme", results, 1)
    assert blocker.entered.wait(30)  # a live batch is running (held)
    order: list[str] = []
    job = batcher.background(lambda: order.append(threading.current_thread().name) or "done")
    second = post_in_thread(client, {"input": "live two"}, "globex", results, 2)
    wait_until(lambda: sample(client, "querylift_queue_depth") == 1)
    assert not job.done()  # a live batch runs and a live request waits: background waits
    blocker.release.set()
    for t in (first, second):
        t.join(30)
    assert job.result(30) == "done"
    assert results[1].status_code == results[2].status_code == 200
    # the live request queued behind the running batch went before the background chunk
    assert [t for call in blocker.calls for _, texts in call for t in texts] == [
        "live one",
        "live two",
    ]
    assert order and order[0].startswith("querylift-batch")
    assert sample(client, "querylift_background_chunk_seconds_count") == chunks + 1


def test_a_background_error_reaches_its_caller_and_the_lane_goes_on(client: TestClient):
    batcher = client.app.state.batcher  # type: ignore[attr-defined]

    def boom() -> None:
        raise ValueError("broken chunk")

    with pytest.raises(ValueError, match="broken chunk"):
        batcher.background(boom).result(30)
    assert batcher.background(lambda: 7).result(30) == 7
    r = client.post("/embed", json={"input": "after"}, headers=auth("acme"))
    assert r.status_code == 200


def test_the_lane_answers_what_the_runtime_answers_in_chunks_of_its_budget(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, query_encoder
):
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    texts = [f"query number {i} about " + "malaria " * (i % 7) for i in range(40)]
    item = EmbedItem("acme", texts, "query", truncate=True)
    expected = runtime.embed("acme", texts, "query", truncate=True)
    runtime.query_cache.clear()
    batches: list[int] = []
    real = runtime.run_prepared

    def spy(preps):  # every background chunk is one run_prepared of one request
        batches.append(
            sum(
                min(c, p.encoder.max_tokens)
                for p in preps[0].parts.values()
                for c in p.tokens.counts
            )
        )
        return real(preps)

    monkeypatch.setattr(runtime, "run_prepared", spy)
    out = lane_of(client, max_tokens=64).embed(item)
    np.testing.assert_allclose(out.vectors, expected.vectors, atol=1e-5)
    assert out.token_counts == expected.token_counts
    assert len(batches) > 2 and max(batches) <= 64
    raw = lane_of(client, max_tokens=64).encode(query_encoder, texts, "document")
    np.testing.assert_allclose(raw, query_encoder.encode(texts, "document").vectors, atol=1e-5)


def test_a_gate_never_calls_an_encoder_from_an_admin_thread(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, query_encoder, document_encoder
):
    """Every encoder call a lane makes runs on the batcher's worker, never the calling thread
    (which in the service is an admin route's worker thread)."""
    seen: list[str] = []
    for enc in {id(query_encoder): query_encoder, id(document_encoder): document_encoder}.values():
        for name in ("tokenize", "encode", "encode_tokenized", "count_tokens"):
            real = getattr(enc, name)

            def spy(*a, _real=real, **k):
                seen.append(threading.current_thread().name)
                return _real(*a, **k)

            monkeypatch.setattr(enc, name, spy)
    lane = lane_of(client)
    caller = "admin-thread-under-test"
    done: dict = {}

    def admin() -> None:
        item = EmbedItem("acme", ["one query", "another query"], "query", truncate=True)
        done["embed"] = lane.embed(item)
        done["raw"] = lane.encode(query_encoder, ["a passage"], "document")

    t = threading.Thread(target=admin, name=caller)
    t.start()
    t.join(60)
    assert "embed" in done and "raw" in done
    assert seen and all(name.startswith("querylift-batch") for name in seen), seen


def test_stop_fails_the_waiting_background_chunks(make_app, adapters_bound):
    client = TestClient(make_app())
    client.__enter__()
    gate = threading.Event()
    try:
        batcher = client.app.state.batcher  # type: ignore[attr-defined]
        running = batcher.background(gate.wait)  # holds the worker
        waiting = batcher.background(lambda: "never")
    finally:
        client.__exit__(None, None, None)  # the lifespan's end: batcher.stop()
        gate.set()
    with pytest.raises(ServiceError, match="shutting down"):
        waiting.result(30)
    assert running.done()


def test_a_chunk_waiting_behind_live_work_still_runs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    """Live work queued whenever the worker frees up: the chunk still runs (the overdue rule
    lets it go before the queue once it has waited BACKGROUND_MAX_WAIT_S)."""
    import service.engine.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "BACKGROUND_MAX_WAIT_S", 0.2)
    batcher = client.app.state.batcher  # type: ignore[attr-defined]
    blocker = block(client, monkeypatch)
    results: dict = {}
    threads = [post_in_thread(client, {"input": "live 0"}, "acme", results, 0)]
    assert blocker.entered.wait(30)
    job = batcher.background(lambda: "ran")
    threads.append(post_in_thread(client, {"input": "live 1"}, "globex", results, 1))
    wait_until(lambda: sample(client, "querylift_queue_depth") == 1)
    blocker.release.set()  # live work is queued whenever the worker frees up
    assert job.result(30) == "ran"
    for t in threads:
        t.join(30)
    assert results[0].status_code == results[1].status_code == 200


def test_a_live_request_that_comes_back_within_the_grace_goes_before_the_chunk(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    """A closed-loop client sends its next request moments after an answer: the worker is not
    idle yet, so a waiting chunk lets that request go first (BACKGROUND_IDLE_GRACE_S)."""
    import service.engine.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "BACKGROUND_IDLE_GRACE_S", 0.5)
    batcher = client.app.state.batcher  # type: ignore[attr-defined]
    blocker = block(client, monkeypatch)
    results: dict = {}
    first = post_in_thread(client, {"input": "live one"}, "acme", results, 1)
    assert blocker.entered.wait(30)
    job = batcher.background(lambda: len(blocker.calls))  # live batches run before it
    blocker.release.set()
    first.join(30)
    again = client.post("/embed", json={"input": "live again"}, headers=auth("acme"))
    assert results[1].status_code == again.status_code == 200
    assert job.result(30) == 2  # both live batches ran before the chunk
