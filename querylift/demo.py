"""The embedded demo: SciFact-mini indexed with the document encoder, plus a demo adapter."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import time
from pathlib import Path

from adapters.checkpoint import serialize
from adapters.store import AdapterStore
from encoders import Encoder
from querylift.indexing import index_documents
from service.qdrant_gateway import CollectionNotFound, QdrantGateway
from service.settings import Settings
from training.align import alignment_manifest, ridge_fit
from training.data import read_corpus

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo" / "scifact-mini"


def _train_claims(demo_dir: Path) -> list[str]:
    with open(demo_dir / "qrels" / "train.tsv") as f:
        ids = {row[0] for row in list(csv.reader(f, delimiter="\t"))[1:]}
    with gzip.open(demo_dir / "queries.jsonl.gz", "rt") as f:
        return [q["text"] for q in map(json.loads, f) if q["_id"] in ids]


def ensure_demo_index(
    settings: Settings, gateway: QdrantGateway, document_encoder: Encoder, demo_dir: Path
) -> int:
    docs = list(read_corpus(demo_dir))
    try:
        if gateway.count(settings.collection) >= len(docs):
            return 0
    except Exception:  # collection missing: index it
        pass
    report = index_documents(
        gateway,
        document_encoder,
        docs,
        collection=settings.collection,
        tenant_field=settings.tenant_field,
        tenant_value=settings.dev_tenant,
        total=len(docs),
    )
    return report.documents


def ensure_demo_adapter(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    demo_dir: Path,
    alpha: float = 0.1,
) -> str:
    """Fit the identical-text alignment map on short demo texts and bind it to the dev tenant.

    Texts: the train claims and the document titles (short, so the 768-d encoder is quick on CPU).
    """
    store = AdapterStore(settings.adapter_store)
    binding = store.binding(settings.dev_tenant)
    if binding.active is not None and binding.active.adapter_id is not None:
        return binding.active.adapter_id
    titles = [str(d.payload.get("title") or d.text[:200]) for d in read_corpus(demo_dir)]
    texts = _train_claims(demo_dir) + titles
    t0 = time.perf_counter()
    x = query_encoder.encode(texts, "document").vectors  # identical texts, no prompt (ERA)
    y = document_encoder.encode(texts, "document").vectors
    t1 = time.perf_counter()
    weight, bias = ridge_fit(x, y, alpha=alpha)
    manifest = alignment_manifest(
        query_encoder,
        document_encoder,
        alpha=alpha,
        n_texts=len(texts),
        data="demo/scifact-mini: train claims + document titles",
    ).model_copy(update={"name": "demo-alignment"})
    adapter = store.put(*serialize(manifest, {"weight": weight, "bias": bias}))
    store.activate(settings.dev_tenant, adapter.id, actor="querylift setup")
    log.info(
        "demo adapter %s: encoded %d texts in %.1fs, fit in %.2fs",
        adapter.id,
        len(texts),
        t1 - t0,
        time.perf_counter() - t1,
    )
    return adapter.id


def collection_ready(gateway: QdrantGateway, name: str) -> bool:
    try:
        gateway.collection_info(name, refresh=True)
        return True
    except CollectionNotFound:
        return False
