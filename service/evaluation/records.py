"""Gate records and where the evaluation's files live: validation sets, query sets and the
latest gate run of each (tenant, adapter), beside the adapter store's own folders (every file
written by fsync + rename):
    <store>/validation/<tenant>.json          the tenant's validation set
    <store>/queries/<tenant>.json             its unlabelled query set (the label-free gate)
    <store>/gates/<tenant>/<adapter id>.json  the latest gate run of that adapter for the tenant
Gate records live outside the checkpoint: a manifest's content is its id (adapters/checkpoint
`content_id`), so writing numbers into it would turn it into another adapter.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.fsutil import atomic_write_bytes
from adapters.gate import GateReport
from adapters.names import is_safe_name
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

    @staticmethod
    def _read(path: Path, model: type[_Set]) -> _Set | None:
        return model.model_validate_json(path.read_bytes()) if path.is_file() else None

    @staticmethod
    def _remove(path: Path) -> bool:
        if not path.is_file():
            return False
        path.unlink()
        return True

    def save_queries(self, qs: QuerySet) -> None:
        atomic_write_bytes(self._queries_path(qs.tenant), qs.model_dump_json().encode())

    def queries(self, tenant: str) -> QuerySet | None:
        return self._read(self._queries_path(tenant), QuerySet)

    def delete_queries(self, tenant: str) -> bool:
        return self._remove(self._queries_path(tenant))

    def save_validation(self, vs: ValidationSet) -> None:
        atomic_write_bytes(self._validation_path(vs.tenant), vs.model_dump_json().encode())

    def validation(self, tenant: str) -> ValidationSet | None:
        return self._read(self._validation_path(tenant), ValidationSet)

    def delete_validation(self, tenant: str) -> bool:
        return self._remove(self._validation_path(tenant))

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


def gate_files(store_root: Path) -> GateFiles:
    return GateFiles(store_root)
