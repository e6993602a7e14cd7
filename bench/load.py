"""The load generator's HTTP client: aiohttp, one keep-alive connection per worker.

Loopback benchmarks run the client on the same cores as the service, so the client's own
cost per request lands in the numbers. Measured on the 2-core dev VM at concurrency 1
(/embed, one query, paired samples): aiohttp adds about what a hand-written HTTP/1.1
client does, httpx adds about 7 ms more per request. The benches that time the service
(serve, overload) use this; the ones that check behaviour (soak, hotswap) keep httpx.
"""

from __future__ import annotations

from typing import Any

import aiohttp

KEEPALIVE_TIMEOUT_S = 120.0


def session(url: str, key: str | None, connections: int, timeout_s: float) -> aiohttp.ClientSession:
    """A session for `url` (loopback) with a bearer key and up to `connections` sockets."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return aiohttp.ClientSession(
        base_url=url,
        headers=headers,
        connector=aiohttp.TCPConnector(
            limit=connections, keepalive_timeout=KEEPALIVE_TIMEOUT_S, force_close=False
        ),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def post_json(
    client: aiohttp.ClientSession, path: str, body: dict[str, Any], *, parse: bool = False
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body or None); the body is always read in full so the
    connection goes back to the pool."""
    async with client.post(path, json=body) as r:
        raw = await r.read()
        data = None
        if parse and r.status == 200:
            data = await r.json()
        return r.status, dict(r.headers), data if parse else raw


async def get(client: aiohttp.ClientSession, path: str) -> int:
    async with client.get(path) as r:
        await r.read()
        return r.status
