"""Shadow evaluation (service/evaluation/shadow.py): overlap@10 of a candidate adapter on live
/search traffic, measured in the background without changing any answer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters import ModelInfo
from adapters.store import AdapterStore
from encoders import Encoder
from service.evaluation import shadow as shadow_module
from service.evaluation.shadow import overlap_at, rank_biased_overlap
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import ADMIN, admin_headers, assert_error, auth, index_docs, make_linear
from tests.tiny_models import WORDS
from training.data import Document

QUERIES = [
    "what causes malaria in children",
    "cancer cell genes",
    "the heart of mice",
    "vitamin and immune response",
    "drug treatment for brain disease",
    "risk of infection in women",
    "does the virus increase the risk",
    "protein effects on blood",
]


@pytest.fixture
def shadow_client(
    make_app: Callable[..., FastAPI],
    document_encoder: Encoder,
    gateway: QdrantGateway,
    adapters_bound: dict[str, str],
) -> Iterator[TestClient]:
    """acme's collection gets 40 more documents, so a top-10 is a real choice."""
    rng = np.random.default_rng(0)
    extra = [
        Document(f"x{i}", " ".join(rng.choice(WORDS[20:], size=8)), {"topic": "misc"})
        for i in range(40)
    ]
    index_docs(gateway, document_encoder, "acme", extra)
    app = make_app(admin_token=SecretStr(ADMIN))  # the admin API on, no audit log
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def searches(client: TestClient, tenant: str = "acme") -> list[bytes]:
    """Each answer without its timings (they vary per request): ids, scores, payloads,
    adapter ref and model, serialised canonically."""
    out = []
    for q in QUERIES:
        r = client.post("/search", json={"query": q, "top_k": 10}, headers=auth(tenant))
        assert r.status_code == 200, r.text
        body = r.json()
        body.pop("timings_ms")
        out.append(json.dumps(body, sort_keys=True).encode())
    return out


def wait_for(client: TestClient, tenant: str, compared: int, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        rep = client.get(f"/admin/tenants/{tenant}/shadow", headers=admin_headers()).json()
        done = rep["compared"] + rep["errors"] + rep["dropped"] >= compared and not rep["pending"]
        if done or time.monotonic() > deadline:
            return rep
        time.sleep(0.05)


def start(client: TestClient, adapter_id: str, **kw: object):
    body = {"adapter_id": adapter_id, "sample_rate": 1.0, "max_queries": 100, **kw}
    return client.post("/admin/tenants/acme/shadow", json=body, headers=admin_headers())


def upload_candidate(store: AdapterStore, q: Encoder, d: Encoder, seed: int, **kw: object) -> str:
    return store.put(*make_linear(q, d, seed, **kw)).id


# -- the measures ------------------------------------------------------------------------------
def test_overlap_and_rbo():
    assert overlap_at(["a", "b", "c"], ["c", "b", "a"], 10) == 1.0
    assert overlap_at(["a", "b"], ["a", "x"], 10) == 0.5
    assert overlap_at([], [], 10) == 1.0
    assert overlap_at(list("abcdefghijkl"), list("abcdefghijzz"), 10) == 1.0  # only the top 10
    assert rank_biased_overlap(list("abc"), list("abc"), 10) == pytest.approx(1.0)
    assert rank_biased_overlap(list("abc"), list("cba"), 10) < 1.0
    assert rank_biased_overlap(list("abc"), list("xyz"), 10) == 0.0


# -- the run -----------------------------------------------------------------------------------
def test_same_adapter_overlaps_fully_and_answers_do_not_change(
    shadow_client: TestClient, adapters_bound: dict[str, str]
):
    searches(shadow_client)  # warm the query cache: the reference pass reads it as well
    before = searches(shadow_client)
    r = start(shadow_client, adapters_bound["acme"])
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "running" and r.json()["compared"] == 0
    during = searches(shadow_client)
    assert during == before  # byte-identical: ids, scores, payloads, adapter ref
    rep = wait_for(shadow_client, "acme", len(QUERIES))
    assert rep["queries_seen"] == rep["sampled"] == rep["compared"] == len(QUERIES)
    assert rep["errors"] == rep["dropped"] == 0
    assert rep["overlap_at_10"] == {"mean": 1.0, "median": 1.0, "p10": 1.0, "min": 1.0}
    assert rep["identical_top10"] == 1.0 and rep["mean_rbo"] == pytest.approx(1.0)
    assert rep["mean_top1_score_delta"] == pytest.approx(0.0, abs=1e-5)
    assert rep["served_adapters"] == {f"{adapters_bound['acme']}@1": len(QUERIES)}
    # other tenants are not shadowed
    searches(shadow_client, "globex")
    assert wait_for(shadow_client, "acme", len(QUERIES))["queries_seen"] == len(QUERIES)
    metrics = shadow_client.get("/metrics").text
    assert f'querylift_shadow_compared_total{{tenant="acme"}} {float(len(QUERIES))}' in metrics
    assert f'querylift_shadow_overlap_count{{tenant="acme"}} {float(len(QUERIES))}' in metrics


def test_different_candidate_overlaps_less_and_changes_nothing(
    shadow_client: TestClient,
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
):
    candidate = upload_candidate(store, query_encoder, document_encoder, seed=7)
    searches(shadow_client)
    before = searches(shadow_client)
    assert start(shadow_client, candidate).status_code == 201
    assert searches(shadow_client) == before
    rep = wait_for(shadow_client, "acme", len(QUERIES))
    assert rep["compared"] == len(QUERIES) and rep["errors"] == 0
    ov = rep["overlap_at_10"]
    assert 0.0 <= ov["min"] <= ov["p10"] <= ov["median"] <= 1.0
    assert 0.0 <= ov["mean"] < 1.0
    assert rep["identical_top10"] < 1.0 and rep["adapter_id"] == candidate
    # the tenant still serves its own adapter
    tenant = shadow_client.get("/admin/tenants/acme", headers=admin_headers()).json()
    assert tenant["served"]["adapter_id"] == adapters_bound["acme"]


def test_sampling_max_queries_and_stop(shadow_client: TestClient, adapters_bound: dict[str, str]):
    assert start(shadow_client, adapters_bound["acme"], max_queries=3).status_code == 201
    searches(shadow_client)
    rep = wait_for(shadow_client, "acme", 3)
    assert rep["sampled"] == rep["compared"] == 3 and rep["status"] == "complete"
    assert rep["queries_seen"] == 3  # nothing is looked at past max_queries
    r = start(shadow_client, adapters_bound["acme"], sample_rate=0.0)  # a complete run: replaced
    assert r.status_code == 201, r.text
    assert_error(start(shadow_client, adapters_bound["acme"]), 409, "shadow_running")
    searches(shadow_client)
    rep = shadow_client.get("/admin/tenants/acme/shadow", headers=admin_headers()).json()
    assert rep["queries_seen"] == len(QUERIES) and rep["sampled"] == 0
    stopped = shadow_client.delete("/admin/tenants/acme/shadow", headers=admin_headers())
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    searches(shadow_client)
    rep = shadow_client.get("/admin/tenants/acme/shadow", headers=admin_headers()).json()
    assert rep["status"] == "stopped" and rep["queries_seen"] == len(QUERIES)
    assert (
        shadow_client.delete("/admin/tenants/acme/shadow", headers=admin_headers()).status_code
        == 200
    )
    # starts and the one real stop are in the audit log, with the stop's report
    log = shadow_client.app.state.settings.adapter_store / "audit.log"
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    actions = [(x["action"], x["adapter_id"]) for x in lines if x["action"].startswith("shadow")]
    acme = adapters_bound["acme"]
    assert actions == [("shadow_start", acme), ("shadow_start", acme), ("shadow_stop", acme)]
    assert lines[-1]["report"]["status"] == "stopped"


def test_comparison_errors_are_counted_not_raised(
    shadow_client: TestClient, adapters_bound: dict[str, str], monkeypatch: pytest.MonkeyPatch
):
    def boom(*_: object) -> None:
        raise RuntimeError("candidate search failed")

    monkeypatch.setattr(shadow_module.Shadow, "_candidate_hits", boom)
    searches(shadow_client)
    before = searches(shadow_client)
    assert start(shadow_client, adapters_bound["acme"]).status_code == 201
    assert searches(shadow_client) == before
    rep = wait_for(shadow_client, "acme", len(QUERIES))
    assert rep["errors"] == len(QUERIES) and rep["compared"] == 0
    assert "candidate search failed" in rep["last_error"]
    assert rep["overlap_at_10"]["mean"] is None


# -- refusals ----------------------------------------------------------------------------------
def test_refusals(
    shadow_client: TestClient,
    store: AdapterStore,
    query_encoder: Encoder,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
):
    assert_error(
        shadow_client.get("/admin/tenants/acme/shadow", headers=admin_headers()),
        404,
        "shadow_not_found",
    )
    assert_error(
        shadow_client.delete("/admin/tenants/acme/shadow", headers=admin_headers()),
        404,
        "shadow_not_found",
    )
    r = shadow_client.post(
        "/admin/tenants/nobody/shadow",
        json={"adapter_id": adapters_bound["acme"]},
        headers=admin_headers(),
    )
    assert_error(r, 404, "tenant_not_found")
    assert_error(start(shadow_client, "no-such-adapter"), 404, "adapter_not_found")
    other = ModelInfo(name="another-query-model", dim=query_encoder.dim)
    bad = upload_candidate(store, query_encoder, document_encoder, seed=3, query_model=other)
    err = assert_error(start(shadow_client, bad), 422, "adapter_incompatible")
    assert any("another-query-model" in x for x in err["details"]["reasons"])
    assert_error(
        start(shadow_client, adapters_bound["acme"], sample_rate=1.5), 422, "invalid_request"
    )
    # nothing started by the refusals
    assert_error(
        shadow_client.get("/admin/tenants/acme/shadow", headers=admin_headers()),
        404,
        "shadow_not_found",
    )


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_tenant_keys_do_not_work(
    shadow_client: TestClient, adapters_bound: dict[str, str], method: str
):
    body = {"adapter_id": adapters_bound["acme"]} if method == "POST" else None
    r = shadow_client.request(method, "/admin/tenants/acme/shadow", json=body, headers=auth("acme"))
    assert_error(r, 401, "unauthorized")
