"""bench/hotswap.py across two replicas on one object store (a local S3 server): a short run
end to end with the embedded models (issue 25; the real run is 60 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench.conftest import run_bench
from tests.conftest import MODELS, REPO, needs_embedded_models


@pytest.mark.models
@needs_embedded_models
def test_two_replicas_on_one_s3_store_serve_every_swap_from_its_version(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("QUERYLIFT_", "AWS_"))  # the bench sets its own AWS_*
    }
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(tmp_path)})
    args = ["--models-dir", str(MODELS), "--store", "s3", "--replicas", "2"]
    args += ["--duration", "8", "--swaps", "3", "--concurrency", "2"]
    proc = run_bench("hotswap", args, cwd=REPO, env=env, timeout=600)
    out = proc.stdout
    # exit 1 may only come from the timing target (2 x the sync interval: a benchmark number,
    # bench/README.md), never from a failed request or a wrong vector
    assert proc.returncode in (0, 1), out + proc.stderr[-3000:]
    assert "2 replicas on one s3 store (s3://" in out
    assert "failed requests: 0 []" in out
    assert "responses whose vector differs from their named adapter version: 0 " in out
    assert "propagation (PUT on replica 0 returned -> another replica" in out
    assert "(n=3, 0 not seen within" in out  # every swap reached the other replica
    assert "[PASS] no failed request" in out
    assert "[PASS] every vector from the adapter version it names" in out
