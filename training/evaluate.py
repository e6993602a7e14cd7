"""Retrieval evaluation: exact search over cached vectors, metrics computed by ranx.

Conventions (the same as BEIR / pytrec_eval):
- Only queries with at least one relevant document (relevance > 0) in the qrels are scored;
  run entries for other queries are ignored.
- A scored query that is missing from the run, or has an empty result list, scores 0.
- nDCG uses linear gains (rel / log2(rank + 1)), as trec_eval does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRICS = ("ndcg@10", "recall@100", "mrr@10")

# Bytes one (query, document) score may cost while searching: the float32 score, the int64
# index argpartition returns, and slack for temporaries.
_BYTES_PER_SCORE = 16
_SCORE_BUDGET = 256 << 20  # ~256 MB of scores (and their indices) alive at once
_DOC_BLOCK_BUDGET = 64 << 20  # docs converted to float32 a block at a time when not float32


def _chunk_rows(n_docs: int, budget: int = _SCORE_BUDGET) -> int:
    return max(1, budget // (max(1, n_docs) * _BYTES_PER_SCORE))


def exact_search(
    queries: np.ndarray,
    docs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int = 100,
    exclude: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Top-k documents per query by dot product (cosine for L2-normalised inputs).

    Returns {query id: {doc id: score}} with each inner dict in rank order. Queries are scored
    in chunks so the score matrix never exceeds ~256 MB; `docs` that are not float32 (the fp16
    cache) are converted block by block, never as a whole. `exclude` maps a query id to doc
    ids that must not be returned for it (ids not in `doc_ids` are ignored).
    """
    queries = np.asarray(queries)
    docs = np.asarray(docs)
    if queries.ndim != 2 or docs.ndim != 2:
        raise ValueError(f"expected 2-D arrays, got queries {queries.shape} and docs {docs.shape}")
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(
            f"dimension mismatch: queries are {queries.shape[1]}-d, docs are {docs.shape[1]}-d"
        )
    if len(query_ids) != len(queries):
        raise ValueError(f"{len(query_ids)} query ids for {len(queries)} query vectors")
    if len(doc_ids) != len(docs):
        raise ValueError(f"{len(doc_ids)} doc ids for {len(docs)} document vectors")
    if len(set(query_ids)) != len(query_ids):
        raise ValueError("duplicate query ids")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_docs = len(docs)
    run: dict[str, dict[str, float]] = {}
    if n_docs == 0:
        return {str(q): {} for q in query_ids}
    k = min(k, n_docs)
    doc_index = {str(d): i for i, d in enumerate(doc_ids)} if exclude else {}
    docs_f32 = docs.dtype == np.float32
    doc_block = max(1, _DOC_BLOCK_BUDGET // (docs.shape[1] * 4))
    rows = _chunk_rows(n_docs)

    for start in range(0, len(queries), rows):
        q = np.asarray(queries[start : start + rows], dtype=np.float32)
        if docs_f32:
            scores = q @ docs.T
        else:
            scores = np.empty((len(q), n_docs), dtype=np.float32)
            for b in range(0, n_docs, doc_block):
                block = np.asarray(docs[b : b + doc_block], dtype=np.float32)
                scores[:, b : b + doc_block] = q @ block.T
        ids = [str(x) for x in query_ids[start : start + rows]]
        if exclude:
            for r, qid in enumerate(ids):
                drop = [doc_index[str(d)] for d in exclude.get(qid, ()) if str(d) in doc_index]
                if drop:
                    scores[r, drop] = -np.inf
        if k < n_docs:
            top = np.argpartition(scores, n_docs - k, axis=1)[:, n_docs - k :]
        else:
            top = np.broadcast_to(np.arange(n_docs), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        # Rank by score, ties by document position: the same inputs always give the same run.
        order = np.lexsort((top, -top_scores), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        del scores
        if np.isnan(top_scores).any():
            raise ValueError("NaN scores: the query or document vectors are not finite")
        for r, qid in enumerate(ids):
            keep = top_scores[r] != -np.inf  # excluded documents
            run[qid] = {
                str(doc_ids[i]): float(s)
                for i, s in zip(top[r][keep].tolist(), top_scores[r][keep].tolist(), strict=True)
            }
    return run


def _scorable(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """The qrels of queries with at least one relevant document (relevance > 0 only)."""
    out: dict[str, dict[str, int]] = {}
    for qid, docs in qrels.items():
        rel = {str(d): int(r) for d, r in docs.items() if r > 0}
        if rel:
            out[str(qid)] = rel
    return out


def _check_metrics(metrics: Iterable[str]) -> list[str]:
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("no metrics requested")
    for m in metrics:
        if not isinstance(m, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*(@\d+)?(-l\d+)?", m):
            raise ValueError(f"bad metric name {m!r} (expected e.g. 'ndcg@10')")
    return metrics


def _ranx_scores(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str],
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Per-query scores {metric: {query id: score}} over the scorable queries of `qrels`.

    ranx is given plain dicts (its documented input) with doc ids replaced by small integer
    tokens. Its `Qrels`/`Run` objects store ids as numpy "<U{longest id}" arrays, so numba
    compiles its kernels again for every new pair of id widths (measured: ~20-40 s each, and
    several seconds per process even when cached); the dict path has a single signature, and
    integer tokens keep ids exact (ranx hashes dict keys into float64: lossless for small
    integers, while hashed strings could in principle collide).
    """
    import numba
    import ranx

    gold = _scorable(qrels)
    if not gold:
        raise ValueError("no query in the qrels has a relevant document; nothing to evaluate")
    scores: dict[str, dict[str, float]] = {m: dict.fromkeys(gold, 0.0) for m in metrics}
    vocab: dict[str, int] = {}

    def token(doc_id: Any) -> int:
        return vocab.setdefault(str(doc_id), len(vocab))

    # Only the scored queries; a query missing from the run (or with no results) keeps its 0:
    # every ranking metric is 0 for an empty list, and ranx cannot type an empty one.
    gold_t: dict[str, dict[int, int]] = {}
    run_t: dict[str, dict[int, float]] = {}
    for qid, rel in gold.items():
        res = run.get(qid)
        if res:
            gold_t[qid] = {token(d): r for d, r in rel.items()}
            run_t[qid] = {token(d): float(sc) for d, sc in res.items()}
    if not run_t:
        return list(gold), scores
    threads = numba.get_num_threads()
    try:
        with warnings.catch_warnings():
            # numba warns about an int cast while compiling ranx's kernels; it is harmless.
            warnings.filterwarnings("ignore", message=".*unsafe cast.*")
            # Always >= 2 names: ranx 0.3 returns a wrong key for one metric with
            # return_mean=False; a repeated name is computed once.
            names = list(dict.fromkeys(metrics))
            values = ranx.evaluate(
                gold_t, run_t, names * (2 if len(names) == 1 else 1), return_mean=False
            )
    finally:
        numba.set_num_threads(threads)  # ranx drops to 1 thread for < 10 queries, for good
    for m in metrics:
        for qid, value in zip(run_t, values[m], strict=True):
            scores[m][qid] = float(value)
    return list(gold), scores


def evaluate_run(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Iterable[str] = METRICS,
) -> dict[str, float]:
    """Mean of each metric over the queries of `qrels` that have a relevant document."""
    metrics = _check_metrics(metrics)
    qids, scores = _ranx_scores(run, qrels, metrics)
    return {m: float(np.mean([scores[m][q] for q in qids])) for m in metrics}


def per_query(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metric: str = "ndcg@10",
) -> dict[str, float]:
    """{query id: score} for one metric over the scored queries (for paired bootstrap tests)."""
    (metric,) = _check_metrics([metric])
    _, scores = _ranx_scores(run, qrels, [metric])
    return scores[metric]


def _max_cutoff(metrics: Sequence[str]) -> int:
    cutoffs = [int(c.group(1)) for m in metrics if (c := re.search(r"@(\d+)", m))]
    return max(cutoffs, default=0)


def vector_scores(
    queries: np.ndarray,
    docs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Iterable[str] = METRICS,
    k: int = 100,
) -> dict[str, dict[str, float]]:
    """{metric: {query id: score}} by exact search; only queries with relevant documents.

    The per-query numbers behind `evaluate_vectors` (its means) and the paired bootstrap of
    the quality gate, so the table and the gate score queries the same way. Every such query
    needs a vector (a missing one is an error, not a silent zero). The search depth is at
    least the largest metric cutoff, so recall@100 is never cut short by `k`.
    """
    metrics = _check_metrics(metrics)
    gold = _scorable(qrels)
    position = {str(q): i for i, q in enumerate(query_ids)}
    missing = [q for q in gold if q not in position]
    if missing:
        raise ValueError(
            f"{len(missing)} queries with qrels have no vector, e.g. {sorted(missing)[:5]}"
        )
    rows = [position[q] for q in gold]
    queries = np.asarray(queries)
    run = exact_search(queries[rows], docs, list(gold), doc_ids, k=max(k, _max_cutoff(metrics)))
    return _ranx_scores(run, gold, metrics)[1]


def evaluate_vectors(
    queries: np.ndarray,
    docs: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Iterable[str] = METRICS,
    k: int = 100,
) -> dict[str, float]:
    """Each metric's mean over the queries of `vector_scores` (the same numbers as
    `evaluate_run` on its exact-search run)."""
    return mean_scores(vector_scores(queries, docs, query_ids, doc_ids, qrels, metrics, k))


def mean_scores(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{metric: mean over queries} of {metric: {query id: score}}."""
    return {m: float(np.mean(list(per_q.values()))) for m, per_q in scores.items()}
