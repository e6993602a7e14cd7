"""The object store's own behaviour on a real S3-protocol server (tests/s3_server.py): what the
server enforces, compare-and-swap under contention, cut uploads, damaged objects, the races
with delete, an unreachable store, and the locations and endpoints that are refused. The
behaviour both stores share is in test_store.py, run on both."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import botocore.exceptions
import pytest
from pydantic import ValidationError

from adapters.checkpoint import MANIFEST_FILE, TENSORS_FILE, CheckpointError
from adapters.objects import ObjectStore
from adapters.s3 import NotModified, PreconditionFailed, S3Objects, check_endpoint
from adapters.store import (
    S3Location,
    StoreUnavailable,
    TenantBinding,
    parse_location,
)
from adapters.stores import open_store
from service.evaluation.records import GateFiles
from service.evaluation.sets import ValidationPair, ValidationSet
from service.ops.settings import Settings
from tests.adapters.test_store import checkpoint
from tests.s3_server import s3_client


def object_store(bucket: str, prefix: str = "qa/store") -> ObjectStore:
    store = open_store(f"s3://{bucket}/{prefix}")
    assert isinstance(store, ObjectStore)
    return store


# -- the server --------------------------------------------------------------------------------
def test_the_server_enforces_conditional_puts(s3_bucket: str) -> None:
    """moto 5.2.6 answers If-None-Match: * on an existing key and a stale If-Match with 412,
    and If-Match on a missing key with 404, as S3 documents; the store relies on all three."""
    c = s3_client()
    first = c.put_object(Bucket=s3_bucket, Key="k", Body=b"1", IfNoneMatch="*")["ETag"]

    def status(**kw: Any) -> int:
        try:
            c.put_object(Bucket=s3_bucket, Body=b"2", **kw)
        except botocore.exceptions.ClientError as e:
            return int(e.response["ResponseMetadata"]["HTTPStatusCode"])
        return 200

    assert status(Key="k", IfNoneMatch="*") == 412
    assert status(Key="k", IfMatch='"0123456789abcdef0123456789abcdef"') == 412
    assert c.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"1"  # nothing written
    assert status(Key="missing", IfMatch=first) == 404
    assert status(Key="k", IfMatch=first) == 200
    assert c.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"2"
    assert status(Key="new", IfNoneMatch="*") == 200


def test_the_client_maps_the_answers(s3_bucket: str) -> None:
    objects = S3Objects.connect(S3Location(s3_bucket, "p"))
    etag = objects.put("k", b"1", if_absent=True)
    with pytest.raises(PreconditionFailed):
        objects.put("k", b"2", if_absent=True)
    with pytest.raises(PreconditionFailed):
        objects.put("k", b"2", if_match='"0123456789abcdef0123456789abcdef"')
    with pytest.raises(PreconditionFailed):  # gone since it was read: not what was read either
        objects.put("gone", b"2", if_match=etag)
    assert objects.get("k") == (b"1", etag)
    with pytest.raises(NotModified):
        objects.get("k", if_none_match=etag)
    assert objects.get("absent") is None
    assert not objects.exists("absent") and objects.exists("k")
    assert objects.keys("") == ["k"]
    assert [o["Key"] for o in s3_client().list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["p/k"]


# -- compare-and-swap -----------------------------------------------------------------------------
def test_twenty_concurrent_activations_through_two_replicas_lose_nothing(s3_bucket: str) -> None:
    """Two store instances (two replicas) on one bucket, 20 threads activating at once for one
    tenant: one binding, 20 events, versions 1..20, every activation's event in it once."""
    replicas = [object_store(s3_bucket), object_store(s3_bucket)]
    ids = [replicas[0].put(*checkpoint(seed=s)).id for s in range(3)]
    n = 20
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    returned: dict[str, TenantBinding] = {}

    def activate(k: int) -> None:
        try:
            barrier.wait()
            returned[f"admin-{k}"] = replicas[k % 2].activate(
                "acme", ids[k % len(ids)], actor=f"admin-{k}"
            )
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=activate, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for replica in replicas:
        b = replica.binding("acme")
        assert [e.version for e in b.history] == list(range(1, n + 1))
        assert sorted(e.actor or "" for e in b.history) == sorted(f"admin-{k}" for k in range(n))
        assert b.generation == n
        assert b.active == b.history[-1]
        assert replica.generation() == n  # one store-wide bump per activation
    # each caller got back the binding it wrote: its own event, active, at its version
    for actor, written in returned.items():
        assert written.active is not None and written.active.actor == actor
        assert written.history[-1] == written.active
        assert b.history[written.active.version - 1] == written.active


def test_rollback_goes_through_the_same_compare_and_swap(s3_bucket: str) -> None:
    store, replica = object_store(s3_bucket), object_store(s3_bucket)
    a, b = (store.put(*checkpoint(seed=s)).id for s in (1, 2))
    store.activate("acme", a)
    store.activate("acme", b)
    real_get = replica.objects.get
    raced: list[bool] = []

    def get_then_another_admin(key: str, if_none_match: str | None = None) -> Any:
        found = real_get(key, if_none_match)
        if key == "tenants/acme.json" and not raced:  # lands between the read and the write
            raced.append(True)
            store.activate("acme", None, actor="other")
        return found

    replica.objects.get = get_then_another_admin  # type: ignore[method-assign]
    rolled = replica.rollback("acme", actor="ops")
    # chosen from the binding read on the retry: the event before "other"'s is b
    assert rolled.active is not None and (rolled.active.adapter_id, rolled.active.version) == (b, 4)
    assert [e.adapter_id for e in store.binding("acme").history] == [a, b, None, b]
    with pytest.raises(LookupError):
        object_store(s3_bucket).rollback("globex")


def test_generation_is_read_conditionally_and_sees_other_replicas(s3_bucket: str) -> None:
    store, replica = object_store(s3_bucket), object_store(s3_bucket)
    assert store.generation() == 0
    a = replica.put(*checkpoint()).id
    replica.activate("acme", a)
    assert store.generation() == 1
    unchanged: list[str] = []
    real_get = store.objects.get

    def spy(key: str, if_none_match: str | None = None) -> Any:
        try:
            return real_get(key, if_none_match)
        except NotModified:
            unchanged.append(key)
            raise

    store.objects.get = spy  # type: ignore[method-assign]
    assert store.generation() == 1
    assert unchanged == ["generation"]  # a 304: nothing downloaded
    replica.activate("acme", None)
    assert store.generation() == 2


# -- uploads and damage --------------------------------------------------------------------------
def test_an_upload_cut_between_tensors_and_manifest_leaves_no_adapter(s3_bucket: str) -> None:
    store = object_store(s3_bucket)
    tb, mb = checkpoint(seed=4)
    real_put = store.objects.put

    def cut(key: str, data: bytes, **kw: Any) -> str:
        if key.endswith(MANIFEST_FILE):
            raise StoreUnavailable("connection reset (simulated)")
        return real_put(key, data, **kw)

    store.objects.put = cut  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        store.put(tb, mb)
    del store.objects.put  # the connection is back
    replica = object_store(s3_bucket)
    assert replica.ids() == []
    keys = replica.objects.keys("adapters/")
    assert len(keys) == 1 and keys[0].endswith(TENSORS_FILE)  # the tensors are there, unseen
    stored = replica.put(tb, mb)  # a retry publishes it
    assert replica.ids() == [stored.id] and replica.get(stored.id).id == stored.id


def test_a_corrupted_adapter_object_is_refused_by_digest_and_repaired_by_upload(
    s3_bucket: str,
) -> None:
    store = object_store(s3_bucket)
    tb, mb = checkpoint(seed=5)
    adapter = store.put(tb, mb)
    store.activate("acme", adapter.id)
    key = f"qa/store/adapters/{adapter.id}/{TENSORS_FILE}"
    damaged = bytearray(tb)
    damaged[-3] ^= 0x01  # one bit in the last tensor value
    s3_client().put_object(Bucket=s3_bucket, Key=key, Body=bytes(damaged))
    with pytest.raises(CheckpointError) as ei:
        store.get(adapter.id)
    assert any("sha256" in r for r in ei.value.reasons)
    with pytest.raises(CheckpointError):
        store.activate("globex", adapter.id)
    assert store.binding("globex") == TenantBinding(tenant="globex")
    generation = store.generation()
    assert store.put(tb, mb).id == adapter.id  # the same upload replaces the damaged copy
    assert store.get(adapter.id).id == adapter.id
    assert store.generation() == generation + 1  # so every replica loads it again


def test_a_lost_create_race_verifies_the_winners_copy(s3_bucket: str) -> None:
    """Another replica publishes the same content between our check and our create: the
    create-only manifest put answers 412 and the stored copy is verified and returned."""
    store, replica = object_store(s3_bucket), object_store(s3_bucket)
    tb, mb = checkpoint(seed=6)
    real_exists = store.objects.exists

    def not_yet(key: str) -> bool:
        found = real_exists(key)
        if key.endswith(MANIFEST_FILE):
            replica.put(tb, mb)  # lands right after our check
        return found

    store.objects.exists = not_yet  # type: ignore[method-assign]
    adapter = store.put(tb, mb)
    assert replica.ids() == [adapter.id]
    assert replica.get(adapter.id).id == adapter.id


# -- activate and delete on two replicas --------------------------------------------------------
def test_an_activation_landing_inside_a_delete_keeps_the_adapter(s3_bucket: str) -> None:
    """The binding is written after the delete checked the bindings: the delete sees it on
    its second look, puts the manifest back and refuses; the binding stays valid."""
    store, replica = object_store(s3_bucket), object_store(s3_bucket)
    adapter = store.put(*checkpoint(seed=7))
    real_bound = replica.bound
    calls: list[int] = []

    def bound_then_activated() -> dict[str, list[str]]:
        found = real_bound()
        if not calls:  # after the delete's first look, before its manifest removal
            store.activate("acme", adapter.id)
        calls.append(1)
        return found

    replica.bound = bound_then_activated  # type: ignore[method-assign]
    generation = store.generation()
    with pytest.raises(ValueError, match="active for tenant"):
        replica.delete(adapter.id)
    assert store.get(adapter.id).id == adapter.id
    assert store.bound() == {adapter.id: ["acme"]}
    assert store.generation() == generation + 2  # the activation, then the restore


def test_a_delete_landing_inside_an_activation_undoes_the_binding(s3_bucket: str) -> None:
    """The adapter is deleted after the activation checked it, before its binding is
    written: the check after the write finds it gone and puts the old binding back."""
    store, replica = object_store(s3_bucket), object_store(s3_bucket)
    keep = store.put(*checkpoint(seed=8))
    gone = store.put(*checkpoint(seed=9))
    store.activate("acme", keep.id)
    before = store.binding("acme")
    real_put = store.objects.put
    deleted: list[str] = []

    def delete_then_put(key: str, data: bytes, **kw: Any) -> str:
        if key == "tenants/acme.json" and not deleted:
            replica.delete(gone.id)  # nothing binds it yet: the delete goes through
            deleted.append(gone.id)
        return real_put(key, data, **kw)

    store.objects.put = delete_then_put  # type: ignore[method-assign]
    with pytest.raises(KeyError):
        store.activate("acme", gone.id)
    assert store.binding("acme") == before
    assert store.bound() == {keep.id: ["acme"]} and store.ids() == [keep.id]


# -- records, outages, locations -----------------------------------------------------------------
def test_gate_files_live_on_the_object_store(s3_bucket: str) -> None:
    files, other = (
        GateFiles(object_store(s3_bucket).records),
        GateFiles(object_store(s3_bucket).records),
    )
    vs = ValidationSet(
        tenant="acme",
        sha256="0" * 64,
        uploaded_at="2026-01-01T00:00:00+00:00",
        pairs=[ValidationPair(id="q1", query="a query", positive_ids=["d1"])],
    )
    files.save_validation(vs)
    assert other.validation("acme") == vs  # every replica reads the same one
    assert other.delete_validation("acme") and files.validation("acme") is None
    assert not files.delete_validation("acme")
    assert files.records.keys("gates/") == []
    with pytest.raises(KeyError):
        files.records.read("../tenants/acme.json")


def test_an_unreachable_store_fails_fast_with_an_os_error(
    s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    store = object_store("qa-bucket")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as ei:
        store.generation()
    assert isinstance(ei.value, OSError)
    assert "s3://qa-bucket/qa/store/generation" in str(ei.value)
    assert time.monotonic() - started < 15  # bounded retries, never a hang


def test_a_missing_bucket_says_so(s3_env: Any) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        object_store("qa-no-such-bucket").ids()


@pytest.mark.parametrize(
    "location",
    ["gs://bucket/prefix", "http://example.com/x", "file:///tmp/store", "S3A://bucket/x", "s3:"],
)
def test_other_schemes_are_refused(location: str) -> None:
    with pytest.raises(ValueError, match=r"not supported|not a valid bucket"):
        parse_location(location)
    with pytest.raises(ValidationError, match="adapter store"):
        Settings(adapter_store=location)


@pytest.mark.parametrize(
    "location",
    [
        "s3://key:secret@bucket/prefix",
        "s3://bucket:9000/prefix",
        "s3://bucket/prefix?versionId=1",
        "s3://Bad_Bucket/prefix",
        "s3://bucket/../up",
        "s3://bucket/a//b",
    ],
)
def test_s3_urls_carry_a_bucket_and_a_prefix_only(location: str) -> None:
    with pytest.raises(ValueError, match="adapter store"):
        parse_location(location)


def test_settings_take_a_folder_or_an_s3_url() -> None:
    folder = Settings(adapter_store="var/x")
    assert folder.adapter_store == parse_location("var/x")
    assert folder.beside_store("audit.log") == parse_location("var/x/audit.log")
    s3 = Settings(adapter_store="s3://bucket/team/prod/")
    assert s3.adapter_store == "s3://bucket/team/prod"
    assert str(s3.beside_store("audit.log")) == "var/audit.log"  # a replica's own file
    assert parse_location("s3://bucket") == S3Location("bucket", "")


@pytest.mark.parametrize(
    ("endpoint", "accepted"),
    [
        ("https://s3.storage.example.com", True),
        ("http://127.0.0.1:9000", True),
        ("http://localhost:9000", True),
        ("http://[::1]:9000", True),
        ("http://10.0.0.5:9000", False),
        ("http://minio.internal:9000", False),
    ],
)
def test_plain_http_only_on_loopback(
    s3_env: Any, monkeypatch: pytest.MonkeyPatch, endpoint: str, accepted: bool
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    if accepted:
        check_endpoint(endpoint)
        assert object_store("bucket").objects.endpoint == endpoint
    else:
        with pytest.raises(ValueError, match="loopback"):
            open_store("s3://bucket/prefix")
