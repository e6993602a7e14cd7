"""What the routes call: encoders, active adapters per tenant, the Qdrant gateway.

Per-tenant adapter state is one dict replaced wholesale on change, so the request path only
ever does a pointer read, and a request uses the adapter version it read first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from adapters import Adapter, CheckpointError
from adapters.store import AdapterStore
from encoders import Encoder, InputKind
from encoders.base import InputTooLongError
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
        self._active: dict[str, ActiveAdapter | None] = {}
        self.reload_adapters()

    # -- adapters ---------------------------------------------------------------------------
    def reload_adapters(self) -> None:
        """Resolve every tenant's active adapter from the store (or its default)."""
        active: dict[str, ActiveAdapter | None] = {}
        for name, tenant in self.tenants.tenants.items():
            active[name] = self._resolve(tenant)
        self._active = active  # one pointer swap
        self.metrics.adapter_active.clear()
        for name, a in active.items():
            if a is not None:
                self.metrics.adapter_active.labels(name, a.adapter.id, str(a.version)).set(1)

    def _resolve(self, tenant: Tenant) -> ActiveAdapter | None:
        binding = self.store.binding(tenant.name)
        if binding.active is not None:
            adapter_id, version = binding.active.adapter_id, binding.active.version
        else:
            adapter_id, version = tenant.default_adapter, 0
        if adapter_id is None:
            return None
        try:
            adapter = self.store.get(adapter_id)
        except (KeyError, CheckpointError) as e:
            log.error(
                "tenant %s: adapter %s cannot be loaded (%s); serving the document "
                "encoder's own query vectors instead",
                tenant.name,
                adapter_id,
                e,
            )
            return None
        problems = compatibility_problems(adapter, self.query_encoder, self.document_encoder)
        if problems:
            log.error(
                "tenant %s: adapter %s is incompatible (%s); serving the document "
                "encoder's own query vectors instead",
                tenant.name,
                adapter_id,
                "; ".join(problems),
            )
            return None
        return ActiveAdapter(adapter, version)

    def active_adapter(self, tenant: str) -> ActiveAdapter | None:
        return self._active.get(tenant)

    # -- encoding ---------------------------------------------------------------------------
    def _encode(
        self,
        encoder: Encoder,
        texts: list[str],
        kind: InputKind,
        instruction: str | None,
        truncate: bool,
    ) -> tuple[np.ndarray, list[int]]:
        start = time.perf_counter()
        try:
            res = encoder.encode(texts, kind, instruction=instruction, truncate=truncate)
        except InputTooLongError as e:
            raise APIError(
                413,
                "input_too_long",
                f"input {e.index} has {e.tokens} tokens; the limit is {e.max_tokens} "
                "(set truncate=true to cut it)",
                {"index": e.index, "tokens": e.tokens, "max_tokens": e.max_tokens},
            ) from None
        m = self.metrics
        m.encoder_latency.labels(encoder.name, kind).observe(time.perf_counter() - start)
        m.encoder_batch_size.labels(encoder.name, kind).observe(len(texts))
        tokens = sum(res.token_counts)
        m.encoder_batch_tokens.labels(encoder.name, kind).observe(tokens)
        m.encoder_tokens.labels(encoder.name, kind).inc(tokens)
        return res.vectors, res.token_counts

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
        query encoder and the tenant's active adapter. A hybrid adapter takes both encoders'
        vectors of the query, concatenated [query; document]; "encode" times both.
        """
        active = self._active.get(tenant) if kind == "query" else None
        t0 = time.perf_counter()
        if active is None:
            enc = self.document_encoder
            vectors, counts = self._encode(enc, texts, kind, instruction, truncate)
            return EmbedOutcome(
                vectors,
                counts,
                enc.name,
                None,
                {"encode": (time.perf_counter() - t0) * 1e3, "adapt": 0.0},
            )
        enc = self.query_encoder
        raw, counts = self._encode(enc, texts, kind, instruction, truncate)
        if "document" in active.adapter.manifest.inputs:
            # hybrid: the document encoder's own query vectors (exactly what a tenant without
            # an adapter gets) go in next to the query encoder's; usage stays the query
            # encoder's token counts
            doc, _ = self._encode(self.document_encoder, texts, kind, instruction, truncate)
            raw = np.concatenate([raw, doc], axis=1)
        t1 = time.perf_counter()
        vectors = active.adapter.apply(raw)
        t2 = time.perf_counter()
        self.metrics.adapter_latency.observe(t2 - t1)
        return EmbedOutcome(
            vectors, counts, enc.name, active, {"encode": (t1 - t0) * 1e3, "adapt": (t2 - t1) * 1e3}
        )

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
