"""Hot swap under load: /embed for two tenants while tenant A flips between two adapters.

Bounded (concurrency, duration, loopback only). Every response is checked offline: its vector
must equal what the adapter version it names gives for that text. Prints failures (must be 0),
swap latency and request latency.

    python -m bench.hotswap [--models-dir models] [--duration 60] [--concurrency 16] [--swaps 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from adapters.store import open_store
from bench.common import load_encoder, random_linear, server, summary_ms
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


async def load(url: str, stop: asyncio.Event, concurrency: int, records: list, errors: list):
    async def worker(i: int) -> None:
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while not stop.is_set():
                tenant = "alpha" if rng.random() < 0.5 else "beta"
                text = rng.choice(QUERIES)
                t0 = time.perf_counter()
                try:
                    r = await client.post(
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
                body = r.json()
                records.append(
                    (
                        tenant,
                        text,
                        body["adapter"]["id"],
                        body["adapter"]["version"],
                        np.asarray(body["data"][0]["embedding"], np.float32),
                        dt,
                    )
                )

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def swapper(url: str, ids: list[str], swaps: int, interval: float, lat: list) -> None:
    async with httpx.AsyncClient(
        base_url=url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        for n in range(swaps):
            t0 = time.perf_counter()
            r = await client.put(
                "/admin/tenants/alpha/adapter", json={"adapter_id": ids[(n + 1) % 2]}
            )
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"swap {n} failed: {r.status_code} {r.text}")
            await asyncio.sleep(interval)


async def run(args: argparse.Namespace) -> int:
    models = Path(args.models_dir)
    q = load_encoder(EMBEDDED_QUERY_ENCODER, models)
    d = load_encoder(EMBEDDED_DOCUMENT_ENCODER, models)
    work = Path(tempfile.mkdtemp(prefix="querylift-hotswap-"))
    store = open_store(work / "store")
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
        "QUERYLIFT_QUERY_ENCODER__PATH": str(models / "all-mpnet-base-v2"),
        "QUERYLIFT_DOCUMENT_ENCODER__PATH": str(models / "all-MiniLM-L6-v2"),
        "QUERYLIFT_TENANTS_FILE": str(tenants),
        "QUERYLIFT_ADAPTER_STORE": store.location,
        "QUERYLIFT_QDRANT_PATH": str(work / "qdrant"),
        "QUERYLIFT_ADMIN_TOKEN": ADMIN,
        "QUERYLIFT_LOG_LEVEL": "warning",
    }
    records: list = []
    errors: list = []
    swap_lat: list[float] = []
    with server(env) as url:
        stop = asyncio.Event()
        loader = asyncio.create_task(load(url, stop, args.concurrency, records, errors))
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        interval = max(0.0, (args.duration - 2.0) / args.swaps)
        await swapper(url, [a1.id, a2.id], args.swaps, interval, swap_lat)
        remaining = args.duration - (time.perf_counter() - t0)
        if remaining > 0:
            await asyncio.sleep(remaining)
        stop.set()
        await loader
        elapsed = time.perf_counter() - t0
    # offline check: every vector equals its named adapter applied to the query encoder output
    raw = dict(zip(QUERIES, q.encode(QUERIES, "query").vectors, strict=True))
    adapters = {a.id: a for a in (a1, a2, b)}
    wrong = 0
    worst = 0.0
    versions_seen: set[tuple[str, int]] = set()
    for tenant, text, adapter_id, version, vec, _ in records:
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
    return 0 if not errors and not wrong else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default="models")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--swaps", type=int, default=100)
    raise SystemExit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
