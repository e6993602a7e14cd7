"""Start-up checks: a first run without `querylift setup` is one line and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from encoders import EncoderSpec
from service.app import create_app
from service.bindings.tenants import hash_key
from service.ops.preflight import (
    EXPOSURE_FIX,
    PLACEHOLDER_KEY_SHA256,
    check_exposure,
    check_model,
    check_store,
    failures_line,
    is_loopback,
    startup_checks,
)
from service.ops.settings import Settings
from tests.conftest import DOCS, REPO, index_docs, write_tenants

# Loaded by every Python process started with this folder on PYTHONPATH: records each socket
# connect (and each name lookup, which precedes any connection to a hub) in a file.
SITECUSTOMIZE = """
import os, socket
_log = os.environ["QL_SOCKET_LOG"]
def _record(kind, address):
    with open(_log, "a") as f:
        f.write(f"{kind} {address!r}\\n")
_connect = socket.socket.connect
def connect(self, address):
    _record("connect", address)
    return _connect(self, address)
socket.socket.connect = connect
_connect_ex = socket.socket.connect_ex
def connect_ex(self, address):
    _record("connect", address)
    return _connect_ex(self, address)
socket.socket.connect_ex = connect_ex
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    _record("resolve", host)
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
_record("started", os.getpid())
"""
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh clone: no QUERYLIFT_* and no hub-offline switches."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("QUERYLIFT_") and k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["PYTHONPATH"] = str(hooks)
    env["QL_SOCKET_LOG"] = str(tmp_path / "sockets.log")
    return env


def test_serve_without_setup_is_one_line_naming_setup_and_no_network(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    querylift = Path(sys.executable).with_name("querylift")
    t0 = time.monotonic()
    done = subprocess.run(
        [str(querylift), "serve"],
        cwd=clone,
        env=_fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "models/all-mpnet-base-v2 not found" in lines[0]
    assert "models/all-MiniLM-L6-v2 not found" in lines[0]
    assert "`querylift setup`" in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert elapsed < 30, elapsed  # a hang guard; the closing note measures the real time
    calls = (tmp_path / "sockets.log").read_text().splitlines()
    assert calls and calls[0].startswith("started"), "the socket hook did not load"
    remote = [c for c in calls[1:] if not any(h in c for h in LOOPBACK)]
    assert remote == [], remote
    assert not (clone / "var").exists()  # nothing created on the way out


def test_a_model_folder_must_be_whole(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    spec = EncoderSpec(name="m", path=str(folder))
    found = check_model("query", spec, model_hub=False)
    assert found.status == "FAIL"
    assert "no a tokenizer" in found.line and "weights" in found.line
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    found = check_model("query", spec, model_hub=False)
    assert found.status == "ok" and "8-d" in found.line


def test_a_hub_id_needs_the_hub_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = EncoderSpec(name="q", path="Qwen/Qwen3-Embedding-8B")
    off = check_model("query", spec, model_hub=False)
    assert off.status == "FAIL" and "QUERYLIFT_MODEL_HUB=true" in off.line
    assert "QUERYLIFT_QUERY_ENCODER__PATH" in (off.fix or "")
    assert check_model("query", spec, model_hub=True).status == "ok"
    # a relative folder path is never taken for a hub id
    local = check_model("query", EncoderSpec(name="q", path="models/x"), model_hub=True)
    assert local.status == "FAIL" and "QUERYLIFT_MODEL_HUB" not in local.line


def test_store_and_tenants_file_are_checked(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    not_a_dir = tmp_path / "store"
    not_a_dir.write_text("x")
    assert check_store(not_a_dir).status == "FAIL"
    assert check_store(tmp_path / "new" / "store").status == "ok"  # created on start
    settings = Settings(
        query_encoder={"name": "q", "path": str(model_dirs["qwen3"])},
        document_encoder={"name": "d", "path": str(model_dirs["bert"])},
        adapter_store=tmp_path / "adapters",
        tenants_file=tmp_path / "missing.json",
        qdrant_path=tmp_path / "qdrant",  # not the checkout's var/qdrant, which a serve may hold
    )
    line = failures_line(list(startup_checks(settings)))
    assert line is not None and "missing.json: not found" in line
    bad = tmp_path / "bad.json"
    bad.write_text('{"tenants": [{"name": "a", "colour": "red"}]}')  # an unknown field
    line = failures_line(list(startup_checks(settings.model_copy(update={"tenants_file": bad}))))
    assert line is not None and "bad.json" in line and "colour" in line and "\n" not in line
    good = settings.model_copy(update={"tenants_file": None})
    assert failures_line(list(startup_checks(good))) is None


def test_an_app_built_without_the_cli_refuses_a_missing_model(tmp_path: Path) -> None:
    settings = Settings(
        query_encoder={"name": "q", "path": str(tmp_path / "nowhere")},
        adapter_store=tmp_path / "adapters",
        qdrant_path=tmp_path / "qdrant",
    )
    with pytest.raises(RuntimeError, match="nowhere not found"), TestClient(create_app(settings)):
        pass


def test_doctor_in_a_fresh_folder_names_setup(tmp_path: Path, cli_env: Callable[..., None]) -> None:
    from querylift.cli import app as cli

    out = CliRunner().invoke(cli, ["doctor"])
    assert out.exit_code == 1, out.output
    assert "[FAIL] qdrant var/qdrant: no embedded Qdrant folder there" in out.output
    assert "querylift setup" in out.output
    assert not (tmp_path / "var" / "qdrant").exists()


def test_the_docker_image_opts_into_the_hub() -> None:
    """Its GPU profile's paths are hub ids: the image says so, the settings' default does not."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "QUERYLIFT_MODEL_HUB=true" in dockerfile
    assert Settings.model_fields["model_hub"].default is False


def test_doctor_names_each_collections_document_model(
    tmp_path: Path, doc_spec: EncoderSpec, document_encoder: Any, cli_env: Callable[..., None]
) -> None:
    from querylift.cli import app as cli
    from service.search.qdrant_gateway import QdrantGateway

    gw = QdrantGateway(path=str(tmp_path / "qdrant"))
    index_docs(gw, document_encoder, "default", DOCS, collection="demo")
    gw.close()
    cli_env(qdrant_path=tmp_path / "qdrant")
    good = CliRunner().invoke(cli, ["doctor"])
    assert good.exit_code == 0, good.output
    assert f"[ok  ] collection 'demo': indexed with {doc_spec.name}" in good.output
    cli_env(document_encoder__name="another-model")
    bad = CliRunner().invoke(cli, ["doctor"])
    assert bad.exit_code == 1, bad.output
    assert f"indexed with {doc_spec.name}, but the document encoder is another-model" in (
        bad.output
    )


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "", "10.0.0.7", "192.168.1.5", "128.0.0.1", "fe80::1", "example.com"]
)
def test_wildcards_and_every_other_address_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_development_mode_off_loopback_needs_the_explicit_setting(tmp_path: Path) -> None:
    refused = check_exposure("0.0.0.0", None, allow_unauthenticated_network=False)
    assert refused.status == "FAIL" and refused.fix == EXPOSURE_FIX
    assert "QUERYLIFT_TENANTS_FILE" in refused.text() and "docs/tenants.md" in refused.text()
    assert "QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK=true" in refused.text()
    allowed = check_exposure("0.0.0.0", None, allow_unauthenticated_network=True)
    assert allowed.status == "warn" and "WITHOUT authentication" in allowed.line
    assert check_exposure("127.0.0.1", None, allow_unauthenticated_network=False).status == "ok"
    keys = check_exposure("0.0.0.0", tmp_path / "t.json", allow_unauthenticated_network=False)
    assert keys.status == "ok"


def test_startup_checks_refuse_dev_mode_on_the_network_and_placeholder_keys(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    settings = Settings(
        query_encoder={"name": "q", "path": str(model_dirs["qwen3"])},
        document_encoder={"name": "d", "path": str(model_dirs["bert"])},
        adapter_store=tmp_path / "adapters",
        qdrant_path=tmp_path / "qdrant",
        host="0.0.0.0",
    )
    line = failures_line(list(startup_checks(settings)))
    assert line is not None and line.endswith(EXPOSURE_FIX) and "\n" not in line
    opted_in = settings.model_copy(update={"allow_unauthenticated_network": True})
    assert failures_line(list(startup_checks(opted_in))) is None
    rows = [
        {"name": "acme", "api_keys_sha256": [PLACEHOLDER_KEY_SHA256]},
        {"name": "globex", "api_keys_sha256": [hash_key("key-globex")]},
    ]
    example = write_tenants(tmp_path / "tenants.json", rows)
    with_file = settings.model_copy(update={"tenants_file": example})
    line = failures_line(list(startup_checks(with_file)))
    assert line is not None and "'acme' still has the placeholder key hash" in line
    assert "globex" not in line and "docs/tenants.md" in line
    rows[0]["api_keys_sha256"] = [hash_key("key-acme")]
    write_tenants(example, rows)
    assert failures_line(list(startup_checks(with_file))) is None
