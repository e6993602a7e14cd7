"""Warm-up: forward passes before /readyz says ready, so the first request is not the cold one.

A fresh process pays once for what no request should: torch's first kernels and allocations
for each batch shape, tokenizer caches, an adapter's first matmul, a local Qdrant's first
query. One pass per encoder and kind at a few lengths, plus a small batch, covers the shapes a
query meets; one search per collection warms Qdrant; each tenant's adapter is applied once as
it is bound (`Runtime._load_problem`), so an activation is warm before it serves too.
bench/first_request.py measures the first request after ready against the steady state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

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


def warm_encoder(encoder: Encoder, kinds: tuple[InputKind, ...]) -> None:
    for kind in kinds:
        for words in LENGTHS:
            encoder.encode([warm_texts(words)], kind, truncate=True)
        encoder.encode([warm_texts(LENGTHS[1])] * BATCH, kind, truncate=True)


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
    execute: Callable[[Callable[[], None]], None] | None = None,
) -> None:
    """Warm both encoders for every kind they serve, then each collection's first search;
    never raises (the state says why)."""
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
            if execute is None:
                warm_encoder(encoder, kinds)
            else:  # on the thread that serves batches (Batcher.on_worker)
                execute(lambda e=encoder, k=kinds: warm_encoder(e, k))  # type: ignore[misc]
        warm_searches(runtime)
    except Exception as e:  # an encoder that cannot encode is reported, not raised
        state.error = f"{type(e).__name__}: {e}"
        log.exception("warm-up failed")
        return
    state.seconds = time.perf_counter() - t0
    state.done.set()
    log.info("warm-up done in %.2fs", state.seconds)


def warm_adapter_apply(apply: object, in_dim: int) -> None:
    """One apply on a unit row: the adapter's first matmul happens here, not in a request."""
    assert callable(apply)
    out = apply(np.full((1, in_dim), in_dim**-0.5, dtype=np.float32))
    if not np.all(np.isfinite(out)):
        raise ValueError("its output is not finite")
