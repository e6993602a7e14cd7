"""Admin: each tenant's unlabelled queries: its query log (export, clear) and its query set
(put, get, delete), the label-free gate's data. Every call is in the audit log: the query log
is stored user text, and who read or erased it is on record.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response

from service.admin.context import (
    Admin,
    AdminDep,
    known_tenant,
    store_write,
    tenant_or_404,
    too_large,
)
from service.evaluation.errors import EvaluationError
from service.evaluation.records import gate_files
from service.evaluation.sets import MAX_QUERY_SET_BYTES, new_query_set, parse_queries
from service.http.errors import APIError
from service.http.limits import read_capped
from service.ops.query_log import QueryLog, Split

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin", "queries"])

NDJSON = "application/x-ndjson"


def _query_log(admin: Admin) -> QueryLog:
    if admin.query_log is None:  # the lifespan builds it with the admin state
        raise APIError(503, "not_ready", "the service is still starting")
    return admin.query_log


# -- the query log -----------------------------------------------------------------------------
def _export(admin: Admin, tenant_name: str, split: Split) -> bytes:
    tenant = tenant_or_404(admin, tenant_name, "export_query_log")
    qlog = _query_log(admin)
    entries = qlog.entries(tenant.name, split)
    admin.record(
        "export_query_log",
        tenant=tenant.name,
        extra={"split": split, "entries": len(entries), "enabled": qlog.enabled_for(tenant.name)},
    )
    log.info(
        "admin %s exported %d query-log entries of %s (split %s)",
        admin.actor,
        len(entries),
        tenant.name,
        split,
    )
    return b"".join(e.model_dump_json().encode() + b"\n" for e in entries)


@router.get(
    "/tenants/{tenant}/query-log",
    response_class=Response,
    responses={200: {"content": {NDJSON: {}}, "description": '{"text", "endpoint", "ts"} a line'}},
)
async def export_query_log(
    tenant: str,
    admin: AdminDep,
    split: Annotated[
        Split,
        Query(
            description="`train`: without the texts the label-free gate holds out; `holdout`: "
            "only those; `all`: both",
        ),
    ] = "all",
) -> Response:
    """The tenant's query log, oldest first, as JSON lines (stored user text: audited)."""
    body = await to_thread.run_sync(lambda: _export(admin, tenant, split))
    return Response(body, media_type=NDJSON)


def _clear(admin: Admin, tenant_name: str) -> dict[str, Any]:
    tenant = tenant_or_404(admin, tenant_name, "clear_query_log")
    with store_write(admin, "clear_query_log", tenant=tenant.name):
        removed = _query_log(admin).clear(tenant.name)
    admin.record("clear_query_log", tenant=tenant.name, extra={"entries": removed})
    log.info("admin %s cleared the query log of %s (%d entries)", admin.actor, tenant.name, removed)
    return {"tenant": tenant.name, "removed": removed}


@router.delete("/tenants/{tenant}/query-log")
async def clear_query_log(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """Erase the tenant's query log on every replica (`removed`: entries an export held)."""
    return await to_thread.run_sync(lambda: _clear(admin, tenant))


# -- the query set -----------------------------------------------------------------------------
def _set_queries(admin: Admin, tenant_name: str, body: bytes) -> dict[str, Any]:
    tenant = tenant_or_404(admin, tenant_name, "set_queries")
    settings = admin.runtime.settings
    files = gate_files(admin.runtime.store)
    before = files.queries(tenant.name)
    prior = before.summary() if before is not None else None
    try:
        texts, duplicates = parse_queries(body, settings.gate_max_queries, settings.max_input_chars)
    except EvaluationError as e:
        admin.record(
            "set_queries",
            tenant=tenant.name,
            before=prior,
            after=prior,
            outcome="refused",
            reasons=[e.message],
        )
        raise
    qs = new_query_set(tenant.name, texts, admin.actor)
    with store_write(admin, "set_queries", tenant=tenant.name, before=prior, after=prior):
        files.save_queries(qs)
    admin.record("set_queries", tenant=tenant.name, before=prior, after=qs.summary())
    log.info("admin %s set the query set of %s: %s", admin.actor, tenant.name, qs.summary())
    return {"tenant": tenant.name, "queries": qs.summary(), "duplicates_dropped": duplicates}


@router.put("/tenants/{tenant}/queries")
async def set_queries(tenant: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    """Store the tenant's unlabelled queries (a JSON list of strings, or JSON lines with
    "text"): the label-free gate's data when there is no validation set."""
    body = await read_capped(
        request.headers.raw,
        request.stream(),
        MAX_QUERY_SET_BYTES,
        lambda: too_large("the query set", MAX_QUERY_SET_BYTES),
    )
    return await to_thread.run_sync(lambda: _set_queries(admin, tenant, body))


def _no_queries(tenant: str) -> APIError:
    return APIError(
        404, "query_set_not_found", f"tenant {tenant!r} has no query set", {"tenant": tenant}
    )


def _get_queries(admin: Admin, tenant_name: str) -> dict[str, Any]:
    found = known_tenant(admin.runtime, tenant_name)
    qs = gate_files(admin.runtime.store).queries(found.name)
    if qs is None:
        raise _no_queries(found.name)
    return {"tenant": found.name, "queries": qs.summary(), "texts": qs.queries}


@router.get("/tenants/{tenant}/queries")
async def get_queries(tenant: str, admin: AdminDep) -> dict[str, Any]:
    """The tenant's query set and its summary."""
    return await to_thread.run_sync(lambda: _get_queries(admin, tenant))


def _delete_queries(admin: Admin, tenant_name: str) -> None:
    tenant = tenant_or_404(admin, tenant_name, "delete_queries")
    files = gate_files(admin.runtime.store)
    before = files.queries(tenant.name)
    if before is None or not files.delete_queries(tenant.name):
        reason = f"tenant {tenant.name!r} has no query set"
        admin.record("delete_queries", tenant=tenant.name, outcome="refused", reasons=[reason])
        raise _no_queries(tenant.name)
    admin.record("delete_queries", tenant=tenant.name, before=before.summary())


@router.delete("/tenants/{tenant}/queries", status_code=204)
async def delete_queries(tenant: str, admin: AdminDep) -> Response:
    """Remove the tenant's query set."""
    await to_thread.run_sync(lambda: _delete_queries(admin, tenant))
    return Response(status_code=204)
