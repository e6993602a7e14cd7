"""Warm-up: forward passes before /readyz says ready, so the first request is not the cold one.

A fresh process pays once for what no request should: torch's first kernels and allocations
for each batch shape, tokenizer caches, an adapter's first matmul, a local Qdrant's first
query. One pass per encoder and kind at a few lengths, plus a small batch, covers the shapes a
query meets; one search per collection warms Qdrant; each tenant's adapter is applied once as
it is bound (`adapters.apply.check_finite_output`), so an activation is warm before it serves too.
Each forward pass is one chunk of the batcher's background lane: on the thread that serves
batches (torch keeps an OpenMP team per calling thread, and a warm-up on another thread left a
second team that cost every later request ~2 ms on 2 cores), and behind any live request.
bench/first_request.py measures the first request after ready against the steady state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from encoders import Encoder, InputKind

if TYPE_CHECKING:
    from service.runtime import Runtime

log = logging.getLogger(__name__)

# words per warm-up text: a short query, a long query, a passage (cut to max_tokens)
LENGTHS = (4, 48, 400)
BATCH = 8
_WORDS = (
    "what does the evidence say about how vitamin intake changes the immune response of "
    "patients in a randomised clinical study of infection and recovery"
).split()


def warm_texts(words: int) -> str:
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(words))


@dataclass
class WarmUp:
    """State of the warm-up, read by /readyz: running, done (with seconds), or failed."""

    done: threading.Event = field(default_factory=threading.Event)
    seconds: float | None = None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return f"failed: {self.error}"
        return "ok" if self.done.is_set() else "running"


def _wait_ready(encoder: Encoder, timeout_s: float, stop: threading.Event) -> bool:
    """An encoder that starts in the background (vLLM) is warmed once it is up."""
    deadline = time.monotonic() + timeout_s
    while not encoder.ready:
        if stop.is_set() or time.monotonic() > deadline or not encoder.alive:
            return False
        stop.wait(0.2)
    return True


def warm_passes(encoder: Encoder, kinds: tuple[InputKind, ...]) -> list[Callable[[], object]]:
    """The forward passes that warm `encoder`, one callable each (one background chunk)."""
    passes: list[Callable[[], object]] = []
    for kind in kinds:
        for words in LENGTHS:
            passes.append(lambda k=kind, w=words: encoder.encode([warm_texts(w)], k, truncate=True))
        passes.append(
            lambda k=kind: encoder.encode([warm_texts(LENGTHS[1])] * BATCH, k, truncate=True)
        )
    return passes


def warm_searches(runtime: Runtime) -> None:
    """One search per collection a tenant searches: a local-mode Qdrant's first query took
    about 350 ms more than the next ones. A collection that cannot serve is skipped (/readyz
    and /search say why, as before)."""
    seen: set[tuple[str, str | None]] = set()
    for target in runtime.targets.values():
        if (target.collection, target.vector) in seen:
            continue
        seen.add((target.collection, target.vector))
        dim = runtime.served_dim(target.tenant)
        try:
            runtime.gateway.search(
                target, [dim**-0.5] * dim, client_filter=None, limit=1, with_payload=False
            )
        except Exception as e:  # missing, wrong size, Qdrant down: not the warm-up's to judge
            log.debug("warm-up search of %s skipped: %s", target.collection, e)


def run_warm_up(
    state: WarmUp,
    runtime: Runtime,
    stop: threading.Event,
    timeout_s: float = 1800.0,
    execute: Callable[[Callable[[], object]], object] | None = None,
) -> None:
    """Warm both encoders for every kind they serve, then each collection's first search;
    never raises (the state says why). `execute` runs one pass (BackgroundLane.run in the
    service); None runs them here."""
    t0 = time.perf_counter()
    query_encoder, document_encoder = runtime.query_encoder, runtime.document_encoder
    plan: list[tuple[Encoder, tuple[InputKind, ...]]] = [(query_encoder, ("query",))]
    if document_encoder is query_encoder:
        plan = [(query_encoder, ("query", "document"))]
    else:  # the document encoder also answers the queries of tenants without an adapter
        plan.append((document_encoder, ("document", "query")))
    try:
        for encoder, kinds in plan:
            if not _wait_ready(encoder, timeout_s, stop):
                if stop.is_set():
                    return
                state.error = f"{encoder.name} did not become ready"
                return
            for forward in warm_passes(encoder, kinds):
                if stop.is_set():
                    return
                if execute is None:
                    forward()
                else:
                    execute(forward)
        warm_searches(runtime)
    except Exception as e:  # an encoder that cannot encode is reported, not raised
        state.error = f"{type(e).__name__}: {e}"
        log.exception("warm-up failed")
        return
    state.seconds = time.perf_counter() - t0
    state.done.set()
    log.info("warm-up done in %.2fs", state.seconds)
