"""The embedded demo: SciFact-mini indexed with the document encoder, and an adapter trained
on the demo's own labelled claims (a hybrid, so it starts at the document model's quality)."""

from __future__ import annotations

import logging
from pathlib import Path

from adapters.checkpoint import serialize
from adapters.stores import open_store
from encoders import Encoder
from querylift.indexing import index_documents
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from training.cache import EmbeddingCache
from training.data import load_beir
from training.pipeline import TrainConfig, TrainResult, run_training

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo" / "scifact-mini"
DEMO_CONFIG = TrainConfig(mode="label_only", kind="hybrid", seed=0)


def ensure_demo_index(
    settings: Settings,
    gateway: QdrantGateway,
    document_encoder: Encoder,
    cache: EmbeddingCache,
    demo_dir: Path = DEMO_DIR,
) -> int:
    """Index the demo corpus unless the collection already holds it; returns documents indexed."""
    ds = load_beir(demo_dir)
    try:
        if gateway.count(settings.collection) >= len(ds.corpus):
            return 0
    except Exception:  # no collection yet
        pass
    from training.data import read_corpus

    docs = list(read_corpus(demo_dir))
    vectors = cache.encode(
        document_encoder, [d.text for d in docs], "document", desc="demo documents"
    )
    report = index_documents(
        gateway,
        document_encoder,
        docs,
        collection=settings.collection,
        tenant_field=settings.tenant_field,
        tenant_value=settings.dev_tenant,
        total=len(docs),
        vectors=vectors,
    )
    return report.documents


def train_demo_adapter(
    query_encoder: Encoder,
    document_encoder: Encoder,
    cache: EmbeddingCache,
    demo_dir: Path = DEMO_DIR,
) -> TrainResult:
    result = run_training(load_beir(demo_dir), query_encoder, document_encoder, cache, DEMO_CONFIG)
    result.manifest = result.manifest.model_copy(update={"name": "demo-hybrid"})
    return result


def ensure_demo_adapter(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    cache: EmbeddingCache,
    demo_dir: Path = DEMO_DIR,
) -> tuple[str, dict[str, dict[str, float]] | None]:
    """Train the demo adapter on the demo's train claims and bind it to the dev tenant (once)."""
    store = open_store(settings.adapter_store)
    binding = store.binding(settings.dev_tenant)
    if binding.active is not None and binding.active.adapter_id is not None:
        return binding.active.adapter_id, None
    result = train_demo_adapter(query_encoder, document_encoder, cache, demo_dir)
    adapter = store.put(*serialize(result.manifest, result.adapter_tensors))
    store.activate(settings.dev_tenant, adapter.id, actor="querylift setup")
    return adapter.id, result.metrics
