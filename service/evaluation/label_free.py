"""The label-free quality gate: judge an adapter on unlabelled queries, the big model as teacher.

A tenant with no validation set can still be gated: on its uploaded query set (`PUT
/admin/tenants/{tenant}/queries`), else on the held-out share of its query log (texts the
`?split=train` export leaves out, so an adapter distilled on that export never saw them). Per
query (the rule is adapters/teacher.py's, the one distillation trains on):

- candidates: the top-k of the tenant's collection for the document model's own query vector
  (tenant-scoped, with the stored vectors and the payload text);
- teacher: the query encoder on the query and on each candidate's text (input kind document);
- student: each system's served vector (the candidate adapter, the current adapter, the
  document model alone) against the candidates' stored vectors;
- agreement: nDCG@10 of the student's order with the teacher's top-10 as graded relevance.

The decision is the labelled gate's (adapters/gate.py: the paired bootstrap over queries,
QUERYLIFT_GATE_MAX_REGRESSION, QUERYLIFT_GATE_RESAMPLES), on agreement instead of nDCG@10
against labels. The work is capped by settings: at most N queries x (1 + k candidates) rows
through the query encoder, shared candidates embedded once (and kept for the next run:
`TeacherCache`). Agreement is closeness to the teacher, not quality: the yardstick for an
adapter distilled from it, while one trained on labels may beat the teacher and still agree
with it less than the document model does (such a tenant needs a validation set).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from adapters import Adapter
from adapters.gate import Comparison, GateReport
from adapters.teacher import AGREEMENT_CUTOFF, agreement, student_scores, teacher_scores
from service.bindings.tenants import Tenant
from service.engine.background import BackgroundLane
from service.engine.errors import ServiceError
from service.evaluation.errors import GateUnavailable
from service.evaluation.gate import decide, gate_systems, served_vectors
from service.evaluation.records import LabelFreeInfo
from service.evaluation.sets import QuerySet, query_sha256
from service.evaluation.teacher_cache import TeacherCache
from service.ops.query_log import QueryLog
from service.runtime import Runtime

log = logging.getLogger(__name__)

_SAMPLE_SEED = 0  # a query set above the cap is sampled with this seed: same set, same queries


# -- which queries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Unlabelled:
    """The queries one label-free gate run scores."""

    source: Literal["query_set", "query_log"]
    texts: list[str]  # capped at QUERYLIFT_GATE_LABEL_FREE_QUERIES
    available: int  # distinct queries in the source
    sha256: str  # of `texts`: what the gate record cites


def unlabelled_queries(
    runtime: Runtime, tenant: Tenant, query_set: QuerySet | None, query_log: QueryLog | None
) -> Unlabelled | None:
    """The tenant's uploaded query set, else the held-out share of its query log (only while
    its log is on, and with at least QUERYLIFT_GATE_LABEL_FREE_MIN_LOG_QUERIES distinct texts,
    the newest first); None: nothing to gate on."""
    s = runtime.settings
    cap = s.gate_label_free_queries
    if query_set is not None:
        texts = list(query_set.queries)
        if len(texts) > cap:  # a seeded sample, in the set's order: the same set, same queries
            keep = set(random.Random(_SAMPLE_SEED).sample(range(len(texts)), cap))
            texts = [t for i, t in enumerate(texts) if i in keep]
        return Unlabelled("query_set", texts, len(query_set.queries), query_sha256(texts))
    if query_log is None or not query_log.enabled_for(tenant.name):
        return None
    newest: dict[str, None] = {}
    for e in reversed(query_log.entries(tenant.name, "holdout")):
        newest.setdefault(e.text, None)
    if len(newest) < s.gate_label_free_min_log_queries:
        log.info(
            "label-free gate for %s: %d held-out query-log queries, fewer than %d: not gated",
            tenant.name,
            len(newest),
            s.gate_label_free_min_log_queries,
        )
        return None
    texts = list(newest)[:cap]
    return Unlabelled("query_log", texts, len(newest), query_sha256(texts))


# -- the evaluation ----------------------------------------------------------------------------
@dataclass
class _Candidates:
    texts: list[str]
    vectors: np.ndarray  # (k, served dim): as the index stores them


def _candidates(runtime: Runtime, tenant: Tenant, vector: np.ndarray, k: int) -> _Candidates:
    target = runtime.target_for(tenant)
    try:
        hits = runtime.search(tenant, vector, None, k, with_payload=True, with_vectors=True)
    except ServiceError as e:
        if e.code in ("collection_not_found", "collection_dim_mismatch", "search_target_invalid"):
            raise GateUnavailable(e.message) from None
        raise
    texts, vectors = [], []
    for h in hits:
        text = target.text(h.payload)
        if text and h.vector is not None:  # a point without text cannot be asked of the teacher
            texts.append(text)
            vectors.append(h.vector)
    if not vectors:
        return _Candidates([], np.zeros((0, int(vector.shape[0])), dtype=np.float32))
    return _Candidates(texts, np.asarray(vectors, dtype=np.float32))


def _teacher_vectors(
    runtime: Runtime,
    lane: BackgroundLane,
    tenant: str,
    texts: list[str],
    kind: Literal["query", "document"],
    cache: TeacherCache | None,
) -> tuple[np.ndarray, int]:
    """The query encoder's own vectors of `texts` (no adapter): the teacher's side of the rule,
    and how many came from a cache (queries: the service's raw query-vector cache, which the
    served vectors above just filled; documents: `cache`)."""
    enc = runtime.query_encoder
    fp = runtime.fingerprint(enc)
    hits: list[np.ndarray | None]
    if kind == "query":
        found = runtime.query_cache.get_many(tenant, fp, enc.name, enc.format(texts, "query"))
        hits = [h[0] if h is not None else None for h in found]
    else:
        hits = cache.get_many(fp, texts) if cache is not None else [None] * len(texts)
    miss = [i for i, h in enumerate(hits) if h is None]
    fresh = lane.encode(enc, [texts[i] for i in miss], kind)
    if kind == "document" and cache is not None and miss:
        cache.put_many(fp, [texts[i] for i in miss], fresh)
    out = np.empty((len(texts), enc.dim), dtype=np.float32)
    for i, h in enumerate(hits):
        if h is not None:
            out[i] = h
    if miss:
        out[miss] = fresh
    return out, len(texts) - len(miss)


def _reasons(report: GateReport, k: int, n: int, source: str) -> list[str]:
    """The refusal in the label-free gate's own words (run_gate's speak of labels)."""
    out = []
    pairs: tuple[tuple[Comparison | None, str], ...] = (
        (report.vs_baseline, "the document model alone"),
        (report.vs_current, "the current adapter"),
    )
    for cmp, what in pairs:
        if cmp is None or not cmp.regression:
            continue
        out.append(
            f"agreement with the query encoder (nDCG@{AGREEMENT_CUTOFF} against its ranking of "
            f"the top-{k} candidates, {n} unlabelled queries from the {source}) "
            f"{cmp.reference_ndcg + cmp.delta:.4f} is {-cmp.delta:.4f} below {what} "
            f"({cmp.reference_ndcg:.4f}; {report.confidence:.0%} CI of the difference "
            f"{cmp.ci_low:+.4f}..{cmp.ci_high:+.4f}, p={cmp.p_value:.4f}), more than the "
            f"allowed {report.threshold:.4f}"
        )
    return out


def evaluate(
    runtime: Runtime,
    lane: BackgroundLane,
    tenant: Tenant,
    queries: Unlabelled,
    candidate: Adapter,
    current: Adapter | None,
    cache: TeacherCache | None = None,
) -> tuple[GateReport, LabelFreeInfo]:
    """Score the candidate, the current adapter and the document model alone against the
    teacher on `queries`, then decide with the labelled gate's rule."""
    s = runtime.settings
    k = s.gate_label_free_candidates
    t0 = time.perf_counter()
    systems = gate_systems(runtime, tenant, candidate, current, "no candidates to rank")
    collection = runtime.collection_for(tenant)
    served = served_vectors(lane, tenant, systems, queries.texts)
    t1 = time.perf_counter()
    found = [_candidates(runtime, tenant, v, k) for v in served["baseline"]]
    t2 = time.perf_counter()
    scored = [i for i, c in enumerate(found) if len(c.texts) >= 2]
    if not scored:
        raise GateUnavailable(
            f"none of the {len(queries.texts)} unlabelled queries found two or more candidates "
            f"with text in collection {collection!r}"
        )
    doc_texts = list(dict.fromkeys(t for i in scored for t in found[i].texts))
    row = {t: j for j, t in enumerate(doc_texts)}
    teacher_docs, cached_docs = _teacher_vectors(
        runtime, lane, tenant.name, doc_texts, "document", cache
    )
    query_texts = [queries.texts[i] for i in scored]
    teacher_queries, cached_queries = _teacher_vectors(
        runtime, lane, tenant.name, query_texts, "query", cache
    )
    t3 = time.perf_counter()
    scores: dict[str, dict[str, float]] = {sys.key: {} for sys in systems}
    for q_big, i in zip(teacher_queries, scored, strict=True):
        c = found[i]
        teacher = teacher_scores(q_big[None], teacher_docs[[row[t] for t in c.texts]][None])
        for sys in systems:
            student = student_scores(served[sys.key][i][None], c.vectors[None])
            scores[sys.key][f"q{i}"] = float(agreement(student, teacher)[0])
    report = decide(runtime, scores, candidate, current, queries.sha256)
    source = "query set" if queries.source == "query_set" else "query log (held out)"
    report = report.model_copy(update={"reasons": _reasons(report, k, len(scored), source)})
    t4 = time.perf_counter()
    info = LabelFreeInfo(
        source=queries.source,
        teacher=runtime.query_encoder.name,
        queries_available=queries.available,
        queries_used=len(queries.texts),
        queries_scored=len(scored),
        candidates_per_query=k,
        mean_candidates=float(np.mean([len(found[i].texts) for i in scored])),
        teacher_rows=len(doc_texts) + len(scored),
        teacher_cached=cached_docs + cached_queries,
        candidate_agreement=report.candidate_ndcg,
        baseline_agreement=report.baseline_ndcg,
        current_agreement=report.current_ndcg,
        seconds={
            "embed": round(t1 - t0, 4),
            "search": round(t2 - t1, 4),
            "teacher": round(t3 - t2, 4),
            "score": round(t4 - t3, 4),
            "total": round(t4 - t0, 4),
        },
    )
    log.info(
        "label-free gate for %s, adapter %s: %s on %d queries (%s), agreement %.4f vs "
        "baseline %.4f%s, %.2fs",
        tenant.name,
        candidate.id,
        report.decision,
        len(scored),
        queries.source,
        info.candidate_agreement,
        info.baseline_agreement,
        f", current {info.current_agreement:.4f}" if info.current_agreement is not None else "",
        info.seconds["total"],
    )
    return report, info
