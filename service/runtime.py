"""What the routes call: one Runtime per app, composed of three parts in their rooms.

- bindings (service/bindings/bindings.py): each tenant's active adapter, sync, fallback;
- encoding (service/engine/encoding.py): prepare, run, finish: texts to served vectors;
- search (service/search/searching.py): each tenant's collection in Qdrant.

They share the encoders, the store, the tenants, the gateway and the metrics held here.
"""

from __future__ import annotations

import threading

from adapters.store import AdapterStore
from encoders import Encoder
from service.bindings.adapter_cache import AdapterCache
from service.bindings.bindings import ServedBinding, TenantBindings
from service.bindings.tenants import TenantRegistry
from service.engine.encoding import Encoding
from service.engine.query_cache import QueryVectorCache
from service.ops.metrics import Metrics
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from service.search.searching import Searching
from service.search.targets import resolve_targets

__all__ = ["Runtime", "ServedBinding"]


class Runtime(TenantBindings, Encoding, Searching):
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
        self._bindings: dict[str, ServedBinding] = {}
        self._generation = -1
        self._sync_lock = threading.Lock()
        self.adapters = AdapterCache(
            store, settings.adapter_cache_bytes, metrics, pinned=self._pinned_ids
        )
        self.query_cache = QueryVectorCache(
            settings.query_cache_size, metrics, tenants=max(1, len(tenants.tenants))
        )
        self._fingerprints: dict[int, str] = {}
        self.sync(force=True)
