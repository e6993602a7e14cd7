"""Cross-tenant batches and resident adapters (LRU under a byte budget, pins)."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.store import AdapterStore
from service.bindings.adapter_cache import AdapterCache
from service.engine.embedding import EmbedItem
from service.engine.errors import ServiceError
from service.http.errors import status_of
from service.ops.metrics import Metrics
from tests.conftest import make_linear


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
        EmbedItem("globex", [" ".join(["malaria"] * 300)], "query"),
        EmbedItem("initech", ["fine"], "query"),
    ]
    out = runtime.embed_batch(items)
    assert isinstance(out[1], ServiceError) and status_of(out[1]) == 413
    assert out[0].vectors.shape[0] == 1 and out[2].vectors.shape[0] == 1


def test_lru_cache_evicts_least_recent_and_keeps_pins(tmp_path, query_encoder, document_encoder):
    store = AdapterStore(tmp_path / "s")
    ids = [store.put(*make_linear(query_encoder, document_encoder, s)).id for s in range(4)]
    one = store.get(ids[0]).nbytes
    metrics = Metrics()
    pinned = {ids[0]}
    cache = AdapterCache(store, budget_bytes=2 * one, metrics=metrics, pinned=lambda: pinned)
    for i in ids[:3]:
        cache.get(i)
    # budget fits 2: ids[1] (least recent, unpinned) went; the pinned ids[0] stayed
    assert ids[0] in cache and ids[2] in cache and ids[1] not in cache
    cache.get(ids[3])
    assert ids[0] in cache and ids[3] in cache and ids[2] not in cache
    assert metrics.registry.get_sample_value("querylift_adapter_cache_evictions_total") == 2
    assert metrics.registry.get_sample_value("querylift_adapter_cache_entries") == 2
    # an evicted adapter reloads (and re-validates) transparently
    again = cache.get(ids[1])
    assert again.id == ids[1]
