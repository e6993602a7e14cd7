"""Collections indexed at a Matryoshka prefix (issue 16, part 4).

A collection may hold the first N values of the document model's vectors, renormalised
(`querylift index --dim N` records N in its metadata; a collection made by other code is
declared with the tenant's `dim` or QUERYLIFT_VECTOR_DIM). Every vector served to such a
tenant, adapted, the document encoder's own or a document's, is that prefix, renormalised; a
tenant of a full-size collection keeps full vectors. The raw-vector cache keeps rows whole (in
each tenant's own partition): the cut comes after it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from qdrant_client import models
from typer.testing import CliRunner

from adapters.store import AdapterStore
from encoders import Encoder
from encoders.matryoshka import truncate
from querylift.indexing import collection_metadata, index_documents, point_id
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import CollectionNotFound, QdrantGateway, VectorInfo
from tests.conftest import (
    ADMIN,
    DOCS,
    admin_headers,
    auth,
    close_engine,
    index_docs,
    make_linear,
    open_engine,
    write_tenants,
)
from training.data import Document

GLOBEX_DOCS = [
    Document("g1", "globex malaria mosquito plan for children", {"topic": "malaria"}),
    Document("g2", "globex cancer risk study", {"topic": "cancer"}),
    Document("g3", "globex vitamin and the immune response", {"topic": "immune"}),
]
INITECH_DOCS = [
    Document("i1", "initech heart and blood pressure in mice", {"topic": "heart"}),
    Document("i2", "initech malaria parasite treatment", {"topic": "malaria"}),
]
TEXTS = ["what causes malaria in children", "the heart of the matter"]


def vectors(r: Any) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


# the admin token, so /readyz's detail (reasons and warnings in words) can be read
WITH_ADMIN: dict[str, Any] = {"admin_token": SecretStr(ADMIN)}


def readyz_detail(client: TestClient, status: int) -> dict[str, Any]:
    """/readyz as the operator reads it (the admin token); the open answer has the same status
    and only the search targets' state."""
    open_answer = client.get("/readyz")
    assert open_answer.status_code == status, open_answer.text
    state = open_answer.json()["checks"]["search_targets"]
    assert state == ("ok" if status == 200 else "failing"), open_answer.text
    r = client.get("/readyz", headers=admin_headers())
    assert r.status_code == status, r.text
    return dict(r.json())


def targets_check(client: TestClient) -> str:
    """/readyz's verdict on the search targets ("ok", or every problem in words)."""
    return str(client.get("/readyz", headers=admin_headers()).json()["checks"]["search_targets"])


def prefix_of(document_encoder: Encoder) -> int:
    return document_encoder.dim // 2


def stored(gw: QdrantGateway, collection: str) -> dict[str, np.ndarray]:
    points = list(gw.scroll(collection, with_vectors=True))
    return {p.payload["doc_id"]: np.asarray(p.vector, dtype=np.float32) for p in points}


def direct(
    gw: QdrantGateway, collection: str, vector: np.ndarray, tenant: str | None, limit: int = 10
) -> list[models.ScoredPoint]:
    flt = None
    if tenant is not None:
        flt = models.Filter(
            must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
        )
    return gw.query(collection, vector.tolist(), flt=flt, limit=limit)


def assert_search_is_direct(
    client: TestClient,
    gw: QdrantGateway,
    tenant: str,
    collection: str,
    vector: np.ndarray,
    scoped: bool = True,
    id_of: Callable[[models.ScoredPoint], str] = lambda p: str(p.payload["doc_id"]),
) -> list[str]:
    r = client.post("/search", json={"query": TEXTS[0], "top_k": 10}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = direct(gw, collection, vector, tenant if scoped else None)
    assert len(got) == len(want) > 0
    assert [h["id"] for h in got] == [id_of(p) for p in want]
    np.testing.assert_allclose([h["score"] for h in got], [p.score for p in want], atol=1e-5)
    return [h["id"] for h in got]


# -- the cut itself -------------------------------------------------------------------------------
def test_truncate_keeps_the_prefix_direction_at_unit_length() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 12)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    before = x.copy()
    y = truncate(x, 4)
    assert y.shape == (5, 4) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(y * np.linalg.norm(x[:, :4], axis=1, keepdims=True), x[:, :4])
    assert np.array_equal(x, before)  # the input (a cached row) is never touched
    np.testing.assert_allclose(truncate(x[0], 4), y[0])  # one vector too
    assert np.array_equal(truncate(np.zeros((1, 6)), 3), np.zeros((1, 3)))  # never NaN
    for bad in (0, 13):
        with pytest.raises(ValueError, match="prefix size"):
            truncate(x, bad)


# -- indexing ----------------------------------------------------------------------------------
def test_index_at_a_prefix_writes_cut_vectors_and_records_the_size(
    document_encoder: Encoder, engine: str
) -> None:
    n = prefix_of(document_encoder)
    gw = open_engine(engine)
    index_docs(gw, document_encoder, "acme", DOCS, "small", dim=n)
    info = gw.collection_info("small", refresh=True)
    assert info.dim == n
    meta = info.metadata["querylift"]
    assert (meta["dim"], meta["full_dim"]) == (n, document_encoder.dim)
    assert meta["document_model"] == document_encoder.name
    full = document_encoder.encode([d.text for d in DOCS], "document").vectors
    want = truncate(full, n)
    got = stored(gw, "small")
    for i, d in enumerate(DOCS):
        np.testing.assert_allclose(got[d.id], want[i], atol=1e-5)
        assert abs(float(np.linalg.norm(got[d.id])) - 1.0) < 1e-5
    # precomputed full vectors are cut the same way
    index_documents(
        gw,
        document_encoder,
        DOCS[:2],
        collection="small",
        tenant_field="tenant",
        tenant_value="globex",
        progress=False,
        vectors=full[:2],
        dim=n,
    )
    assert gw.count("small") == len(DOCS) + 2
    # re-indexing at the same size updates in place; another size is refused before writing
    index_docs(gw, document_encoder, "acme", DOCS, "small", dim=n)
    assert gw.count("small") == len(DOCS) + 2
    for other, how in ((n // 2, f"with --dim {n}"), (None, f"with --dim {n}")):
        with pytest.raises(ValueError, match=f"indexed at {n} dimensions.*{how}"):
            index_docs(gw, document_encoder, "initech", INITECH_DOCS, "small", dim=other)
    assert gw.count("small") == len(DOCS) + 2
    # and a full-size collection refuses a prefix the same way
    index_docs(gw, document_encoder, "acme", DOCS, "full", dim=None)
    assert gw.collection_info("full").metadata["querylift"]["dim"] == document_encoder.dim
    with pytest.raises(ValueError, match="re-index it without --dim"):
        index_docs(gw, document_encoder, "acme", DOCS, "full", dim=n)
    for bad in (0, -1, document_encoder.dim, document_encoder.dim + 1):
        with pytest.raises(ValueError, match="a prefix of the document encoder's"):
            index_docs(gw, document_encoder, "acme", DOCS, "other", dim=bad)
    with pytest.raises(CollectionNotFound):
        gw.collection_info("other", refresh=True)
    close_engine(gw)


def test_cli_index_dim(tmp_path: Path, cli_env: Callable[..., None]) -> None:
    from querylift.cli import app as cli

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in DOCS))
    qpath = tmp_path / "qdrant"
    cli_env(qdrant_path=qpath)
    run = CliRunner()
    ok = run.invoke(cli, ["index", str(corpus), "--collection", "small", "--dim", "8"])
    assert ok.exit_code == 0, ok.output
    assert "into 'small' at 8 of 32 dims" in ok.output
    for bad in ("0", "32", "40"):
        r = run.invoke(cli, ["index", str(corpus), "--collection", "x", "--dim", bad])
        assert r.exit_code == 2, r.output
        assert "--dim" in r.output and "Invalid value" in r.output, r.output
    again = run.invoke(cli, ["index", str(corpus), "--collection", "small", "--dim", "4"])
    assert again.exit_code == 2
    assert "indexed at 8 dimensions" in again.output, again.output
    gw = QdrantGateway(path=str(qpath))
    try:
        info = gw.collection_info("small")
        assert info.dim == 8
        assert info.metadata["querylift"]["dim"] == 8
        with pytest.raises(CollectionNotFound):
            gw.collection_info("x")
        points = list(gw.scroll("small", with_vectors=True))
        assert len(points) == len(DOCS)
        assert all(abs(float(np.linalg.norm(p.vector)) - 1.0) < 1e-5 for p in points)
    finally:
        gw.close()


# -- serving: a full-size tenant and two prefix tenants, side by side ---------------------------
@pytest.fixture
def mixed(
    tmp_path: Path,
    gateway: QdrantGateway,
    document_encoder: Encoder,
    make_client: Callable[..., TestClient],
) -> TestClient:
    """acme: collection `docs` at full size (adapter); globex (adapter) and initech (none):
    collection `small`, indexed at half the size by `querylift index --dim`."""
    n = prefix_of(document_encoder)
    index_docs(gateway, document_encoder, "globex", GLOBEX_DOCS, "small", dim=n)
    index_docs(gateway, document_encoder, "initech", INITECH_DOCS, "small", dim=n)
    path = write_tenants(
        tmp_path / "mixed.json",
        [
            {"name": "acme", "collection": "docs"},
            {"name": "globex", "collection": "small"},
            {"name": "initech", "collection": "small"},
        ],
    )
    return make_client(tenants_file=path, **WITH_ADMIN)


def reference(
    client: TestClient, tenant: str, texts: list[str], q: Encoder, d: Encoder, kind: str
) -> np.ndarray:
    """The tenant's full-size vectors, computed outside the request path."""
    if kind == "document":
        return d.encode(texts, "document").vectors
    active = client.app.state.runtime.active_adapter(tenant)
    if active is None:
        return d.encode(texts, "query").vectors
    return active.adapter.apply(q.encode(texts, "query").vectors)


@pytest.mark.parametrize("kind", ["query", "document"])
def test_each_tenant_is_served_its_collections_size(
    mixed: TestClient, query_encoder: Encoder, document_encoder: Encoder, kind: str
) -> None:
    assert targets_check(mixed) == "ok"
    full, n = document_encoder.dim, prefix_of(document_encoder)
    for tenant, size in (("acme", full), ("globex", n), ("initech", n)):
        want = reference(mixed, tenant, TEXTS, query_encoder, document_encoder, kind)
        assert want.shape[1] == full
        if size < full:
            want = truncate(want, size)
        body = {"input": TEXTS, "input_type": kind}
        got = vectors(mixed.post("/embed", json=body, headers=auth(tenant)))
        assert got.shape == (len(TEXTS), size), tenant
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, want, atol=1e-5)
        oa = mixed.post("/v1/embeddings", json=body, headers=auth(tenant))
        np.testing.assert_allclose(vectors(oa), got, atol=1e-6)
        b64 = mixed.post(
            "/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=auth(tenant)
        )
        assert b64.status_code == 200, b64.text
        raw = base64.b64decode(b64.json()["data"][0]["embedding"])
        assert np.frombuffer(raw, dtype="<f4").shape == (size,)
        assert mixed.get("/info", headers=auth(tenant)).json()["tenant"]["dim"] == size


def test_dimensions_is_accepted_at_the_tenants_size_only(
    mixed: TestClient, document_encoder: Encoder
) -> None:
    full, n = document_encoder.dim, prefix_of(document_encoder)
    for tenant, size, other in (("acme", full, n), ("globex", n, full), ("initech", n, full)):
        ok = mixed.post(
            "/v1/embeddings", json={"input": "x", "dimensions": size}, headers=auth(tenant)
        )
        assert vectors(ok).shape == (1, size)
        for wrong in (other, size - 1):
            r = mixed.post(
                "/v1/embeddings", json={"input": "x", "dimensions": wrong}, headers=auth(tenant)
            )
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "unsupported_dimensions"
            assert err["details"] == {"dimensions": size, "requested": wrong}
            assert f"{size}-d" in err["message"] and f"must be {size}" in err["message"]


def test_search_on_a_prefix_collection_is_a_direct_query_with_the_cut_vector(
    mixed: TestClient, gateway: QdrantGateway, document_encoder: Encoder
) -> None:
    n = prefix_of(document_encoder)
    for tenant, collection in (("acme", "docs"), ("globex", "small"), ("initech", "small")):
        vec = vectors(mixed.post("/embed", json={"input": TEXTS[0]}, headers=auth(tenant)))[0]
        assert vec.shape == ((n,) if collection == "small" else (document_encoder.dim,))
        ids = assert_search_is_direct(mixed, gateway, tenant, collection, vec)
        # isolation: only the tenant's own points, whatever it asks
        own = {
            "acme": {d.id for d in DOCS},
            "globex": {d.id for d in GLOBEX_DOCS},
            "initech": {d.id for d in INITECH_DOCS},
        }[tenant]
        assert set(ids) <= own
        everything = mixed.post(
            "/search", json={"query": TEXTS[0], "top_k": 100}, headers=auth(tenant)
        ).json()["results"]
        assert {h["id"] for h in everything} == own
        for other in {"acme", "globex", "initech"} - {tenant}:
            steal = {"must": [{"key": "tenant", "match": {"value": other}}]}
            r = mixed.post(
                "/search",
                json={"query": TEXTS[0], "top_k": 100, "filter": steal},
                headers=auth(tenant),
            )
            assert r.status_code == 200 and r.json()["results"] == [], r.text


def test_the_raw_vector_cache_is_cut_after_and_kept_per_tenant(
    tmp_path: Path,
    gateway: QdrantGateway,
    document_encoder: Encoder,
    store: AdapterStore,
    adapters_bound: dict[str, str],
    make_client: Callable[..., TestClient],
) -> None:
    """acme (full size) and globex (a prefix) with the same adapter: each starts from the query
    encoder's raw vector in its own cache partition, kept whole, so globex's repeat is a hit and
    is the cut of acme's vector for the same text, though each computed it through its own
    miss (one tenant never hits another's entry)."""
    n = prefix_of(document_encoder)
    index_docs(gateway, document_encoder, "globex", GLOBEX_DOCS, "small", dim=n)
    store.activate("globex", adapters_bound["acme"])
    path = write_tenants(
        tmp_path / "t.json",
        [{"name": "acme", "collection": "docs"}, {"name": "globex", "collection": "small"}],
    )
    client = make_client(tenants_file=path)
    text = "a question nobody asked before"

    def embed(tenant: str, cache: str) -> np.ndarray:
        r = client.post("/embed", json={"input": text}, headers=auth(tenant))
        assert r.headers["x-query-cache"] == cache, tenant
        return vectors(r)

    first = embed("globex", "miss")
    assert first.shape == (1, n)
    acme = embed("acme", "miss")  # its own partition: globex's entry is not its to hit
    assert acme.shape == (1, document_encoder.dim)
    np.testing.assert_array_equal(embed("acme", "hit"), acme)
    again = embed("globex", "hit")  # the cached row is whole: adapted, then cut
    np.testing.assert_array_equal(again, first)
    np.testing.assert_allclose(again, truncate(acme, n), atol=1e-6)


def test_the_fallback_is_cut_too(
    tmp_path: Path,
    gateway: QdrantGateway,
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = prefix_of(document_encoder)
    index_docs(gateway, document_encoder, "globex", GLOBEX_DOCS, "small", dim=n)
    path = write_tenants(tmp_path / "t.json", [{"name": "globex", "collection": "small"}])
    client = make_client(tenants_file=path, encoder_fallback=True)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("engine died")

    monkeypatch.setattr(query_encoder, "encode_tokenized", broken)
    r = client.post("/embed", json={"input": TEXTS}, headers=auth("globex"))
    assert "x-querylift-degraded" in r.headers
    want = truncate(document_encoder.encode(TEXTS, "query").vectors, n)
    np.testing.assert_allclose(vectors(r), want, atol=1e-5)


def test_an_adapter_is_validated_against_the_served_prefix(
    tmp_path: Path,
    gateway: QdrantGateway,
    query_encoder: Encoder,
    document_encoder: Encoder,
    make_client: Callable[..., TestClient],
) -> None:
    """An adapter outputs the document encoder's full size; for a prefix tenant what must fit
    the collection is the prefix it is cut to."""
    n, full = prefix_of(document_encoder), document_encoder.dim
    index_docs(gateway, document_encoder, "globex", GLOBEX_DOCS, "small", dim=n)
    path = write_tenants(
        tmp_path / "t.json",
        [
            {"name": "globex", "collection": "small"},
            {"name": "initech", "collection": "small", "dim": n // 2},
        ],
    )
    client = make_client(tenants_file=path, admin_token=SecretStr("admin-secret"))
    admin = {"Authorization": "Bearer admin-secret"}
    tensors, manifest = make_linear(query_encoder, document_encoder, 30)
    files = {
        "adapter.safetensors": ("adapter.safetensors", tensors, "application/octet-stream"),
        "manifest.json": ("manifest.json", manifest, "application/json"),
    }
    adapter_id = client.post("/admin/adapters", files=files, headers=admin).json()["id"]
    ok = client.put("/admin/tenants/globex/adapter", json={"adapter_id": adapter_id}, headers=admin)
    assert ok.status_code == 200, ok.text
    r = client.post("/embed", json={"input": TEXTS}, headers=auth("globex"))
    assert r.json()["adapter"]["id"] == adapter_id
    want = reference(client, "globex", TEXTS, query_encoder, document_encoder, "query")
    np.testing.assert_allclose(vectors(r), truncate(want, n), atol=1e-5)
    refused = client.put(
        "/admin/tenants/initech/adapter", json={"adapter_id": adapter_id}, headers=admin
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["details"]["reasons"] == [
        f"collection 'small' vector size {n} != the tenant's served prefix {n // 2} (of the "
        f"document encoder's {full})"
    ]


# -- collections querylift did not make -----------------------------------------------------------
def foreign(gw: QdrantGateway, name: str, vecs: np.ndarray) -> None:
    """Your own code's collection, at some size, with no querylift metadata."""
    gw.create_collection(name, {"": VectorInfo(vecs.shape[1], "Cosine")}, tenant_field="tenant")
    gw.upsert(
        name,
        [
            models.PointStruct(id=i, vector=v.tolist(), payload={"doc_id": d.id, "tenant": "acme"})
            for i, (d, v) in enumerate(zip(DOCS, vecs, strict=True))
        ],
    )


def test_a_smaller_foreign_collection_needs_its_dim_declared(
    tmp_path: Path,
    gateway: QdrantGateway,
    document_encoder: Encoder,
    make_client: Callable[..., TestClient],
) -> None:
    n = prefix_of(document_encoder)
    full = document_encoder.encode([d.text for d in DOCS], "document").vectors
    foreign(gateway, "own", truncate(full, n))
    undeclared = write_tenants(tmp_path / "a.json", [{"name": "acme", "collection": "own"}])
    client = make_client(tenants_file=undeclared, **WITH_ADMIN)
    why = readyz_detail(client, 503)["checks"]["search_targets"]
    assert f"its vectors are {n}-d; the served vectors are {document_encoder.dim}-d" in why
    assert f"`dim: {n}`" in why and "tenants file" in why, why
    s = client.post("/search", json={"query": TEXTS[0]}, headers=auth("acme"))
    assert s.status_code == 409 and f"`dim: {n}`" in s.json()["error"]["message"], s.text
    # declared in the tenants file: served at that size
    declared = write_tenants(tmp_path / "b.json", [{"name": "acme", "collection": "own", "dim": n}])
    client = make_client(tenants_file=declared, **WITH_ADMIN)
    assert targets_check(client) == "ok"
    vec = vectors(client.post("/embed", json={"input": TEXTS[0]}, headers=auth("acme")))[0]
    assert vec.shape == (n,)
    assert_search_is_direct(client, gateway, "acme", "own", vec)
    # or for every tenant at once: QUERYLIFT_VECTOR_DIM
    client = make_client(tenants_file=undeclared, vector_dim=n, **WITH_ADMIN)
    assert targets_check(client) == "ok"
    assert vectors(client.post("/embed", json={"input": "x"}, headers=auth("acme"))).shape == (
        1,
        n,
    )


def test_a_larger_collection_or_a_too_large_dim_stays_a_problem(
    tmp_path: Path,
    gateway: QdrantGateway,
    query_encoder: Encoder,
    document_encoder: Encoder,
    settings: Settings,
    make_client: Callable[..., TestClient],
) -> None:
    full = document_encoder.encode([d.text for d in DOCS], "document").vectors
    big = np.concatenate([full, full], axis=1) / np.sqrt(2)
    foreign(gateway, "big", big)
    path = write_tenants(tmp_path / "a.json", [{"name": "acme", "collection": "big"}])
    client = make_client(tenants_file=path, **WITH_ADMIN)
    why = readyz_detail(client, 503)["checks"]["search_targets"]
    assert f"its vectors are {2 * full.shape[1]}-d" in why and "dim:" not in why, why
    # a declared prefix larger than the vector: refused at start
    path = write_tenants(
        tmp_path / "b.json", [{"name": "acme", "collection": "big", "dim": 2 * full.shape[1]}]
    )
    app = create_app(
        settings.model_copy(update={"tenants_file": path}),
        query_encoder=query_encoder,
        document_encoder=document_encoder,
        gateway=gateway,
    )
    too_large = f"dim {2 * full.shape[1]} is larger than the document encoder's"
    with pytest.raises(ValueError, match=too_large), TestClient(app):
        pass


def test_a_declared_dim_must_match_the_collection(
    tmp_path: Path,
    gateway: QdrantGateway,
    document_encoder: Encoder,
    make_client: Callable[..., TestClient],
) -> None:
    """The declaration wins over what `querylift index` recorded, and says so when they differ."""
    n = prefix_of(document_encoder)
    index_docs(gateway, document_encoder, "acme", DOCS, "small", dim=n)
    path = write_tenants(
        tmp_path / "a.json", [{"name": "acme", "collection": "small", "dim": n // 2}]
    )
    client = make_client(tenants_file=path, **WITH_ADMIN)
    why = readyz_detail(client, 503)["checks"]["search_targets"]
    assert f"its vectors are {n}-d; the served vectors are {n // 2}-d (the declared dim)" in why
    assert f"dim {n // 2}" in why  # the target's description names it


def test_a_collection_indexed_at_a_prefix_while_serving(
    tmp_path: Path,
    gateway: QdrantGateway,
    document_encoder: Encoder,
    make_client: Callable[..., TestClient],
) -> None:
    """No collection at start (full size assumed); `querylift index --dim` makes it; the first
    /search after it learns the size, and every vector from then on is the prefix."""
    n = prefix_of(document_encoder)
    path = write_tenants(tmp_path / "a.json", [{"name": "globex", "collection": "late"}])
    client = make_client(tenants_file=path, **WITH_ADMIN)
    ready = readyz_detail(client, 200)
    assert ready["checks"]["search_targets"] == "ok"
    assert "does not exist yet" in " ".join(ready["warnings"])
    before = vectors(client.post("/embed", json={"input": TEXTS[0]}, headers=auth("globex")))[0]
    assert before.shape == (document_encoder.dim,)
    # `querylift index --dim` in another process: the collection appears without this
    # replica's gateway looking it up
    cut = truncate(document_encoder.encode([d.text for d in GLOBEX_DOCS], "document").vectors, n)
    gateway.backend.create_collection(
        "late", {"": VectorInfo(n, "Cosine")}, collection_metadata(document_encoder, n)
    )
    gateway.backend.upsert(
        "late",
        [
            models.PointStruct(
                id=point_id("globex", d.id),
                vector=v.tolist(),
                payload={"doc_id": d.id, "text": d.text, "tenant": "globex"},
            )
            for d, v in zip(GLOBEX_DOCS, cut, strict=True)
        ],
    )
    assert gateway.known_info("late") is None
    # the query vector was cut at search time: the same answer as the prefix of `before`
    assert_search_is_direct(client, gateway, "globex", "late", truncate(before, n))
    after = vectors(client.post("/embed", json={"input": TEXTS[0]}, headers=auth("globex")))[0]
    np.testing.assert_allclose(after, truncate(before, n), atol=1e-6)


def test_a_tenant_of_a_full_collection_is_unchanged(
    client: TestClient, query_encoder: Encoder, document_encoder: Encoder
) -> None:
    """The default layout (every test elsewhere): no prefix, no cut, the same vectors."""
    runtime = client.app.state.runtime
    assert all(runtime.served_dim(t) == document_encoder.dim for t in ("acme", "initech"))
    got = vectors(client.post("/embed", json={"input": TEXTS}, headers=auth("acme")))
    want = reference(client, "acme", TEXTS, query_encoder, document_encoder, "query")
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_doctor_says_how_to_declare_a_prefix(
    tmp_path: Path, document_encoder: Encoder, cli_env: Callable[..., None]
) -> None:
    from querylift.cli import app as cli

    n = prefix_of(document_encoder)
    qpath = tmp_path / "qdrant"
    gw = QdrantGateway(path=str(qpath))
    foreign(
        gw, "own", truncate(document_encoder.encode([d.text for d in DOCS], "document").vectors, n)
    )
    gw.close()
    cli_env(
        qdrant_path=qpath, collection="own", dev_tenant="acme", adapter_store=tmp_path / "adapters"
    )
    bad = CliRunner().invoke(cli, ["doctor"])
    assert bad.exit_code == 1, bad.output
    assert "[FAIL] tenant 'acme': collection 'own'" in bad.output
    assert f"`dim: {n}`" in bad.output and f"QUERYLIFT_VECTOR_DIM={n}" in bad.output
    cli_env(vector_dim=n)
    good = CliRunner().invoke(cli, ["doctor"])
    assert good.exit_code == 0, good.output
    assert (
        f"[ok  ] tenant 'acme': collection 'own', unnamed vector, tenant == 'acme', dim {n}: ok"
        in (good.output)
    )
