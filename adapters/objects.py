"""The adapter store on an object store speaking S3: replicas on several machines, no shared
disk, no lock service. The layout (adapters/store.py) under the URL's prefix, with:

- adapters immutable and content-addressed: the tensors first, the manifest last and only
  where there is none (`If-None-Match: *`), so an adapter exists iff its manifest does and an
  upload cut half-way leaves nothing visible. Loading verifies the digest and the content id
  (`parse_checkpoint` on the bytes), so a damaged object is refused, never served.
- bindings by compare-and-swap: read the tenant's object with its ETag, write the next binding
  with `If-Match` on that ETag (`If-None-Match: *` for a first one); a lost race (412, or S3's
  409 for a concurrent write) re-reads and tries again after a jittered pause, a bounded
  number of times (then `BindingConflict`). Two admins on two replicas activating at once end
  with one history holding both events in order.
- then the store-wide `generation` object, bumped by the same loop: binding first, generation
  last, so a replica that sees the new generation also sees the binding. `generation()` reads
  it with `If-None-Match` on the ETag it saw last, so an unchanged store answers 304.

What S3 cannot give is a lock across keys: `delete` and `activate` each check the other's key
after their own write and undo it on a clash (see `delete`); a process killed between the
write and the check can still leave a binding naming a deleted adapter, which replicas refuse
to load (they keep what they serve) until the next activation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import suppress

from adapters.checkpoint import (
    MANIFEST_FILE,
    TENSORS_FILE,
    Adapter,
    CheckpointError,
    parse_checkpoint,
)
from adapters.names import is_safe_name
from adapters.s3 import NotModified, PreconditionFailed, S3Objects
from adapters.store import (
    BindingConflict,
    StoreBase,
    TenantBinding,
    next_binding,
    previous_adapter,
)

log = logging.getLogger(__name__)

GENERATION_KEY = "generation"


def _check_key(key: str) -> str:
    """A relative key of visible names (the same keys the folder store accepts)."""
    parts = key.split("/")
    if not key or any(not p or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        raise KeyError(key)
    return key


class ObjectRecords:
    """The evaluation's records as objects beside the store's own keys (each put is whole)."""

    def __init__(self, objects: S3Objects) -> None:
        self.objects = objects

    def read(self, key: str) -> bytes | None:
        found = self.objects.get(_check_key(key))
        return found[0] if found is not None else None

    def write(self, key: str, data: bytes) -> None:
        self.objects.put(_check_key(key), data)

    def delete(self, key: str) -> bool:
        if not self.objects.exists(_check_key(key)):
            return False
        self.objects.delete(key)
        return True

    def keys(self, prefix: str) -> list[str]:
        folder = _check_key(prefix.rstrip("/")) + "/"
        return [
            k for k in self.objects.keys(folder) if not any(p.startswith(".") for p in k.split("/"))
        ]


class ObjectStore(StoreBase):
    def __init__(
        self,
        objects: S3Objects,
        attempts: int = 60,
        backoff_s: float = 0.005,
        max_backoff_s: float = 0.25,
    ) -> None:
        """`attempts` bounds each compare-and-swap loop; the pause before retry k is uniform
        in [0, min(max_backoff_s, backoff_s * 2**k)] ("full jitter")."""
        self.objects = objects
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._records = ObjectRecords(objects)
        self._seen_generation: tuple[str, int] | None = None  # (ETag, value) last read

    @property
    def location(self) -> str:
        return self.objects.location.url

    @property
    def records(self) -> ObjectRecords:
        return self._records

    # -- adapter versions -------------------------------------------------------------------
    @staticmethod
    def _keys(adapter_id: str) -> tuple[str, str]:
        """(tensors key, manifest key); KeyError for an id that is not a safe name."""
        if not is_safe_name(adapter_id):
            raise KeyError(adapter_id)
        return f"adapters/{adapter_id}/{TENSORS_FILE}", f"adapters/{adapter_id}/{MANIFEST_FILE}"

    def put(self, tensor_bytes: bytes, manifest_bytes: bytes) -> Adapter:
        """Validate and store; the same checkpoint always gets the same id (idempotent).

        The manifest is created only where there is none: a 412 means another upload of the
        same content got there first, and the stored copy is verified. A stored copy that no
        longer verifies is replaced and the generation bumped, so every replica re-reads it.
        """
        adapter = parse_checkpoint(tensor_bytes, manifest_bytes)
        tensors_key, manifest_key = self._keys(adapter.id)
        # the validated manifest (tensors_sha256 filled in), so the stored copy verifies itself
        manifest_json = adapter.manifest.model_dump_json(indent=2).encode()
        if self.objects.exists(manifest_key):
            return self._existing(adapter, tensor_bytes, manifest_json)
        self.objects.put(tensors_key, tensor_bytes)
        try:
            self.objects.put(manifest_key, manifest_json, if_absent=True)
        except PreconditionFailed:
            return self._existing(adapter, tensor_bytes, manifest_json)
        return adapter

    def _existing(self, adapter: Adapter, tensor_bytes: bytes, manifest_json: bytes) -> Adapter:
        try:
            return self.get(adapter.id)
        except (CheckpointError, KeyError):  # damaged, or deleted meanwhile: upload it again
            tensors_key, manifest_key = self._keys(adapter.id)
            self.objects.put(tensors_key, tensor_bytes)
            self.objects.put(manifest_key, manifest_json)
            self._bump_generation()
            return adapter

    def get(self, adapter_id: str) -> Adapter:
        tensors_key, manifest_key = self._keys(adapter_id)
        manifest = self.objects.get(manifest_key)
        if manifest is None:
            raise KeyError(adapter_id)
        tensors = self.objects.get(tensors_key)
        if tensors is None:
            raise CheckpointError([f"{self.location}/{tensors_key}: missing"])
        return self.verified(adapter_id, parse_checkpoint(tensors[0], manifest[0]))

    def has(self, adapter_id: str) -> bool:
        return is_safe_name(adapter_id) and self.objects.exists(self._keys(adapter_id)[1])

    def manifest_bytes(self, adapter_id: str) -> bytes:
        found = self.objects.get(self._keys(adapter_id)[1])
        if found is None:
            raise KeyError(adapter_id)
        return found[0]

    def ids(self) -> list[str]:
        out = []
        for key in self.objects.keys("adapters/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST_FILE and is_safe_name(parts[1]):
                out.append(parts[1])
        return sorted(out)

    def delete(self, adapter_id: str) -> None:
        """Remove an adapter version; refuses (ValueError) while a tenant has it active.

        There is no lock across keys, so both sides check after they write: the manifest goes
        first (the adapter is gone from then on), then the bindings are read again; an
        activation that bound the adapter meanwhile gets its manifest back and this delete
        refuses. `activate` checks the manifest after its own write and undoes its binding
        when it is gone, so whichever lands second sees the first. The tensors go last.
        A re-upload of the same content racing its deletion can leave the manifest without
        its tensors: `get` refuses that copy and the next upload of it repairs it.
        """
        tensors_key, manifest_key = self._keys(adapter_id)
        manifest = self.objects.get(manifest_key)
        if manifest is None:
            raise KeyError(adapter_id)
        users = self.bound().get(adapter_id, [])
        if users:
            raise ValueError(f"adapter {adapter_id} is active for tenant(s) {users}")
        self.objects.delete(manifest_key)
        users = self.bound().get(adapter_id, [])
        if users:  # an activation bound it between the check and the delete: put it back
            with suppress(PreconditionFailed):  # re-uploaded meanwhile: it is back already
                self.objects.put(manifest_key, manifest[0], if_absent=True)
            self._bump_generation()  # replicas that failed to load it meanwhile read again
            raise ValueError(f"adapter {adapter_id} is active for tenant(s) {users}")
        self.objects.delete(tensors_key)

    # -- tenant bindings ----------------------------------------------------------------------
    @staticmethod
    def _binding_key(tenant: str) -> str:
        if not is_safe_name(tenant):
            raise ValueError(f"invalid tenant name {tenant!r}")
        return f"tenants/{tenant}.json"

    def _read_binding(self, tenant: str) -> tuple[TenantBinding, bytes | None, str | None]:
        """(binding, its stored bytes, its ETag); (empty, None, None) when there is none."""
        found = self.objects.get(self._binding_key(tenant))
        if found is None:
            return TenantBinding(tenant=tenant), None, None
        return TenantBinding.model_validate_json(found[0]), found[0], found[1]

    def binding(self, tenant: str) -> TenantBinding:
        return self._read_binding(tenant)[0]

    def tenants(self) -> list[str]:
        out = []
        for key in self.objects.keys("tenants/"):
            name = key.removeprefix("tenants/")
            if name.endswith(".json") and is_safe_name(name.removesuffix(".json")):
                out.append(name.removesuffix(".json"))
        return sorted(out)

    def activate(
        self, tenant: str, adapter_id: str | None, actor: str | None = None
    ) -> TenantBinding:
        """Point `tenant` at `adapter_id` (None = no adapter) with the next version number,
        by compare-and-swap on the tenant's binding, then bump the generation.

        The adapter is validated first (read and hashed once, before the loop); an adapter
        deleted after its binding was written is caught by the check that follows the write,
        which puts the previous binding back (KeyError here; see `delete`)."""
        self._binding_key(tenant)
        if adapter_id is not None:
            self.get(adapter_id)  # must exist and load cleanly
        return self._change(tenant, lambda _current: adapter_id, actor, {adapter_id})

    def rollback(self, tenant: str, actor: str | None = None) -> TenantBinding:
        """Re-activate the binding before the current one (a new version), chosen from the
        binding each compare-and-swap attempt reads; LookupError when there is none."""
        return self._change(tenant, previous_adapter, actor, set())

    def _change(
        self,
        tenant: str,
        choose: Callable[[TenantBinding], str | None],
        actor: str | None,
        validated: set[str | None],
    ) -> TenantBinding:
        """The compare-and-swap loop: `choose` picks the adapter from the binding just read."""
        key = self._binding_key(tenant)
        present: set[str] = set()  # manifests seen since they were validated
        for attempt in range(self.attempts):
            current, raw, etag = self._read_binding(tenant)
            adapter_id = choose(current)
            if adapter_id is not None and adapter_id not in validated:
                self.get(adapter_id)  # a rollback's target: validated once
                validated.add(adapter_id)
                present.add(adapter_id)
            if adapter_id is not None and adapter_id not in present:
                if not self.objects.exists(self._keys(adapter_id)[1]):
                    raise KeyError(adapter_id)  # deleted since it was validated
                present.add(adapter_id)
            new = next_binding(current, adapter_id, actor)
            data = new.model_dump_json(indent=2).encode()
            try:
                written = self.objects.put(key, data, if_match=etag, if_absent=etag is None)
            except PreconditionFailed:
                self._pause(attempt)
                continue
            break
        else:
            raise BindingConflict(
                f"tenant {tenant!r}: the binding kept changing; gave up after {self.attempts} "
                "attempts (try again)"
            )
        if adapter_id is not None and not self.objects.exists(self._keys(adapter_id)[1]):
            self._undo(tenant, key, raw, written)
            raise KeyError(adapter_id)  # deleted while it was being bound
        self._bump_generation()
        return new

    def _undo(self, tenant: str, key: str, previous: bytes | None, written: str) -> None:
        """Put back the binding this process replaced, if nobody changed it since."""
        empty = TenantBinding(tenant=tenant).model_dump_json(indent=2).encode()
        try:
            self.objects.put(key, previous if previous is not None else empty, if_match=written)
        except PreconditionFailed:
            log.warning("tenant %s: binding changed again before it could be undone", tenant)
        self._bump_generation()

    def _pause(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt)))

    # -- the store-wide generation ------------------------------------------------------------
    @staticmethod
    def _parse_generation(data: bytes) -> int:
        try:
            return int(data.decode().strip() or 0)
        except ValueError:
            return 0

    def generation(self) -> int:
        seen = self._seen_generation
        try:
            found = self.objects.get(GENERATION_KEY, if_none_match=seen[0] if seen else None)
        except NotModified:
            assert seen is not None
            return seen[1]
        if found is None:
            return 0
        value = self._parse_generation(found[0])
        self._seen_generation = (found[1], value)
        return value

    def _bump_generation(self) -> None:
        for attempt in range(self.attempts):
            found = self.objects.get(GENERATION_KEY)
            value = self._parse_generation(found[0]) + 1 if found is not None else 1
            etag = found[1] if found is not None else None
            try:
                self.objects.put(
                    GENERATION_KEY, f"{value}\n".encode(), if_match=etag, if_absent=etag is None
                )
                return
            except PreconditionFailed:
                self._pause(attempt)
        raise BindingConflict(
            f"{self.location}: the generation kept changing; gave up after {self.attempts} "
            "attempts (the binding itself is written)"
        )
