"""The quality gate, service side: the live evaluation of a candidate adapter on a tenant's
validation set.

On activation the candidate adapter, the tenant's current adapter and the document model's own
query vectors embed every validation query (`EmbedItem.adapter` / `baseline`, through the
batcher's background lane: behind live traffic) and search the tenant's real collection with
the tenant filter; documents are matched by the ids /search answers. The statistics and the
decision are `adapters.gate`'s, the same code `querylift eval --gate` runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from adapters import Adapter
from adapters.gate import GateReport, ndcg_at_k, run_gate
from service.bindings.tenants import Tenant
from service.engine.background import BackgroundLane
from service.engine.embedding import ActiveAdapter, EmbedItem
from service.engine.errors import ServiceError
from service.evaluation.errors import GateUnavailable
from service.evaluation.sets import ValidationPair, ValidationSet
from service.runtime import Runtime
from service.search.qdrant_gateway import CollectionNotFound, tenant_condition

log = logging.getLogger(__name__)

GATE_DEPTH = 10  # nDCG@10: the ranks the gate looks at
_CHUNK = 128  # validation queries per round of systems (the query cache serves the 2nd and 3rd)


# -- the live evaluation -----------------------------------------------------------------------
@dataclass(frozen=True)
class System:
    key: str  # "baseline" | "candidate" | "current"
    adapter: ActiveAdapter | None  # None: the document encoder's own query vectors


def served_vectors(
    lane: BackgroundLane, tenant: Tenant, systems: list[System], texts: list[str]
) -> dict[str, np.ndarray]:
    """{system key: the vectors the tenant would be served} for `texts` (Matryoshka cut
    included), through the background lane, behind live traffic. Both gates score with it."""
    out: dict[str, list[np.ndarray]] = {s.key: [] for s in systems}
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start : start + _CHUNK]
        for s in systems:
            item = EmbedItem(
                tenant.name,
                chunk,
                "query",
                truncate=True,  # a long validation query is cut, as serving would with truncate
                adapter=s.adapter,
                baseline=s.adapter is None,
            )
            res = lane.embed(item)
            if res.degraded:  # the document encoder answered for the query encoder
                raise GateUnavailable(f"the query encoder is unavailable ({res.degraded})")
            out[s.key].append(np.asarray(res.vectors, dtype=np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


def _rankings(runtime: Runtime, tenant: Tenant, vectors: np.ndarray) -> list[list[str]]:
    ranked = []
    for v in vectors:
        try:
            hits = runtime.search(tenant, v, None, GATE_DEPTH, with_payload=False)
        except ServiceError as e:
            if e.code in ("collection_not_found", "collection_dim_mismatch"):
                raise GateUnavailable(e.message) from None
            raise
        ranked.append([h.id for h in hits])
    return ranked


def gate_systems(
    runtime: Runtime, tenant: Tenant, candidate: Adapter, current: Adapter | None, missing: str
) -> list[System]:
    """What a gate scores: the document model alone, the candidate and (when another) the
    current adapter; GateUnavailable, saying `missing`, when the tenant has no collection."""
    collection = runtime.collection_for(tenant)
    try:
        runtime.gateway.collection_info(collection, refresh=True)
    except CollectionNotFound:
        raise GateUnavailable(f"collection {collection!r} does not exist: {missing}") from None
    systems = [System("baseline", None), System("candidate", ActiveAdapter(candidate, 0))]
    if current is not None and current.id != candidate.id:
        systems.append(System("current", ActiveAdapter(current, 0)))
    return systems


def decide(
    runtime: Runtime,
    scores: dict[str, dict[str, float]],
    candidate: Adapter,
    current: Adapter | None,
    sha256: str,
) -> GateReport:
    """The paired-bootstrap decision on per-query scores of each system (both gates'); a
    re-activated current adapter is its own reference."""
    if current is not None and current.id == candidate.id:
        scores["current"] = scores["candidate"]
    s = runtime.settings
    return run_gate(
        scores["candidate"],
        scores["baseline"],
        scores.get("current"),
        threshold=s.gate_max_regression,
        n_resamples=s.gate_resamples,
        candidate_id=candidate.id,
        current_id=current.id if current is not None else None,
        validation_sha256=sha256,
    )


def evaluate(
    runtime: Runtime,
    lane: BackgroundLane,
    tenant: Tenant,
    validation: ValidationSet,
    candidate: Adapter,
    current: Adapter | None,
) -> GateReport:
    """Embed, search and score the validation set for the three systems, then decide.

    `current` None: the tenant serves the document model's own vectors (the baseline).
    """
    systems = gate_systems(
        runtime, tenant, candidate, current, "nothing to search the validation set in"
    )
    pairs = validation.pairs
    vectors = served_vectors(lane, tenant, systems, [p.query for p in pairs])
    scores: dict[str, dict[str, float]] = {}
    for s in systems:
        ranked = _rankings(runtime, tenant, vectors[s.key])
        scores[s.key] = {
            p.id: ndcg_at_k(r, dict.fromkeys(p.positive_ids, 1), GATE_DEPTH)
            for p, r in zip(pairs, ranked, strict=True)
        }
    return decide(runtime, scores, candidate, current, validation.sha256)


def known_ids(runtime: Runtime, tenant: Tenant, pairs: list[ValidationPair]) -> int | None:
    """How many distinct positive ids exist in the tenant's collection (None: no collection).

    Point ids derive from (tenant, doc_id), so one point per id: a count is the number found.
    """
    from qdrant_client import models

    ids = sorted({d for p in pairs for d in p.positive_ids})
    target = runtime.target_for(tenant)
    collection = target.collection
    try:
        runtime.gateway.collection_info(collection, refresh=True)
    except CollectionNotFound:
        return None
    must: list[models.Condition] = []
    if target.scope == "field":
        must.append(tenant_condition(target))
    if target.id_key is not None:
        must.append(models.FieldCondition(key=target.id_key, match=models.MatchAny(any=ids)))
    else:  # ids are point ids: integers or UUIDs, as /search answers them
        point_ids: list[int | str] = [int(i) if i.isdigit() else i for i in ids]
        must.append(models.HasIdCondition(has_id=point_ids))
    try:
        return runtime.gateway.count(collection, models.Filter(must=must))
    except ValueError:  # a point id that is neither an integer nor a UUID matches nothing
        return 0
