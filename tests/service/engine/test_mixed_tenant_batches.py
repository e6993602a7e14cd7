"""Cross-tenant batches: one forward pass for the query rows of several tenants, each row
through its own tenant's adapter. The resident adapters (LRU under a byte budget, pins) are
tests/service/bindings/test_adapter_cache.py."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.embedding import EmbedItem
from service.engine.errors import ServiceError
from service.http.errors import status_of
from tests.conftest import long_text, make_linear


@pytest.fixture
def runtime(client, store, query_encoder, document_encoder):
    rt = client.app.state.runtime
    third = store.put(*make_linear(query_encoder, document_encoder, 7))
    store.activate("initech", third.id)
    assert rt.sync()
    return rt


def test_mixed_batch_equals_single_tenant_requests(runtime, adapters_bound):
    items = [
        EmbedItem("acme", ["what causes malaria", "the heart"], "query"),
        EmbedItem("globex", ["cancer cells"], "query", instruction="find evidence"),
        EmbedItem("initech", ["vitamin and the immune response", "mice", "blood"], "query"),
        EmbedItem("acme", ["drug treatment"], "document"),
        EmbedItem("globex", ["the brain of mice"], "query"),
    ]

    def passes(encoder: str, kind: str) -> float:
        value = runtime.metrics.registry.get_sample_value(
            "querylift_encoder_batch_size_count", {"encoder": encoder, "kind": kind}
        )
        return value or 0.0

    before = passes("tiny-qwen3", "query"), passes("tiny-bert", "document")
    batched = runtime.embed_batch(items)
    # one forward pass for all query rows of three tenants, one for the document rows
    assert passes("tiny-qwen3", "query") == before[0] + 1
    assert passes("tiny-bert", "document") == before[1] + 1
    ids = {runtime.binding(t).adapter_id for t in ("acme", "globex", "initech")}
    assert len(ids) == 3  # three different adapters in one batch
    for item, out in zip(items, batched, strict=True):
        single = runtime.embed(item.tenant, item.texts, item.kind, item.instruction)
        np.testing.assert_allclose(out.vectors, single.vectors, atol=1e-5)
        assert out.token_counts == single.token_counts
        assert (out.adapter and out.adapter.adapter.id) == (
            single.adapter and single.adapter.adapter.id
        )


def test_one_bad_item_does_not_fail_the_batch(runtime):
    items = [
        EmbedItem("acme", ["ok"], "query"),
        EmbedItem("globex", [long_text(300)], "query"),
        EmbedItem("initech", ["fine"], "query"),
    ]
    out = runtime.embed_batch(items)
    assert isinstance(out[1], ServiceError) and status_of(out[1]) == 413
    assert out[0].vectors.shape[0] == 1 and out[2].vectors.shape[0] == 1
