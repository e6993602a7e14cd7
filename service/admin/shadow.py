"""The shadow evaluation's admin routes: start, report and stop a tenant's run (the
comparison itself is service/evaluation/shadow.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters import Adapter, CheckpointError
from service.admin.context import AdminDep, known_tenant
from service.bindings.tenants import Tenant
from service.engine.embedding import ActiveAdapter
from service.evaluation.shadow import Shadow, ShadowRun
from service.http.errors import APIError
from service.runtime import Runtime

log = logging.getLogger(__name__)


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: str = Field(min_length=1, max_length=128, description="the candidate")
    sample_rate: float = Field(default=0.1, ge=0, le=1, description="share of /search queries")
    max_queries: int = Field(
        default=1000, ge=1, le=1_000_000, description="stop sampling after this many"
    )


def shadow_of(app: FastAPI, runtime: Runtime) -> Shadow:
    """The app's Shadow, built in its lifespan with the runtime (service/app.py); /search
    finds it as `app.state.shadow`."""
    current: Shadow | None = getattr(app.state, "shadow", None)
    if current is None or current.runtime is not runtime:
        raise APIError(503, "not_ready", "the service is still starting")
    return current


# -- the admin routes --------------------------------------------------------------------------
router = APIRouter(prefix="/admin", tags=["admin", "shadow"])


def _candidate(runtime: Runtime, tenant: Tenant, adapter_id: str) -> Adapter:
    """Load (hash, finite values) and check the candidate as an activation would."""
    try:
        adapter = runtime.store.get(adapter_id)
    except KeyError:
        raise APIError(
            404, "adapter_not_found", f"no adapter {adapter_id!r} in the store", {"id": adapter_id}
        ) from None
    except CheckpointError as e:
        raise APIError(
            422,
            "invalid_checkpoint",
            f"adapter {adapter_id} cannot be loaded: {'; '.join(e.reasons)}",
            {"adapter_id": adapter_id, "reasons": e.reasons},
        ) from None
    reasons = runtime.validate_for_tenant(tenant, adapter)
    if reasons:
        raise APIError(
            422,
            "adapter_incompatible",
            f"adapter {adapter_id} cannot shadow tenant {tenant.name!r}: {'; '.join(reasons)}",
            {"tenant": tenant.name, "adapter_id": adapter_id, "reasons": reasons},
        )
    return adapter


def _not_running(tenant: str) -> APIError:
    return APIError(
        404, "shadow_not_found", f"no shadow run for tenant {tenant!r}", {"tenant": tenant}
    )


@router.post("/tenants/{tenant}/shadow", status_code=201)
async def start_shadow(
    tenant: str, body: ShadowRequest, request: Request, admin: AdminDep
) -> dict[str, Any]:
    """Start comparing `adapter_id` with the served adapter on live /search queries (409 while
    a run is going for this tenant: stop it first)."""
    runtime = admin.runtime
    t = known_tenant(runtime, tenant)
    shadow = shadow_of(request.app, runtime)
    current = shadow.runs.get(t.name)
    if current is not None and current.status == "running":
        raise APIError(
            409,
            "shadow_running",
            f"tenant {t.name!r} already shadows adapter {current.candidate.adapter.id}; "
            "DELETE it first",
            current.report(),
        )
    adapter = await to_thread.run_sync(lambda: _candidate(runtime, t, body.adapter_id))
    run = ShadowRun(t, ActiveAdapter(adapter, 0), body.sample_rate, body.max_queries, admin.actor)
    shadow.runs[t.name] = run
    await to_thread.run_sync(  # an fsync: never on the event loop
        lambda: admin.audit.record(
            actor=admin.actor,
            action="shadow_start",
            tenant=t.name,
            adapter_id=adapter.id,
            extra={"sample_rate": body.sample_rate, "max_queries": body.max_queries},
        )
    )
    log.info(
        "admin %s: shadow run for tenant %s with adapter %s (sample rate %g, at most %d)",
        admin.actor,
        t.name,
        adapter.id,
        body.sample_rate,
        body.max_queries,
    )
    return run.report()


@router.get("/tenants/{tenant}/shadow")
async def shadow_report(tenant: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    """The tenant's current (or last) run: counts and overlap@10 of what was compared so far."""
    t = known_tenant(admin.runtime, tenant)
    run = shadow_of(request.app, admin.runtime).runs.get(t.name)
    if run is None:
        raise _not_running(t.name)
    return run.report()


@router.delete("/tenants/{tenant}/shadow")
async def stop_shadow(tenant: str, request: Request, admin: AdminDep) -> dict[str, Any]:
    """Stop sampling (idempotent); comparisons already scheduled finish and count. Answers the
    report, which GET keeps returning until the next run starts."""
    t = known_tenant(admin.runtime, tenant)
    run = shadow_of(request.app, admin.runtime).runs.get(t.name)
    if run is None:
        raise _not_running(t.name)
    if run.stopped_at is None:
        run.stopped_at = datetime.now(UTC).isoformat()
        report = run.report()
        await to_thread.run_sync(
            lambda: admin.audit.record(
                actor=admin.actor,
                action="shadow_stop",
                tenant=t.name,
                adapter_id=run.candidate.adapter.id,
                extra={"report": report},
            )
        )
        log.info("admin %s: stopped the shadow run of tenant %s", admin.actor, t.name)
    return run.report()
