"""Overload: 4x the sustainable rate, then back; the service must shed load, not drown.

A real `querylift serve` on loopback (the bench.serve setup: mpnet queries + a linear adapter,
cache off) gets open-loop /embed traffic (one query each, Poisson arrivals):

1. capacity: closed loop at concurrency 1 -> requests/s the service completes one at a time
   (never refused, so the queue-wait limit cannot shrink it); the sustainable rate is
   `--sustainable` (0.75) of it. 4x that is also past what batching can absorb;
2. unloaded: the sustainable rate for `--phase` seconds -> its p99 (the reference);
3. overload: 4x the sustainable rate for `--phase` seconds, /healthz probed every 50 ms;
4. recovery: the sustainable rate again, right after.

Printed, with a verdict each: 429s answered fast (p99), /healthz never timing out (1 s),
p99 of accepted requests under overload <= 2x the unloaded p99, and recovery (the first
second after the overload with no 429 and p99 back under 2x). Bounded in time and count.

    python -m bench.overload [--models-dir models] [--phase 20] [--queue-wait-ms 150]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from bench import load
from bench.common import KEY, Run, Steal, build_setup, closed_loop, server, verdict


@dataclass
class Phase:
    name: str
    rate: float
    records: list[tuple[float, int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steal: float | None = None  # CPU share the hypervisor took during the phase

    def lat(self, status: int) -> np.ndarray:
        return np.asarray([dt for _, s, dt in self.records if s == status]) * 1e3

    def count(self, status: int) -> int:
        return sum(1 for _, s, _ in self.records if s == status)

    def p(self, status: int, q: float) -> float:
        a = self.lat(status)
        return float(np.percentile(a, q)) if a.size else 0.0


async def open_loop(
    client: aiohttp.ClientSession,
    phase: Phase,
    texts: itertools.cycle[str],
    duration: float,
    max_requests: int,
    seed: int,
) -> None:
    """Poisson arrivals at `phase.rate`; each request is its own task (open loop)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()

    async def one(text: str) -> None:
        t0 = time.perf_counter()
        try:
            status, _, _ = await load.post_json(client, "/embed", {"input": text})
            phase.records.append((t0 - start, status, time.perf_counter() - t0))
        except (aiohttp.ClientError, TimeoutError) as e:
            phase.errors.append(type(e).__name__)

    next_at = start
    steal = Steal()
    while time.perf_counter() - start < duration and len(tasks) < max_requests:
        next_at += rng.expovariate(phase.rate)
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(next(texts))))
    await asyncio.gather(*tasks)
    phase.steal = steal.read()


async def probe_health(url: str, stop: asyncio.Event, out: list[float], fails: list[str]) -> None:
    async with load.session(url, None, 2, 1.0) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status = await load.get(client, "/healthz")
                if status != 200:
                    fails.append(str(status))
                out.append(time.perf_counter() - t0)
            except (aiohttp.ClientError, TimeoutError) as e:
                fails.append(type(e).__name__)
            await asyncio.sleep(0.05)


def recovery_s(phase: Phase, bound_ms: float) -> float | None:
    """Start of the first 1-second window with no 429 and p99 of its 200s under `bound_ms`."""
    if not phase.records:
        return None
    end = max(t for t, _, _ in phase.records)
    w = 0.0
    while w <= end:
        inside = [(s, dt) for t, s, dt in phase.records if w <= t < w + 1.0]
        oks = [dt * 1e3 for s, dt in inside if s == 200]
        if inside and all(s == 200 for s, _ in inside) and np.percentile(oks, 99) <= bound_ms:
            return w
        w += 0.25
    return None


async def main_async(args: argparse.Namespace) -> int:
    setup = build_setup(
        Path(args.models_dir),
        docs=20,
        QUERYLIFT_MAX_QUEUE_WAIT_MS=str(args.queue_wait_ms),
        QUERYLIFT_MAX_QUEUE=str(args.max_queue),
    )
    texts = itertools.cycle(setup.texts)
    with server(setup.env) as url:
        warm = Run("warm-up", 4, 1)
        await closed_loop(url, warm, texts, 3.0, 40)
        # concurrency 1: a lone request is never refused, so the queue-wait limit cannot
        # make the capacity look smaller than it is (batching only raises it further)
        cap = Run("capacity", 1, 1)
        steal = Steal()
        await closed_loop(url, cap, texts, args.phase / 2, 100_000)
        cap_steal = steal.read()
        capacity = cap.ok / cap.elapsed
        rate = args.sustainable * capacity
        print(
            f"capacity (closed loop, concurrency 1): {capacity:.1f} req/s; sustainable rate "
            f"{rate:.1f} req/s; overload {4 * rate:.1f} req/s; queue-wait limit "
            f"{args.queue_wait_ms:g} ms (steal while measuring capacity: "
            f"{'n/a' if cap_steal is None else f'{100 * cap_steal:.0f}%'})",
            flush=True,
        )
        async with load.session(url, KEY, 1024, 60) as client:
            unloaded = Phase("unloaded", rate)
            await open_loop(client, unloaded, texts, args.phase, args.max_requests, 1)
            stop = asyncio.Event()
            health: list[float] = []
            health_fails: list[str] = []
            prober = asyncio.create_task(probe_health(url, stop, health, health_fails))
            over = Phase("overload", 4 * rate)
            await open_loop(client, over, texts, args.phase, args.max_requests, 2)
            after = Phase("recovery", rate)
            await open_loop(client, after, texts, args.phase, args.max_requests, 3)
            stop.set()
            await prober
    ref = unloaded.p(200, 99)
    for ph in (unloaded, over, after):
        print(
            f"{ph.name:<9} {ph.rate:6.1f} req/s offered: {len(ph.records)} answered "
            f"(200: {ph.count(200)}, 429: {ph.count(429)}, other: "
            f"{len(ph.records) - ph.count(200) - ph.count(429)}, client errors: "
            f"{len(ph.errors)}); 200s p50 {ph.p(200, 50):.1f} p99 {ph.p(200, 99):.1f} ms; "
            f"429s p50 {ph.p(429, 50):.1f} p99 {ph.p(429, 99):.1f} ms; steal "
            f"{'n/a' if ph.steal is None else f'{100 * ph.steal:.0f}%'}",
            flush=True,
        )
    h = np.asarray(health) * 1e3
    rec = recovery_s(after, 2 * ref)
    checks = {
        "429s answered fast (p99 < 50 ms)": over.count(429) > 0 and over.p(429, 99) < 50,
        f"/healthz never timed out ({len(h)} probes, max {h.max():.1f} ms)": not health_fails,
        f"overload p99 of accepted {over.p(200, 99):.1f} ms <= 2 x unloaded p99 {ref:.1f} ms": (
            over.p(200, 99) <= 2 * ref
        ),
        f"recovered {rec if rec is not None else 'never'} s after the overload stopped": (
            rec is not None and rec <= 2.0
        ),
        "no other status, no client error": not over.errors
        and all(s in (200, 429) for ph in (unloaded, over, after) for _, s, _ in ph.records),
    }
    return verdict(checks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--sustainable", type=float, default=0.75, help="fraction of capacity")
    ap.add_argument("--queue-wait-ms", type=float, default=150.0)
    ap.add_argument("--max-queue", type=int, default=1024)
    ap.add_argument("--max-requests", type=int, default=20_000, help="per phase at most")
    raise SystemExit(asyncio.run(main_async(ap.parse_args())))


if __name__ == "__main__":
    main()
