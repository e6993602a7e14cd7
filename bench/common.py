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

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: Mapping[str, str], timeout_s: float = 180.0) -> Iterator[str]:
    """Run `querylift serve` on a loopback port with `env` added; yield its base URL."""
    log_path = Path(env.get("QUERYLIFT_ADAPTER_STORE", ".")) / "server.log"
    with server_process(env, log_path, timeout_s) as (url, _):
        yield url


@contextmanager
def server_process(
    env: Mapping[str, str], log_path: Path, timeout_s: float = 180.0
) -> Iterator[tuple[str, int]]:
    """`querylift serve` on a loopback port with `env` added: yields (base URL, pid), the pid
    for benchmarks that watch the server's memory."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "querylift.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port)],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout_s}s; see {log_path}")
            time.sleep(0.25)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
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


class Steal:
    """Share of CPU time the hypervisor took from this VM (`steal` in /proc/stat) between
    `start()` and `read()`; None where /proc/stat has no steal column (not Linux).

    On a shared cloud VM, steal bursts slow a run several-fold for seconds at a time; the
    serving benches measure it per window and leave out windows it spoiled."""

    def __init__(self) -> None:
        self._start = self._ticks()

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 8:
            return None
        return fields[7], sum(fields[:8])

    def start(self) -> Steal:
        self._start = self._ticks()
        return self

    def read(self) -> float | None:
        end = self._ticks()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        return (end[0] - self._start[0]) / (end[1] - self._start[1])


def verdict(checks: dict[str, bool]) -> int:
    """Print a PASS/FAIL line per check; the exit status (1 when one failed)."""
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1
