"""The only place that talks to Qdrant: serialised calls, tenant-scoped search, clear errors.

qdrant-client's local mode is not thread-safe, so every call holds one lock there. Against a
server every call is bounded by `timeout_s` (each connect / read / write of qdrant-client's
HTTP transport), and a failure to answer is raised as one of the `QdrantUnavailable` types
(unreachable, timeout, error), so /search can answer 503 and /readyz can say why. Nothing
about a failure is remembered: the next call tries again (only successful collection lookups
are cached), so the service recovers by itself when Qdrant does.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import SecretStr
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from service.metrics import Metrics

T = TypeVar("T")


class CollectionNotFound(LookupError):
    pass


class QdrantUnavailable(RuntimeError):
    """Qdrant did not answer usefully; `reason` is the one line /readyz shows."""

    kind: ClassVar[str] = "error"

    def __init__(self, op: str, detail: str) -> None:
        super().__init__(f"{self.kind} on {op}: {detail}")
        self.op = op
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self.detail} ({self.op})"


class QdrantUnreachable(QdrantUnavailable):
    """No connection (refused, reset, DNS): Qdrant is down or not where the URL says."""

    kind = "unreachable"


class QdrantTimeout(QdrantUnavailable):
    """Connected (or trying to) but no answer within the configured timeout."""

    kind = "timeout"


def _unavailable(op: str, e: Exception, timeout_s: float) -> QdrantUnavailable | None:
    """Map qdrant-client's transport and 5xx errors to QdrantUnavailable; None for the rest."""
    source = e.source if isinstance(e, ResponseHandlingException) else e
    if isinstance(source, httpx.TimeoutException):
        return QdrantTimeout(op, f"no answer within {timeout_s:g} s ({type(source).__name__})")
    if isinstance(source, httpx.TransportError):
        return QdrantUnreachable(op, f"{type(source).__name__}: {source}")
    if isinstance(e, ResponseHandlingException):  # an answer that does not parse
        return QdrantUnavailable(op, f"bad response ({type(source).__name__})")
    if isinstance(e, UnexpectedResponse) and (e.status_code or 0) >= 500:
        return QdrantUnavailable(op, f"HTTP {e.status_code}")
    return None


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
        api_key: SecretStr | str | None = None,
        timeout_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        if url:
            # qdrant-client rounds its timeout up to whole seconds; the HTTP client underneath
            # then gets the exact value (every call: searches, collection lookups, pings)
            key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
            self.client = QdrantClient(url=url, api_key=key, timeout=math.ceil(timeout_s))
            self._set_http_timeout(timeout_s)
            self.local = False
        else:
            self.client = QdrantClient(path=path or ":memory:")
            self.local = True
        self._lock = threading.Lock()
        self.metrics = metrics
        self._info: dict[str, CollectionInfo] = {}

    def _set_http_timeout(self, timeout_s: float) -> None:
        remote = getattr(self.client, "_client", None)
        api = getattr(getattr(remote, "openapi_client", None), "client", None)
        http = getattr(api, "_client", None)
        if isinstance(http, httpx.Client):
            http.timeout = httpx.Timeout(timeout_s)

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
        except Exception as e:
            mapped = None if self.local else _unavailable(op, e, self.timeout_s)
            if mapped is None:
                raise
            outcome = mapped.kind
            raise mapped from e
        finally:
            if self.metrics:
                self.metrics.qdrant_latency.labels(op, outcome).observe(time.perf_counter() - start)

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def ping(self) -> None:
        """One cheap call (list collections); raises QdrantUnavailable when Qdrant is not up."""
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
