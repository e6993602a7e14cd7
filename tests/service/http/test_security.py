"""Security (issue 7): key hashing and comparison, secrets never logged, request ids, JSON
logs, per-tenant rate limit, CORS.

Every `/admin` route refusing a missing, wrong or tenant key (401), and answering 404 while the
admin API is off, is tests/service/admin/test_admin_auth_routes.py: a walk of the app's routes.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from querylift.cli import app as cli
from service.bindings import tenants
from service.bindings.tenants import Tenant, TenantRegistry, hash_key
from service.http.ratelimit import TokenBucketLimiter
from service.ops import logs
from service.ops.settings import Settings
from tests.conftest import KEYS, assert_error, auth

ADMIN = "security-admin-token-4f9a"  # its own, distinctive: searched for in the logs


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# -- API keys ----------------------------------------------------------------------------------
def test_keys_are_held_as_digests_and_compared_against_every_one(monkeypatch, tmp_path: Path):
    """Only sha256 digests are held, and resolving any key, known or not, compares it with
    every digest: the time taken does not say which key matched, or how far it matched."""
    keys = {f"t{i}": f"key-{i}-{'x' * i}" for i in range(5)}
    path = tmp_path / "tenants.json"
    path.write_text(
        json.dumps(
            {"tenants": [{"name": n, "api_keys_sha256": [hash_key(k)]} for n, k in keys.items()]}
        )
    )
    reg = TenantRegistry.from_file(path)
    held = repr(vars(reg)) + repr(reg.tenants)
    assert not any(k in held for k in keys.values())

    calls: list[tuple[int, int]] = []
    real = tenants.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(tenants.hmac, "compare_digest", counting)
    for key, expected in [*((k, n) for n, k in keys.items()), ("nope", None), ("x" * 999, None)]:
        calls.clear()
        found = reg.resolve(key)
        assert (found.name if found else None) == expected
        assert calls == [(32, 32)] * len(keys)  # fixed-length digests, all of them


@pytest.mark.parametrize(
    "entries",
    [
        [
            {"name": "a", "api_keys_sha256": [hash_key("k")]},
            {"name": "b", "api_keys_sha256": [hash_key("k")]},
        ],
        [{"name": "a", "tenant_value": "v"}, {"name": "b", "tenant_value": "v"}],
        [{"name": "a", "collection": "c"}, {"name": "b", "collection": "c", "tenant_value": "a"}],
    ],
)
def test_tenants_that_would_share_a_key_or_data_are_refused(tmp_path: Path, entries: list):
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"tenants": entries}))
    with pytest.raises(ValueError, match="tenants"):
        TenantRegistry.from_file(path)


# -- logs --------------------------------------------------------------------------------------
@pytest.fixture
def captured() -> Iterator[Callable[[], list[dict]]]:
    """Every record of every logger during the test, as JSON lines of the real formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_keys_and_the_admin_token_never_reach_the_logs(
    make_client: Callable[..., TestClient], captured: Callable[[], list[dict]]
):
    c = make_client(admin_token=SecretStr(ADMIN))
    wrong_key = "wrong-key-never-logged-7731"
    c.post("/embed", json={"input": "x"}, headers=auth("acme"))
    c.post("/search", json={"query": "x"}, headers=auth("globex"))
    c.post("/embed", json={"input": "x"}, headers={"Authorization": f"Bearer {wrong_key}"})
    c.post("/embed", json={"input": "x"}, headers={"Authorization": f"Bearer {ADMIN}"})
    c.get("/admin/adapters", headers={"Authorization": f"Bearer {ADMIN}"})
    c.get("/admin/adapters", headers={"Authorization": f"Bearer {ADMIN}x"})
    c.get("/admin/adapters", headers=auth("acme"))
    c.put(
        "/admin/tenants/acme/adapter",
        json={"adapter_id": None},
        headers={"Authorization": f"Bearer {ADMIN}", "X-Querylift-Actor": "alice"},
    )
    lines = captured()
    text = "\n".join(json.dumps(x) for x in lines)
    access = [x for x in lines if x["logger"] == "querylift.access"]
    assert len(access) == 8  # the capture works: one access line per request
    assert any(x["logger"] == "querylift.audit" for x in lines)
    for secret in [*KEYS.values(), wrong_key, ADMIN, hash_key(KEYS["acme"])]:
        assert secret not in text


def test_every_log_line_of_a_request_has_its_id_and_tenant(
    client: TestClient, captured: Callable[[], list[dict]]
):
    r = client.post(
        "/embed", json={"input": "x"}, headers={**auth("acme"), "X-Request-ID": "req-42.a"}
    )
    assert r.headers["x-request-id"] == "req-42.a"
    (line,) = [x for x in captured() if x["logger"] == "querylift.access"]
    assert line["request_id"] == "req-42.a" and line["tenant"] == "acme"
    assert line["method"] == "POST" and line["path"] == "/embed" and line["status"] == 200
    assert line["duration_ms"] > 0 and line["level"] == "info" and line["ts"].endswith("Z")
    assert line["msg"].startswith("POST /embed 200 ")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("has space", False),
        ("new\nline", False),
        ('{"json": 1}', False),
        ("-leading-dash", False),
    ],
)
def test_request_ids_are_kept_when_sane_else_replaced(client: TestClient, given: str, kept: bool):
    headers = {"X-Request-ID": given} if "\n" not in given else {}
    r = client.get("/healthz", headers=headers)
    rid = r.headers["x-request-id"]
    if kept:
        assert rid == given
    else:
        assert rid != given and len(rid) == 32 and int(rid, 16) >= 0


def test_every_response_has_a_request_id_even_a_500(
    make_client: Callable[..., TestClient], captured: Callable[[], list[dict]]
):
    c = make_client(max_body_bytes=64)
    app: FastAPI = c.app  # type: ignore[assignment]

    def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    responses = [
        c.get("/healthz"),
        c.post("/embed", json={"input": "x"}),  # 401
        c.get("/nope"),  # 404
        c.post("/embed", json={"input": "x" * 100}, headers=auth("acme")),  # 413
        c.post("/embed", json={"input": []}, headers=auth("acme")),  # 422
        c.get("/boom"),  # 500
    ]
    assert [r.status_code for r in responses] == [200, 401, 404, 413, 422, 500]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    assert responses[-1].json()["error"]["code"] == "internal_error"
    lines = captured()
    (err,) = [x for x in lines if x["msg"].startswith("unhandled error on GET /boom")]
    assert err["request_id"] == ids[-1] and "RuntimeError: boom" in err["exc"]
    (acc,) = [x for x in lines if x["logger"] == "querylift.access" and x["path"] == "/boom"]
    assert acc["status"] == 500 and acc["request_id"] == ids[-1]


def test_json_log_lines_and_the_text_format():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure_logging("debug", "json", stream)
        token = logs.bind(logs.RequestContext("rid-1"))
        logs.bind_tenant("acme")
        logging.getLogger("querylift.test").info("hello %s", "world\nnext", extra={"n": 3})
        logs.unbind(token)
        logging.getLogger("uvicorn.error").warning("outside a request")
        first, second = (json.loads(x) for x in stream.getvalue().splitlines())
        assert first["msg"] == "hello world\nnext" and first["n"] == 3
        assert (first["request_id"], first["tenant"], first["level"]) == ("rid-1", "acme", "info")
        assert first["logger"] == "querylift.test"
        assert second["logger"] == "uvicorn.error" and second["request_id"] is None

        stream = io.StringIO()
        logs.configure_logging("info", "text", stream)
        token = logs.bind(logs.RequestContext("rid-2", "globex"))
        logging.getLogger("querylift.test").info("plain")
        logs.unbind(token)
        assert "querylift.test [req=rid-2 tenant=globex]: plain" in stream.getvalue()
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_serve_configures_the_logs_in_one_place(monkeypatch, tmp_path: Path):
    import service.ops.shutdown

    seen: dict[str, Any] = {}

    class FakeServer:
        def __init__(self, config: Any, drain: Any) -> None:
            seen["config"] = config

        def run(self) -> None:
            seen["formatter"] = logging.getLogger().handlers[0].formatter

    monkeypatch.setattr(service.ops.shutdown, "DrainingServer", FakeServer)
    monkeypatch.setenv("QUERYLIFT_LOG_FORMAT", "json")
    monkeypatch.setenv("QUERYLIFT_ADAPTER_STORE", str(tmp_path / "adapters"))
    monkeypatch.setenv("QUERYLIFT_QDRANT_PATH", str(tmp_path / "qdrant"))  # not the checkout's
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        result = CliRunner().invoke(cli, ["serve"])
        assert result.exit_code == 0, result.output
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    assert isinstance(seen["formatter"], logs.JsonFormatter)
    assert seen["config"].log_config is None and seen["config"].access_log is False


# -- rate limit --------------------------------------------------------------------------------
def test_token_bucket_burst_refill_and_retry_after():
    clock = Clock()
    lim = TokenBucketLimiter(rate=2.0, burst=3, clock=clock)
    assert [lim.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.acquire("a") == pytest.approx(0.5)  # one token per 0.5 s
    assert lim.acquire("b") == 0.0  # buckets are per key
    clock.t += 0.25
    assert lim.acquire("a") == pytest.approx(0.25)  # refused requests spend nothing
    clock.t += 0.25
    assert lim.acquire("a") == 0.0
    clock.t += 100
    assert [lim.acquire("a") for _ in range(4)][-1] > 0  # refills only up to the burst


def test_token_bucket_limits_and_overrides():
    clock = Clock()
    off = TokenBucketLimiter(rate=0.0, clock=clock)
    assert all(off.acquire("a") == 0.0 for _ in range(1000))
    assert off.acquire("a", rate=1.0) == 0.0 and off.acquire("a", rate=1.0) == 1.0
    lim = TokenBucketLimiter(rate=10.0, burst=50, clock=clock)
    assert lim.limits(None, None) == (10.0, 50.0)
    assert lim.limits(0.5, None) == (0.5, 1.0)  # its own rate: one second's worth, >= 1
    assert lim.limits(100.0, None) == (100.0, 100.0)
    assert lim.limits(None, 5) == (10.0, 5.0)
    assert lim.limits(0.0, None)[0] == 0.0


def test_token_bucket_is_thread_safe():
    clock = Clock()
    lim = TokenBucketLimiter(rate=1.0, burst=100, clock=clock)
    admitted: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(50):
            ok = lim.acquire("t") == 0.0
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100 and len(admitted) == 400


def test_rate_limit_over_http(
    make_client: Callable[..., TestClient], tenants_file: Path, tmp_path: Path
):
    data = json.loads(tenants_file.read_text())
    for t in data["tenants"]:
        if t["name"] == "initech":
            t["rate_limit_rps"] = 0  # unlimited, whatever the default
    path = tmp_path / "limited.json"
    path.write_text(json.dumps(data))
    c = make_client(tenants_file=path, rate_limit_rps=0.001, rate_limit_burst=3)
    h = auth("acme")
    assert c.post("/embed", json={"input": "x"}, headers=h).status_code == 200
    assert c.post("/v1/embeddings", json={"input": "x"}, headers=h).status_code == 200
    assert c.post("/search", json={"query": "x"}, headers=h).status_code == 200
    for path_, body in (("/embed", {"input": "x"}), ("/search", {"query": "x"})):
        r = c.post(path_, json=body, headers=h)
        err = assert_error(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1 and err["details"]["retry_after_s"] > 0
        assert "acme" in err["message"] and r.headers["x-request-id"]
    # not before auth, and per tenant
    assert_error(c.post("/embed", json={"input": "x"}), 401, "unauthorized")
    assert c.post("/embed", json={"input": "x"}, headers=auth("globex")).status_code == 200
    assert all(
        c.post("/embed", json={"input": "x"}, headers=auth("initech")).status_code == 200
        for _ in range(5)
    )
    assert c.get("/healthz").status_code == 200
    text = c.get("/metrics").text
    assert 'querylift_rate_limited_total{tenant="acme"} 2.0' in text
    assert 'querylift_rate_limited_total{tenant="globex"}' not in text


def test_rate_limit_is_off_by_default(client: TestClient):
    assert Settings().rate_limit_rps == 0
    assert all(
        client.get("/healthz").status_code == 200
        and client.post("/embed", json={"input": "x"}, headers=auth("acme")).status_code == 200
        for _ in range(30)
    )


def test_tenant_rate_limit_fields_are_validated():
    assert Tenant(name="a", rate_limit_rps=2.5, rate_limit_burst=5).rate_limit_burst == 5
    for bad in ({"rate_limit_rps": -1}, {"rate_limit_burst": 0}, {"rate_limit_rps": "inf"}):
        with pytest.raises(ValueError):
            Tenant(name="a", **bad)


# -- CORS --------------------------------------------------------------------------------------
ORIGIN = "https://app.example.com"


def test_cors_is_off_by_default(client: TestClient):
    r = client.post("/embed", json={"input": "x"}, headers={**auth("acme"), "Origin": ORIGIN})
    assert r.status_code == 200
    assert not [k for k in r.headers if k.lower().startswith("access-control-")]
    pre = client.options(
        "/embed", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert pre.status_code == 405
    assert not [k for k in pre.headers if k.lower().startswith("access-control-")]


def test_cors_when_origins_are_configured(make_client: Callable[..., TestClient]):
    c = make_client(cors_origins=[ORIGIN])
    r = c.post("/embed", json={"input": "x"}, headers={**auth("acme"), "Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    pre = c.options(
        "/embed",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    other = c.post(
        "/embed", json={"input": "x"}, headers={**auth("acme"), "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    # an error answer carries them too, so a browser app can read it
    e = c.post("/embed", json={"input": []}, headers={**auth("acme"), "Origin": ORIGIN})
    assert e.status_code == 422 and e.headers["access-control-allow-origin"] == ORIGIN


def test_upstream_secrets_never_show_in_a_repr_or_dump() -> None:
    """The Qdrant API key and the openai_http upstream key are SecretStr: settings and encoder
    specs get logged and dumped (manifests, /admin), the keys must not come with them."""
    from encoders import EncoderSpec
    from service.ops.settings import Settings

    spec = EncoderSpec(name="up", path="tok", backend="openai_http", api_key="sk-upstream-123")
    settings = Settings(qdrant_api_key="qdrant-secret-456")
    for text in (repr(spec), spec.model_dump_json(), repr(settings), settings.model_dump_json()):
        assert "sk-upstream-123" not in text and "qdrant-secret-456" not in text
    assert spec.api_key is not None and spec.api_key.get_secret_value() == "sk-upstream-123"
    assert settings.qdrant_api_key is not None
    assert settings.qdrant_api_key.get_secret_value() == "qdrant-secret-456"
