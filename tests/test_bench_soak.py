"""bench/soak.py runs end to end for a few seconds with the tiny models (the real run is 10 min)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from encoders import EncoderSpec

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak_with_tiny_models_reports_zero_unexpected_errors(
    tmp_path: Path, query_spec: EncoderSpec, doc_spec: EncoderSpec
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("QUERYLIFT_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TMPDIR": str(tmp_path),  # the bench's work folder (store, Qdrant, server log)
            "QUERYLIFT_QUERY_ENCODER__NAME": query_spec.name,
            "QUERYLIFT_QUERY_ENCODER__PATH": query_spec.path,
            "QUERYLIFT_QUERY_ENCODER__POOLING": query_spec.pooling.value,
            "QUERYLIFT_QUERY_ENCODER__QUERY_TEMPLATE": query_spec.query_template,
            "QUERYLIFT_QUERY_ENCODER__DEFAULT_INSTRUCTION": query_spec.default_instruction,
            "QUERYLIFT_QUERY_ENCODER__MAX_TOKENS": str(query_spec.max_tokens),
            "QUERYLIFT_DOCUMENT_ENCODER__NAME": doc_spec.name,
            "QUERYLIFT_DOCUMENT_ENCODER__PATH": doc_spec.path,
            "QUERYLIFT_DOCUMENT_ENCODER__MAX_TOKENS": str(doc_spec.max_tokens),
        }
    )
    args = ["--duration", "6", "--rate", "5", "--warmup", "2", "--window", "3"]
    args += ["--docs", "30", "--swap-every", "1", "--max-query-words", "12"]
    args += ["--max-rss-growth-pct", "100"]  # seconds of tiny-model load: growth is noise here
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "UNEXPECTED ERRORS: 0" in out
    assert "requests by kind, status and error code:" in out
    for kind in ("embed ", "embed4", "search"):
        assert any(line.split()[:2] == [kind.strip(), "200"] for line in out.splitlines()), out
    assert "swaps: " in out and ", failed 0;" in out
    assert "server RSS: " in out and "growth" in out
    assert "RESULT: ok" in out
