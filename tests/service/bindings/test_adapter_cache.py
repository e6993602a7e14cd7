"""Resident adapters (service/bindings/adapter_cache.py): LRU under a byte budget, pins."""

from __future__ import annotations

from adapters.folder import FolderStore
from service.bindings.adapter_cache import AdapterCache
from service.ops.metrics import Metrics
from tests.conftest import make_linear


def test_lru_cache_evicts_least_recent_and_keeps_pins(tmp_path, query_encoder, document_encoder):
    store = FolderStore(tmp_path / "s")
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
