"""Operations endpoints: /healthz (the process is up), /readyz (it can serve: encoders loaded
and warmed, Qdrant and every tenant's search target answer, not shutting down) and /metrics."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.runtime import Runtime

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """200 when encoders are loaded, Qdrant answers and the process is not shutting down.

    The Qdrant ping is bounded (the Qdrant timeout plus a second) even if the client hangs:
    a probe must answer within its own deadline.
    """
    import anyio
    from fastapi.responses import JSONResponse

    from service.search.qdrant_gateway import QdrantUnavailable

    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    checks: dict[str, str] = {}
    engines: dict[str, str] = {}
    warnings: list[str] = []
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.active:
        checks["shutdown"] = "in progress: not taking new requests"
    if runtime is None:
        checks["encoders"] = "loading"
    else:
        encoders = {"query": runtime.query_encoder, "document": runtime.document_encoder}
        engines = {role: e.engine for role, e in encoders.items()}
        not_ready = [
            e.name + (f" ({why})" if (why := e.error) else " (starting)")
            for e in encoders.values()
            if not e.ready
        ]
        checks["encoders"] = "ok" if not not_ready else "not ready: " + "; ".join(not_ready)
        warm = getattr(request.app.state, "warmup", None)
        if warm is not None:
            checks["warmup"] = warm.status
        bound_s = runtime.settings.qdrant_timeout_s + 1.0
        try:
            with anyio.fail_after(bound_s):
                await to_thread.run_sync(runtime.gateway.ping, abandon_on_cancel=True)
            checks["qdrant"] = "ok"
            # every tenant's search target, bounded as a whole like the ping
            with anyio.fail_after(bound_s * 2):
                found = await to_thread.run_sync(runtime.inspect_targets, abandon_on_cancel=True)
            bad = [f.line() for f in found if not f.ok]
            checks["search_targets"] = "ok" if not bad else " | ".join(bad)
            warnings.extend(f.line() for f in found if f.ok and f.warnings)
        except QdrantUnavailable as e:
            checks["qdrant"] = e.reason
        except TimeoutError:
            checks["qdrant"] = f"timeout: no answer within {bound_s:g} s"
        except Exception as e:
            checks["qdrant"] = f"error: {type(e).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    if engines:
        body["engines"] = engines
    if warnings:  # states that indexing fixes: reported, not a reason to leave rotation
        body["warnings"] = warnings
    return JSONResponse(
        body,
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
