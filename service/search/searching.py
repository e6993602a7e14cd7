"""Search: the part of the Runtime that queries each tenant's collection in Qdrant.

A target that cannot serve is an error that says why, never an empty answer that looks like
"nothing matched"; an empty answer with a reason that is not an error carries a warning.
"""

from __future__ import annotations

import numpy as np

from encoders import Encoder
from encoders.matryoshka import truncate
from service.bindings.tenants import Tenant
from service.engine.errors import ServiceError
from service.search.qdrant_gateway import CollectionNotFound, Hit, QdrantGateway
from service.search.targets import Inspection, SearchTarget


class Searching:
    """The Runtime's search part (service/runtime.py composes the three parts)."""

    document_encoder: Encoder
    gateway: QdrantGateway
    targets: dict[str, SearchTarget]

    def served_dim(self, tenant: str) -> int:
        """Size of the vectors `tenant` is served: its declared prefix, else the one its
        collection records (as last looked up: never a Qdrant call here, so /embed works while
        Qdrant is down; start-up, /readyz's snapshot refresh and /search refresh it), else the
        document encoder's full size."""
        full = self.document_encoder.dim
        target = self.targets.get(tenant)
        if target is None:
            return full
        info = self.gateway.known_info(target.collection)
        return target.served_dim(full, info.metadata if info is not None else None)

    def inspect_targets(self) -> list[Inspection]:
        """Each tenant's target checked against the served (document-space) vectors."""
        dim = self.document_encoder.dim
        return self.gateway.inspect_all(list(self.targets.values()), dim)

    def target_for(self, tenant: Tenant) -> SearchTarget:
        return self.targets[tenant.name]

    def collection_for(self, tenant: Tenant) -> str:
        return self.target_for(tenant).collection

    def search(
        self,
        tenant: Tenant,
        vector: np.ndarray,
        client_filter: object,
        top_k: int,
        with_payload: bool,
        warnings: list[str] | None = None,
        *,
        offset: int = 0,
        score_threshold: float | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """The tenant's nearest documents; a target that cannot serve is an error that says
        why (never an empty answer that looks like "nothing matched"); why an answer is empty
        although nothing is wrong is added to `warnings`."""
        from qdrant_client import models

        target = self.target_for(tenant)
        collection = target.collection
        try:
            info = self.gateway.collection_info(collection)
        except CollectionNotFound:
            raise ServiceError(
                "collection_not_found",
                f"collection {collection!r} does not exist; index documents into it "
                "with `querylift index` first",
            ) from None
        vec = info.vector(target.vector)
        if vec is None:
            found = self.gateway.inspect_all([target], self.document_encoder.dim)
            raise self._target_error(target, found[0])
        if vec.size != vector.shape[0] and vec.size == self.served_dim(tenant.name) < len(vector):
            # embedded before this replica first saw the collection's recorded prefix: cut it
            # as `finish` now would (a prefix of a renormalised prefix is the same direction)
            vector = truncate(vector, vec.size)
        if vec.size != vector.shape[0]:
            hint = ""
            if vec.size < vector.shape[0] and target.dim is None:
                hint = (
                    f"; if it holds a Matryoshka prefix of the document model's vectors, "
                    f"declare `dim: {vec.size}` for this tenant in the tenants file"
                )
            raise ServiceError(
                "collection_dim_mismatch",
                f"collection {collection!r} holds {vec.size}-d vectors but this tenant's "
                f"query vectors are {vector.shape[0]}-d{hint}",
                {"collection_dim": vec.size, "query_dim": int(vector.shape[0])},
            )
        assert client_filter is None or isinstance(client_filter, models.Filter)
        try:
            hits = self.gateway.search(
                target,
                vector.tolist(),
                client_filter=client_filter,
                limit=top_k,
                with_payload=with_payload,
                offset=offset,
                score_threshold=score_threshold,
                with_vectors=with_vectors,
            )
        except Exception as e:
            # A filter Qdrant itself refuses (local mode: ValueError; a server: a 4xx) is the
            # client's to fix, not an outage; anything else propagates (-> 503).
            if client_filter is not None and _is_filter_refusal(e):
                raise ServiceError(
                    "invalid_filter",
                    f"Qdrant refused the filter: {str(e)[:200]}",
                ) from None
            raise
        if not hits and self.gateway.tenant_points(target) == 0:
            # nothing this tenant can see: a misconfiguration is an error that says so; a
            # tenant (or collection) with no documents yet is a true empty answer, flagged
            found = self.gateway.inspect_all(self._peers(target), self.document_encoder.dim)
            mine = next(f for f in found if f.target is target)
            if mine.problems:
                raise self._target_error(target, mine)
            if warnings is not None:
                warnings.extend(mine.warnings)
        return hits

    def _peers(self, target: SearchTarget) -> list[SearchTarget]:
        """The targets of one collection (the judgement of an empty scope needs them all)."""
        return [t for t in self.targets.values() if t.collection == target.collection]

    @staticmethod
    def _target_error(target: SearchTarget, found: Inspection) -> ServiceError:
        return ServiceError(
            "search_target_invalid",
            f"tenant {target.tenant!r} cannot search {target.describe()}: "
            + "; ".join(found.problems),
            {"tenant": target.tenant, "collection": target.collection, "problems": found.problems},
        )


def _is_filter_refusal(exc: Exception) -> bool:
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return 400 <= exc.status_code < 500
    return isinstance(exc, ValueError | KeyError | TypeError)
