"""`querylift doctor`: every check the service makes before it can answer, one line each.

The same inspection as /readyz, without starting the service (no model weights are loaded):
the encoders' folders, the adapter store, the tenants file and its search targets, Qdrant,
and each tenant's collection (exists, vector name, size, distance, tenant field and index).
"""

from __future__ import annotations

from collections.abc import Callable

from service.settings import Settings

Say = Callable[[str, str], None]


def _dim(path: str) -> int:
    from transformers import AutoConfig

    size = getattr(AutoConfig.from_pretrained(path), "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"{path}: config has no integer hidden_size")
    return size


def run(settings: Settings, say: Say) -> bool:
    """Print every check through `say(status, line)`; True when nothing failed."""
    from adapters.store import AdapterStore
    from service.qdrant_gateway import QdrantGateway, QdrantUnavailable
    from service.targets import resolve_targets
    from service.tenants import TenantRegistry

    ok = True

    def fail(line: str) -> None:
        nonlocal ok
        ok = False
        say("FAIL", line)

    dims: dict[str, int] = {}
    for role, spec in (("query", settings.query_encoder), ("document", settings.document_encoder)):
        try:
            dims[role] = _dim(spec.path)
            say("ok", f"{role} encoder {spec.name}: {spec.path} ({dims[role]}-d, {spec.backend})")
        except Exception as e:
            fail(f"{role} encoder {spec.name}: {spec.path}: {type(e).__name__}: {e} "
                 "(`querylift setup` unpacks the embedded models)")  # fmt: skip
    try:
        store = AdapterStore(settings.adapter_store)
        say("ok", f"adapter store {store.root}: {len(store.ids())} adapters")
    except Exception as e:
        fail(f"adapter store {settings.adapter_store}: {type(e).__name__}: {e}")
    try:
        tenants = (
            TenantRegistry.from_file(settings.tenants_file)
            if settings.tenants_file
            else TenantRegistry.development(settings.dev_tenant)
        )
        targets = resolve_targets(tenants.tenants.values(), settings)
        where = settings.tenants_file or "development mode (no tenants file)"
        say("ok", f"tenants: {len(targets)} from {where}")
    except ValueError as e:
        fail(f"tenants: {e}")
        return False
    gateway = QdrantGateway(
        url=settings.qdrant_url,
        path=str(settings.qdrant_path),
        api_key=settings.qdrant_api_key,
        timeout_s=settings.qdrant_timeout_s,
    )
    try:
        try:
            gateway.ping()
            say("ok", f"qdrant {settings.qdrant_url or settings.qdrant_path}: reachable")
        except QdrantUnavailable as e:
            fail(f"qdrant {settings.qdrant_url or settings.qdrant_path}: {e.reason}")
            return False
        dim = dims.get("document")
        if dim is None:
            fail("search targets: not checked (the document encoder's size is unknown)")
            return False
        for found in gateway.inspect_all(list(targets.values()), dim):
            if not found.ok:
                fail(found.line())
            else:
                say("warn" if found.warnings else "ok", found.line())
            for note in found.notes:
                say("note", f"tenant {found.target.tenant!r}: {note}")
    finally:
        gateway.close()
    return ok
