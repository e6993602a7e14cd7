"""Label-free adapters (training/distill.py, training/pseudo.py, `querylift train --mode distill`)
on the tiny random models: the teacher is the tiny Qwen3 on both sides, the index the tiny
BERT. What is checked is the mechanics (servable output, a loss that goes down, the pull, the
inputs), not retrieval quality, which bench/label_free.py measures on SciFact."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from adapters.compat import compatibility_problems
from adapters.folder import FolderStore
from querylift.cli import app as cli
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import DOCS, encoder_env, index_docs
from tests.tiny_models import WORDS
from training import distill
from training.cache import EmbeddingCache
from training.data import DataError, Document, read_query_log, read_query_texts
from training.distill import distill_adapter, split_holdout
from training.pseudo import cut_words, mix_queries, pseudo_queries, split_sentences


def _corpus(n: int = 40, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    words = [w for w in WORDS if len(w) > 2]
    return [
        Document(f"d{i}", ". ".join(" ".join(rng.sample(words, 6)) for _ in range(3)) + ".")
        for i in range(n)
    ]


def _queries(corpus: list[Document], seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(doc.text.replace(".", "").split(), 4)) for doc in corpus]


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    return _corpus()


def test_distilled_adapter_fits_the_encoders_and_the_service_serves_it(
    tmp_path, query_encoder, document_encoder, corpus
):
    out = distill_adapter(
        query_encoder,
        document_encoder,
        corpus,
        _queries(corpus),
        steps=20,
        cache=EmbeddingCache(tmp_path / "cache"),
    )
    assert compatibility_problems(out.adapter, query_encoder, document_encoder) == []
    training = out.manifest.training
    assert training["mode"] == "distill" and training["query_source"] == "queries"
    assert training["teacher"]["model"] == query_encoder.name
    assert training["counts"]["queries"] == len(set(_queries(corpus)))
    assert training["counts"]["held_out_queries"] == 4  # 10% of 40
    assert 0 <= out.stats["agreement"]["held_out"]["student"] <= 1

    store = FolderStore(tmp_path / "store")
    adapter = store.put(*out.checkpoint)
    assert adapter.id == out.adapter.id
    store.activate("default", adapter.id)
    app = create_app(
        Settings(adapter_store=store.root, qdrant_path=tmp_path / "q"),
        query_encoder=query_encoder,
        document_encoder=document_encoder,
        gateway=QdrantGateway(path=":memory:"),
    )
    texts = _queries(corpus)[:3]
    with TestClient(app) as client:
        r = client.post("/embed", json={"input": texts})
    assert r.status_code == 200, r.text
    assert r.json()["adapter"]["id"] == adapter.id
    served = np.asarray([row["embedding"] for row in r.json()["data"]], dtype=np.float32)
    x = np.concatenate(
        [
            query_encoder.encode(texts, "query").vectors,
            document_encoder.encode(texts, "query").vectors,
        ],
        axis=1,
    )
    np.testing.assert_allclose(served, out.adapter.apply(x), atol=1e-5)


def test_kl_to_the_teacher_goes_down(query_encoder, document_encoder, corpus):
    out = distill_adapter(
        query_encoder, document_encoder, corpus, _queries(corpus), steps=60, pull=0.0, lr=3e-3
    )
    kl = [h["kl"] for h in out.history]
    assert len(kl) == 61
    assert kl[-1] < 0.7 * kl[0]
    agree = out.stats["agreement"]["train"]
    assert agree["student"] > agree["document_model"]


def test_a_fused_teacher_is_closer_to_the_document_model_and_is_recorded(
    query_encoder, document_encoder, corpus
):
    """bench.label_free's `teacher` part: a teacher fused with the document model's cosine
    agrees more with the document model alone (so it leaves the student less to learn)."""
    texts = _queries(corpus)
    kw = {"steps": 0, "holdout": 0.0}
    plain = distill_adapter(query_encoder, document_encoder, corpus, texts, **kw)
    fused = distill_adapter(
        query_encoder, document_encoder, corpus, texts, teacher_small_weight=0.5, **kw
    )
    doc_alone = [o.stats["agreement"]["train"]["document_model"] for o in (plain, fused)]
    assert doc_alone[1] > doc_alone[0]
    assert "fused 0.5:0.5" in fused.manifest.training["teacher"]["scores"]
    assert "fused" not in plain.manifest.training["teacher"]["scores"]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="teacher_small_weight"):
            distill_adapter(
                query_encoder, document_encoder, corpus, texts, teacher_small_weight=bad
            )


def _small_query_vectors(document_encoder, texts: list[str]) -> np.ndarray:
    v = document_encoder.encode(texts, "query").vectors
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _served(out, query_encoder, document_encoder, texts: list[str]) -> np.ndarray:
    x = np.concatenate(
        [
            query_encoder.encode(texts, "query").vectors,
            document_encoder.encode(texts, "query").vectors,
        ],
        axis=1,
    )
    return out.adapter.apply(x)


def test_a_huge_pull_keeps_the_adapter_at_the_document_model(
    query_encoder, document_encoder, corpus
):
    texts = _queries(corpus)
    own = _small_query_vectors(document_encoder, texts)
    kw = {"steps": 60, "lr": 3e-3}
    held = distill_adapter(query_encoder, document_encoder, corpus, texts, pull=1e6, **kw)
    free = distill_adapter(query_encoder, document_encoder, corpus, texts, pull=0.0, **kw)
    held_gap = np.abs(_served(held, query_encoder, document_encoder, texts) - own).max()
    free_gap = np.abs(_served(free, query_encoder, document_encoder, texts) - own).max()
    assert held_gap < 0.02 < free_gap
    # the query-model block stays (near) zero: the big model adds nothing yet
    assert np.abs(held.tensors["weight"][:, : query_encoder.dim]).max() < 0.01
    start = distill_adapter(query_encoder, document_encoder, corpus, texts, steps=0)
    np.testing.assert_allclose(
        _served(start, query_encoder, document_encoder, texts), own, atol=1e-6
    )


def test_chunked_candidates_give_the_same_adapter(
    monkeypatch, query_encoder, document_encoder, corpus
):
    """A corpus too large to gather every candidate vector once is done chunk by chunk at
    every step: the same full-batch gradient, so the same adapter."""
    texts = _queries(corpus)
    whole = distill_adapter(query_encoder, document_encoder, corpus, texts, steps=10)
    monkeypatch.setattr(distill, "_KEEP_BYTES", 0)
    monkeypatch.setattr(distill, "_CHUNK_BYTES", 4 * 40 * document_encoder.dim * 5)  # 5 queries
    chunked = distill_adapter(query_encoder, document_encoder, corpus, texts, steps=10)
    np.testing.assert_allclose(chunked.tensors["weight"], whole.tensors["weight"], atol=1e-5)
    assert chunked.history[-1]["kl"] == pytest.approx(whole.history[-1]["kl"], rel=1e-4)


def test_no_queries_means_pseudo_queries_from_the_corpus(query_encoder, document_encoder):
    out = distill_adapter(query_encoder, document_encoder, DOCS, [], steps=5)
    assert out.manifest.training["query_source"] == "pseudo"
    assert out.manifest.training["pseudo_rule"] == "last"
    assert out.stats["counts"]["queries"] == len(DOCS)
    assert out.stats["counts"]["candidate_documents"] == len(DOCS)


def test_holdout_is_seeded_and_leaves_something_to_train_on():
    assert split_holdout(40, 0.1, 0) == split_holdout(40, 0.1, 0)
    assert split_holdout(40, 0.1, 0) != split_holdout(40, 0.1, 1)
    train, held = split_holdout(40, 0.1, 0)
    assert len(held) == 4 and sorted(train + held) == list(range(40))
    assert split_holdout(4, 0.5, 0) == ([0, 1, 2, 3], [])
    assert split_holdout(5, 0.9, 0)[0] != []


def test_pseudo_queries_are_deterministic_and_cut_to_the_word_limit():
    long_title = " ".join(f"w{i}" for i in range(30))
    docs = [
        Document(
            "a",
            f"{long_title} Body one is here. Body two follows, e.g. this. That is the end.",
            {"title": long_title},
        ),
        Document("b", "No title here, only text. A second sentence here. And a third one."),
        Document("c", "No title here, only text. Another text."),  # same first sentence as b
    ]
    titles = pseudo_queries(docs, "title")
    assert titles == pseudo_queries(docs, "title")
    assert titles[0] == " ".join(f"w{i}" for i in range(20))
    assert titles[1] == "No title here, only text."
    assert len(titles) == 2  # c's pseudo-query repeats b's: kept once
    assert pseudo_queries(docs, "first")[0] == "Body one is here."
    assert pseudo_queries(docs, "last")[:2] == ["That is the end.", "And a third one."]
    assert all(
        len(t.split()) <= 20
        for rule in ("title", "first", "last", "random")
        for t in pseudo_queries(docs, rule)
    )
    rand = [pseudo_queries(docs, "random", seed=s) for s in range(8)]
    assert rand[3] == pseudo_queries(docs, "random", seed=3)
    assert len({tuple(r) for r in rand}) > 1  # the seed matters
    assert split_sentences("It rose, e.g. in mice. Then (n = 3) fell. 5 died.") == [
        "It rose, e.g. in mice.",
        "Then (n = 3) fell.",
        "5 died.",
    ]
    assert cut_words("  a  b\nc d ", 3) == "a b c"
    with pytest.raises(ValueError):
        cut_words("a", 0)


def test_mixing_keeps_real_queries_at_least_half():
    mixed = mix_queries(["q1", "q2"], ["p1", "q1", "p2", "p3", "p4"], seed=0)
    assert mixed[:2] == ["q1", "q2"] and len(mixed) == 4
    assert set(mixed[2:]) <= {"p1", "p2", "p3", "p4"}
    assert mixed == mix_queries(["q1", "q2"], ["p1", "q1", "p2", "p3", "p4"], seed=0)


def test_query_log_and_query_files(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(
        json.dumps({"ts": "2025-01-01T00:00:00Z", "tenant": "acme", "text": "malaria vector"})
        + "\n\n"
        + json.dumps({"query": "cancer risk", "top_k": 5})
        + "\n"
        + json.dumps({"text": "malaria vector"})
        + "\n"
        + json.dumps({"text": "  "})
        + "\n"
    )
    assert read_query_log(log) == ["malaria vector", "cancer risk"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"q": "no text"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_query_log(bad)
    plain = tmp_path / "q.txt"
    plain.write_text("first query\n\nsecond query\nfirst query\n")
    assert read_query_texts(plain) == ["first query", "second query"]
    assert read_query_texts(log) == ["malaria vector", "cancer risk"]
    with pytest.raises(DataError, match="no such file"):
        read_query_log(tmp_path / "missing.jsonl")


def _encoder_env(monkeypatch, query_spec, doc_spec) -> None:
    for key, value in encoder_env(query_spec, doc_spec).items():
        monkeypatch.setenv(key, value)


def test_cli_distill_from_a_corpus_file_and_a_query_log(
    tmp_path, monkeypatch, query_spec, doc_spec, corpus
):
    _encoder_env(monkeypatch, query_spec, doc_spec)
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in corpus))
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"text": t}) + "\n" for t in _queries(corpus)))
    out = tmp_path / "run"
    args = ["train", str(corpus_file), "--mode", "distill", "--out", str(out), "--steps", "10"]
    result = CliRunner().invoke(
        cli, [*args, "--queries-from", str(log), "--cache", str(tmp_path / "cache")]
    )
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and "held-out" in result.output
    assert "pull toward the document model 0.2 (the default)" in result.output
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["kind"] == "hybrid" and manifest["training"]["mode"] == "distill"
    assert manifest["training"]["query_source"] == "log"
    assert manifest["training"]["steps"] == 10
    assert json.loads((out / "report.json").read_text())["meta"]["stats"]["counts"]["queries"] == 40
    again = CliRunner().invoke(cli, [*args, "--queries-from", str(log)])
    assert again.exit_code == 2 and "exists" in again.output


def test_cli_distill_reads_a_collection_back_from_qdrant(
    tmp_path, monkeypatch, query_spec, doc_spec, document_encoder
):
    _encoder_env(monkeypatch, query_spec, doc_spec)
    gw = QdrantGateway(path=str(tmp_path / "qdrant"))
    index_docs(gw, document_encoder, "acme", DOCS)
    index_docs(gw, document_encoder, "globex", [Document("g1", "globex secret plan")])
    gw.close()
    monkeypatch.setenv("QUERYLIFT_QDRANT_PATH", str(tmp_path / "qdrant"))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--mode",
            "distill",
            "--collection",
            "docs",
            "--tenant",
            "acme",
            "--out",
            str(out),
            "--steps",
            "5",
            "--cache",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    training = json.loads((out / "checkpoint" / "manifest.json").read_text())["training"]
    assert training["query_source"] == "pseudo"
    assert training["counts"]["corpus_documents"] == len(DOCS)  # not globex's document
    assert training["data"]["source"] == "collection 'docs', unnamed vector, tenant == 'acme'"


def test_cli_distill_reads_a_tenants_own_langchain_collection(
    tmp_path, monkeypatch, query_spec, doc_spec, document_encoder
):
    """A collection our code did not create (langchain-qdrant's own layout: `page_content`,
    uuid point ids), read as the tenant's /search sees it: --for-tenant takes the target from
    the tenants file; --collection finds the text by the known layouts too."""
    from tests.conftest import write_tenants
    from tests.service.search.test_collections import TEXTS, langchain_collection

    _encoder_env(monkeypatch, query_spec, doc_spec)
    qpath = tmp_path / "qdrant"
    langchain_collection(qpath, document_encoder, "lc")
    tenants = write_tenants(
        tmp_path / "tenants.json",
        [
            {
                "name": "lcapp",
                "collection": "lc",
                "scope": "collection",
                "id_source": "point",
                "api_keys_sha256": [],
            }
        ],
    )
    monkeypatch.setenv("QUERYLIFT_QDRANT_PATH", str(qpath))
    monkeypatch.setenv("QUERYLIFT_TENANTS_FILE", str(tenants))
    runner = CliRunner()
    # langchain wrote it through qdrant-client (local mode here): onto the embedded engine
    moved = runner.invoke(cli, ["migrate-embedded"])
    assert moved.exit_code == 0, moved.output
    common = ["train", "--mode", "distill", "--steps", "5", "--cache", str(tmp_path / "cache")]
    result = runner.invoke(cli, [*common, "--for-tenant", "lcapp", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "a" / "checkpoint" / "manifest.json").read_text())["training"]
    assert training["counts"]["corpus_documents"] == len(TEXTS)
    source = training["data"]["source"]
    assert source == "tenant lcapp: collection 'lc', unnamed vector, whole collection"
    raw = runner.invoke(cli, [*common, "--collection", "lc", "--out", str(tmp_path / "b")])
    assert raw.exit_code == 0, raw.output
    unknown = runner.invoke(cli, [*common, "--for-tenant", "nobody", "--out", str(tmp_path / "c")])
    assert unknown.exit_code == 2 and "no tenant 'nobody'" in unknown.output
    assert "lcapp" in unknown.output
    both = runner.invoke(
        cli, [*common, "--for-tenant", "lcapp", "--collection", "lc", "--out", str(tmp_path / "d")]
    )
    assert both.exit_code == 2 and "one corpus" in both.output


def test_cli_distill_refuses_what_it_cannot_use(tmp_path, monkeypatch, query_spec, doc_spec):
    _encoder_env(monkeypatch, query_spec, doc_spec)
    runner = CliRunner()
    neither = runner.invoke(cli, ["train", "--mode", "distill", "--out", str(tmp_path / "a")])
    assert neither.exit_code == 2 and "corpus" in neither.output
    corpus_file = tmp_path / "c.jsonl"
    corpus_file.write_text(json.dumps({"id": "d1", "text": "malaria"}) + "\n")
    log = tmp_path / "log.jsonl"
    log.write_text('{"nope": 1}\n')
    bad = runner.invoke(
        cli,
        [
            "train",
            str(corpus_file),
            "--mode",
            "distill",
            "--out",
            str(tmp_path / "b"),
            "--queries-from",
            str(log),
        ],
    )
    assert bad.exit_code == 2 and "log.jsonl:1" in bad.output
    labels = runner.invoke(cli, ["train", "--out", str(tmp_path / "c")])
    assert labels.exit_code == 2 and "dataset" in labels.output.lower()
