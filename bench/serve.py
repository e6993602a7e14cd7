"""Serving speed: the service against its own encoder called in-process, side by side.

A real `querylift serve` on loopback (embedded profile: all-mpnet-base-v2 queries + a linear
adapter into all-MiniLM-L6-v2's space, local Qdrant with demo documents) gets closed-loop load
at each concurrency for `/embed` (1 and 16 texts a request) and `/search`; each run is bounded
in time and count. The raw-vector cache is off (every text is encoded). Right after each
/embed run, the same texts go through the same encoder in this process, in batches of the
size the batcher chose (read from /metrics), and the ratios are printed:

- throughput: service texts/s / in-process texts/s (acceptance: >= 0.85 at concurrency 32)
- latency at concurrency 1: service p50 - in-process single-text encode p50 (<= 3 ms)
- adapter apply vs encode time per batch (< 2%)

    python -m bench.serve [--models-dir models] [--duration 15] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from adapters import Adapter
from adapters.store import AdapterStore
from bench.common import server
from bench.hotswap import random_linear
from encoders import Encoder, build_encoder
from querylift.indexing import index_documents
from service.qdrant_gateway import QdrantGateway
from service.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER
from service.tenants import hash_key
from training.data import read_corpus, read_queries

KEY = "bench-serve-key"
DEMO = Path("demo/scifact-mini")


@dataclass
class Setup:
    env: dict[str, str]
    query_encoder: Encoder
    document_encoder: Encoder
    adapter: Adapter
    texts: list[str]
    work: Path


def build_setup(models: Path, docs: int = 200, **env: str) -> Setup:
    """Models, one tenant with a linear adapter, a small indexed collection, the env."""
    q = build_encoder(
        EMBEDDED_QUERY_ENCODER.model_copy(update={"path": str(models / "all-mpnet-base-v2")})
    )
    d = build_encoder(
        EMBEDDED_DOCUMENT_ENCODER.model_copy(update={"path": str(models / "all-MiniLM-L6-v2")})
    )
    work = Path(tempfile.mkdtemp(prefix="querylift-bench-"))
    store = AdapterStore(work / "store")
    adapter = store.put(*random_linear(q, d, 1))
    store.activate("bench", adapter.id)
    tenants = work / "tenants.json"
    tenants.write_text(
        json.dumps(
            {
                "tenants": [
                    {"name": "bench", "api_keys_sha256": [hash_key(KEY)], "collection": "bench"}
                ]
            }
        )
    )
    gw = QdrantGateway(path=str(work / "qdrant"))
    corpus = list(itertools.islice(read_corpus(DEMO / "corpus.jsonl.gz"), docs))
    index_documents(
        gw, d, corpus, collection="bench", tenant_field="tenant", tenant_value="bench",
        progress=False,
    )  # fmt: skip
    gw.close()
    texts = list(read_queries(DEMO / "queries.jsonl.gz").values())
    base = {
        "QUERYLIFT_QUERY_ENCODER__PATH": str(models / "all-mpnet-base-v2"),
        "QUERYLIFT_DOCUMENT_ENCODER__PATH": str(models / "all-MiniLM-L6-v2"),
        "QUERYLIFT_TENANTS_FILE": str(tenants),
        "QUERYLIFT_ADAPTER_STORE": str(store.root),
        "QUERYLIFT_QDRANT_PATH": str(work / "qdrant"),
        "QUERYLIFT_LOG_LEVEL": "warning",
        "QUERYLIFT_QUERY_CACHE_SIZE": "0",
        # closed-loop clients never push past their concurrency: measure the engine, not the
        # admission control (bench.overload does that)
        "QUERYLIFT_MAX_QUEUE_WAIT_MS": "0",
    }
    return Setup({**base, **env}, q, d, adapter, texts, work)


@dataclass
class Run:
    name: str
    concurrency: int
    per_request: int
    latencies: list[float] = field(default_factory=list)
    texts_sent: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    timings: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def texts_per_s(self) -> float:
        return self.ok * self.per_request / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1e3, q)) if self.latencies else 0


def scrape(url: str) -> dict[str, float]:
    """Flat {name{labels}: value} of the service's /metrics."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def closed_loop(
    url: str,
    run: Run,
    texts: Iterator[str],
    duration: float,
    max_requests: int,
    endpoint: str = "/embed",
) -> None:
    """`run.concurrency` workers, each sending its next request as soon as one returns."""
    sent = 0
    limits = httpx.Limits(max_connections=run.concurrency + 4)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=limits, headers={"Authorization": f"Bearer {KEY}"}
    ) as client:
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                batch = [next(texts) for _ in range(run.per_request)]
                body: dict[str, Any] = (
                    {"query": batch[0], "top_k": 10} if endpoint == "/search" else {"input": batch}
                )
                t0 = time.perf_counter()
                r = await client.post(endpoint, json=body)
                dt = time.perf_counter() - t0
                run.statuses[r.status_code] = run.statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    run.latencies.append(dt)
                    run.texts_sent.extend(batch)
                    if endpoint == "/search":
                        run.timings.append(r.json()["timings_ms"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(run.concurrency)))
        run.elapsed = time.perf_counter() - t0


def in_process(encoder: Encoder, texts: list[str], batch: int, budget_s: float) -> float:
    """Texts/s of `encoder.encode` on `texts` in batches of `batch` (time-bounded)."""
    done, t0 = 0, time.perf_counter()
    for start in range(0, len(texts), batch):
        encoder.encode(texts[start : start + batch], "query")
        done += len(texts[start : start + batch])
        if time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def single_text_ms(encoder: Encoder, texts: list[str], n: int = 60) -> list[float]:
    out = []
    for t in texts[:n]:
        t0 = time.perf_counter()
        encoder.encode([t], "query")
        out.append((time.perf_counter() - t0) * 1e3)
    return out


async def main_async(args: argparse.Namespace) -> int:
    setup = build_setup(Path(args.models_dir), args.docs)
    q, adapter = setup.query_encoder, setup.adapter
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = itertools.cycle(setup.texts)
    rows: list[str] = []
    apply_vs_encode: list[tuple[int, float, float]] = []
    with server(setup.env) as url:
        warm = Run("warm-up", 4, 1)
        await closed_loop(url, warm, texts, 3.0, 40)
        for per_request in (1, 16):
            for c in levels:
                run = Run(f"/embed x{per_request}", c, per_request)
                # this machine's speed drifts (shared cores): the in-process reference is
                # measured right before and right after the service run, on the same texts
                upcoming = list(itertools.islice(texts, 4000))
                texts = itertools.chain(upcoming, texts)
                guess = 1 if c == 1 and per_request == 1 else min(c * per_request, 64)
                ref_before = in_process(q, upcoming, guess, budget_s=args.duration / 2)
                single_before = single_text_ms(q, upcoming, 30) if c * per_request == 1 else []
                before = scrape(url)
                await closed_loop(url, run, texts, args.duration, args.max_requests)
                after = scrape(url)
                batches = delta(after, before, "querylift_batch_size_count{}")
                mean_batch = delta(after, before, "querylift_batch_size_sum{}") / max(batches, 1)
                enc_key = "encoder=all-mpnet-base-v2,kind=query"
                enc_s = delta(after, before, f"querylift_encoder_duration_seconds_sum{{{enc_key}}}")
                ad_s = delta(after, before, "querylift_adapter_apply_duration_seconds_sum{}")
                b = max(1, round(mean_batch))
                ref_after = in_process(q, run.texts_sent, b, budget_s=args.duration / 2)
                ref = (ref_before + ref_after) / 2
                ratio = run.texts_per_s() / ref if ref else 0.0
                extra = ""
                if c == 1 and per_request == 1:
                    single = single_before + single_text_ms(q, run.texts_sent, 30)
                    p50_ref = float(np.percentile(single, 50))
                    extra = (
                        f" | in-process single-text p50 {p50_ref:.1f} ms, service p50 "
                        f"{run.pct(50):.1f} ms: +{run.pct(50) - p50_ref:.1f} ms"
                    )
                apply_vs_encode.append((b, ad_s / max(batches, 1), enc_s / max(batches, 1)))
                rows.append(
                    f"{run.name:<11} c={c:<3} {run.texts_per_s():7.1f} texts/s "
                    f"({run.ok} req, {dict(sorted(run.statuses.items()))}) "
                    f"p50 {run.pct(50):7.1f} p90 {run.pct(90):7.1f} p99 {run.pct(99):7.1f} ms | "
                    f"batch {mean_batch:5.1f} | in-process @{b}: {ref:7.1f} texts/s (before "
                    f"{ref_before:.1f} @{guess}, after {ref_after:.1f}), "
                    f"ratio {ratio:.2f}{extra}"
                )
                print(rows[-1], flush=True)
        for c in levels:
            run = Run("/search", c, 1)
            await closed_loop(url, run, texts, args.duration, args.max_requests, "/search")
            split = {
                k: float(np.mean([t.get(k, 0.0) for t in run.timings]))
                for k in ("encode", "adapt", "search")
            }
            rows.append(
                f"{run.name:<11} c={c:<3} {run.ok / run.elapsed:7.1f} req/s   "
                f"({run.ok} req, {dict(sorted(run.statuses.items()))}) "
                f"p50 {run.pct(50):7.1f} p90 {run.pct(90):7.1f} p99 {run.pct(99):7.1f} ms | "
                f"mean encode {split['encode']:.1f} adapt {split['adapt']:.2f} "
                f"Qdrant {split['search']:.1f} ms"
            )
            print(rows[-1], flush=True)
    # adapter cost per batch, in-process on the batch sizes the service ran
    print("\nadapter apply vs encode, per batch:")
    for b in sorted({b for b, _, _ in apply_vs_encode}):
        x = q.encode(setup.texts[:b], "query").vectors
        t0 = time.perf_counter()
        for _ in range(50):
            adapter.apply(x)
        ap = (time.perf_counter() - t0) / 50
        t0 = time.perf_counter()
        q.encode(setup.texts[b : 2 * b], "query")
        en = time.perf_counter() - t0
        print(
            f"  batch {b:3d}: apply {ap * 1e3:.3f} ms, encode {en * 1e3:.1f} ms "
            f"({100 * ap / en:.2f}% of encode)"
        )
    served = [(a, e) for _, a, e in apply_vs_encode if e > 0]
    if served:
        a_tot, e_tot = sum(a for a, _ in served), sum(e for _, e in served)
        print(
            f"  in the service (metrics, all runs): apply {a_tot * 1e3:.2f} ms vs encode "
            f"{e_tot * 1e3:.1f} ms summed over mean batches ({100 * a_tot / e_tot:.2f}%)"
        )
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    ap.add_argument("--max-requests", type=int, default=5000, help="requests per run at most")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--docs", type=int, default=200, help="demo documents indexed for /search")
    raise SystemExit(asyncio.run(main_async(ap.parse_args())))


if __name__ == "__main__":
    main()
