"""Interference: live /search latency idle versus while a label-free gate activation runs.

Issue 23's promise: admin work queues behind live requests, never beside them. One tenant on
the demo corpus (embedded profile, Qdrant Edge in its own process, exact search, no query
cache, so every request encodes) takes closed-loop /search traffic at `--concurrency`; the
phases:

1. idle: live traffic alone for `--seconds`;
2. the gate alone: a label-free activation (`--gate-queries` unlabelled queries x
   `--gate-candidates` candidates, teacher cache off so each run embeds the same documents);
3. the gate under load: the same activation of another adapter while live traffic runs,
   until the gate answers.

Per phase: live /search p50/p99, the service's own event-loop lag
(`querylift_event_loop_lag_seconds`, a 50 ms sleep's overshoot, from /metrics) and a /healthz
probe every 50 ms; the gate's wall time both ways. Bounded (loopback only, stops by itself).

    python -m bench.interference [--models-dir models] [--concurrency 8] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from adapters.stores import open_store
from bench import load
from bench.common import KEY, build_setup, random_linear, server, verdict

TOKEN = "bench-interference-admin"
TENANT = "bench"
_BUCKET = re.compile(r'^querylift_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M)


def lag_buckets(url: str) -> dict[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {float(le): float(n) for le, n in _BUCKET.findall(text)}


def lag_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """From cumulative bucket counts: samples, share within 5 ms, and the bucket bound of the
    p99 (the smallest `le` holding 99% of the phase's samples)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return {"samples": 0, "within_5ms": None, "p99_le_ms": None}
    p99 = next(le for le, n in delta.items() if n >= 0.99 * total)
    return {
        "samples": int(total),
        "within_5ms": delta.get(0.005, 0.0) / total,
        "p99_le_ms": p99 * 1e3,
    }


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values) * 1e3, q)) if values else None


async def live_phase(
    url: str, queries: itertools.cycle, concurrency: int, until: asyncio.Event, max_s: float
) -> dict[str, Any]:
    """Closed-loop /search at `concurrency` and a /healthz probe every 50 ms, until `until` is
    set or `max_s` passes."""
    latencies: list[float] = []
    probes: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + max_s

    def going() -> bool:
        return not until.is_set() and time.perf_counter() < deadline

    async with load.session(url, KEY, concurrency + 2, 600) as client:

        async def worker() -> None:
            while going():
                t0 = time.perf_counter()
                status, _, _ = await load.post_json(
                    client, "/search", {"query": next(queries), "top_k": 10}
                )
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - t0)

        async def probe() -> None:
            while going():
                t0 = time.perf_counter()
                await load.get(client, "/healthz")
                probes.append(time.perf_counter() - t0)
                await asyncio.sleep(0.05)

        t0 = time.perf_counter()
        await asyncio.gather(probe(), *(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "statuses": statuses,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "healthz_p99_ms": pct(probes, 99),
    }


def activate(url: str, adapter_id: str) -> tuple[float, int, dict[str, Any]]:
    """One gated activation: (seconds, status, what the label-free gate reported)."""
    t0 = time.perf_counter()
    r = httpx.put(
        f"{url}/admin/tenants/{TENANT}/adapter",
        json={"adapter_id": adapter_id},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    body = r.json()
    gate = (body.get("gate") or body.get("error", {}).get("details", {}).get("gate")) or {}
    return seconds, r.status_code, gate


async def gate_under_load(
    url: str, adapter_id: str, queries: itertools.cycle, concurrency: int
) -> tuple[dict[str, Any], tuple[float, int, dict[str, Any]]]:
    done = asyncio.Event()

    async def gate() -> tuple[float, int, dict[str, Any]]:
        try:
            return await asyncio.to_thread(activate, url, adapter_id)
        finally:
            done.set()

    live, result = await asyncio.gather(live_phase(url, queries, concurrency, done, 3600), gate())
    return live, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="the idle phase's length")
    ap.add_argument("--docs", type=int, default=1000, help="demo documents indexed")
    ap.add_argument("--gate-queries", type=int, default=20)
    ap.add_argument("--gate-candidates", type=int, default=20)
    ap.add_argument("--background-tokens", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("var/bench/interference.json"))
    args = ap.parse_args()
    env = {
        "QUERYLIFT_ADMIN_TOKEN": TOKEN,
        "QUERYLIFT_GATE_LABEL_FREE_QUERIES": str(args.gate_queries),
        "QUERYLIFT_GATE_LABEL_FREE_CANDIDATES": str(args.gate_candidates),
        "QUERYLIFT_GATE_TEACHER_CACHE_ENTRIES": "0",  # each gate run embeds its documents
    }
    if args.background_tokens:
        env["QUERYLIFT_BACKGROUND_BATCH_TOKENS"] = str(args.background_tokens)
    setup = build_setup(args.models_dir, docs=args.docs, **env)
    store = open_store(setup.env["QUERYLIFT_ADAPTER_STORE"])
    alone, loaded = (
        store.put(*random_linear(setup.query_encoder, setup.document_encoder, s)).id for s in (2, 3)
    )
    queries = itertools.cycle(setup.texts)
    unlabelled = setup.texts[-args.gate_queries :]  # the gate's; live traffic cycles them all
    with server(setup.env) as url:
        r = httpx.put(
            f"{url}/admin/tenants/{TENANT}/queries",
            content=json.dumps(unlabelled),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        r.raise_for_status()
        never = asyncio.Event()
        asyncio.run(live_phase(url, queries, args.concurrency, never, 5))  # warm
        b = lag_buckets(url)
        idle = asyncio.run(live_phase(url, queries, args.concurrency, never, args.seconds))
        idle["loop_lag"] = lag_summary(b, b := lag_buckets(url))
        gate_s, gate_status, gate = activate(url, alone)
        quiet_lag = lag_summary(b, b := lag_buckets(url))
        live, (busy_s, busy_status, busy_gate) = asyncio.run(
            gate_under_load(url, loaded, queries, args.concurrency)
        )
        live["loop_lag"] = lag_summary(b, lag_buckets(url))
    result = {
        "concurrency": args.concurrency,
        "gate": {"queries": args.gate_queries, "candidates": args.gate_candidates},
        "idle": idle,
        "during_gate": live,
        "gate_alone": {"seconds": round(gate_s, 1), "status": gate_status, "loop_lag": quiet_lag},
        "gate_under_load": {"seconds": round(busy_s, 1), "status": busy_status},
        "gate_decisions": [gate.get("decision"), busy_gate.get("decision")],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ratio = (live["p99_ms"] or 0) / (idle["p99_ms"] or 1)
    print(
        f"\nlive /search c={args.concurrency}: idle p50 {idle['p50_ms']:.1f} / p99 "
        f"{idle['p99_ms']:.1f} ms; during the gate p50 {live['p50_ms']:.1f} / p99 "
        f"{live['p99_ms']:.1f} ms ({ratio:.2f}x idle p99)\n"
        f"gate: {gate_s:.1f} s alone, {busy_s:.1f} s under load; loop lag p99 <= "
        f"{live['loop_lag']['p99_le_ms']} ms during the gate "
        f"({live['loop_lag']['within_5ms']:.1%} of samples within 5 ms)"
    )
    within = {k: (v["loop_lag"]["within_5ms"] or 0.0) for k, v in (("idle", idle), ("gate", live))}
    return verdict(
        {
            "p99 during the gate within 1.5x of idle p99": ratio <= 1.5,
            "the gate adds no event-loop lag (share within 5 ms no lower than idle's - 2 points)": (
                within["gate"] >= within["idle"] - 0.02
            ),
            "event-loop lag p99 under 5 ms during the gate": within["gate"] >= 0.99,
            "no failed live request": set(idle["statuses"]) == set(live["statuses"]) == {200},
        }
    )


if __name__ == "__main__":
    raise SystemExit(main())
