"""The label-free rule, shared by training (distillation) and the service (the label-free gate).

Without labels the big model is the teacher: for a query, the small index's top candidates are
re-scored with the big model on both sides (its query vector against its own vectors of the
candidates' text), and an adapter is judged by how well its ranking of those same candidates
agrees with the teacher's. Pure numpy on vectors the caller computed, so `training/` and
`service/` apply one rule.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = 100  # candidates per query from the small index
AGREEMENT_CUTOFF = 10  # agreement = nDCG@10 of the student's ranking against the teacher's


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def candidates(query_small: np.ndarray, docs_small: np.ndarray, k: int = CANDIDATES) -> np.ndarray:
    """Row i: indices (into `docs_small`) of query i's top-k documents by the small model's
    cosine, best first: what the tenant's index returns today."""
    scores = _unit(query_small) @ _unit(docs_small).T
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def teacher_scores(query_big: np.ndarray, candidate_docs_big: np.ndarray) -> np.ndarray:
    """The teacher's cosine of each query to each of its candidates.

    `query_big`: (n, D); `candidate_docs_big`: (n, k, D), the big model's vectors of each
    query's candidates in `candidates` order. Returns (n, k)."""
    q = _unit(query_big)
    d = _unit(candidate_docs_big)
    return np.einsum("nd,nkd->nk", q, d)


def student_scores(query_adapted: np.ndarray, candidate_docs_small: np.ndarray) -> np.ndarray:
    """The adapter's cosine of each query to each of its candidates (small-model document
    vectors, as the index holds them): (n, D') and (n, k, D') -> (n, k)."""
    return np.einsum("nd,nkd->nk", _unit(query_adapted), _unit(candidate_docs_small))


def agreement(
    student: np.ndarray, teacher: np.ndarray, cutoff: int = AGREEMENT_CUTOFF
) -> np.ndarray:
    """Per query, nDCG@cutoff of the student's ranking of the candidates with the teacher's
    top-`cutoff` as graded relevance (the teacher's first gets `cutoff`, its last 1, the rest
    0). 1.0: the student orders the teacher's top-cutoff exactly as the teacher does."""
    student = np.asarray(student, dtype=np.float64)
    teacher = np.asarray(teacher, dtype=np.float64)
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(
            f"scores must be (queries, candidates); got {student.shape}, {teacher.shape}"
        )
    n, k = teacher.shape
    c = min(cutoff, k)
    gains = np.zeros((n, k))
    best = np.argsort(-teacher, axis=1, kind="stable")[:, :c]
    np.put_along_axis(gains, best, np.arange(c, 0, -1, dtype=np.float64)[None, :], axis=1)
    discount = 1.0 / np.log2(np.arange(2, c + 2))
    picked = np.argsort(-student, axis=1, kind="stable")[:, :c]
    dcg = (np.take_along_axis(gains, picked, axis=1) * discount).sum(axis=1)
    ideal = (np.arange(c, 0, -1, dtype=np.float64) * discount).sum()
    return dcg / ideal
