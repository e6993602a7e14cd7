"""The first request after /readyz says ready, against the same process's steady state.

Each run is a fresh `querylift serve` (embedded models, one tenant with a linear adapter, 200
demo documents) that gets `--requests` sequential requests on one endpoint, each a different
demo claim (no query-cache hits), timed at the client; with QUERYLIFT_WARMUP on and off.

    .venv/bin/python -m bench.first_request --rounds 3 --requests 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import httpx

from bench.common import KEY, build_setup, server_process

ENDPOINTS = ("/embed", "/search")


def _body(endpoint: str, text: str) -> dict[str, object]:
    return {"input": [text]} if endpoint == "/embed" else {"query": text, "top_k": 10}


def measure(
    models: Path, *, warmup: bool, requests: int, rounds: int = 1
) -> dict[str, list[float]]:
    """Per endpoint, the client-side milliseconds of requests 1..N (rounds concatenated: the
    first of each round at index k * requests)."""
    setup = build_setup(models, docs=200, QUERYLIFT_WARMUP=str(warmup).lower())
    out: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
    texts = iter(setup.texts)
    for _ in range(rounds):
        for endpoint in ENDPOINTS:  # a fresh process for each: its first request is cold
            with (
                server_process(setup.env, setup.work / "server.log") as (url, _),
                httpx.Client(
                    base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
                ) as client,
            ):
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = client.post(endpoint, json=_body(endpoint, next(texts)))
                    out[endpoint].append((time.perf_counter() - t0) * 1e3)
                    r.raise_for_status()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    print(f"{args.rounds} fresh processes per row, {args.requests} sequential requests each")
    print(
        "| warm-up | endpoint | first request (ms) | requests 2..N, median (ms) | first / median |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for warmup in (False, True):
        got = measure(args.models, warmup=warmup, requests=args.requests, rounds=args.rounds)
        for endpoint, times in got.items():
            runs = [times[i : i + args.requests] for i in range(0, len(times), args.requests)]
            first = statistics.median(r[0] for r in runs)
            steady = statistics.median(x for r in runs for x in r[1:])
            firsts = ", ".join(f"{r[0]:.0f}" for r in runs)
            print(
                f"| {'on' if warmup else 'off'} | {endpoint} | {first:.1f} ({firsts}) "
                f"| {steady:.1f} | {first / steady:.2f} |"
            )


if __name__ == "__main__":
    main()
