"""/search's Qdrant-style parameters (offset, score_threshold, with_vectors): what each does,
its bounds in the one error shape, and tenant isolation under each (acme d1..d6 and globex
g1, g2 share collection `docs`; see tests/service/search/test_isolation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from querylift.indexing import point_id
from service.http.schemas import MAX_SEARCH_WINDOW
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import DOCS, ENGINES, auth

ACME = [d.id for d in DOCS]
GLOBEX = ["g1", "g2"]
QUERY = "globex secret malaria cancer plan"


def search(client: TestClient, tenant: str = "acme", **body: object) -> list[dict]:
    r = client.post("/search", json={"query": QUERY, **body}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r.json()["results"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The conformance suite: these parameters mean the same on every vector engine."""
    return str(request.param)


@pytest.fixture(params=[True, False], ids=["fast-path", "full-app"])
def any_client(request: pytest.FixtureRequest, make_client) -> TestClient:
    return make_client(fast_path=request.param)


def test_offset_pages_through_the_tenants_own_ranking(any_client: TestClient) -> None:
    whole = search(any_client, top_k=100)
    assert [h["id"] for h in whole] and {h["id"] for h in whole} == set(ACME)
    pages = [search(any_client, top_k=2, offset=o) for o in range(0, 8, 2)]
    paged = [h for page in pages for h in page]
    assert [h["id"] for h in paged] == [h["id"] for h in whole]
    assert [h["score"] for h in paged] == pytest.approx([h["score"] for h in whole])
    assert search(any_client, top_k=5, offset=6) == []  # past the tenant's own points
    # globex pages only ever reach globex's two points, however deep
    assert [h["id"] for o in range(4) for h in search(any_client, "globex", top_k=1, offset=o)] == (
        [h["id"] for h in search(any_client, "globex", top_k=10)]
    )
    assert {h["id"] for h in search(any_client, "globex", top_k=10)} == set(GLOBEX)


def test_score_threshold_cuts_the_list_and_never_widens_it(any_client: TestClient) -> None:
    whole = search(any_client, top_k=100)
    mid = len(whole) // 2  # halfway between two scores: no float32 tie at the boundary
    cut = (whole[mid - 1]["score"] + whole[mid]["score"]) / 2
    assert whole[mid - 1]["score"] > cut > whole[mid]["score"]
    kept = search(any_client, top_k=100, score_threshold=cut)
    assert [h["id"] for h in kept] == [h["id"] for h in whole[:mid]]
    assert search(any_client, top_k=100, score_threshold=1.01) == []
    # the loosest threshold still shows only the caller's points
    assert {h["id"] for h in search(any_client, top_k=100, score_threshold=-1)} == set(ACME)
    assert {h["id"] for h in search(any_client, "globex", top_k=100, score_threshold=-1)} == (
        set(GLOBEX)
    )
    assert search(any_client, "initech", top_k=100, score_threshold=-1) == []


def test_with_vectors_returns_the_stored_vectors_of_own_points_only(
    any_client: TestClient, gateway: QdrantGateway
) -> None:
    plain = search(any_client, top_k=3)
    assert all("vector" not in h for h in plain)  # absent unless asked for
    hits = search(any_client, top_k=100, with_vectors=True, with_payload=False)
    assert {h["id"] for h in hits} == set(ACME)
    stored = {
        p.id: p.vector
        for p in gateway.retrieve("docs", [point_id("acme", i) for i in ACME], with_vectors=True)
    }
    for h in hits:
        assert np.allclose(h["vector"], stored[point_id("acme", h["id"])], atol=1e-6)
    for h in search(any_client, "globex", top_k=100, with_vectors=True):
        assert h["id"] in GLOBEX and len(h["vector"]) == len(hits[0]["vector"])


@pytest.mark.parametrize(
    "body",
    [
        {"offset": -1},
        {"offset": MAX_SEARCH_WINDOW, "top_k": 1},
        {"offset": MAX_SEARCH_WINDOW - 5, "top_k": 10},
        {"offset": "2"},
        {"offset": 1.5},
        {"score_threshold": "0.5"},
        {"with_vectors": "yes"},
        {"with_vectors": 1},
    ],
)
def test_bad_search_parameters_are_422_in_the_one_shape(any_client: TestClient, body) -> None:
    r = any_client.post("/search", json={"query": QUERY, **body}, headers=auth("acme"))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]


def test_non_finite_threshold_is_refused(any_client: TestClient) -> None:
    """JSON has no NaN, but Python's json writes one: never passed on to Qdrant."""
    r = any_client.post(
        "/search",
        content=b'{"query": "x", "score_threshold": NaN}',
        headers={**auth("acme"), "content-type": "application/json"},
    )
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] in ("invalid_json", "invalid_request")


def test_the_deepest_page_is_allowed(any_client: TestClient) -> None:
    assert search(any_client, top_k=100, offset=MAX_SEARCH_WINDOW - 100) == []
    assert search(any_client, top_k=3, offset=1, score_threshold=-1, with_vectors=True)
