"""The request path of issue 6: tokenised once, the raw query-vector cache, truncation
reported in `usage`, disconnected clients dropped, and the document-encoder fallback."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from adapters.store import AdapterStore
from service.engine.embedding import Prepared
from tests.conftest import KEYS, auth, embeddings, make_linear, sample
from tests.live import serve

QUERY = "what causes malaria in children"


def embed(client: TestClient, tenant: str, **body: Any) -> Any:
    return client.post("/embed", json=body, headers=auth(tenant))


# -- the raw query-vector cache -----------------------------------------------------------------
def test_a_repeated_query_is_answered_from_the_cache(client: TestClient):
    first = embed(client, "acme", input=QUERY)
    assert first.status_code == 200
    assert first.headers["x-query-cache"] == "miss"
    passes = sample(
        client, "querylift_encoder_batch_size_count", {"encoder": "tiny-qwen3", "kind": "query"}
    )
    second = embed(client, "acme", input=QUERY)
    assert second.status_code == 200
    assert second.headers["x-query-cache"] == "hit"
    assert 'cache;desc="hit"' in second.headers["server-timing"]
    np.testing.assert_array_equal(embeddings(first.json()), embeddings(second.json()))
    assert second.json()["usage"] == first.json()["usage"]
    # no encoder pass, no batch: the hit was adapted and answered at admission
    assert (
        sample(
            client, "querylift_encoder_batch_size_count", {"encoder": "tiny-qwen3", "kind": "query"}
        )
        == passes
    )
    assert sample(client, "querylift_query_cache_hits_total", {"encoder": "tiny-qwen3"}) == 1
    assert sample(client, "querylift_query_cache_misses_total", {"encoder": "tiny-qwen3"}) == 1
    assert sample(client, "querylift_query_cache_entries") == 1
    # a request mixing a cached and a new text is partial; documents never use the cache
    mixed = embed(client, "acme", input=[QUERY, "the heart pumps blood"])
    assert mixed.headers["x-query-cache"] == "partial"
    np.testing.assert_allclose(embeddings(mixed.json())[0], embeddings(first.json())[0], atol=1e-6)
    doc = embed(client, "acme", input=QUERY, input_type="document")
    assert "x-query-cache" not in doc.headers


def test_the_cache_is_keyed_by_prompt_and_instruction(client: TestClient):
    embed(client, "acme", input=QUERY)
    other = embed(client, "acme", input=QUERY, instruction="Find the paper")
    assert other.headers["x-query-cache"] == "miss"
    again = embed(client, "acme", input=QUERY)
    assert not np.allclose(embeddings(other.json()), embeddings(again.json()))


def test_an_adapter_swap_keeps_the_cache(
    client: TestClient, store: AdapterStore, query_encoder, document_encoder
):
    before = embed(client, "acme", input=QUERY)
    assert before.headers["x-query-cache"] == "miss"
    new = store.put(*make_linear(query_encoder, document_encoder, 7))
    store.activate("acme", new.id)
    client.app.state.runtime.sync()
    after = embed(client, "acme", input=QUERY)
    assert after.status_code == 200
    assert after.headers["x-query-cache"] == "hit"
    assert after.json()["adapter"] == {"id": new.id, "version": 2}
    # the hit went through the NEW adapter: exactly adapter(raw query vector)
    raw = query_encoder.encode([QUERY], "query").vectors
    np.testing.assert_allclose(embeddings(after.json()), new.apply(raw), atol=1e-6)
    assert not np.allclose(embeddings(after.json()), embeddings(before.json()))
    assert sample(client, "querylift_query_cache_entries") >= 1


def test_a_cache_of_size_zero_is_off(make_client):
    client = make_client(query_cache_size=0)
    for _ in range(2):
        r = embed(client, "acme", input=QUERY)
        assert r.headers["x-query-cache"] == "miss"
    assert sample(client, "querylift_query_cache_hits_total", {"encoder": "tiny-qwen3"}) == 0
    assert sample(client, "querylift_query_cache_entries") == 0


def test_the_cache_is_an_lru_of_its_size(make_client):
    client = make_client(query_cache_size=6)  # three tenants: two entries each
    for text in ("one query", "two query", "three query"):
        embed(client, "acme", input=text)
    assert sample(client, "querylift_query_cache_entries") == 2
    assert sample(client, "querylift_query_cache_evictions_total") == 1
    assert embed(client, "acme", input="three query").headers["x-query-cache"] == "hit"
    assert embed(client, "acme", input="one query").headers["x-query-cache"] == "miss"


# -- no tenant sees another's cache -------------------------------------------------------------
def query_passes(client: TestClient) -> float:
    return sample(
        client, "querylift_encoder_batch_size_count", {"encoder": "tiny-qwen3", "kind": "query"}
    )


def test_a_text_another_tenant_sent_is_a_miss_on_its_own_path(
    client: TestClient, store: AdapterStore, adapters_bound: dict[str, str], query_encoder
):
    """Issue 23: A sends a text, then B sends the same text. B sees a miss, its vector comes
    from its own encoder pass through its own adapter, so its timing is a miss's; A's repeat is
    a hit."""
    secret = "acquisition of Initech by Globex"
    first = embed(client, "acme", input=secret)
    assert first.headers["x-query-cache"] == "miss"
    passes = query_passes(client)
    other = embed(client, "globex", input=secret)
    assert other.status_code == 200
    assert other.headers["x-query-cache"] == "miss"
    assert 'cache;desc="miss"' in other.headers["server-timing"]
    assert query_passes(client) == passes + 1  # the encoder ran for it: a miss's cost
    raw = query_encoder.encode([secret], "query").vectors
    globex = store.get(adapters_bound["globex"])
    np.testing.assert_allclose(embeddings(other.json()), globex.apply(raw), atol=1e-5)
    repeat = embed(client, "acme", input=secret)
    assert repeat.headers["x-query-cache"] == "hit"
    assert query_passes(client) == passes + 1
    np.testing.assert_array_equal(embeddings(repeat.json()), embeddings(first.json()))


def test_one_tenants_traffic_never_evicts_anothers_entries(make_client):
    client = make_client(query_cache_size=6)  # two entries each
    embed(client, "globex", input=QUERY)
    for i in range(10):
        embed(client, "acme", input=f"flood {i}")
    assert embed(client, "globex", input=QUERY).headers["x-query-cache"] == "hit"


# -- tokenised once -----------------------------------------------------------------------------
def count_calls(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> list[int]:
    calls: list[int] = []
    cls = type(tokenizer)
    real = cls.__call__

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is tokenizer:
            calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


def test_each_request_is_tokenised_once(
    client: TestClient, monkeypatch, query_encoder, document_encoder
):
    q_calls = count_calls(monkeypatch, query_encoder.tokenizer)
    d_calls = count_calls(monkeypatch, document_encoder.tokenizer)
    r = embed(client, "acme", input=["alpha beta", "gamma delta epsilon", "zeta"])  # linear adapter
    assert r.status_code == 200
    assert (len(q_calls), len(d_calls)) == (1, 0)
    # and the counts the admission made are the ones `usage` reports
    want = sum(
        len(x)
        for x in query_encoder.tokenize(["alpha beta", "gamma delta epsilon", "zeta"], "query").ids
    )
    assert r.json()["usage"]["prompt_tokens"] == want
    q_calls.clear()
    r = embed(client, "initech", input=["alpha beta", "theta"])  # no adapter: document encoder
    assert r.status_code == 200
    assert (len(q_calls), len(d_calls)) == (0, 1)


# -- truncation ---------------------------------------------------------------------------------
def test_truncate_true_reports_the_cut_in_usage(client: TestClient, query_encoder):
    long = " ".join(["word"] * 200)
    r = embed(client, "acme", input=["short one", long], truncate=True)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    full = query_encoder.count_tokens([long], "query")[0]
    assert usage["truncated"] == [{"index": 1, "tokens": full, "kept": query_encoder.max_tokens}]
    assert (
        usage["prompt_tokens"]
        == query_encoder.count_tokens(["short one"], "query")[0] + query_encoder.max_tokens
    )
    # nothing cut: OpenAI's usage shape, no `truncated` key
    assert "truncated" not in embed(client, "acme", input="short one").json()["usage"]
    # the same text without truncate is refused, even though its cut vector is now cached
    refused = embed(client, "acme", input=["short one", long])
    assert refused.status_code == 413
    assert refused.json()["error"]["details"]["index"] == 1


# -- a client that goes away --------------------------------------------------------------------
def test_a_disconnected_client_has_its_rows_dropped(make_app, adapters_bound):
    app = make_app()
    with serve(app) as url:
        runtime = app.state.runtime
        real = runtime.run_prepared
        release = threading.Event()
        entered = threading.Event()
        ran: list[str] = []

        def held(preps: list[Prepared]) -> list:
            ran.extend(t for p in preps for t in p.item.texts)
            entered.set()
            assert release.wait(30)
            return real(preps)

        runtime.run_prepared = held  # type: ignore[method-assign]
        host, port = url.removeprefix("http://").split(":")

        holder = threading.Thread(
            target=lambda: httpx.post(
                f"{url}/embed", json={"input": "held text"}, headers=auth("acme"), timeout=60
            ),
            daemon=True,
        )
        holder.start()
        assert entered.wait(30)
        # a raw client sends a request, then hangs up while it is queued behind the held batch
        body = b'{"input": "the request of a client who left"}'
        head = (
            "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEYS['globex']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection((host, int(port))) as s:
            s.sendall(head.encode() + body)
            deadline = time.monotonic() + 10
            while app.state.metrics.registry.get_sample_value("querylift_queue_depth") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        labels = {"reason": "disconnected"}
        while not app.state.metrics.registry.get_sample_value("querylift_rejected_total", labels):
            assert time.monotonic() < deadline, "the disconnect was not noticed"
            time.sleep(0.01)
        release.set()
        holder.join(30)
        after = httpx.post(
            f"{url}/embed", json={"input": "after"}, headers=auth("acme"), timeout=60
        )
        assert after.status_code == 200
    assert "the request of a client who left" not in ran
    assert "held text" in ran and "after" in ran


# -- the query encoder fails ----------------------------------------------------------------------
def fail_once(monkeypatch: pytest.MonkeyPatch, encoder: Any, exc: Exception) -> None:
    real = encoder.encode_tokenized
    state = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        state["n"] += 1
        if state["n"] == 1:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder, "encode_tokenized", flaky)


def test_fallback_answers_with_the_document_encoder_and_says_so(
    make_client, monkeypatch, query_encoder, document_encoder
):
    client = make_client(encoder_fallback=True)
    fail_once(
        monkeypatch, query_encoder, RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    )
    r = embed(client, "acme", input=[QUERY, "the heart"])
    assert r.status_code == 200, r.text
    assert r.headers["x-querylift-degraded"] == "document-encoder-fallback; reason=out_of_memory"
    body = r.json()
    assert body["adapter"] is None and body["model"] == "tiny-bert"
    np.testing.assert_allclose(
        embeddings(r.json()),
        document_encoder.encode([QUERY, "the heart"], "query").vectors,
        atol=1e-6,
    )
    assert (
        sample(client, "querylift_fallback_total", {"tenant": "acme", "reason": "out_of_memory"})
        == 1
    )
    # the next batch is served by the query encoder and the adapter again
    again = embed(client, "acme", input=[QUERY, "the heart"])
    assert again.status_code == 200 and "x-querylift-degraded" not in again.headers
    assert again.json()["adapter"] is not None
    # /search degrades the same way
    fail_once(monkeypatch, query_encoder, RuntimeError("engine died"))
    s = client.post("/search", json={"query": "a brand new question"}, headers=auth("acme"))
    assert s.status_code == 200 and s.json()["results"]
    assert "reason=encoder_unavailable" in s.headers["x-querylift-degraded"]


def test_without_fallback_the_failed_batch_is_a_503_and_the_next_is_served(
    make_client, monkeypatch, query_encoder
):
    client = make_client(encoder_fallback=False)
    fail_once(monkeypatch, query_encoder, RuntimeError("CUDA out of memory"))
    r = embed(client, "acme", input=QUERY)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "out_of_memory"
    assert r.headers["retry-after"] == "1"
    assert embed(client, "acme", input=QUERY).status_code == 200
    assert sample(client, "querylift_encoder_failures_total", {"encoder": "tiny-qwen3"}) == 1


# -- a filter Qdrant refuses at search time -------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "with_filter", "status", "code"),
    [
        (ValueError("bad key path"), True, 422, "invalid_filter"),
        ("unexpected-400", True, 422, "invalid_filter"),
        (ValueError("bad key path"), False, 503, "search_unavailable"),
        ("unexpected-500", True, 503, "search_unavailable"),
        (ConnectionError("refused"), True, 503, "search_unavailable"),
    ],
)
def test_a_filter_qdrant_refuses_is_the_clients_error(
    client, monkeypatch, exc, with_filter, status, code
):
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, str):
        exc = UnexpectedResponse(
            int(exc[-3:]), "Bad Request", b'{"status": "bad"}', httpx.Headers()
        )

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(client.app.state.runtime.gateway, "search", refuse)
    body: dict[str, Any] = {"query": "malaria"}
    if with_filter:
        body["filter"] = {"must": [{"key": "topic", "match": {"value": "malaria"}}]}
    r = client.post("/search", json=body, headers=auth("acme"))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
