"""The background lane: how admin work (the quality gates, the label-free gate's teacher, the
shadow, the warm-up) reaches the encoders.

Never beside live traffic: each call is cut into chunks of at most `max_tokens` tokens (by the
encoders' own counts; a longer single text is its own chunk), and each chunk runs on the
batcher's worker (`Batcher.background`) only while no live request waits. A live request then
waits behind at most one chunk, on the same thread and OpenMP team as every batch, and no admin
thread ever calls an encoder, so none holds a lock the event loop takes (the tokenizer's).

Called from worker threads (`anyio.to_thread`), never from the event loop: it blocks until its
chunks are done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from encoders import Encoder, InputKind
from service.engine.embedding import EmbedItem, EmbedOutcome
from service.engine.errors import ServiceError

if TYPE_CHECKING:
    from service.engine.batcher import Batcher
    from service.runtime import Runtime

T = TypeVar("T")

_MAX_WINDOW = 64  # texts tokenised to find one chunk's end


def _fit(costs: list[int], budget: int) -> int:
    """How many leading rows fit in `budget` tokens (at least one)."""
    used = 0
    for i, c in enumerate(costs):
        used += c
        if used > budget and i > 0:
            return i
    return len(costs)


class BackgroundLane:
    def __init__(self, batcher: Batcher, runtime: Runtime, max_tokens: int) -> None:
        if max_tokens <= 0:
            raise ValueError("max_tokens must be positive")
        self.batcher = batcher
        self.runtime = runtime
        self.max_tokens = max_tokens

    def run(self, fn: Callable[[], T]) -> T:
        """One chunk on the batcher's worker, behind live traffic; its result or its error."""
        return self.batcher.background(fn).result()

    def _chunks(self, n: int, step: Callable[[int, int], tuple[T, int]]) -> list[T]:
        """Run `step(at, window)` chunk by chunk until `n` rows are done; each step answers
        (its result, rows it consumed), and the next window is twice the last chunk."""
        out: list[T] = []
        at, window = 0, _MAX_WINDOW
        while at < n:
            result, used = self.run(lambda a=at, w=window: step(a, w))  # type: ignore[misc]
            out.append(result)
            at += used
            window = min(_MAX_WINDOW, max(1, 2 * used))
        return out

    def embed(self, item: EmbedItem) -> EmbedOutcome:
        """What `Runtime.embed` would answer for `item` (its adapter, baseline, truncation),
        computed in chunks; raises the first chunk's ServiceError."""
        runtime = self.runtime

        def step(at: int, window: int) -> tuple[EmbedOutcome, int]:
            part = dataclasses.replace(item, texts=item.texts[at : at + window])
            prep = runtime.prepare(part)
            costs = [0] * len(part.texts)
            for rows in prep.parts.values():
                cap = rows.encoder.max_tokens
                for j, i in enumerate(rows.miss):
                    costs[i] += min(rows.tokens.counts[j], cap)
            k = _fit(costs, self.max_tokens)
            if k < len(part.texts):
                prep = runtime.prepare(dataclasses.replace(part, texts=part.texts[:k]))
            (out,) = runtime.run_prepared([prep])
            if isinstance(out, ServiceError):
                raise out
            return out, k

        if not item.texts:
            raise ValueError("nothing to embed")
        parts = self._chunks(len(item.texts), step)
        first = parts[0]
        return dataclasses.replace(
            first,
            vectors=np.concatenate([p.vectors for p in parts]),
            token_counts=[c for p in parts for c in p.token_counts],
            truncated=[t for p in parts for t in p.truncated],
            degraded=next((p.degraded for p in parts if p.degraded), None),
        )

    def encode(self, encoder: Encoder, texts: list[str], kind: InputKind) -> np.ndarray:
        """`encoder`'s own vectors of `texts` (no adapter, cut to its limit): float32 rows."""

        def step(at: int, window: int) -> tuple[np.ndarray, int]:
            part = texts[at : at + window]
            cap = encoder.max_tokens
            k = _fit([min(c, cap) for c in encoder.count_tokens(part, kind)], self.max_tokens)
            vectors = encoder.encode(part[:k], kind, truncate=True).vectors
            return np.asarray(vectors, dtype=np.float32), k

        if not texts:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return np.concatenate(self._chunks(len(texts), step))
