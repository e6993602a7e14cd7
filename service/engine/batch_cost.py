"""How long a batch of N tokens takes, learnt online from the batches the encoder ran.

Admission control refuses a request (429) when the queue ahead of it would take longer than
`max_queue_wait_ms`, so the estimate decides who waits too long. An encoder pass costs a
fixed part (kernel launches, Python, pooling) plus a part per token; a per-token average
alone over-charges small batches and under-charges large ones, which under overload is where
accepted requests slip past their latency target. So the model is affine,
`seconds = per_batch + per_token * tokens`, fitted by exponentially weighted least squares
(recent batches count most: the machine's speed drifts). Until two batch sizes have been
seen it is proportional (`per_batch = 0`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BatchCostModel:
    decay: float = 0.9  # weight of the past per observation (about 10 batches of memory)
    _w: float = 0.0
    _x: float = 0.0
    _y: float = 0.0
    _xx: float = 0.0
    _xy: float = 0.0
    per_batch: float = 0.0
    per_token: float | None = None  # None until the first batch has been timed

    def observe(self, tokens: int, seconds: float) -> None:
        x, y, d = float(max(tokens, 1)), max(seconds, 0.0), self.decay
        self._w = d * self._w + 1.0
        self._x = d * self._x + x
        self._y = d * self._y + y
        self._xx = d * self._xx + x * x
        self._xy = d * self._xy + x * y
        mx, my = self._x / self._w, self._y / self._w
        var = self._xx / self._w - mx * mx
        cov = self._xy / self._w - mx * my
        # batch sizes too alike to separate the two parts: proportional, as a per-token mean
        if var <= (0.05 * mx) ** 2 or cov <= 0:
            self.per_batch, self.per_token = 0.0, my / mx
            return
        slope = cov / var
        intercept = my - slope * mx
        if intercept < 0:  # noise: never predict a negative fixed cost
            self.per_batch, self.per_token = 0.0, my / mx
        else:
            self.per_batch, self.per_token = intercept, slope

    def set(self, *, per_batch: float, per_token: float) -> None:
        """Fix the model (tests, or a value known from a previous run)."""
        self.per_batch, self.per_token = per_batch, per_token

    @property
    def trained(self) -> bool:
        return self.per_token is not None

    def seconds(self, tokens: int, max_tokens_per_batch: int) -> float:
        """Time to encode `tokens` queued tokens, cut into batches of at most
        `max_tokens_per_batch` (0 before any batch has been timed)."""
        if self.per_token is None or tokens <= 0:
            return 0.0
        batches = math.ceil(tokens / max(max_tokens_per_batch, 1))
        return batches * self.per_batch + tokens * self.per_token
