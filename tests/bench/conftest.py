"""Helpers of the benchmark tests: a bench module run to the end in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_bench(
    module: str, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`python -m bench.<module> <args>`, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
