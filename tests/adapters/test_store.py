"""The adapter store: content-addressed versions, tenant bindings, crash safety.

The store tests run on both stores, the folder and the object store (on the S3 test server,
tests/s3_server.py), through one parametrised `store` fixture; `raw` reads and writes the
store's files or objects behind its back, under the same relative names. The tests of the
folder's own mechanics (write-fsync-rename, staging folders, flock) take `folder_store`:
an object store has none of them; its own faults are in test_object_store.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest

from adapters import AdapterKind, CheckpointError, Manifest, ModelInfo, fsutil, save_checkpoint
from adapters.checkpoint import MANIFEST_FILE, TENSORS_FILE, serialize
from adapters.folder import FolderStore
from adapters.objects import ObjectStore
from adapters.store import AdapterStore, TenantBinding
from adapters.stores import open_store
from tests.s3_server import s3_client

DIN, DOUT = 10, 4


def make_manifest(**kw: Any) -> Manifest:
    return Manifest(
        kind=AdapterKind.LINEAR,
        in_dim=DIN,
        out_dim=DOUT,
        query_model=ModelInfo(name="query-model", dim=DIN),
        document_model=ModelInfo(name="doc-model", dim=DOUT),
        **kw,
    )


def make_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "weight": rng.standard_normal((DOUT, DIN)).astype(np.float32),
        "bias": rng.standard_normal(DOUT).astype(np.float32),
    }


def checkpoint(seed: int = 0, **kw: Any) -> tuple[bytes, bytes]:
    return serialize(make_manifest(**kw), make_tensors(seed))


class Raw(Protocol):
    """The store's files or objects by relative name ("tenants/acme.json"), behind its back."""

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def listdir(self, folder: str) -> list[str]:
        """The names directly under `folder` ("" = the store itself), hidden ones too."""
        ...


class FolderRaw:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def listdir(self, folder: str) -> list[str]:
        return os.listdir(self.root / folder)


class ObjectRaw:
    def __init__(self, bucket: str, prefix: str) -> None:
        self.client = s3_client()
        self.bucket = bucket
        self.prefix = prefix

    def read(self, key: str) -> bytes:
        found = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        return found["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def exists(self, key: str) -> bool:
        return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{key}")
                    .get("KeyCount"))  # fmt: skip

    def listdir(self, folder: str) -> list[str]:
        under = f"{self.prefix}/{folder}/" if folder else f"{self.prefix}/"
        names = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=under
        )
        for page in pages:
            names.update(o["Key"][len(under) :].split("/")[0] for o in page.get("Contents", []))
        return sorted(names)


def visible(raw: Raw, folder: str) -> list[str]:
    return sorted(p for p in raw.listdir(folder) if not p.startswith("."))


def hidden(raw: Raw, folder: str) -> list[str]:
    return sorted(p for p in raw.listdir(folder) if p.startswith("."))


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AdapterStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/qa/store")


@pytest.fixture
def raw(store: AdapterStore) -> Raw:
    if isinstance(store, FolderStore):
        return FolderRaw(store.root)
    assert isinstance(store, ObjectStore)
    return ObjectRaw(store.objects.location.bucket, store.objects.location.prefix)


@pytest.fixture
def folder_store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "store")


# -- adapter versions ---------------------------------------------------------------------------
def test_new_store_creates_its_folders_and_is_empty(tmp_path: Path) -> None:
    """Folder-only: an object store has no folders to create (a bucket must exist)."""
    s = FolderStore(tmp_path / "deep" / "store")
    assert (tmp_path / "deep" / "store" / "adapters").is_dir()
    assert (tmp_path / "deep" / "store" / "tenants").is_dir()
    assert s.ids() == []
    assert s.tenants() == []
    FolderStore(tmp_path / "deep" / "store")  # reopening is fine


def test_new_store_is_empty_and_reopens(store: AdapterStore) -> None:
    assert store.ids() == []
    assert store.tenants() == []
    assert store.generation() == 0
    assert open_store(store.location).ids() == []  # reopening is fine


def test_put_stores_files_under_the_content_id(store: AdapterStore, raw: Raw) -> None:
    tb, mb = checkpoint()
    adapter = store.put(tb, mb)
    folder = f"adapters/{adapter.id}"
    assert sorted(raw.listdir(folder)) == [TENSORS_FILE, MANIFEST_FILE]
    assert raw.read(f"{folder}/{TENSORS_FILE}") == tb
    stored = json.loads(raw.read(f"{folder}/{MANIFEST_FILE}"))
    assert stored["tensors_sha256"] == hashlib.sha256(tb).hexdigest()
    assert store.ids() == [adapter.id]
    assert hidden(raw, "adapters") == []  # no staging left behind


def test_put_is_idempotent(store: AdapterStore, raw: Raw) -> None:
    tb, mb = checkpoint()
    first = store.put(tb, mb)
    second = store.put(tb, mb)
    assert second.id == first.id
    assert second.manifest == first.manifest
    # a new created_at / name is the same content
    tb2, mb2 = checkpoint(name="renamed", created_at="1999-01-01T00:00:00+00:00")
    assert store.put(tb2, mb2).id == first.id
    assert store.ids() == [first.id]
    assert raw.listdir("adapters") == [first.id]


def test_different_weights_get_different_ids(store: AdapterStore) -> None:
    a = store.put(*checkpoint(seed=1))
    b = store.put(*checkpoint(seed=2))
    assert a.id != b.id
    assert store.ids() == sorted([a.id, b.id])


def test_stored_manifest_carries_hash_even_if_upload_left_it_empty(
    store: AdapterStore, raw: Raw
) -> None:
    tb, _ = checkpoint()
    mb = make_manifest().model_dump_json().encode()
    assert json.loads(mb)["tensors_sha256"] == ""
    adapter = store.put(tb, mb)
    on_disk = json.loads(raw.read(f"adapters/{adapter.id}/{MANIFEST_FILE}"))
    assert on_disk["tensors_sha256"] == hashlib.sha256(tb).hexdigest()
    # and the id is the same as for the same upload with the hash filled in
    assert store.put(*checkpoint()).id == adapter.id
    assert store.ids() == [adapter.id]


def test_put_dir_matches_save_checkpoint(store: AdapterStore, tmp_path: Path) -> None:
    saved = save_checkpoint(tmp_path / "trained", make_manifest(name="run-7"), make_tensors(3))
    put = store.put_dir(tmp_path / "trained")
    assert put.id == saved.id
    assert store.get(saved.id).manifest.name == "run-7"


def test_get_round_trips_tensors_and_manifest(store: AdapterStore) -> None:
    tensors = make_tensors(5)
    put = store.put(*serialize(make_manifest(name="x"), tensors))
    got = store.get(put.id)
    assert got.id == put.id
    assert got.manifest == put.manifest
    for k, v in tensors.items():
        np.testing.assert_array_equal(got.tensors[k], v)


def test_put_refuses_invalid_checkpoint_and_stores_nothing(store: AdapterStore, raw: Raw) -> None:
    t = make_tensors(0)
    t["weight"][0, 0] = np.nan
    with pytest.raises(CheckpointError) as ei:
        store.put(*serialize(make_manifest(), t))
    assert any("non-finite" in r for r in ei.value.reasons)
    assert store.ids() == []
    assert raw.listdir("adapters") == []


def test_get_unknown_id_raises_key_error(store: AdapterStore) -> None:
    store.put(*checkpoint())
    with pytest.raises(KeyError):
        store.get("0" * 24)


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "..", ".", "", "a/b", "/etc", "../store/adapters", ".upload-abc", "x\x00y", "a\\b"],
)
def test_path_traversal_adapter_ids_are_refused(store: AdapterStore, raw: Raw, bad_id: str) -> None:
    # a perfectly valid checkpoint outside the adapters folder must stay unreachable
    tb, mb = checkpoint()
    raw.write(f"x/{TENSORS_FILE}", tb)
    raw.write(f"x/{MANIFEST_FILE}", mb)
    with pytest.raises(KeyError):
        store.get(bad_id)
    with pytest.raises(KeyError):
        store.activate("acme", bad_id)
    assert not raw.exists("tenants/acme.json")


def test_get_detects_a_folder_whose_content_no_longer_matches_its_id(
    store: AdapterStore, raw: Raw
) -> None:
    adapter = store.put(*checkpoint())
    mf = f"adapters/{adapter.id}/{MANIFEST_FILE}"
    m = json.loads(raw.read(mf))
    m["normalize"] = not m["normalize"]  # tensors (and their hash) untouched
    raw.write(mf, json.dumps(m).encode())
    with pytest.raises(CheckpointError) as ei:
        store.get(adapter.id)
    assert any(adapter.id in r for r in ei.value.reasons)


def test_get_detects_tampered_tensors(store: AdapterStore, raw: Raw) -> None:
    adapter = store.put(*checkpoint())
    tf = f"adapters/{adapter.id}/{TENSORS_FILE}"
    data = bytearray(raw.read(tf))
    data[-2] ^= 0x10
    raw.write(tf, bytes(data))
    with pytest.raises(CheckpointError) as ei:
        store.get(adapter.id)
    assert any("sha256" in r for r in ei.value.reasons)


def test_ids_ignores_leftover_staging_and_stray_files(store: AdapterStore, raw: Raw) -> None:
    adapter = store.put(*checkpoint())
    # a staging folder a crashed upload left behind, fully written but never renamed
    tb, mb = checkpoint(seed=9)
    raw.write(f"adapters/.upload-k3j2h1/{TENSORS_FILE}", tb)
    raw.write(f"adapters/.upload-k3j2h1/{MANIFEST_FILE}", mb)
    # and one that crashed half-way
    raw.write(f"adapters/.upload-half/{TENSORS_FILE}", tb[:10])
    raw.write("adapters/README.txt", b"not an adapter")
    assert store.ids() == [adapter.id]
    with pytest.raises(KeyError):
        store.get(".upload-k3j2h1")
    # uploads still work next to the leftovers
    other = store.put(tb, mb)
    assert store.ids() == sorted([adapter.id, other.id])


# -- tenant bindings -----------------------------------------------------------------------------
def test_binding_of_a_new_tenant_is_empty(store: AdapterStore) -> None:
    b = store.binding("acme")
    assert b == TenantBinding(tenant="acme")
    assert b.generation == 0
    assert b.active is None
    assert b.history == []
    assert store.tenants() == []  # reading creates nothing


def test_activate_writes_versions_generations_and_history(store: AdapterStore, raw: Raw) -> None:
    a = store.put(*checkpoint(seed=1))
    b = store.put(*checkpoint(seed=2))

    b1 = store.activate("acme", a.id, actor="alice")
    assert b1.generation == 1
    assert b1.active is not None
    assert (b1.active.adapter_id, b1.active.version, b1.active.actor) == (a.id, 1, "alice")
    assert [e.adapter_id for e in b1.history] == [a.id]

    b2 = store.activate("acme", b.id)
    assert b2.generation == 2
    assert b2.active is not None
    assert (b2.active.adapter_id, b2.active.version) == (b.id, 2)

    b3 = store.activate("acme", None, actor="bob")  # no adapter at all
    assert b3.generation == 3
    assert b3.active is not None
    assert (b3.active.adapter_id, b3.active.version) == (None, 3)

    b4 = store.activate("acme", a.id)  # going back is a new version, not a rewrite
    assert b4.active is not None
    assert (b4.active.adapter_id, b4.active.version, b4.generation) == (a.id, 4, 4)
    assert [(e.adapter_id, e.version) for e in b4.history] == [
        (a.id, 1),
        (b.id, 2),
        (None, 3),
        (a.id, 4),
    ]
    assert [e.actor for e in b4.history] == ["alice", None, "bob", None]

    on_disk = store.binding("acme")
    assert on_disk == b4
    assert store.tenants() == ["acme"]
    stored = json.loads(raw.read("tenants/acme.json"))
    assert stored["generation"] == 4
    assert stored["active"]["version"] == 4
    assert visible(raw, "tenants") == ["acme.json"]
    assert hidden(raw, "tenants") == []  # no temp files left


def test_bindings_survive_reopening_the_store(store: AdapterStore) -> None:
    a = store.put(*checkpoint())
    store.activate("acme", a.id)
    reopened = open_store(store.location)
    assert reopened.binding("acme") == store.binding("acme")
    assert reopened.ids() == [a.id]


def test_tenants_are_independent(store: AdapterStore) -> None:
    a = store.put(*checkpoint(seed=1))
    b = store.put(*checkpoint(seed=2))
    store.activate("acme", a.id)
    store.activate("acme", b.id)
    g = store.activate("globex", a.id)
    assert g.generation == 1
    assert g.active is not None and g.active.version == 1
    acme = store.binding("acme")
    assert acme.active is not None and acme.active.adapter_id == b.id
    assert store.tenants() == ["acme", "globex"]


def test_activating_an_unknown_id_raises_and_changes_nothing(store: AdapterStore, raw: Raw) -> None:
    a = store.put(*checkpoint())
    with pytest.raises(KeyError):
        store.activate("acme", "f" * 24)
    assert not raw.exists("tenants/acme.json")
    store.activate("acme", a.id)
    before = raw.read("tenants/acme.json")
    with pytest.raises(KeyError):
        store.activate("acme", "0" * 24)
    assert raw.read("tenants/acme.json") == before


def test_activating_a_corrupt_adapter_raises_and_changes_nothing(
    store: AdapterStore, raw: Raw
) -> None:
    good = store.put(*checkpoint(seed=1))
    bad = store.put(*checkpoint(seed=2))
    store.activate("acme", good.id)
    before = raw.read("tenants/acme.json")
    raw.write(f"adapters/{bad.id}/{TENSORS_FILE}", b"garbage")
    with pytest.raises(CheckpointError):
        store.activate("acme", bad.id)
    assert raw.read("tenants/acme.json") == before


@pytest.mark.parametrize(
    "tenant",
    ["../evil", "..", ".hidden", "", "a/b", "a b", "x" * 200, "-dash", "t\n", "ü-tenant"],
)
def test_invalid_tenant_names_are_refused(store: AdapterStore, raw: Raw, tenant: str) -> None:
    a = store.put(*checkpoint())
    with pytest.raises(ValueError):
        store.binding(tenant)
    with pytest.raises(ValueError):
        store.activate(tenant, a.id)
    with pytest.raises(ValueError):
        store.activate(tenant, None)
    assert store.tenants() == []
    assert raw.listdir("tenants") == []
    # nothing written anywhere: beside the adapters, only the folder store's empty "tenants"
    assert sorted(set(raw.listdir("")) - {"tenants"}) == ["adapters"]


@pytest.mark.parametrize("tenant", ["acme", "a", "Tenant_01", "team.search-prod", "9lives"])
def test_valid_tenant_names_are_accepted(store: AdapterStore, tenant: str) -> None:
    a = store.put(*checkpoint())
    assert store.activate(tenant, a.id).tenant == tenant
    assert store.tenants() == [tenant]


def test_concurrent_activations_never_lose_a_version(store: AdapterStore) -> None:
    ids = [store.put(*checkpoint(seed=s)).id for s in range(4)]
    n_threads, per_thread = 8, 5
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for j in range(per_thread):
                store.activate("acme", ids[(k + j) % len(ids)], actor=f"w{k}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    b = store.binding("acme")
    total = n_threads * per_thread
    assert b.generation == total
    assert [e.version for e in b.history] == list(range(1, total + 1))
    assert b.active == b.history[-1]


def test_a_delete_landing_after_activate_checked_the_adapter_wins_cleanly(
    store: AdapterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica deletes the adapter after `activate` validated it, before it binds:
    activate fails (KeyError) and no binding names the deleted adapter."""
    keep = store.put(*checkpoint(seed=1))
    gone = store.put(*checkpoint(seed=2))
    store.activate("acme", keep.id)
    before = store.binding("acme")
    replica = open_store(store.location)
    real_get = store.get

    def get_then_deleted(adapter_id: str) -> Any:
        found = real_get(adapter_id)
        replica.delete(adapter_id)  # lands between the check and the bind
        return found

    monkeypatch.setattr(store, "get", get_then_deleted)
    with pytest.raises(KeyError):
        store.activate("acme", gone.id)
    assert store.binding("acme") == before
    assert gone.id not in store.ids() and store.bound() == {keep.id: ["acme"]}


def test_a_delete_arriving_while_activate_binds_waits_and_refuses(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica deletes the adapter while `activate` holds the lock: the delete waits
    for the binding and then refuses (the adapter is bound), so the binding stays valid.
    Folder-only: the object store has no lock to wait for (its interleavings are in
    test_object_store.py)."""
    store = folder_store
    adapter = store.put(*checkpoint(seed=3))
    replica = FolderStore(store.root)
    outcome: list[BaseException | None] = []

    def delete() -> None:
        try:
            replica.delete(adapter.id)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    deleter = threading.Thread(target=delete)
    real_binding = store.binding

    def binding_while_a_delete_waits(tenant: str) -> TenantBinding:
        if not deleter.is_alive() and not outcome:  # the first read, under the lock
            deleter.start()
            deleter.join(0.2)
            assert deleter.is_alive(), outcome  # it waits for the lock activate holds
        return real_binding(tenant)

    monkeypatch.setattr(store, "binding", binding_while_a_delete_waits)
    bound = store.activate("acme", adapter.id)
    deleter.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
    assert "active for tenant" in str(outcome[0])
    assert bound.active is not None and bound.active.adapter_id == adapter.id
    assert replica.get(adapter.id).id == adapter.id  # still there, still valid


# -- crash safety -------------------------------------------------------------------------------
# The folder store's own mechanics (a crash or a full disk between write and rename, staging
# folders, a rename that loses to another replica's): folder-only by nature, the object store
# writes each object whole or not at all. Its analogues (an upload cut between the tensors and
# the manifest, a lost create-only race) are in test_object_store.py.
class SimulatedCrash(OSError):
    pass


def test_crash_during_binding_write_keeps_the_old_binding(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = folder_store
    a = store.put(*checkpoint(seed=1))
    b = store.put(*checkpoint(seed=2))
    store.activate("acme", a.id)
    path = store.root / "tenants" / "acme.json"
    before = path.read_bytes()
    seen: list[tuple[str, bytes]] = []

    def crash(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append((os.fspath(dst), Path(src).read_bytes()))  # fully written, not yet renamed
        raise SimulatedCrash("power cut between write and rename")

    with monkeypatch.context() as m:
        m.setattr(fsutil.os, "replace", crash)
        m.setattr(fsutil.os, "rename", crash)
        with pytest.raises(SimulatedCrash):
            store.activate("acme", b.id)

    assert len(seen) == 1
    assert seen[0][0] == os.fspath(path)
    assert json.loads(seen[0][1])["generation"] == 2  # the new binding had been written out
    # the store still reads the old state, and nothing half-written sits under a final name
    assert path.read_bytes() == before
    old = store.binding("acme")
    assert old.generation == 1
    assert old.active is not None and old.active.adapter_id == a.id
    assert store.tenants() == ["acme"]
    assert visible(FolderRaw(store.root), "tenants") == ["acme.json"]
    # retrying after the "reboot" succeeds and continues the numbering
    new = store.activate("acme", b.id)
    assert new.generation == 2
    assert new.active is not None and (new.active.adapter_id, new.active.version) == (b.id, 2)
    assert store.binding("acme") == new


def test_crash_during_first_binding_write_leaves_no_binding(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = folder_store
    a = store.put(*checkpoint())

    def crash(*args: object) -> None:
        raise SimulatedCrash("crash")

    with monkeypatch.context() as m:
        m.setattr(fsutil.os, "replace", crash)
        m.setattr(fsutil.os, "rename", crash)
        with pytest.raises(SimulatedCrash):
            store.activate("acme", a.id)
    assert store.binding("acme") == TenantBinding(tenant="acme")
    assert store.tenants() == []
    assert visible(FolderRaw(store.root), "tenants") == []
    assert store.activate("acme", a.id).generation == 1


def test_temp_file_left_by_a_hard_crash_is_invisible(store: AdapterStore, raw: Raw) -> None:
    a = store.put(*checkpoint())
    store.activate("acme", a.id)
    # what a kill -9 between write and rename would leave: a temp file next to the real one
    raw.write("tenants/.acme.json.x7q2.tmp", b'{"tenant": "acme", "gen')
    raw.write("tenants/.globex.json.abc.tmp", b"")
    assert store.tenants() == ["acme"]
    assert store.binding("acme").generation == 1
    assert store.binding("globex").generation == 0
    assert store.activate("acme", a.id).generation == 2


def test_crash_during_upload_keeps_the_old_state(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = folder_store
    existing = store.put(*checkpoint(seed=1))
    tb, mb = checkpoint(seed=2)
    staged: list[list[str]] = []

    def crash(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        staged.append(sorted(os.listdir(src)))  # both files written, folder not yet renamed
        raise SimulatedCrash("power cut between write and rename")

    with monkeypatch.context() as m:
        m.setattr(fsutil.os, "rename", crash)
        m.setattr(fsutil.os, "replace", crash)
        with pytest.raises(SimulatedCrash):
            store.put(tb, mb)

    assert staged == [[TENSORS_FILE, MANIFEST_FILE]]
    assert store.ids() == [existing.id]
    assert visible(FolderRaw(store.root), "adapters") == [existing.id]
    assert store.get(existing.id).id == existing.id
    # retry succeeds
    new = store.put(tb, mb)
    assert new.id != existing.id
    assert store.ids() == sorted([existing.id, new.id])
    assert store.get(new.id).id == new.id
    assert hidden(FolderRaw(store.root), "adapters") == []


def test_crash_during_upload_cleans_its_staging_folder(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = folder_store

    def crash(*args: object) -> None:
        raise SimulatedCrash("crash")

    with monkeypatch.context() as m:
        m.setattr(fsutil.os, "rename", crash)
        with pytest.raises(SimulatedCrash):
            store.put(*checkpoint())
    assert os.listdir(store.root / "adapters") == []


def test_crash_while_writing_upload_files_keeps_the_old_state(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash even before the rename (disk full while writing) publishes nothing."""
    store = folder_store
    existing = store.put(*checkpoint(seed=1))
    tb, mb = checkpoint(seed=2)
    real_write_bytes = Path.write_bytes

    def failing_write_bytes(self: Path, data: bytes) -> int:
        if self.name == MANIFEST_FILE:
            raise SimulatedCrash("disk full")
        return real_write_bytes(self, data)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", failing_write_bytes)
        with pytest.raises(SimulatedCrash):
            store.put(tb, mb)
    assert store.ids() == [existing.id]
    assert store.put(tb, mb).id in store.ids()


def test_concurrent_identical_upload_from_another_replica(
    folder_store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica publishes the same content between our check and our rename."""
    store = folder_store
    tb, mb = checkpoint()
    real_rename = os.rename

    def other_replica_wins(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        shutil.copytree(src, dst)
        real_rename(src, dst)  # fails: dst exists and is not empty

    with monkeypatch.context() as m:
        m.setattr(fsutil.os, "rename", other_replica_wins)
        adapter = store.put(tb, mb)
    assert store.ids() == [adapter.id]
    assert os.listdir(store.root / "adapters") == [adapter.id]
    assert store.get(adapter.id).id == adapter.id


def test_crash_during_save_checkpoint_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise SimulatedCrash("crash")

    with monkeypatch.context() as m:
        m.setattr(fsutil.os, "rename", crash)
        with pytest.raises(SimulatedCrash):
            save_checkpoint(tmp_path / "ckpt", make_manifest(), make_tensors(0))
    assert not (tmp_path / "ckpt").exists()
    assert os.listdir(tmp_path) == []
    adapter = save_checkpoint(tmp_path / "ckpt", make_manifest(), make_tensors(0))
    assert sorted(os.listdir(tmp_path / "ckpt")) == [TENSORS_FILE, MANIFEST_FILE]
    assert adapter.id


# -- fsutil ---------------------------------------------------------------------------------
def test_atomic_write_bytes_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    fsutil.atomic_write_bytes(target, b"one")
    fsutil.atomic_write_bytes(target, b"two, longer")
    assert target.read_bytes() == b"two, longer"
    assert os.listdir(tmp_path / "sub") == ["f.json"]


def test_atomic_publish_dir_is_a_no_op_when_final_exists(tmp_path: Path) -> None:
    final = tmp_path / "final"
    final.mkdir()
    (final / "a").write_bytes(b"first")
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "a").write_bytes(b"first")
    fsutil.atomic_publish_dir(staging, final)
    assert not staging.exists()
    assert (final / "a").read_bytes() == b"first"
