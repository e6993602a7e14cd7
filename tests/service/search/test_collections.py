"""Collections querylift did not make: built by LangChain's and LlamaIndex's own vector stores
(the libraries themselves, installed in the test environment) and by plain qdrant-client code.

Each is searched misconfigured first (the service must say what is wrong: /readyz not ready,
/search a 409 naming the problem, never an empty 200), then configured, where /search must
answer exactly what a direct qdrant-client query with /embed's vector answers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from qdrant_client import QdrantClient, models
from typer.testing import CliRunner

from encoders import Encoder
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from service.search.targets import SearchTarget
from tests.conftest import (
    ADMIN,
    DOCS,
    admin_headers,
    auth,
    close_engine,
    open_engine,
    write_tenants,
)

TEXTS = [d.text for d in DOCS] + [
    "globex secret malaria mosquito plan",
    "brain drug study in women and men",
]
QUERY = "what causes malaria in children"


class Embedded:
    """A LangChain `Embeddings` (and plain callable) over the tests' document encoder."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encoder.encode(texts, "document").vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encoder.encode([text], "query").vectors[0].tolist()


@pytest.fixture
def qpath(tmp_path: Path) -> Path:
    return tmp_path / "qdrant"


def on_engine(engine: str, qpath: Path, fields: set[str]) -> QdrantGateway:
    """The collections the libraries wrote into the local-mode folder `qpath`, on `engine`:
    Edge after `querylift migrate-embedded`'s copy (the tenant fields indexed), a server after
    the same copy, or the folder itself in local mode."""
    from querylift.migrate import copy_collection, migrate_folder
    from service.search.embedded_folder import is_legacy

    if engine == "edge":
        if is_legacy(qpath):
            migrate_folder(qpath, tenant_fields=fields, progress=False)
            shutil.rmtree(qpath.with_name(qpath.name + ".local-mode"))
        return QdrantGateway(path=str(qpath))
    if engine == "local-mode":
        return open_engine("local-mode", qpath)
    gw = open_engine("server")
    local = open_engine("local-mode", qpath)
    try:
        for c in local.backend.client.get_collections().collections:  # type: ignore[attr-defined]
            copy_collection(local, gw, c.name, fields)
    finally:
        local.close()
    return gw


def tenant_fields(update: dict[str, Any]) -> set[str]:
    fields = {str(update.get("tenant_field", "tenant"))}
    if (path := update.get("tenants_file")) is not None:
        fields |= {t.get("tenant_field", "tenant") for t in json.loads(path.read_text())["tenants"]}
    return fields


@pytest.fixture
def serve_on(
    qpath: Path, tmp_path: Path, query_encoder: Encoder, document_encoder: Encoder, engine: str
) -> Iterator[Callable[..., TestClient]]:
    """An app over the collections in `qpath` on `engine` (dev mode unless a tenants file is
    given), restarted with other settings on each call; each app and its gateway is closed
    before the next opens the folder."""
    opened: list[tuple[TestClient, QdrantGateway]] = []

    def start(**update: Any) -> TestClient:
        for c, gw in opened:
            c.__exit__(None, None, None)
            close_engine(gw)
        opened.clear()
        gw = on_engine(engine, qpath, tenant_fields(update))
        settings = Settings(
            adapter_store=tmp_path / "adapters",
            qdrant_path=qpath,
            **{"admin_token": SecretStr(ADMIN), **update},
        )
        app = create_app(
            settings, query_encoder=query_encoder, document_encoder=document_encoder, gateway=gw
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append((client, gw))
        return client

    yield start
    for c, gw in opened:
        c.__exit__(None, None, None)
        close_engine(gw)


def embed(client: TestClient, text: str, headers: dict[str, str] | None = None) -> list[float]:
    r = client.post("/embed", json={"input": text}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["embedding"]


def direct(
    client: TestClient,
    collection: str,
    vector: list[float],
    using: str | None = None,
    flt: models.Filter | None = None,
    limit: int = 10,
) -> list[models.ScoredPoint]:
    """The same search straight to the app's engine, with no tenant scope but `flt`."""
    gw: QdrantGateway = client.app.state.runtime.gateway
    return gw.query(collection, vector, using=using, flt=flt, limit=limit)


def search(client: TestClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post("/search", json={"query": QUERY, "top_k": 10, **body}, headers=headers)


def assert_not_ready(client: TestClient, *needles: str) -> str:
    """/readyz is 503 on the search targets; the admin's detail says each of `needles`."""
    r = client.get("/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["checks"]["search_targets"] == "failing", r.text  # the open answer
    r = client.get("/readyz", headers=admin_headers())
    assert r.status_code == 503, r.text
    why = r.json()["checks"]["search_targets"]
    for needle in needles:
        assert needle in why, why
    return why


def assert_same_as_direct(
    client: TestClient,
    collection: str,
    using: str | None = None,
    flt: models.Filter | None = None,
    headers: dict[str, str] | None = None,
    ids: Callable[[models.ScoredPoint], str] = lambda p: str(p.id),
    drop: str | None = None,
) -> list[dict[str, Any]]:
    r = search(client, headers)
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = direct(client, collection, embed(client, QUERY, headers), using, flt)
    assert len(got) == len(want) > 0
    assert [h["id"] for h in got] == [ids(p) for p in want]
    np.testing.assert_allclose([h["score"] for h in got], [p.score for p in want], atol=1e-5)
    for h, p in zip(got, want, strict=True):
        stored = dict(p.payload or {})
        if drop is not None:
            stored.pop(drop, None)
        assert h["payload"] == stored
    return got


# -- LangChain ---------------------------------------------------------------------------------
def langchain_collection(path: Path, encoder: Encoder, name: str, vector_name: str = "") -> None:
    """Built by langchain-qdrant itself (QdrantVectorStore.from_texts: payload `page_content`
    + `metadata`, uuid point ids, the vector unnamed unless `vector_name`)."""
    lc = pytest.importorskip("langchain_qdrant", reason="pip install '.[layouts]'")

    store = lc.QdrantVectorStore.from_texts(
        TEXTS,
        Embedded(encoder),  # type: ignore[arg-type]
        metadatas=[{"source": f"doc-{i}", "n": i} for i in range(len(TEXTS))],
        collection_name=name,
        path=str(path),
        vector_name=vector_name,
    )
    store.client.close()


def test_langchain_single_vector_without_a_tenant_field(
    qpath: Path, document_encoder: Encoder, serve_on: Callable[..., TestClient]
) -> None:
    langchain_collection(qpath, document_encoder, "lc")
    # as the service comes out of the box: its tenant field is in no point of the collection
    client = serve_on(collection="lc")
    assert_not_ready(
        client,
        "tenant 'default'",
        "collection 'lc'",
        f"none of the collection's {len(TEXTS)} points has payload tenant == 'default'",
    )
    r = search(client)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "search_target_invalid" and "tenant == 'default'" in err["message"]
    assert err["details"]["collection"] == "lc"
    # configured: the tenant owns the collection, ids are point ids
    client = serve_on(collection="lc", tenant_scope="collection", id_source="point")
    assert client.get("/readyz").status_code == 200
    got = assert_same_as_direct(client, "lc")
    assert set(got[0]["payload"]) == {"page_content", "metadata"}
    target = client.app.state.runtime.targets["default"]
    assert target.text(got[0]["payload"]) in TEXTS


def test_langchain_named_dense_vector(
    qpath: Path, document_encoder: Encoder, serve_on: Callable[..., TestClient]
) -> None:
    langchain_collection(qpath, document_encoder, "lcn", vector_name="dense")
    client = serve_on(collection="lcn", tenant_scope="collection", id_source="point")
    assert_not_ready(
        client, "collection 'lcn'", "the collection has named vectors ('dense')", "`vector`"
    )
    r = search(client)
    assert r.status_code == 409 and "'dense'" in r.json()["error"]["message"], r.text
    client = serve_on(
        collection="lcn", tenant_scope="collection", id_source="point", vector_name="sparse"
    )
    assert_not_ready(client, "no dense vector named 'sparse'")
    client = serve_on(
        collection="lcn", tenant_scope="collection", id_source="point", vector_name="dense"
    )
    assert client.get("/readyz").status_code == 200
    assert_same_as_direct(client, "lcn", using="dense")


# -- LlamaIndex --------------------------------------------------------------------------------
def sparse_fn(texts: list[str]) -> tuple[list[list[int]], list[list[float]]]:
    """A bag-of-words sparse encoder (LlamaIndex's hybrid mode without a model download)."""
    indices, values = [], []
    for t in texts:
        counts: dict[int, float] = {}
        for w in t.lower().split():
            counts[hash(w) % 50_000] = counts.get(hash(w) % 50_000, 0.0) + 1.0
        indices.append(list(counts))
        values.append(list(counts.values()))
    return indices, values


def llamaindex_collection(path: Path, encoder: Encoder, name: str, hybrid: bool) -> list[str]:
    """Built by llama-index-vector-stores-qdrant itself: nodes with their embeddings, the
    metadata (here a `tenant` key) flattened into the payload beside `_node_content`,
    `doc_id`, `ref_doc_id`; hybrid mode names the dense vector `text-dense`."""
    li = pytest.importorskip("llama_index.vector_stores.qdrant", reason="pip install '.[layouts]'")
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    vectors = encoder.encode(TEXTS, "document").vectors
    nodes = []
    for i, (text, vec) in enumerate(zip(TEXTS, vectors, strict=True)):
        node = TextNode(
            text=text,
            embedding=vec.tolist(),
            metadata={"tenant": "acme" if i % 2 == 0 else "globex", "n": i},
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"source-{i // 2}")
        nodes.append(node)
    qc = QdrantClient(path=str(path))
    store = li.QdrantVectorStore(
        collection_name=name,
        client=qc,
        enable_hybrid=hybrid,
        sparse_doc_fn=sparse_fn if hybrid else None,
        sparse_query_fn=sparse_fn if hybrid else None,
    )
    ids = store.add(nodes)
    qc.close()
    return ids


@pytest.mark.parametrize("hybrid", [False, True], ids=["dense", "hybrid"])
def test_llamaindex_layout_two_tenants_by_their_metadata(
    qpath: Path,
    tmp_path: Path,
    document_encoder: Encoder,
    serve_on: Callable[..., TestClient],
    hybrid: bool,
) -> None:
    node_ids = llamaindex_collection(qpath, document_encoder, "li", hybrid)
    extra = {"vector": "text-dense"} if hybrid else {}
    rows = [
        {"name": n, "collection": "li", "id_source": "point", **extra} for n in ("acme", "globex")
    ]
    client = serve_on(tenants_file=write_tenants(tmp_path / "tenants.json", rows))
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    for tenant in ("acme", "globex"):
        flt = models.Filter(
            must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
        )
        got = assert_same_as_direct(
            client,
            "li",
            using="text-dense" if hybrid else None,
            flt=flt,
            headers=auth(tenant),
            drop="tenant",  # the tenant's own scope key is not echoed back
        )
        assert {h["id"] for h in got} <= set(node_ids)
        assert all(h["payload"]["n"] % 2 == (0 if tenant == "acme" else 1) for h in got)
        payload = got[0]["payload"]
        assert {"_node_content", "doc_id", "ref_doc_id"} <= set(payload)
        target = client.app.state.runtime.targets[tenant]
        assert target.text(payload) == TEXTS[payload["n"]]  # inside the _node_content JSON
    if hybrid:
        info = client.app.state.runtime.gateway.collection_info("li", refresh=True)
        assert set(info.vectors) == {"text-dense"} and info.sparse  # and a sparse vector


# -- plain points with your own keys --------------------------------------------------------------
def plain_collection(
    client: QdrantClient,
    name: str,
    vectors: np.ndarray,
    distance: models.Distance = models.Distance.COSINE,
    vector_name: str | None = None,
) -> None:
    params = models.VectorParams(size=vectors.shape[1], distance=distance)
    client.create_collection(name, vectors_config={vector_name: params} if vector_name else params)
    client.upsert(
        name,
        points=[
            models.PointStruct(
                id=1000 + i,
                vector={vector_name: v.tolist()} if vector_name else v.tolist(),
                payload={"uid": f"u-{i}", "body": t, "org": "acme" if i < 6 else "globex"},
            )
            for i, (t, v) in enumerate(zip(TEXTS, vectors, strict=True))
        ],
    )


def test_plain_points_with_their_own_keys(
    qpath: Path, document_encoder: Encoder, serve_on: Callable[..., TestClient]
) -> None:
    qc = QdrantClient(path=str(qpath))
    plain_collection(qc, "own", document_encoder.encode(TEXTS, "document").vectors)
    qc.close()
    client = serve_on(collection="own", dev_tenant="acme", tenant_field="org", id_key="uid")
    assert client.get("/readyz").status_code == 200
    flt = models.Filter(
        must=[models.FieldCondition(key="org", match=models.MatchValue(value="acme"))]
    )
    got = assert_same_as_direct(client, "own", flt=flt, ids=lambda p: p.payload["uid"], drop="org")
    assert len(got) == 6 and all(h["id"].startswith("u-") for h in got)
    target: SearchTarget = client.app.state.runtime.targets["acme"]
    assert target.text(got[0]["payload"]) is None  # `body` is no key querylift guesses
    client = serve_on(
        collection="own", dev_tenant="acme", tenant_field="org", id_key="uid", text_key="body"
    )
    got = search(client, with_payload=False).json()["results"]
    assert all(h["payload"] is None and h["id"].startswith("u-") for h in got)
    target = client.app.state.runtime.targets["acme"]
    assert target.text({"body": "x", "text": "y"}) == "x"


# -- distances ------------------------------------------------------------------------------------
def test_cosine_dot_and_euclid_rank_alike_and_manhattan_is_refused(
    qpath: Path, document_encoder: Encoder, serve_on: Callable[..., TestClient]
) -> None:
    vectors = document_encoder.encode(TEXTS, "document").vectors
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # what we assume
    qc = QdrantClient(path=str(qpath))
    names = {"Cosine": "cos", "Dot": "dot", "Euclid": "euc", "Manhattan": "man"}
    for distance, name in names.items():
        plain_collection(qc, name, vectors, models.Distance(distance))
    plain_collection(qc, "dot-raw", vectors * 3.0, models.Distance.DOT)  # not unit length
    qc.close()
    rankings = {}
    for distance, name in names.items():
        client = serve_on(collection=name, tenant_scope="collection", id_key="uid")
        if distance == "Manhattan":
            assert_not_ready(client, "distance Manhattan")
            continue
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        rankings[distance] = [h["id"] for h in search(client, top_k=8).json()["results"]]
    assert rankings["Cosine"] == rankings["Dot"] == rankings["Euclid"]
    assert len(rankings["Cosine"]) == 8
    # documents that are not unit length: ready (it is the index's choice), but said
    client = serve_on(collection="dot-raw", tenant_scope="collection", id_key="uid")
    assert client.get("/readyz").status_code == 200
    found = client.app.state.runtime.inspect_targets()[0]
    assert found.ok and any("not unit length" in n for n in found.notes), found


# -- isolation with collection scope, and the refusals at start-up --------------------------------
def test_collection_scope_and_field_scope_in_one_file_stay_isolated(
    qpath: Path, tmp_path: Path, document_encoder: Encoder, serve_on: Callable[..., TestClient]
) -> None:
    vectors = document_encoder.encode(TEXTS, "document").vectors
    qc = QdrantClient(path=str(qpath))
    plain_collection(qc, "acme-own", vectors)  # acme owns it all (org says acme/globex: moot)
    plain_collection(qc, "shared", vectors)  # globex and initech by the `org` field
    qc.upsert(
        "shared",
        points=[
            models.PointStruct(
                id=1, vector=vectors[0].tolist(), payload={"uid": "i-1", "org": "initech"}
            )
        ],
    )
    qc.close()
    path = write_tenants(
        tmp_path / "tenants.json",
        [
            {"name": "acme", "collection": "acme-own", "scope": "collection", "id_key": "uid"},
            {"name": "globex", "collection": "shared", "tenant_field": "org", "id_key": "uid"},
            {"name": "initech", "collection": "shared", "tenant_field": "org", "id_key": "uid"},
        ],
    )
    client = serve_on(tenants_file=path)
    assert client.get("/readyz").status_code == 200
    acme = {h["id"] for h in search(client, auth("acme"), top_k=100).json()["results"]}
    assert acme == {f"u-{i}" for i in range(len(TEXTS))}  # the whole of its collection
    globex = search(client, auth("globex"), top_k=100).json()["results"]
    assert {h["id"] for h in globex} == {"u-6", "u-7"}
    initech = search(client, auth("initech"), top_k=100).json()["results"]
    assert [h["id"] for h in initech] == ["i-1"]
    # a client filter only narrows: asking for another tenant's value finds nothing
    steal = {"must": [{"key": "org", "match": {"value": "globex"}}]}
    r = search(client, auth("initech"), top_k=100, filter=steal)
    assert r.status_code == 200 and r.json()["results"] == []
    steal = {"should": [{"key": "org", "match": {"value": "initech"}}]}
    r = search(client, auth("acme"), top_k=100, filter=steal)
    assert r.status_code == 200 and r.json()["results"] == []  # acme-own has no initech


@pytest.mark.parametrize(
    ("tenants", "message"),
    [
        (
            [
                {"name": "acme", "collection": "c1", "scope": "collection"},
                {"name": "globex", "collection": "c1", "scope": "collection"},
            ],
            "tenant 'acme' owns collection 'c1'",
        ),
        (
            [
                {"name": "acme", "collection": "c1", "scope": "collection"},
                {"name": "globex", "collection": "c1"},
            ],
            "'globex' also search it",
        ),
        (
            [
                {"name": "acme", "collection": "c1", "tenant_field": "org"},
                {"name": "globex", "collection": "c1", "tenant_field": "team"},
            ],
            "one collection, one tenant field",
        ),
        (
            [{"name": "acme", "tenant_value": "x"}, {"name": "globex", "tenant_value": "x"}],
            "two tenants share a tenant_value in the same collection",
        ),
    ],
    ids=["two-owners", "owner-and-field-tenant", "two-fields", "one-value"],
)
def test_a_tenants_file_that_could_leak_is_refused_at_start(
    tmp_path: Path,
    query_encoder: Encoder,
    document_encoder: Encoder,
    tenants: list[dict[str, Any]],
    message: str,
) -> None:
    settings = Settings(
        tenants_file=write_tenants(tmp_path / "t.json", tenants),
        adapter_store=tmp_path / "adapters",
        collection="c0",
    )
    app = create_app(
        settings,
        query_encoder=query_encoder,
        document_encoder=document_encoder,
        gateway=QdrantGateway(path=":memory:"),
    )
    with pytest.raises(ValueError, match=message), TestClient(app):
        pass


# -- querylift doctor --------------------------------------------------------------------------
def test_doctor_prints_the_same_checks(
    qpath: Path, tmp_path: Path, document_encoder: Encoder, cli_env: Callable[..., None]
) -> None:
    from querylift.cli import app as cli

    langchain_collection(qpath, document_encoder, "lc")
    cli_env(qdrant_path=qpath, collection="lc", adapter_store=tmp_path / "adapters")
    # a folder of the old embedded default (local mode): one line naming the command
    old = CliRunner().invoke(cli, ["doctor"])
    assert old.exit_code == 1, old.output
    assert f"[FAIL] qdrant {qpath}: {qpath} was written by the old embedded default" in old.output
    assert f"`querylift migrate-embedded {qpath}`" in old.output
    moved = CliRunner().invoke(cli, ["migrate-embedded"])
    assert moved.exit_code == 0, moved.output
    assert f"copied 'lc': {len(TEXTS)} points" in moved.output
    assert (qpath.parent / "qdrant.local-mode" / "meta.json").is_file()  # kept beside it
    again = CliRunner().invoke(cli, ["migrate-embedded"])
    assert again.exit_code == 2 and "is not a folder of qdrant-client's local mode" in again.output
    bad = CliRunner().invoke(cli, ["doctor"])
    assert bad.exit_code == 1, bad.output
    assert "[FAIL] tenant 'default': collection 'lc'" in bad.output
    assert "none of the collection's" in bad.output
    assert "[ok  ] qdrant" in bad.output and "[ok  ] document encoder tiny-bert" in bad.output
    cli_env(tenant_scope="collection")
    good = CliRunner().invoke(cli, ["doctor"])
    assert good.exit_code == 0, good.output
    assert "[ok  ] tenant 'default': collection 'lc', unnamed vector, whole collection: ok" in (
        good.output
    )


def test_a_tenant_with_no_documents_yet_gets_an_empty_answer_that_says_why(
    qpath: Path, tmp_path: Path, document_encoder: Encoder, serve_on: Callable[..., TestClient]
) -> None:
    qc = QdrantClient(path=str(qpath))
    plain_collection(qc, "shared", document_encoder.encode(TEXTS, "document").vectors)
    qc.close()
    path = write_tenants(
        tmp_path / "tenants.json",
        [
            {"name": n, "collection": "shared", "tenant_field": "org", "id_key": "uid"}
            for n in ("acme", "initech")
        ],
    )
    client = serve_on(tenants_file=path)
    ready = client.get("/readyz")
    assert ready.status_code == 200  # acme's documents are there: the field is right
    assert "warnings" not in ready.json()  # the open answer names no tenant
    ready = client.get("/readyz", headers=admin_headers())
    assert ready.json()["warnings"] == [
        "tenant 'initech': collection 'shared', unnamed vector, org == 'initech': "
        "no point has payload org == 'initech' yet"
    ]
    r = search(client, auth("initech"))
    assert r.status_code == 200, r.text
    assert r.json()["results"] == []
    assert r.json()["warnings"] == ["no point has payload org == 'initech' yet"]
    assert "warnings" not in search(client, auth("acme")).json()  # only when there is one
