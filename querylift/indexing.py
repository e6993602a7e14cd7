"""`querylift index`: encode a corpus with the document encoder into a Qdrant collection.

Point ids are uuid5(tenant, doc id), so re-running upserts the same points (safe to repeat).
The collection records the document model and the vector size in its metadata, so the service
can check that the vectors it produces belong in it. `dim` indexes a Matryoshka prefix (the
first `dim` values, renormalised; encoders/matryoshka.py): the metadata then holds `"dim": N,
"full_dim": <the model's dim>`, and the service cuts its vectors for that collection the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

import numpy as np
from qdrant_client import models
from tqdm import tqdm

from encoders import Encoder
from encoders.matryoshka import truncate
from service.search.qdrant_gateway import CollectionNotFound, QdrantGateway
from service.search.targets import recorded_dim
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
    built: dict[str, Any] | None = None  # the embedded engine's HNSW build record


def collection_metadata(encoder: Encoder, dim: int | None = None) -> dict[str, object]:
    """What the service reads back: the model, the size of the stored vectors (`dim`, a
    prefix when smaller than `full_dim`) and the encoder's fingerprint."""
    return {
        "querylift": {
            "document_model": encoder.name,
            "dim": dim or encoder.dim,
            "full_dim": encoder.dim,
            "fingerprint": encoder.spec.fingerprint(),
        }
    }


def check_prefix(dim: int | None, full_dim: int) -> None:
    """A prefix is 1..full_dim - 1 values (the full size is no prefix: leave `dim` unset)."""
    if dim is not None and not 0 < dim < full_dim:
        raise ValueError(
            f"dim {dim}: a prefix of the document encoder's {full_dim}-d vectors is 1.."
            f"{full_dim - 1} (omit it to index full vectors)"
        )


def _check_existing(gateway: QdrantGateway, collection: str, encoder: Encoder, dim: int) -> None:
    """Refuse, before anything is written, a collection made with another model or size:
    its points and the new ones would not be comparable."""
    try:
        info = gateway.collection_info(collection, refresh=True)
    except CollectionNotFound:
        return
    meta = info.metadata
    recorded = (meta.get("querylift") or {}).get("document_model")
    if recorded and recorded != encoder.name:
        raise ValueError(
            f"collection {collection!r} was indexed with {recorded!r}, not {encoder.name!r}"
        )
    size = recorded_dim(meta)
    if size is not None and size != dim:
        how = "without --dim" if size == encoder.dim else f"with --dim {size}"
        raise ValueError(
            f"collection {collection!r} was indexed at {size} dimensions (recorded in its "
            f"metadata), not {dim}: re-index it {how}, or index into a new collection"
        )


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
    dim: int | None = None,
) -> IndexReport:
    """Encode (or take precomputed full-size `vectors`, one row per document) and upsert in
    batches; with `dim`, the first `dim` values of each vector, renormalised."""
    check_prefix(dim, encoder.dim)
    size = dim or encoder.dim
    _check_existing(gateway, collection, encoder, size)
    gateway.ensure_collection(collection, size, tenant_field, collection_metadata(encoder, dim))
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
        if dim is not None:
            rows = truncate(rows, dim)
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
    built = gateway.build_index(collection, progress=progress)
    return IndexReport(collection, n, tokens, truncated, built)
