"""Operations endpoints: /healthz (the process is up), /readyz (it can serve: encoders loaded
and warmed, Qdrant and every tenant's search target answer, not shutting down) and /metrics.

/readyz answers a load balancer without authentication, so its open body holds the status and
each check's state in one word of a fixed set (ok, starting, running, draining, failing,
unreachable, timeout, error, stale) and the engines' builds: no tenant, collection, tenant
value or error text. The admin token (`Authorization: Bearer <QUERYLIFT_ADMIN_TOKEN>`, checked
by the admin API's own `require_admin`) adds the detail: each check's reason in words, the
warnings that indexing fixes, and how old the search-target snapshot and the adapter sync are.
Qdrant and the targets come from that snapshot (service/search/readiness.py), refreshed off the
probe's path at most once per QUERYLIFT_READINESS_CACHE_S.

`adapter_sync` says `stale` once the adapter store has not been read successfully for
QUERYLIFT_ADAPTER_STALE_AFTER_S (read from memory: the probe never calls the store). That is
reported, never a 503: the replica still serves its last good bindings, and every replica
reads the same store, so failing readiness on a store outage would take every replica out of
rotation for an outage that stops none of them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.admin.context import require_admin
from service.http.errors import APIError
from service.runtime import Runtime
from service.search.readiness import TargetReadiness

router = APIRouter()

# check -> (state, detail): the state is one word of a fixed set, the detail is for operators
Checks = dict[str, tuple[str, str]]
# checks reported in the answer that do not decide it (the replica serves either way)
REPORTED_ONLY = frozenset({"adapter_sync"})


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def target_readiness(request: Request, runtime: Runtime) -> TargetReadiness:
    """The app's snapshot cache, one per runtime (a restarted lifespan gets a new one)."""
    held: TargetReadiness | None = getattr(request.app.state, "readiness", None)
    if held is None or getattr(request.app.state, "readiness_runtime", None) is not runtime:
        settings = runtime.settings
        held = TargetReadiness(
            runtime.gateway.ping,
            runtime.inspect_targets,
            period_s=settings.readiness_cache_s,
            bound_s=settings.qdrant_timeout_s + 1.0,
        )
        request.app.state.readiness = held
        request.app.state.readiness_runtime = runtime
    return held


def is_admin(request: Request) -> bool:
    """Whether the probe carries the admin token; anything else gets the open body (a probe
    never fails on its credentials)."""
    if "authorization" not in request.headers or request.app.state.runtime is None:
        return False
    try:
        require_admin(request)
    except APIError:
        return False
    return True


def encoder_check(runtime: Runtime) -> tuple[str, str]:
    encoders = (runtime.query_encoder, runtime.document_encoder)
    down = [e for e in encoders if not e.ready]
    if not down:
        return "ok", "ok"
    why = "; ".join(e.name + (f" ({e.error})" if e.error else " (starting)") for e in down)
    return ("failing" if any(e.error for e in down) else "starting"), "not ready: " + why


def warmup_check(status: str) -> tuple[str, str]:
    return (status if status in ("ok", "running") else "failing"), status


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """200 when encoders are loaded, Qdrant answers, every search target can serve and the
    process is not shutting down; else 503. The open body names check states only; a stale
    adapter sync is one of them, and leaves the answer 200."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    checks: Checks = {}
    engines: dict[str, str] = {}
    warnings: list[str] = []
    age: float | None = None
    sync_age: float | None = None
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.active:
        checks["shutdown"] = ("draining", "in progress: not taking new requests")
    if runtime is None:
        checks["encoders"] = ("starting", "loading")
    else:
        engines = {
            "query": runtime.query_encoder.engine,
            "document": runtime.document_encoder.engine,
        }
        checks["encoders"] = encoder_check(runtime)
        warm = getattr(request.app.state, "warmup", None)
        if warm is not None:
            checks["warmup"] = warmup_check(warm.status)
        replica_sync = getattr(request.app.state, "replica_sync", None)
        if replica_sync is not None:  # memory only: the store is never called from here
            checks["adapter_sync"] = replica_sync.check()
            sync_age = replica_sync.staleness_s()
        cache = target_readiness(request, runtime)
        snap = await cache.snapshot()
        age = cache.age(snap)
        checks["qdrant"] = (snap.qdrant_state, snap.qdrant)
        if snap.qdrant_ok:
            bad = [f.line() for f in snap.found if not f.ok]
            checks["search_targets"] = ("failing", " | ".join(bad)) if bad else ("ok", "ok")
            warnings = [f.line() for f in snap.found if f.ok and f.warnings]
    ready = all(state == "ok" for name, (state, _) in checks.items() if name not in REPORTED_ONLY)
    detail = is_admin(request)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not_ready",
        "checks": {name: (why if detail else state) for name, (state, why) in checks.items()},
    }
    if engines:
        body["engines"] = engines
    if detail and warnings:  # states that indexing fixes: reported, not a reason to leave rotation
        body["warnings"] = warnings
    if detail and age is not None:
        body["snapshot_age_s"] = round(age, 3)
    if detail and sync_age is not None:
        body["adapter_sync_age_s"] = round(sync_age, 3)
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
