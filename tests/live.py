"""Live servers on loopback: an app under uvicorn in a thread, or a `querylift serve` process.

`free_port` is the benchmarks' own (bench/common.py), re-exported here for the tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from bench.common import free_port

__all__ = ["ServerProcess", "free_port", "serve", "serve_processes", "start_serve"]


@contextmanager
def serve(app: FastAPI, timeout_s: float = 60.0) -> Iterator[str]:
    """Yield the base URL of `app` served on 127.0.0.1; stop the server afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)


@dataclass
class ServerProcess:
    """A `querylift serve` subprocess on a loopback port, its output in `log_path`."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def start_serve(env: dict[str, str], tmp_path: Path, ready_timeout_s: float) -> ServerProcess:
    """Start `querylift serve` with `env` in a fresh folder (no stray .env) and wait until
    /readyz says ready; fail the test with the server's log if it exits or never gets there."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    workdir = tmp_path / f"cwd-{port}"
    workdir.mkdir()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "querylift.cli", "serve", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            pytest.fail(f"not ready within {ready_timeout_s}s:\n{server.log()}")
        time.sleep(0.2)


def kill(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait(10)


@contextmanager
def serve_processes(
    tmp_path: Path,
    ready_timeout_s: float,
    stop: Callable[[ServerProcess], None] = kill,
) -> Iterator[Callable[[dict[str, str]], ServerProcess]]:
    """`start(env)`: a `querylift serve` (start_serve) that is always stopped at the end (by
    `stop`: SIGKILL unless told otherwise), whatever the test did to it."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str]) -> ServerProcess:
        server = start_serve(env, tmp_path, ready_timeout_s)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop(server)
