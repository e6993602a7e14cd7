"""On-disk adapter store: immutable content-addressed versions plus per-tenant bindings.

Layout (a local folder, or a shared volume for several replicas):
    <root>/adapters/<id>/{adapter.safetensors, manifest.json}
    <root>/tenants/<tenant>.json   {"generation", "active", "history"}
Every file is published by write-fsync-rename, so a crash leaves the old state readable.
"""

from __future__ import annotations

import json
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from adapters.checkpoint import (
    MANIFEST_FILE,
    TENSORS_FILE,
    Adapter,
    load_checkpoint,
    parse_checkpoint,
)
from adapters.fsutil import atomic_publish_dir, atomic_write_bytes

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BindingEvent(BaseModel):
    adapter_id: str | None
    version: int
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    actor: str | None = None


class TenantBinding(BaseModel):
    tenant: str
    generation: int = 0
    active: BindingEvent | None = None
    history: list[BindingEvent] = Field(default_factory=list)


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "adapters").mkdir(parents=True, exist_ok=True)
        (self.root / "tenants").mkdir(parents=True, exist_ok=True)

    # -- adapter versions -------------------------------------------------------------------
    def _dir(self, adapter_id: str) -> Path:
        if not _SAFE_NAME.match(adapter_id):
            raise KeyError(adapter_id)
        return self.root / "adapters" / adapter_id

    def put(self, tensor_bytes: bytes, manifest_bytes: bytes) -> Adapter:
        """Validate and store; the same checkpoint always gets the same id (idempotent)."""
        adapter = parse_checkpoint(tensor_bytes, manifest_bytes)
        final = self._dir(adapter.id)
        if final.exists():
            return self.get(adapter.id)
        staging = Path(tempfile.mkdtemp(dir=self.root / "adapters", prefix=".upload-"))
        (staging / TENSORS_FILE).write_bytes(tensor_bytes)
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
        atomic_publish_dir(staging, final)
        return adapter

    def put_dir(self, path: Path) -> Adapter:
        path = Path(path)
        return self.put((path / TENSORS_FILE).read_bytes(), (path / MANIFEST_FILE).read_bytes())

    def get(self, adapter_id: str) -> Adapter:
        d = self._dir(adapter_id)
        if not d.is_dir():
            raise KeyError(adapter_id)
        return load_checkpoint(d)

    def ids(self) -> list[str]:
        base = self.root / "adapters"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- tenant bindings ----------------------------------------------------------------------
    def _binding_path(self, tenant: str) -> Path:
        if not _SAFE_NAME.match(tenant):
            raise ValueError(f"invalid tenant name {tenant!r}")
        return self.root / "tenants" / f"{tenant}.json"

    def binding(self, tenant: str) -> TenantBinding:
        p = self._binding_path(tenant)
        if not p.is_file():
            return TenantBinding(tenant=tenant)
        return TenantBinding.model_validate_json(p.read_bytes())

    def activate(
        self, tenant: str, adapter_id: str | None, actor: str | None = None
    ) -> TenantBinding:
        """Point `tenant` at `adapter_id` (None = no adapter) with the next version number."""
        if adapter_id is not None:
            self.get(adapter_id)  # must exist and load cleanly
        b = self.binding(tenant)
        version = max([e.version for e in b.history], default=0) + 1
        event = BindingEvent(adapter_id=adapter_id, version=version, actor=actor)
        new = TenantBinding(
            tenant=tenant, generation=b.generation + 1, active=event, history=[*b.history, event]
        )
        atomic_write_bytes(self._binding_path(tenant), new.model_dump_json(indent=2).encode())
        return new

    def tenants(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "tenants").glob("*.json"))


def dumps_manifest(adapter: Adapter) -> str:
    return json.dumps(adapter.manifest.model_dump(mode="json"), indent=2)
