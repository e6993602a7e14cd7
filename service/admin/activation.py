"""Admin: per-tenant activation behind validation and the quality gate, rollback, tenant state.

Activation validates before it swaps: the checkpoint is re-read from the store (format, hash,
finite values), then checked against what this deployment serves and what the tenant's
collection holds (`Runtime.validate_for_tenant`). A refused activation answers 422 with every
reason and changes nothing. An accepted one is written to the store (which other replicas
poll) and applied to this replica at once by `Runtime.sync` (a pointer swap). Rollback is not
gated: it is the way back, to a version that was accepted before.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from adapters import Adapter, CheckpointError
from adapters.compat import compatibility_problems
from adapters.gate import GateReport
from service.admin.audit import Action
from service.admin.context import (
    Admin,
    AdminDep,
    binding_ref,
    event_json,
    known_tenant,
    previous_binding,
    served_binding,
    store_write,
    tenant_or_404,
)
from service.bindings.tenants import Tenant
from service.evaluation.errors import GateUnavailable
from service.evaluation.gate import evaluate as evaluate_gate
from service.evaluation.label_free import evaluate as evaluate_label_free
from service.evaluation.label_free import unlabelled_queries
from service.evaluation.records import GateRecord, LabelFreeInfo, gate_files
from service.evaluation.sets import ValidationSet, new_validation_set, parse_validation
from service.http.errors import APIError
from service.ops.query_log import QueryLog
from service.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"])


# -- tenants -----------------------------------------------------------------------------------
class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: str | None = Field(
        description="Adapter to activate; null = serve the document encoder's own vectors."
    )
    force: bool = Field(
        default=False,
        description="Activate even if the quality gate refuses (recorded in the audit log); "
        "compatibility problems still refuse.",
    )
    validation: list[dict[str, Any]] | None = Field(
        default=None,
        description="An inline validation set for this activation's gate (pairs records); "
        "default: the tenant's stored one.",
    )


@dataclass(frozen=True)
class _GateAsk:
    force: bool
    validation: ValidationSet | None  # inline; None = the tenant's stored set


def _refuse(
    admin: Admin,
    action: Action,
    tenant: Tenant,
    adapter_id: str | None,
    previous: dict[str, Any] | None,
    status: int,
    code: str,
    reasons: list[str],
    validation_failure: bool = True,
    extra: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> APIError:
    if validation_failure:
        admin.runtime.metrics.adapter_validation_failures.labels("activation").inc()
    admin.record(
        action,
        tenant=tenant.name,
        adapter_id=adapter_id,
        before=previous,
        after=previous,
        outcome="refused",
        reasons=reasons,
        extra=extra,
    )
    log.warning(
        "admin %s: %s of %s for tenant %s refused: %s",
        admin.actor,
        action,
        adapter_id,
        tenant.name,
        "; ".join(reasons),
    )
    what = "activation" if action == "activate" else "rollback"
    of = f" of adapter {adapter_id}" if adapter_id is not None else ""
    return APIError(
        status,
        code,
        f"{what}{of} for tenant {tenant.name!r} refused: {'; '.join(reasons)}",
        {"tenant": tenant.name, "adapter_id": adapter_id, "reasons": reasons, **(details or {})},
    )


def _validated(
    admin: Admin,
    action: Action,
    tenant: Tenant,
    adapter_id: str,
    previous: dict[str, Any] | None,
) -> Adapter:
    """Load `adapter_id` from disk (hash, finiteness) and check it fits the tenant here."""
    runtime = admin.runtime
    try:
        adapter = runtime.store.get(adapter_id)
    except KeyError:
        reason = f"no adapter {adapter_id!r} in the store"
        raise _refuse(
            admin,
            action,
            tenant,
            adapter_id,
            previous,
            404,
            "adapter_not_found",
            [reason],
            validation_failure=False,
        ) from None
    except CheckpointError as e:
        raise _refuse(
            admin, action, tenant, adapter_id, previous, 422, "invalid_checkpoint", e.reasons
        ) from None
    reasons = runtime.validate_for_tenant(tenant, adapter)
    if reasons:
        raise _refuse(
            admin, action, tenant, adapter_id, previous, 422, "adapter_incompatible", reasons
        )
    return adapter


def _current(runtime: Runtime, tenant: Tenant, previous: dict[str, Any] | None) -> Adapter | None:
    """The adapter the tenant has now, for the gate (None: none, or it no longer loads/fits)."""
    adapter_id = previous["adapter_id"] if previous is not None else None
    if adapter_id is None:
        return None
    try:
        adapter = runtime.adapters.get(adapter_id)
    except (KeyError, CheckpointError) as e:
        log.warning("gate for %s: current adapter %s not loadable (%s)", tenant.name, adapter_id, e)
        return None
    if compatibility_problems(adapter, runtime.query_encoder, runtime.document_encoder):
        log.warning("gate for %s: current adapter %s no longer fits", tenant.name, adapter_id)
        return None
    return adapter


@dataclass(frozen=True)
class _GateRun:
    report: GateReport | None  # None: not gated (no data), or the gate could not run (forced)
    label_free: LabelFreeInfo | None  # set when it ran on unlabelled queries
    extra: dict[str, Any] | None  # the audit line's gate fields
    forced: bool  # past a refusing (or unavailable) gate with force=true


def _evaluate(
    admin: Admin,
    tenant: Tenant,
    adapter: Adapter,
    previous: dict[str, Any] | None,
    ask: _GateAsk,
) -> tuple[GateReport, LabelFreeInfo | None] | None:
    """The labelled gate when there is a validation set (it takes precedence), else the
    label-free one when there are unlabelled queries (query set, query log); None: neither."""
    runtime, lane = admin.runtime, admin.lane
    if lane is None:  # the lifespan builds it with the admin state
        raise APIError(503, "not_ready", "the service is still starting")
    files = gate_files(runtime.store)
    validation = ask.validation or files.validation(tenant.name)
    if validation is not None:
        current = _current(runtime, tenant, previous)
        return evaluate_gate(runtime, lane, tenant, validation, adapter, current), None
    queries = unlabelled_queries(runtime, tenant, files.queries(tenant.name), admin.query_log)
    if queries is None:
        return None
    current = _current(runtime, tenant, previous)
    return evaluate_label_free(
        runtime, lane, tenant, queries, adapter, current, admin.teacher_cache
    )


def _gate(
    admin: Admin,
    tenant: Tenant,
    adapter: Adapter,
    previous: dict[str, Any] | None,
    ask: _GateAsk,
) -> _GateRun:
    """Run the quality gate when there is data for it (validation set, else unlabelled
    queries).

    Raises the 422 (or 409 when it cannot run) unless `ask.force`. Every run is recorded per
    (tenant, adapter), refused ones here and activated ones by `_swap` once the binding is
    written, so the numbers stay with the adapter.
    """
    runtime = admin.runtime
    try:
        found = _evaluate(admin, tenant, adapter, previous, ask)
    except GateUnavailable as e:
        reason = f"the quality gate cannot run: {e}"
        if not ask.force:
            raise _refuse(
                admin,
                "activate",
                tenant,
                adapter.id,
                previous,
                409,
                "gate_unavailable",
                [reason],
                validation_failure=False,
                extra={"force": False, "gate": None},
            ) from None
        return _GateRun(None, None, {"force": True, "gate": None, "gate_error": reason}, True)
    if found is None:
        return _GateRun(None, None, {"force": True, "gate": None} if ask.force else None, False)
    report, label_free = found
    refused = report.decision == "refuse"
    numbers: dict[str, Any] = {"gate": report.model_dump(mode="json")}
    if label_free is not None:
        numbers["label_free"] = label_free.model_dump(mode="json")
    if refused:
        runtime.metrics.gate_refusals.labels(
            tenant.name, "forced" if ask.force else "blocked"
        ).inc()
        if not ask.force:
            record = _record(admin, tenant, report, label_free, forced=False, activated=False)
            _save_record(runtime, record)
            raise _refuse(
                admin,
                "activate",
                tenant,
                adapter.id,
                previous,
                422,
                "quality_gate_failed",
                report.reasons,
                validation_failure=False,
                extra={"force": False, **numbers},
                details=numbers,
            )
        log.warning(
            "admin %s: FORCED activation of %s for %s past the quality gate: %s",
            admin.actor,
            adapter.id,
            tenant.name,
            "; ".join(report.reasons),
        )
    return _GateRun(report, label_free, {"force": ask.force, **numbers}, refused)


def _record(
    admin: Admin,
    tenant: Tenant,
    report: GateReport,
    label_free: LabelFreeInfo | None,
    forced: bool,
    activated: bool,
) -> GateRecord:
    assert report.candidate_id is not None
    return GateRecord(
        tenant=tenant.name,
        adapter_id=report.candidate_id,
        actor=admin.actor,
        forced=forced,
        activated=activated,
        report=report,
        label_free=label_free,
    )


def _save_record(runtime: Runtime, record: GateRecord) -> None:
    """Keep a gate run; a failed write is logged (the audit line has the numbers too)."""
    try:
        gate_files(runtime.store).save_gate(record)
    except OSError:
        log.exception("cannot write the gate record of %s / %s", record.tenant, record.adapter_id)


def _swap(
    admin: Admin,
    action: Action,
    tenant: Tenant,
    adapter_id: str | None,
    previous: dict[str, Any] | None,
    ask: _GateAsk | None = None,
) -> dict[str, Any]:
    """Validate, gate, write the binding, then swap this replica (caller holds admin.lock)."""
    runtime = admin.runtime
    adapter = None
    gate = _GateRun(None, None, None, False)
    if adapter_id is not None:
        adapter = _validated(admin, action, tenant, adapter_id, previous)
        if ask is not None:
            gate = _gate(admin, tenant, adapter, previous, ask)
        runtime.adapters.put(adapter)  # resident before the swap: sync finds it loaded
    with store_write(
        admin, action, tenant=tenant.name, adapter_id=adapter_id, before=previous, after=previous
    ):
        try:  # checked again under the store's lock: another replica may have deleted it
            binding = runtime.store.activate(tenant.name, adapter_id, actor=admin.actor)
        except KeyError:
            reason = f"adapter {adapter_id} was deleted before it could be bound"
            raise _refuse(
                admin, action, tenant, adapter_id, previous, 404, "adapter_not_found", [reason],
                validation_failure=False,
            ) from None  # fmt: skip
    assert binding.active is not None
    if gate.report is not None:
        record = _record(admin, tenant, gate.report, gate.label_free, gate.forced, activated=True)
        _save_record(runtime, record)
    active = binding_ref(binding.active.adapter_id, binding.active.version)
    runtime.sync()
    served = served_binding(runtime, tenant.name)
    if served != active:  # the store has it; this replica could not load it (see the log)
        log.error("tenant %s: activated %s but this replica serves %s", tenant.name, active, served)
    admin.record(
        action,
        tenant=tenant.name,
        adapter_id=adapter_id,
        before=previous,
        after=active,
        extra=gate.extra,
    )
    log.info("admin %s: %s tenant %s %s -> %s", admin.actor, action, tenant.name, previous, active)
    out = {"tenant": tenant.name, "active": active, "previous": previous, "served": served}
    if gate.extra is not None:  # a gate applied (validation set, queries) or force was asked
        out["gate"] = gate.report.model_dump(mode="json") if gate.report is not None else None
        out["forced"] = gate.forced  # past a refusing (or unavailable) gate with force=true
        if gate.label_free is not None:
            out["label_free"] = gate.label_free.model_dump(mode="json")
    return out


def _activate(admin: Admin, tenant_name: str, body: ActivateRequest) -> dict[str, Any]:
    tenant = tenant_or_404(admin, tenant_name, "activate")
    inline = None
    if body.validation is not None:
        settings = admin.runtime.settings
        pairs = parse_validation(
            json.dumps(body.validation).encode(),
            settings.gate_max_queries,
            settings.max_input_chars,
        )
        inline = new_validation_set(tenant.name, pairs, admin.actor)
    ask = _GateAsk(force=body.force, validation=inline)
    with admin.lock:
        previous = previous_binding(admin.runtime.store.binding(tenant.name), tenant)
        return _swap(admin, "activate", tenant, body.adapter_id, previous, ask)


def _rollback(admin: Admin, tenant_name: str) -> dict[str, Any]:
    tenant = tenant_or_404(admin, tenant_name, "rollback")
    with admin.lock:
        binding = admin.runtime.store.binding(tenant.name)
        previous = previous_binding(binding, tenant)
        if binding.active is None or len(binding.history) < 2:
            reason = f"tenant {tenant.name!r} has no previous adapter version"
            raise _refuse(
                admin,
                "rollback",
                tenant,
                None,
                previous,
                409,
                "nothing_to_roll_back",
                [reason],
                validation_failure=False,
            )
        # the store's rollback re-activates history[-2] as a new version; doing it through
        # _swap re-validates exactly that adapter before it is written
        target = binding.history[-2].adapter_id
        return _swap(admin, "rollback", tenant, target, previous)


@router.put("/tenants/{tenant}/adapter")
async def activate_adapter(tenant: str, body: ActivateRequest, admin: AdminDep) -> dict[str, Any]:
    """Validate (and quality-gate) an adapter for the tenant and make it active (null: none)."""
    return await to_thread.run_sync(lambda: _activate(admin, tenant, body))


@router.post("/tenants/{tenant}/rollback")
async def rollback_adapter(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """Re-activate the tenant's previous adapter (re-validated) as a new version."""
    return await to_thread.run_sync(lambda: _rollback(admin, tenant))


def _tenant_info(runtime: Runtime, tenant: Tenant, query_log: QueryLog | None) -> dict[str, Any]:
    binding = runtime.store.binding(tenant.name)
    files = gate_files(runtime.store)
    validation = files.validation(tenant.name)
    queries = files.queries(tenant.name)
    gates = files.gates_for_tenant(tenant.name)
    current = previous_binding(binding, tenant)
    active_gate = gates.get(current["adapter_id"]) if current and current["adapter_id"] else None
    return {
        "tenant": tenant.name,
        "collection": runtime.collection_for(tenant),
        "default_adapter": tenant.default_adapter,
        "active": event_json(binding.active) if binding.active is not None else None,
        "served": served_binding(runtime, tenant.name),
        "history": [event_json(e) for e in binding.history],
        "validation": validation.summary() if validation is not None else None,
        "queries": queries.summary() if queries is not None else None,
        "query_log": {"enabled": query_log is not None and query_log.enabled_for(tenant.name)},
        "gate": active_gate.model_dump(mode="json") if active_gate is not None else None,
        "gates": {a: r.model_dump(mode="json") for a, r in gates.items()},
    }


@router.get("/tenants/{tenant}")
async def get_tenant(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """The tenant's active adapter in the store, what this replica serves, and the history."""
    found = known_tenant(admin.runtime, tenant)
    return await to_thread.run_sync(lambda: _tenant_info(admin.runtime, found, admin.query_log))
