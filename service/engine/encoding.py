"""Encoding: the part of the Runtime that turns requests into vectors.

A request is tokenised once at admission (`prepare`), its rows are encoded in batches with
the rows of other requests (`run_prepared`, on the batcher's worker thread), then each
tenant's adapter is applied and the vector cut to its collection's size (`finish`). Raw query
vectors go through an LRU cache keyed by the encoder's fingerprint, so a swap never invalidates
it, in one partition per tenant, so no tenant sees another's hits. Errors are the engine's own
(service/engine/errors.py); the HTTP edge maps them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from encoders import Encoder, InputKind, Tokenized
from encoders.base import EncoderError
from encoders.matryoshka import truncate
from service.engine.embedding import (
    ActiveAdapter,
    EmbedItem,
    EmbedOutcome,
    EncoderRole,
    EncoderRows,
    Prepared,
    Truncation,
)
from service.engine.errors import ServiceError
from service.engine.query_cache import QueryVectorCache
from service.ops.metrics import Metrics
from service.ops.settings import Settings

log = logging.getLogger(__name__)


class Encoding:
    """The Runtime's encoding part (service/runtime.py composes the three parts)."""

    settings: Settings
    query_encoder: Encoder
    document_encoder: Encoder
    metrics: Metrics
    query_cache: QueryVectorCache
    _fingerprints: dict[int, str]

    if TYPE_CHECKING:  # the other parts' methods this part calls

        def active_adapter(self, tenant: str) -> ActiveAdapter | None:  # the bindings part's
            ...

        def served_dim(self, tenant: str) -> int:  # the search part's
            ...

    def fingerprint(self, encoder: Encoder) -> str:
        fp = self._fingerprints.get(id(encoder))
        if fp is None:
            fp = self._fingerprints[id(encoder)] = encoder.spec.fingerprint()
        return fp

    def _part(
        self, which: EncoderRole, item: EmbedItem, truncated: dict[int, Truncation]
    ) -> EncoderRows:
        """Tokenise one request's rows for one encoder once; cached query rows skip it."""
        encoder = self.query_encoder if which == "query" else self.document_encoder
        n = len(item.texts)
        vectors = np.empty((n, encoder.dim), dtype=np.float32)
        hits: list[tuple[np.ndarray, int] | None] = [None] * n
        if item.kind == "query" and self.query_cache.enabled:
            formatted = encoder.format(item.texts, item.kind, item.instruction)
            hits = self.query_cache.get_many(
                item.tenant, self.fingerprint(encoder), encoder.name, formatted
            )
        miss = [i for i, h in enumerate(hits) if h is None]
        counts = [0] * n
        texts = [""] * n
        for i, h in enumerate(hits):
            if h is not None:
                vectors[i], counts[i] = h
        if miss:
            tok = encoder.tokenize([item.texts[i] for i in miss], item.kind, item.instruction)
            for j, i in enumerate(miss):
                texts[i], counts[i] = tok.texts[j], tok.counts[j]
            ids = tok.ids
        else:
            ids = None
        for i, c in enumerate(counts):
            if c <= encoder.max_tokens:
                continue
            if not item.truncate:
                raise ServiceError(
                    "input_too_long",
                    f"input {i} has {c} tokens; the limit is {encoder.max_tokens} "
                    "(set truncate=true to cut it)",
                    {
                        "index": i,
                        "tokens": c,
                        "max_tokens": encoder.max_tokens,
                        "encoder": encoder.name,
                    },
                )
            cut = truncated.get(i)
            truncated[i] = Truncation(i, max(c, cut.tokens if cut else 0), encoder.max_tokens)
        tokens = Tokenized(
            [texts[i] for i in miss],
            [counts[i] for i in miss],
            None if ids is None else list(ids),
        )
        return EncoderRows(which, encoder, tokens, vectors, miss, counts)

    def prepare(self, item: EmbedItem) -> Prepared:
        """Admission: resolve the adapter, tokenise once, check limits, look up the cache.

        Runs on the request path (before queueing) so limits answer at once and the batcher
        cuts batches by real token counts. Each request's adapter is read once (here, or by
        `resolve_adapter` before it on the event loop), so all its rows use one version.
        """
        t0 = time.perf_counter()
        if item.kind != "query" or item.baseline:
            active = None
        elif item.adapter is not None:
            active = item.adapter
        else:
            active = self.active_adapter(item.tenant)
        truncated: dict[int, Truncation] = {}
        parts: dict[EncoderRole, EncoderRows] = {}
        if active is not None:
            parts["query"] = self._part("query", item, truncated)
        if active is None or "document" in active.adapter.manifest.inputs:
            parts["document"] = self._part("document", item, truncated)
        dim = self.served_dim(item.tenant)
        prep = Prepared(
            item,
            active,
            parts,
            sorted(truncated.values(), key=lambda c: c.index),
            dim=dim if dim < self.document_encoder.dim else None,
        )
        prep.timings_ms["tokenize"] = (time.perf_counter() - t0) * 1e3
        return prep

    def _answer_with_document_encoder(self, prep: Prepared, reason: str) -> None:
        """Serve this request with the document encoder's own query vectors (the index's
        native space) after the query encoder failed; flagged in the outcome and a metric."""
        prep.active = None
        prep.parts.pop("query", None)
        prep.degraded = reason
        if "document" not in prep.parts:
            prep.parts["document"] = self._part("document", prep.item, {})
        self.metrics.fallbacks.labels(prep.item.tenant, reason).inc()

    def _encode_group(self, which: EncoderRole, kind: InputKind, members: list[Prepared]) -> None:
        """One encoder pass over the cache misses of every member; raises what the encoder
        raised (the caller decides between 503 and the fallback)."""
        parts = [p.parts[which] for p in members]
        encoder = parts[0].encoder
        tokens = Tokenized.concat([p.tokens for p in parts])
        start = time.perf_counter()
        res = encoder.encode_tokenized(tokens, truncate=True)
        m = self.metrics
        m.encoder_latency.labels(encoder.name, kind).observe(time.perf_counter() - start)
        m.encoder_batch_size.labels(encoder.name, kind).observe(len(tokens))
        used = sum(res.token_counts)
        m.encoder_batch_tokens.labels(encoder.name, kind).observe(used)
        m.encoder_tokens.labels(encoder.name, kind).inc(used)
        fingerprint = self.fingerprint(encoder)
        at = 0
        for member, part in zip(members, parts, strict=True):
            k = len(part.miss)
            rows = res.vectors[at : at + k]
            part.vectors[part.miss] = rows
            if kind == "query":  # each tenant's rows under its own key
                self.query_cache.put_many(
                    member.item.tenant, fingerprint, part.tokens.texts, rows, part.tokens.counts
                )
            at += k

    def run_prepared(self, preps: list[Prepared]) -> list[EmbedOutcome | ServiceError]:
        """Encode the cache misses of several requests (any tenants): one pass per encoder
        and input kind, the query encoder first so a request it fails can still join the
        document encoder's pass (the fallback). Then one matmul per adapter."""
        t0 = time.perf_counter()
        failed: dict[int, ServiceError] = {}
        for which in ("query", "document"):
            groups: dict[InputKind, list[Prepared]] = {}
            for p in preps:
                if id(p) not in failed and which in p.parts and p.parts[which].miss:
                    groups.setdefault(p.item.kind, []).append(p)
            for kind, members in groups.items():
                try:
                    self._encode_group(which, kind, members)
                except Exception as e:
                    self._encoder_failed(which, kind, members, e, failed)
        t1 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1e3}
        outcomes = self.finish([p for p in preps if id(p) not in failed], timings)
        by_id = {id(p): o for p, o in outcomes}
        return [failed.get(id(p)) or by_id[id(p)] for p in preps]

    def _encoder_failed(
        self,
        which: EncoderRole,
        kind: InputKind,
        members: list[Prepared],
        exc: Exception,
        failed: dict[int, ServiceError],
    ) -> None:
        encoder = members[0].parts[which].encoder
        self.metrics.encoder_failures.labels(encoder.name).inc()
        oom = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        reason = "out_of_memory" if oom else "encoder_unavailable"
        if isinstance(exc, EncoderError):
            log.error("encoder %s failed a batch of %d: %s", encoder.name, len(members), exc)
        else:
            log.exception("encoder %s raised on a batch of %d", encoder.name, len(members))
        if which == "query" and self.settings.encoder_fallback:
            for p in members:
                try:
                    self._answer_with_document_encoder(p, reason)
                except ServiceError as e:
                    failed[id(p)] = e
            return
        err = ServiceError(
            reason,
            f"the {encoder.name} encoder cannot answer right now",
            {"encoder": encoder.name},
            retry_after_s=1,
        )
        for p in members:
            failed[id(p)] = err

    def finish(
        self, preps: list[Prepared], timings: dict[str, float] | None = None
    ) -> list[tuple[Prepared, EmbedOutcome]]:
        """Adapt every request's vectors (rows sharing an adapter stacked, one matmul each),
        then cut them to the tenant's Matryoshka prefix where its collection holds one. The
        cut comes last, so the query cache keeps whole raw vectors that serve every tenant."""
        t1 = time.perf_counter()
        by_adapter: dict[str, list[Prepared]] = {}
        for p in preps:
            if p.active is not None:
                by_adapter.setdefault(p.active.adapter.id, []).append(p)
        adapted: dict[int, np.ndarray] = {}
        for members in by_adapter.values():
            adapter = members[0].active.adapter  # type: ignore[union-attr]
            parts = []
            for p in members:
                x = p.parts["query"].vectors
                if "document" in adapter.manifest.inputs:
                    x = np.concatenate([x, p.parts["document"].vectors], axis=1)
                parts.append(x)
            y = adapter.apply(np.concatenate(parts))
            at = 0
            for p in members:
                k = len(p.item.texts)
                adapted[id(p)] = y[at : at + k]
                at += k
        t2 = time.perf_counter()
        if by_adapter:
            self.metrics.adapter_latency.observe(t2 - t1)
        out: list[tuple[Prepared, EmbedOutcome]] = []
        for p in preps:
            served = p.parts["query"] if p.active is not None else p.parts["document"]
            max_tokens = served.encoder.max_tokens
            vectors = adapted[id(p)] if p.active is not None else served.vectors
            if p.dim is not None:
                vectors = truncate(vectors, p.dim)
            outcome = EmbedOutcome(
                vectors,
                [min(c, max_tokens) for c in served.counts],
                served.encoder.name,
                p.active,
                {**p.timings_ms, **(timings or {"encode": 0.0}), "adapt": (t2 - t1) * 1e3},
                truncated=list(p.truncated),
                cache=p.cache_state(),
                degraded=p.degraded,
            )
            out.append((p, outcome))
        return out

    def embed_batch(self, items: list[EmbedItem]) -> list[EmbedOutcome | ServiceError]:
        """Embed several requests (any tenants) with one pass per encoder and input kind."""
        results: list[EmbedOutcome | ServiceError | None] = [None] * len(items)
        preps: list[tuple[int, Prepared]] = []
        for n, item in enumerate(items):
            try:
                preps.append((n, self.prepare(item)))
            except ServiceError as e:
                results[n] = e
        for (n, _), r in zip(preps, self.run_prepared([p for _, p in preps]), strict=True):
            results[n] = r
        return results  # type: ignore[return-value]

    def embed(
        self,
        tenant: str,
        texts: list[str],
        kind: InputKind,
        instruction: str | None = None,
        truncate: bool = False,
    ) -> EmbedOutcome:
        """Vectors in the document index's space.

        Documents and the queries of tenants without an adapter go through the document
        encoder itself (natively compatible with the index); other queries go through the
        query encoder and the tenant's active adapter (a hybrid also takes the document
        encoder's query vector: [query; document]).
        """
        (out,) = self.embed_batch([EmbedItem(tenant, texts, kind, instruction, truncate)])
        if isinstance(out, ServiceError):
            raise out
        return out
