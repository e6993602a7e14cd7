"""The only place that talks to Qdrant: serialised calls, tenant-scoped search, clear errors.

qdrant-client's local mode is not thread-safe, so every call holds one lock there. Against a
server every call is bounded by `timeout_s` (each connect / read / write of qdrant-client's
HTTP transport), and a failure to answer is raised as one of the `QdrantUnavailable` types
(unreachable, timeout, error), so /search can answer 503 and /readyz can say why. Nothing
about a failure is remembered: the next call tries again (only successful collection lookups
are cached), so the service recovers by itself when Qdrant does.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx
from pydantic import SecretStr
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from service.ops.metrics import Metrics
from service.search.targets import (
    NORM_SAMPLE,
    NORM_TOLERANCE,
    RANKING_DISTANCES,
    Inspection,
    SearchTarget,
    settle,
)

T = TypeVar("T")


class CollectionNotFound(LookupError):
    pass


class QdrantFolderInUse(RuntimeError):
    """The embedded Qdrant's folder is open in another process: local mode locks it."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"the embedded Qdrant folder {path} is open in another process (a running "
            "`querylift serve`?): stop it, or run Qdrant as a server and set "
            "QUERYLIFT_QDRANT_URL (local mode allows one process per folder)"
        )
        self.path = path


class QdrantUnavailable(RuntimeError):
    """Qdrant did not answer usefully; `reason` is the one line /readyz shows the admin."""

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
class VectorInfo:
    size: int
    distance: str  # Qdrant's name: Cosine, Dot, Euclid, Manhattan


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    vectors: dict[str, VectorInfo]  # dense vectors by name; "" is the unnamed one
    metadata: dict[str, Any]
    sparse: tuple[str, ...] = ()
    payload_index: dict[str, tuple[str, bool]] = field(default_factory=dict)  # type, is_tenant

    def vector(self, name: str | None) -> VectorInfo | None:
        return self.vectors.get(name or "")

    @property
    def dim(self) -> int | None:
        """The unnamed vector's size (None for a collection of named vectors only)."""
        v = self.vectors.get("")
        return v.size if v is not None else None

    def describe_vectors(self) -> str:
        names = [repr(n) for n in self.vectors if n]
        if "" in self.vectors:
            names.insert(0, "one unnamed vector")
        return ", ".join(names) or "no dense vector"


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
            try:
                self.client = QdrantClient(path=path or ":memory:")
            except RuntimeError as e:
                if "already accessed" in str(e):  # qdrant-client's portalocker lock
                    raise QdrantFolderInUse(str(path)) from e
                raise
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
        ci = CollectionInfo(
            name=name,
            vectors=vectors,
            metadata=dict(info.config.metadata or {}),
            sparse=tuple(params.sparse_vectors or {}),
            payload_index=index,
        )
        self._info[name] = ci
        return ci

    def known_info(self, name: str) -> CollectionInfo | None:
        """The last successful lookup of `name`, without calling Qdrant (None: never seen).

        The request path reads a collection's recorded vector size here: /embed must not
        wait on Qdrant, and start-up, /readyz's snapshot refresh and /search refresh it."""
        return self._info.get(name)

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

    def scroll(
        self, name: str, flt: models.Filter | None = None, *, page: int = 1024
    ) -> Iterator[models.Record]:
        """Every point of `name` matching `flt`, with its payload and without its vector, a
        page per call: offline readers (distillation reads a corpus back) walk a collection
        through the same error mapping and metrics as the request path."""
        offset: models.ExtendedPointId | None = None
        while True:
            points, offset = self._call(
                "scroll",
                functools.partial(
                    self.client.scroll,
                    name,
                    scroll_filter=flt,
                    limit=page,
                    offset=offset,
                    with_payload=True,
                    with_vectors=False,
                ),
            )
            yield from points
            if offset is None:
                return

    def count(self, name: str, flt: models.Filter | None = None) -> int:
        res = self._call("count", lambda: self.client.count(name, count_filter=flt, exact=True))
        return int(res.count)

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
        res = self._call(
            "query_points",
            lambda: self.client.query_points(
                target.collection,
                query=vector,
                using=target.vector,
                query_filter=models.Filter(must=must) if must else None,
                limit=limit,
                offset=offset or None,
                score_threshold=score_threshold,
                with_payload=want,
                with_vectors=([target.vector] if target.vector else True)
                if with_vectors
                else False,
            ),
        )
        hits = []
        for p in res.points:
            payload = dict(p.payload or {}) if with_payload else None
            if payload is not None and target.tenant_field is not None:
                payload.pop(target.tenant_field, None)
            vector = None
            if with_vectors:
                v = p.vector.get(target.vector or "") if isinstance(p.vector, dict) else p.vector
                vector = [float(x) for x in v] if isinstance(v, list) else None
            hits.append(Hit(target.doc_id(p.id, p.payload), float(p.score), payload, vector))
        return hits

    def tenant_points(self, target: SearchTarget) -> int:
        """Points the tenant can see (an estimate on a server): 0 means a scope that matches
        nothing, a misconfiguration rather than an empty result."""
        flt = scope_filter(target)
        res = self._call(
            "count",
            lambda: self.client.count(target.collection, count_filter=flt, exact=self.local),
        )
        return int(res.count)

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
        if target.scope == "field" and not self.local and target.tenant_field:
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
            lambda: self.client.scroll(
                target.collection,
                scroll_filter=flt,
                limit=NORM_SAMPLE,
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


def scope_filter(target: SearchTarget) -> models.Filter | None:
    """The tenant's scope as a filter: its condition in `field` scope, none in `collection`."""
    return models.Filter(must=[tenant_condition(target)]) if target.scope == "field" else None


def tenant_condition(target: SearchTarget) -> models.FieldCondition:
    assert target.tenant_field is not None and target.tenant_value is not None
    return models.FieldCondition(
        key=target.tenant_field, match=models.MatchValue(value=target.tenant_value)
    )
