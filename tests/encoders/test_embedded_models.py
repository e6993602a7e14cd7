"""The embedded profile end to end with the real encoders (all-mpnet-base-v2 -> all-MiniLM-L6-v2).

Needs the models unpacked by `querylift setup` (the README's test command does it); skipped
with a reason otherwise. Uses a slice of the shipped demo corpus in an in-memory Qdrant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adapters.checkpoint import serialize
from adapters.folder import FolderStore
from encoders import build_encoder
from querylift.demo import DEMO_DIR
from querylift.models import MINILM_DIR, MPNET_DIR
from service.app import create_app
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER, Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import MODELS, index_docs, needs_embedded_models
from training.align import alignment_manifest, ridge_fit
from training.data import read_corpus

pytestmark = [pytest.mark.models, needs_embedded_models]

QUESTION = "How does smoking affect lung cancer risk?"
EXPECTED = "16422880"  # "Effect of smoking reduction on lung cancer risk."


@pytest.fixture(scope="module")
def encoders():
    q = build_encoder(EMBEDDED_QUERY_ENCODER.model_copy(update={"path": str(MODELS / MPNET_DIR)}))
    d = build_encoder(
        EMBEDDED_DOCUMENT_ENCODER.model_copy(update={"path": str(MODELS / MINILM_DIR)})
    )
    return q, d


@pytest.fixture(scope="module")
def docs():
    all_docs = list(read_corpus(DEMO_DIR))
    picked = [d for d in all_docs if d.id == EXPECTED] + [
        d for d in all_docs[:150] if d.id != EXPECTED
    ]
    return picked


@pytest.fixture(scope="module")
def gateway(encoders, docs):
    gw = QdrantGateway(path=":memory:")
    index_docs(gw, encoders[1], "default", docs, collection="demo")
    yield gw
    gw.close()


def _client(tmp_path: Path, encoders, gateway) -> TestClient:
    settings = Settings(adapter_store=tmp_path / "store", collection="demo")
    app = create_app(
        settings, query_encoder=encoders[0], document_encoder=encoders[1], gateway=gateway
    )
    return TestClient(app)


def test_dimensions_and_document_path(tmp_path, encoders, gateway):
    q, d = encoders
    assert (q.dim, d.dim) == (768, 384)
    with _client(tmp_path, encoders, gateway) as c:
        text = "Smoking reduction and lung cancer."
        r = c.post("/embed", json={"input": [text], "input_type": "document"})
        assert r.status_code == 200
        got = np.asarray(r.json()["data"][0]["embedding"], dtype=np.float32)
        np.testing.assert_array_equal(got, d.encode([text], "document").vectors[0])


def test_search_without_adapter_finds_the_paper(tmp_path, encoders, gateway):
    with _client(tmp_path, encoders, gateway) as c:
        r = c.post("/search", json={"query": QUESTION, "top_k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["adapter"] is None
        assert EXPECTED in [h["id"] for h in r.json()["results"]]


def test_search_through_an_alignment_adapter(tmp_path, encoders, gateway, docs):
    """mpnet query -> ridge map -> MiniLM space still finds the paper in the top 3."""
    q, d = encoders
    texts = [str(x.payload.get("title")) for x in docs]
    weight, bias = ridge_fit(
        q.encode(texts, "document").vectors, d.encode(texts, "document").vectors, alpha=1.0
    )
    store = FolderStore(tmp_path / "store")
    manifest = alignment_manifest(q, d, alpha=1.0, n_texts=len(texts), data="test titles")
    adapter = store.put(*serialize(manifest, {"weight": weight, "bias": bias}))
    store.activate("default", adapter.id)
    with _client(tmp_path, encoders, gateway) as c:
        r = c.post("/search", json={"query": QUESTION, "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["adapter"] == {"id": adapter.id, "version": 1}
        assert body["model"] == "all-mpnet-base-v2"
        assert EXPECTED in [h["id"] for h in body["results"]]
        e = c.post("/embed", json={"input": QUESTION}).json()
        v = np.asarray(e["data"][0]["embedding"])
        assert v.shape == (384,)
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
