"""On-disk adapter store: immutable content-addressed versions plus per-tenant bindings.

Layout (a local folder, or a shared volume for several replicas):
    <root>/adapters/<id>/{adapter.safetensors, manifest.json}
    <root>/tenants/<tenant>.json   {"generation", "active", "history"}
    <root>/.bindings.lock          flock taken while a binding is read-modified-written
Every file is published by write-fsync-rename, so a crash, or a disk that fills up mid-write
(an OSError with ENOSPC), leaves the old state readable and no temp file behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from adapters.checkpoint import (
    MANIFEST_FILE,
    TENSORS_FILE,
    Adapter,
    CheckpointError,
    load_checkpoint,
    parse_checkpoint,
    publish_checkpoint,
)
from adapters.fsutil import commit, discard, stage_bytes
from adapters.names import is_safe_name

# \Z, not $: "$" also matches before a trailing newline, which would let "acme\n" through.


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
        if not is_safe_name(adapter_id):
            raise KeyError(adapter_id)
        return self.root / "adapters" / adapter_id

    def put(self, tensor_bytes: bytes, manifest_bytes: bytes) -> Adapter:
        """Validate and store; the same checkpoint always gets the same id (idempotent).

        Uploading a checkpoint whose stored copy was damaged (it no longer verifies) replaces
        that copy and bumps the generation, so every replica re-reads and serves it again.
        """
        adapter = parse_checkpoint(tensor_bytes, manifest_bytes)
        final = self._dir(adapter.id)
        if final.exists():
            try:
                return self.get(adapter.id)
            except (CheckpointError, KeyError, OSError):
                self._repair(final, tensor_bytes, adapter)
                return adapter
        # store the validated manifest (tensors_sha256 filled in), so the folder verifies itself
        manifest_json = adapter.manifest.model_dump_json(indent=2).encode()
        publish_checkpoint(final, tensor_bytes, manifest_json, staging_prefix=".upload-")
        return adapter

    def _repair(self, final: Path, tensor_bytes: bytes, adapter: Adapter) -> None:
        manifest_json = adapter.manifest.model_dump_json(indent=2).encode()
        with self._bindings_lock():
            damaged = final.with_name(f".damaged-{final.name}-{os.getpid()}")
            if final.exists():
                os.rename(final, damaged)  # readers see the damaged folder or none, never half
            publish_checkpoint(final, tensor_bytes, manifest_json, staging_prefix=".upload-")
            shutil.rmtree(damaged, ignore_errors=True)
            self._commit_generation([])

    def put_dir(self, path: Path) -> Adapter:
        path = Path(path)
        return self.put((path / TENSORS_FILE).read_bytes(), (path / MANIFEST_FILE).read_bytes())

    def get(self, adapter_id: str) -> Adapter:
        d = self._dir(adapter_id)
        if not d.is_dir():
            raise KeyError(adapter_id)
        adapter = load_checkpoint(d)
        if adapter.id != adapter_id:
            msg = f"adapter {adapter_id}: content now hashes to {adapter.id}"
            raise CheckpointError([f"{msg} (modified after upload)"])
        return adapter

    def ids(self) -> list[str]:
        base = self.root / "adapters"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- tenant bindings ----------------------------------------------------------------------
    def _binding_path(self, tenant: str) -> Path:
        if not is_safe_name(tenant):
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
        """Point `tenant` at `adapter_id` (None = no adapter) with the next version number.

        The checkpoint is validated first, with no lock held while it is read and hashed;
        then it must still be there under the lock that `delete` takes, when the binding is
        written. A delete racing this call either lands first (KeyError here) or waits and
        refuses (the adapter is bound).
        """
        if adapter_id is not None:
            self.get(adapter_id)  # must exist and load cleanly
        path = self._binding_path(tenant)
        with self._bindings_lock():  # read-modify-write: no lost update between writers
            if adapter_id is not None and not self._dir(adapter_id).is_dir():
                raise KeyError(adapter_id)  # deleted since it was validated
            b = self.binding(tenant)
            version = max([e.version for e in b.history], default=0) + 1
            event = BindingEvent(adapter_id=adapter_id, version=version, actor=actor)
            new = TenantBinding(
                tenant=tenant,
                generation=b.generation + 1,
                active=event,
                history=[*b.history, event],
            )
            # both files are written out in full before either is renamed: a disk that fills
            # up fails the write and changes nothing (never a binding without its generation)
            self._commit_generation([(path, new.model_dump_json(indent=2).encode())])
        return new

    def rollback(self, tenant: str, actor: str | None = None) -> TenantBinding:
        """Re-activate the adapter that was active before the current one (a new version).

        Raises LookupError when there is nothing to go back to.
        """
        b = self.binding(tenant)
        if b.active is None or len(b.history) < 2:
            raise LookupError(f"tenant {tenant!r} has no previous adapter version")
        previous = b.history[-2]
        return self.activate(tenant, previous.adapter_id, actor=actor)

    def delete(self, adapter_id: str) -> None:
        """Remove an adapter version; refuses (ValueError) while a tenant has it active.

        Checked and removed under the lock `activate` binds under, so no binding can name
        an adapter that is gone.
        """
        d = self._dir(adapter_id)
        with self._bindings_lock():
            if not d.is_dir():
                raise KeyError(adapter_id)
            users = self.bound().get(adapter_id, [])
            if users:
                raise ValueError(f"adapter {adapter_id} is active for tenant(s) {users}")
            trash = d.with_name(f".deleted-{adapter_id}")
            os.rename(d, trash)  # atomic: readers see the whole folder or nothing
            shutil.rmtree(trash, ignore_errors=True)

    def bound(self) -> dict[str, list[str]]:
        """adapter id -> tenants that have it active."""
        out: dict[str, list[str]] = {}
        for tenant in self.tenants():
            active = self.binding(tenant).active
            if active is not None and active.adapter_id is not None:
                out.setdefault(active.adapter_id, []).append(tenant)
        return out

    def generation(self) -> int:
        """A store-wide counter bumped by every binding change (replicas poll this one file)."""
        try:
            return int((self.root / "generation").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _commit_generation(self, files: list[tuple[Path, bytes]]) -> None:
        """Stage `files` and the next generation, then rename them in that order.

        Staging (where a full disk fails) touches no final name; the renames need no space.
        The generation goes last, so a replica that sees it also sees the files.
        """
        gen_path = self.root / "generation"
        writes = [*files, (gen_path, f"{self.generation() + 1}\n".encode())]
        pending: list[Path] = []  # staged, not yet renamed
        try:
            for path, data in writes:
                pending.append(stage_bytes(path, data))
            for (path, _), tmp in zip(writes, list(pending), strict=True):
                commit(tmp, path)
                pending.remove(tmp)
        except BaseException:
            discard(*pending)
            raise

    @contextmanager
    def _bindings_lock(self) -> Iterator[None]:
        """An exclusive flock, held across threads and processes sharing this store folder."""
        with open(self.root / ".bindings.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def tenants(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "tenants").glob("*.json"))
