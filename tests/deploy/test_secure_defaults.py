"""Secure defaults: development mode (no tenants file: no authentication, every request is the
dev tenant) never reaches the network unless the operator says so by name.

`querylift serve` refuses it on an address other than loopback, exit 1 with one line naming the
fix, before any model loads; QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK=true lets it start. The
image binds 0.0.0.0 with no tenants file, so it refuses; compose mounts an example tenants file
whose placeholder key hash (sha256 of nothing: no client can send it) is refused at start until
the operator writes real ones.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from encoders import EncoderSpec
from service.bindings.tenants import TenantRegistry, hash_key
from service.ops.preflight import (
    EXPOSURE_FIX,
    PLACEHOLDER_KEY_SHA256,
    check_exposure,
    check_placeholder_keys,
)
from service.ops.settings import Settings
from tests.conftest import REPO, querylift_settings, server_env
from tests.live import free_port

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
EXAMPLE = REPO / "deploy" / "compose" / "tenants.example.json"
TENANTS_IN_CONTAINER = "/etc/querylift/tenants.json"
ALLOW = "QUERYLIFT_ALLOW_UNAUTHENTICATED_NETWORK"
REFUSAL_S = 2.0  # the acceptance bound, on the refused process's own CPU time


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV, as the container starts with it."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    final = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "ENV":
            env.update(item.partition("=")[::2] for item in shlex.split(rest))
    return env


def compose_querylift() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]["querylift"]


def defaults(value: str) -> str:
    """A compose value with each `${VAR:-default}` at its default (nothing set in .env)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def tenants_mount_source(service: dict[str, Any]) -> Path:
    """The host file compose mounts as the tenants file."""
    (volume,) = [v for v in service["volumes"] if f":{TENANTS_IN_CONTAINER}" in v]
    return REPO / defaults(volume.split(f":{TENANTS_IN_CONTAINER}")[0])


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> Settings:
    """Settings as the container's process reads them from `env` (nothing inherited)."""
    monkeypatch.chdir(cwd)  # no stray .env
    for key in [k for k in os.environ if k.upper().startswith("QUERYLIFT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("QUERYLIFT_"):
            monkeypatch.setenv(key, value)
    return Settings()


# -- the image and compose, read ---------------------------------------------------------------
def test_the_image_binds_every_interface_without_a_tenants_file_so_it_refuses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = dockerfile_env()
    assert env["QUERYLIFT_HOST"] == "0.0.0.0"
    assert "QUERYLIFT_TENANTS_FILE" not in env
    instructions = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.startswith("#")]
    assert not [ln for ln in instructions if ALLOW in ln]  # never opted into by the image
    settings = settings_from(env, monkeypatch, tmp_path)
    refused = check_exposure(
        settings.host, settings.tenants_file, settings.allow_unauthenticated_network
    )
    assert refused.status == "FAIL" and refused.fix == EXPOSURE_FIX


def test_compose_publishes_the_port_only_with_a_tenants_file_whose_keys_the_operator_sets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    service = compose_querylift()
    assert "8080:8080" in service["ports"]  # every interface of the host: hence the keys
    env = {k: defaults(str(v)) for k, v in service["environment"].items()}
    assert env["QUERYLIFT_TENANTS_FILE"] == TENANTS_IN_CONTAINER
    assert ALLOW not in env
    source = tenants_mount_source(service)
    assert source == EXAMPLE and source.is_file()
    # the container's settings: the image's ENV, then compose's environment
    settings = settings_from({**dockerfile_env(), **env}, monkeypatch, tmp_path)
    exposure = check_exposure(
        settings.host, settings.tenants_file, settings.allow_unauthenticated_network
    )
    assert exposure.status == "ok" and "API keys required" in exposure.line
    # the example: a valid tenants file whose only key hashes are the placeholder
    registry = TenantRegistry.from_file(source)
    hashes = {h for t in registry.tenants.values() for h in t.api_keys_sha256}
    assert hashes == {PLACEHOLDER_KEY_SHA256}
    assert registry.resolve("") is None and registry.resolve(None) is None
    refused = check_placeholder_keys(registry.tenants.values(), Path(TENANTS_IN_CONTAINER))
    assert refused is not None and refused.status == "FAIL"
    assert "placeholder" in refused.line and "docs/tenants.md" in (refused.fix or "")
    # the operator's fix: their own key's hash in a copy of it
    rows = json.loads(source.read_text())
    for row in rows["tenants"]:
        row["api_keys_sha256"] = [hash_key(f"{row['name']}-real-key")]
    (tmp_path / "tenants.json").write_text(json.dumps(rows))
    fixed = TenantRegistry.from_file(tmp_path / "tenants.json")
    assert check_placeholder_keys(fixed.tenants.values(), tmp_path / "tenants.json") is None
    assert fixed.resolve("acme-real-key") is not None


# -- `querylift serve`, run --------------------------------------------------------------------
def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "querylift.cli", "serve", "--host", host, "--port", str(port)]


@pytest.mark.parametrize("config", ["no tenants file", "compose's example tenants file"])
def test_serve_refuses_in_one_line_before_any_model_loads(
    config: str, tmp_path: Path, query_spec: EncoderSpec, doc_spec: EncoderSpec
) -> None:
    more = {"QUERYLIFT_TENANTS_FILE": str(EXAMPLE)} if config.startswith("compose") else {}
    env = server_env(
        query_spec,
        doc_spec,
        **querylift_settings(adapter_store=tmp_path / "adapters", qdrant_path=tmp_path / "q"),
        **more,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run(
        serve_command("0.0.0.0", free_port()),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and done.stdout == "", done.stderr
    assert lines[0].startswith("querylift serve: cannot start: ")
    if more:
        assert "'acme' still has the placeholder key hash" in lines[0]
        assert "docs/tenants.md" in lines[0]
    else:
        assert lines[0].endswith(EXPOSURE_FIX)
    # no model loaded: its own CPU time (2 cores are shared: wall time only guards a hang)
    assert cpu < REFUSAL_S, (cpu, wall)
    assert wall < 30, wall
    assert not (tmp_path / "adapters").exists()


def test_the_explicit_setting_starts_it_and_says_so_loudly(
    tmp_path: Path, query_spec: EncoderSpec, doc_spec: EncoderSpec
) -> None:
    port = free_port()
    env = server_env(
        query_spec,
        doc_spec,
        **querylift_settings(
            adapter_store=tmp_path / "adapters",
            qdrant_path=tmp_path / "q",
            allow_unauthenticated_network="true",
            warmup="false",  # started, not measured
        ),
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            serve_command("0.0.0.0", port),
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    log = log_path.read_text()
    assert "bind 0.0.0.0: development mode WITHOUT authentication on the network" in log
    assert f"{ALLOW}=true" in log
