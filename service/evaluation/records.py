"""Gate records and where the evaluation's files live: validation sets, query sets and the
latest gate run of each (tenant, adapter), on the adapter store beside its own keys (files in
its folder written by fsync + rename, or objects in its bucket, each replaced whole), so every
replica reads the same ones:
    <store>/validation/<tenant>.json          the tenant's validation set
    <store>/queries/<tenant>.json             its unlabelled query set (the label-free gate)
    <store>/gates/<tenant>/<adapter id>.json  the latest gate run of that adapter for the tenant
Gate records live outside the checkpoint: a manifest's content is its id (adapters/checkpoint
`content_id`), so writing numbers into it would turn it into another adapter.
"""

from __future__ import annotations

import logging
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.gate import GateReport
from adapters.names import is_safe_name
from adapters.store import AdapterStore, Records
from service.evaluation.sets import QuerySet, ValidationSet

log = logging.getLogger(__name__)

_Set = TypeVar("_Set", QuerySet, ValidationSet)


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
    """Validation sets, query sets and gate records on the adapter store (`AdapterStore.records`:
    files in its folder, or objects beside its keys), so every replica sees the same ones."""

    def __init__(self, records: Records) -> None:
        self.records = records

    @staticmethod
    def _name(name: str) -> str:
        if not is_safe_name(name):
            raise KeyError(name)
        return name

    def _validation_key(self, tenant: str) -> str:
        return f"validation/{self._name(tenant)}.json"

    def _gate_key(self, tenant: str, adapter_id: str) -> str:
        return f"gates/{self._name(tenant)}/{self._name(adapter_id)}.json"

    def _queries_key(self, tenant: str) -> str:
        return f"queries/{self._name(tenant)}.json"

    def _read(self, key: str, model: type[_Set]) -> _Set | None:
        data = self.records.read(key)
        return model.model_validate_json(data) if data is not None else None

    def save_queries(self, qs: QuerySet) -> None:
        self.records.write(self._queries_key(qs.tenant), qs.model_dump_json().encode())

    def queries(self, tenant: str) -> QuerySet | None:
        return self._read(self._queries_key(tenant), QuerySet)

    def delete_queries(self, tenant: str) -> bool:
        return self.records.delete(self._queries_key(tenant))

    def save_validation(self, vs: ValidationSet) -> None:
        self.records.write(self._validation_key(vs.tenant), vs.model_dump_json().encode())

    def validation(self, tenant: str) -> ValidationSet | None:
        return self._read(self._validation_key(tenant), ValidationSet)

    def delete_validation(self, tenant: str) -> bool:
        return self.records.delete(self._validation_key(tenant))

    def save_gate(self, record: GateRecord) -> None:
        key = self._gate_key(record.tenant, record.adapter_id)
        self.records.write(key, record.model_dump_json(indent=2).encode())

    def gate(self, tenant: str, adapter_id: str) -> GateRecord | None:
        try:
            key = self._gate_key(tenant, adapter_id)
        except KeyError:
            return None
        try:
            data = self.records.read(key)
            return GateRecord.model_validate_json(data) if data is not None else None
        except (OSError, ValidationError) as e:
            log.error("gate record %s unreadable: %s", key, e)
            return None

    def _gate_keys(self) -> list[tuple[str, str]]:
        """(tenant, adapter id) of every stored gate record."""
        out = []
        for key in self.records.keys("gates/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                tenant, adapter_id = parts[1], parts[2].removesuffix(".json")
                if is_safe_name(tenant) and is_safe_name(adapter_id):
                    out.append((tenant, adapter_id))
        return out

    def gates_for_tenant(self, tenant: str) -> dict[str, GateRecord]:
        self._name(tenant)
        out = {}
        for t, adapter_id in self._gate_keys():
            if t == tenant and (record := self.gate(tenant, adapter_id)) is not None:
                out[adapter_id] = record
        return out

    def gates_for_adapter(self, adapter_id: str) -> dict[str, GateRecord]:
        out = {}
        for tenant, a in self._gate_keys():
            if a == adapter_id and (record := self.gate(tenant, adapter_id)) is not None:
                out[tenant] = record
        return out

    def drop_adapter(self, adapter_id: str) -> None:
        """Forget a deleted adapter's gate records."""
        self._name(adapter_id)
        for tenant, a in self._gate_keys():
            if a == adapter_id:
                self.records.delete(self._gate_key(tenant, adapter_id))


def gate_files(store: AdapterStore) -> GateFiles:
    return GateFiles(store.records)
