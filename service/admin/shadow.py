"""Shadow evaluation: compare a candidate adapter with the served one on live /search traffic.

An admin starts a run for a tenant (`POST /admin/tenants/{tenant}/shadow`). /search keeps
answering with the tenant's active adapter, exactly as before; after it has its hits it hands
them to `Shadow.observe`, which, for a sampled share of the queries, schedules a background
comparison: the candidate embeds the same query (`EmbedItem.adapter`; the raw query vectors
usually come from the query cache, so this is mostly an adapter matmul), searches the tenant's
collection with the same filter and depth, and records overlap@k with the served ids. The
request never awaits it; errors are counted, never raised; when more than `MAX_PENDING`
comparisons wait, a sample is dropped (counted) rather than queued, so shadowing can neither
slow nor change an answer.

The comparison goes through `Runtime.embed_batch` on a worker thread, not the batcher: shadow
work never takes queue space from live requests (no live 429 because of it).

State lives in memory, per process: with several workers or replicas, each runs (and reports)
its own share; a restart forgets the run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters import Adapter, CheckpointError
from service.admin.context import AdminDep, known_tenant
from service.bindings.tenants import Tenant
from service.engine.embedding import ActiveAdapter, EmbedItem, EmbedOutcome
from service.engine.errors import ServiceError
from service.http.errors import APIError
from service.http.schemas import SearchRequest
from service.runtime import Runtime
from service.search.qdrant_gateway import Hit

log = logging.getLogger(__name__)

DEPTH = 10  # overlap@10: the served top-10 against the candidate's top-10
MAX_CONCURRENT = 2  # comparisons running at once (each: an embed on a thread, then a search)
MAX_PENDING = 64  # comparisons waiting or running; past it a sample is dropped
RBO_P = 0.9  # rank-biased overlap persistence (weights the top ranks, ~86% on the top 10)


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter_id: str = Field(min_length=1, max_length=128, description="the candidate")
    sample_rate: float = Field(default=0.1, ge=0, le=1, description="share of /search queries")
    max_queries: int = Field(
        default=1000, ge=1, le=1_000_000, description="stop sampling after this many"
    )


def overlap_at(served: list[str], candidate: list[str], k: int) -> float:
    """|top-k ∩ top-k| / k' where k' is the longer list (both empty: identical, 1.0)."""
    a, b = served[:k], candidate[:k]
    n = max(len(a), len(b))
    return 1.0 if n == 0 else len(set(a) & set(b)) / n


def rank_biased_overlap(served: list[str], candidate: list[str], k: int, p: float = RBO_P) -> float:
    """Truncated RBO at depth k, normalised so identical lists score 1.0: unlike overlap@k it
    notices when the same documents come back in another order."""
    a, b = served[:k], candidate[:k]
    depth = max(len(a), len(b))
    if depth == 0:
        return 1.0
    score = norm = 0.0
    for d in range(1, depth + 1):
        w = p ** (d - 1)
        score += w * len(set(a[:d]) & set(b[:d])) / d
        norm += w
    return score / norm


@dataclass
class ShadowRun:
    """One tenant's run: the candidate, the sampling rule and what was measured so far."""

    tenant: Tenant
    candidate: ActiveAdapter
    sample_rate: float
    max_queries: int
    actor: str
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    stopped_at: str | None = None
    queries_seen: int = 0
    sampled: int = 0
    compared: int = 0
    dropped: int = 0  # sampled, but MAX_PENDING comparisons were already waiting
    skipped_degraded: int = 0  # served by the document-encoder fallback: not comparable
    errors: int = 0
    last_error: str | None = None
    pending: int = 0
    overlaps: list[float] = field(default_factory=list)
    rbos: list[float] = field(default_factory=list)
    top1_score_deltas: list[float] = field(default_factory=list)
    served_adapters: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    @property
    def status(self) -> str:
        if self.stopped_at is not None:
            return "stopped"
        return "complete" if self.sampled >= self.max_queries and not self.pending else "running"

    @property
    def sampling(self) -> bool:
        return self.stopped_at is None and self.sampled < self.max_queries

    def report(self) -> dict[str, Any]:
        ov = sorted(self.overlaps)

        def stat(values: list[float], fn: Any) -> float | None:
            return round(float(fn(values)), 6) if values else None

        return {
            "tenant": self.tenant.name,
            "adapter_id": self.candidate.adapter.id,
            "status": self.status,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "actor": self.actor,
            "sample_rate": self.sample_rate,
            "max_queries": self.max_queries,
            "depth": DEPTH,
            "queries_seen": self.queries_seen,
            "sampled": self.sampled,
            "compared": self.compared,
            "pending": self.pending,
            "dropped": self.dropped,
            "skipped_degraded": self.skipped_degraded,
            "errors": self.errors,
            "last_error": self.last_error,
            "overlap_at_10": {
                "mean": stat(ov, statistics.fmean),
                "median": stat(ov, statistics.median),
                "p10": stat(ov, lambda v: v[int(0.1 * (len(v) - 1))]),
                "min": stat(ov, min),
            },
            "identical_top10": stat(ov, lambda v: sum(x == 1.0 for x in v) / len(v)),
            "identical_order": stat(self.rbos, lambda v: sum(x == 1.0 for x in v) / len(v)),
            "mean_rbo": stat(self.rbos, statistics.fmean),
            "mean_top1_score_delta": stat(self.top1_score_deltas, statistics.fmean),
            "served_adapters": dict(self.served_adapters),
        }


class Shadow:
    """The shadow runs of one app (one per tenant) and the comparisons in flight."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.runs: dict[str, ShadowRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    # -- the /search hook: must be cheap, must never raise --------------------------------------
    def observe(
        self,
        runtime: Runtime,
        tenant: Tenant,
        body: SearchRequest,
        client_filter: object,
        served: EmbedOutcome,
        hits: list[Hit],
    ) -> None:
        """Called by /search with what it answered; maybe schedules a comparison."""
        try:
            run = self.runs.get(tenant.name)
            if run is None or not run.sampling or runtime is not self.runtime:
                return
            run.queries_seen += 1
            if run.sample_rate < 1.0 and run._rng.random() >= run.sample_rate:
                return
            run.sampled += 1
            if served.degraded:
                run.skipped_degraded += 1
                return
            if len(self._tasks) >= MAX_PENDING:
                run.dropped += 1
                self.runtime.metrics.shadow_skipped.labels(tenant.name, "dropped").inc()
                return
            a = served.adapter
            ref = f"{a.adapter.id}@{a.version}" if a is not None else "none"
            run.served_adapters[ref] = run.served_adapters.get(ref, 0) + 1
            k = min(DEPTH, body.top_k)
            top = [(h.id, h.score) for h in hits[:k]]
            run.pending += 1
            task = asyncio.get_running_loop().create_task(
                self._compare(run, body.query, body.instruction, client_filter, k, top)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # never let the shadow touch the live answer
            log.exception("shadow: observing a /search of tenant %s failed", tenant.name)

    async def _compare(
        self,
        run: ShadowRun,
        query: str,
        instruction: str | None,
        client_filter: object,
        k: int,
        served: list[tuple[str, float]],
    ) -> None:
        tenant = run.tenant.name
        metrics = self.runtime.metrics
        try:
            async with self._slots:
                ids = await to_thread.run_sync(
                    self._candidate_hits, run, query, instruction, client_filter, k
                )
            served_ids = [i for i, _ in served]
            overlap = overlap_at(served_ids, [i for i, _ in ids], k)
            run.overlaps.append(overlap)
            run.rbos.append(rank_biased_overlap(served_ids, [i for i, _ in ids], k))
            if served and ids:
                run.top1_score_deltas.append(ids[0][1] - served[0][1])
            run.compared += 1
            metrics.shadow_compared.labels(tenant).inc()
            metrics.shadow_overlap.labels(tenant).observe(overlap)
        except Exception as e:
            run.errors += 1
            run.last_error = f"{type(e).__name__}: {e}"[:300]
            metrics.shadow_skipped.labels(tenant, "error").inc()
            log.warning("shadow: comparison for tenant %s failed: %s", tenant, run.last_error)
        finally:
            run.pending -= 1

    def _candidate_hits(
        self, run: ShadowRun, query: str, instruction: str | None, client_filter: object, k: int
    ) -> list[tuple[str, float]]:
        """On a worker thread: the candidate's vector for the query, then its top-k."""
        item = EmbedItem(run.tenant.name, [query], "query", instruction, adapter=run.candidate)
        (out,) = self.runtime.embed_batch([item])
        if isinstance(out, ServiceError):
            raise out
        if out.degraded:
            raise RuntimeError(f"query encoder unavailable ({out.degraded})")
        hits = self.runtime.search(run.tenant, out.vectors[0], client_filter, k, False)
        return [(h.id, h.score) for h in hits]

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for the comparisons in flight: tests, and a clean stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)


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
    admin.audit.record(
        actor=admin.actor,
        action="shadow_start",
        tenant=t.name,
        adapter_id=adapter.id,
        extra={"sample_rate": body.sample_rate, "max_queries": body.max_queries},
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
        admin.audit.record(
            actor=admin.actor,
            action="shadow_stop",
            tenant=t.name,
            adapter_id=run.candidate.adapter.id,
            extra={"report": run.report()},
        )
        log.info("admin %s: stopped the shadow run of tenant %s", admin.actor, t.name)
    return run.report()
