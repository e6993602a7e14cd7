"""Exact search and ranx-backed metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import evaluate as ev
from training.evaluate import METRICS, evaluate_run, evaluate_vectors, exact_search, per_query


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(q: np.ndarray, d: np.ndarray, qids, dids, k: int) -> dict[str, list[str]]:
    scores = q.astype(np.float64) @ d.astype(np.float64).T
    return {qid: [dids[j] for j in np.argsort(-scores[i])[:k]] for i, qid in enumerate(qids)}


@pytest.fixture
def vectors() -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    rng = np.random.default_rng(0)
    q, d = _unit(rng, 37, 16), _unit(rng, 211, 16)
    return q, d, [f"q{i}" for i in range(37)], [f"d{i}" for i in range(211)]


@pytest.mark.parametrize("k", [1, 10, 100, 211, 500])
def test_exact_search_matches_brute_force(vectors, k: int) -> None:
    q, d, qids, dids = vectors
    run = exact_search(q, d, qids, dids, k=k)
    expect = _brute(q, d, qids, dids, k)
    assert list(run) == qids
    for i, qid in enumerate(qids):
        assert list(run[qid]) == expect[qid]
        ranked = list(run[qid].values())
        assert ranked == sorted(ranked, reverse=True)
        top = dids.index(expect[qid][0])
        assert run[qid][expect[qid][0]] == pytest.approx(float(q[i] @ d[top]), abs=1e-6)


def test_exact_search_chunks_and_fp16_docs_agree(vectors, monkeypatch) -> None:
    q, d, qids, dids = vectors
    whole = exact_search(q, d, qids, dids, k=20)
    # Force tiny chunks: 2 queries at a time, fp16 docs converted 8 rows at a time.
    monkeypatch.setattr(ev, "_SCORE_BUDGET", 2 * 211 * ev._BYTES_PER_SCORE)
    monkeypatch.setattr(ev, "_DOC_BLOCK_BUDGET", 8 * 16 * 4)
    chunked = exact_search(q, d, qids, dids, k=20)
    assert chunked == whole
    half = exact_search(q, d.astype(np.float16), qids, dids, k=20)
    expect = _brute(q, d.astype(np.float16).astype(np.float32), qids, dids, 20)
    assert {k: list(v) for k, v in half.items()} == expect


def test_chunk_size_stays_within_the_memory_budget() -> None:
    for n_docs in (5183, 100_000, 1_000_000):
        rows = ev._chunk_rows(n_docs)
        assert rows >= 1
        assert rows * n_docs * ev._BYTES_PER_SCORE <= 256 << 20
    assert ev._chunk_rows(100_000) >= 100  # still batched: not one query at a time


def test_exact_search_exclude(vectors) -> None:
    q, d, qids, dids = vectors
    base = exact_search(q, d, qids, dids, k=5)
    drop = {"q0": set(list(base["q0"])[:2]) | {"not-a-doc"}, "q3": {next(iter(base["q3"]))}}
    run = exact_search(q, d, qids, dids, k=5, exclude=drop)
    assert list(run["q0"])[:3] == list(base["q0"])[2:]
    assert not drop["q0"] & set(run["q0"]) and len(run["q0"]) == 5
    assert list(run["q3"])[:4] == list(base["q3"])[1:]
    assert run["q1"] == base["q1"]
    # Excluding nearly everything leaves only what is left, never an excluded doc.
    all_but_two = {"q5": set(dids[2:])}
    only = exact_search(q, d, qids, dids, k=5, exclude=all_but_two)["q5"]
    assert set(only) == {"d0", "d1"}


def test_exact_search_validates_inputs(vectors) -> None:
    q, d, qids, dids = vectors
    with pytest.raises(ValueError, match="16-d, docs are 8-d"):
        exact_search(q, d[:, :8], qids, dids)
    with pytest.raises(ValueError, match="query ids"):
        exact_search(q, d, qids[:-1], dids)
    with pytest.raises(ValueError, match="doc ids"):
        exact_search(q, d, qids, dids[:-1])
    with pytest.raises(ValueError, match="duplicate"):
        exact_search(q[:2], d, ["a", "a"], dids)
    bad = q.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        exact_search(bad, d, qids, dids)


# Hand-computed example:
#   q1: relevant d1 (1), d3 (2); ranked d1, d2, d3  -> DCG 1/log2(2) + 2/log2(4) = 2,
#       IDCG 2/log2(2) + 1/log2(3); RR 1; recall 2/2.
#   q2: relevant d2; ranked d5, d2                  -> nDCG 1/log2(3); RR 1/2; recall 1.
#   q4: relevant d4; missing from the run           -> 0, 0, 0.
#   q3: no relevant document (only a 0 judgement)   -> not scored; q5 is not in the qrels.
QRELS = {"q1": {"d1": 1, "d3": 2}, "q2": {"d2": 1}, "q3": {"d9": 0}, "q4": {"d4": 1}}
RUN = {
    "q1": {"d1": 0.9, "d2": 0.8, "d3": 0.1},
    "q2": {"d5": 0.3, "d2": 0.2},
    "q3": {"d9": 0.5},
    "q5": {"d1": 0.7},
}
NDCG = {"q1": 2 / (2 + 1 / math.log2(3)), "q2": 1 / math.log2(3), "q4": 0.0}


def test_evaluate_run_matches_hand_computed_metrics() -> None:
    got = evaluate_run(RUN, QRELS)
    assert set(got) == set(METRICS)
    assert all(isinstance(v, float) for v in got.values())
    assert got["ndcg@10"] == pytest.approx(sum(NDCG.values()) / 3)
    assert got["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert got["recall@100"] == pytest.approx(2 / 3)
    assert evaluate_run(RUN, QRELS, ["ndcg@10"]) == {"ndcg@10": pytest.approx(got["ndcg@10"])}


def test_per_query_scores() -> None:
    got = per_query(RUN, QRELS)
    assert set(got) == {"q1", "q2", "q4"}
    for qid, value in NDCG.items():
        assert got[qid] == pytest.approx(value)
    assert per_query(RUN, QRELS, "mrr@10") == pytest.approx({"q1": 1.0, "q2": 0.5, "q4": 0.0})


def test_metric_cutoffs_are_respected() -> None:
    # The only relevant document at rank 11 (recall@100 finds it, mrr@10 does not); at rank 101
    # nothing finds it.
    run = {
        "a": {f"x{i}": 1000.0 - i for i in range(150)},
        "b": {f"x{i}": 1000.0 - i for i in range(150)},
    }
    qrels = {"a": {"x10": 1}, "b": {"x100": 1}}
    pq = {m: per_query(run, qrels, m) for m in METRICS}
    assert pq["mrr@10"] == {"a": 0.0, "b": 0.0}
    assert pq["ndcg@10"] == {"a": 0.0, "b": 0.0}
    assert pq["recall@100"] == {"a": 1.0, "b": 0.0}
    assert per_query(run, qrels, "mrr@20")["a"] == pytest.approx(1 / 11)


def test_degenerate_runs_and_qrels() -> None:
    assert evaluate_run({}, {"q": {"d": 1}}) == dict.fromkeys(METRICS, 0.0)
    assert evaluate_run({"q": {}}, {"q": {"d": 1}})["ndcg@10"] == 0.0
    with pytest.raises(ValueError, match="no query in the qrels has a relevant document"):
        evaluate_run({"q": {"d": 1.0}}, {"q": {"d": 0}})
    with pytest.raises(ValueError, match="bad metric"):
        evaluate_run(RUN, QRELS, ["NDCG at 10"])


def test_evaluate_vectors() -> None:
    rng = np.random.default_rng(1)
    docs = _unit(rng, 300, 24)
    dids = [f"d{i}" for i in range(300)]
    # Each query is a noisy copy of one document: retrieval is perfect.
    queries = docs[:50] + 0.01 * rng.standard_normal((50, 24)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    qids = [f"q{i}" for i in range(50)]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}  # q40..q49 have no qrels: not scored
    got = evaluate_vectors(queries, docs, qids, dids, qrels)
    assert got == pytest.approx(dict.fromkeys(METRICS, 1.0))
    # Wrong labels for half of the queries, the relevant doc ranked far away.
    far = {f"q{i}": {f"d{(i + 150) % 300}": 1} for i in range(20)}
    mixed = evaluate_vectors(queries, docs, qids, dids, {**qrels, **far}, metrics=["ndcg@10"])
    assert mixed["ndcg@10"] == pytest.approx(20 / 40, abs=0.05)
    # Search depth follows the largest cutoff, whatever k says.
    deep = evaluate_vectors(queries, docs, qids, dids, far, metrics=["recall@300"], k=10)
    assert deep == {"recall@300": 1.0}
    with pytest.raises(ValueError, match="have no vector"):
        evaluate_vectors(queries[:10], docs, qids[:10], dids, qrels)
