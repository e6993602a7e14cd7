"""Each tenant's active adapter: the part of the Runtime that reads bindings from the store.

Per-tenant bindings are one dict replaced wholesale on change, so the request path only ever
does a pointer read, and a request uses the adapter version it read first. Adapter tensors
live in an LRU cache under a byte budget. A binding whose adapter does not load or fit is not
served: the tenant keeps what it had, else its last good binding, else the document encoder.

No adapter is loaded on the event loop: `sync` loads a binding's adapter (in the worker thread
it runs in) before swapping the binding in, and a request whose adapter was evicted since
awaits one single-flight load in a worker thread (`resolve_adapter`, adapter_cache.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anyio import to_thread

from adapters import Adapter, CheckpointError
from adapters.apply import check_finite_output
from adapters.compat import compatibility_problems
from adapters.store import AdapterStore, BindingEvent
from encoders import Encoder
from service.bindings.adapter_cache import AdapterCache
from service.bindings.tenants import Tenant, TenantRegistry
from service.engine.embedding import ActiveAdapter, EmbedItem
from service.engine.errors import ServiceError
from service.ops.metrics import Metrics
from service.ops.settings import Settings
from service.search.qdrant_gateway import CollectionNotFound, QdrantGateway
from service.search.targets import SearchTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedBinding:
    """A tenant's binding as last read from the store (no tensors: those live in the cache)."""

    adapter_id: str | None
    version: int


class TenantBindings:
    """The Runtime's bindings part (service/runtime.py composes the three parts)."""

    settings: Settings
    query_encoder: Encoder
    document_encoder: Encoder
    store: AdapterStore
    tenants: TenantRegistry
    gateway: QdrantGateway
    metrics: Metrics
    adapters: AdapterCache
    _bindings: dict[str, ServedBinding]
    _generation: int
    _sync_lock: threading.Lock

    if TYPE_CHECKING:  # the other parts' methods this part calls

        def target_for(self, tenant: Tenant) -> SearchTarget:  # the search part's
            ...

        def collection_for(self, tenant: Tenant) -> str:  # the search part's
            ...

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
        new: dict[str, ServedBinding] = {}
        for name, tenant in self.tenants.tenants.items():
            binding = self.store.binding(name)
            if binding.active is not None:
                bound = ServedBinding(binding.active.adapter_id, binding.active.version)
            else:
                bound = ServedBinding(tenant.default_adapter, 0)
            old = self._bindings.get(name)
            if bound != old and bound.adapter_id is not None:
                problem = self._load_problem(tenant, bound.adapter_id)
                if problem:
                    keep = old
                    if keep is None:
                        keep = self._last_good_binding(name, binding.history, {bound.adapter_id})
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
            try:  # its first matmul here, before it serves a request
                check_finite_output(adapter)
            except (ValueError, FloatingPointError) as e:
                problems.append(f"fails to apply: {e}")
        return "; ".join(problems) or None

    def _last_good_binding(
        self, tenant: str, history: list[BindingEvent], bad: set[str | None]
    ) -> ServedBinding:
        """The most recent binding in `history` that loads and fits, else the document encoder.

        An event with no adapter is a binding too (the document encoder's own vectors).
        """
        for event in reversed(history):
            if event.adapter_id in bad:
                continue
            if event.adapter_id is None:
                return ServedBinding(None, event.version)
            if self._load_problem(self.tenants.tenants[tenant], event.adapter_id) is None:
                return ServedBinding(event.adapter_id, event.version)
            bad.add(event.adapter_id)
        return ServedBinding(None, 0)

    def _not_served(
        self, tenant: str, failed: ServedBinding, problem: str, instead: ServedBinding
    ) -> None:
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

    def _demote(self, tenant: str, failed: ServedBinding, problem: str) -> ServedBinding:
        """Replace a served binding whose adapter no longer loads (evicted, then found damaged
        on disk) by its fallback, once: later requests read the fallback directly."""
        with self._sync_lock:
            current = self._bindings.get(tenant)
            if current != failed or current is None:  # a sync already moved it on
                return current or ServedBinding(None, 0)
            try:
                history = self.store.binding(tenant).history
            except (OSError, ValueError):  # the binding file itself is unreadable
                history = []
            instead = self._last_good_binding(tenant, history, {failed.adapter_id})
            self._not_served(tenant, failed, problem, instead)
            self._bindings = {**self._bindings, tenant: instead}
            self._report_active()
            return instead

    def _report_active(self) -> None:
        self.metrics.adapter_active.clear()
        for name, b in self._bindings.items():
            if b.adapter_id is not None:
                self.metrics.adapter_active.labels(name, b.adapter_id, str(b.version)).set(1)

    def binding(self, tenant: str) -> ServedBinding | None:
        return self._bindings.get(tenant)

    async def resolve_adapter(self, item: EmbedItem) -> EmbedItem:
        """`item` with the adapter its rows go through, read once here, for `prepare`.

        For the event loop: a query item without an explicit adapter gets its tenant's
        (`adapter`), or none at all (`baseline`), so `prepare` never reads the binding (and
        never loads an adapter) itself.
        """
        if item.kind == "query" and item.adapter is None and not item.baseline:
            item.adapter = await self.active_adapter_async(item.tenant)
            item.baseline = item.adapter is None
        return item

    async def active_adapter_async(self, tenant: str) -> ActiveAdapter | None:
        """`active_adapter` for the event loop: a resident adapter at once; an evicted one is
        loaded in a worker thread (one load however many requests miss it) and awaited."""
        bound = self._bindings.get(tenant)
        if bound is None or bound.adapter_id is None:
            return None
        hit = self.adapters.peek(bound.adapter_id)
        if hit is not None:
            return ActiveAdapter(hit, bound.version)
        try:
            return ActiveAdapter(await self.adapters.get_async(bound.adapter_id), bound.version)
        except (KeyError, CheckpointError, OSError):
            # it no longer loads: demotion reads the store and loads the fallback, off the loop
            return await to_thread.run_sync(self.active_adapter, tenant)

    def active_adapter(self, tenant: str) -> ActiveAdapter | None:
        """The tenant's adapter as of now: one dict read, then the resident tensors.

        Blocks while an evicted adapter reloads: worker threads only (the event loop uses
        `active_adapter_async`). An adapter that fails to reload (evicted, then damaged or
        removed on disk) is never served: the tenant falls back as in `sync` (its previous
        binding, else the document encoder) and the request is answered with that.
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
        raise ServiceError(
            "adapter_unavailable",
            "the tenant's adapter cannot be loaded right now",
            retry_after_s=1,
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
            raise ServiceError(
                "qdrant_unavailable",
                f"cannot check collection {collection!r} right now: {type(e).__name__}",
                {"collection": collection},
                retry_after_s=1,
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
