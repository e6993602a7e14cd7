"""The Qdrant server through qdrant-client; qdrant-client's local mode only as a test stand-in.

Local mode is a Python re-implementation (brute force, payload indexes ignored, not
thread-safe): the conformance suite runs on it where no server is reachable, and the
migration command reads old embedded folders with it. The service never serves from it.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
from pydantic import SecretStr
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from service.search.backend import (
    CollectionInfo,
    CollectionNotFound,
    Offset,
    QdrantFolderInUse,
    QdrantTimeout,
    QdrantUnavailable,
    QdrantUnreachable,
    VectorInfo,
    WithPayload,
    WithVectors,
)


class ClientBackend:
    exact_counts_cheap = False

    def __init__(self, client: QdrantClient, *, local: bool, timeout_s: float) -> None:
        self.client = client
        self.kind = "local-mode" if local else "server"
        self.serialized = local
        self.indexes_payload = not local
        self.timeout_s = timeout_s
        if local:
            self.exact_counts_cheap = True

    @classmethod
    def server(cls, url: str, api_key: SecretStr | str | None, timeout_s: float) -> ClientBackend:
        # qdrant-client rounds its timeout up to whole seconds; the HTTP client underneath
        # then gets the exact value (every call: searches, collection lookups, pings)
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        backend = cls(
            QdrantClient(url=url, api_key=key, timeout=math.ceil(timeout_s)),
            local=False,
            timeout_s=timeout_s,
        )
        remote = getattr(backend.client, "_client", None)
        api = getattr(getattr(remote, "openapi_client", None), "client", None)
        http = getattr(api, "_client", None)
        if isinstance(http, httpx.Client):
            http.timeout = httpx.Timeout(timeout_s)
        return backend

    @classmethod
    def local_mode(cls, path: str = ":memory:") -> ClientBackend:
        try:
            client = QdrantClient(path=path)
        except RuntimeError as e:
            if "already accessed" in str(e):  # qdrant-client's portalocker lock
                raise QdrantFolderInUse(path) from e
            raise
        return cls(client, local=True, timeout_s=0.0)

    def map_error(self, op: str, e: Exception) -> QdrantUnavailable | None:
        """qdrant-client's transport and 5xx errors are outages; the rest are not."""
        if self.serialized:
            return None
        source = e.source if isinstance(e, ResponseHandlingException) else e
        if isinstance(source, httpx.TimeoutException):
            return QdrantTimeout(
                op, f"no answer within {self.timeout_s:g} s ({type(source).__name__})"
            )
        if isinstance(source, httpx.TransportError):
            return QdrantUnreachable(op, f"{type(source).__name__}: {source}")
        if isinstance(e, ResponseHandlingException):  # an answer that does not parse
            return QdrantUnavailable(op, f"bad response ({type(source).__name__})")
        if isinstance(e, UnexpectedResponse) and (e.status_code or 0) >= 500:
            return QdrantUnavailable(op, f"HTTP {e.status_code}")
        return None

    def ping(self) -> None:
        self.client.get_collections()

    def describe(self, name: str) -> CollectionInfo:
        if not self.client.collection_exists(name):
            raise CollectionNotFound(name)
        info = self.client.get_collection(name)
        params = info.config.params
        raw = params.vectors
        if isinstance(raw, models.VectorParams):
            raw = {"": raw}
        vectors = {
            n: VectorInfo(v.size, str(v.distance.value if v.distance else ""))
            for n, v in (raw or {}).items()
        }
        index = {}
        for key, schema in (info.payload_schema or {}).items():
            dtype = getattr(schema.data_type, "value", str(schema.data_type))
            is_tenant = bool(getattr(schema.params, "is_tenant", False))
            index[key] = (str(dtype), is_tenant)
        return CollectionInfo(
            name=name,
            vectors=vectors,
            metadata=dict(info.config.metadata or {}),
            sparse=tuple(params.sparse_vectors or {}),
            sparse_idf=tuple(
                n
                for n, v in (params.sparse_vectors or {}).items()
                if v.modifier == models.Modifier.IDF
            ),
            payload_index=index,
        )

    def create_collection(
        self,
        name: str,
        vectors: dict[str, VectorInfo],
        metadata: dict[str, Any],
        sparse: dict[str, bool] | None = None,
    ) -> None:
        params = {
            n: models.VectorParams(size=v.size, distance=models.Distance(v.distance))
            for n, v in vectors.items()
        }
        config: models.VectorParams | dict[str, models.VectorParams] = (
            params[""] if set(params) == {""} else params
        )
        self.client.create_collection(
            name,
            vectors_config=config,
            sparse_vectors_config={
                n: models.SparseVectorParams(modifier=models.Modifier.IDF if idf else None)
                for n, idf in (sparse or {}).items()
            }
            or None,
            metadata=metadata,
        )

    def create_keyword_index(self, name: str, key: str, *, is_tenant: bool) -> None:
        self.client.create_payload_index(
            name,
            key,
            field_schema=models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=is_tenant
            ),
        )

    def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        self.client.upsert(name, points=points, wait=True)

    def scroll(
        self,
        name: str,
        flt: models.Filter | None,
        *,
        limit: int,
        offset: Offset,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> tuple[list[models.Record], Offset]:
        return self.client.scroll(
            name,
            scroll_filter=flt,
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vectors=with_vectors,
        )

    def count(self, name: str, flt: models.Filter | None, *, exact: bool) -> int:
        return int(self.client.count(name, count_filter=flt, exact=exact).count)

    def query(
        self,
        name: str,
        vector: list[float],
        *,
        using: str | None,
        flt: models.Filter | None,
        limit: int,
        offset: int,
        score_threshold: float | None,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> list[models.ScoredPoint]:
        return self.client.query_points(
            name,
            query=vector,
            using=using,
            query_filter=flt,
            limit=limit,
            offset=offset or None,
            score_threshold=score_threshold,
            with_payload=with_payload,
            with_vectors=with_vectors,
        ).points

    def retrieve(
        self,
        name: str,
        ids: list[models.ExtendedPointId],
        *,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> list[models.Record]:
        return self.client.retrieve(name, ids, with_payload=with_payload, with_vectors=with_vectors)

    def close(self) -> None:
        self.client.close()
