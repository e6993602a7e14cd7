"""First-party client integrations against a live querylift on loopback (issue 16, part 5).

LangChain's and LlamaIndex's OpenAI embeddings send documents down the query path; the
integrations in querylift/integrations must send them to the document encoder, and plain
OpenAI clients must be able to do so with a `-document` model name.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from encoders import Encoder
from service.ops.settings import Settings
from tests.conftest import DOCS, KEYS, REPO, auth
from tests.live import serve

pytest.importorskip("langchain_core", reason='pip install ".[langchain]"')
pytest.importorskip("llama_index.core", reason='pip install ".[llama-index]"')
openai = pytest.importorskip("openai")

from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from querylift.integrations import QueryliftError  # noqa: E402
from querylift.integrations.langchain import QueryliftEmbeddings  # noqa: E402
from querylift.integrations.llama_index import QueryliftEmbedding  # noqa: E402

TEXTS = [d.text for d in DOCS]
QUERIES = ["what causes malaria", "cancer risk of disease", "brain drug treatment"]
LONG = "mosquito malaria parasite " * 40  # over the tiny encoders' token limits, not chars
ATOL = 1e-6


Live = tuple[str, FastAPI]


@pytest.fixture
def make_live(
    make_app: Callable[..., FastAPI], adapters_bound: dict[str, str]
) -> Iterator[Callable[..., Live]]:
    """Live servers (base URL, app) with settings overrides; acme has an adapter and DOCS."""
    with ExitStack() as stack:

        def make(**update: Any) -> Live:
            app = make_app(**update)
            return stack.enter_context(serve(app)), app

        yield make


@pytest.fixture
def base_url(make_live: Callable[..., Live]) -> str:
    return make_live()[0]


def embed(base_url: str, texts: list[str], input_type: str, **extra: Any) -> np.ndarray:
    """The reference: `/embed` for tenant acme."""
    r = httpx.post(
        f"{base_url}/embed",
        json={"input": texts, "input_type": input_type, **extra},
        headers=auth("acme"),
    )
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def assert_differ(a: np.ndarray, b: np.ndarray) -> None:
    """Document and query vectors of the same texts: a tenant with an adapter gets different
    ones (the whole point of the document path)."""
    assert a.shape == b.shape
    assert not np.allclose(a, b, atol=1e-3)


def test_langchain_documents_and_queries_match_embed(base_url: str) -> None:
    emb = QueryliftEmbeddings(base_url=base_url, api_key=KEYS["acme"], batch_size=4)
    docs_ref = embed(base_url, TEXTS, "document")
    queries_ref = embed(base_url, QUERIES, "query")

    docs = np.array(emb.embed_documents(TEXTS))  # 6 texts: two requests of 4 and 2
    np.testing.assert_allclose(docs, docs_ref, atol=ATOL)
    queries = np.array([emb.embed_query(q) for q in QUERIES])
    np.testing.assert_allclose(queries, queries_ref, atol=ATOL)
    assert_differ(np.array(emb.embed_documents(QUERIES)), queries)

    adocs = np.array(asyncio.run(emb.aembed_documents(TEXTS)))
    np.testing.assert_allclose(adocs, docs_ref, atol=ATOL)

    async def aqueries() -> list[list[float]]:
        return await asyncio.gather(*(emb.aembed_query(q) for q in QUERIES))

    np.testing.assert_allclose(np.array(asyncio.run(aqueries())), queries_ref, atol=ATOL)
    assert emb.embed_documents([]) == []
    assert asyncio.run(emb.aembed_documents([])) == []


def test_langchain_instruction_and_truncate_are_sent(base_url: str) -> None:
    plain = QueryliftEmbeddings(base_url=base_url, api_key=KEYS["acme"])
    emb = QueryliftEmbeddings(
        base_url=base_url, api_key=KEYS["acme"], instruction="Find papers", truncate=True
    )
    q = QUERIES[0]
    ref = embed(base_url, [q], "query", instruction="Find papers")[0]
    np.testing.assert_allclose(emb.embed_query(q), ref, atol=ATOL)
    assert not np.allclose(plain.embed_query(q), ref, atol=1e-3)  # the instruction counts
    cut = embed(base_url, [LONG, TEXTS[0]], "document", truncate=True)
    np.testing.assert_allclose(emb.embed_documents([LONG, TEXTS[0]]), cut, atol=ATOL)


def test_llama_index_documents_and_queries_match_embed(base_url: str) -> None:
    emb = QueryliftEmbedding(base_url=base_url, api_key=KEYS["acme"], embed_batch_size=4)
    docs_ref = embed(base_url, TEXTS, "document")
    queries_ref = embed(base_url, QUERIES, "query")

    np.testing.assert_allclose(emb.get_text_embedding(TEXTS[0]), docs_ref[0], atol=ATOL)
    np.testing.assert_allclose(emb.get_text_embedding_batch(TEXTS), docs_ref, atol=ATOL)
    queries = np.array([emb.get_query_embedding(q) for q in QUERIES])
    np.testing.assert_allclose(queries, queries_ref, atol=ATOL)
    assert_differ(np.array(emb.get_text_embedding_batch(QUERIES)), queries)

    async def run_async() -> tuple[list[float], list[list[float]], list[float]]:
        return (
            await emb.aget_text_embedding(TEXTS[1]),
            await emb.aget_text_embedding_batch(TEXTS),
            await emb.aget_query_embedding(QUERIES[1]),
        )

    one, batch, query = asyncio.run(run_async())
    np.testing.assert_allclose(one, docs_ref[1], atol=ATOL)
    np.testing.assert_allclose(batch, docs_ref, atol=ATOL)
    np.testing.assert_allclose(query, queries_ref[1], atol=ATOL)


def test_langchain_vector_store_retrieves_what_search_does(base_url: str) -> None:
    """Indexed through QueryliftEmbeddings, LangChain's own store ranks as querylift's
    /search does over the collection indexed with the document encoder."""
    emb = QueryliftEmbeddings(base_url=base_url, api_key=KEYS["acme"])
    store = InMemoryVectorStore.from_texts(TEXTS, emb, ids=[d.id for d in DOCS])
    for q in QUERIES:
        got = store.similarity_search_with_score(q, k=4)
        r = httpx.post(
            f"{base_url}/search", json={"query": q, "top_k": 4}, headers=auth("acme")
        ).json()
        assert [d.id for d, _ in got] == [h["id"] for h in r["results"]], q
        np.testing.assert_allclose(
            [s for _, s in got], [h["score"] for h in r["results"]], atol=1e-4
        )


def fast_path_served(app: FastAPI) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "querylift_fast_path_total", {"outcome": "served"}
    )
    return value or 0.0


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "full-app"])
def test_openai_client_document_model_selects_document_path(
    make_live: Callable[..., Live], document_encoder: Encoder, fast_path: bool
) -> None:
    """Fails with the plain OpenAI protocol: every model name used to mean queries."""
    base_url, app = make_live(fast_path=fast_path)
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEYS["acme"], max_retries=0)
    docs_ref = embed(base_url, TEXTS, "document")
    queries_ref = embed(base_url, TEXTS, "query")
    served_before = fast_path_served(app)

    for model in (f"{document_encoder.name}-document", "querylift-document"):
        got = client.embeddings.create(model=model, input=TEXTS)
        np.testing.assert_allclose([d.embedding for d in got.data], docs_ref, atol=ATOL)
    default = client.embeddings.create(model="querylift", input=TEXTS)
    default_vecs = np.array([d.embedding for d in default.data])
    np.testing.assert_allclose(default_vecs, queries_ref, atol=ATOL)
    assert_differ(docs_ref, default_vecs)
    # input_type that agrees with the model, or a model that says nothing, is honoured
    agree = client.embeddings.create(
        model="querylift-document", input=TEXTS, extra_body={"input_type": "document"}
    )
    np.testing.assert_allclose([d.embedding for d in agree.data], docs_ref, atol=ATOL)
    old_way = client.embeddings.create(
        model="querylift", input=TEXTS, extra_body={"input_type": "document"}
    )
    np.testing.assert_allclose([d.embedding for d in old_way.data], docs_ref, atol=ATOL)

    # a contradiction is refused, in the one error shape
    r = httpx.post(
        f"{base_url}/v1/embeddings",
        json={"model": "querylift-document", "input": ["x"], "input_type": "query"},
        headers=auth("acme"),
    )
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": {
            "code": "conflicting_input_type",
            "message": r.json()["error"]["message"],
            "details": {"model": "querylift-document", "input_type": "query"},
        }
    }
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(
            model="querylift-document", input="x", extra_body={"input_type": "query"}
        )
    assert e.value.code == "conflicting_input_type"
    # the run really took the path it names: seven /v1/embeddings answers served (or none)
    assert fast_path_served(app) - served_before == (7 if fast_path else 0)


def test_plain_langchain_openai_embeddings_pitfall_and_fix(base_url: str) -> None:
    """langchain-openai's OpenAIEmbeddings, as docs/clients.md says: one instance embeds
    documents down the query path (the pitfall); a `-document` model name fixes it."""
    langchain_openai = pytest.importorskip("langchain_openai", reason='pip install ".[layouts]"')
    common: dict[str, Any] = {
        "base_url": f"{base_url}/v1",
        "api_key": KEYS["acme"],
        "check_embedding_ctx_length": False,  # else it sends tiktoken ids: 400 unsupported_input
        "max_retries": 0,
    }
    docs_ref = embed(base_url, TEXTS, "document")
    plain = langchain_openai.OpenAIEmbeddings(model="querylift", **common)
    wrong = np.array(plain.embed_documents(TEXTS))
    np.testing.assert_allclose(wrong, embed(base_url, TEXTS, "query"), atol=ATOL)
    assert_differ(wrong, docs_ref)  # the pitfall: documents embedded as queries
    indexing = langchain_openai.OpenAIEmbeddings(model="querylift-document", **common)
    np.testing.assert_allclose(indexing.embed_documents(TEXTS), docs_ref, atol=ATOL)
    np.testing.assert_allclose(
        plain.embed_query(QUERIES[0]), embed(base_url, QUERIES[:1], "query")[0], atol=ATOL
    )


def test_v1_models_lists_both_paths(
    base_url: str, query_encoder: Encoder, document_encoder: Encoder
) -> None:
    r = httpx.get(f"{base_url}/v1/models", headers=auth("acme"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "object": "list",
        "data": [
            {"id": query_encoder.name, "object": "model", "created": 0, "owned_by": "querylift"},
            {
                "id": f"{document_encoder.name}-document",
                "object": "model",
                "created": 0,
                "owned_by": "querylift",
            },
        ],
    }
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEYS["acme"], max_retries=0)
    assert [m.id for m in client.models.list()] == [m["id"] for m in r.json()["data"]]
    # the same tenant auth as /v1/embeddings
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(f"{base_url}/v1/models", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"


def test_service_errors_surface_as_querylift_error(base_url: str) -> None:
    lc = QueryliftEmbeddings(base_url=base_url, api_key=KEYS["acme"])
    li = QueryliftEmbedding(base_url=base_url, api_key=KEYS["acme"])
    calls: list[Callable[[], object]] = [
        lambda: lc.embed_documents([TEXTS[0], LONG]),
        lambda: asyncio.run(lc.aembed_documents([TEXTS[0], LONG])),
        lambda: lc.embed_query(LONG),
        lambda: li.get_text_embedding_batch([TEXTS[0], LONG]),
        lambda: asyncio.run(li.aget_query_embedding(LONG)),
    ]
    for call in calls:
        with pytest.raises(QueryliftError) as e:
            call()
        assert (e.value.status, e.value.code) == (413, "input_too_long")
        assert e.value.details["index"] in (0, 1)
        assert "input_too_long" in str(e.value)
    bad = QueryliftEmbeddings(base_url=base_url, api_key="wrong")
    with pytest.raises(QueryliftError) as e:
        bad.embed_query("x")
    assert (e.value.status, e.value.code) == (401, "unauthorized")


def test_batches_shrink_to_the_servers_max_inputs(base_url: str, settings: Settings) -> None:
    """batch_size 64 against QUERYLIFT_MAX_INPUTS=8: one refused request, then batches of 8."""
    texts = [f"{t} {i}" for i in range(2) for t in TEXTS]  # 12 texts
    assert settings.max_inputs == 8 < len(texts)
    emb = QueryliftEmbeddings(base_url=base_url, api_key=KEYS["acme"], batch_size=64)
    ref = np.concatenate(
        [embed(base_url, texts[:8], "document"), embed(base_url, texts[8:], "document")]
    )
    np.testing.assert_allclose(emb.embed_documents(texts), ref, atol=ATOL)
    np.testing.assert_allclose(asyncio.run(emb.aembed_documents(texts)), ref, atol=ATOL)
    assert emb._client.batch_size == 8


def test_server_never_imports_the_frameworks() -> None:
    """The service and the CLI stay free of langchain and llama_index (the integrations'
    import pulls them in, which shows the check can see them)."""
    probe = (
        "import sys, {mod}; "
        "print(sorted({{m.split('.')[0] for m in sys.modules}} & "
        "{{'langchain', 'langchain_core', 'llama_index'}}))"
    )

    def loaded(mod: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", probe.format(mod=mod)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return out.stdout.strip()

    assert loaded("service.app, querylift.cli, querylift.integrations") == "[]"
    assert loaded("querylift.integrations.langchain") == "['langchain_core']"
