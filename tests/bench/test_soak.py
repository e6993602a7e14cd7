"""bench/soak.py runs end to end for a few seconds with the tiny models (the real run is 10 min)."""

from __future__ import annotations

from pathlib import Path

from encoders import EncoderSpec
from tests.bench.conftest import run_bench
from tests.conftest import server_env


def test_short_soak_with_tiny_models_reports_zero_unexpected_errors(
    tmp_path: Path, query_spec: EncoderSpec, doc_spec: EncoderSpec
) -> None:
    # TMPDIR: the bench's work folder (store, Qdrant, server log)
    env = server_env(query_spec, doc_spec, TMPDIR=str(tmp_path))
    args = ["--duration", "6", "--rate", "5", "--warmup", "2", "--window", "3"]
    args += ["--docs", "30", "--swap-every", "1", "--max-query-words", "12"]
    args += ["--max-rss-growth-pct", "100"]  # seconds of tiny-model load: growth is noise here
    proc = run_bench("soak", args, cwd=tmp_path, env=env, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "UNEXPECTED ERRORS: 0" in out
    assert "requests by kind, status and error code:" in out
    for kind in ("embed ", "embed4", "search"):
        assert any(line.split()[:2] == [kind.strip(), "200"] for line in out.splitlines()), out
    assert "swaps: " in out and ", failed 0;" in out
    assert "server RSS: " in out and "growth" in out
    assert "RESULT: ok" in out
