"""The adapter store in a folder: a local one, or a volume the replicas of one machine share.

Layout (adapters/store.py) plus `<root>/.bindings.lock`, the flock taken while a binding is
read-modified-written. Every file is published by write-fsync-rename, so a crash, or a disk
that fills up mid-write (an OSError with ENOSPC), leaves the old state readable and no temp
file behind. `flock` is only as good as the filesystem's locks: over NFS it is not a lock to
trust, which is why replicas on several machines use the object store instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adapters.checkpoint import (
    MANIFEST_FILE,
    Adapter,
    CheckpointError,
    load_checkpoint,
    parse_checkpoint,
    publish_checkpoint,
)
from adapters.fsutil import atomic_write_bytes, commit, discard, stage_bytes
from adapters.names import is_safe_name
from adapters.store import StoreBase, TenantBinding, next_binding, previous_adapter


def _key_path(root: Path, key: str) -> Path:
    """`root/key` for a relative key of visible names (never a hidden, staging or parent one)."""
    parts = key.split("/")
    if not key or any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        raise KeyError(key)
    return root.joinpath(*parts)


class FolderRecords:
    """The evaluation's records as files under the store folder (write-fsync-rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, key: str) -> bytes | None:
        path = _key_path(self.root, key)
        return path.read_bytes() if path.is_file() else None

    def write(self, key: str, data: bytes) -> None:
        atomic_write_bytes(_key_path(self.root, key), data)

    def delete(self, key: str) -> bool:
        path = _key_path(self.root, key)
        if not path.is_file():
            return False
        path.unlink()
        return True

    def keys(self, prefix: str) -> list[str]:
        folder = _key_path(self.root, prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        found = []
        for path in folder.rglob("*"):
            rel = path.relative_to(self.root)
            if path.is_file() and not any(p.startswith(".") for p in rel.parts):
                found.append(rel.as_posix())
        return sorted(found)


class FolderStore(StoreBase):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "adapters").mkdir(parents=True, exist_ok=True)
        (self.root / "tenants").mkdir(parents=True, exist_ok=True)
        self._records = FolderRecords(self.root)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def records(self) -> FolderRecords:
        return self._records

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

    def get(self, adapter_id: str) -> Adapter:
        d = self._dir(adapter_id)
        if not d.is_dir():
            raise KeyError(adapter_id)
        return self.verified(adapter_id, load_checkpoint(d))

    def has(self, adapter_id: str) -> bool:
        return is_safe_name(adapter_id) and self._dir(adapter_id).is_dir()

    def manifest_bytes(self, adapter_id: str) -> bytes:
        if not self.has(adapter_id):
            raise KeyError(adapter_id)
        return (self._dir(adapter_id) / MANIFEST_FILE).read_bytes()

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
            new = next_binding(self.binding(tenant), adapter_id, actor)
            # both files are written out in full before either is renamed: a disk that fills
            # up fails the write and changes nothing (never a binding without its generation)
            self._commit_generation([(path, new.model_dump_json(indent=2).encode())])
        return new

    def rollback(self, tenant: str, actor: str | None = None) -> TenantBinding:
        """Re-activate the adapter that was active before the current one (a new version).

        Raises LookupError when there is nothing to go back to.
        """
        return self.activate(tenant, previous_adapter(self.binding(tenant)), actor=actor)

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
