"""The quality gate's statistics (adapters/gate.py): nDCG@10, paired bootstrap, decision rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adapters.gate import (
    GateReport,
    format_report,
    ndcg_at_k,
    paired_bootstrap,
    run_gate,
)
from training.evaluate import per_query


def scores(values: list[float] | np.ndarray) -> dict[str, float]:
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_ndcg_matches_trec_conventions_by_hand():
    rel = {"a": 1, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], rel) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "d"], rel) == 0.0
    assert ndcg_at_k([], rel) == 0.0
    assert ndcg_at_k(["a"], {}) == 0.0  # no relevant document: nothing to find
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(["c", "a", "x", "b"], rel) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / ideal
    )
    # rank 11 is past the cutoff; a repeated id counts once
    assert ndcg_at_k([f"x{i}" for i in range(10)] + ["a"], rel) == 0.0
    assert ndcg_at_k(["a", "a", "b"], rel) == pytest.approx((1 + 1 / math.log2(4)) / ideal)


def test_ndcg_equals_the_training_evaluation_with_ranx():
    rng = np.random.default_rng(3)
    docs = [f"d{i}" for i in range(40)]
    run, qrels, mine = {}, {}, {}
    for q in range(25):
        ranked = list(rng.permutation(docs)[:10])
        rel = {str(d): 1 for d in rng.choice(docs, size=int(rng.integers(1, 4)), replace=False)}
        run[f"q{q}"] = {d: 10.0 - i for i, d in enumerate(ranked)}
        qrels[f"q{q}"] = rel
        mine[f"q{q}"] = ndcg_at_k(ranked, rel)
    theirs = per_query(run, qrels, "ndcg@10")
    assert theirs.keys() == mine.keys()
    for q in mine:
        assert mine[q] == pytest.approx(theirs[q], abs=1e-9)


def test_identical_runs_show_no_difference_and_pass():
    base = np.random.default_rng(0).uniform(0, 1, 50)
    report = run_gate(scores(base), scores(base), scores(base), threshold=0.01)
    for cmp in (report.vs_baseline, report.vs_current):
        assert cmp is not None
        assert cmp.delta == 0.0 and cmp.ci_low == 0.0 and cmp.ci_high == 0.0
        assert cmp.p_value == 1.0 and not cmp.regression
    assert report.decision == "accept" and report.reasons == []
    assert report.candidate_ndcg == pytest.approx(base.mean())


def test_a_planted_regression_is_refused_with_its_numbers():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.3, 1.0, 60)
    worse = np.clip(base - rng.uniform(0.05, 0.3, 60), 0, 1)
    report = run_gate(scores(worse), scores(base), threshold=0.01)
    cmp = report.vs_baseline
    assert report.decision == "refuse"
    assert cmp.regression and cmp.delta < -0.05 and cmp.ci_high < 0 and cmp.p_value < 0.01
    assert report.vs_current is None and report.current_ndcg is None
    assert report.baseline_ndcg == pytest.approx(base.mean())
    (reason,) = report.reasons
    assert "below the document model alone" in reason and "0.0100" in reason
    assert "REFUSE" in format_report(report)


def test_a_planted_gain_is_accepted():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.0, 0.7, 60)
    better = np.clip(base + rng.uniform(0.0, 0.3, 60), 0, 1)
    report = run_gate(scores(better), scores(base), threshold=0.01)
    assert report.decision == "accept"
    assert report.vs_baseline.delta > 0 and report.vs_baseline.ci_low > 0


def test_worse_than_the_current_adapter_is_refused_even_above_baseline():
    rng = np.random.default_rng(4)
    base = rng.uniform(0.0, 0.4, 80)
    current = base + 0.4
    candidate = base + 0.2  # better than the baseline, clearly worse than what the tenant has
    report = run_gate(scores(candidate), scores(base), scores(current), threshold=0.01)
    assert report.decision == "refuse"
    assert not report.vs_baseline.regression
    assert report.vs_current is not None and report.vs_current.regression
    assert report.current_ndcg == pytest.approx(current.mean())
    assert len(report.reasons) == 1 and "current adapter" in report.reasons[0]


def test_a_drop_within_the_threshold_or_the_noise_is_accepted():
    rng = np.random.default_rng(5)
    base = rng.uniform(0.2, 0.9, 400)
    # a real but small drop (0.5 points): the CI is below 0, the mean within the threshold
    small = base - 0.005
    report = run_gate(scores(small), scores(base), threshold=0.01)
    assert report.vs_baseline.ci_high < 0 and report.decision == "accept"
    # a large mean drop on 3 noisy queries: the CI straddles 0, not a proven regression
    noisy = run_gate(
        scores([0.0, 1.0, 0.2]), scores([1.0, 0.4, 0.3]), threshold=0.01, n_resamples=500
    )
    assert noisy.vs_baseline.delta < -0.01 and noisy.vs_baseline.ci_high > 0
    assert noisy.decision == "accept"
    # threshold 0: any significant drop is refused
    strict = run_gate(scores(small), scores(base), threshold=0.0)
    assert strict.decision == "refuse"


def test_bootstrap_is_seeded_and_deterministic():
    d = np.random.default_rng(6).normal(-0.02, 0.1, 300)
    a = paired_bootstrap(d, n_resamples=2000, seed=0)
    b = paired_bootstrap(d, n_resamples=2000, seed=0)
    c = paired_bootstrap(d, n_resamples=2000, seed=1)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.mean == pytest.approx(d.mean())
    assert a.ci_low < a.mean < a.ci_high
    # the percentile CI is close to the normal approximation for this many queries
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert a.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se + 1e-3)
    # more resamples than one block of indices holds: still deterministic
    big = np.random.default_rng(7).normal(0, 1, 30_000)
    assert paired_bootstrap(big, 200, seed=3) == paired_bootstrap(big, 200, seed=3)


def test_report_round_trips_and_bad_inputs_are_refused():
    base = scores([0.5, 0.6, 0.7])
    report = run_gate(base, base, threshold=0.01, candidate_id="abc", validation_sha256="f" * 64)
    assert GateReport.model_validate_json(report.model_dump_json()) == report
    assert report.candidate_id == "abc" and report.n_queries == 3
    with pytest.raises(ValueError, match="different queries"):
        run_gate(base, {"x": 1.0, "q1": 0.6, "q2": 0.7}, threshold=0.01)
    with pytest.raises(ValueError, match="no scored"):
        run_gate({}, {}, threshold=0.01)
    with pytest.raises(ValueError, match="threshold"):
        run_gate(base, base, threshold=-0.1)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([0.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        paired_bootstrap([])
