"""The only place that talks to Qdrant: serialised calls, tenant-scoped search, clear errors.

qdrant-client's local mode is not thread-safe, so every call holds one lock there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models

from service.metrics import Metrics

T = TypeVar("T")


class CollectionNotFound(LookupError):
    pass


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    distance: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] | None


class QdrantGateway:
    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        if url:
            self.client = QdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout_s)))
            self.local = False
        else:
            self.client = QdrantClient(path=path or ":memory:")
            self.local = True
        self._lock = threading.Lock()
        self.metrics = metrics
        self._info: dict[str, CollectionInfo] = {}

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        outcome = "error"
        try:
            if self.local:
                with self._lock:
                    result = fn()
            else:
                result = fn()
            outcome = "ok"
            return result
        finally:
            if self.metrics:
                self.metrics.qdrant_latency.labels(op, outcome).observe(time.perf_counter() - start)

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def ping(self) -> None:
        self._call("get_collections", self.client.get_collections)

    def collection_info(self, name: str, refresh: bool = False) -> CollectionInfo:
        if not refresh and name in self._info:
            return self._info[name]
        if not self._call("collection_exists", lambda: self.client.collection_exists(name)):
            raise CollectionNotFound(name)
        info = self._call("get_collection", lambda: self.client.get_collection(name))
        vectors = info.config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise ValueError(f"collection {name!r} uses named vectors; querylift needs one vector")
        ci = CollectionInfo(
            name=name,
            dim=vectors.size,
            distance=str(vectors.distance.value if vectors.distance else ""),
            metadata=dict(info.config.metadata or {}),
        )
        self._info[name] = ci
        return ci

    def ensure_collection(
        self, name: str, dim: int, tenant_field: str, metadata: dict[str, Any]
    ) -> CollectionInfo:
        """Create `name` (cosine, one vector, tenant field indexed) unless it exists."""
        exists = self._call("collection_exists", lambda: self.client.collection_exists(name))
        if not exists:
            self._call(
                "create_collection",
                lambda: self.client.create_collection(
                    name,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                    metadata=metadata,
                ),
            )
            if not self.local:  # local mode ignores payload indexes (and warns)
                self._call(
                    "create_payload_index",
                    lambda: self.client.create_payload_index(
                        name,
                        tenant_field,
                        field_schema=models.KeywordIndexParams(
                            type=models.KeywordIndexType.KEYWORD, is_tenant=True
                        ),
                    ),
                )
        info = self.collection_info(name, refresh=True)
        if info.dim != dim:
            raise ValueError(f"collection {name!r} holds {info.dim}-d vectors, not {dim}-d")
        return info

    def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        self._call("upsert", lambda: self.client.upsert(name, points=points, wait=True))

    def count(self, name: str, flt: models.Filter | None = None) -> int:
        res = self._call("count", lambda: self.client.count(name, count_filter=flt, exact=True))
        return int(res.count)

    def search(
        self,
        collection: str,
        vector: list[float],
        *,
        tenant_field: str,
        tenant_value: str,
        client_filter: models.Filter | None,
        limit: int,
        with_payload: bool,
    ) -> list[Hit]:
        """Nearest points of one tenant. The tenant condition is ANDed with the client's filter
        as a nested clause, so the client filter can only narrow the tenant's own points."""
        must: list[models.Condition] = [
            models.FieldCondition(key=tenant_field, match=models.MatchValue(value=tenant_value))
        ]
        if client_filter is not None:
            must.append(client_filter)
        res = self._call(
            "query_points",
            lambda: self.client.query_points(
                collection,
                query=vector,
                query_filter=models.Filter(must=must),
                limit=limit,
                with_payload=True if with_payload else ["doc_id"],
            ),
        )
        hits = []
        for p in res.points:
            payload = dict(p.payload or {}) if with_payload else None
            doc_id = str((p.payload or {}).get("doc_id", p.id))
            if payload is not None:
                payload.pop(tenant_field, None)
            hits.append(Hit(id=doc_id, score=float(p.score), payload=payload))
        return hits
