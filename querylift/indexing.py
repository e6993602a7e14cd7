"""`querylift index`: encode a corpus with the document encoder into a Qdrant collection.

Point ids are uuid5(tenant, doc id), so re-running upserts the same points (safe to repeat).
The collection records the document model in its metadata, so the service can check that the
vectors it produces belong in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import numpy as np
from qdrant_client import models
from tqdm import tqdm

from encoders import Encoder
from service.qdrant_gateway import QdrantGateway
from training.data import Document

T = TypeVar("T")
_NAMESPACE = uuid.UUID("6f1c1d0e-8a39-4b7e-9d54-9a1f3c2b7e10")


def point_id(tenant: str, doc_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{tenant}\x00{doc_id}"))


def _batches(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


@dataclass
class IndexReport:
    collection: str
    documents: int
    tokens: int
    truncated: int


def collection_metadata(encoder: Encoder) -> dict[str, object]:
    return {
        "querylift": {
            "document_model": encoder.name,
            "dim": encoder.dim,
            "fingerprint": encoder.spec.fingerprint(),
        }
    }


def index_documents(
    gateway: QdrantGateway,
    encoder: Encoder,
    documents: Iterable[Document],
    *,
    collection: str,
    tenant_field: str,
    tenant_value: str,
    batch_size: int = 64,
    total: int | None = None,
    progress: bool = True,
    vectors: np.ndarray | None = None,
) -> IndexReport:
    """Encode (or take precomputed `vectors`, one row per document) and upsert in batches."""
    info = gateway.ensure_collection(
        collection, encoder.dim, tenant_field, collection_metadata(encoder)
    )
    recorded = info.metadata.get("querylift", {}).get("document_model")
    if recorded and recorded != encoder.name:
        raise ValueError(
            f"collection {collection!r} was indexed with {recorded!r}, not {encoder.name!r}"
        )
    n = tokens = truncated = 0
    bar = tqdm(total=total, unit="doc", desc=f"index {collection}", disable=not progress)
    for batch in _batches(documents, batch_size):
        texts = [d.text for d in batch]
        full = encoder.count_tokens(texts, "document")
        if vectors is None:
            res = encoder.encode(texts, "document", truncate=True)
            rows, counts = res.vectors, res.token_counts
        else:
            rows = np.asarray(vectors[n : n + len(batch)], dtype=np.float32)
            counts = [min(c, encoder.max_tokens) for c in full]
        truncated += sum(1 for a, b in zip(full, counts, strict=True) if a > b)
        tokens += sum(counts)
        points = [
            models.PointStruct(
                id=point_id(tenant_value, d.id),
                vector=v,
                payload={**d.payload, "doc_id": d.id, "text": d.text, tenant_field: tenant_value},
            )
            for d, v in zip(batch, rows.tolist(), strict=True)
        ]
        gateway.upsert(collection, points)
        n += len(batch)
        bar.update(len(batch))
    bar.close()
    return IndexReport(collection, n, tokens, truncated)
