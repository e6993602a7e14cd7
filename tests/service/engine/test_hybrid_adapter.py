"""The service with a hybrid adapter: the query path feeds [query-encoder vector; document-encoder
vector] of each query to the adapter. Tiny local encoders, in-memory Qdrant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adapters import Adapter
from adapters.checkpoint import parse_checkpoint, serialize
from adapters.compat import compatibility_problems
from adapters.store import AdapterStore
from encoders import Encoder
from tests.conftest import auth, embeddings, hybrid_manifest, long_text, make_hybrid, make_linear

TEXTS = ["what causes malaria", "the heart of mice", "vitamin and the immune response"]


@pytest.fixture
def hybrid_client(
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
) -> Iterator[Callable[[int | None], tuple[TestClient, Adapter]]]:
    """Bind a hybrid adapter to acme (and a linear one to globex) BEFORE the app starts."""
    clients: list[TestClient] = []

    def start(seed: int | None) -> tuple[TestClient, Adapter]:
        adapter = store.put(*make_hybrid(query_encoder, document_encoder, seed))
        store.activate("acme", adapter.id)
        linear = store.put(*make_linear(query_encoder, document_encoder, 7))
        store.activate("globex", linear.id)
        c = TestClient(make_app(), raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        return c, adapter

    yield start
    for c in clients:
        c.__exit__(None, None, None)


def expected_hybrid(
    adapter: Adapter, qe: Encoder, de: Encoder, texts: list[str], **kw: Any
) -> np.ndarray:
    q = qe.encode(texts, "query", **kw).vectors
    d = de.encode(texts, "query", **kw).vectors
    return adapter.apply(np.concatenate([q, d], axis=1))


def test_identity_hybrid_serves_the_document_encoders_own_query_vectors(
    hybrid_client, query_encoder: Encoder, document_encoder: Encoder
):
    client, adapter = hybrid_client(None)
    r = client.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    body = r.json()
    own = document_encoder.encode(TEXTS, "query").vectors
    np.testing.assert_allclose(embeddings(body), own, atol=1e-5)
    # the same as a tenant without any adapter gets, but through the adapter
    none = client.post("/embed", json={"input": TEXTS}, headers=auth("initech")).json()
    np.testing.assert_allclose(embeddings(body), embeddings(none), atol=1e-5)
    assert none["adapter"] is None
    assert body["adapter"] == {"id": adapter.id, "version": 1}
    assert body["model"] == query_encoder.name
    # usage stays the query encoder's token counts
    assert body["usage"]["prompt_tokens"] == sum(query_encoder.count_tokens(TEXTS, "query"))
    assert "encode;dur=" in r.headers["server-timing"]


def test_random_hybrid_applies_to_the_concatenation(
    hybrid_client, query_encoder: Encoder, document_encoder: Encoder
):
    client, adapter = hybrid_client(3)
    assert adapter.manifest.inputs == ("query", "document")
    body = client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
    got = embeddings(body)
    want = expected_hybrid(adapter, query_encoder, document_encoder, TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == (3, document_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # not the document encoder's own vectors, and the per-call instruction reaches the encoders
    assert not np.allclose(got, document_encoder.encode(TEXTS, "query").vectors, atol=1e-3)
    instr = "find the web"
    other = client.post(
        "/embed", json={"input": TEXTS, "instruction": instr}, headers=auth("acme")
    ).json()
    np.testing.assert_allclose(
        embeddings(other),
        expected_hybrid(adapter, query_encoder, document_encoder, TEXTS, instruction=instr),
        atol=1e-5,
    )


def test_hybrid_and_linear_tenants_side_by_side(
    hybrid_client, store: AdapterStore, query_encoder: Encoder
):
    client, _ = hybrid_client(3)
    g = client.post("/embed", json={"input": TEXTS}, headers=auth("globex")).json()
    linear = store.get(g["adapter"]["id"])
    raw = query_encoder.encode(TEXTS, "query").vectors
    np.testing.assert_allclose(embeddings(g), linear.apply(raw), atol=1e-5)


def test_hybrid_openai_and_search_use_the_same_vector(hybrid_client):
    client, adapter = hybrid_client(5)
    e = embeddings(client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json())
    o = client.post("/v1/embeddings", json={"input": TEXTS, "model": "m"}, headers=auth("acme"))
    assert o.status_code == 200, o.text
    np.testing.assert_allclose(embeddings(o.json()), e, atol=1e-6)
    q = "malaria mosquito"
    v = embeddings(client.post("/embed", json={"input": q}, headers=auth("acme")).json())[0]
    r = client.post("/search", json={"query": q, "top_k": 3}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter"] == {"id": adapter.id, "version": 1}
    assert set(body["timings_ms"]) == {"encode", "adapt", "search"}
    doc = client.post(
        "/embed",
        json={"input": body["results"][0]["payload"]["text"], "input_type": "document"},
        headers=auth("acme"),
    ).json()
    assert body["results"][0]["score"] == pytest.approx(float(embeddings(doc)[0] @ v), abs=1e-4)


def test_hybrid_truncate_cuts_for_both_encoders(
    hybrid_client, query_encoder: Encoder, document_encoder: Encoder
):
    client, adapter = hybrid_client(3)
    long = long_text(200)
    r = client.post("/embed", json={"input": long, "truncate": True}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    want = expected_hybrid(adapter, query_encoder, document_encoder, [long], truncate=True)
    np.testing.assert_allclose(embeddings(r.json()), want, atol=1e-5)
    assert r.json()["usage"]["prompt_tokens"] == query_encoder.max_tokens
    r = client.post("/embed", json={"input": ["ok", long]}, headers=auth("acme"))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["details"]["index"] == 1


def test_compatibility_accepts_hybrid_and_names_dim_mismatches(
    query_encoder: Encoder, document_encoder: Encoder
):
    good = parse_checkpoint(*make_hybrid(query_encoder, document_encoder, 1))
    assert compatibility_problems(good, query_encoder, document_encoder) == []
    # trained against a query model of another width
    m = hybrid_manifest(query_encoder, document_encoder, qdim=query_encoder.dim + 2)
    rng = np.random.default_rng(0)
    t = {
        "weight": rng.standard_normal((m.out_dim, m.in_dim)).astype(np.float32),
        "bias": np.zeros(m.out_dim, np.float32),
    }
    bad = parse_checkpoint(*serialize(m, t))
    problems = " | ".join(compatibility_problems(bad, query_encoder, document_encoder))
    assert "query encoder dim + document encoder dim" in problems
    assert f"params.query_dim {query_encoder.dim + 2} != query encoder dim" in problems
    # a plain linear adapter is still checked against the query encoder alone
    linear = parse_checkpoint(*make_linear(query_encoder, document_encoder, 0))
    assert compatibility_problems(linear, query_encoder, document_encoder) == []


def test_incompatible_hybrid_falls_back_to_the_document_encoder(
    make_app: Callable[..., FastAPI],
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    m = hybrid_manifest(query_encoder, document_encoder, qdim=query_encoder.dim + 2)
    t = {
        "weight": np.zeros((m.out_dim, m.in_dim), np.float32),
        "bias": np.zeros(m.out_dim, np.float32),
    }
    store.activate("acme", store.put(*serialize(m, t)).id)
    with TestClient(make_app(), raise_server_exceptions=False) as client:
        body = client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
    assert body["adapter"] is None
    np.testing.assert_allclose(
        embeddings(body), document_encoder.encode(TEXTS, "query").vectors, atol=1e-6
    )


def test_hybrid_refuses_what_the_document_encoder_would_cut(
    hybrid_client, query_encoder: Encoder, document_encoder: Encoder
):
    """Both encoders see the query, so both token limits apply: never a silent cut."""
    client, _ = hybrid_client(3)
    assert document_encoder.max_tokens < query_encoder.max_tokens
    n = next(
        n
        for n in range(1, 200)
        if document_encoder.count_tokens([long_text(n)], "query")[0] > document_encoder.max_tokens
    )
    text = long_text(n)
    assert query_encoder.count_tokens([text], "query")[0] <= query_encoder.max_tokens
    r = client.post("/embed", json={"input": ["ok", text]}, headers=auth("acme"))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["details"] == {
        "index": 1,
        "tokens": document_encoder.count_tokens([text], "query")[0],
        "max_tokens": document_encoder.max_tokens,
        "encoder": document_encoder.name,
    }
    ok = client.post("/embed", json={"input": text, "truncate": True}, headers=auth("acme"))
    assert ok.status_code == 200, ok.text
