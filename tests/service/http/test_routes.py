"""The HTTP contract on tiny local encoders: /embed, /v1/embeddings, /search, errors, metrics."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters.store import AdapterStore
from encoders import Encoder
from tests.conftest import ADMIN, admin_headers, assert_error, auth, embeddings, long_text

TEXTS = ["what causes malaria", "the heart of mice", "vitamin and the immune response"]


def test_embed_document_is_the_document_encoder(client: TestClient, document_encoder: Encoder):
    r = client.post("/embed", json={"input": TEXTS, "input_type": "document"}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    body = r.json()
    expected = document_encoder.encode(TEXTS, "document").vectors
    np.testing.assert_allclose(embeddings(body), expected, atol=1e-6)
    assert body["model"] == document_encoder.name
    assert body["adapter"] is None
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert body["usage"]["prompt_tokens"] == sum(document_encoder.count_tokens(TEXTS, "document"))


def test_embed_query_goes_through_the_tenants_adapter(
    client: TestClient,
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
):
    r = client.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    body = r.json()
    adapter = store.get(adapters_bound["acme"])
    raw = query_encoder.encode(TEXTS, "query").vectors
    got = embeddings(body)
    np.testing.assert_allclose(got, adapter.apply(raw), atol=1e-5)
    assert got.shape == (3, document_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert body["adapter"] == {"id": adapters_bound["acme"], "version": 1}
    assert body["model"] == query_encoder.name
    # the instruction prompt is part of what the query encoder saw
    n_tokens = sum(query_encoder.count_tokens(TEXTS, "query"))
    assert body["usage"]["prompt_tokens"] == n_tokens
    assert "encode;dur=" in r.headers["server-timing"]


def test_each_tenant_gets_its_own_adapter(client: TestClient):
    a = embeddings(client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json())
    g = embeddings(client.post("/embed", json={"input": TEXTS}, headers=auth("globex")).json())
    assert not np.allclose(a, g, atol=1e-3)


def test_per_call_instruction_changes_the_query_vector(client: TestClient):
    base = client.post("/embed", json={"input": "what causes malaria"}, headers=auth("acme"))
    other = client.post(
        "/embed",
        json={"input": "what causes malaria", "instruction": "find the web"},
        headers=auth("acme"),
    )
    assert not np.allclose(embeddings(base.json()), embeddings(other.json()), atol=1e-4)


def test_tenant_without_adapter_gets_document_encoder_query_vectors(
    client: TestClient, document_encoder: Encoder
):
    r = client.post("/embed", json={"input": TEXTS}, headers=auth("initech"))
    assert r.status_code == 200, r.text
    assert r.json()["adapter"] is None
    np.testing.assert_allclose(
        embeddings(r.json()), document_encoder.encode(TEXTS, "query").vectors, atol=1e-6
    )


def test_truncate_true_cuts_and_reports_tokens(client: TestClient, document_encoder: Encoder):
    long = long_text(200)
    r = client.post(
        "/embed",
        json={"input": long, "input_type": "document", "truncate": True},
        headers=auth("acme"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == document_encoder.max_tokens


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"input": []}, 422, "invalid_request"),
        ({"input": ""}, 422, "invalid_request"),
        ({"input": ["ok", "   "]}, 422, "invalid_request"),
        ({"input": 42}, 422, "invalid_request"),
        ({"input": ["ok", 7]}, 422, "invalid_request"),
        ({"input": "ok", "truncate": "yes"}, 422, "invalid_request"),
        ({"input": "ok", "input_type": "passage"}, 422, "invalid_request"),
        ({"input": "ok", "unknown_field": 1}, 422, "invalid_request"),
        ({"text": "ok"}, 422, "invalid_request"),
        ({"input": ["x"] * 9}, 413, "too_many_inputs"),
        ({"input": "x" * 2001}, 413, "input_too_long"),
    ],
)
def test_bad_embed_input_is_a_clear_4xx(client: TestClient, payload, status, code):
    assert_error(client.post("/embed", json=payload, headers=auth("acme")), status, code)


def test_over_long_input_without_truncate_names_the_index(client: TestClient):
    long = long_text(200)
    r = client.post(
        "/embed", json={"input": ["short", long], "input_type": "document"}, headers=auth("acme")
    )
    err = assert_error(r, 413, "input_too_long")
    assert err["details"]["index"] == 1
    assert err["details"]["tokens"] > err["details"]["max_tokens"]
    # the query path (query encoder, prompt included) refuses too
    r = client.post("/embed", json={"input": [long]}, headers=auth("acme"))
    assert assert_error(r, 413, "input_too_long")["details"]["index"] == 0


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic a2V5LWFjbWUtMTIz"}]
)
def test_unknown_or_missing_key_is_401(client: TestClient, headers):
    for path, payload in (
        ("/embed", {"input": "x"}),
        ("/search", {"query": "x"}),
        ("/v1/embeddings", {"input": "x", "model": "m"}),
    ):
        r = client.post(path, json=payload, headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"


def test_unknown_route_uses_the_error_shape(client: TestClient):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/embed"), 405, "method_not_allowed")


# -- OpenAI-compatible -------------------------------------------------------------------------
def test_openai_float_and_base64_agree(client: TestClient, document_encoder: Encoder):
    body = {"input": TEXTS, "model": "text-embedding-3-small", "user": "u1", "extra": "tolerated"}
    f = client.post("/v1/embeddings", json=body, headers=auth("acme"))
    b = client.post(
        "/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=auth("acme")
    )
    assert f.status_code == b.status_code == 200, (f.text, b.text)
    fj, bj = f.json(), b.json()
    assert fj["object"] == "list" and fj["data"][0]["object"] == "embedding"
    assert fj["model"] == "text-embedding-3-small"
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in bj["data"]]
    )
    np.testing.assert_allclose(decoded, embeddings(fj), atol=1e-7)
    assert decoded.shape == (3, document_encoder.dim)
    assert fj["usage"]["total_tokens"] == fj["usage"]["prompt_tokens"] > 0
    # same vectors as /embed for the same tenant
    e = client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
    np.testing.assert_allclose(embeddings(fj), embeddings(e), atol=1e-6)


def test_openai_refuses_what_it_cannot_honour(client: TestClient, document_encoder: Encoder):
    h = auth("acme")
    assert_error(
        client.post("/v1/embeddings", json={"input": [1, 2, 3]}, headers=h),
        400,
        "unsupported_input",
    )
    assert_error(
        client.post("/v1/embeddings", json={"input": "x", "dimensions": 8}, headers=h),
        400,
        "unsupported_dimensions",
    )
    ok = client.post(
        "/v1/embeddings", json={"input": "x", "dimensions": document_encoder.dim}, headers=h
    )
    assert ok.status_code == 200
    assert_error(
        client.post("/v1/embeddings", json={"input": []}, headers=h), 422, "invalid_request"
    )
    assert_error(
        client.post("/v1/embeddings", json={"input": ""}, headers=h), 422, "invalid_request"
    )


# -- search ------------------------------------------------------------------------------------
def test_search_returns_only_the_tenants_points(client: TestClient):
    r = client.post(
        "/search", json={"query": "malaria mosquito", "top_k": 100}, headers=auth("acme")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [h["id"] for h in body["results"]]
    assert sorted(ids) == ["d1", "d2", "d3", "d4", "d5", "d6"]
    assert all("tenant" not in h["payload"] for h in body["results"])
    assert body["results"][0]["payload"]["text"]
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body["timings_ms"]) == {"encode", "adapt", "search"}
    assert body["adapter"]["version"] == 1
    g = client.post("/search", json={"query": "malaria mosquito"}, headers=auth("globex")).json()
    assert {h["id"] for h in g["results"]} == {"g1", "g2"}


def test_search_vector_is_the_embed_vector(client: TestClient, gateway):
    """The score of each hit is the cosine of /embed's query vector with the document."""
    q = "malaria mosquito"
    v = embeddings(client.post("/embed", json={"input": q}, headers=auth("acme")).json())[0]
    r = client.post("/search", json={"query": q, "top_k": 3}, headers=auth("acme")).json()
    doc = client.post(
        "/embed",
        json={"input": r["results"][0]["payload"]["text"], "input_type": "document"},
        headers=auth("acme"),
    ).json()
    assert r["results"][0]["score"] == pytest.approx(float(embeddings(doc)[0] @ v), abs=1e-4)


def test_client_filter_narrows(client: TestClient):
    flt = {"must": [{"key": "topic", "match": {"value": "malaria"}}]}
    r = client.post(
        "/search",
        json={"query": "anything", "filter": flt, "with_payload": False},
        headers=auth("acme"),
    )
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert sorted(h["id"] for h in res) == ["d1", "d2"]
    assert all(h["payload"] is None for h in res)


@pytest.mark.parametrize(
    "payload",
    [
        {"query": ""},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 101},
        {"query": "x", "top_k": "5"},
        {"query": 5},
        {"query": "x", "filter": {"must": "nope"}},
        {"query": "x", "filter": [1]},
        {"query": "x", "bogus": True},
    ],
)
def test_bad_search_input(client: TestClient, payload):
    r = client.post("/search", json=payload, headers=auth("acme"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in {"invalid_request", "invalid_filter"}


def test_search_on_a_missing_collection_is_404(
    settings, query_encoder, document_encoder, adapters_bound
):
    from service.app import create_app
    from service.search.qdrant_gateway import QdrantGateway

    gw = QdrantGateway(path=":memory:")
    app = create_app(
        settings, query_encoder=query_encoder, document_encoder=document_encoder, gateway=gw
    )
    with TestClient(app) as c:
        assert_error(
            c.post("/search", json={"query": "x"}, headers=auth("acme")),
            404,
            "collection_not_found",
        )
        # /embed does not need Qdrant at all
        assert c.post("/embed", json={"input": "x"}, headers=auth("acme")).status_code == 200


# -- health and metrics ------------------------------------------------------------------------
def test_health_and_readiness(make_client):
    client = make_client(admin_token=SecretStr(ADMIN))
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["checks"] == {
        "encoders": "ok",
        "warmup": "ok",
        "adapter_sync": "ok",
        "qdrant": "ok",
        "search_targets": "ok",
    }
    assert "warnings" not in body  # the open answer names no tenant (test_readyz.py)
    # initech shares the collection but has indexed nothing yet: said to the admin, not a
    # reason to leave the load balancer's rotation
    body = client.get("/readyz", headers=admin_headers()).json()
    assert body["warnings"] == [
        "tenant 'initech': collection 'docs', unnamed vector, tenant == 'initech': "
        "no point has payload tenant == 'initech' yet"
    ]


def test_metrics_expose_requests_encoders_qdrant_and_adapters(
    client: TestClient, adapters_bound: dict[str, str]
):
    client.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
    client.post("/embed", json={"input": []}, headers=auth("acme"))
    client.post("/search", json={"query": "malaria"}, headers=auth("acme"))
    text = client.get("/metrics").text
    assert 'querylift_requests_total{endpoint="/embed",method="POST",status="200"} 1.0' in text
    assert 'querylift_requests_total{endpoint="/embed",method="POST",status="422"} 1.0' in text
    assert 'querylift_request_duration_seconds_bucket{endpoint="/search"' in text
    assert 'querylift_encoder_batch_size_count{encoder="tiny-qwen3",kind="query"}' in text
    assert 'querylift_encoder_tokens_total{encoder="tiny-qwen3",kind="query"}' in text
    assert "querylift_qdrant_request_duration_seconds_bucket{" in text
    assert 'operation="query_points",outcome="ok"' in text
    assert (
        f'querylift_adapter_active_info{{adapter_id="{adapters_bound["acme"]}",'
        'tenant="acme",version="1"} 1.0'
    ) in text
    assert 'querylift_tenant_requests_total{endpoint="/embed",tenant="acme"} 1.0' in text


def test_a_failing_encoder_is_a_503_and_the_next_batch_is_served(client: TestClient, monkeypatch):
    from encoders.base import EncoderError

    runtime = client.app.state.runtime
    real = runtime.query_encoder.encode_tokenized
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise EncoderError("engine died")
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime.query_encoder, "encode_tokenized", flaky)
    err = assert_error(
        client.post("/embed", json={"input": "x"}, headers=auth("acme")), 503, "encoder_unavailable"
    )
    assert err["details"]["encoder"] == "tiny-qwen3"
    assert client.post("/embed", json={"input": "x"}, headers=auth("acme")).status_code == 200
    text = client.get("/metrics").text
    assert 'querylift_encoder_failures_total{encoder="tiny-qwen3"} 1.0' in text


def test_readiness_reports_an_encoder_that_is_not_ready(make_client, monkeypatch):
    client = make_client(admin_token=SecretStr(ADMIN))
    runtime = client.app.state.runtime
    monkeypatch.setattr(type(runtime.query_encoder), "ready", False, raising=False)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["encoders"] == "starting"  # a state, not the encoder's name
    r = client.get("/readyz", headers=admin_headers())
    assert r.json()["checks"]["encoders"].startswith("not ready: tiny-qwen3")
