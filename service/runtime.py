"""What the routes call: encoders, active adapters per tenant, the Qdrant gateway.

Per-tenant bindings are one dict replaced wholesale on change, so the request path only ever
does a pointer read, and a request uses the adapter version it read first. Adapter tensors
live in an LRU cache under a byte budget.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from adapters import Adapter, CheckpointError
from adapters.store import AdapterStore, BindingEvent
from encoders import Encoder, InputKind, Tokenized
from encoders.base import EncoderError
from encoders.matryoshka import truncate
from service.bindings.adapter_cache import AdapterCache
from service.bindings.tenants import Tenant, TenantRegistry
from service.engine.embedding import (
    ActiveAdapter,
    Cut,
    EmbedItem,
    EmbedOutcome,
    Part,
    Prepared,
    Which,
)
from service.engine.query_cache import QueryVectorCache
from service.engine.warmup import warm_adapter_apply
from service.http.errors import APIError
from service.ops.metrics import Metrics
from service.ops.settings import Settings
from service.search.qdrant_gateway import CollectionNotFound, Hit, QdrantGateway
from service.search.targets import Inspection, SearchTarget, resolve_targets

log = logging.getLogger(__name__)


def compatibility_problems(
    adapter: Adapter, query_encoder: Encoder, document_encoder: Encoder
) -> list[str]:
    """Reasons an adapter cannot serve this deployment (empty when it can)."""
    m = adapter.manifest
    problems = []
    if "document" in m.inputs:
        # hybrid: the input is [query-encoder vector; document-encoder vector] of the query
        qd, dd = query_encoder.dim, document_encoder.dim
        if m.in_dim != qd + dd:
            problems.append(
                f"in_dim {m.in_dim} != query encoder dim + document encoder dim "
                f"({qd} + {dd} = {qd + dd})"
            )
        for key, served, label in (
            ("query_dim", qd, "query"),
            ("document_dim", dd, "document"),
        ):
            if m.params.get(key) != served:
                problems.append(f"params.{key} {m.params.get(key)} != {label} encoder dim {served}")
    elif m.in_dim != query_encoder.dim:
        problems.append(f"in_dim {m.in_dim} != query encoder dim {query_encoder.dim}")
    if m.out_dim != document_encoder.dim:
        problems.append(f"out_dim {m.out_dim} != document encoder dim {document_encoder.dim}")
    if m.query_model.name != query_encoder.name:
        problems.append(
            f"query model {m.query_model.name!r} != served query model {query_encoder.name!r}"
        )
    if m.document_model.name != document_encoder.name:
        problems.append(
            f"document model {m.document_model.name!r} != served document model "
            f"{document_encoder.name!r}"
        )
    return problems


@dataclass(frozen=True)
class Bound:
    """A tenant's binding as last read from the store (no tensors: those live in the cache)."""

    adapter_id: str | None
    version: int


class Runtime:
    def __init__(
        self,
        settings: Settings,
        query_encoder: Encoder,
        document_encoder: Encoder,
        store: AdapterStore,
        tenants: TenantRegistry,
        gateway: QdrantGateway,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.query_encoder = query_encoder
        self.document_encoder = document_encoder
        self.store = store
        self.tenants = tenants
        # each tenant's collection, vector, scope and payload keys; refused here (at start-up)
        # when one tenant could see another's points
        self.targets = resolve_targets(tenants.tenants.values(), settings)
        for t in self.targets.values():  # a prefix cannot be longer than the vector
            if t.dim is not None and t.dim > document_encoder.dim:
                raise ValueError(
                    f"tenant {t.tenant!r}: dim {t.dim} is larger than the document encoder's "
                    f"{document_encoder.dim}-d vectors ({document_encoder.name})"
                )
        self.gateway = gateway
        self.metrics = metrics
        self._bindings: dict[str, Bound] = {}
        self._generation = -1
        self._sync_lock = threading.Lock()
        self.adapters = AdapterCache(
            store, settings.adapter_cache_bytes, metrics, pinned=self._pinned_ids
        )
        self.query_cache = QueryVectorCache(settings.query_cache_size, metrics)
        self._fingerprints: dict[int, str] = {}
        self.sync(force=True)

    # -- adapters ---------------------------------------------------------------------------
    def _pinned_ids(self) -> set[str]:
        pinned = set(self.settings.pinned_tenants)
        return {b.adapter_id for t, b in self._bindings.items() if t in pinned and b.adapter_id}

    def sync(self, force: bool = False) -> bool:
        """Re-read tenant bindings if the store changed (another replica, or an admin call).

        A tenant whose new adapter cannot be loaded (damaged on disk: hash, parse, values) or
        does not fit keeps what it was served before; with nothing before (a fresh process),
        it gets the most recent earlier binding in its history that loads, else the document
        encoder. Returns whether anything was re-read.
        """
        with self._sync_lock:  # the poller and admin calls may race: one reader at a time
            return self._sync(force)

    def _sync(self, force: bool) -> bool:
        generation = self.store.generation()
        if not force and generation == self._generation:
            return False
        new: dict[str, Bound] = {}
        for name, tenant in self.tenants.tenants.items():
            binding = self.store.binding(name)
            if binding.active is not None:
                bound = Bound(binding.active.adapter_id, binding.active.version)
            else:
                bound = Bound(tenant.default_adapter, 0)
            old = self._bindings.get(name)
            if bound != old and bound.adapter_id is not None:
                problem = self._load_problem(tenant, bound.adapter_id)
                if problem:
                    keep = old
                    if keep is None:
                        keep = self._fallback(name, binding.history, {bound.adapter_id})
                    self._not_served(name, bound, problem, keep)
                    bound = keep
            new[name] = bound
        first_read = self._generation < 0
        changed = [t for t in new if new[t] != self._bindings.get(t)]
        self._bindings = new  # one pointer swap: requests read one consistent binding
        self._generation = generation
        if not first_read:
            for t in changed:
                self.metrics.adapter_swaps.labels(t).inc()
        self._report_active()
        return True

    def _load_problem(self, tenant: Tenant, adapter_id: str) -> str | None:
        try:
            adapter = self.adapters.get(adapter_id)
        except KeyError:
            return "cannot be loaded: not in the store"
        except (CheckpointError, OSError) as e:  # damaged or unreadable on disk
            return f"cannot be loaded: {e}"
        problems = compatibility_problems(adapter, self.query_encoder, self.document_encoder)
        if not problems:
            try:  # its first matmul here, before it serves a request (service/engine/warmup.py)
                warm_adapter_apply(adapter.apply, adapter.manifest.in_dim)
            except (ValueError, FloatingPointError) as e:
                problems.append(f"fails to apply: {e}")
        return "; ".join(problems) or None

    def _fallback(self, tenant: str, history: list[BindingEvent], bad: set[str | None]) -> Bound:
        """The most recent binding in `history` that loads and fits, else the document encoder.

        An event with no adapter is a binding too (the document encoder's own vectors).
        """
        for event in reversed(history):
            if event.adapter_id in bad:
                continue
            if event.adapter_id is None:
                return Bound(None, event.version)
            if self._load_problem(self.tenants.tenants[tenant], event.adapter_id) is None:
                return Bound(event.adapter_id, event.version)
            bad.add(event.adapter_id)
        return Bound(None, 0)

    def _not_served(self, tenant: str, failed: Bound, problem: str, instead: Bound) -> None:
        served = (
            f"adapter {instead.adapter_id} v{instead.version}"
            if instead.adapter_id
            else "the document encoder"
        )
        log.error(
            "tenant %s: adapter %s v%d is not served (%s); serving %s instead",
            tenant,
            failed.adapter_id,
            failed.version,
            problem,
            served,
        )
        self.metrics.adapter_load_failures.labels(tenant).inc()

    def _demote(self, tenant: str, failed: Bound, problem: str) -> Bound:
        """Replace a served binding whose adapter no longer loads (evicted, then found damaged
        on disk) by its fallback, once: later requests read the fallback directly."""
        with self._sync_lock:
            current = self._bindings.get(tenant)
            if current != failed or current is None:  # a sync already moved it on
                return current or Bound(None, 0)
            try:
                history = self.store.binding(tenant).history
            except (OSError, ValueError):  # the binding file itself is unreadable
                history = []
            instead = self._fallback(tenant, history, {failed.adapter_id})
            self._not_served(tenant, failed, problem, instead)
            self._bindings = {**self._bindings, tenant: instead}
            self._report_active()
            return instead

    def _report_active(self) -> None:
        self.metrics.adapter_active.clear()
        for name, b in self._bindings.items():
            if b.adapter_id is not None:
                self.metrics.adapter_active.labels(name, b.adapter_id, str(b.version)).set(1)

    def binding(self, tenant: str) -> Bound | None:
        return self._bindings.get(tenant)

    def active_adapter(self, tenant: str) -> ActiveAdapter | None:
        """The tenant's adapter as of now: one dict read, then the resident tensors.

        An adapter that fails to reload (evicted, then damaged or removed on disk) is never
        served: the tenant falls back as in `sync` (its previous binding, else the document
        encoder) and the request is answered with that.
        """
        bound = self._bindings.get(tenant)
        for _ in range(3):  # a fallback can itself be evicted and damaged meanwhile
            if bound is None or bound.adapter_id is None:
                return None
            try:
                return ActiveAdapter(self.adapters.get(bound.adapter_id), bound.version)
            except KeyError:
                bound = self._demote(tenant, bound, "cannot be loaded: not in the store")
            except (CheckpointError, OSError) as e:
                bound = self._demote(tenant, bound, f"cannot be loaded: {e}")
        raise APIError(
            503,
            "adapter_unavailable",
            "the tenant's adapter cannot be loaded right now",
            headers={"Retry-After": "1"},
        )

    def validate_for_tenant(self, tenant: Tenant, adapter: Adapter) -> list[str]:
        """Every reason `adapter` cannot serve `tenant` here (empty = it can)."""
        m = adapter.manifest
        problems = compatibility_problems(adapter, self.query_encoder, self.document_encoder)
        spec = self.query_encoder.spec
        if m.query_model.prompt_template is not None and (
            m.query_model.prompt_template != spec.query_template
        ):
            problems.append(
                f"query prompt template {m.query_model.prompt_template!r} != served "
                f"{spec.query_template!r}"
            )
        if m.query_model.pooling is not None and m.query_model.pooling != spec.pooling.value:
            problems.append(
                f"query pooling {m.query_model.pooling!r} != served {spec.pooling.value!r}"
            )
        collection = self.collection_for(tenant)
        try:
            info = self.gateway.collection_info(collection, refresh=True)
        except CollectionNotFound:
            return problems  # nothing indexed yet: /embed works, /search will say 404
        except Exception as e:  # Qdrant down or slow: an outage, not a fault of the adapter
            raise APIError(
                503,
                "qdrant_unavailable",
                f"cannot check collection {collection!r} right now: {type(e).__name__}",
                {"collection": collection},
                headers={"Retry-After": "1"},
            ) from e
        target = self.target_for(tenant)
        vec = info.vector(target.vector)
        full = self.document_encoder.dim
        served = target.served_dim(full, info.metadata)
        if vec is not None and served < full:  # a prefix: the adapter's output is cut to it
            if vec.size != served:
                problems.append(
                    f"collection {collection!r} vector size {vec.size} != the tenant's served "
                    f"prefix {served} (of the document encoder's {full})"
                )
        elif vec is not None and vec.size != m.out_dim:
            problems.append(
                f"out_dim {m.out_dim} != collection {collection!r} vector size {vec.size}"
            )
        recorded = (info.metadata.get("querylift") or {}).get("document_model")
        if recorded and recorded != m.document_model.name:
            problems.append(
                f"collection {collection!r} was indexed with {recorded!r}, not "
                f"{m.document_model.name!r}"
            )
        return problems

    # -- encoding ---------------------------------------------------------------------------
    def fingerprint(self, encoder: Encoder) -> str:
        fp = self._fingerprints.get(id(encoder))
        if fp is None:
            fp = self._fingerprints[id(encoder)] = encoder.spec.fingerprint()
        return fp

    def _part(self, which: Which, item: EmbedItem, truncated: dict[int, Cut]) -> Part:
        """Tokenise one request's rows for one encoder once; cached query rows skip it."""
        encoder = self.query_encoder if which == "query" else self.document_encoder
        n = len(item.texts)
        vectors = np.empty((n, encoder.dim), dtype=np.float32)
        hits: list[tuple[np.ndarray, int] | None] = [None] * n
        if item.kind == "query" and self.query_cache.enabled:
            formatted = encoder.format(item.texts, item.kind, item.instruction)
            hits = self.query_cache.get_many(self.fingerprint(encoder), encoder.name, formatted)
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
                raise APIError(
                    413,
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
            truncated[i] = Cut(i, max(c, cut.tokens if cut else 0), encoder.max_tokens)
        tokens = Tokenized(
            [texts[i] for i in miss],
            [counts[i] for i in miss],
            None if ids is None else list(ids),
        )
        return Part(which, encoder, tokens, vectors, miss, counts)

    def prepare(self, item: EmbedItem) -> Prepared:
        """Admission: resolve the adapter, tokenise once, check limits, look up the cache.

        Runs on the request path (before queueing) so limits answer at once and the batcher
        cuts batches by real token counts. Each request reads its tenant's adapter once here,
        so all its rows use one adapter version.
        """
        t0 = time.perf_counter()
        if item.kind != "query" or item.baseline:
            active = None
        elif item.adapter is not None:
            active = item.adapter
        else:
            active = self.active_adapter(item.tenant)
        truncated: dict[int, Cut] = {}
        parts: dict[Which, Part] = {}
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

    def _fall_back(self, prep: Prepared, reason: str) -> None:
        """Serve this request with the document encoder's own query vectors (the index's
        native space) after the query encoder failed; flagged in the outcome and a metric."""
        prep.active = None
        prep.parts.pop("query", None)
        prep.degraded = reason
        if "document" not in prep.parts:
            prep.parts["document"] = self._part("document", prep.item, {})
        self.metrics.fallbacks.labels(prep.item.tenant, reason).inc()

    def _encode_group(self, which: Which, kind: InputKind, members: list[Prepared]) -> None:
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
        if kind == "query":
            self.query_cache.put_many(
                self.fingerprint(encoder), tokens.texts, res.vectors, tokens.counts
            )
        at = 0
        for part in parts:
            k = len(part.miss)
            part.vectors[part.miss] = res.vectors[at : at + k]
            at += k

    def run_prepared(self, preps: list[Prepared]) -> list[EmbedOutcome | APIError]:
        """Encode the cache misses of several requests (any tenants): one pass per encoder
        and input kind, the query encoder first so a request it fails can still join the
        document encoder's pass (the fallback). Then one matmul per adapter."""
        t0 = time.perf_counter()
        failed: dict[int, APIError] = {}
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
        which: Which,
        kind: InputKind,
        members: list[Prepared],
        exc: Exception,
        failed: dict[int, APIError],
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
                    self._fall_back(p, reason)
                except APIError as e:
                    failed[id(p)] = e
            return
        err = APIError(
            503,
            reason,
            f"the {encoder.name} encoder cannot answer right now",
            {"encoder": encoder.name},
            headers={"Retry-After": "1"},
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

    def embed_batch(self, items: list[EmbedItem]) -> list[EmbedOutcome | APIError]:
        """Embed several requests (any tenants) with one pass per encoder and input kind."""
        results: list[EmbedOutcome | APIError | None] = [None] * len(items)
        preps: list[tuple[int, Prepared]] = []
        for n, item in enumerate(items):
            try:
                preps.append((n, self.prepare(item)))
            except APIError as e:
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
        if isinstance(out, APIError):
            raise out
        return out

    # -- search -----------------------------------------------------------------------------
    def served_dim(self, tenant: str) -> int:
        """Size of the vectors `tenant` is served: its declared prefix, else the one its
        collection records (as last looked up: never a Qdrant call here, so /embed works while
        Qdrant is down; start-up, every /readyz probe and /search refresh it), else the
        document encoder's full size."""
        full = self.document_encoder.dim
        target = self.targets.get(tenant)
        if target is None:
            return full
        info = self.gateway.known_info(target.collection)
        return target.served_dim(full, info.metadata if info is not None else None)

    def inspect_targets(self) -> list[Inspection]:
        """Each tenant's target checked against the served (document-space) vectors."""
        dim = self.document_encoder.dim
        return self.gateway.inspect_all(list(self.targets.values()), dim)

    def target_for(self, tenant: Tenant) -> SearchTarget:
        return self.targets[tenant.name]

    def collection_for(self, tenant: Tenant) -> str:
        return self.target_for(tenant).collection

    def search(
        self,
        tenant: Tenant,
        vector: np.ndarray,
        client_filter: object,
        top_k: int,
        with_payload: bool,
        warnings: list[str] | None = None,
        *,
        offset: int = 0,
        score_threshold: float | None = None,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """The tenant's nearest documents; a target that cannot serve is an error that says
        why (never an empty answer that looks like "nothing matched"); why an answer is empty
        although nothing is wrong is added to `warnings`."""
        from qdrant_client import models

        target = self.target_for(tenant)
        collection = target.collection
        try:
            info = self.gateway.collection_info(collection)
        except CollectionNotFound:
            raise APIError(
                404,
                "collection_not_found",
                f"collection {collection!r} does not exist; index documents into it "
                "with `querylift index` first",
            ) from None
        vec = info.vector(target.vector)
        if vec is None:
            found = self.gateway.inspect_all([target], self.document_encoder.dim)
            raise self._target_error(target, found[0])
        if vec.size != vector.shape[0] and vec.size == self.served_dim(tenant.name) < len(vector):
            # embedded before this replica first saw the collection's recorded prefix: cut it
            # as `finish` now would (a prefix of a renormalised prefix is the same direction)
            vector = truncate(vector, vec.size)
        if vec.size != vector.shape[0]:
            hint = ""
            if vec.size < vector.shape[0] and target.dim is None:
                hint = (
                    f"; if it holds a Matryoshka prefix of the document model's vectors, "
                    f"declare `dim: {vec.size}` for this tenant in the tenants file"
                )
            raise APIError(
                409,
                "collection_dim_mismatch",
                f"collection {collection!r} holds {vec.size}-d vectors but this tenant's "
                f"query vectors are {vector.shape[0]}-d{hint}",
                {"collection_dim": vec.size, "query_dim": int(vector.shape[0])},
            )
        assert client_filter is None or isinstance(client_filter, models.Filter)
        try:
            hits = self.gateway.search(
                target,
                vector.tolist(),
                client_filter=client_filter,
                limit=top_k,
                with_payload=with_payload,
                offset=offset,
                score_threshold=score_threshold,
                with_vectors=with_vectors,
            )
        except Exception as e:
            # A filter Qdrant itself refuses (local mode: ValueError; a server: a 4xx) is the
            # client's to fix, not an outage; anything else propagates (-> 503).
            if client_filter is not None and _is_filter_refusal(e):
                raise APIError(
                    422,
                    "invalid_filter",
                    f"Qdrant refused the filter: {str(e)[:200]}",
                ) from None
            raise
        if not hits and self.gateway.tenant_points(target) == 0:
            # nothing this tenant can see: a misconfiguration is an error that says so; a
            # tenant (or collection) with no documents yet is a true empty answer, flagged
            found = self.gateway.inspect_all(self._peers(target), self.document_encoder.dim)
            mine = next(f for f in found if f.target is target)
            if mine.problems:
                raise self._target_error(target, mine)
            if warnings is not None:
                warnings.extend(mine.warnings)
        return hits

    def _peers(self, target: SearchTarget) -> list[SearchTarget]:
        """The targets of one collection (the judgement of an empty scope needs them all)."""
        return [t for t in self.targets.values() if t.collection == target.collection]

    @staticmethod
    def _target_error(target: SearchTarget, found: Inspection) -> APIError:
        return APIError(
            409,
            "search_target_invalid",
            f"tenant {target.tenant!r} cannot search {target.describe()}: "
            + "; ".join(found.problems),
            {"tenant": target.tenant, "collection": target.collection, "problems": found.problems},
        )


def _is_filter_refusal(exc: Exception) -> bool:
    from qdrant_client.http.exceptions import UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        return 400 <= exc.status_code < 500
    return isinstance(exc, ValueError | KeyError | TypeError)
