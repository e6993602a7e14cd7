"""App factory: a lifespan loads encoders, Qdrant and adapters once, and closes them."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from adapters.stores import open_store
from encoders import Encoder, build_encoder
from service.admin import activation, adapters, queries, validation_sets
from service.admin.context import admin_state
from service.admin.shadow import router as shadow_router
from service.bindings.tenants import TenantRegistry
from service.engine.background import BackgroundLane
from service.engine.batcher import Batcher
from service.engine.warmup import WarmUp, run_warm_up
from service.evaluation.shadow import Shadow
from service.http.errors import install_error_handlers
from service.http.health import router as health_router
from service.http.info import package_version
from service.http.info import router as info_router
from service.http.middleware import install_middleware
from service.http.routes import router
from service.ops.loop_lag import watch_loop_lag
from service.ops.metrics import Metrics
from service.ops.preflight import check_model
from service.ops.query_log import QueryLog
from service.ops.settings import Settings
from service.ops.shutdown import Drain, DrainGate, stop_at_cutoff
from service.ops.tasks import cancel_and_wait
from service.runtime import Runtime
from service.search.qdrant_gateway import QdrantGateway, gateway_for

log = logging.getLogger(__name__)


def build_runtime(
    settings: Settings,
    metrics: Metrics,
    query_encoder: Encoder | None = None,
    document_encoder: Encoder | None = None,
    gateway: QdrantGateway | None = None,
) -> Runtime:
    tenants = (
        TenantRegistry.from_file(settings.tenants_file)
        if settings.tenants_file
        else TenantRegistry.development(settings.dev_tenant)
    )
    for role, spec, given in (
        ("query", settings.query_encoder, query_encoder),
        ("document", settings.document_encoder, document_encoder),
    ):  # what `querylift serve` checks first, for apps built without it (uvicorn --factory)
        if given is None and (found := check_model(role, spec, settings.model_hub)).status != "ok":
            raise RuntimeError(found.text())
    q = query_encoder or build_encoder(settings.query_encoder)
    d = document_encoder or build_encoder(settings.document_encoder)
    gw = gateway or gateway_for(settings)
    gw.metrics = metrics
    metrics.watch_encoder("query", q)
    if d is not q:
        metrics.watch_encoder("document", d)
    return Runtime(settings, q, d, open_store(settings.adapter_store), tenants, gw, metrics)


def _telemetry_off() -> dict[str, Any]:
    """FastAPI >= 0.165 runs native OpenTelemetry hooks that look up the global providers on
    every request (~40 us profiled); querylift's own signals are Prometheus metrics and the
    access log. Older FastAPI (the one vLLM pins) has no hooks and no such argument."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def create_app(
    settings: Settings | None = None,
    *,
    query_encoder: Encoder | None = None,
    document_encoder: Encoder | None = None,
    gateway: QdrantGateway | None = None,
) -> FastAPI:
    """Build the app; pass encoders or a gateway to reuse already-loaded ones (tests, bench)."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.bindings.replica_sync import ReplicaSync

        start = time.perf_counter()
        # on the loop on purpose: nothing is served yet, and an engine (vLLM) may need the main
        # thread while it starts
        runtime = build_runtime(settings, metrics, query_encoder, document_encoder, gateway)
        app.state.runtime = runtime
        # all of the app's state, built here: the query logs (recorded by the hot routes,
        # written by their own thread), the admin API's audit log and lock, the shadow
        query_log = QueryLog.from_settings(
            settings, {t.name: t.query_log for t in runtime.tenants.tenants.values()}
        )
        query_log.start()
        app.state.query_log = query_log
        q, d = runtime.query_encoder, runtime.document_encoder
        metrics.build_info.labels(
            package_version(), settings.profile, q.name, str(q.dim), d.name, str(d.dim)
        ).set(1)
        log.info(
            "ready in %.1fs: query encoder %s (%d-d), document encoder %s (%d-d)",
            time.perf_counter() - start,
            runtime.query_encoder.name,
            runtime.query_encoder.dim,
            runtime.document_encoder.name,
            runtime.document_encoder.dim,
        )
        for found in await asyncio.to_thread(runtime.inspect_targets):
            level = (
                logging.ERROR
                if not found.ok
                else logging.WARNING
                if found.warnings
                else logging.INFO
            )
            log.log(level, "search target: %s", found.line())
            for note in found.notes:
                log.warning("search target of tenant %r: %s", found.target.tenant, note)
        # replicas sharing the store pick up swaps made elsewhere (last_sync_ok: freshness)
        replica_sync = ReplicaSync(
            runtime,
            settings.adapter_sync_interval_s,
            metrics,
            stale_after_s=settings.adapter_stale_after_s,
        )
        app.state.replica_sync = replica_sync
        replica_sync.start()
        # one task merges concurrent embed requests into batches on one worker thread
        batcher = Batcher(
            runtime,
            max_items=settings.batch_max_items,
            max_tokens=settings.batch_max_tokens,
            max_wait_ms=settings.batch_max_wait_ms,
            max_queue=settings.max_queue,
            metrics=metrics,
            max_queue_wait_ms=settings.max_queue_wait_ms,
            concurrency=settings.batch_concurrency or runtime.query_encoder.batch_concurrency,
        )
        app.state.batcher = batcher
        batcher.start()
        # admin work (gates, shadow, warm-up) reaches the encoders only through this lane:
        # chunks on the batcher's worker, behind live requests (service/engine/background.py)
        lane = BackgroundLane(batcher, runtime, settings.background_batch_tokens)
        app.state.admin = admin_state(settings, query_log, lane)
        app.state.shadow = Shadow(runtime, lane)
        # forward passes before /readyz says ready, through the lane (so on the batcher's own
        # worker thread and OpenMP team). Encoders that are up are warmed here, before the first
        # request; an engine that starts in the background (vLLM) once it is up, while /readyz
        # says `running`, behind the requests it already serves
        warm = WarmUp()
        app.state.warmup = warm
        stop_warm = threading.Event()
        if not settings.warmup:
            warm.done.set()
        elif runtime.query_encoder.ready and runtime.document_encoder.ready:
            await asyncio.to_thread(run_warm_up, warm, runtime, stop_warm, execute=lane.run)
        else:
            threading.Thread(
                target=run_warm_up,
                args=(warm, runtime, stop_warm),
                kwargs={"execute": lane.run},
                name="querylift-warmup",
                daemon=True,
            ).start()
        # SIGTERM (`querylift serve`): waiting requests get 503 just before the grace runs out
        drain: Drain = app.state.drain
        drain.bind(asyncio.get_running_loop())
        cutoff = asyncio.create_task(
            stop_at_cutoff(drain, settings.shutdown_grace_s, batcher.stop),
            name="querylift-shutdown-cutoff",
        )
        lag = asyncio.create_task(watch_loop_lag(metrics), name="querylift-loop-lag")
        try:
            yield
        finally:
            stop_warm.set()
            await cancel_and_wait(lag)
            await cancel_and_wait(cutoff)
            await batcher.stop()
            app.state.batcher = None
            await replica_sync.stop()
            app.state.replica_sync = None
            app.state.query_log = None
            await asyncio.to_thread(query_log.stop)  # writes what is pending
            app.state.runtime = None
            app.state.shadow = None
            if gateway is None:
                runtime.gateway.close()
            # close the encoders this app built (an engine, an HTTP pool); injected ones are
            # the caller's
            built = [
                e
                for e, given in (
                    (runtime.query_encoder, query_encoder),
                    (runtime.document_encoder, document_encoder),
                )
                if given is None
            ]
            for enc in {id(e): e for e in built}.values():
                enc.close()

    app = FastAPI(
        title="querylift", version=package_version(), lifespan=lifespan, **_telemetry_off()
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    app.state.batcher = None
    app.state.admin = None
    app.state.shadow = None
    app.state.query_log = None
    app.state.warmup = None
    app.state.drain = Drain()  # begun by `querylift serve` on SIGTERM (service/ops/shutdown.py)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(health_router)
    app.include_router(info_router)
    for admin_routes in (adapters, activation, validation_sets, queries):
        app.include_router(admin_routes.router)
    app.include_router(shadow_router)

    # innermost: its 503s still pass through the request logs and metrics
    app.add_middleware(DrainGate, drain=app.state.drain)
    install_middleware(app, settings, metrics)

    return app
