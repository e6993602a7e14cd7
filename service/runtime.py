"""What the routes call: encoders, active adapters per tenant, the Qdrant gateway.

Per-tenant bindings are one dict replaced wholesale on change, so the request path only ever
does a pointer read, and a request uses the adapter version it read first. Adapter tensors
live in an LRU cache under a byte budget.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from adapters import Adapter, CheckpointError
from adapters.store import AdapterStore
from encoders import Encoder, InputKind
from encoders.base import EncoderError
from service.adapter_cache import AdapterCache
from service.errors import APIError
from service.metrics import Metrics
from service.qdrant_gateway import CollectionNotFound, Hit, QdrantGateway
from service.settings import Settings
from service.tenants import Tenant, TenantRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveAdapter:
    adapter: Adapter
    version: int

    def ref(self) -> dict[str, object]:
        return {"id": self.adapter.id, "version": self.version}


@dataclass
class EmbedOutcome:
    vectors: np.ndarray
    token_counts: list[int]
    model: str
    adapter: ActiveAdapter | None
    timings_ms: dict[str, float] = field(default_factory=dict)


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


@dataclass
class EmbedItem:
    """One request's texts; items of several tenants can share one encoder pass."""

    tenant: str
    texts: list[str]
    kind: InputKind
    instruction: str | None = None
    truncate: bool = False


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
        self.gateway = gateway
        self.metrics = metrics
        self._bindings: dict[str, Bound] = {}
        self._generation = -1
        self._sync_lock = threading.Lock()
        self.adapters = AdapterCache(
            store, settings.adapter_cache_bytes, metrics, pinned=self._pinned_ids
        )
        self.sync(force=True)

    # -- adapters ---------------------------------------------------------------------------
    def _pinned_ids(self) -> set[str]:
        pinned = set(self.settings.pinned_tenants)
        return {b.adapter_id for t, b in self._bindings.items() if t in pinned and b.adapter_id}

    def sync(self, force: bool = False) -> bool:
        """Re-read tenant bindings if the store changed (another replica, or an admin call).

        A tenant whose new adapter cannot be loaded or does not fit keeps its previous one.
        Returns whether anything was re-read.
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
                    log.error(
                        "tenant %s: adapter %s is not served (%s); keeping %s",
                        name,
                        bound.adapter_id,
                        problem,
                        f"adapter {old.adapter_id}"
                        if old and old.adapter_id
                        else "the document encoder",
                    )
                    self.metrics.adapter_load_failures.labels(name).inc()
                    bound = old or Bound(None, 0)
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
        except (KeyError, CheckpointError) as e:
            return f"cannot be loaded: {e}"
        problems = compatibility_problems(adapter, self.query_encoder, self.document_encoder)
        return "; ".join(problems) or None

    def _report_active(self) -> None:
        self.metrics.adapter_active.clear()
        for name, b in self._bindings.items():
            if b.adapter_id is not None:
                self.metrics.adapter_active.labels(name, b.adapter_id, str(b.version)).set(1)

    def binding(self, tenant: str) -> Bound | None:
        return self._bindings.get(tenant)

    def active_adapter(self, tenant: str) -> ActiveAdapter | None:
        """The tenant's adapter as of now: one dict read, then the resident tensors."""
        bound = self._bindings.get(tenant)
        if bound is None or bound.adapter_id is None:
            return None
        try:
            return ActiveAdapter(self.adapters.get(bound.adapter_id), bound.version)
        except (KeyError, CheckpointError) as e:  # evicted, then damaged or removed on disk
            log.error("tenant %s: adapter %s failed to reload: %s", tenant, bound.adapter_id, e)
            self.metrics.adapter_load_failures.labels(tenant).inc()
            raise APIError(
                503,
                "adapter_unavailable",
                "the tenant's adapter cannot be loaded right now",
                headers={"Retry-After": "1"},
            ) from None

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
        except Exception as e:
            problems.append(f"cannot check collection {collection!r}: {type(e).__name__}")
            return problems
        if info.dim != m.out_dim:
            problems.append(
                f"out_dim {m.out_dim} != collection {collection!r} vector size {info.dim}"
            )
        recorded = (info.metadata.get("querylift") or {}).get("document_model")
        if recorded and recorded != m.document_model.name:
            problems.append(
                f"collection {collection!r} was indexed with {recorded!r}, not "
                f"{m.document_model.name!r}"
            )
        return problems

    # -- encoding ---------------------------------------------------------------------------
    def _check_tokens(self, encoder: Encoder, item: EmbedItem) -> None:
        counts = encoder.count_tokens(item.texts, item.kind, item.instruction)
        for i, n in enumerate(counts):
            if n > encoder.max_tokens:
                raise APIError(
                    413,
                    "input_too_long",
                    f"input {i} has {n} tokens; the limit is {encoder.max_tokens} "
                    "(set truncate=true to cut it)",
                    {
                        "index": i,
                        "tokens": n,
                        "max_tokens": encoder.max_tokens,
                        "encoder": encoder.name,
                    },
                )

    def _encode(
        self,
        encoder: Encoder,
        texts: list[str],
        kind: InputKind,
        instructions: list[str | None],
    ) -> tuple[np.ndarray, list[int]]:
        start = time.perf_counter()
        try:
            res = encoder.encode(texts, kind, instruction=instructions, truncate=True)
        except EncoderError as e:
            self.metrics.encoder_failures.labels(encoder.name).inc()
            log.error("encoder %s failed a batch of %d: %s", encoder.name, len(texts), e)
            raise APIError(
                503,
                "encoder_unavailable",
                f"the {encoder.name} encoder cannot answer right now",
                {"encoder": encoder.name},
                headers={"Retry-After": "1"},
            ) from e
        m = self.metrics
        m.encoder_latency.labels(encoder.name, kind).observe(time.perf_counter() - start)
        m.encoder_batch_size.labels(encoder.name, kind).observe(len(texts))
        tokens = sum(res.token_counts)
        m.encoder_batch_tokens.labels(encoder.name, kind).observe(tokens)
        m.encoder_tokens.labels(encoder.name, kind).inc(tokens)
        return res.vectors, res.token_counts

    def embed_batch(self, items: list[EmbedItem]) -> list[EmbedOutcome | APIError]:
        """Embed several requests (any tenants) with one pass per encoder and input kind.

        Each item reads its tenant's adapter once, before encoding, so all its rows use one
        adapter version. Rows are then adapted per adapter: one matmul per adapter group.
        """
        t0 = time.perf_counter()
        results: list[EmbedOutcome | APIError | None] = [None] * len(items)
        plans: list[tuple[int, ActiveAdapter | None]] = []
        for n, item in enumerate(items):
            try:
                active = self.active_adapter(item.tenant) if item.kind == "query" else None
                if not item.truncate:
                    if active is not None:
                        self._check_tokens(self.query_encoder, item)
                    if active is None or "document" in active.adapter.manifest.inputs:
                        self._check_tokens(self.document_encoder, item)
                plans.append((n, active))
            except APIError as e:
                results[n] = e
        # one encoder pass per (encoder, kind) over the rows of every item that needs it
        groups: dict[tuple[str, InputKind], list[int]] = {}
        for n, active in plans:
            kind = items[n].kind
            if active is not None:
                groups.setdefault(("query", kind), []).append(n)
            if active is None or "document" in active.adapter.manifest.inputs:
                groups.setdefault(("document", kind), []).append(n)
        encoded: dict[tuple[str, int], tuple[np.ndarray, list[int]]] = {}
        for (which, kind), members in groups.items():
            encoder = self.query_encoder if which == "query" else self.document_encoder
            texts = [t for n in members for t in items[n].texts]
            instr = [items[n].instruction for n in members for _ in items[n].texts]
            vectors, counts = self._encode(encoder, texts, kind, instr)
            at = 0
            for n in members:
                k = len(items[n].texts)
                encoded[(which, n)] = (vectors[at : at + k], counts[at : at + k])
                at += k
        t1 = time.perf_counter()
        # adapters: stack the rows of every item that shares an adapter, apply once
        by_adapter: dict[str, list[int]] = {}
        for n, active in plans:
            if active is not None:
                by_adapter.setdefault(active.adapter.id, []).append(n)
        adapted: dict[int, np.ndarray] = {}
        active_of = dict(plans)
        for members in by_adapter.values():
            adapter = active_of[members[0]].adapter  # type: ignore[union-attr]
            parts = []
            for n in members:
                x = encoded[("query", n)][0]
                if "document" in adapter.manifest.inputs:
                    x = np.concatenate([x, encoded[("document", n)][0]], axis=1)
                parts.append(x)
            y = adapter.apply(np.concatenate(parts))
            at = 0
            for n in members:
                k = len(items[n].texts)
                adapted[n] = y[at : at + k]
                at += k
        t2 = time.perf_counter()
        if by_adapter:
            self.metrics.adapter_latency.observe(t2 - t1)
        timings = {"encode": (t1 - t0) * 1e3, "adapt": (t2 - t1) * 1e3}
        for n, active in plans:
            if active is None:
                vectors, counts = encoded[("document", n)]
                results[n] = EmbedOutcome(
                    vectors, counts, self.document_encoder.name, None, dict(timings)
                )
            else:
                counts = encoded[("query", n)][1]
                results[n] = EmbedOutcome(
                    adapted[n], counts, self.query_encoder.name, active, dict(timings)
                )
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
    def collection_for(self, tenant: Tenant) -> str:
        return tenant.collection or self.settings.collection

    def search(
        self,
        tenant: Tenant,
        vector: np.ndarray,
        client_filter: object,
        top_k: int,
        with_payload: bool,
    ) -> list[Hit]:
        from qdrant_client import models

        collection = self.collection_for(tenant)
        try:
            info = self.gateway.collection_info(collection)
        except CollectionNotFound:
            raise APIError(
                404,
                "collection_not_found",
                f"collection {collection!r} does not exist; index documents into it "
                "with `querylift index` first",
            ) from None
        if info.dim != vector.shape[0]:
            raise APIError(
                409,
                "collection_dim_mismatch",
                f"collection {collection!r} holds {info.dim}-d vectors but this tenant's "
                f"query vectors are {vector.shape[0]}-d",
                {"collection_dim": info.dim, "query_dim": int(vector.shape[0])},
            )
        assert client_filter is None or isinstance(client_filter, models.Filter)
        return self.gateway.search(
            collection,
            vector.tolist(),
            tenant_field=self.settings.tenant_field,
            tenant_value=tenant.value,
            client_filter=client_filter,
            limit=top_k,
            with_payload=with_payload,
        )
