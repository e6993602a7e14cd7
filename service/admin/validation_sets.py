"""Admin: each tenant's validation set, the quality gate's data (put, get, delete)."""

from __future__ import annotations

import logging
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, Response

from service.admin.context import (
    Admin,
    AdminDep,
    known_tenant,
    tenant_or_404,
    too_large,
)
from service.bindings.tenants import Tenant
from service.engine.errors import ServiceError
from service.evaluation.errors import EvaluationError
from service.evaluation.gate import known_ids
from service.evaluation.records import gate_files
from service.evaluation.sets import MAX_VALIDATION_BYTES, new_validation_set, parse_validation
from service.http.errors import APIError
from service.http.limits import read_capped
from service.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"])


# -- validation sets (the quality gate's data) -------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    return await read_capped(
        request.headers.raw,
        request.stream(),
        limit,
        lambda: too_large("the validation set", limit),
    )


def _set_validation(admin: Admin, tenant_name: str, body: bytes) -> dict[str, Any]:
    tenant = tenant_or_404(admin, tenant_name, "set_validation")
    runtime = admin.runtime
    files = gate_files(runtime.store)
    before = files.validation(tenant.name)

    def refused(e: ServiceError) -> ServiceError:
        admin.record(
            "set_validation",
            tenant=tenant.name,
            before=before.summary() if before else None,
            after=before.summary() if before else None,
            outcome="refused",
            reasons=[e.message],
        )
        return e

    try:
        pairs = parse_validation(
            body, runtime.settings.gate_max_queries, runtime.settings.max_input_chars
        )
    except EvaluationError as e:
        raise refused(e) from None
    total = len({d for p in pairs for d in p.positive_ids})
    found = known_ids(runtime, tenant, pairs)
    if found == 0:
        raise refused(
            APIError(
                422,
                "validation_ids_unknown",
                f"none of the {total} positive document ids is in tenant {tenant.name!r}'s "
                f"collection {runtime.collection_for(tenant)!r} (ids are what /search answers: "
                + (
                    f"the {key!r} payload key"
                    if (key := runtime.target_for(tenant).id_key)
                    else "point ids"
                )
                + ")",
                {"total_ids": total, "found_ids": 0},
            )
        )
    vs = new_validation_set(tenant.name, pairs, admin.actor)
    files.save_validation(vs)
    admin.record(
        "set_validation",
        tenant=tenant.name,
        before=before.summary() if before else None,
        after=vs.summary(),
    )
    log.info("admin %s set the validation set of %s: %s", admin.actor, tenant.name, vs.summary())
    return {
        "tenant": tenant.name,
        "validation": vs.summary(),
        "found_ids": found,
        "total_ids": total,
    }


@router.put("/tenants/{tenant}/validation")
async def set_validation(tenant: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    """Store the tenant's validation set (pairs jsonl, or a JSON list): the gate's data."""
    body = await _read_body(request, MAX_VALIDATION_BYTES)
    return await to_thread.run_sync(lambda: _set_validation(admin, tenant, body))


def _no_validation(tenant: str) -> APIError:
    return APIError(
        404,
        "validation_set_not_found",
        f"tenant {tenant!r} has no validation set",
        {"tenant": tenant},
    )


def _get_validation(runtime: Runtime, tenant: Tenant) -> dict[str, Any]:
    vs = gate_files(runtime.store).validation(tenant.name)
    if vs is None:
        raise _no_validation(tenant.name)
    return {
        "tenant": tenant.name,
        "validation": vs.summary(),
        "pairs": [p.model_dump(mode="json") for p in vs.pairs],
    }


@router.get("/tenants/{tenant}/validation")
async def get_validation(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """The tenant's validation set and its summary."""
    found = known_tenant(admin.runtime, tenant)
    return await to_thread.run_sync(lambda: _get_validation(admin.runtime, found))


def _delete_validation(admin: Admin, tenant_name: str) -> None:
    tenant = tenant_or_404(admin, tenant_name, "delete_validation")
    files = gate_files(admin.runtime.store)
    before = files.validation(tenant.name)
    if before is None or not files.delete_validation(tenant.name):
        reason = f"tenant {tenant.name!r} has no validation set"
        admin.record("delete_validation", tenant=tenant.name, outcome="refused", reasons=[reason])
        raise _no_validation(tenant.name)
    admin.record("delete_validation", tenant=tenant.name, before=before.summary())


@router.delete("/tenants/{tenant}/validation", status_code=204)
async def delete_validation(tenant: str, admin: AdminDep) -> Response:
    """Remove the tenant's validation set (activations are then not gated)."""
    await to_thread.run_sync(lambda: _delete_validation(admin, tenant))
    return Response(status_code=204)
