"""Tenant isolation under attack (issue 7, acceptance 3): one test per attack, each asserting
that no point of another tenant is ever returned or touched.

acme (d1..d6) and globex (g1, g2) share collection `docs`, told apart only by the payload
field `tenant`; the service ANDs `tenant == <caller's value>` with whatever filter the caller
sends (service/search/qdrant_gateway.py). tests/service/http/test_http_properties.py checks the
same property on generated filters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from encoders import Encoder
from querylift.indexing import point_id
from service.bindings.tenants import TenantRegistry, hash_key
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import DOCS, auth, embeddings, index_docs
from training.data import Document

ACME = {d.id for d in DOCS}
GLOBEX = {"g1", "g2"}
QUERY = "globex secret malaria cancer plan"


def search(client: TestClient, flt: dict | None, tenant: str = "acme", **extra: object) -> dict:
    body = {"query": QUERY, "top_k": 100, **({"filter": flt} if flt is not None else {}), **extra}
    r = client.post("/search", json=body, headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict) -> set[str]:
    return {h["id"] for h in body["results"]}


def test_another_tenants_key_gets_only_that_tenants_data(client: TestClient):
    """A key is its tenant: each sees all of its own points and none of the other's."""
    assert ids(search(client, None, "acme")) == ACME
    assert ids(search(client, None, "globex")) == GLOBEX
    assert ids(search(client, None, "initech")) == set()  # no points of its own: nothing
    # nor can a request name another tenant than its key's
    for extra in ({"tenant": "globex"}, {"tenant_value": "globex"}):
        r = client.post("/search", json={"query": QUERY, **extra}, headers=auth("acme"))
        assert r.status_code == 422, r.text
    r = client.post(
        "/search",
        json={"query": QUERY, "top_k": 100},
        headers={**auth("acme"), "X-Querylift-Tenant": "globex", "X-Tenant": "globex"},
    )
    assert ids(r.json()) == ACME


@pytest.mark.parametrize(
    "match",
    [
        {"value": "globex"},
        {"any": ["globex"]},
        {"except": ["acme"]},
        {"text": "globex"},
    ],
)
def test_a_filter_on_the_tenant_field_with_another_value_is_empty(client: TestClient, match):
    """Not the other tenant's points: its value ANDed with the caller's matches nothing."""
    assert ids(search(client, {"must": [{"key": "tenant", "match": match}]})) == set()
    # the caller's own value changes nothing
    own = search(client, {"must": [{"key": "tenant", "match": {"value": "acme"}}]})
    assert ids(own) == ACME


TENANT_IS_GLOBEX = {"key": "tenant", "match": {"value": "globex"}}
TENANT_IS_ACME = {"key": "tenant", "match": {"value": "acme"}}
GLOBEX_POINTS = [point_id("globex", "g1"), point_id("globex", "g2")]


@pytest.mark.parametrize(
    "flt",
    [
        {"should": [TENANT_IS_GLOBEX]},
        {"should": [TENANT_IS_GLOBEX, TENANT_IS_ACME]},
        {"must_not": [TENANT_IS_ACME]},
        {"must_not": [{"must_not": [TENANT_IS_GLOBEX]}]},
        {"should": [{"must": [TENANT_IS_GLOBEX]}, {"must_not": [TENANT_IS_ACME]}]},
        {"must": [{"should": [{"must_not": [{"must": [TENANT_IS_ACME]}]}]}]},
        {"should": [{"is_empty": {"key": "tenant"}}]},
        {"should": [{"is_null": {"key": "tenant"}}]},
        {"must": [{"is_empty": {"key": "tenant"}}]},
        {"should": [{"is_empty": {"key": "nothing"}}]},
        {"must": [{"has_id": GLOBEX_POINTS}]},
        {"should": [{"has_id": GLOBEX_POINTS}, TENANT_IS_ACME]},
        {"min_should": {"conditions": [TENANT_IS_GLOBEX, TENANT_IS_ACME], "min_count": 1}},
        {"must": [{"key": "tenant", "match": {"any": ["globex", "acme"]}}]},
        {"must": [{"key": "tenant", "range": {"gte": None}}]},
        {"must": [{"nested": {"key": "tenant", "filter": {"must": [TENANT_IS_GLOBEX]}}}]},
    ],
)
def test_should_and_must_not_tricks_cannot_widen_the_filter(client: TestClient, flt: dict):
    r = client.post(
        "/search", json={"query": QUERY, "top_k": 100, "filter": flt}, headers=auth("acme")
    )
    if r.status_code == 422:  # refused as a filter: nothing returned at all
        assert r.json()["error"]["code"] in {"invalid_filter", "invalid_request"}
        return
    assert r.status_code == 200, r.text
    got = ids(r.json())
    assert got <= ACME, got
    assert all("tenant" not in (h["payload"] or {}) for h in r.json()["results"])


@pytest.mark.parametrize(
    "key",
    ["tenant[]", "payload.tenant", "tenant.value", '"tenant"', "TENANT", "tеnant", "tenant "],
)
def test_payload_key_injection_in_a_filter(client: TestClient, key: str):
    """Odd spellings of the tenant key (array form, nested paths, quoting, case, a Cyrillic
    lookalike) narrow like any other key: never toward another tenant's points."""
    for flt in (
        {"must": [{"key": key, "match": {"value": "globex"}}]},
        {"should": [{"key": key, "match": {"value": "globex"}}]},
        {"must_not": [{"key": key, "match": {"value": "acme"}}]},
    ):
        r = client.post(
            "/search", json={"query": QUERY, "top_k": 100, "filter": flt}, headers=auth("acme")
        )
        assert r.status_code in (200, 422), r.text
        if r.status_code == 200:
            assert ids(r.json()) <= ACME


def test_payload_key_injection_at_index_time(
    client: TestClient, gateway: QdrantGateway, document_encoder: Encoder
):
    """Documents whose own payload names a tenant (or a doc id) are still the indexing
    tenant's: the tenant field is written last, over any payload key of the same name."""
    sneaky = [
        Document(
            "x1",
            "globex secret malaria plan, planted",
            {"tenant": "globex", "doc_id": "g1", "payload": {"tenant": "globex"}},
        ),
    ]
    index_docs(gateway, document_encoder, "acme", sneaky)
    (point,) = gateway.retrieve("docs", [point_id("acme", "x1")])
    assert point.payload["tenant"] == "acme" and point.payload["doc_id"] == "x1"
    assert ids(search(client, None, "globex")) == GLOBEX  # globex does not see it
    assert "x1" in ids(search(client, None, "acme"))
    # and globex's own points were not touched
    got = gateway.retrieve("docs", GLOBEX_POINTS)
    assert {p.payload["tenant"] for p in got} == {"globex"}
    assert {p.payload["doc_id"] for p in got} == GLOBEX


def test_a_tenant_cannot_choose_an_adapter_not_even_anothers(
    client: TestClient, adapters_bound: dict[str, str]
):
    """ "An adapter id of another tenant": a tenant key never picks an adapter. Adapters are
    bound to tenants by the admin API only (tests/service/admin/test_admin.py: a tenant key is
    401 there); strict routes refuse the field, the OpenAI route ignores it as OpenAI ignores
    unknown fields, and every answer is the caller's own adapter."""
    theirs = adapters_bound["globex"]
    h = auth("acme")
    own = client.post("/embed", json={"input": ["malaria"]}, headers=h).json()
    assert own["adapter"]["id"] == adapters_bound["acme"]
    for field in ("adapter", "adapter_id", "adapter_version"):
        r = client.post("/embed", json={"input": ["malaria"], field: theirs}, headers=h)
        assert r.status_code == 422, r.text
        r = client.post("/search", json={"query": "malaria", field: theirs}, headers=h)
        assert r.status_code == 422, r.text
        r = client.post(
            "/v1/embeddings", json={"input": ["malaria"], "model": theirs, field: theirs}, headers=h
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(embeddings(r.json()), embeddings(own), atol=1e-6)
    # a search answers with the caller's adapter too
    assert search(client, None)["adapter"]["id"] == adapters_bound["acme"]
    # and the admin API, where adapters are bound, does not take a tenant key
    r = client.put("/admin/tenants/acme/adapter", json={"adapter_id": theirs}, headers=auth("acme"))
    assert r.status_code in (401, 404)
    again = client.post("/embed", json={"input": ["malaria"]}, headers=h).json()
    assert again["adapter"] == own["adapter"]


def test_tenants_cannot_be_configured_to_share_a_tenant_value(tmp_path: Path):
    """The filter isolates by value: two tenants with one value in one collection would see
    each other's points, so such a tenants file is refused at start."""
    path = tmp_path / "tenants.json"
    path.write_text(
        json.dumps(
            {
                "tenants": [
                    {"name": "acme", "api_keys_sha256": [hash_key("a")], "collection": "docs"},
                    {
                        "name": "mallory",
                        "api_keys_sha256": [hash_key("m")],
                        "collection": "docs",
                        "tenant_value": "acme",
                    },
                ]
            }
        )
    )
    with pytest.raises(ValueError, match="share a tenant_value"):
        TenantRegistry.from_file(path)
