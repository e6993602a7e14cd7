"""Soak: a steady open-loop mix of /embed, /search, /v1/embeddings and admin swaps, for minutes.

A `querylift serve` subprocess on loopback (encoders from the QUERYLIFT_* settings, the embedded
ones by default) over a fresh store and an embedded Qdrant holding `--docs` demo abstracts.
Requests start at a fixed rate whatever the server's latency (open loop), mixed: /embed with
one and with four texts, /search, /v1/embeddings, and a small share of deliberately bad ones
(expected 4xx, counted apart). Tenant `alpha` flips between two adapters every `--swap-every`
seconds through the admin API; tenant `beta` has none (the document encoder). Prints counts by
status and error code, unexpected errors (must be 0), p50/p99 per window, and the server's
resident memory after warm-up and at the end (growth must stay under `--max-rss-growth-pct`).

    python -m bench.soak [--duration 600] [--rate 5] [--swap-every 5] [--docs 300]

Bounded: `--duration` seconds of load (plus warm-up and setup), at most `--max-in-flight`
requests open at once, loopback only. Exit status 1 on an unexpected error or too much growth.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from adapters.stores import open_store
from bench.common import DEMO, random_linear, server_process, summary_ms
from encoders import build_encoder
from service.bindings.tenants import hash_key
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway

KEYS = {"alpha": "soak-key-alpha", "beta": "soak-key-beta"}
ADMIN = "soak-admin-token"
COLLECTION = "soak"
# (kind, share of the load); "bad" requests are the deliberate 4xx
MIX = [("embed", 0.40), ("embed4", 0.15), ("search", 0.35), ("openai", 0.05), ("bad", 0.05)]
# deliberate client errors: (path, body, tenant, expected status, expected error code)
BAD: list[tuple[str, dict[str, Any], str | None, int, str]] = [
    ("/embed", {"input": []}, "alpha", 422, "invalid_request"),
    ("/search", {"query": "x", "top_k": 0}, "beta", 422, "invalid_request"),
    ("/embed", {"input": "x", "surprise": 1}, "alpha", 422, "invalid_request"),
    ("/embed", {"input": "x"}, "wrong-key", 401, "unauthorized"),
]


@dataclass
class Record:
    kind: str
    sent: float  # seconds since the measured phase began
    seconds: float
    status: int | str  # an HTTP status, or the transport error's name
    code: str | None  # the error shape's code
    expected: bool


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    swaps: list[Record] = field(default_factory=list)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (t, VmRSS)
    skipped: int = 0  # not sent: --max-in-flight open already (the server fell behind)
    measuring: bool = False
    t0: float = 0.0


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def load_texts(max_words: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Demo claims (queries, short enough for any encoder here) and (id, text) abstracts."""
    with gzip.open(DEMO / "queries.jsonl.gz", "rt") as f:
        queries = [json.loads(x)["text"] for x in f if x.strip()]
    queries = [q for q in queries if len(q.split()) <= max_words]
    with gzip.open(DEMO / "corpus.jsonl.gz", "rt") as f:
        docs = [json.loads(x) for x in f if x.strip()]
    return queries, [(d["_id"], f"{d.get('title', '')}. {d['text']}") for d in docs]


def setup(args: argparse.Namespace, work: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """Store with two adapters for alpha, an indexed collection, a tenants file; the env."""
    from querylift.indexing import index_documents
    from training.data import Document

    settings = Settings()
    qspec, dspec = settings.query_encoder, settings.document_encoder
    if args.models_dir:
        m = Path(args.models_dir)
        qspec = qspec.model_copy(update={"path": str(m / "all-mpnet-base-v2")})
        dspec = dspec.model_copy(update={"path": str(m / "all-MiniLM-L6-v2")})
    q, d = build_encoder(qspec), build_encoder(dspec)
    queries, docs = load_texts(args.max_query_words)
    t = time.perf_counter()
    documents = [Document(i, text, {}) for i, text in docs[: args.docs]]
    vectors = d.encode([x.text for x in documents], "document", truncate=True).vectors
    gw = QdrantGateway(path=str(work / "qdrant"))
    try:
        for tenant in KEYS:  # the same documents for each tenant, encoded once
            index_documents(
                gw,
                d,
                documents,
                collection=COLLECTION,
                tenant_field=settings.tenant_field,
                tenant_value=tenant,
                progress=False,
                vectors=vectors,
            )
    finally:
        gw.close()
    print(f"setup: {len(documents)} documents indexed in {time.perf_counter() - t:.1f}s")
    store = open_store(work / "store")
    a1, a2 = (store.put(*random_linear(q, d, s)) for s in (1, 2))
    store.activate("alpha", a1.id, actor="soak")
    (work / "tenants.json").write_text(
        json.dumps(
            {
                "tenants": [
                    {"name": n, "api_keys_sha256": [hash_key(k)], "collection": COLLECTION}
                    for n, k in KEYS.items()
                ]
            }
        )
    )
    env = {
        "QUERYLIFT_QUERY_ENCODER__PATH": qspec.path,
        "QUERYLIFT_DOCUMENT_ENCODER__PATH": dspec.path,
        "QUERYLIFT_TENANTS_FILE": str(work / "tenants.json"),
        "QUERYLIFT_ADAPTER_STORE": store.location,
        "QUERYLIFT_QDRANT_PATH": str(work / "qdrant"),
        "QUERYLIFT_ADMIN_TOKEN": ADMIN,
        "QUERYLIFT_LOG_LEVEL": "warning",
    }
    if args.threads:  # on a shared machine, more torch threads than free cores stall every op
        env["QUERYLIFT_QUERY_ENCODER__THREADS"] = str(args.threads)
        env["QUERYLIFT_DOCUMENT_ENCODER__THREADS"] = str(args.threads)
    del q, d
    return env, queries, [a1.id, a2.id]


async def one(
    client: httpx.AsyncClient, run: Run, kind: str, rng: random.Random, queries: list[str]
) -> None:
    tenant = "alpha" if rng.random() < 0.5 else "beta"
    expect_status, expect_code = 200, None
    key = KEYS[tenant]
    if kind == "embed":
        path, body = "/embed", {"input": rng.choice(queries)}
    elif kind == "embed4":
        path, body = "/embed", {"input": rng.sample(queries, 4)}
    elif kind == "search":
        path, body = "/search", {"query": rng.choice(queries), "top_k": 10}
    elif kind == "openai":
        path, body = "/v1/embeddings", {"model": "querylift", "input": [rng.choice(queries)]}
    else:
        path, body, who, expect_status, expect_code = rng.choice(BAD)
        key = KEYS.get(who or "", "not-a-key")
    sent = time.monotonic()
    code: str | None = None
    try:
        r = await client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        status: int | str = r.status_code
        if r.status_code != 200:
            code = (r.json().get("error") or {}).get("code")
    except (httpx.HTTPError, ValueError) as e:
        status = type(e).__name__
    took = time.monotonic() - sent
    if run.measuring:
        ok = status == expect_status and code == expect_code
        run.records.append(Record(kind, sent - run.t0, took, status, code, ok))


async def swapper(url: str, run: Run, ids: list[str], every: float, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        n = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), every)
                break
            except TimeoutError:
                pass
            n += 1
            sent = time.monotonic()
            code = None
            try:
                r = await client.put(
                    "/admin/tenants/alpha/adapter", json={"adapter_id": ids[n % 2]}
                )
                status: int | str = r.status_code
                if r.status_code != 200:
                    code = (r.json().get("error") or {}).get("code")
            except (httpx.HTTPError, ValueError) as e:
                status = type(e).__name__
            if run.measuring:
                took = time.monotonic() - sent
                run.swaps.append(Record("swap", sent - run.t0, took, status, code, status == 200))


async def drive(url: str, pid: int, args: argparse.Namespace, queries: list[str], ids: list[str]):
    run = Run()
    rng = random.Random(args.seed)
    kinds, weights = zip(*MIX, strict=True)
    limits = httpx.Limits(max_connections=args.max_in_flight, max_keepalive_connections=16)
    stop_swaps = asyncio.Event()
    open_tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        swaps = asyncio.create_task(swapper(url, run, ids, args.swap_every, stop_swaps))
        start = time.monotonic()
        end_warmup = start + args.warmup
        end = end_warmup + args.duration
        next_sample = end_warmup + args.window
        i = 0
        while True:
            now = time.monotonic()
            if not run.measuring and now >= end_warmup:
                run.rss_kib.append((0.0, rss_kib(pid)))
                run.measuring, run.t0 = True, time.monotonic()
                end = run.t0 + args.duration
                next_sample = run.t0 + args.window
            if run.measuring and now >= next_sample:
                run.rss_kib.append((now - run.t0, rss_kib(pid)))
                next_sample += args.window
            if now >= end:
                break
            due = start + i / args.rate
            if due > now:
                await asyncio.sleep(due - now)
                continue
            i += 1
            kind = rng.choices(kinds, weights)[0]
            if len(open_tasks) >= args.max_in_flight:
                run.skipped += run.measuring
                continue
            task = asyncio.create_task(one(client, run, kind, rng, queries))
            open_tasks.add(task)
            task.add_done_callback(open_tasks.discard)
        stop_swaps.set()
        await asyncio.gather(*open_tasks, swaps)
    await asyncio.sleep(1.0)
    run.rss_kib.append((time.monotonic() - run.t0, rss_kib(pid)))
    return run, rss_kib(pid, "VmHWM")


def report(run: Run, args: argparse.Namespace, peak_kib: int) -> int:
    recs = run.records
    print(
        f"\nsoak: {args.duration:.0f}s measured at {args.rate:g} req/s (after {args.warmup:.0f}s "
        f"warm-up), alpha swapped every {args.swap_every:g}s; {len(recs)} requests, "
        f"{len(run.swaps)} swaps"
    )
    counts = Counter((r.kind, r.status, r.code or "-") for r in recs)
    print("\nrequests by kind, status and error code:")
    print(f"  {'kind':8} {'status':>10} {'code':20} {'count':>7}")
    for (kind, status, code), n in sorted(counts.items(), key=lambda x: (x[0][0], str(x[0][1]))):
        print(f"  {kind:8} {status!s:>10} {code:20} {n:>7}")
    deliberate = [r for r in recs if r.kind == "bad"]
    unexpected = [r for r in recs + run.swaps if not r.expected]
    swap_fail = [r for r in run.swaps if not r.expected]
    print(
        f"\ndeliberate 4xx: {len(deliberate)} sent, "
        f"{sum(r.expected for r in deliberate)} with the expected status and code"
    )
    print(
        f"swaps: {len(run.swaps)}, failed {len(swap_fail)}; "
        f"latency {summary_ms([r.seconds for r in run.swaps])}"
    )
    print(f"requests not sent (client cap of {args.max_in_flight} open reached): {run.skipped}")
    bad_by = Counter((r.kind, r.status, r.code) for r in unexpected)
    print(f"UNEXPECTED ERRORS: {len(unexpected) + run.skipped} {dict(bad_by) or ''}")

    good = [r for r in recs if r.kind != "bad" and r.expected]
    print(f"\nlatency of good requests: {summary_ms([r.seconds for r in good])}")
    for kind in ("embed", "embed4", "search", "openai"):
        print(f"  {kind:8} {summary_ms([r.seconds for r in good if r.kind == kind])}")
    print(
        f"\n  {'window':>12} {'sent':>6} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}"
    )
    n_windows = max(1, int(np.ceil(args.duration / args.window)))
    samples = dict(run.rss_kib)
    for w in range(n_windows):
        lo, hi = w * args.window, min((w + 1) * args.window, args.duration)
        win = [r for r in recs if lo <= r.sent < hi]
        lat = np.asarray([r.seconds for r in win if r.expected and r.kind != "bad"]) * 1e3
        p50, p99 = np.percentile(lat, [50, 99]) if len(lat) else (float("nan"),) * 2
        at = [kib for t, kib in samples.items() if lo < t <= hi + 1.5]
        rss = f"{at[-1] / 1024:8.0f}" if at else f"{'':8}"
        errs = sum(not r.expected for r in win)
        print(f"  {lo:5.0f}-{hi:4.0f}s {len(win):>6} {errs:>6} {p50:8.1f} {p99:8.1f} {rss}")
    start_kib, end_kib = run.rss_kib[0][1], run.rss_kib[-1][1]
    growth = (end_kib - start_kib) / start_kib * 100
    print(
        f"\nserver RSS: {start_kib / 1024:.0f} MiB after warm-up, {end_kib / 1024:.0f} MiB at the "
        f"end: growth {growth:+.1f}% (limit {args.max_rss_growth_pct:g}%); "
        f"peak {peak_kib / 1024:.0f} MiB"
    )
    failed = bool(unexpected or run.skipped or growth > args.max_rss_growth_pct)
    print("RESULT:", "FAIL" if failed else "ok")
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="measured seconds")
    ap.add_argument("--rate", type=float, default=5.0, help="requests per second (open loop)")
    ap.add_argument("--warmup", type=float, default=None, help="default: min(60, duration / 4)")
    ap.add_argument("--swap-every", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=60.0, help="seconds per latency window")
    ap.add_argument("--docs", type=int, default=300, help="demo abstracts to index")
    ap.add_argument("--max-query-words", type=int, default=20)
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument("--max-rss-growth-pct", type=float, default=10.0)
    ap.add_argument("--models-dir", default=None, help="embedded models folder (default: settings)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads per encoder (0: torch's default)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 4)
    if args.rate <= 0 or args.duration <= 0:
        ap.error("--rate and --duration must be > 0")
    work = Path(tempfile.mkdtemp(prefix="querylift-soak-"))
    env, queries, ids = setup(args, work)
    log_path = work / "server.log"
    with server_process(env, log_path, timeout_s=300.0) as (url, pid):
        print(f"server pid {pid} at {url} (log {log_path})")
        run, peak = asyncio.run(drive(url, pid, args, queries, ids))
    raise SystemExit(report(run, args, peak))


if __name__ == "__main__":
    main()
