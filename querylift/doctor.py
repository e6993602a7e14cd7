"""`querylift doctor`: every check the service makes before it can answer, one line each.

The start-up checks of `querylift serve` (service/ops/preflight.py: model folders, engine packages,
adapter store, tenants file), then Qdrant and each tenant's collection (exists, vector name,
size, distance, tenant field and index), the inspection /readyz makes; no weight is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.ops.preflight import SETUP, model_dim, startup_checks, targets_of
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway

Say = Callable[[str, str], None]


def run(settings: Settings, say: Say) -> bool:
    """Print every check through `say(status, line)`; True when nothing failed. Besides the
    start-up checks: Qdrant and every tenant's search target, as /readyz inspects them."""
    from service.search.backend import FolderRefused
    from service.search.qdrant_gateway import QdrantUnavailable, gateway_for

    ok = True
    for check in startup_checks(settings):
        ok = ok and check.status != "FAIL"
        say(check.status, check.text())
    if not ok:
        return False

    def fail(line: str) -> None:
        nonlocal ok
        ok = False
        say("FAIL", line)

    targets = targets_of(settings)
    where = settings.qdrant_url or settings.qdrant_path
    if settings.qdrant_url is None and not Path(settings.qdrant_path).exists():
        fail(f"qdrant {where}: no embedded Qdrant folder there: {SETUP}, or "
             "`querylift index` your corpus")  # fmt: skip
        return False
    try:
        gateway = gateway_for(settings, offline=True)
    except FolderRefused as e:
        fail(f"qdrant {where}: {e}")
        return False
    try:
        try:
            gateway.ping()
            say("ok", f"qdrant {where}: reachable")
        except QdrantUnavailable as e:
            fail(f"qdrant {where}: {e.reason}")
            return False
        dim = model_dim(settings.document_encoder.path)
        if dim is None:
            say("warn", "search targets: not checked (the document model's size is unknown "
                "until it loads: a hub id)")  # fmt: skip
            return ok
        for found in gateway.inspect_all(list(targets.values()), dim):
            if not found.ok:
                fail(found.line())
            else:
                say("warn" if found.warnings else "ok", found.line())
            for note in found.notes:
                say("note", f"tenant {found.target.tenant!r}: {note}")
        for name in sorted({t.collection for t in targets.values()}):
            status, line = _indexed_with(gateway, name, settings.document_encoder.name)
            if status == "FAIL":
                fail(line)
            elif status:
                say(status, line)
    finally:
        gateway.close()
    return ok


def _indexed_with(gateway: QdrantGateway, name: str, document_model: str) -> tuple[str, str]:
    """The document model `querylift index` recorded in the collection, against the one
    configured: vectors of another model rank nonsense without any error ("" = no line)."""
    from service.search.qdrant_gateway import CollectionNotFound, QdrantUnavailable

    try:
        meta = gateway.collection_info(name).metadata.get("querylift")
    except (CollectionNotFound, QdrantUnavailable):
        return "", ""  # the target lines above said so
    recorded = meta.get("document_model") if isinstance(meta, dict) else None
    if recorded is None:
        return "note", (
            f"collection {name!r}: no document model recorded (not made by `querylift "
            f"index`): make sure it holds {document_model} vectors"
        )
    if recorded != document_model:
        return "FAIL", (
            f"collection {name!r}: indexed with {recorded}, but the document encoder is "
            f"{document_model}: re-index it, or set QUERYLIFT_DOCUMENT_ENCODER__* to {recorded}"
        )
    return "ok", f"collection {name!r}: indexed with {recorded}, the document encoder"
