"""The only place that talks to Qdrant: tenant-scoped search, clear errors, one metric.

The engine behind it is a `Backend` (service/search/backend.py): the Qdrant server through
qdrant-client (URL), or Qdrant's own engine embedded through qdrant-edge-py (a folder, the
default). Against a server every call is bounded by `timeout_s`, and a failure to answer is
raised as one of the `QdrantUnavailable` types (unreachable, timeout, error), so /search can
answer 503 and /readyz can say why. Nothing about a failure is remembered: the next call tries
again (only successful collection lookups are cached), so the service recovers by itself when
Qdrant does.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr
from qdrant_client import models

from service.ops.metrics import Metrics
from service.ops.settings import Settings
from service.search.backend import (
    Backend,
    CollectionInfo,
    CollectionNotFound,
    QdrantFolderInUse,
    QdrantTimeout,
    QdrantUnavailable,
    QdrantUnreachable,
    Unsupported,
    VectorInfo,
)
from service.search.targets import (
    NORM_SAMPLE,
    NORM_TOLERANCE,
    RANKING_DISTANCES,
    Inspection,
    SearchTarget,
    settle,
)

if TYPE_CHECKING:
    from service.search.edge_backend import HnswSettings

T = TypeVar("T")

__all__ = [
    "CollectionInfo",
    "CollectionNotFound",
    "Hit",
    "QdrantFolderInUse",
    "QdrantGateway",
    "QdrantTimeout",
    "QdrantUnavailable",
    "QdrantUnreachable",
    "Unsupported",
    "VectorInfo",
]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] | None
    vector: list[float] | None = None


class QdrantGateway:
    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        api_key: SecretStr | str | None = None,
        timeout_s: float = 10.0,
        metrics: Metrics | None = None,
        backend: Backend | None = None,
        hnsw: HnswSettings | None = None,
        in_process: bool = False,
    ) -> None:
        """`url`: a Qdrant server; `path`: the embedded engine's folder, opened in a child
        process (its calls hold the GIL: service/search/edge_process.py), or here with
        `in_process` (offline commands: no event loop, bulk writes); `backend`: one made
        elsewhere (tests: qdrant-client's local mode as the server's stand-in)."""
        self.timeout_s = timeout_s
        if backend is None:
            if url:
                from service.search.client_backend import ClientBackend

                backend = ClientBackend.server(url, api_key, timeout_s)
            elif path and in_process:
                from service.search.edge_backend import EdgeBackend

                backend = EdgeBackend(path, hnsw)
            elif path:
                from service.search.edge_process import EdgeProcess

                backend = EdgeProcess(path, hnsw, timeout_s)
            else:
                raise ValueError("a Qdrant URL or an embedded folder is needed")
        self.backend: Backend = backend
        self._lock = threading.Lock()
        self.metrics = metrics
        self._info: dict[str, CollectionInfo] = {}

    @property
    def kind(self) -> str:
        return self.backend.kind

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        outcome = "error"
        try:
            if self.backend.serialized:
                with self._lock:
                    result = fn()
            else:
                result = fn()
            outcome = "ok"
            return result
        except Exception as e:
            mapped = self.backend.map_error(op, e)
            if mapped is None:
                raise
            outcome = mapped.kind
            raise mapped from e
        finally:
            if self.metrics:
                self.metrics.qdrant_latency.labels(op, outcome).observe(time.perf_counter() - start)

    def close(self) -> None:
        with self._lock:
            self.backend.close()

    def ping(self) -> None:
        """One cheap call; raises QdrantUnavailable when Qdrant is not up."""
        self._call("get_collections", self.backend.ping)

    def collection_info(self, name: str, refresh: bool = False) -> CollectionInfo:
        if not refresh and name in self._info:
            return self._info[name]
        ci = self._call("get_collection", lambda: self.backend.describe(name))
        self._info[name] = ci
        return ci

    def known_info(self, name: str) -> CollectionInfo | None:
        """The last successful lookup of `name`, without calling Qdrant (None: never seen).

        The request path reads a collection's recorded vector size here: /embed must not
        wait on Qdrant, and start-up, /readyz's snapshot refresh and /search refresh it."""
        return self._info.get(name)

    def create_collection(
        self,
        name: str,
        vectors: dict[str, VectorInfo],
        metadata: dict[str, Any] | None = None,
        tenant_field: str | None = None,
        sparse: dict[str, bool] | None = None,
    ) -> CollectionInfo:
        """A new collection, its tenant field indexed (is_tenant) where the engine indexes."""
        self._call(
            "create_collection",
            lambda: self.backend.create_collection(name, vectors, metadata or {}, sparse),
        )
        if tenant_field:
            self.index_tenant_field(name, tenant_field)
        return self.collection_info(name, refresh=True)

    def index_tenant_field(self, name: str, key: str) -> None:
        """Qdrant's keyword index with is_tenant on `key` (a no-op where payload indexes are
        ignored: local mode)."""
        if self.backend.indexes_payload:
            self._call(
                "create_payload_index",
                lambda: self.backend.create_keyword_index(name, key, is_tenant=True),
            )

    def ensure_collection(
        self, name: str, dim: int, tenant_field: str, metadata: dict[str, Any]
    ) -> CollectionInfo:
        """Create `name` (cosine, one vector, tenant field indexed) unless it exists."""
        try:
            info = self.collection_info(name, refresh=True)
        except CollectionNotFound:
            info = self.create_collection(
                name, {"": VectorInfo(dim, "Cosine")}, metadata, tenant_field
            )
        if info.dim != dim:
            raise ValueError(f"collection {name!r} holds {info.dim}-d vectors, not {dim}-d")
        return info

    def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        self._call("upsert", lambda: self.backend.upsert(name, points))

    def build_index(self, name: str, progress: bool = False) -> dict[str, Any] | None:
        """Build the embedded engine's HNSW over what was upserted (offline only). A server
        indexes by itself: None."""
        build = getattr(self.backend, "build_index", None)
        if build is None:
            return None
        return self._call("build_index", lambda: build(name, progress))  # type: ignore[no-any-return]

    def scroll(
        self,
        name: str,
        flt: models.Filter | None = None,
        *,
        page: int = 1024,
        with_vectors: bool | list[str] = False,
    ) -> Iterator[models.Record]:
        """Every point of `name` matching `flt`, with its payload, a page per call: offline
        readers (distillation reads a corpus back, migration copies one) walk a collection
        through the same error mapping and metrics as the request path."""
        offset: models.ExtendedPointId | None = None
        while True:
            points, offset = self._call(
                "scroll",
                lambda o=offset: self.backend.scroll(  # type: ignore[misc]
                    name,
                    flt,
                    limit=page,
                    offset=o,
                    with_payload=True,
                    with_vectors=with_vectors,
                ),
            )
            yield from points
            if offset is None:
                return

    def count(self, name: str, flt: models.Filter | None = None) -> int:
        return self._call("count", lambda: self.backend.count(name, flt, exact=True))

    def retrieve(
        self,
        name: str,
        ids: list[models.ExtendedPointId],
        *,
        with_payload: bool | list[str] = True,
        with_vectors: bool | list[str] = False,
    ) -> list[models.Record]:
        return self._call(
            "retrieve",
            lambda: self.backend.retrieve(
                name, ids, with_payload=with_payload, with_vectors=with_vectors
            ),
        )

    def query(
        self,
        name: str,
        vector: list[float],
        *,
        using: str | None = None,
        flt: models.Filter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        with_payload: bool | list[str] = True,
        with_vectors: bool | list[str] = False,
    ) -> list[models.ScoredPoint]:
        """One nearest-neighbour query as the engine answers it, with no tenant scope: for
        offline tools and the conformance suite; the request path goes through `search`."""
        return self._call(
            "query_points",
            lambda: self.backend.query(
                name,
                vector,
                using=using,
                flt=flt,
                limit=limit,
                offset=offset,
                score_threshold=score_threshold,
                with_payload=with_payload,
                with_vectors=with_vectors,
            ),
        )

    def search(
        self,
        target: SearchTarget,
        vector: list[float],
        *,
        client_filter: models.Filter | None,
        limit: int,
        with_payload: bool,
        offset: int = 0,
        score_threshold: float | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """Nearest points of one tenant's target. In `field` scope the tenant condition is
        ANDed with the client's filter as a nested clause, so the client filter can only
        narrow the tenant's own points; in `collection` scope the tenant owns them all."""
        must: list[models.Condition] = []
        if target.scope == "field":
            must.append(tenant_condition(target))
        if client_filter is not None:
            must.append(client_filter)
        if with_payload:
            want: bool | list[str] = True
        else:  # only what the id needs
            want = [target.id_key] if target.id_key else False
        points = self.query(
            target.collection,
            vector,
            using=target.vector,
            flt=models.Filter(must=must) if must else None,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            with_payload=want,
            with_vectors=([target.vector] if target.vector else True) if with_vectors else False,
        )
        hits = []
        for p in points:
            payload = dict(p.payload or {}) if with_payload else None
            if payload is not None and target.tenant_field is not None:
                payload.pop(target.tenant_field, None)
            vector_out = None
            if with_vectors:
                v = p.vector.get(target.vector or "") if isinstance(p.vector, dict) else p.vector
                vector_out = [float(x) for x in v] if isinstance(v, list) else None
            hits.append(Hit(target.doc_id(p.id, p.payload), float(p.score), payload, vector_out))
        return hits

    def tenant_points(self, target: SearchTarget) -> int:
        """Points the tenant can see (an estimate on a server): 0 means a scope that matches
        nothing, a misconfiguration rather than an empty result."""
        flt = scope_filter(target)
        exact = self.backend.exact_counts_cheap
        return self._call("count", lambda: self.backend.count(target.collection, flt, exact=exact))

    def inspect_all(self, targets: list[SearchTarget], dim: int) -> list[Inspection]:
        """Can each target serve the document encoder's `dim`-d vectors (or the prefix its
        tenant declares, or its collection records)? Every reason one cannot, in words, judged
        together (`settle`). Tenants sharing a collection share its lookup and its count:
        /readyz's snapshot runs this once per refresh (service/search/readiness.py), whatever
        the number of tenants."""
        looked_up: dict[str, CollectionInfo | Exception] = {}
        totals: dict[str, int] = {}
        found = []
        for target in targets:
            if target.collection not in looked_up:
                try:
                    looked_up[target.collection] = self.collection_info(
                        target.collection, refresh=True
                    )
                except (CollectionNotFound, QdrantUnavailable) as e:
                    looked_up[target.collection] = e
            found.append(self._inspect(target, dim, looked_up[target.collection], totals))
        return settle(found)

    def _inspect(
        self,
        target: SearchTarget,
        dim: int,
        info: CollectionInfo | Exception,
        totals: dict[str, int],
    ) -> Inspection:
        out = Inspection(target)
        if isinstance(info, CollectionNotFound):
            out.warnings.append("the collection does not exist yet")
            return out
        if isinstance(info, QdrantUnavailable):
            out.problems.append(f"Qdrant: {info.reason}")
            return out
        assert isinstance(info, CollectionInfo)
        vec = info.vector(target.vector)
        if vec is None:
            if target.vector is None:
                out.problems.append(
                    f"the collection has named vectors ({info.describe_vectors()}): set the "
                    "tenant's `vector` (or QUERYLIFT_VECTOR_NAME)"
                )
            else:
                out.problems.append(
                    f"no dense vector named {target.vector!r} (the collection has "
                    f"{info.describe_vectors()})"
                )
        else:
            served = target.served_dim(dim, info.metadata)
            if (problem := target.size_problem(vec.size, dim, served)) is not None:
                out.problems.append(problem)
            if vec.distance not in RANKING_DISTANCES:
                out.problems.append(
                    f"distance {vec.distance} does not rank unit-length query vectors as the "
                    f"index means; supported: {', '.join(RANKING_DISTANCES)}"
                )
            elif vec.distance != "Cosine":
                out.notes.extend(self._norm_notes(target, vec.distance))
        try:
            out.points = self.tenant_points(target)
            if target.scope == "collection":
                out.collection_points = out.points
            else:
                if target.collection not in totals:
                    totals[target.collection] = self.count(target.collection)
                out.collection_points = totals[target.collection]
        except QdrantUnavailable as e:
            out.problems.append(f"Qdrant: {e.reason}")
        if target.scope == "field" and self.backend.indexes_payload and target.tenant_field:
            index = info.payload_index.get(target.tenant_field)
            if index is None or index[0] != "keyword":
                out.problems.append(
                    f"no keyword payload index on {target.tenant_field!r}: create one "
                    "(is_tenant=true), or every search scans the collection"
                )
            elif not index[1]:
                out.notes.append(
                    f"the index on {target.tenant_field!r} is not is_tenant=true "
                    "(Qdrant's multitenancy layout groups each tenant's points with it)"
                )
        return out

    def _norm_notes(self, target: SearchTarget, distance: str) -> list[str]:
        """Dot and Euclid rank like cosine only over unit-length documents: check a sample."""
        flt = scope_filter(target)
        points, _ = self._call(
            "scroll",
            lambda: self.backend.scroll(
                target.collection,
                flt,
                limit=NORM_SAMPLE,
                offset=None,
                with_payload=False,
                with_vectors=[target.vector] if target.vector else True,
            ),
        )
        norms = []
        for p in points:
            v = p.vector.get(target.vector or "") if isinstance(p.vector, dict) else p.vector
            if isinstance(v, list) and v:
                norms.append(math.sqrt(sum(x * x for x in v)))
        off = [n for n in norms if abs(n - 1.0) > NORM_TOLERANCE]
        if not off:
            return []
        return [
            f"{len(off)} of {len(norms)} sampled documents are not unit length (norms "
            f"{min(off):.3g}..{max(off):.3g}): under {distance} their ranking against unit "
            "query vectors differs from cosine"
        ]


def gateway_for(
    settings: Settings,
    timeout_s: float | None = None,
    metrics: Metrics | None = None,
    *,
    offline: bool = False,
) -> QdrantGateway:
    """The configured engine: the server at QUERYLIFT_QDRANT_URL, else the embedded folder
    (in its own process for the service; in-process for an `offline` command)."""
    return QdrantGateway(
        in_process=offline,
        url=settings.qdrant_url,
        path=str(settings.qdrant_path),
        api_key=settings.qdrant_api_key,
        timeout_s=settings.qdrant_timeout_s if timeout_s is None else timeout_s,
        metrics=metrics,
        hnsw=hnsw_of(settings),
    )


def hnsw_of(settings: Settings) -> HnswSettings:
    from service.search.edge_backend import HnswSettings

    return HnswSettings(
        m=settings.qdrant_hnsw_m,
        ef_construct=settings.qdrant_hnsw_ef_construct,
        full_scan_threshold_kb=settings.qdrant_exact_below_kb,
        hnsw_ef=settings.qdrant_hnsw_ef,
        payload_in_ram=settings.qdrant_payload_in_ram,
    )


def scope_filter(target: SearchTarget) -> models.Filter | None:
    """The tenant's scope as a filter: its condition in `field` scope, none in `collection`."""
    return models.Filter(must=[tenant_condition(target)]) if target.scope == "field" else None


def tenant_condition(target: SearchTarget) -> models.FieldCondition:
    assert target.tenant_field is not None and target.tenant_value is not None
    return models.FieldCondition(
        key=target.tenant_field, match=models.MatchValue(value=target.tenant_value)
    )
