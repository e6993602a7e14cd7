"""The adapter core: manifest, checkpoint format, validation, forward and grouped application.

Everything is built synthetically with numpy; no model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from adapters import (
    Adapter,
    AdapterKind,
    CheckpointError,
    Manifest,
    ModelInfo,
    apply_grouped,
    load_checkpoint,
    save_checkpoint,
)
from adapters.checkpoint import (
    MANIFEST_FILE,
    TENSORS_FILE,
    content_id,
    parse_checkpoint,
    serialize,
)
from adapters.kinds import forward

DIN, DOUT = 12, 6


# -- helpers ----------------------------------------------------------------------------------
def make_manifest(
    kind: AdapterKind = AdapterKind.LINEAR, din: int = DIN, dout: int = DOUT, **kw: Any
) -> Manifest:
    return Manifest(
        kind=kind,
        in_dim=din,
        out_dim=dout,
        query_model=ModelInfo(name="query-model", dim=din, pooling="last", max_tokens=512),
        document_model=ModelInfo(name="doc-model", dim=dout),
        training={"mode": "align", "seed": 0, "lr": 1e-3},
        evaluation={"metric": "ndcg@10", "before": 0.3, "after": 0.4},
        **kw,
    )


def linear_tensors(din: int = DIN, dout: int = DOUT, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "weight": (rng.standard_normal((dout, din)) / np.sqrt(din)).astype(np.float32),
        "bias": (rng.standard_normal(dout) * 0.1).astype(np.float32),
    }


def linear_adapter(din: int = DIN, dout: int = DOUT, seed: int = 0, **kw: Any) -> Adapter:
    tb, mb = serialize(
        make_manifest(AdapterKind.LINEAR, din, dout, **kw), linear_tensors(din, dout, seed)
    )
    return parse_checkpoint(tb, mb)


def identity_adapter(dim: int, **kw: Any) -> Adapter:
    tb, mb = serialize(make_manifest(AdapterKind.IDENTITY, dim, dim, **kw), {})
    return parse_checkpoint(tb, mb)


def manifest_dict(**kw: Any) -> dict[str, Any]:
    """A valid manifest as plain JSON data, to be broken on purpose."""
    return make_manifest(**kw).model_dump(mode="json")


def reasons_of(tensor_bytes: bytes, manifest_bytes: bytes) -> list[str]:
    with pytest.raises(CheckpointError) as ei:
        parse_checkpoint(tensor_bytes, manifest_bytes)
    reasons = ei.value.reasons
    assert reasons, "a CheckpointError must say why"
    assert str(ei.value) == "; ".join(reasons)
    return reasons


def raw_bytes(
    tensors: dict[str, np.ndarray], manifest: dict[str, Any] | Manifest
) -> tuple[bytes, bytes]:
    """Serialise exactly what is given (no casting, no hash filled in)."""
    tb = st_save(tensors) if tensors else st_save({})
    if isinstance(manifest, Manifest):
        mb = manifest.model_dump_json().encode()
    else:
        mb = json.dumps(manifest).encode()
    return tb, mb


def has(reasons: list[str], *needles: str) -> bool:
    return any(all(n in r for n in needles) for r in reasons)


# -- manifest ---------------------------------------------------------------------------------
def test_manifest_defaults_and_json_round_trip() -> None:
    m = make_manifest(name="first try")
    assert m.format_version == 1
    assert m.normalize is True
    assert m.created_at  # filled in
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"din": 12, "dout": 6, "kind": AdapterKind.IDENTITY}, "identity"),
        ({"format_version": 2}, "format_version"),
    ],
)
def test_manifest_constructor_refuses_inconsistent(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        make_manifest(**kwargs)


def test_manifest_constructor_refuses_dims_not_matching_models() -> None:
    with pytest.raises(ValueError) as ei:
        Manifest(
            kind=AdapterKind.LINEAR,
            in_dim=10,
            out_dim=5,
            query_model=ModelInfo(name="q", dim=11),
            document_model=ModelInfo(name="d", dim=4),
        )
    msg = str(ei.value)
    assert "query_model.dim" in msg
    assert "document_model.dim" in msg


# -- checkpoint round trip ----------------------------------------------------------------------
def test_save_load_round_trip_linear(tmp_path: Path) -> None:
    tensors = linear_tensors()
    manifest = make_manifest(name="v1")
    saved = save_checkpoint(tmp_path / "ckpt", manifest, tensors)
    folder = tmp_path / "ckpt"

    assert sorted(p.name for p in folder.iterdir()) == [TENSORS_FILE, MANIFEST_FILE]
    # nothing else (no staging folder) is left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    loaded = load_checkpoint(folder)
    assert loaded.id == saved.id
    assert loaded.manifest == saved.manifest
    assert set(loaded.tensors) == {"weight", "bias"}
    for k, v in tensors.items():
        assert loaded.tensors[k].dtype == np.float32
        np.testing.assert_array_equal(loaded.tensors[k], v)
    assert loaded.nbytes == sum(v.nbytes for v in tensors.values())
    assert loaded.manifest.name == "v1"
    assert loaded.manifest.training == manifest.training
    assert loaded.manifest.evaluation == manifest.evaluation


def test_checkpoint_files_are_safetensors_and_json_not_pickle(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", make_manifest(), linear_tensors())
    raw = (tmp_path / "ckpt" / TENSORS_FILE).read_bytes()
    assert not raw.startswith(b"\x80")  # pickle protocol marker
    assert not raw.startswith(b"PK")  # torch zip archive
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header["weight"]["dtype"] == "F32"
    assert header["weight"]["shape"] == [DOUT, DIN]
    assert header["bias"]["shape"] == [DOUT]
    assert set(st_load(raw)) == {"weight", "bias"}

    manifest = json.loads((tmp_path / "ckpt" / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "linear"
    assert manifest["in_dim"] == DIN
    assert manifest["out_dim"] == DOUT
    assert manifest["tensors_sha256"] == hashlib.sha256(raw).hexdigest()
    assert manifest["query_model"]["dim"] == DIN
    assert manifest["document_model"]["dim"] == DOUT


def test_save_load_round_trip_identity(tmp_path: Path) -> None:
    saved = save_checkpoint(tmp_path / "ident", make_manifest(AdapterKind.IDENTITY, 8, 8), {})
    folder = tmp_path / "ident"
    assert sorted(p.name for p in folder.iterdir()) == [TENSORS_FILE, MANIFEST_FILE]
    raw = (folder / TENSORS_FILE).read_bytes()
    # a real (empty) safetensors file that any safetensors reader accepts
    assert st_load(raw) == {}
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["tensors_sha256"] == hashlib.sha256(raw).hexdigest()

    loaded = load_checkpoint(folder)
    assert loaded.id == saved.id
    assert loaded.tensors == {}
    assert loaded.manifest.kind == AdapterKind.IDENTITY
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.apply(x), x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6
    )


def test_parsed_manifest_carries_tensor_hash_even_if_upload_left_it_empty() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    mb = make_manifest().model_dump_json().encode()  # tensors_sha256 == ""
    adapter = parse_checkpoint(tb, mb)
    assert adapter.manifest.tensors_sha256 == hashlib.sha256(tb).hexdigest()


def test_id_is_deterministic_and_ignores_created_at_and_name(tmp_path: Path) -> None:
    tensors = linear_tensors(seed=3)
    a = save_checkpoint(
        tmp_path / "a", make_manifest(name="alpha", created_at="2020-01-01T00:00:00+00:00"), tensors
    )
    b = save_checkpoint(
        tmp_path / "b", make_manifest(name="beta", created_at="2031-06-30T12:00:00+00:00"), tensors
    )
    c = save_checkpoint(tmp_path / "c", make_manifest(), {k: v.copy() for k, v in tensors.items()})
    assert a.id == b.id == c.id
    assert load_checkpoint(tmp_path / "a").id == a.id
    assert len(a.id) == 24
    assert all(ch in "0123456789abcdef" for ch in a.id)


def test_id_changes_when_weights_change() -> None:
    tensors = linear_tensors(seed=3)
    base = parse_checkpoint(*serialize(make_manifest(), tensors))
    bumped = {k: v.copy() for k, v in tensors.items()}
    bumped["weight"][0, 0] += 1e-3
    other = parse_checkpoint(*serialize(make_manifest(), bumped))
    assert other.id != base.id
    bias_bumped = {k: v.copy() for k, v in tensors.items()}
    bias_bumped["bias"][-1] = -bias_bumped["bias"][-1] + 1.0
    assert parse_checkpoint(*serialize(make_manifest(), bias_bumped)).id not in {base.id, other.id}


def test_id_changes_when_what_the_manifest_says_about_the_tensors_changes() -> None:
    tensors = linear_tensors()
    base = parse_checkpoint(*serialize(make_manifest(), tensors)).id
    assert parse_checkpoint(*serialize(make_manifest(normalize=False), tensors)).id != base
    other_model = make_manifest().model_copy(
        update={"query_model": ModelInfo(name="another-query-model", dim=DIN)}
    )
    assert parse_checkpoint(*serialize(other_model, tensors)).id != base


def test_content_id_matches_parse() -> None:
    tb, mb = serialize(make_manifest(), linear_tensors())
    adapter = parse_checkpoint(tb, mb)
    assert content_id(tb, adapter.manifest) == adapter.id


def test_save_refuses_existing_folder(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", make_manifest(), linear_tensors())
    before = (tmp_path / "ckpt" / TENSORS_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "ckpt", make_manifest(), linear_tensors(seed=9))
    assert (tmp_path / "ckpt" / TENSORS_FILE).read_bytes() == before


def test_save_refuses_invalid_checkpoint_and_writes_nothing(tmp_path: Path) -> None:
    bad = linear_tensors()
    bad["weight"] = bad["weight"][:, :-1]
    with pytest.raises(CheckpointError) as ei:
        save_checkpoint(tmp_path / "ckpt", make_manifest(), bad)
    assert has(ei.value.reasons, "weight", "shape")
    assert list(tmp_path.iterdir()) == []


def test_load_reports_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(tmp_path / "empty")
    assert len(ei.value.reasons) == 2
    assert has(ei.value.reasons, TENSORS_FILE)
    assert has(ei.value.reasons, MANIFEST_FILE)


def test_checkpoint_error_is_a_value_error() -> None:
    err = CheckpointError(["a", "b"])
    assert isinstance(err, ValueError)
    assert err.reasons == ["a", "b"]
    assert str(err) == "a; b"


# -- validation: one problem at a time ----------------------------------------------------------
def test_valid_bytes_parse() -> None:
    adapter = parse_checkpoint(*serialize(make_manifest(), linear_tensors()))
    assert adapter.manifest.in_dim == DIN


def test_refuses_wrong_tensor_shape() -> None:
    t = linear_tensors()
    t["weight"] = np.zeros((DIN, DOUT), np.float32)  # transposed
    reasons = reasons_of(*serialize(make_manifest(), t))
    assert reasons == [reasons[0]]
    assert has(reasons, "'weight'", str((DIN, DOUT)), str((DOUT, DIN)))


def test_refuses_missing_tensor() -> None:
    t = linear_tensors()
    del t["bias"]
    reasons = reasons_of(*serialize(make_manifest(), t))
    assert len(reasons) == 1
    assert has(reasons, "'bias'", "missing")


def test_refuses_unexpected_tensor() -> None:
    t = linear_tensors()
    t["scale"] = np.ones(DOUT, np.float32)
    reasons = reasons_of(*serialize(make_manifest(), t))
    assert len(reasons) == 1
    assert has(reasons, "unexpected", "'scale'")


def test_refuses_tensors_on_identity() -> None:
    reasons = reasons_of(
        *serialize(make_manifest(AdapterKind.IDENTITY, 8, 8), {"weight": np.eye(8)})
    )
    assert has(reasons, "unexpected", "'weight'", "identity")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["weight", "bias"])
def test_refuses_non_finite_values(bad: float, name: str) -> None:
    t = linear_tensors()
    t[name].flat[1] = bad
    reasons = reasons_of(*serialize(make_manifest(), t))
    assert len(reasons) == 1
    assert has(reasons, f"'{name}'", "non-finite")


def test_refuses_non_float_dtype() -> None:
    t = linear_tensors()
    tb, mb = raw_bytes({"weight": t["weight"].astype(np.int32), "bias": t["bias"]}, make_manifest())
    reasons = reasons_of(tb, mb)
    assert has(reasons, "'weight'", "dtype")


def test_accepts_float64_and_serves_float32() -> None:
    t = {k: v.astype(np.float64) for k, v in linear_tensors().items()}
    adapter = parse_checkpoint(*raw_bytes(t, make_manifest()))
    assert all(v.dtype == np.float32 for v in adapter.tensors.values())
    np.testing.assert_allclose(adapter.tensors["weight"], t["weight"], rtol=1e-6)


def test_refuses_tampered_tensor_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", make_manifest(), linear_tensors())
    f = tmp_path / "ckpt" / TENSORS_FILE
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 0x01  # flip one bit of the last float: still a valid, finite safetensors file
    f.write_bytes(bytes(raw))
    assert np.isfinite(st_load(bytes(raw))["weight"]).all()
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(tmp_path / "ckpt")
    assert len(ei.value.reasons) == 1
    assert has(ei.value.reasons, "sha256", "mismatch")


def test_refuses_tampered_hash_in_manifest() -> None:
    tb, mb = serialize(make_manifest(), linear_tensors())
    m = json.loads(mb)
    m["tensors_sha256"] = "0" * 64
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "sha256", "mismatch")


def test_refuses_manifest_missing_required_fields() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    for key in ("kind", "in_dim", "query_model", "document_model"):
        del m[key]
    reasons = reasons_of(tb, json.dumps(m).encode())
    for key in ("kind", "in_dim", "query_model", "document_model"):
        assert has(reasons, key), (key, reasons)
    assert len(reasons) >= 4


def test_refuses_model_info_missing_fields() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    del m["query_model"]["name"]
    del m["document_model"]["dim"]
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "query_model.name")
    assert has(reasons, "document_model.dim")


def test_refuses_dims_inconsistent_with_models_listing_both() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    m["query_model"]["dim"] = DIN + 1
    m["document_model"]["dim"] = DOUT + 1
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "query_model.dim", str(DIN + 1), str(DIN))
    assert has(reasons, "document_model.dim", str(DOUT + 1), str(DOUT))


def test_refuses_in_dim_inconsistent_with_query_model() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    m["in_dim"] = DIN * 2
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "query_model.dim", "in_dim")


def test_refuses_out_dim_inconsistent_with_document_model() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    m["out_dim"] = DOUT * 2
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "document_model.dim", "out_dim")


def test_refuses_identity_with_different_dims() -> None:
    m = manifest_dict(kind=AdapterKind.IDENTITY, din=8, dout=8)
    m["out_dim"] = 4
    m["document_model"]["dim"] = 4
    tb, mb = raw_bytes({}, m)
    reasons = reasons_of(tb, mb)
    assert has(reasons, "identity", "in_dim == out_dim")


@pytest.mark.parametrize("kind", ["mlp2", "LINEAR", "", "pickle"])
def test_refuses_unknown_kind(kind: str) -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    m["kind"] = kind
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "kind")


def test_refuses_unsupported_format_version() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    m["format_version"] = 99
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "format_version")


def test_refuses_unknown_manifest_field() -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    m = manifest_dict()
    m["pickle_payload"] = "x"
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "pickle_payload")


@pytest.mark.parametrize("manifest_bytes", [b"", b"{", b"[]", b"\xff\xfe not json", b"null"])
def test_refuses_unparseable_manifest(manifest_bytes: bytes) -> None:
    tb, _ = serialize(make_manifest(), linear_tensors())
    assert reasons_of(tb, manifest_bytes)


@pytest.mark.parametrize(
    "tensor_bytes",
    [
        b"definitely not safetensors",
        b"\x80\x04\x95" + b"\x00" * 40,  # a pickle header
        struct.pack("<Q", 10**12) + b"{}",  # header length far past the end
        struct.pack("<Q", 5) + b"nope!",  # header is not JSON
    ],
)
def test_refuses_unreadable_safetensors_bytes(tensor_bytes: bytes) -> None:
    _, mb = serialize(make_manifest(), linear_tensors())
    m = json.loads(mb)
    m["tensors_sha256"] = hashlib.sha256(tensor_bytes).hexdigest()  # only the content is wrong
    reasons = reasons_of(tensor_bytes, json.dumps(m).encode())
    assert has(reasons, TENSORS_FILE, "unreadable")


def test_refuses_truncated_tensor_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt", make_manifest(), linear_tensors())
    f = tmp_path / "ckpt" / TENSORS_FILE
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(tmp_path / "ckpt")
    assert has(ei.value.reasons, "sha256", "mismatch")
    assert has(ei.value.reasons, "unreadable")


# -- validation: every problem at once ------------------------------------------------------------
def test_lists_every_tensor_problem_at_once() -> None:
    t = linear_tensors()
    t["weight"] = np.zeros((DOUT + 1, DIN), np.float32)  # wrong shape
    t["bias"][0] = np.nan  # non-finite
    t["extra"] = np.zeros(3, np.float32)  # unexpected
    tb, mb = serialize(make_manifest(), t)
    m = json.loads(mb)
    m["tensors_sha256"] = "f" * 64  # hash mismatch
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "'weight'", "shape")
    assert has(reasons, "'bias'", "non-finite")
    assert has(reasons, "unexpected", "'extra'")
    assert has(reasons, "sha256", "mismatch")
    assert len(reasons) == 4


def test_lists_shape_and_non_finite_on_the_same_tensor() -> None:
    t = linear_tensors()
    t["weight"] = np.full((DOUT, DIN + 2), np.inf, np.float32)
    reasons = reasons_of(*serialize(make_manifest(), t))
    assert has(reasons, "'weight'", "shape")
    assert has(reasons, "'weight'", "non-finite")


def test_lists_missing_and_unexpected_together() -> None:
    t = {"w": np.zeros((DOUT, DIN), np.float32), "b": np.zeros(DOUT, np.float32)}
    reasons = reasons_of(*serialize(make_manifest(), t))
    assert has(reasons, "'weight'", "missing")
    assert has(reasons, "'bias'", "missing")
    assert has(reasons, "unexpected", "'w'")
    assert has(reasons, "unexpected", "'b'")
    assert len(reasons) == 4


def test_lists_manifest_and_tensor_file_problems_together() -> None:
    """A broken manifest does not hide what is wrong with the tensor file."""
    garbage = b"garbage, not safetensors"
    m = manifest_dict()
    m["query_model"]["dim"] = DIN + 1  # manifest inconsistency
    m["tensors_sha256"] = "a" * 64  # and the hash does not match either
    reasons = reasons_of(garbage, json.dumps(m).encode())
    assert has(reasons, "query_model.dim")
    assert has(reasons, "sha256", "mismatch")
    assert has(reasons, "unreadable")


def test_lists_missing_manifest_fields_and_non_finite_tensors_together() -> None:
    t = linear_tensors()
    t["weight"][0, 0] = np.nan
    tb, _ = serialize(make_manifest(), t)
    m = manifest_dict()
    del m["kind"]
    reasons = reasons_of(tb, json.dumps(m).encode())
    assert has(reasons, "kind")
    assert has(reasons, "'weight'", "non-finite")


# -- forward ------------------------------------------------------------------------------------
def test_linear_forward_is_affine_then_l2_normalised() -> None:
    t = linear_tensors(seed=5)
    adapter = parse_checkpoint(*serialize(make_manifest(), t))
    x = np.random.default_rng(7).standard_normal((9, DIN)).astype(np.float32)
    y = adapter.apply(x)
    ref = x.astype(np.float64) @ t["weight"].T.astype(np.float64) + t["bias"]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert y.shape == (9, DOUT)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-6)


def test_linear_forward_without_normalisation() -> None:
    t = linear_tensors(seed=5)
    adapter = parse_checkpoint(*serialize(make_manifest(normalize=False), t))
    x = np.random.default_rng(7).standard_normal((4, DIN)).astype(np.float32) * 3
    y = adapter.apply(x)
    ref = x.astype(np.float64) @ t["weight"].T.astype(np.float64) + t["bias"]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.linalg.norm(y, axis=1), 1.0)


def test_forward_accepts_float64_input_and_returns_float32() -> None:
    adapter = linear_adapter()
    x = np.random.default_rng(0).standard_normal((3, DIN))
    y = adapter.apply(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, adapter.apply(x.astype(np.float32)), rtol=1e-5, atol=1e-6)


def test_normalising_a_zero_output_gives_zeros_not_nan() -> None:
    m = make_manifest()
    tensors = {"weight": np.zeros((DOUT, DIN), np.float32), "bias": np.zeros(DOUT, np.float32)}
    y = forward(m, tensors, np.ones((2, DIN), np.float32))
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, 0.0)


def test_identity_forward() -> None:
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32) * 4
    np.testing.assert_array_equal(identity_adapter(8, normalize=False).apply(x), x)
    np.testing.assert_allclose(
        identity_adapter(8).apply(x), x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6
    )


def test_apply_does_not_modify_input() -> None:
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    before = x.copy()
    identity_adapter(8).apply(x)
    linear_adapter(8, 8).apply(x)
    np.testing.assert_array_equal(x, before)


# -- apply_grouped --------------------------------------------------------------------------------
def test_apply_grouped_matches_per_adapter_application_and_keeps_row_order() -> None:
    d = 8
    a = linear_adapter(d, d, seed=1)
    b = linear_adapter(d, d, seed=2, normalize=False)
    c = identity_adapter(d)
    choices: list[Adapter | None] = [a, b, c, None]
    rng = np.random.default_rng(11)
    n = 40
    x = rng.standard_normal((n, d)).astype(np.float32)
    assignment = [choices[i] for i in rng.integers(0, len(choices), n)]
    for choice in choices:  # every group is really present
        assert any(s is choice for s in assignment)

    out = apply_grouped(x, assignment)
    assert out.shape == (n, d)
    assert out.dtype == np.float32
    for choice in choices:
        rows = [i for i, s in enumerate(assignment) if s is choice]
        expected = x[rows] if choice is None else choice.apply(x[rows])
        np.testing.assert_allclose(out[rows], expected, rtol=1e-6, atol=1e-6)
    # row by row, too: each row's result does not depend on its neighbours
    for i in range(n):
        s = assignment[i]
        ref = x[i : i + 1] if s is None else s.apply(x[i : i + 1])
        np.testing.assert_allclose(out[i : i + 1], ref, rtol=1e-6, atol=1e-6)


def test_apply_grouped_with_projection_to_another_dim() -> None:
    a = linear_adapter(DIN, DOUT, seed=1)
    b = linear_adapter(DIN, DOUT, seed=2)
    x = np.random.default_rng(3).standard_normal((6, DIN)).astype(np.float32)
    assignment = [a, b, b, a, b, a]
    out = apply_grouped(x, assignment, out_dim=DOUT)
    assert out.shape == (6, DOUT)
    for i, s in enumerate(assignment):
        np.testing.assert_allclose(out[i], s.apply(x[i : i + 1])[0], rtol=1e-6, atol=1e-6)


def test_apply_grouped_equal_but_distinct_adapter_objects() -> None:
    a1 = linear_adapter(seed=4)
    a2 = linear_adapter(seed=4)
    assert a1 is not a2 and a1.id == a2.id
    x = np.random.default_rng(3).standard_normal((4, DIN)).astype(np.float32)
    out = apply_grouped(x, [a1, a2, a2, a1])
    np.testing.assert_allclose(out, a1.apply(x), rtol=1e-6, atol=1e-6)


def test_apply_grouped_all_pass_through() -> None:
    x = np.random.default_rng(3).standard_normal((4, 5))
    out = apply_grouped(x, [None] * 4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x.astype(np.float32))


def test_apply_grouped_empty_batch() -> None:
    out = apply_grouped(np.zeros((0, DIN), np.float32), [], out_dim=DOUT)
    assert out.shape == (0, DOUT)
    assert apply_grouped(np.zeros((0, DIN), np.float32), []).shape == (0, DIN)


def test_apply_grouped_refuses_mismatched_output_dims() -> None:
    x = np.zeros((2, DIN), np.float32)
    with pytest.raises(ValueError, match="output dim"):
        apply_grouped(x, [linear_adapter(DIN, DOUT), linear_adapter(DIN, DOUT + 2)])


def test_apply_grouped_refuses_pass_through_next_to_projection() -> None:
    x = np.zeros((2, DIN), np.float32)
    with pytest.raises(ValueError, match="output dim"):
        apply_grouped(x, [linear_adapter(DIN, DOUT), None])


def test_apply_grouped_refuses_disagreeing_out_dim_argument() -> None:
    x = np.zeros((2, DIN), np.float32)
    a = linear_adapter(DIN, DOUT)
    with pytest.raises(ValueError, match="output dim"):
        apply_grouped(x, [a, a], out_dim=DOUT + 1)


def test_apply_grouped_refuses_row_count_mismatch() -> None:
    a = linear_adapter()
    with pytest.raises(ValueError, match="rows"):
        apply_grouped(np.zeros((3, DIN), np.float32), [a, a])


def test_apply_grouped_refuses_wrong_input_dim() -> None:
    x = np.zeros((2, DIN + 1), np.float32)
    with pytest.raises(ValueError, match="input dim"):
        apply_grouped(x, [linear_adapter(DIN, DOUT)] * 2)
    with pytest.raises(ValueError, match="input dim"):
        apply_grouped(np.zeros((2, 4), np.float32), [identity_adapter(8)] * 2)
