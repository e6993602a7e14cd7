"""The adapter store: immutable content-addressed adapter versions plus per-tenant bindings,
behind one protocol (`AdapterStore`) with two homes, built by `open_store(location)` (in
adapters/stores.py, which knows every kind; this module imports none of them):

- a folder (adapters/folder.py): one machine, or a volume the replicas share; every file
  published by write-fsync-rename, binding changes under an flock;
- an object store speaking S3 (adapters/objects.py over adapters/s3.py): replicas on several
  machines with no shared disk; bindings replaced by compare-and-swap (`If-Match`).

Both lay out the same names (under the folder, or under the URL's prefix):
    adapters/<id>/adapter.safetensors, adapters/<id>/manifest.json   (the manifest last:
                               an adapter exists iff its manifest does)
    tenants/<tenant>.json      {"generation", "active", "history"}
    generation                 a store-wide counter, bumped after every binding change
and the evaluation's records (validation sets, gate records) under their own keys (`records`).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

from adapters.checkpoint import MANIFEST_FILE, TENSORS_FILE, Adapter, CheckpointError

SCHEMES = ("s3",)  # what QUERYLIFT_ADAPTER_STORE accepts besides a folder path
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//|$)")
# S3's rules for a new bucket (3-63 characters; lower-case letters, digits, dots, hyphens)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*\Z")


class StoreUnavailable(OSError):
    """The store could not be read or written (unreachable, refused, too slow): an outage,
    not a fault of what was asked; the state it had is unchanged."""


class BindingConflict(StoreUnavailable):
    """A binding kept changing under a compare-and-swap until the attempts ran out."""


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


def next_binding(
    current: TenantBinding, adapter_id: str | None, actor: str | None
) -> TenantBinding:
    """`current` with one more event: the next version number, the tenant's next generation."""
    version = max([e.version for e in current.history], default=0) + 1
    event = BindingEvent(adapter_id=adapter_id, version=version, actor=actor)
    return TenantBinding(
        tenant=current.tenant,
        generation=current.generation + 1,
        active=event,
        history=[*current.history, event],
    )


def previous_adapter(current: TenantBinding) -> str | None:
    """What a rollback re-activates: the binding before the active one (LookupError: none)."""
    if current.active is None or len(current.history) < 2:
        raise LookupError(f"tenant {current.tenant!r} has no previous adapter version")
    return current.history[-2].adapter_id


class Records(Protocol):
    """Small documents beside the store (the evaluation's records), by relative key such as
    `gates/acme/<id>.json`; each write replaces the whole document atomically."""

    def read(self, key: str) -> bytes | None: ...

    def write(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> bool: ...

    def keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder such as `gates/`), at any depth, sorted."""
        ...


class AdapterStore(Protocol):
    """What the service, the CLI and the benches call; adapter ids and tenant names are
    checked here (`adapters.names`): a bad adapter id is a KeyError, a bad tenant a ValueError.
    An unreachable store raises `StoreUnavailable` (an OSError)."""

    @property
    def location(self) -> str:
        """Where it is, for people: the folder, or `s3://bucket/prefix`."""
        ...

    @property
    def records(self) -> Records: ...

    def put(self, tensor_bytes: bytes, manifest_bytes: bytes) -> Adapter:
        """Validate and store (idempotent: the same content always gets the same id)."""
        ...

    def put_dir(self, path: Path) -> Adapter: ...

    def get(self, adapter_id: str) -> Adapter:
        """The verified adapter: KeyError when absent, CheckpointError when damaged."""
        ...

    def has(self, adapter_id: str) -> bool: ...

    def manifest_bytes(self, adapter_id: str) -> bytes:
        """The stored manifest only (cheap: no tensors, not verified); KeyError when absent."""
        ...

    def ids(self) -> list[str]: ...

    def binding(self, tenant: str) -> TenantBinding: ...

    def activate(
        self, tenant: str, adapter_id: str | None, actor: str | None = None
    ) -> TenantBinding: ...

    def rollback(self, tenant: str, actor: str | None = None) -> TenantBinding:
        """Re-activate the binding before the current one (a new version); LookupError: none."""
        ...

    def delete(self, adapter_id: str) -> None:
        """Remove an adapter version; ValueError while a tenant has it active."""
        ...

    def bound(self) -> dict[str, list[str]]:
        """adapter id -> tenants that have it active."""
        ...

    def generation(self) -> int:
        """The store-wide counter every binding change bumps (what replicas poll)."""
        ...

    def tenants(self) -> list[str]: ...


class StoreBase(ABC):
    """What both stores do the same way over their own primitives."""

    @abstractmethod
    def get(self, adapter_id: str) -> Adapter: ...

    @abstractmethod
    def put(self, tensor_bytes: bytes, manifest_bytes: bytes) -> Adapter: ...

    @abstractmethod
    def tenants(self) -> list[str]: ...

    @abstractmethod
    def binding(self, tenant: str) -> TenantBinding: ...

    def put_dir(self, path: Path) -> Adapter:
        path = Path(path)
        return self.put((path / TENSORS_FILE).read_bytes(), (path / MANIFEST_FILE).read_bytes())

    def bound(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for tenant in self.tenants():
            active = self.binding(tenant).active
            if active is not None and active.adapter_id is not None:
                out.setdefault(active.adapter_id, []).append(tenant)
        return out

    @staticmethod
    def verified(adapter_id: str, adapter: Adapter) -> Adapter:
        """`adapter` as loaded under `adapter_id`, refused when its content hashes elsewhere."""
        if adapter.id != adapter_id:
            msg = f"adapter {adapter_id}: content now hashes to {adapter.id}"
            raise CheckpointError([f"{msg} (modified after upload)"])
        return adapter


# -- where a store is ---------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative


def parse_location(value: str | os.PathLike[str]) -> Path | S3Location:
    """A folder path, or `s3://bucket/prefix`; ValueError for any other scheme, or for an S3
    URL that carries anything but a bucket and a prefix (credentials never come from it)."""
    if isinstance(value, os.PathLike):
        return Path(value)
    text = value.strip()
    match = _SCHEME.match(text)
    if match is None:
        if not text:
            raise ValueError("the adapter store location is empty")
        return Path(text)
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"adapter store {text!r}: the {scheme!r} scheme is not supported; give a folder path "
            "or s3://bucket/prefix (any S3-protocol store: set AWS_ENDPOINT_URL for one that is "
            "not AWS)"
        )
    rest = text[match.end() :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket or "?" in rest or "#" in rest:
        raise ValueError(
            f"adapter store {text!r}: give s3://bucket/prefix only; credentials and the "
            "endpoint come from the environment (AWS_* variables, profiles, roles)"
        )
    if not _BUCKET.match(bucket):
        raise ValueError(
            f"adapter store {text!r}: {bucket!r} is not a valid bucket name (3-63 characters: "
            "lower-case letters, digits, dots, hyphens)"
        )
    parts = [p for p in prefix.split("/") if p] if prefix.strip("/") else []
    if any(not _KEY_PART.match(p) for p in parts) or "//" in prefix.strip("/"):
        raise ValueError(
            f"adapter store {text!r}: the prefix must be /-separated names of letters, digits "
            "and . _ = + - (each starting with a letter or digit)"
        )
    return S3Location(bucket, "/".join(parts))
