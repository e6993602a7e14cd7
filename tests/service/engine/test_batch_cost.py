"""The batch cost model behind admission control's estimated wait."""

from __future__ import annotations

import random

import pytest

from service.engine.batch_cost import BatchCostModel


def test_untrained_model_predicts_nothing():
    m = BatchCostModel()
    assert not m.trained
    assert m.seconds(500, 256) == 0.0


def test_one_batch_size_is_proportional():
    m = BatchCostModel()
    for _ in range(5):
        m.observe(100, 0.5)
    assert m.per_batch == 0.0
    assert m.per_token == pytest.approx(0.005)
    assert m.seconds(200, 1000) == pytest.approx(1.0)


def test_fixed_and_per_token_costs_are_separated():
    """Batches of varied sizes on a 30 ms + 2 ms/token encoder (with 5% noise)."""
    rng = random.Random(0)
    m = BatchCostModel()
    for _ in range(60):
        tokens = rng.randint(10, 400)
        m.observe(tokens, (0.030 + 0.002 * tokens) * rng.uniform(0.95, 1.05))
    assert m.per_batch == pytest.approx(0.030, abs=0.012)
    assert m.per_token == pytest.approx(0.002, rel=0.1)
    # a lone short query costs mostly the fixed part: a per-token mean would say far less
    assert m.seconds(15, 256) == pytest.approx(0.060, rel=0.2)
    # 1000 queued tokens in batches of at most 256: 4 fixed costs
    assert m.seconds(1000, 256) == pytest.approx(4 * 0.030 + 2.0, rel=0.1)


def test_recent_batches_count_most():
    """The machine slows down 3x: the estimate follows within a few batches."""
    m = BatchCostModel()
    for t in (20, 100, 200) * 10:
        m.observe(t, 0.01 + 0.001 * t)
    for t in (20, 100, 200) * 5:
        m.observe(t, 3 * (0.01 + 0.001 * t))
    assert m.seconds(100, 256) == pytest.approx(3 * 0.11, rel=0.15)


def test_noise_never_gives_a_negative_fixed_cost():
    m = BatchCostModel()
    for tokens, s in ((10, 0.001), (100, 0.5), (200, 0.9)):
        m.observe(tokens, s)
    assert m.per_batch >= 0.0
    assert m.per_token is not None and m.per_token > 0
