"""bench/search_scale.py: exact search and recall arithmetic, the extrapolations, and a tiny run
end to end (a few hundred synthetic vectors, HNSW forced by a small exact threshold, a live
`querylift serve` with the embedded models; the real run takes about an hour)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.search_scale import (
    LocalRow,
    Real,
    exact_topk,
    mixed_set,
    predicted_build_s,
    recall_at_k,
    ten_minute_size,
)
from tests.bench.conftest import run_bench
from tests.conftest import MODELS, REPO, needs_embedded_models


def test_exact_topk_in_chunks_is_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    ids, scores = exact_topk(base, queries, k=10, chunk=64)  # 16 chunks, the last partial
    full = queries @ base.T
    want = np.argsort(-full, axis=1)[:, :10]
    assert np.array_equal(ids, want)
    assert np.allclose(scores, np.take_along_axis(full, want, 1), atol=1e-5)


def test_recall_counts_a_tie_at_the_tenth_score_as_found() -> None:
    exact_ids = np.array([[1, 2, 3], [1, 2, 3]])
    exact_scores = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    got_ids = [[1, 2, 9], [1, 8, 9]]  # 9 ties with 3 (a duplicate); 8 scores below
    got_scores = [[0.9, 0.8, 0.7], [0.9, 0.6, 0.5]]
    rec = recall_at_k(got_ids, got_scores, exact_ids, exact_scores)
    assert rec.tolist() == pytest.approx([1.0, 1 / 3])


def test_local_mode_ten_minutes_from_a_power_law() -> None:
    rows = [LocalRow(10_000, 30.0, 0, 0, 1, 1), LocalRow(20_000, 120.0, 0, 0, 1, 1)]
    b, n10 = ten_minute_size(rows)
    assert b == pytest.approx(2.0)
    assert n10 == pytest.approx(20_000 * 5**0.5)  # 120 s * (n / 20k)^2 = 600 s
    assert ten_minute_size([LocalRow(300, 1.0, 0, 0, 1, 1), LocalRow(600, 0.5, 0, 0, 1, 1)]) == (
        pytest.approx(-1.0),
        None,
    )


def test_build_time_is_predicted_n_log_n_from_the_largest_build() -> None:
    assert predicted_build_s(10, []) is None
    got = predicted_build_s(1_000_000, [(10_000, 5.0), (100_000, 60.0)])
    assert got == pytest.approx(60.0 * 10 * 6 / 5)


def test_a_mixed_set_holds_every_real_row_with_its_own_text() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((50, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    real = Real(vecs, [f"sentence {i}" for i in range(50)], vecs[:5], vecs[5:8], ["q"])
    ds = mixed_set(400, real, ["q"], held=20)
    assert ds.n == 400 and ds.kind == "real+synthetic"
    assert {k: len(v) for k, v in ds.gateway_queries.items()} == {"held": 5, "test": 3, "synth": 20}
    for i in range(50):  # each real vector is in the base once, next to its own sentence
        (rows,) = np.nonzero(np.all(ds.base == vecs[i], axis=1))
        assert len(rows) == 1 and ds.text(int(rows[0])) == f"sentence {i}"
    assert np.array_equal(mixed_set(400, real, ["q"], held=20).base, ds.base)  # seeded


@pytest.mark.models
@needs_embedded_models
def test_a_tiny_search_scale_run_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("QUERYLIFT_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TMPDIR": str(tmp_path)})
    env["QUERYLIFT_QDRANT_EXACT_BELOW_KB"] = "100"  # 400 x 384-d is 600 KB: HNSW is built
    out = tmp_path / "scale"
    args = ["--models", str(MODELS), "--sizes", "400", "--local-sizes", "200"]
    args += ["--service-queries", "12", "--warmup", "2", "--synthetic-queries", "30"]
    args += ["--local-queries", "10", "--work", str(tmp_path / "work"), "--out", str(out)]
    proc = run_bench("search_scale", args, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    (row,) = report["rows"]
    assert row["data"] == "synthetic" and row["n"] == 400
    assert row["built"]["exact"] is False and row["built"]["indexed_vectors"] == 400
    assert row["build_s"] > 0 and row["upsert_s"] > 0 and row["disk_mb"] > 0
    gw = row["gateway"]["synth"]
    assert gw["queries"] == 30 and gw["recall"] >= 0.9
    svc = row["service"]
    assert svc["statuses"] == {"/embed 200": 14, "/search 200": 14}  # 2 warm-up + 12 each
    assert svc["recall"] >= 0.9  # the served answers against exact search on /embed's vectors
    assert 0 < svc["step_p50_ms"] < svc["search_p50_ms"]
    assert len(svc["raw_ms"]["search"]) == 12 and "paired_diff_p50_ms" in svc
    mem = svc["memory_mb"]
    assert mem["processes"]["serve"]["VmRSS"] > 100
    assert len(mem["processes"]) >= 3  # serve, the fork server, the engine process
    assert mem["total"]["VmRSS"] == pytest.approx(
        sum(p["VmRSS"] for p in mem["processes"].values())
    )
    assert row["in_process"]["synth"]["recall"] == gw["recall"]  # one engine, two doors
    (local,) = report["local_mode"]
    assert local["n"] == 200 and local["recall"] == 1.0  # local mode searches exactly
    md = out.with_suffix(".md").read_text()
    assert "| synthetic | 400 |" in md and "| local mode n |" in md
    assert not list((tmp_path / "work").glob("scale-*"))  # shard folders removed
