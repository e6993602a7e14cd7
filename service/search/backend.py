"""What the gateway needs from a vector engine: one protocol, two implementations.

`client_backend.ClientBackend` is the Qdrant server through qdrant-client (and, for tests only,
qdrant-client's local mode); `edge_backend.EdgeBackend` is Qdrant's own engine embedded through
qdrant-edge-py. Requests and answers use qdrant-client's models (the server's API types), so a
filter a client sends /search means the same on both; what Edge cannot do is refused in one
place (`edge_convert`) with `Unsupported`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # kept light: `serve`'s preflight imports this module before any engine
    from qdrant_client import models


class CollectionNotFound(LookupError):
    pass


class Unsupported(ValueError):
    """A request this engine cannot carry out (a filter or option the embedded engine lacks):
    the caller's to change, answered 4xx, never an outage."""


class FolderRefused(RuntimeError):
    """The embedded engine's folder cannot be opened as it is: the message names the fix."""


class QdrantFolderInUse(FolderRefused):
    """The embedded engine's folder is held by another process (one process per folder)."""

    def __init__(self, path: str, holder: str = "") -> None:
        who = f" by {holder}" if holder else " in another process"
        super().__init__(
            f"the embedded Qdrant folder {path} is held{who} (a running `querylift serve` or "
            "`querylift index`?): stop it first, or run Qdrant as a server and set "
            "QUERYLIFT_QDRANT_URL (the embedded engine allows one process per folder)"
        )
        self.path = path
        self.holder = holder


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
    sparse_idf: tuple[str, ...] = ()  # the sparse vectors Qdrant weights by IDF
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


WithVectors = bool | list[str]
WithPayload = bool | list[str]
Offset = int | str | None  # a point id (qdrant-client's ExtendedPointId) or none


class Backend(Protocol):
    """The calls the gateway makes. Every method may raise; `map_error` says which failures
    are an outage (QdrantUnavailable) rather than the caller's mistake."""

    kind: str  # "server", "edge" or "local-mode" (named in /info, doctor and errors)
    serialized: bool  # True: not thread-safe, the gateway holds one lock around every call
    indexes_payload: bool  # False: payload indexes are ignored (local mode), do not ask for them
    exact_counts_cheap: bool  # True: an exact count costs no more than an estimate

    def map_error(self, op: str, e: Exception) -> QdrantUnavailable | None: ...

    def ping(self) -> None: ...

    def describe(self, name: str) -> CollectionInfo: ...

    def create_collection(
        self,
        name: str,
        vectors: dict[str, VectorInfo],
        metadata: dict[str, Any],
        sparse: dict[str, bool] | None = None,  # sparse vector name -> IDF modifier
    ) -> None: ...

    def create_keyword_index(self, name: str, key: str, *, is_tenant: bool) -> None: ...

    def upsert(self, name: str, points: list[models.PointStruct]) -> None: ...

    def scroll(
        self,
        name: str,
        flt: models.Filter | None,
        *,
        limit: int,
        offset: Offset,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> tuple[list[models.Record], Offset]: ...

    def count(self, name: str, flt: models.Filter | None, *, exact: bool) -> int: ...

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
    ) -> list[models.ScoredPoint]: ...

    def retrieve(
        self,
        name: str,
        ids: list[models.ExtendedPointId],
        *,
        with_payload: WithPayload,
        with_vectors: WithVectors,
    ) -> list[models.Record]: ...

    def close(self) -> None: ...
