"""The quality gate's statistics: per-query nDCG@10 and a paired bootstrap decision.

One decision rule for both callers (the admin activation in the service, `querylift eval
--gate` offline), so an adapter the CLI accepts is the one the service accepts on the same
validation set and rankings.

Decision rule. For each reference system R (the document model's own query vectors, the
"baseline"; and the tenant's current adapter, when it has one) take the per-query differences
d_i = nDCG@10(candidate, q_i) - nDCG@10(R, q_i). The candidate is refused against R when
  1. it is materially worse: mean(d) < -threshold (threshold in nDCG units, 0.01 = 1 point), and
  2. the drop is real: the upper bound of the paired-bootstrap confidence interval of mean(d)
     (percentile method, `confidence` two-sided, seeded resamples of the queries) is below 0.
Both, so a tiny validation set cannot refuse an adapter on noise (its CI straddles 0) and a
large one cannot refuse on a statistically clear but negligible drop. The current adapter is
part of the rule because replacing a good adapter with a worse one hurts the tenant exactly as
much as falling below the baseline does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

METRIC = "ndcg@10"
CUTOFF = 10
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_CONFIDENCE = 0.95
_MAX_INDICES_PER_BLOCK = 1 << 22  # resampled indices alive at once (32 MiB of int64)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = CUTOFF) -> float:
    """nDCG@k of one ranking: linear gains rel / log2(rank + 1), as trec_eval and ranx do.

    Pure Python rather than ranx here: the service scores a few thousand short lists per
    activation, and ranx's numba kernels cost seconds (first use: tens of seconds) to compile
    in a fresh process. tests/adapters/test_gate_statistics.py checks it equals
    training.evaluate (ranx).
    A document id repeated in `ranked` counts once (its first position).
    """
    gains = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    if not gains:
        return 0.0
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    seen: set[str] = set()
    dcg = 0.0
    for i, doc in enumerate(ranked[:k]):
        if doc in seen:
            continue
        seen.add(doc)
        rel = relevant.get(doc, 0)
        if rel > 0:
            dcg += rel / math.log2(i + 2)
    return dcg / ideal


class Bootstrap(BaseModel):
    """Mean of paired differences with its percentile bootstrap CI and two-sided p-value."""

    model_config = ConfigDict(frozen=True)

    mean: float
    ci_low: float
    ci_high: float
    p_value: float = Field(description="two-sided bootstrap p for 'mean difference = 0'")


def paired_bootstrap(
    diff: Sequence[float] | np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Bootstrap:
    """Resample queries with replacement (the pairing is kept: one index picks both systems).

    Deterministic for a seed: the resamples come from numpy's PCG64 in fixed-size blocks.
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("need a non-empty 1-D array of per-query differences")
    if not np.isfinite(d).all():
        raise ValueError("per-query differences must be finite")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(d)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    block = max(1, _MAX_INDICES_PER_BLOCK // n)
    for start in range(0, n_resamples, block):
        m = min(block, n_resamples - start)
        means[start : start + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    # Tiny float noise must not decide a sign: identical systems give exactly zero
    eps = 1e-12
    p = 2.0 * min(float(np.mean(means <= eps)), float(np.mean(means >= -eps)))
    return Bootstrap(mean=float(d.mean()), ci_low=float(lo), ci_high=float(hi), p_value=min(1.0, p))


class Comparison(BaseModel):
    """The candidate against one reference system on the same queries."""

    model_config = ConfigDict(frozen=True)

    against: Literal["baseline", "current"]
    reference_ndcg: float = Field(description="mean nDCG@10 of the reference")
    delta: float = Field(description="mean per-query candidate - reference nDCG@10")
    ci_low: float
    ci_high: float
    p_value: float
    regression: bool = Field(description="delta < -threshold and ci_high < 0")


class GateReport(BaseModel):
    """The gate's numbers and decision (kept by the service per tenant and adapter)."""

    model_config = ConfigDict(frozen=True)

    metric: Literal["ndcg@10"] = METRIC
    n_queries: int
    candidate_ndcg: float
    baseline_ndcg: float
    current_ndcg: float | None = None
    vs_baseline: Comparison
    vs_current: Comparison | None = None
    threshold: float = Field(description="largest tolerated mean drop, in nDCG units")
    confidence: float
    n_resamples: int
    seed: int
    decision: Literal["accept", "refuse"]
    reasons: list[str] = Field(default_factory=list, description="why it was refused")
    candidate_id: str | None = None
    current_id: str | None = None
    validation_sha256: str | None = None
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


def _paired(
    candidate: Mapping[str, float], reference: Mapping[str, float], label: str
) -> tuple[np.ndarray, np.ndarray]:
    if set(candidate) != set(reference):
        only = sorted(set(candidate) ^ set(reference))[:5]
        raise ValueError(f"{label}: per-query scores cover different queries, e.g. {only}")
    ids = sorted(candidate)
    return (
        np.asarray([candidate[q] for q in ids], dtype=np.float64),
        np.asarray([reference[q] for q in ids], dtype=np.float64),
    )


def compare(
    candidate: Mapping[str, float],
    reference: Mapping[str, float],
    against: Literal["baseline", "current"],
    threshold: float,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Comparison:
    """The candidate against one reference: paired bootstrap plus the regression rule."""
    c, r = _paired(candidate, reference, against)
    b = paired_bootstrap(c - r, n_resamples, seed, confidence)
    return Comparison(
        against=against,
        reference_ndcg=float(r.mean()),
        delta=b.mean,
        ci_low=b.ci_low,
        ci_high=b.ci_high,
        p_value=b.p_value,
        regression=b.mean < -threshold and b.ci_high < 0.0,
    )


def run_gate(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float],
    current: Mapping[str, float] | None = None,
    *,
    threshold: float,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = DEFAULT_CONFIDENCE,
    candidate_id: str | None = None,
    current_id: str | None = None,
    validation_sha256: str | None = None,
) -> GateReport:
    """Decide on per-query nDCG@10 ({query id: score}, the same queries for every system).

    `current` is None when the tenant serves the baseline (no adapter): then the baseline is
    the current system and one comparison covers both.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if not candidate:
        raise ValueError("no scored validation queries")
    kw = {"threshold": threshold, "n_resamples": n_resamples, "seed": seed}
    vs_base = compare(candidate, baseline, "baseline", confidence=confidence, **kw)
    vs_cur = (
        compare(candidate, current, "current", confidence=confidence, **kw)
        if current is not None
        else None
    )
    reasons = []
    for cmp, what in ((vs_base, "the document model alone"), (vs_cur, "the current adapter")):
        if cmp is not None and cmp.regression:
            reasons.append(
                f"nDCG@10 {cmp.reference_ndcg + cmp.delta:.4f} is {-cmp.delta:.4f} below "
                f"{what} ({cmp.reference_ndcg:.4f}; {confidence:.0%} CI of the difference "
                f"{cmp.ci_low:+.4f}..{cmp.ci_high:+.4f}, p={cmp.p_value:.4f}), more than the "
                f"allowed {threshold:.4f}"
            )
    return GateReport(
        n_queries=len(candidate),
        candidate_ndcg=float(np.mean(list(candidate.values()))),
        baseline_ndcg=vs_base.reference_ndcg,
        current_ndcg=vs_cur.reference_ndcg if vs_cur is not None else None,
        vs_baseline=vs_base,
        vs_current=vs_cur,
        threshold=threshold,
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        decision="refuse" if reasons else "accept",
        reasons=reasons,
        candidate_id=candidate_id,
        current_id=current_id,
        validation_sha256=validation_sha256,
    )


def format_report(report: GateReport, names: Mapping[str, str] | None = None) -> str:
    """A markdown table of the systems and the decision (for the CLI and logs)."""
    names = dict(names or {})
    ci = f"{report.confidence:.0%} CI"
    lines = [
        f"| system | {report.metric} | candidate - system | {ci} | p |",
        "| :--- | ---: | ---: | :---: | ---: |",
        f"| {names.get('candidate', 'candidate')} (candidate) | {report.candidate_ndcg:.4f} "
        "| | | |",
    ]
    for cmp, label in (
        (report.vs_baseline, names.get("baseline", "document model alone")),
        (report.vs_current, names.get("current", "current adapter")),
    ):
        if cmp is not None:
            lines.append(
                f"| {label} | {cmp.reference_ndcg:.4f} | {cmp.delta:+.4f} | "
                f"{cmp.ci_low:+.4f}..{cmp.ci_high:+.4f} | {cmp.p_value:.4f} |"
            )
    lines += [
        "",
        f"gate: {report.decision.upper()} ({report.n_queries} queries, largest tolerated drop "
        f"{report.threshold:.4f}, {report.n_resamples} bootstrap resamples, seed {report.seed})",
        *(f"  - {r}" for r in report.reasons),
    ]
    return "\n".join(lines)
