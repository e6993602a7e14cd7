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

The candidate's embedding goes through the batcher's background lane (service/engine/
background.py): it runs only while no live request waits and never takes queue space from live
requests (no live 429 because of it); the search runs on a worker thread.

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

from service.bindings.tenants import Tenant
from service.engine.background import BackgroundLane
from service.engine.embedding import ActiveAdapter, EmbedItem, EmbedOutcome
from service.runtime import Runtime
from service.search.qdrant_gateway import Hit

log = logging.getLogger(__name__)

DEPTH = 10  # overlap@10: the served top-10 against the candidate's top-10
MAX_CONCURRENT = 2  # comparisons running at once (each: an embed on a thread, then a search)
MAX_PENDING = 64  # comparisons waiting or running; past it a sample is dropped
RBO_P = 0.9  # rank-biased overlap persistence (weights the top ranks, ~86% on the top 10)


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

    def __init__(self, runtime: Runtime, lane: BackgroundLane) -> None:
        self.runtime = runtime
        self.lane = lane
        self.runs: dict[str, ShadowRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    # -- the /search hook: must be cheap, must never raise --------------------------------------
    def observe(
        self,
        runtime: Runtime,
        tenant: Tenant,
        query: str,
        instruction: str | None,
        top_k: int,
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
            k = min(DEPTH, top_k)
            top = [(h.id, h.score) for h in hits[:k]]
            run.pending += 1
            task = asyncio.get_running_loop().create_task(
                self._compare(run, query, instruction, client_filter, k, top)
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
        out = self.lane.embed(item)  # behind live traffic
        if out.degraded:
            raise RuntimeError(f"query encoder unavailable ({out.degraded})")
        hits = self.runtime.search(run.tenant, out.vectors[0], client_filter, k, False)
        return [(h.id, h.score) for h in hits]

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) for the comparisons in flight: tests, and a clean stop."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
