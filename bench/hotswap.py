"""Hot swap under load: /embed for two tenants while tenant A flips between two adapters.

Bounded (concurrency, duration, loopback only). Every response is checked offline: its vector
must equal what the adapter version it names gives for that text. Prints failures (must be 0),
swap latency and request latency.

With `--replicas N` (N >= 2), N service processes share one adapter store, each its own
replica (its own Qdrant folder and replica-local files): the load goes round robin over all of
them, the swaps go through replica 0's admin API, and after each swap the other replicas are
probed until they serve the new version (propagation: from the PUT's return to the first
answer naming it; bound 2 x `--sync-interval`). `--store s3` puts the store on a local
S3-protocol server (moto, bench/s3_local.py) in this process instead of a folder, so the
replicas share no disk at all. Exit 1 when a check fails.

    python -m bench.hotswap [--models-dir models] [--duration 60] [--concurrency 16] [--swaps 100]
        [--store folder|s3] [--replicas 1] [--sync-interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from adapters.stores import open_store
from bench.common import load_encoder, random_linear, server_process, summary_ms, verdict
from service.bindings.tenants import hash_key
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER

QUERIES = [
    "What causes malaria?",
    "How does smoking affect lung cancer risk?",
    "Does vitamin D deficiency increase the risk of disease?",
    "Are statins linked to diabetes?",
    "What is the role of p53 in cancer?",
    "Does exercise improve cognitive function?",
    "How do vaccines trigger immunity?",
    "Is obesity associated with heart failure?",
    "Can antibiotics change the gut microbiome?",
    "What regulates insulin secretion?",
    "Does sleep deprivation affect memory?",
    "How does aspirin reduce inflammation?",
]
KEYS = {"alpha": "bench-key-alpha", "beta": "bench-key-beta"}
ADMIN = "bench-admin-token"
PROBE_TEXT = QUERIES[0]  # warmed into each replica's query cache first, so a probe is cheap
PROBE_EVERY_S = 0.01
PROBE_GIVE_UP_S = 10.0  # at least; a replica that has not caught up by then counts as a miss

# (tenant, text, adapter id, adapter version, vector, seconds, replica index)
Record = tuple[str, str, str, int, np.ndarray, float, int]


def _record(tenant: str, text: str, body: dict[str, Any], dt: float, replica: int) -> Record:
    return (
        tenant,
        text,
        body["adapter"]["id"],
        body["adapter"]["version"],
        np.asarray(body["data"][0]["embedding"], np.float32),
        dt,
        replica,
    )


async def load(
    urls: list[str], stop: asyncio.Event, concurrency: int, records: list, errors: list
) -> None:
    """`concurrency` closed-loop workers; each sends its requests round robin over `urls`."""

    async def worker(i: int) -> None:
        rng = random.Random(i)
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=u, timeout=30))
                for u in urls
            ]
            n = i  # workers start on different replicas
            while not stop.is_set():
                replica = n % len(clients)
                n += 1
                tenant = "alpha" if rng.random() < 0.5 else "beta"
                text = rng.choice(QUERIES)
                t0 = time.perf_counter()
                try:
                    r = await clients[replica].post(
                        "/embed",
                        json={"input": text},
                        headers={"Authorization": f"Bearer {KEYS[tenant]}"},
                    )
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                    continue
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    errors.append(r.status_code)
                    continue
                records.append(_record(tenant, text, r.json(), dt, replica))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def propagation(
    url: str, replica: int, active: dict[str, Any], since: float, probes: list, errors: list
) -> tuple[float, float] | None:
    """Seconds from `since` (the swap's PUT returned) until the replica at `url` answers tenant
    alpha with the adapter version `active` (or a later one), and that probe's own round trip
    (the measurement's resolution: a conservative bound, the replica switched before the
    answer came back); None if it has not by `PROBE_GIVE_UP_S`. Every probe's answer goes into
    `probes` for the offline check."""
    want_id, want_version = active["adapter_id"], active["version"]
    headers = {"Authorization": f"Bearer {KEYS['alpha']}"}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:
        while True:
            t0 = time.perf_counter()
            try:
                r = await client.post("/embed", json={"input": PROBE_TEXT})
            except httpx.HTTPError as e:
                errors.append(f"probe {type(e).__name__}")
            else:
                now = time.perf_counter()
                if r.status_code != 200:
                    errors.append(f"probe {r.status_code}")
                else:
                    rec = _record("alpha", PROBE_TEXT, r.json(), now - t0, replica)
                    probes.append(rec)
                    if rec[3] > want_version or (rec[3] == want_version and rec[2] == want_id):
                        return now - since, now - t0
            if time.perf_counter() - since > PROBE_GIVE_UP_S:
                return None
            await asyncio.sleep(PROBE_EVERY_S)


async def swapper(
    url: str, ids: list[str], swaps: int, interval: float, lat: list, on_swap: Any = None
) -> None:
    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        for n in range(swaps):
            t0 = time.perf_counter()
            r = await client.put(
                "/admin/tenants/alpha/adapter", json={"adapter_id": ids[(n + 1) % 2]}
            )
            done = time.perf_counter()
            lat.append(done - t0)
            if r.status_code != 200:
                raise RuntimeError(f"swap {n} failed: {r.status_code} {r.text}")
            if on_swap is not None:
                on_swap(r.json()["active"], done)
            await asyncio.sleep(interval)


async def _warm(urls: list[str]) -> None:
    headers = {"Authorization": f"Bearer {KEYS['alpha']}"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        for url in urls:
            r = await client.post(f"{url}/embed", json={"input": PROBE_TEXT})
            r.raise_for_status()


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    """`env` in this process's environment in place of every `AWS_*` variable, restored after."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def _store_location(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """(QUERYLIFT_ADAPTER_STORE, the environment the replicas need to reach it)."""
    if args.store == "folder":
        yield str(work / "store"), {}
        return
    from bench.s3_local import S3Server  # moto: imported only where asked for

    s3 = S3Server()
    s3.start()
    try:
        aws = s3.aws_env(work)
        with _environ(aws):
            yield f"s3://{s3.create_bucket()}/hotswap", aws
    finally:
        s3.stop()


def _pct(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) if seconds else float("nan")


async def run(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise SystemExit("--replicas must be >= 1")
    if args.sync_interval <= 0:
        raise SystemExit("--sync-interval must be > 0")
    models = Path(args.models_dir)
    q = load_encoder(EMBEDDED_QUERY_ENCODER, models)
    d = load_encoder(EMBEDDED_DOCUMENT_ENCODER, models)
    work = Path(tempfile.mkdtemp(prefix="querylift-hotswap-"))
    records: list = []
    errors: list = []
    probes: list = []
    swap_lat: list[float] = []
    spread: list[tuple[float, float] | None] = []  # propagation per (swap, other replica)
    with ExitStack() as stack:
        location, aws = stack.enter_context(_store_location(args, work))
        store = open_store(location)
        a1, a2, b = (store.put(*random_linear(q, d, s)) for s in (1, 2, 3))
        store.activate("alpha", a1.id)
        store.activate("beta", b.id)
        tenants = work / "tenants.json"
        tenants.write_text(
            json.dumps(
                {
                    "tenants": [
                        {"name": n, "api_keys_sha256": [hash_key(k)], "collection": "bench"}
                        for n, k in KEYS.items()
                    ]
                }
            )
        )
        env = {
            **aws,
            "QUERYLIFT_QUERY_ENCODER__PATH": str(models / "all-mpnet-base-v2"),
            "QUERYLIFT_DOCUMENT_ENCODER__PATH": str(models / "all-MiniLM-L6-v2"),
            "QUERYLIFT_TENANTS_FILE": str(tenants),
            "QUERYLIFT_ADAPTER_STORE": store.location,
            "QUERYLIFT_ADAPTER_SYNC_INTERVAL_S": str(args.sync_interval),
            "QUERYLIFT_ADMIN_TOKEN": ADMIN,
            "QUERYLIFT_LOG_LEVEL": "warning",
        }
        urls = []
        for i in range(args.replicas):
            own = work / f"replica-{i}"  # replicas share no disk: each its own files
            own.mkdir()
            replica_env = {**env, "QUERYLIFT_QDRANT_PATH": str(own / "qdrant")}
            if args.store == "s3":
                replica_env["QUERYLIFT_AUDIT_LOG"] = str(own / "audit.log")
                replica_env["QUERYLIFT_GATE_TEACHER_CACHE_DIR"] = str(own / "teacher-cache")
                replica_env["QUERYLIFT_QUERY_LOG_DIR"] = str(own / "query-log")
            url, _ = stack.enter_context(server_process(replica_env, own / "server.log"))
            urls.append(url)

        tasks: list[asyncio.Task[tuple[float, float] | None]] = []

        def on_swap(active: dict[str, Any], done: float) -> None:
            for i, url in enumerate(urls[1:], start=1):
                tasks.append(asyncio.create_task(propagation(url, i, active, done, probes, errors)))

        if args.replicas > 1:  # the probe's text into each replica's query cache
            await _warm(urls)
        stop = asyncio.Event()
        loader = asyncio.create_task(load(urls, stop, args.concurrency, records, errors))
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        interval = max(0.0, (args.duration - 2.0) / args.swaps)
        if args.replicas > 1:  # room to see each swap arrive before the next one
            interval = max(interval, 3 * args.sync_interval)
        await swapper(
            urls[0],
            [a1.id, a2.id],
            args.swaps,
            interval,
            swap_lat,
            on_swap if args.replicas > 1 else None,
        )
        remaining = args.duration - (time.perf_counter() - t0)
        if remaining > 0:
            await asyncio.sleep(remaining)
        spread = list(await asyncio.gather(*tasks))
        stop.set()
        await loader
        elapsed = time.perf_counter() - t0
    # offline check: every vector equals its named adapter applied to the query encoder output
    raw = dict(zip(QUERIES, q.encode(QUERIES, "query").vectors, strict=True))
    adapters = {a.id: a for a in (a1, a2, b)}
    wrong = 0
    worst = 0.0
    versions_seen: set[tuple[str, int]] = set()
    for tenant, text, adapter_id, version, vec, *_ in records + probes:
        expected = adapters[adapter_id].apply(raw[text][None, :])[0]
        err = float(np.abs(vec - expected).max())
        worst = max(worst, err)
        wrong += err > 1e-5 or (tenant == "beta" and adapter_id != b.id)
        versions_seen.add((tenant, version))
    alpha_ids = {r[2] for r in records if r[0] == "alpha"}
    print(
        f"hot swap bench: {len(records)} requests over {elapsed:.1f}s at concurrency "
        f"{args.concurrency} ({len(records) / elapsed:.1f} req/s), {len(swap_lat)} swaps"
    )
    if args.replicas > 1:
        per = [sum(r[6] == i for r in records) for i in range(args.replicas)]
        print(
            f"{args.replicas} replicas on one {args.store} store ({store.location}), "
            f"sync interval {args.sync_interval:g}s, swaps every {interval:.2f}s through "
            f"replica 0; requests per replica {per}, plus {len(probes)} propagation probes"
        )
    print(f"failed requests: {len(errors)} {sorted(set(map(str, errors)))}")
    print(
        f"responses whose vector differs from their named adapter version: {wrong} "
        f"(max abs diff {worst:.2e})"
    )
    print(
        f"tenant alpha served by {len(alpha_ids)} adapters, "
        f"{len({v for t, v in versions_seen if t == 'alpha'})} versions"
    )
    print(f"swap latency (PUT /admin/tenants/alpha/adapter): {summary_ms(swap_lat)}")
    print(f"/embed latency under swaps: {summary_ms([r[5] for r in records])}")
    if args.replicas == 1:
        return 0 if not errors and not wrong else 1
    seen = [s[0] for s in spread if s is not None]
    rtt = [s[1] for s in spread if s is not None]
    missed = len(spread) - len(seen)
    bound = 2 * args.sync_interval
    p50, p99 = _pct(seen, 50), _pct(seen, 99)
    over = sum(s > bound for s in seen)
    print(
        f"propagation (PUT on replica 0 returned -> another replica answers with the new "
        f"version): p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
        f"max {max(seen, default=float('nan')) * 1e3:.0f} ms (n={len(seen)}, "
        f"{missed} not seen within {PROBE_GIVE_UP_S:g}s, {over} over the bound); "
        f"bound 2 x sync interval = {bound * 1e3:.0f} ms"
    )
    print(
        f"  each includes the answering probe's own round trip (probes every "
        f"{PROBE_EVERY_S * 1e3:.0f} ms): p50 {_pct(rtt, 50) * 1e3:.0f} ms, "
        f"max {max(rtt, default=float('nan')) * 1e3:.0f} ms"
    )
    return verdict(
        {
            "no failed request": not errors,
            "every vector from the adapter version it names": not wrong,
            f"propagation p50 and p99 <= {bound * 1e3:.0f} ms, every swap seen": (
                not missed and bool(seen) and p99 <= bound
            ),
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--swaps", type=int, default=100)
    ap.add_argument(
        "--store",
        choices=("folder", "s3"),
        default="folder",
        help="the adapter store: a folder, or a bucket on a local S3 server (moto)",
    )
    ap.add_argument("--replicas", type=int, default=1, help="service processes on one store")
    ap.add_argument(
        "--sync-interval",
        type=float,
        default=0.5,
        help="QUERYLIFT_ADAPTER_SYNC_INTERVAL_S of every replica (seconds)",
    )
    raise SystemExit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
