"""/readyz (issue 23): the open answer names no tenant, the admin token adds the detail, and the
probe rate does not become Qdrant load (service/search/readiness.py: one snapshot, refreshed
in the background at most once per QUERYLIFT_READINESS_CACHE_S).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from encoders import Encoder
from service.bindings.tenants import hash_key
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway, QdrantUnreachable
from service.search.readiness import Snapshot, TargetReadiness
from service.search.targets import Inspection, SearchTarget
from tests.conftest import admin_headers, auth, docs_tenants

# tenants whose names, collections and values must never be in the open answer: one with no
# document yet, one whose collection does not exist, one whose collection cannot serve it
ODD_TENANTS = [
    {"name": "wayne-enterprises", "collection": "docs", "tenant_value": "val-wayne-77"},
    {"name": "umbrella", "collection": "coll-umbrella-missing", "tenant_value": "val-umb-31"},
    {"name": "hooli", "collection": "coll-hooli-8d", "tenant_value": "val-hooli-52"},
]
OPEN_CHECKS = {
    "encoders": "ok",
    "warmup": "ok",
    "adapter_sync": "ok",
    "qdrant": "ok",
    "search_targets": "failing",
}


def rows_with_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "api_keys_sha256": [hash_key(f"key-{r['name']}")]} for r in rows]


def test_the_open_answer_names_no_tenant_collection_or_value(
    start_admin: Callable[..., TestClient], gateway: QdrantGateway
) -> None:
    gateway.ensure_collection("coll-hooli-8d", 8, "tenant", {})  # 8-d: cannot serve
    client = start_admin([*docs_tenants(), *rows_with_keys(ODD_TENANTS)])
    configured = {
        v
        for row in [*docs_tenants(), *ODD_TENANTS]
        for v in (row["name"], row["collection"], row.get("tenant_value"))
        if v
    }
    no_key = client.get("/readyz")
    with_tenant_key = client.get("/readyz", headers=auth("acme"))
    wrong_token = client.get("/readyz", headers={"Authorization": "Bearer not-the-token"})
    for r in (no_key, with_tenant_key, wrong_token):
        assert r.status_code == 503, r.text
        body = r.json()
        assert set(body) == {"status", "checks", "engines"}, body
        assert body["status"] == "not_ready" and body["checks"] == OPEN_CHECKS
        for needle in configured:
            assert needle not in r.text, (needle, r.text)

    # the operator's view: today's detail, every problem and warning in words
    r = client.get("/readyz", headers=admin_headers())
    assert r.status_code == 503
    body = r.json()
    why = body["checks"]["search_targets"]
    assert "tenant 'hooli'" in why and "'coll-hooli-8d'" in why and "8-d" in why, why
    warnings = " | ".join(body["warnings"])
    assert "tenant 'wayne-enterprises'" in warnings and "'val-wayne-77'" in warnings
    assert "'coll-umbrella-missing'" in warnings and "does not exist yet" in warnings
    assert body["checks"]["qdrant"] == "ok" and body["checks"]["encoders"] == "ok"
    assert body["engines"] == no_key.json()["engines"]
    assert 0 <= body["snapshot_age_s"] < 60


def test_a_ready_service_answers_ready_with_check_states_only(
    start_admin: Callable[..., TestClient],
) -> None:
    client = start_admin()
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready"
    assert r.json()["checks"] == {
        "encoders": "ok",
        "warmup": "ok",
        "adapter_sync": "ok",
        "qdrant": "ok",
        "search_targets": "ok",
    }
    assert "warnings" not in r.json()  # initech has no document yet: only the admin hears it
    assert "initech" in " ".join(client.get("/readyz", headers=admin_headers()).json()["warnings"])


def test_probes_inspect_each_target_at_most_once_per_cache_period(
    start_admin: Callable[..., TestClient],
    gateway: QdrantGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100 probes at once with 50 tenants: one inspection per tenant per period, not 100."""
    others = [{"name": f"t{i:02d}", "collection": "docs"} for i in range(47)]
    period = Settings.model_fields["readiness_cache_s"].default
    assert period == 5.0
    client = start_admin([*docs_tenants(), *rows_with_keys(others)], readiness_cache_s=period)
    assert len(client.app.state.runtime.targets) == 50

    calls: Counter[str] = Counter()
    per_tenant: Counter[str] = Counter()

    def counted(name: str) -> None:
        real = getattr(gateway, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            if name == "tenant_points":
                per_tenant[args[0].tenant] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(gateway, name, call)

    for name in ("ping", "collection_info", "count", "tenant_points", "scroll"):
        counted(name)  # after start-up: the lifespan's own inspection is not counted

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: client.get("/readyz"), range(100)))
    elapsed = time.monotonic() - start
    assert [r.status_code for r in answers] == [200] * 100
    assert all(r.json()["checks"]["search_targets"] == "ok" for r in answers)
    most = 1 + int(elapsed // period)  # one per period started, however many probes came
    assert set(per_tenant) == set(client.app.state.runtime.targets)
    assert max(per_tenant.values()) <= most, (per_tenant, elapsed)
    assert calls["ping"] <= most and calls["collection_info"] <= most, calls
    print(f"100 probes in {elapsed:.2f} s, 50 tenants: Qdrant calls {dict(calls)}")


# -- the snapshot cache itself -------------------------------------------------------------------
TARGET = SearchTarget("acme", "docs", None, "field", "tenant", "acme", None, None)


class Source:
    """ping and inspect that count their calls and can be held."""

    def __init__(self) -> None:
        self.pings = 0
        self.inspections = 0
        self.hold = threading.Event()
        self.hold.set()
        self.down = False

    def ping(self) -> None:
        self.pings += 1
        self.hold.wait(10)
        if self.down:
            raise QdrantUnreachable("get_collections", "ConnectError: refused")

    def inspect(self) -> list[Inspection]:
        self.inspections += 1
        return [Inspection(TARGET)]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in 5 s")


async def next_snapshot(cache: TargetReadiness, after: Snapshot) -> Snapshot:
    """The first snapshot a probe answers that is not `after` (a refresh has published)."""
    for _ in range(500):
        if (snap := await cache.snapshot()) is not after:
            return snap
        await asyncio.sleep(0.01)
    raise AssertionError("no new snapshot in 5 s")


def test_a_stale_snapshot_is_answered_while_one_refresh_runs() -> None:
    src, clock = Source(), Clock()
    cache = TargetReadiness(src.ping, src.inspect, period_s=5.0, bound_s=60.0, clock=clock)

    async def run() -> None:
        # before the first snapshot: concurrent probes wait for one refresh
        first = await asyncio.gather(*(cache.snapshot() for _ in range(20)))
        assert {s.qdrant for s in first} == {"ok"} and src.inspections == 1
        # within the period: no Qdrant call
        clock.t += 4.9
        assert (await cache.snapshot()).at == 100.0 and src.pings == 1
        # stale: the probe answers the last snapshot at once; one refresh starts, held here
        clock.t += 0.2
        src.hold.clear()
        src.down = True
        stale = await asyncio.gather(*(cache.snapshot() for _ in range(20)))
        assert {s.at for s in stale} == {100.0} and {s.qdrant_state for s in stale} == {"ok"}
        await until(lambda: src.pings == 2)
        assert src.pings == 2  # single flight
        src.hold.set()
        now = await next_snapshot(cache, stale[0])
        assert (
            now.at == clock.t
            and now.qdrant_state == "unreachable"
            and now.qdrant.startswith("unreachable:")
        )
        assert now.found == () and src.inspections == 1

    asyncio.run(run())


def test_a_refresh_that_overruns_its_bound_says_timeout_and_is_replaced() -> None:
    src = Source()
    src.hold.clear()  # a ping that does not come back (a client without a timeout)
    cache = TargetReadiness(src.ping, src.inspect, period_s=5.0, bound_s=0.2)

    async def run() -> None:
        t0 = time.monotonic()
        snap = await cache.snapshot()
        assert time.monotonic() - t0 < 5  # bounded by 0.2 s, with scheduling slack
        assert snap.qdrant_state == "timeout"
        assert snap.qdrant == "timeout: no answer within 0.2 s"
        held = await cache.snapshot()
        assert held.qdrant_state == "timeout" and src.pings == 1  # held, no second refresh
        src.hold.set()  # the late answer is still taken: no newer refresh has published
        late = await next_snapshot(cache, held)
        assert late.qdrant_ok and late.found[0].target is TARGET

    asyncio.run(run())


def test_a_period_of_zero_refreshes_on_every_probe() -> None:
    src = Source()
    cache = TargetReadiness(src.ping, src.inspect, period_s=0.0, bound_s=5.0)

    async def run() -> None:
        for _ in range(3):
            assert (await cache.snapshot()).qdrant_ok
        src.down = True
        assert (await cache.snapshot()).qdrant_state == "unreachable"

    asyncio.run(run())
    assert src.pings == 4


def test_the_cache_belongs_to_the_runtime(
    make_app: Callable[..., Any], adapters_bound: dict[str, str], document_encoder: Encoder
) -> None:
    """A restarted lifespan (a new runtime) starts from a new snapshot."""
    app = make_app()
    seen = []
    for _ in range(2):
        with TestClient(app) as c:
            assert c.get("/readyz").status_code == 200
            seen.append(c.app.state.readiness)
    assert seen[0] is not seen[1]
