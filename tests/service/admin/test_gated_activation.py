"""The quality gate through the admin API and the CLIs (issue 8, acceptance 3).

A synthetic corpus is indexed for tenant initech in the in-memory Qdrant; its validation set
asks for each document with a few of its own words, so the document encoder's own query
vectors (the baseline) find most of them, a random linear adapter finds almost none, and the
identity-initialised hybrid adapter reproduces the baseline exactly.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from adapters.store import AdapterStore
from encoders import Encoder
from querylift.cli import app as cli
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import (
    ADMIN,
    admin_headers,
    assert_error,
    auth,
    docs_tenants,
    index_docs,
    make_hybrid,
    make_linear,
    metric,
    write_tenants,
)
from tests.live import serve
from tests.tiny_models import WORDS
from training.data import Document

TENANT = "initech"  # no adapter bound: serves the document encoder's own vectors
ADMIN_ALICE = admin_headers("alice")  # the admin token; the actor the audit log records


def synthetic(n_docs: int = 48, seed: int = 0) -> tuple[list[Document], list[dict]]:
    """Random word-bag documents; each validation query is 5 words of its one relevant doc."""
    rng = random.Random(seed)
    words = [w for w in WORDS if len(w) > 2]
    docs = [Document(f"s{i}", " ".join(rng.sample(words, 12))) for i in range(n_docs)]
    pairs = [
        {"id": f"v{i}", "query": " ".join(rng.sample(d.text.split(), 5)), "positive_ids": [d.id]}
        for i, d in enumerate(docs)
    ]
    return docs, pairs


DOCS, PAIRS = synthetic()
JSONL = "".join(json.dumps(p) + "\n" for p in PAIRS).encode()


def upload(client: TestClient, ckpt: tuple[bytes, bytes]) -> str:
    tensors, manifest = ckpt
    files = {
        "adapter.safetensors": ("adapter.safetensors", tensors, "application/octet-stream"),
        "manifest.json": ("manifest.json", manifest, "application/json"),
    }
    r = client.post("/admin/adapters", files=files, headers=ADMIN_ALICE)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def embed_adapter(client: TestClient, tenant: str = TENANT) -> dict | None:
    r = client.post("/embed", json={"input": ["malaria mosquito"]}, headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r.json()["adapter"]


def activate(client: TestClient, adapter_id: str | None, **body: object):
    return client.put(
        f"/admin/tenants/{TENANT}/adapter",
        json={"adapter_id": adapter_id, **body},
        headers=ADMIN_ALICE,
    )


def refusals(client: TestClient, outcome: str) -> float:
    text = client.get("/metrics").text
    return metric(text, "querylift_gate_refusals_total", tenant=TENANT, outcome=outcome)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    """conftest's tenants (collection `docs`) plus `nocoll`, whose collection does not exist."""
    nocoll = {"name": "nocoll", "api_keys_sha256": [], "collection": "missing"}
    return write_tenants(tmp_path / "tenants.json", [*docs_tenants(), nocoll])


@pytest.fixture
def gate_settings(admin_settings: Settings) -> Settings:
    return admin_settings.model_copy(update={"gate_max_queries": 100, "gate_resamples": 1000})


@pytest.fixture
def gate_app(
    make_app: Callable[..., FastAPI],
    gateway: QdrantGateway,
    document_encoder: Encoder,
    adapters_bound: dict[str, str],
) -> Callable[..., FastAPI]:
    """`make_app`, with TENANT's synthetic corpus indexed."""
    index_docs(gateway, document_encoder, TENANT, DOCS)
    return make_app


@pytest.fixture
def client(gate_settings: Settings, gate_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(gate_app(gate_settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def bad(query_encoder: Encoder, document_encoder: Encoder) -> tuple[bytes, bytes]:
    """A random linear map: a different domain's (or a scrambling ridge) adapter stand-in."""
    return make_linear(query_encoder, document_encoder, 11)


@pytest.fixture
def good(query_encoder: Encoder, document_encoder: Encoder) -> tuple[bytes, bytes]:
    """The identity-initialised hybrid: exactly the document model's own quality."""
    return make_hybrid(query_encoder, document_encoder, None)


# -- validation sets ---------------------------------------------------------------------------
def test_validation_set_upload_get_delete(client: TestClient, audit_lines):
    r = client.put(f"/admin/tenants/{TENANT}/validation", content=JSONL, headers=ADMIN_ALICE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["validation"]["n_queries"] == len(PAIRS)
    assert body["found_ids"] == body["total_ids"] == len(DOCS)
    sha = body["validation"]["sha256"]
    # the same pairs as a JSON list: the same set, the same fingerprint
    again = client.put(f"/admin/tenants/{TENANT}/validation", json=PAIRS, headers=ADMIN_ALICE)
    assert again.status_code == 200 and again.json()["validation"]["sha256"] == sha

    got = client.get(f"/admin/tenants/{TENANT}/validation", headers=ADMIN_ALICE).json()
    assert got["validation"]["sha256"] == sha and got["validation"]["actor"] == "alice"
    assert got["pairs"][0] == {"id": "v0", "query": PAIRS[0]["query"], "positive_ids": ["s0"]}
    tenant = client.get(f"/admin/tenants/{TENANT}", headers=ADMIN_ALICE).json()
    assert tenant["validation"]["n_queries"] == len(PAIRS) and tenant["gate"] is None

    assert (
        client.delete(f"/admin/tenants/{TENANT}/validation", headers=ADMIN_ALICE).status_code == 204
    )
    assert_error(
        client.get(f"/admin/tenants/{TENANT}/validation", headers=ADMIN_ALICE),
        404,
        "validation_set_not_found",
    )
    assert_error(
        client.delete(f"/admin/tenants/{TENANT}/validation", headers=ADMIN_ALICE),
        404,
        "validation_set_not_found",
    )
    actions = [(e["action"], e["outcome"]) for e in audit_lines()]
    assert actions == [
        ("set_validation", "ok"),
        ("set_validation", "ok"),
        ("delete_validation", "ok"),
        ("delete_validation", "refused"),
    ]
    assert audit_lines()[1]["before"]["sha256"] == sha and audit_lines()[2]["after"] is None


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (
            b'{"query": "a", "positive_ids": ["s1"]}\nnot json\n',
            422,
            "invalid_validation_set",
            "line 2",
        ),
        (b'{"query": "a"}\n', 422, "invalid_validation_set", "positive_ids"),
        (b'{"query": "  ", "positive_ids": ["s1"]}\n', 422, "invalid_validation_set", "query"),
        (b'{"query": "a", "positive_ids": [true]}\n', 422, "invalid_validation_set", "line 1"),
        (b'[{"query": "a", "positive_ids": ["s1"]}, 3]', 422, "invalid_validation_set", "line 2"),
        (
            b'{"id": 1, "query": "a", "positive_ids": ["s1"]}\n'
            b'{"id": "1", "query": "b", "positive_ids": ["s2"]}\n',
            422,
            "invalid_validation_set",
            "duplicate query id",
        ),
        (b"", 422, "invalid_validation_set", "empty"),
        (b'{"query": "a", "positive_ids": ["nope"]}\n', 422, "validation_ids_unknown", "doc_id"),
        (
            b"".join(b'{"query": "a", "positive_ids": ["s1"]}\n' for _ in range(101)),
            413,
            "too_many_queries",
            "101",
        ),
    ],
)
def test_bad_validation_sets_are_refused_and_nothing_is_stored(
    client: TestClient, audit_lines, body: bytes, status: int, code: str, needle: str
):
    r = client.put(f"/admin/tenants/{TENANT}/validation", content=body, headers=ADMIN_ALICE)
    err = assert_error(r, status, code)
    assert needle in err["message"], err
    assert_error(
        client.get(f"/admin/tenants/{TENANT}/validation", headers=ADMIN_ALICE),
        404,
        "validation_set_not_found",
    )
    (line,) = audit_lines()
    assert line["action"] == "set_validation" and line["outcome"] == "refused"


def test_validation_routes_need_the_admin_token_and_a_known_tenant(client: TestClient):
    path = f"/admin/tenants/{TENANT}/validation"
    assert_error(client.put(path, content=JSONL, headers=auth(TENANT)), 401, "unauthorized")
    assert_error(client.get(path), 401, "unauthorized")
    r = client.put("/admin/tenants/nobody/validation", content=JSONL, headers=ADMIN_ALICE)
    assert_error(r, 404, "tenant_not_found")


# -- the gate on activation --------------------------------------------------------------------
def test_gate_refuses_a_bad_adapter_and_traffic_keeps_the_previous_one(
    client: TestClient, bad, audit_lines
):
    client.put(f"/admin/tenants/{TENANT}/validation", content=JSONL, headers=ADMIN_ALICE)
    bad_id = upload(client, bad)
    r = activate(client, bad_id)
    err = assert_error(r, 422, "quality_gate_failed")
    gate = err["details"]["gate"]
    assert gate["decision"] == "refuse" and gate["n_queries"] == len(PAIRS)
    assert gate["candidate_id"] == bad_id and gate["current_id"] is None
    assert gate["baseline_ndcg"] > 0.4  # the document model finds its own words
    assert gate["candidate_ndcg"] < gate["baseline_ndcg"] - 0.2
    vs = gate["vs_baseline"]
    assert vs["regression"] and vs["ci_high"] < 0 and vs["delta"] < -gate["threshold"]
    assert gate["threshold"] == 0.01 and gate["n_resamples"] == 1000
    assert err["details"]["reasons"] == gate["reasons"] and gate["reasons"]
    assert "document model alone" in err["message"]

    # nothing changed: traffic keeps the document encoder, the binding is untouched
    assert embed_adapter(client) is None
    tenant = client.get(f"/admin/tenants/{TENANT}", headers=ADMIN_ALICE).json()
    assert tenant["active"] is None and tenant["history"] == [] and tenant["gate"] is None
    record = tenant["gates"][bad_id]
    assert record["activated"] is False and record["forced"] is False
    assert record["report"]["vs_baseline"] == vs
    assert (
        client.get(f"/admin/adapters/{bad_id}", headers=ADMIN_ALICE).json()["gates"][TENANT][
            "report"
        ]["decision"]
        == "refuse"
    )

    line = audit_lines()[-1]
    assert (line["action"], line["outcome"], line["force"]) == ("activate", "refused", False)
    assert line["gate"]["vs_baseline"]["delta"] == vs["delta"]
    assert refusals(client, "blocked") == 1
    # the same data, the same decision (seeded bootstrap)
    again = assert_error(activate(client, bad_id), 422, "quality_gate_failed")["details"]["gate"]
    assert {k: v for k, v in again.items() if k != "at"} == {
        k: v for k, v in gate.items() if k != "at"
    }


def test_gate_accepts_a_good_adapter_and_shows_its_numbers(client: TestClient, good, bad):
    client.put(f"/admin/tenants/{TENANT}/validation", content=JSONL, headers=ADMIN_ALICE)
    good_id = upload(client, good)
    r = activate(client, good_id)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["active"] == {"adapter_id": good_id, "version": 1} and body["forced"] is False
    gate = body["gate"]
    assert gate["decision"] == "accept" and gate["reasons"] == []
    assert gate["vs_baseline"]["delta"] == pytest.approx(0.0, abs=1e-9)
    assert gate["candidate_ndcg"] == pytest.approx(gate["baseline_ndcg"], abs=1e-9)
    assert embed_adapter(client) == {"id": good_id, "version": 1}

    tenant = client.get(f"/admin/tenants/{TENANT}", headers=ADMIN_ALICE).json()
    assert tenant["gate"]["adapter_id"] == good_id and tenant["gate"]["activated"] is True
    assert tenant["gate"]["report"]["candidate_ndcg"] == gate["candidate_ndcg"]
    adapter = client.get(f"/admin/adapters/{good_id}", headers=ADMIN_ALICE).json()
    assert adapter["gates"][TENANT]["report"]["decision"] == "accept"

    # with a current adapter, the candidate is compared with it too
    bad_id = upload(client, bad)
    err = assert_error(activate(client, bad_id), 422, "quality_gate_failed")
    g = err["details"]["gate"]
    assert g["current_id"] == good_id and g["vs_current"]["regression"]
    assert g["current_ndcg"] == pytest.approx(gate["candidate_ndcg"])
    assert len(g["reasons"]) == 2 and embed_adapter(client) == {"id": good_id, "version": 1}


def test_force_activates_a_refused_adapter_and_the_audit_log_says_so(
    client: TestClient, bad, audit_lines
):
    client.put(f"/admin/tenants/{TENANT}/validation", content=JSONL, headers=ADMIN_ALICE)
    bad_id = upload(client, bad)
    r = activate(client, bad_id, force=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["forced"] is True and body["gate"]["decision"] == "refuse"
    assert embed_adapter(client) == {"id": bad_id, "version": 1}
    line = audit_lines()[-1]
    assert (line["action"], line["outcome"], line["force"]) == ("activate", "ok", True)
    assert line["gate"]["decision"] == "refuse" and line["gate"]["vs_baseline"]["regression"]
    assert line["after"] == {"adapter_id": bad_id, "version": 1}
    tenant = client.get(f"/admin/tenants/{TENANT}", headers=ADMIN_ALICE).json()
    assert tenant["gate"]["forced"] is True and tenant["gate"]["activated"] is True
    assert refusals(client, "forced") == 1
    # rollback is the way back and is not gated
    rb = client.post(f"/admin/tenants/{TENANT}/rollback", headers=ADMIN_ALICE)
    assert rb.status_code == 409  # nothing before it: initech had no adapter version
    off = activate(client, None)
    assert off.status_code == 200 and "gate" not in off.json()  # no adapter: nothing to gate
    assert client.post(f"/admin/tenants/{TENANT}/rollback", headers=ADMIN_ALICE).status_code == 200
    assert embed_adapter(client) == {"id": bad_id, "version": 3}


def test_no_validation_set_means_no_gate_and_an_inline_set_gates(client: TestClient, bad):
    bad_id = upload(client, bad)
    err = assert_error(activate(client, bad_id, validation=PAIRS[:40]), 422, "quality_gate_failed")
    assert err["details"]["gate"]["n_queries"] == 40
    assert_error(
        activate(client, bad_id, validation=[{"query": "x"}]), 422, "invalid_validation_set"
    )
    r = activate(client, bad_id)  # no stored set: the gate does not apply
    assert r.status_code == 200 and "gate" not in r.json() and "forced" not in r.json()


def test_gate_that_cannot_run_refuses_unless_forced(client: TestClient, good, audit_lines):
    r = client.put("/admin/tenants/nocoll/validation", content=JSONL, headers=ADMIN_ALICE)
    assert r.status_code == 200 and r.json()["found_ids"] is None  # no collection to check
    good_id = upload(client, good)
    path = "/admin/tenants/nocoll/adapter"
    err = assert_error(
        client.put(path, json={"adapter_id": good_id}, headers=ADMIN_ALICE),
        409,
        "gate_unavailable",
    )
    assert "missing" in err["message"]
    forced = client.put(path, json={"adapter_id": good_id, "force": True}, headers=ADMIN_ALICE)
    assert forced.status_code == 200 and forced.json()["forced"] is True
    assert audit_lines()[-1]["force"] is True and "gate_error" in audit_lines()[-1]


# -- the CLIs ----------------------------------------------------------------------------------
def test_admin_cli_sets_validation_and_forces(
    gate_settings: Settings, gate_app: Callable[..., FastAPI], bad, tmp_path: Path, monkeypatch
):
    monkeypatch.delenv("QUERYLIFT_URL", raising=False)
    monkeypatch.delenv("QUERYLIFT_ADMIN_TOKEN", raising=False)
    pairs = tmp_path / "val.jsonl"
    pairs.write_bytes(JSONL)
    ckpt = tmp_path / "bad"
    ckpt.mkdir()
    (ckpt / "adapter.safetensors").write_bytes(bad[0])
    (ckpt / "manifest.json").write_bytes(bad[1])
    runner = CliRunner()
    with serve(gate_app(gate_settings)) as url:

        def run(*args: str, code: int = 0):
            result = runner.invoke(cli, ["adapters", *args, "--url", url, "--token", ADMIN])
            assert result.exit_code == code, (args, result.output)
            return result

        out = json.loads(run("set-validation", TENANT, str(pairs)).stdout)
        assert out["validation"]["n_queries"] == len(PAIRS)
        shown = json.loads(run("get-validation", TENANT).stdout)
        assert len(shown["pairs"]) == len(PAIRS)
        bad_id = json.loads(run("upload", str(ckpt)).stdout)["id"]
        refused = run("activate", TENANT, bad_id, code=1)
        assert "quality_gate_failed" in refused.stderr and "below" in refused.stderr
        forced = json.loads(run("activate", TENANT, bad_id, "--force").stdout)
        assert forced["forced"] is True and forced["active"]["adapter_id"] == bad_id
        run("clear-validation", TENANT)
        assert "validation_set_not_found" in run("get-validation", TENANT, code=1).stderr


def test_eval_gate_exits_nonzero_on_a_bad_adapter(tmp_path: Path, cli_env, bad, good):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in DOCS))
    pairs = tmp_path / "val.jsonl"
    pairs.write_bytes(JSONL)
    ckpts = {}
    for name, (tensors, manifest) in (("bad", bad), ("good", good)):
        ckpts[name] = tmp_path / name
        ckpts[name].mkdir()
        (ckpts[name] / "adapter.safetensors").write_bytes(tensors)
        (ckpts[name] / "manifest.json").write_bytes(manifest)
    common = ["eval", str(pairs), "--corpus", str(corpus), "--cache", str(tmp_path / "cache")]
    runner = CliRunner()

    refused = runner.invoke(
        cli, [*common, "--gate", "--checkpoint", str(ckpts["bad"]), "--out", str(tmp_path / "o")]
    )
    assert refused.exit_code == 1, refused.output
    assert "gate: REFUSE" in refused.output and "| system | ndcg@10" in refused.output
    report = json.loads((tmp_path / "o" / "gate.json").read_text())
    assert report["decision"] == "refuse" and report["n_queries"] == len(PAIRS)
    assert report["vs_baseline"]["regression"] and report["vs_current"] is None
    # the manifest is never rewritten: its content is its id
    assert (ckpts["bad"] / "manifest.json").read_bytes() == bad[1]

    accepted = runner.invoke(
        cli,
        [*common, "--gate", "--checkpoint", str(ckpts["good"]), "--current", str(ckpts["bad"])],
    )
    assert accepted.exit_code == 0, accepted.output
    assert "gate: ACCEPT" in accepted.output and "current adapter" in accepted.output

    assert report["baseline_ndcg"] > 0.4 and report["candidate_ndcg"] < 0.3

    two = runner.invoke(
        cli,
        [*common, "--gate", "--checkpoint", str(ckpts["bad"]), "--checkpoint", str(ckpts["good"])],
    )
    assert two.exit_code == 2 and "exactly one --checkpoint" in two.output


def test_offline_and_service_gates_agree(
    client: TestClient,
    tmp_path: Path,
    bad,
    store: AdapterStore,
    cli_env: Callable[..., None],
):
    """The same validation set and adapter give the same per-system nDCG@10 both ways."""
    client.put(f"/admin/tenants/{TENANT}/validation", content=JSONL, headers=ADMIN_ALICE)
    bad_id = upload(client, bad)
    served = assert_error(activate(client, bad_id), 422, "quality_gate_failed")["details"]["gate"]

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in DOCS))
    pairs = tmp_path / "val.jsonl"
    pairs.write_bytes(JSONL)
    out = tmp_path / "o"
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(pairs),
            "--corpus",
            str(corpus),
            "--cache",
            str(tmp_path / "cache"),
            "--gate",
            "--checkpoint",
            str(store.root / "adapters" / bad_id),
            "--resamples",
            "1000",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1, result.output
    offline = json.loads((out / "gate.json").read_text())
    # offline searches the embedding cache's fp16 document vectors, the service Qdrant's
    # float32 ones: a near-tie may swap two ranks, nothing more
    for key in ("baseline_ndcg", "candidate_ndcg"):
        assert offline[key] == pytest.approx(served[key], abs=0.02), key
    assert offline["decision"] == served["decision"] == "refuse"
    assert offline["n_queries"] == served["n_queries"]
    np.testing.assert_allclose(
        [offline["vs_baseline"][k] for k in ("delta", "ci_low", "ci_high")],
        [served["vs_baseline"][k] for k in ("delta", "ci_low", "ci_high")],
        atol=0.02,
    )
