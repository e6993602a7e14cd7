"""Shared helpers of the benchmarks: a querylift server in a subprocess, latency summaries."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: Mapping[str, str], timeout_s: float = 180.0) -> Iterator[str]:
    """Run `querylift serve` on a loopback port with `env` added; yield its base URL."""
    port = free_port()
    log_path = Path(env.get("QUERYLIFT_ADAPTER_STORE", ".")) / f"server-{port}.log"
    with open(log_path, "w") as log:
        yield from _run(port, log, env, timeout_s)


def _run(port: int, log: IO[str], env: Mapping[str, str], timeout_s: float) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "querylift.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout_s}s; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def summary_ms(seconds: list[float]) -> str:
    if not seconds:
        return "n/a"
    a = np.asarray(seconds) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return (
        f"p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {a.max():.1f} ms (n={len(a)})"
    )
