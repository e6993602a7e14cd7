"""The per-tenant query log (issue 18): opt-in, query texts only, bounded in size and age, one
store per tenant, exported and cleared through the audited admin API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.bindings.tenants import Tenant
from service.ops.query_log import QueryLog, held_out
from service.ops.settings import Settings
from tests.conftest import (
    KEYS,
    admin_headers,
    assert_error,
    auth,
    docs_tenants,
    write_tenants,
)
from tests.live import serve

DOC_MODEL = "tiny-bert-document"  # /v1/embeddings: a `-document` model name is the document path


def rows(**logging: bool | None) -> list[dict[str, Any]]:
    """The conftest tenants on collection `docs`, with `query_log` set where given."""
    out = docs_tenants()
    for row in out:
        if logging.get(row["name"]) is not None:
            row["query_log"] = logging[row["name"]]
    return out


@pytest.fixture
def start(start_admin: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """`start(tenant rows, **settings)`: a started app with the admin API on."""
    return start_admin


def export(client: TestClient, tenant: str, split: str = "all") -> list[dict[str, Any]]:
    r = client.get(
        f"/admin/tenants/{tenant}/query-log", params={"split": split}, headers=admin_headers()
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in r.text.splitlines()]


def texts(client: TestClient, tenant: str) -> list[str]:
    return [e["text"] for e in export(client, tenant)]


def search(client: TestClient, tenant: str, query: str) -> None:
    r = client.post("/search", json={"query": query, "top_k": 2}, headers=auth(tenant))
    assert r.status_code == 200, r.text


def embed(client: TestClient, tenant: str, inputs: list[str], input_type: str = "query") -> None:
    r = client.post(
        "/embed", json={"input": inputs, "input_type": input_type}, headers=auth(tenant)
    )
    assert r.status_code == 200, r.text


def log_dir(settings: Settings) -> Path:
    return Path(settings.adapter_store) / "query-log"


# -- opt-in ------------------------------------------------------------------------------------
def test_off_by_default_nothing_is_recorded(start, admin_settings: Settings):
    assert admin_settings.query_log is False
    client = start()
    search(client, "acme", "malaria mosquito")
    embed(client, "acme", ["parasite"])
    assert texts(client, "acme") == []
    tenant = client.get("/admin/tenants/acme", headers=admin_headers()).json()
    assert tenant["query_log"] == {"enabled": False}
    client.__exit__(None, None, None)  # the final flush has run: nothing was written at all
    folder = log_dir(admin_settings)
    assert not folder.exists() or not list(folder.rglob("*.jsonl"))


def test_on_for_one_tenant_records_only_its_query_texts(start):
    client = start(rows(acme=True))
    search(client, "acme", "malaria mosquito")
    embed(client, "acme", ["vitamin infection", "heart blood"])
    embed(client, "acme", ["a document, never a query"], input_type="document")
    r = client.post("/v1/embeddings", json={"input": "cancer risk"}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    r = client.post(
        "/v1/embeddings",
        json={"input": "another document", "model": DOC_MODEL},
        headers=auth("acme"),
    )
    assert r.status_code == 200, r.text
    search(client, "globex", "globex secret plan")  # logging off for globex

    got = export(client, "acme")
    assert [(e["text"], e["endpoint"]) for e in got] == [
        ("malaria mosquito", "/search"),
        ("vitamin infection", "/embed"),
        ("heart blood", "/embed"),
        ("cancer risk", "/v1/embeddings"),
    ]
    assert all(isinstance(e["ts"], float) for e in got) and set(got[0]) == {
        "text",
        "endpoint",
        "ts",
    }
    assert [e["ts"] for e in got] == sorted(e["ts"] for e in got)
    assert texts(client, "globex") == [] and texts(client, "initech") == []
    info = client.get("/admin/tenants/acme", headers=admin_headers()).json()
    assert info["query_log"] == {"enabled": True}


def test_the_setting_turns_it_on_and_a_tenant_can_opt_out(start):
    client = start(rows(globex=False), query_log=True)
    search(client, "acme", "malaria mosquito")
    search(client, "globex", "globex secret plan")
    search(client, "initech", "heart blood")
    assert texts(client, "acme") == ["malaria mosquito"]
    assert texts(client, "initech") == ["heart blood"]
    assert texts(client, "globex") == []


def test_a_request_that_fails_is_not_recorded(start):
    client = start(rows(acme=True))
    too_many = [f"q{i}" for i in range(9)]  # max_inputs is 8 in the conftest settings
    r = client.post("/embed", json={"input": too_many}, headers=auth("acme"))
    assert r.status_code == 413
    r = client.post("/search", json={"query": "x"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    r = client.post(
        "/v1/embeddings",
        json={"input": "encoded, then refused", "dimensions": 7},
        headers=auth("acme"),
    )
    assert r.status_code == 400, r.text
    r = client.post(
        "/search", json={"query": "bad filter", "filter": {"must": 5}}, headers=auth("acme")
    )
    assert r.status_code == 422, r.text
    assert texts(client, "acme") == []


# -- the request path does no I/O ---------------------------------------------------------------
def test_requests_only_buffer_and_the_writer_thread_appends(start, admin_settings: Settings):
    client = start(rows(acme=True), query_log_flush_s=60.0)
    search(client, "acme", "malaria mosquito")
    folder = log_dir(admin_settings) / "acme"
    assert not list(folder.glob("*.jsonl"))  # answered; nothing written yet (flush in 60 s)
    assert texts(client, "acme") == ["malaria mosquito"]  # an export flushes this replica first
    (path,) = folder.glob("*.jsonl")
    assert json.loads(path.read_text().splitlines()[0])["text"] == "malaria mosquito"


def test_pending_entries_are_written_at_shutdown(start, admin_settings: Settings):
    client = start(rows(acme=True), query_log_flush_s=60.0)
    search(client, "acme", "malaria mosquito")
    client.__exit__(None, None, None)
    (path,) = (log_dir(admin_settings) / "acme").glob("*.jsonl")
    assert [json.loads(x)["text"] for x in path.read_text().splitlines()] == ["malaria mosquito"]


# -- bounds ------------------------------------------------------------------------------------
def test_entries_beyond_the_cap_are_dropped_oldest_first(start, admin_settings: Settings):
    client = start(rows(acme=True), query_log_max_entries=5)
    sent = [f"query number {i}" for i in range(12)]
    for i in range(0, 12, 4):
        embed(client, "acme", sent[i : i + 4])
        assert texts(client, "acme") == sent[: i + 4][-5:]  # flushed (and compacted) each time
    (path,) = (log_dir(admin_settings) / "acme").glob("*.jsonl")
    on_disk = [json.loads(x)["text"] for x in path.read_text().splitlines()]
    assert on_disk[-5:] == sent[-5:] and len(on_disk) <= 5 * 1.25


def test_entries_older_than_the_max_age_are_dropped(tmp_path: Path):
    now = [1_000.0]
    qlog = QueryLog(
        tmp_path, enabled=["acme"], max_entries=100, max_age_s=60.0, clock=lambda: now[0]
    )
    qlog.record("acme", ["old one", "old two"], "/search")
    now[0] += 45
    qlog.record("acme", ["newer"], "/embed")
    assert [e.text for e in qlog.entries("acme")] == ["old one", "old two", "newer"]
    now[0] += 30  # the first two are 75 s old now
    assert [e.text for e in qlog.entries("acme")] == ["newer"]
    (path,) = (tmp_path / "acme").glob("*.jsonl")
    assert len(path.read_text().splitlines()) == 3  # on disk until the sweep
    qlog.sweep()
    assert [json.loads(x)["text"] for x in path.read_text().splitlines()] == ["newer"]
    now[0] += 60
    qlog.sweep()
    assert qlog.entries("acme") == [] and not path.exists()


def test_the_max_age_through_the_api(start):
    client = start(rows(acme=True), query_log_max_age_s=2.0)
    search(client, "acme", "malaria mosquito")
    assert texts(client, "acme") == ["malaria mosquito"]
    time.sleep(2.2)
    assert texts(client, "acme") == []


def test_memory_is_bounded_while_the_disk_does_not_take_writes(tmp_path: Path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder would be")
    qlog = QueryLog(blocker, enabled=["acme"], max_entries=3, max_age_s=60.0)
    for i in range(10):
        qlog.record("acme", [f"q{i}"], "/search")
    assert [t for _, _, t in qlog._pending["acme"]] == ["q7", "q8", "q9"]
    qlog.flush()  # logged and dropped, never raised into a request
    assert not qlog._pending["acme"]


def test_a_torn_last_line_costs_only_itself(tmp_path: Path):
    qlog = QueryLog(tmp_path, enabled=["acme"], max_entries=100, max_age_s=60.0, replica="r1")
    qlog.record("acme", ["before the crash"], "/search")
    qlog.flush()
    path = tmp_path / "acme" / "r1.jsonl"
    with path.open("ab") as f:
        f.write(b'{"text": "torn by a cra')
    again = QueryLog(tmp_path, enabled=["acme"], max_entries=100, max_age_s=60.0, replica="r1")
    again.record("acme", ["after the restart"], "/embed")
    assert [e.text for e in again.entries("acme")] == ["before the crash", "after the restart"]


# -- export and clear: the admin API -------------------------------------------------------------
def test_export_and_clear_need_the_admin_token_and_are_audited(start, audit_lines):
    client = start(rows(acme=True))
    search(client, "acme", "malaria mosquito")
    search(client, "acme", "heart blood")
    for headers in ({}, auth("acme"), {"Authorization": "Bearer wrong"}):
        assert_error(
            client.get("/admin/tenants/acme/query-log", headers=headers), 401, "unauthorized"
        )
        assert_error(
            client.delete("/admin/tenants/acme/query-log", headers=headers), 401, "unauthorized"
        )
    assert texts(client, "acme") == ["malaria mosquito", "heart blood"]
    r = client.delete("/admin/tenants/acme/query-log", headers=admin_headers("carol"))
    assert r.status_code == 200 and r.json() == {"tenant": "acme", "removed": 2}
    assert texts(client, "acme") == []
    search(client, "acme", "after the clear")
    assert texts(client, "acme") == ["after the clear"]
    assert_error(
        client.get("/admin/tenants/nobody/query-log", headers=admin_headers()),
        404,
        "tenant_not_found",
    )
    lines = [e for e in audit_lines() if "query_log" in e["action"]]
    assert [(e["action"], e["outcome"], e.get("entries")) for e in lines] == [
        ("export_query_log", "ok", 2),
        ("clear_query_log", "ok", 2),
        ("export_query_log", "ok", 0),
        ("export_query_log", "ok", 1),
        ("export_query_log", "refused", None),
    ]
    assert lines[1]["actor"] == "carol" and lines[0]["tenant"] == "acme"
    assert all("malaria" not in json.dumps(e) for e in audit_lines())  # no user text in the audit


def test_the_split_holds_out_the_gates_share_by_text(start):
    client = start(rows(acme=True), gate_holdout_fraction=0.5)
    sent = [f"query {i} about malaria" for i in range(16)]
    embed(client, "acme", sent[:8])
    embed(client, "acme", sent[8:])
    train = [e["text"] for e in export(client, "acme", "train")]
    holdout = [e["text"] for e in export(client, "acme", "holdout")]
    assert sorted(train + holdout) == sorted(sent) and train and holdout
    assert all(held_out(t, 0.5) for t in holdout) and not any(held_out(t, 0.5) for t in train)
    r = client.get(
        "/admin/tenants/acme/query-log", params={"split": "nope"}, headers=admin_headers()
    )
    assert r.status_code == 422


def test_replicas_sharing_the_folder_export_everything_and_a_clear_reaches_all(tmp_path: Path):
    def replica(name: str) -> QueryLog:
        return QueryLog(tmp_path, enabled=["acme"], max_entries=100, max_age_s=600, replica=name)

    a, b = replica("a"), replica("b")
    a.record("acme", ["seen by a"], "/search")
    b.record("acme", ["seen by b"], "/search")
    b.flush()
    assert sorted(e.text for e in a.entries("acme")) == ["seen by a", "seen by b"]
    b.record("acme", ["pending on b at the clear"], "/embed")
    assert a.clear("acme") == 2
    b.flush()  # written after the clear, recorded before it: never read back
    assert a.entries("acme") == []
    b.record("acme", ["after the clear"], "/embed")
    b.flush()
    assert [e.text for e in a.entries("acme")] == ["after the clear"]


# -- isolation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fast_path", [True, False])
def test_concurrent_tenants_each_export_only_their_own_texts(
    make_app: Callable[..., FastAPI], admin_settings: Settings, tmp_path: Path, fast_path: bool
):
    """acme and globex share collection `docs` and are batched together by the encoder."""
    path = write_tenants(tmp_path / "tenants.json", rows(acme=True, globex=True))
    app = make_app(admin_settings, tenants_file=path, fast_path=fast_path, batch_max_wait_ms=5.0)
    sent: dict[str, list[str]] = {"acme": [], "globex": []}
    jobs = []
    for i in range(24):
        for tenant in sent:
            text = f"{tenant} query {i}"
            sent[tenant].append(text)
            jobs.append((tenant, text, ("/search", "/embed", "/v1/embeddings")[i % 3]))

    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def call(job: tuple[str, str, str]) -> int:
            tenant, text, route = job
            body = {"query": text} if route == "/search" else {"input": [text]}
            return http.post(route, json=body, headers=auth(tenant)).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(call, jobs)) == {200}
        got = {}
        for tenant in (*sent, "initech"):
            r = http.get(f"/admin/tenants/{tenant}/query-log", headers=admin_headers())
            assert r.status_code == 200, r.text
            got[tenant] = [json.loads(x)["text"] for x in r.text.splitlines()]
    for tenant, mine in sent.items():
        assert sorted(got[tenant]) == sorted(mine)
    assert got["initech"] == []
    folder = Path(admin_settings.adapter_store) / "query-log"
    assert sorted(p.name for p in folder.iterdir()) == ["acme", "globex"]


def test_a_tenant_name_that_could_escape_a_path_is_refused(
    start, tmp_path: Path, admin_settings: Settings
):
    for bad in ("../evil", "..", "a/b", ".hidden", "a\\b", ""):
        with pytest.raises(ValidationError):
            Tenant(name=bad)
        with pytest.raises(ValueError):
            QueryLog(tmp_path / "log", enabled=[bad], max_entries=5, max_age_s=60)
    qlog = QueryLog(tmp_path / "log", enabled=["acme"], max_entries=5, max_age_s=60)
    for call in (
        lambda: qlog.entries("../acme"),
        lambda: qlog.clear("../../etc"),
        lambda: qlog.folder("acme/../../x"),
    ):
        with pytest.raises(ValueError):
            call()
    client = start(rows(acme=True))
    for name in ("..%2F..%2Fetc", "%2E%2E", "acme%2F..%2Fglobex"):
        r = client.get(f"/admin/tenants/{name}/query-log", headers=admin_headers())
        assert r.status_code == 404, (name, r.text)
        r = client.delete(f"/admin/tenants/{name}/query-log", headers=admin_headers())
        assert r.status_code == 404, (name, r.text)
    assert not (tmp_path / "etc").exists()
    folder = log_dir(admin_settings)
    assert not folder.exists() or [p.name for p in folder.iterdir()] == []


def test_keys_map_to_the_only_tenant_whose_log_gets_the_text(start):
    """The recording tenant is the authenticated one: a body cannot name another tenant."""
    client = start(rows(acme=True, globex=True))
    r = client.post(
        "/v1/embeddings",  # OpenAI's shape ignores keys it does not know
        json={"input": ["acme's text"], "tenant": "globex", "user": "globex"},
        headers={"Authorization": f"Bearer {KEYS['acme']}"},
    )
    assert r.status_code == 200, r.text
    assert texts(client, "acme") == ["acme's text"]
    assert texts(client, "globex") == []


# -- the command line --------------------------------------------------------------------------
def test_cli_exports_the_log_stores_it_as_the_query_set_and_clears_both(
    make_app: Callable[..., FastAPI], admin_settings: Settings, tmp_path: Path, audit_lines
):
    """`querylift adapters export-log / set-queries / get-queries / clear-queries / clear-log`
    against a live service: the exported file is what `train --queries-from` and `set-queries`
    read, and one tenant's export holds none of another's text."""
    from typer.testing import CliRunner

    from querylift.cli import app as cli
    from tests.conftest import ADMIN
    from training.data import read_query_log

    path = write_tenants(tmp_path / "tenants.json", rows(acme=True, globex=True))
    runner = CliRunner()
    out = tmp_path / "exports" / "acme.jsonl"
    with (
        serve(make_app(admin_settings, tenants_file=path)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):

        def run(*args: str, code: int = 0) -> Any:
            result = runner.invoke(cli, ["adapters", *args, "--url", url, "--token", ADMIN])
            assert result.exit_code == code, (args, result.output)
            return json.loads(result.stdout) if code == 0 else result.stderr

        for tenant, words in (
            ("acme", ["malaria mosquito", "vitamin infection"]),
            ("globex", ["heart blood"]),
        ):
            for text in words:
                r = http.post("/search", json={"query": text}, headers=auth(tenant))
                assert r.status_code == 200, r.text

        exported = run("export-log", "acme", "--out", str(out))
        assert exported == {"tenant": "acme", "split": "all", "entries": 2, "out": str(out)}
        assert read_query_log(out) == ["malaria mosquito", "vitamin infection"]
        assert not [p for p in out.parent.iterdir() if p.name != "acme.jsonl"]  # no temp left
        train = tmp_path / "train.jsonl"
        held = tmp_path / "held.jsonl"
        n_train = run("export-log", "acme", "--out", str(train), "--split", "train")["entries"]
        n_held = run("export-log", "acme", "--out", str(held), "--split", "holdout")["entries"]
        assert n_train + n_held == 2
        assert "--split 'some'" in run(
            "export-log", "acme", "--out", str(out), "--split", "some", code=2
        )

        stored = run("set-queries", "acme", str(out))
        assert stored["queries"]["n_queries"] == 2
        assert run("get-queries", "acme")["texts"] == ["malaria mosquito", "vitamin infection"]
        run("clear-queries", "acme")
        assert "query_set_not_found" in run("get-queries", "acme", code=1)
        empty = tmp_path / "empty.txt"
        empty.write_text("\n")
        assert "no query texts" in run("set-queries", "acme", str(empty), code=2)

        assert run("clear-log", "acme") == {"tenant": "acme", "removed": 2}
        assert run("export-log", "acme", "--out", str(out))["entries"] == 0
        assert out.read_bytes() == b""
        assert run("export-log", "globex", "--out", str(out))["entries"] == 1
        assert read_query_log(out) == ["heart blood"]
        assert "404 tenant_not_found" in run("export-log", "nobody", "--out", str(out), code=1)
    actions = [line["action"] for line in audit_lines()]
    for action in ("export_query_log", "set_queries", "delete_queries", "clear_query_log"):
        assert action in actions
