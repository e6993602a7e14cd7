"""The quality gate, service side: tenant validation sets, the live evaluation, gate records.

A tenant's validation set is the pairs format of `querylift train` (`{"query", "positive_ids",
"negative_ids"?, "id"?}` a line; negatives are checked, not used here), read by the parser
training uses too (adapters/pairs.py), so a set one side accepts the other does. On
activation the candidate adapter, the tenant's current adapter and the document model's own
query vectors embed every validation query (`Runtime.embed_batch` with `EmbedItem.adapter` /
`baseline`) and search the tenant's real collection with the tenant filter; documents are
matched by the ids /search answers. The statistics and the decision are `adapters.gate`'s, the
same code `querylift eval --gate` runs.

On disk, beside the adapter store's own folders (every file written by fsync + rename):
    <store>/validation/<tenant>.json          the tenant's validation set
    <store>/queries/<tenant>.json             its unlabelled query set (the label-free gate)
    <store>/gates/<tenant>/<adapter id>.json  the latest gate run of that adapter for the tenant
Gate records live outside the checkpoint: a manifest's content is its id (adapters/checkpoint
`content_id`), so writing numbers into it would turn it into another adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters import Adapter
from adapters.fsutil import atomic_write_bytes
from adapters.gate import GateReport, ndcg_at_k, run_gate
from adapters.names import is_safe_name
from adapters.pairs import PairError, parse_pairs
from service.bindings.tenants import Tenant
from service.engine.embedding import ActiveAdapter, EmbedItem, EmbedOutcome
from service.engine.errors import ServiceError
from service.http.errors import APIError
from service.runtime import Runtime
from service.search.qdrant_gateway import CollectionNotFound, tenant_condition

log = logging.getLogger(__name__)

MAX_VALIDATION_BYTES = 16 << 20
GATE_DEPTH = 10  # nDCG@10: the ranks the gate looks at
_CHUNK = 128  # validation queries per embed call (bounds memory, keeps encoder batches sane)


class GateUnavailable(Exception):
    """The gate cannot run (e.g. the tenant's collection does not exist)."""


# -- validation sets ---------------------------------------------------------------------------
class ValidationPair(BaseModel):
    """One labelled query as stored: made from an `adapters.pairs.Pair`, which checked it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(description="query id (the line's `id`, else `q<line number>`)")
    query: str = Field(min_length=1)
    positive_ids: list[str] = Field(min_length=1, description="relevant document ids (doc_id)")


class ValidationSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    sha256: str = Field(description="sha256 of the canonical pairs (what gate records cite)")
    uploaded_at: str
    actor: str | None = None
    pairs: list[ValidationPair]

    def summary(self) -> dict[str, Any]:
        return {
            "n_queries": len(self.pairs),
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at,
            "actor": self.actor,
        }


def _invalid(message: str, details: Any = None) -> APIError:
    return APIError(422, "invalid_validation_set", message, details)


def read_records(
    body: bytes,
    *,
    what: str,
    items: str,
    wrapper: str,
    invalid: Callable[..., APIError],
    max_bytes: int,
    max_queries: int,
) -> tuple[list[tuple[int, Any]], bool]:
    """The records of an uploaded set (validation pairs, unlabelled queries): a JSON list (or
    `{wrapper: [...]}`) or JSON lines, within the size and count caps. Returns ((position,
    record), whether it was a list); a problem names its line."""
    if len(body) > max_bytes:
        raise APIError(
            413, "payload_too_large", f"{what} is over {max_bytes} bytes", {"max_bytes": max_bytes}
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(f"{what} is not UTF-8") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSON lines (or broken JSON: the line loop below names the line)
    if isinstance(whole, dict) and set(whole) == {wrapper}:
        whole = whole[wrapper]
    records: list[tuple[int, Any]] = []
    if isinstance(whole, list):
        records = list(enumerate(whole, 1))
    elif text.lstrip().startswith("["):
        raise invalid(f"invalid JSON: expected a list of {items} or JSON lines")
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise invalid(f"line {lineno}: invalid JSON ({e.msg})", {"line": lineno}) from None
    if not records:
        raise invalid(f"{what} is empty")
    if len(records) > max_queries:
        raise APIError(
            413,
            "too_many_queries",
            f"{what} has {len(records)} queries; the limit is "
            f"{max_queries} (QUERYLIFT_GATE_MAX_QUERIES)",
            {"queries": len(records), "max_queries": max_queries},
        )
    return records, isinstance(whole, list)


def parse_validation(body: bytes, max_queries: int, max_chars: int) -> list[ValidationPair]:
    """Validate an uploaded set: every problem names its line (or list position)."""
    records, _ = read_records(
        body,
        what="the validation set",
        items="pairs",
        wrapper="pairs",
        invalid=_invalid,
        max_bytes=MAX_VALIDATION_BYTES,
        max_queries=max_queries,
    )
    pairs: list[ValidationPair] = []
    try:
        for pair in parse_pairs(records):
            if len(pair.query) > max_chars:
                raise _invalid(
                    f"line {pair.line}: the query has {len(pair.query)} characters; the limit "
                    f"is {max_chars} (QUERYLIFT_MAX_INPUT_CHARS)",
                    {"line": pair.line},
                )
            pairs.append(
                ValidationPair(id=pair.id, query=pair.query, positive_ids=list(pair.positive_ids))
            )
    except PairError as e:
        field = {"errors": [{"loc": [e.key], "msg": e.reason}]} if e.key else {}
        raise _invalid(str(e), {"line": e.line, **field}) from None
    return pairs


def fingerprint(pairs: list[ValidationPair]) -> str:
    canon = "\n".join(
        json.dumps(p.model_dump(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        for p in pairs
    )
    return hashlib.sha256(canon.encode()).hexdigest()


# -- unlabelled query sets (the label-free gate's data) -----------------------------------------
class QuerySet(BaseModel):
    """A tenant's unlabelled queries for the label-free gate (service/admin/label_free.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    sha256: str = Field(description="sha256 of the queries, one per line (what reports cite)")
    uploaded_at: str
    actor: str | None = None
    queries: list[str]

    def summary(self) -> dict[str, Any]:
        return {
            "n_queries": len(self.queries),
            "sha256": self.sha256,
            "uploaded_at": self.uploaded_at,
            "actor": self.actor,
        }


# -- gate records ------------------------------------------------------------------------------
class LabelFreeInfo(BaseModel):
    """What a label-free gate run scored, beside its GateReport: there the `*_ndcg` numbers
    are agreements with the teacher (nDCG@10 against the query encoder's ranking)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["query_set", "query_log"] = Field(
        description="the tenant's uploaded query set, or the held-out share of its query log"
    )
    teacher: str = Field(description="the query encoder that ranked the candidates")
    queries_available: int = Field(description="distinct queries in the source")
    queries_used: int = Field(description="at most QUERYLIFT_GATE_LABEL_FREE_QUERIES")
    queries_scored: int = Field(description="those with at least two candidates")
    candidates_per_query: int = Field(description="QUERYLIFT_GATE_LABEL_FREE_CANDIDATES")
    mean_candidates: float = Field(description="candidates found per scored query")
    teacher_rows: int = Field(description="texts the teacher scored with (queries + docs)")
    teacher_cached: int = Field(
        default=0, description="of those, vectors kept from earlier runs (not embedded again)"
    )
    candidate_agreement: float
    baseline_agreement: float = Field(description="the document model alone")
    current_agreement: float | None = Field(default=None, description="the current adapter")
    seconds: dict[str, float] = Field(
        description="wall time of each step: embed, search, teacher, score, total"
    )


class GateRecord(BaseModel):
    """One gate run for (tenant, adapter): the numbers, who asked, and what happened."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str
    adapter_id: str
    actor: str
    forced: bool = Field(description="activated with force=true although the gate refused")
    activated: bool
    report: GateReport
    label_free: LabelFreeInfo | None = Field(
        default=None, description="set when the gate ran without labels (no validation set)"
    )


class GateFiles:
    """Validation sets and gate records in the adapter store folder (shared by replicas)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def _name(name: str) -> str:
        if not is_safe_name(name):
            raise KeyError(name)
        return name

    def _validation_path(self, tenant: str) -> Path:
        return self.root / "validation" / f"{self._name(tenant)}.json"

    def _gate_path(self, tenant: str, adapter_id: str) -> Path:
        return self.root / "gates" / self._name(tenant) / f"{self._name(adapter_id)}.json"

    def _queries_path(self, tenant: str) -> Path:
        return self.root / "queries" / f"{self._name(tenant)}.json"

    def save_queries(self, qs: QuerySet) -> None:
        atomic_write_bytes(self._queries_path(qs.tenant), qs.model_dump_json().encode())

    def queries(self, tenant: str) -> QuerySet | None:
        path = self._queries_path(tenant)
        if not path.is_file():
            return None
        return QuerySet.model_validate_json(path.read_bytes())

    def delete_queries(self, tenant: str) -> bool:
        path = self._queries_path(tenant)
        if not path.is_file():
            return False
        path.unlink()
        return True

    def save_validation(self, vs: ValidationSet) -> None:
        atomic_write_bytes(self._validation_path(vs.tenant), vs.model_dump_json().encode())

    def validation(self, tenant: str) -> ValidationSet | None:
        path = self._validation_path(tenant)
        if not path.is_file():
            return None
        return ValidationSet.model_validate_json(path.read_bytes())

    def delete_validation(self, tenant: str) -> bool:
        path = self._validation_path(tenant)
        if not path.is_file():
            return False
        path.unlink()
        return True

    def save_gate(self, record: GateRecord) -> None:
        path = self._gate_path(record.tenant, record.adapter_id)
        atomic_write_bytes(path, record.model_dump_json(indent=2).encode())

    def gate(self, tenant: str, adapter_id: str) -> GateRecord | None:
        try:
            path = self._gate_path(tenant, adapter_id)
        except KeyError:
            return None
        if not path.is_file():
            return None
        try:
            return GateRecord.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as e:
            log.error("gate record %s unreadable: %s", path, e)
            return None

    def gates_for_tenant(self, tenant: str) -> dict[str, GateRecord]:
        folder = self.root / "gates" / self._name(tenant)
        out = {}
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = self.gate(tenant, p.stem)
            if record is not None:
                out[p.stem] = record
        return out

    def gates_for_adapter(self, adapter_id: str) -> dict[str, GateRecord]:
        base = self.root / "gates"
        out = {}
        for folder in sorted(base.iterdir()) if base.is_dir() else []:
            if folder.is_dir() and (folder / f"{adapter_id}.json").is_file():
                record = self.gate(folder.name, adapter_id)
                if record is not None:
                    out[folder.name] = record
        return out

    def drop_adapter(self, adapter_id: str) -> None:
        """Forget a deleted adapter's gate records."""
        self._name(adapter_id)
        base = self.root / "gates"
        for path in base.glob(f"*/{adapter_id}.json") if base.is_dir() else []:
            os.unlink(path)


def gate_files(runtime: Runtime) -> GateFiles:
    return GateFiles(runtime.store.root)


# -- the live evaluation -----------------------------------------------------------------------
@dataclass(frozen=True)
class System:
    key: str  # "baseline" | "candidate" | "current"
    adapter: ActiveAdapter | None  # None: the document encoder's own query vectors


def served_vectors(
    runtime: Runtime, tenant: Tenant, systems: list[System], texts: list[str]
) -> dict[str, np.ndarray]:
    """{system key: the vectors the tenant would be served} for `texts` (Matryoshka cut
    included); one embed_batch call per chunk for every system. Both gates score with it."""
    out: dict[str, list[np.ndarray]] = {s.key: [] for s in systems}
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start : start + _CHUNK]
        items = [
            EmbedItem(
                tenant.name,
                chunk,
                "query",
                truncate=True,  # a long validation query is cut, as serving would with truncate
                adapter=s.adapter,
                baseline=s.adapter is None,
            )
            for s in systems
        ]
        for s, res in zip(systems, runtime.embed_batch(items), strict=True):
            if isinstance(res, ServiceError):
                raise res
            assert isinstance(res, EmbedOutcome)
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
    vectors = served_vectors(runtime, tenant, systems, [p.query for p in pairs])
    scores: dict[str, dict[str, float]] = {}
    for s in systems:
        ranked = _rankings(runtime, tenant, vectors[s.key])
        scores[s.key] = {
            p.id: ndcg_at_k(r, dict.fromkeys(p.positive_ids, 1), GATE_DEPTH)
            for p, r in zip(pairs, ranked, strict=True)
        }
    return decide(runtime, scores, candidate, current, validation.sha256)


def new_validation_set(
    tenant: str, pairs: list[ValidationPair], actor: str | None
) -> ValidationSet:
    return ValidationSet(
        tenant=tenant,
        sha256=fingerprint(pairs),
        uploaded_at=datetime.now(UTC).isoformat(),
        actor=actor,
        pairs=pairs,
    )


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
