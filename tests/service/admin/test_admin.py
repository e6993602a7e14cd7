"""The admin API (DESIGN.md 2a): auth, uploads, validated activation, rollback, audit, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from safetensors.numpy import save as st_save
from typer.testing import CliRunner

from adapters import ModelInfo
from adapters.store import AdapterStore
from encoders import Encoder
from querylift.cli import app as cli
from service.admin import adapters as admin_module
from service.bindings.tenants import hash_key
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import (
    ADMIN,
    admin_headers,
    assert_error,
    auth,
    docs_tenants,
    embeddings,
    fake_encoder,
    make_linear,
    metric,
    write_tenants,
)
from tests.live import serve
from tests.service.admin.test_admin_auth_routes import admin_calls

TEXTS = ["what causes malaria", "the heart of mice"]


def upload(client: TestClient, ckpt: tuple[bytes, bytes], actor: str | None = None):
    tensors, manifest = ckpt
    files = {
        "adapter.safetensors": ("adapter.safetensors", tensors, "application/octet-stream"),
        "manifest.json": ("manifest.json", manifest, "application/json"),
    }
    return client.post("/admin/adapters", files=files, headers=admin_headers(actor))


def embed_ref(client: TestClient, tenant: str = "acme") -> dict | None:
    r = client.post("/embed", json={"input": TEXTS}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r.json()["adapter"]


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    """conftest's tenants (collection `docs`) plus `umbrella` on a collection indexed with
    another document model and `hooli` on a collection of 8-d vectors."""
    return write_tenants(
        tmp_path / "tenants.json",
        [
            *docs_tenants(),
            {
                "name": "umbrella",
                "api_keys_sha256": [hash_key("key-umbrella")],
                "collection": "legacy",
            },
            {"name": "hooli", "api_keys_sha256": [hash_key("key-hooli")], "collection": "small"},
        ],
    )


@pytest.fixture
def make_admin_app(
    make_app: Callable[..., FastAPI],
    gateway: QdrantGateway,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
) -> Callable[..., FastAPI]:
    """`make_app`, with collections `legacy` (another document model) and `small` (8-d)."""
    gateway.ensure_collection(
        "legacy", document_encoder.dim, "tenant", {"querylift": {"document_model": "other"}}
    )
    gateway.ensure_collection("small", 8, "tenant", {"querylift": {"document_model": "tiny-bert"}})
    return make_app


@pytest.fixture
def admin_client(
    admin_settings: Settings, make_admin_app: Callable[..., FastAPI]
) -> Iterator[TestClient]:
    with TestClient(make_admin_app(admin_settings), raise_server_exceptions=False) as c:
        yield c


# -- auth --------------------------------------------------------------------------------------
# Every /admin route without the token (401) or with the admin API off (404) is walked from the
# app's routes in test_admin_auth_routes.py; what it does not try is checked here.
def test_admin_api_off_says_so_and_how_to_turn_it_on(client: TestClient):
    r = client.get("/admin/adapters", headers=admin_headers())
    err = assert_error(r, 404, "not_found")
    assert "QUERYLIFT_ADMIN_TOKEN" in err["message"] and "off" in err["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {ADMIN[:-1]}"},  # a prefix of the token
        {"X-Querylift-Actor": "mallory"},  # naming an actor is no credential
        {},
    ],
    ids=["token-prefix", "actor-only", "no-token"],
)
def test_a_token_prefix_or_an_actor_alone_is_401_and_an_upload_is_refused(
    admin_client: TestClient,
    headers: dict,
    adapters_bound: dict[str, str],
    audit_lines,
):
    calls = admin_calls(admin_client.app, adapters_bound["acme"])
    assert len(calls) >= 15, calls
    for method, path in calls:
        r = admin_client.request(method, path, json={"adapter_id": None}, headers=headers)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer", (method, path)
    # a multipart upload too (the walk sends JSON or nothing)
    r = admin_client.post(
        "/admin/adapters",
        files={"adapter.safetensors": b"x", "manifest.json": b"{}"},
        headers=headers,
    )
    assert_error(r, 401, "unauthorized")
    assert embed_ref(admin_client) == {"id": adapters_bound["acme"], "version": 1}
    assert audit_lines() == []


def test_admin_token_is_not_a_tenant_key(admin_client: TestClient):
    r = admin_client.post("/embed", json={"input": "x"}, headers=admin_headers())
    assert_error(r, 401, "unauthorized")


def test_a_tenant_cannot_pick_an_adapter(admin_client: TestClient, adapters_bound: dict):
    r = admin_client.post(
        "/embed", json={"input": "x", "adapter_id": adapters_bound["globex"]}, headers=auth("acme")
    )
    assert_error(r, 422, "invalid_request")


# -- upload, list, get, delete ---------------------------------------------------------------
def test_upload_is_idempotent(
    admin_client: TestClient, query_encoder: Encoder, document_encoder: Encoder
):
    ckpt = make_linear(query_encoder, document_encoder, 5)
    first = upload(admin_client, ckpt)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["created"] is True
    assert body["manifest"]["kind"] == "linear"
    assert body["manifest"]["tensors_sha256"]
    again = upload(admin_client, ckpt)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == body["id"] and again.json()["created"] is False


def test_upload_refuses_bad_requests(
    admin_client: TestClient, monkeypatch, query_encoder, document_encoder
):
    r = admin_client.post("/admin/adapters", json={"x": 1}, headers=admin_headers())
    assert_error(r, 415, "unsupported_media_type")
    tensors, manifest = make_linear(query_encoder, document_encoder, 5)
    r = admin_client.post(
        "/admin/adapters",
        files={"adapter.safetensors": ("a", tensors, "application/octet-stream")},
        headers=admin_headers(),
    )
    assert assert_error(r, 422, "invalid_request")["details"] == {"missing": ["manifest.json"]}
    monkeypatch.setattr(admin_module, "MAX_MANIFEST_BYTES", 64)
    assert_error(upload(admin_client, (tensors, manifest)), 413, "payload_too_large")
    monkeypatch.setattr(admin_module, "MAX_MANIFEST_BYTES", 1 << 20)
    monkeypatch.setattr(admin_module, "MAX_TENSOR_BYTES", 100)
    assert_error(upload(admin_client, (tensors, manifest)), 413, "payload_too_large")
    # the whole body over the caps: refused from Content-Length, or while streaming (chunked)
    monkeypatch.setattr(admin_module, "MAX_MANIFEST_BYTES", 100)
    monkeypatch.setattr(admin_module, "_MULTIPART_OVERHEAD", 100)
    assert_error(upload(admin_client, (tensors, manifest)), 413, "payload_too_large")
    body = b"--b\r\n" + b"x" * 10_000
    r = admin_client.post(
        "/admin/adapters",
        content=iter([body[:5000], body[5000:]]),
        headers={**admin_headers(), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(r, 413, "payload_too_large")
    r = admin_client.post(
        "/admin/adapters",
        content=b"garbage",
        headers={**admin_headers(), "Content-Type": "multipart/form-data"},
    )
    assert_error(r, 400, "invalid_multipart")


def test_list_get_and_delete(
    admin_client: TestClient,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    spare = upload(admin_client, make_linear(query_encoder, document_encoder, 8)).json()["id"]
    listed = admin_client.get("/admin/adapters", headers=admin_headers())
    assert listed.status_code == 200, listed.text
    rows = {a["id"]: a for a in listed.json()["adapters"]}
    assert set(rows) == {adapters_bound["acme"], adapters_bound["globex"], spare}
    acme = rows[adapters_bound["acme"]]
    assert acme["active_for"] == ["acme"] and rows[spare]["active_for"] == []
    assert acme["kind"] == "linear" and acme["name"] == "random-0"
    assert (acme["in_dim"], acme["out_dim"]) == (query_encoder.dim, document_encoder.dim)
    assert acme["query_model"] == query_encoder.name
    assert acme["document_model"] == document_encoder.name
    assert acme["created_at"]

    got = admin_client.get(f"/admin/adapters/{adapters_bound['acme']}", headers=admin_headers())
    assert got.status_code == 200, got.text
    assert got.json()["manifest"]["in_dim"] == query_encoder.dim
    assert got.json()["active_for"] == ["acme"]
    assert_error(
        admin_client.get("/admin/adapters/nope", headers=admin_headers()), 404, "adapter_not_found"
    )
    assert_error(
        admin_client.get("/admin/adapters/.upload-x", headers=admin_headers()),
        404,
        "adapter_not_found",
    )

    # in use: refused; after deactivation: deleted
    err = assert_error(
        admin_client.delete(f"/admin/adapters/{adapters_bound['acme']}", headers=admin_headers()),
        409,
        "adapter_in_use",
    )
    assert err["details"]["active_for"] == ["acme"]
    r = admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": None}, headers=admin_headers()
    )
    assert r.status_code == 200, r.text
    r = admin_client.delete(f"/admin/adapters/{adapters_bound['acme']}", headers=admin_headers())
    assert r.status_code == 204, r.text
    assert_error(
        admin_client.get(f"/admin/adapters/{adapters_bound['acme']}", headers=admin_headers()),
        404,
        "adapter_not_found",
    )
    assert_error(
        admin_client.delete(f"/admin/adapters/{adapters_bound['acme']}", headers=admin_headers()),
        404,
        "adapter_not_found",
    )
    ids = {
        a["id"]
        for a in admin_client.get("/admin/adapters", headers=admin_headers()).json()["adapters"]
    }
    assert ids == {adapters_bound["globex"], spare}


# -- activation --------------------------------------------------------------------------------
def test_activation_swaps_what_embed_returns(
    admin_client: TestClient,
    store: AdapterStore,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    new = upload(admin_client, make_linear(query_encoder, document_encoder, 7)).json()["id"]
    before = admin_client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
    r = admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=admin_headers()
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenant": "acme",
        "active": {"adapter_id": new, "version": 2},
        "previous": {"adapter_id": adapters_bound["acme"], "version": 1},
        "served": {"adapter_id": new, "version": 2},
    }
    after = admin_client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
    assert after["adapter"] == {"id": new, "version": 2}
    raw = query_encoder.encode(TEXTS, "query").vectors
    np.testing.assert_allclose(embeddings(after), store.get(new).apply(raw), atol=1e-5)
    assert not np.allclose(embeddings(after), embeddings(before), atol=1e-3)
    # the other tenants are untouched
    assert embed_ref(admin_client, "globex") == {"id": adapters_bound["globex"], "version": 1}

    # null: the document encoder's own vectors
    r = admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": None}, headers=admin_headers()
    )
    assert r.status_code == 200, r.text
    assert r.json()["active"] == {"adapter_id": None, "version": 3}
    plain = admin_client.post("/embed", json={"input": TEXTS}, headers=auth("acme")).json()
    assert plain["adapter"] is None
    np.testing.assert_allclose(
        embeddings(plain), document_encoder.encode(TEXTS, "query").vectors, atol=1e-6
    )


def test_activation_request_errors(admin_client: TestClient, adapters_bound: dict[str, str]):
    aid = adapters_bound["globex"]
    put = admin_client.put
    assert_error(
        put(
            "/admin/tenants/acme/adapter", json={"adapter_id": aid, "x": 1}, headers=admin_headers()
        ),
        422,
        "invalid_request",
    )
    assert_error(
        put("/admin/tenants/acme/adapter", json={}, headers=admin_headers()), 422, "invalid_request"
    )
    assert_error(
        put("/admin/tenants/nobody/adapter", json={"adapter_id": aid}, headers=admin_headers()),
        404,
        "tenant_not_found",
    )
    assert_error(
        put("/admin/tenants/acme/adapter", json={"adapter_id": "f" * 24}, headers=admin_headers()),
        404,
        "adapter_not_found",
    )
    assert_error(
        admin_client.get("/admin/tenants/nobody", headers=admin_headers()), 404, "tenant_not_found"
    )
    assert embed_ref(admin_client) == {"id": adapters_bound["acme"], "version": 1}


def _nan_checkpoint(query_encoder: Encoder, document_encoder: Encoder) -> tuple[bytes, bytes]:
    _, manifest = make_linear(query_encoder, document_encoder, 30)
    w = np.ones((document_encoder.dim, query_encoder.dim), dtype=np.float32)
    w[0, 0] = np.nan
    raw = st_save({"weight": w, "bias": np.zeros(document_encoder.dim, dtype=np.float32)})
    m = json.loads(manifest)
    m["tensors_sha256"] = ""
    return raw, json.dumps(m).encode()


def _tampered(query_encoder: Encoder, document_encoder: Encoder) -> tuple[bytes, bytes]:
    _, manifest = make_linear(query_encoder, document_encoder, 31)
    other, _ = make_linear(query_encoder, document_encoder, 32)
    return other, manifest


def _missing_fields(query_encoder: Encoder, document_encoder: Encoder) -> tuple[bytes, bytes]:
    tensors, manifest = make_linear(query_encoder, document_encoder, 33)
    m = json.loads(manifest)
    del m["in_dim"], m["query_model"]
    return tensors, json.dumps(m).encode()


# (case, checkpoint builder, refused at, substrings every one of which is in some reason)
INCOMPATIBLE = [
    (
        "wrong in_dim",
        lambda q, d: make_linear(fake_encoder(q.name, q.dim + 4), d, 11),
        "activation",
        ["in_dim"],
    ),
    (
        "wrong out_dim",
        lambda q, d: make_linear(q, fake_encoder(d.name, d.dim + 4), 12),
        "activation",
        ["document encoder dim", "collection 'docs' vector size"],
    ),
    (
        "other query model",
        lambda q, d: make_linear(fake_encoder("other-qwen", q.dim), d, 13),
        "activation",
        ["query model 'other-qwen'"],
    ),
    (
        "other document model",
        lambda q, d: make_linear(q, fake_encoder("other-bert", d.dim), 14),
        "activation",
        ["document model 'other-bert'", "was indexed with 'tiny-bert'"],
    ),
    (
        "other prompt template",
        lambda q, d: make_linear(
            q, d, 15, query_model=ModelInfo(name=q.name, dim=q.dim, prompt_template="q: {text}")
        ),
        "activation",
        ["prompt template"],
    ),
    ("nan weights", _nan_checkpoint, "upload", ["non-finite"]),
    ("tampered tensor file", _tampered, "upload", ["tensors_sha256 mismatch"]),
    ("manifest missing fields", _missing_fields, "upload", ["in_dim", "query_model"]),
]


@pytest.mark.parametrize(
    ("case", "build", "stage", "expected"), INCOMPATIBLE, ids=[c[0] for c in INCOMPATIBLE]
)
def test_incompatible_checkpoints_are_refused_with_every_reason(
    admin_client: TestClient,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
    audit_lines,
    case,
    build,
    stage,
    expected,
):
    ckpt = build(query_encoder, document_encoder)
    up = upload(admin_client, ckpt)
    if stage == "upload":
        err = assert_error(up, 422, "invalid_checkpoint")
    else:
        assert up.status_code == 201, up.text
        new = up.json()["id"]
        r = admin_client.put(
            "/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=admin_headers()
        )
        err = assert_error(r, 422, "adapter_incompatible")
        assert err["details"]["adapter_id"] == new
    reasons = err["details"]["reasons"]
    for s in expected:
        assert any(s in reason for reason in reasons), (s, reasons)
    assert len(reasons) >= len(expected)
    # nothing changed: the previous adapter keeps serving, the store binding is as it was
    assert embed_ref(admin_client) == {"id": adapters_bound["acme"], "version": 1}
    t = admin_client.get("/admin/tenants/acme", headers=admin_headers()).json()
    assert t["active"]["version"] == 1 and len(t["history"]) == 1
    text = admin_client.get("/metrics").text
    assert metric(text, "querylift_adapter_validation_failures_total", stage=stage) == 1.0
    refused = [e for e in audit_lines() if e["outcome"] == "refused"]
    assert len(refused) == 1 and refused[0]["reasons"] == reasons


def test_collection_of_another_model_or_size_is_refused(
    admin_client: TestClient, query_encoder: Encoder, document_encoder: Encoder
):
    good = upload(admin_client, make_linear(query_encoder, document_encoder, 20)).json()["id"]
    r = admin_client.put(
        "/admin/tenants/umbrella/adapter", json={"adapter_id": good}, headers=admin_headers()
    )
    reasons = assert_error(r, 422, "adapter_incompatible")["details"]["reasons"]
    assert reasons == [
        f"collection 'legacy' was indexed with 'other', not '{document_encoder.name}'"
    ]
    r = admin_client.put(
        "/admin/tenants/hooli/adapter", json={"adapter_id": good}, headers=admin_headers()
    )
    reasons = assert_error(r, 422, "adapter_incompatible")["details"]["reasons"]
    assert reasons == [f"out_dim {document_encoder.dim} != collection 'small' vector size 8"]
    for tenant in ("umbrella", "hooli"):
        t = admin_client.get(f"/admin/tenants/{tenant}", headers=admin_headers()).json()
        assert t["active"] is None and t["history"] == []
    # the same adapter fits acme's collection
    r = admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": good}, headers=admin_headers()
    )
    assert r.status_code == 200, r.text


def test_adapter_damaged_on_disk_after_upload_is_refused(
    admin_client: TestClient,
    store: AdapterStore,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    new = upload(admin_client, make_linear(query_encoder, document_encoder, 21)).json()["id"]
    nan_tensors, _ = _nan_checkpoint(query_encoder, document_encoder)
    (store.root / "adapters" / new / "adapter.safetensors").write_bytes(nan_tensors)
    r = admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=admin_headers()
    )
    reasons = assert_error(r, 422, "invalid_checkpoint")["details"]["reasons"]
    assert any("non-finite" in x for x in reasons)
    assert any("tensors_sha256 mismatch" in x for x in reasons)
    assert embed_ref(admin_client) == {"id": adapters_bound["acme"], "version": 1}


# -- rollback ----------------------------------------------------------------------------------
def test_rollback_returns_to_the_previous_version(
    admin_client: TestClient,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    orig = adapters_bound["acme"]
    new = upload(admin_client, make_linear(query_encoder, document_encoder, 7)).json()["id"]
    r = admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=admin_headers("alice")
    )
    assert r.status_code == 200, r.text
    r = admin_client.post("/admin/tenants/acme/rollback", headers=admin_headers("bob"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "tenant": "acme",
        "active": {"adapter_id": orig, "version": 3},
        "previous": {"adapter_id": new, "version": 2},
        "served": {"adapter_id": orig, "version": 3},
    }
    assert embed_ref(admin_client) == {"id": orig, "version": 3}
    r = admin_client.post("/admin/tenants/acme/rollback", headers=admin_headers())
    assert r.json()["active"] == {"adapter_id": new, "version": 4}
    assert embed_ref(admin_client) == {"id": new, "version": 4}

    t = admin_client.get("/admin/tenants/acme", headers=admin_headers())
    assert t.status_code == 200, t.text
    body = t.json()
    assert body["tenant"] == "acme" and body["collection"] == "docs"
    assert body["served"] == {"adapter_id": new, "version": 4}
    assert body["active"]["adapter_id"] == new and body["active"]["version"] == 4
    assert [(e["adapter_id"], e["version"], e["actor"]) for e in body["history"]] == [
        (orig, 1, None),
        (new, 2, "alice"),
        (orig, 3, "bob"),
        (new, 4, "admin"),
    ]
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in body["history"])

    # a tenant that never had two versions: nothing to roll back
    err = assert_error(
        admin_client.post("/admin/tenants/initech/rollback", headers=admin_headers()),
        409,
        "nothing_to_roll_back",
    )
    assert err["details"]["reasons"]
    assert_error(
        admin_client.post("/admin/tenants/nobody/rollback", headers=admin_headers()),
        404,
        "tenant_not_found",
    )
    t = admin_client.get("/admin/tenants/initech", headers=admin_headers()).json()
    assert t["active"] is None and t["served"] == {"adapter_id": None, "version": 0}


def test_rollback_revalidates_the_previous_adapter(
    admin_client: TestClient,
    store: AdapterStore,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    orig = adapters_bound["acme"]
    new = upload(admin_client, make_linear(query_encoder, document_encoder, 7)).json()["id"]
    admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=admin_headers()
    )
    nan_tensors, _ = _nan_checkpoint(query_encoder, document_encoder)
    (store.root / "adapters" / orig / "adapter.safetensors").write_bytes(nan_tensors)
    r = admin_client.post("/admin/tenants/acme/rollback", headers=admin_headers())
    err = assert_error(r, 422, "invalid_checkpoint")
    assert err["details"]["adapter_id"] == orig
    assert any("non-finite" in x for x in err["details"]["reasons"])
    assert embed_ref(admin_client) == {"id": new, "version": 2}
    assert (
        admin_client.get("/admin/tenants/acme", headers=admin_headers()).json()["active"]["version"]
        == 2
    )


# -- audit and metrics -------------------------------------------------------------------------
def test_every_admin_action_is_one_audit_line(
    admin_client: TestClient,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
    audit_lines,
):
    orig = adapters_bound["acme"]
    new = upload(admin_client, make_linear(query_encoder, document_encoder, 7), "alice").json()
    new = new["id"]
    upload(admin_client, _nan_checkpoint(query_encoder, document_encoder), "alice")
    bad = upload(
        admin_client, make_linear(fake_encoder("other", query_encoder.dim), document_encoder, 9)
    )
    bad = bad.json()["id"]  # (actor: default)
    h = admin_headers("alice")
    admin_client.put("/admin/tenants/acme/adapter", json={"adapter_id": bad}, headers=h)
    admin_client.put("/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=h)
    admin_client.post("/admin/tenants/acme/rollback", headers=h)
    admin_client.delete(f"/admin/adapters/{orig}", headers=h)
    admin_client.delete(f"/admin/adapters/{bad}", headers=h)
    admin_client.get("/admin/adapters", headers=h)  # reads are not audited
    admin_client.get("/admin/tenants/acme", headers=h)

    lines = audit_lines()
    keys = {"at", "actor", "action", "tenant", "adapter_id", "before", "after", "outcome"}
    assert all(set(e) == keys | {"reasons"} for e in lines)
    summary = [(e["actor"], e["action"], e["outcome"], e["adapter_id"]) for e in lines]
    assert summary == [
        ("alice", "upload", "ok", new),
        ("alice", "upload", "refused", None),
        ("admin", "upload", "ok", bad),
        ("alice", "activate", "refused", bad),
        ("alice", "activate", "ok", new),
        ("alice", "rollback", "ok", orig),
        ("alice", "delete", "refused", orig),
        ("alice", "delete", "ok", bad),
    ]
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in lines)
    assert all(e["reasons"] for e in lines if e["outcome"] == "refused")
    assert all(e["reasons"] == [] for e in lines if e["outcome"] == "ok")
    activate = lines[4]
    assert activate["tenant"] == "acme"
    assert activate["before"] == {"adapter_id": orig, "version": 1}
    assert activate["after"] == {"adapter_id": new, "version": 2}
    refused = lines[3]
    assert refused["before"] == refused["after"] == {"adapter_id": orig, "version": 1}
    assert any("query model 'other'" in r for r in refused["reasons"])
    assert lines[5]["before"] == {"adapter_id": new, "version": 2}
    assert lines[5]["after"] == {"adapter_id": orig, "version": 3}
    assert lines[7]["before"] == {"adapter_id": bad} and lines[7]["after"] is None


def test_audit_log_defaults_to_the_adapter_store(
    settings: Settings, store: AdapterStore, make_admin_app, query_encoder, document_encoder
):
    s = settings.model_copy(update={"admin_token": SecretStr(ADMIN)})
    assert s.audit_log is None
    with TestClient(make_admin_app(s)) as c:
        r = upload(c, make_linear(query_encoder, document_encoder, 40))
        assert r.status_code == 201, r.text
    (line,) = (store.root / "audit.log").read_text().splitlines()
    entry = json.loads(line)
    assert entry["action"] == "upload" and entry["actor"] == "admin"
    assert entry["adapter_id"] == r.json()["id"]


def test_metrics_count_swaps_and_failed_validations(
    admin_client: TestClient,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
):
    swaps = "querylift_adapter_swaps_total"
    failures = "querylift_adapter_validation_failures_total"
    before = metric(admin_client.get("/metrics").text, swaps, tenant="acme")
    new = upload(admin_client, make_linear(query_encoder, document_encoder, 7)).json()["id"]
    bad = upload(
        admin_client, make_linear(query_encoder, fake_encoder("other", document_encoder.dim), 8)
    ).json()["id"]
    upload(admin_client, _nan_checkpoint(query_encoder, document_encoder))
    admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": bad}, headers=admin_headers()
    )
    admin_client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": new}, headers=admin_headers()
    )
    text = admin_client.get("/metrics").text
    assert metric(text, swaps, tenant="acme") == before + 1
    assert metric(text, failures, stage="activation") == 1.0
    assert metric(text, failures, stage="upload") == 1.0
    info = "querylift_adapter_active_info"
    assert metric(text, info, tenant="acme", adapter_id=new, version="2") == 1.0
    assert f'{info}{{adapter_id="{adapters_bound["acme"]}",tenant="acme"' not in text
    admin_client.post("/admin/tenants/acme/rollback", headers=admin_headers())
    text = admin_client.get("/metrics").text
    assert metric(text, swaps, tenant="acme") == before + 2
    assert metric(text, info, tenant="acme", adapter_id=adapters_bound["acme"], version="3") == 1


# -- the `querylift adapters` CLI against a live server ----------------------------------------
def test_cli_against_a_live_server(
    admin_settings: Settings,
    make_admin_app,
    adapters_bound: dict[str, str],
    query_encoder: Encoder,
    document_encoder: Encoder,
    tmp_path: Path,
    monkeypatch,
):
    monkeypatch.delenv("QUERYLIFT_URL", raising=False)
    monkeypatch.delenv("QUERYLIFT_ADMIN_TOKEN", raising=False)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    tensors, manifest = make_linear(query_encoder, document_encoder, 50)
    (ckpt / "adapter.safetensors").write_bytes(tensors)
    (ckpt / "manifest.json").write_bytes(manifest)
    bad = tmp_path / "bad"
    bad.mkdir()
    tensors, manifest = make_linear(
        fake_encoder("other-qwen", query_encoder.dim), document_encoder, 51
    )
    (bad / "adapter.safetensors").write_bytes(tensors)
    (bad / "manifest.json").write_bytes(manifest)
    runner = CliRunner()
    orig = adapters_bound["acme"]

    with serve(make_admin_app(admin_settings)) as url:

        def run(*args: str, code: int = 0, token: str = ADMIN):
            result = runner.invoke(
                cli, ["adapters", *args, "--url", url, "--token", token, *actor(args[0])]
            )
            assert result.exit_code == code, (args, result.output)
            return result

        def actor(command: str) -> list[str]:
            return ["--actor", "carol"] if command in ("upload", "activate", "rollback") else []

        listed = json.loads(run("list").stdout)
        assert {a["id"] for a in listed["adapters"]} == set(adapters_bound.values())

        up = json.loads(run("upload", str(ckpt)).stdout)
        assert up["created"] is True
        new = up["id"]

        act = json.loads(run("activate", "acme", new).stdout)
        assert act["active"] == {"adapter_id": new, "version": 2}

        shown = json.loads(run("show", "acme").stdout)
        assert shown["active"]["adapter_id"] == new and shown["active"]["actor"] == "carol"
        assert shown["served"] == {"adapter_id": new, "version": 2}

        rb = json.loads(run("rollback", "acme").stdout)
        assert rb["active"] == {"adapter_id": orig, "version": 3}

        # refusals: the message and every reason on stderr, exit status 1
        other = json.loads(run("upload", str(bad)).stdout)["id"]
        refused = run("activate", "acme", other, code=1)
        assert "adapter_incompatible" in refused.stderr
        assert "query model 'other-qwen'" in refused.stderr
        assert "404 adapter_not_found" in run("activate", "acme", "f" * 24, code=1).stderr
        assert "nothing_to_roll_back" in run("rollback", "initech", code=1).stderr
        assert "401 unauthorized" in run("list", code=1, token="wrong").stderr

        off = json.loads(run("activate", "acme", "--none").stdout)
        assert off["active"] == {"adapter_id": None, "version": 4}
        assert json.loads(run("show", "acme").stdout)["served"]["adapter_id"] is None
    no_token = runner.invoke(cli, ["adapters", "list", "--url", "http://127.0.0.1:9"])
    assert no_token.exit_code == 2 and "QUERYLIFT_ADMIN_TOKEN" in no_token.stderr
