"""Adapter kinds (linear, mlp, lowrank, hybrid): manifests, shapes, numpy vs torch forward,
starting points and checkpoint round trips. Synthetic tensors only; no model is loaded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from adapters import (
    AdapterKind,
    CheckpointError,
    Manifest,
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
)
from adapters.checkpoint import parse_checkpoint, serialize
from adapters.kinds import KINDS, erf, forward, forward_raw, gelu
from adapters.manifest import ManifestInconsistent
from training.modules import (
    HybridModule,
    LowRankModule,
    build_module,
    build_module_for,
    export_tensors,
    hybrid_identity,
    identity_init,
    init_tensors,
    manifest_params,
)

QD, DD = 12, 6  # query-model dim, document-model dim

PARAMS: dict[AdapterKind, dict[str, Any]] = {
    AdapterKind.LINEAR: {},
    AdapterKind.MLP: {"hidden": 16, "activation": "gelu"},
    AdapterKind.LOWRANK: {"rank": 3},
    AdapterKind.HYBRID: {"query_dim": QD, "document_dim": DD},
}
KIND_IDS = [k.value for k in PARAMS]


def in_dim_of(kind: AdapterKind, qd: int = QD, dd: int = DD) -> int:
    return qd + dd if kind == AdapterKind.HYBRID else qd


def make_manifest(
    kind: AdapterKind, qd: int = QD, dd: int = DD, params: dict | None = None, **kw: Any
) -> Manifest:
    return Manifest(
        kind=kind,
        in_dim=kw.pop("in_dim", in_dim_of(kind, qd, dd)),
        out_dim=dd,
        params=PARAMS[kind] if params is None else params,
        query_model=ModelInfo(name="query-model", dim=qd),
        document_model=ModelInfo(name="doc-model", dim=dd),
        **kw,
    )


def manifest_json(kind: AdapterKind, **changes: Any) -> bytes:
    d = json.loads(make_manifest(kind).model_dump_json())
    d.update(changes)
    return json.dumps(d).encode()


def random_tensors(m: Manifest, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)
        for name, shape in KINDS[m.kind].shapes(m).items()
    }


def unit_rows(n: int, d: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def problems_of(**kw: Any) -> list[str]:
    with pytest.raises(ValidationError) as e:
        make_manifest(**kw)
    causes = [(err.get("ctx") or {}).get("error") for err in e.value.errors()]
    assert len(causes) == 1 and isinstance(causes[0], ManifestInconsistent), causes
    return causes[0].problems


# -- manifests --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(PARAMS), ids=KIND_IDS)
def test_each_kind_has_a_valid_manifest_and_declared_inputs(kind: AdapterKind) -> None:
    m = make_manifest(kind)
    assert Manifest.model_validate_json(m.model_dump_json()) == m
    expected = ("query", "document") if kind == AdapterKind.HYBRID else ("query",)
    assert m.inputs == expected
    assert "inputs" not in m.model_dump()  # derived, not stored


def test_mlp_params_default_to_2048_gelu() -> None:
    m = make_manifest(AdapterKind.MLP, params={})
    assert m.resolved_params == {"hidden": 2048, "activation": "gelu"}
    assert KINDS[AdapterKind.MLP].shapes(m)["w1"] == (2048, QD)
    assert manifest_params("mlp") == {"hidden": 2048, "activation": "gelu"}


def test_hybrid_in_dim_is_the_sum_of_both_models() -> None:
    problems = problems_of(kind=AdapterKind.HYBRID, in_dim=QD)
    assert len(problems) == 1 and "hybrid in_dim (12)" in problems[0]
    assert f"{QD} + {DD} = {QD + DD}" in problems[0]
    # a plain linear adapter still needs in_dim == query_model.dim
    assert any("query_model.dim" in p for p in problems_of(kind=AdapterKind.LINEAR, in_dim=18))


@pytest.mark.parametrize(
    ("params", "needles"),
    [
        ({}, ["'query_dim' is required", "'document_dim' is required"]),
        ({"query_dim": QD}, ["'document_dim' is required"]),
        ({"query_dim": QD + 1, "document_dim": DD}, ["query_dim (13) != query_model.dim (12)"]),
        ({"query_dim": QD, "document_dim": 7}, ["document_dim (7) != document_model.dim (6)"]),
        ({"query_dim": "12", "document_dim": DD}, ["query_dim must be a positive integer"]),
        ({"query_dim": True, "document_dim": DD}, ["query_dim must be a positive integer"]),
        ({"query_dim": QD, "document_dim": DD, "rank": 2}, ["unexpected ['rank']"]),
    ],
)
def test_bad_hybrid_params_are_refused(params: dict, needles: list[str]) -> None:
    problems = problems_of(kind=AdapterKind.HYBRID, params=params)
    for needle in needles:
        assert any(needle in p for p in problems), (needle, problems)


def test_hybrid_manifest_lists_every_problem_at_once() -> None:
    problems = problems_of(
        kind=AdapterKind.HYBRID, in_dim=QD, params={"query_dim": 5, "extra": 1}, format_version=9
    )
    joined = " | ".join(problems)
    for needle in ("format_version", "hybrid in_dim", "unexpected ['extra']", "'document_dim'"):
        assert needle in joined
    assert "query_dim (5) != query_model.dim (12)" in joined
    # and the checkpoint parser reports them with the tensor problems too
    tb, _ = serialize(make_manifest(AdapterKind.HYBRID), {"weight": np.zeros((DD, QD))})
    with pytest.raises(CheckpointError) as e:
        parse_checkpoint(tb, manifest_json(AdapterKind.HYBRID, in_dim=QD, params={}))
    reasons = " | ".join(e.value.reasons)
    assert "hybrid in_dim" in reasons and "'query_dim' is required" in reasons


@pytest.mark.parametrize(
    ("kind", "params", "needle"),
    [
        (AdapterKind.MLP, {"hidden": 0}, "hidden must be a positive integer"),
        (AdapterKind.MLP, {"hidden": 8.0}, "hidden must be a positive integer"),
        (AdapterKind.MLP, {"activation": "tanh"}, "activation must be one of"),
        (AdapterKind.MLP, {"hiden": 8}, "unexpected ['hiden']"),
        (AdapterKind.LOWRANK, {}, "'rank' is required"),
        (AdapterKind.LOWRANK, {"rank": -1}, "rank must be a positive integer"),
    ],
)
def test_bad_mlp_and_lowrank_params_are_refused(kind, params, needle) -> None:
    assert any(needle in p for p in problems_of(kind=kind, params=params))


# -- shapes -----------------------------------------------------------------------------------
def test_declared_tensor_shapes() -> None:
    shapes = {k: KINDS[k].shapes(make_manifest(k)) for k in PARAMS}
    assert shapes[AdapterKind.LINEAR] == {"weight": (DD, QD), "bias": (DD,)}
    assert shapes[AdapterKind.MLP] == {"w1": (16, QD), "b1": (16,), "w2": (DD, 16), "b2": (DD,)}
    assert shapes[AdapterKind.LOWRANK] == {
        "weight": (DD, QD),
        "bias": (DD,),
        "down": (3, QD),
        "up": (DD, 3),
    }
    assert shapes[AdapterKind.HYBRID] == {"weight": (DD, QD + DD), "bias": (DD,)}


@pytest.mark.parametrize("kind", list(PARAMS), ids=KIND_IDS)
def test_checkpoint_refuses_wrong_missing_and_extra_tensors(kind: AdapterKind) -> None:
    m = make_manifest(kind)
    tensors = random_tensors(m)
    first = sorted(tensors)[0]
    last = sorted(tensors)[-1]
    bad = dict(tensors)
    bad[first] = np.zeros(tuple(s + 1 for s in tensors[first].shape), dtype=np.float32)
    del bad[last]
    bad["proj.weight"] = np.zeros((2, 2), dtype=np.float32)
    tb, mb = serialize(m, bad)
    with pytest.raises(CheckpointError) as e:
        parse_checkpoint(tb, mb)
    reasons = " | ".join(e.value.reasons)
    assert f"tensor {first!r} has shape" in reasons
    assert f"tensor {last!r} missing (kind {kind.value})" in reasons
    assert f"unexpected tensor 'proj.weight' for kind {kind.value}" in reasons


def test_forward_refuses_rows_of_the_wrong_width() -> None:
    m = make_manifest(AdapterKind.HYBRID)
    with pytest.raises(ValueError, match="query \\+ document"):
        forward(m, random_tensors(m), unit_rows(2, QD))


# -- numpy forward == torch module forward ----------------------------------------------------
def test_erf_and_gelu_match_math_and_torch() -> None:
    x = np.linspace(-9.0, 9.0, 20001)
    np.testing.assert_allclose(erf(x), [math.erf(v) for v in x], rtol=0, atol=1e-13)
    assert np.isnan(erf(np.array([np.nan]))).all()
    z = (np.random.default_rng(0).standard_normal(100_000) * 3).astype(np.float32)
    exact = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in z.astype(np.float64)]
    np.testing.assert_allclose(gelu(z), exact, rtol=1e-7, atol=1e-7)  # float32 rounding
    # torch's float32 erf is a little less exact than that (measured: <= 1.2e-6 at |x| ~ 3.4)
    ref = torch.nn.functional.gelu(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(gelu(z), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        (AdapterKind.LINEAR, None),
        (AdapterKind.MLP, {"hidden": 16, "activation": "gelu"}),
        (AdapterKind.MLP, {"hidden": 16, "activation": "relu"}),
        (AdapterKind.LOWRANK, None),
        (AdapterKind.HYBRID, None),
    ],
)
def test_numpy_forward_matches_torch_module(kind: AdapterKind, params: dict | None) -> None:
    m = make_manifest(kind, params=params)
    tensors = random_tensors(m, seed=3)
    module = build_module_for(m, tensors)
    exported = export_tensors(module)
    assert exported.keys() == tensors.keys()
    for k in tensors:
        np.testing.assert_array_equal(exported[k], tensors[k])
    x = unit_rows(7, m.in_dim) * 3  # not unit-norm: exercise the activation's range
    with torch.no_grad():
        y_torch = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(forward_raw(m, exported, x), y_torch, rtol=0, atol=1e-5)
    y = forward(m, exported, x)
    # float32 on both sides: relative error near zero is noise, hence the absolute floor
    np.testing.assert_allclose(
        y, y_torch / np.linalg.norm(y_torch, axis=1, keepdims=True), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", list(PARAMS), ids=KIND_IDS)
def test_default_init_matches_numpy_and_is_seeded(kind: AdapterKind) -> None:
    m = make_manifest(kind)
    kw: dict[str, Any] = {}
    if kind == AdapterKind.LOWRANK:
        kw["base"] = (np.ones((DD, QD), np.float32), np.zeros(DD, np.float32))
    t0 = init_tensors(kind, m.in_dim, m.out_dim, m.params, seed=0, **kw)
    t0b = init_tensors(kind, m.in_dim, m.out_dim, m.params, seed=0, **kw)
    assert all(np.array_equal(t0[k], t0b[k]) for k in t0)
    assert t0.keys() == KINDS[kind].shapes(m).keys()
    assert all(
        t0[k].shape == s and t0[k].dtype == np.float32 for k, s in KINDS[kind].shapes(m).items()
    )
    x = unit_rows(4, m.in_dim)
    module = build_module(kind, m.in_dim, m.out_dim, m.params, init=t0)
    with torch.no_grad():
        np.testing.assert_allclose(
            module(torch.from_numpy(x)).numpy(), forward_raw(m, t0, x), atol=1e-5
        )


# -- starting points --------------------------------------------------------------------------
def test_hybrid_identity_init_reproduces_the_document_vector_exactly() -> None:
    m = make_manifest(AdapterKind.HYBRID)
    t = init_tensors("hybrid", m.in_dim, m.out_dim, m.params)
    for k, v in hybrid_identity(QD, DD).items():
        np.testing.assert_array_equal(t[k], v)
    np.testing.assert_array_equal(t["weight"][:, :QD], 0)
    q, d = unit_rows(5, QD, seed=1), unit_rows(5, DD, seed=2)
    x = np.concatenate([q, d], axis=1)
    np.testing.assert_array_equal(forward_raw(m, t, x), d)  # bit-exact: only 0*q + 1*d
    np.testing.assert_allclose(forward(m, t, x), d, rtol=0, atol=1e-7)
    module = build_module_for(m)  # default init is the identity on the document part
    assert isinstance(module, HybridModule) and module.query_dim == QD
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), d, atol=1e-7)


def test_hybrid_identity_init_trains_on_the_query_part() -> None:
    m = make_manifest(AdapterKind.HYBRID)
    module = build_module_for(m)
    x = torch.from_numpy(np.concatenate([unit_rows(5, QD), unit_rows(5, DD, seed=2)], axis=1))
    target = torch.from_numpy(unit_rows(5, DD, seed=9))
    loss = (1 - torch.nn.functional.cosine_similarity(module(x), target)).mean()
    loss.backward()
    assert module.weight.grad is not None
    assert module.weight.grad[:, :QD].abs().sum() > 0


def test_lowrank_with_up_zero_equals_its_base() -> None:
    m = make_manifest(AdapterKind.LOWRANK)
    rng = np.random.default_rng(5)
    base = (
        rng.standard_normal((DD, QD)).astype(np.float32),
        rng.standard_normal(DD).astype(np.float32),
    )
    t = init_tensors("lowrank", QD, DD, {"rank": 3}, base=base, seed=1)
    np.testing.assert_array_equal(t["up"], 0)
    assert np.abs(t["down"]).sum() > 0  # random, so up gets a gradient
    x = unit_rows(6, QD)
    np.testing.assert_allclose(forward_raw(m, t, x), x @ base[0].T + base[1], atol=1e-6)
    # same-dim: the default base is the identity
    same = make_manifest(AdapterKind.LOWRANK, qd=DD, dd=DD)
    ts = init_tensors("lowrank", DD, DD, {"rank": 2})
    y = unit_rows(3, DD)
    np.testing.assert_allclose(forward(same, ts, y), y, atol=1e-6)
    for k, v in identity_init("lowrank", DD, DD, {"rank": 2}).items():
        np.testing.assert_array_equal(ts[k], v)


def test_lowrank_base_is_frozen_by_default() -> None:
    module = build_module("lowrank", DD, DD, {"rank": 2})
    assert isinstance(module, LowRankModule)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {"down", "up"}
    assert set(export_tensors(module)) == {"weight", "bias", "down", "up"}
    free = build_module("lowrank", DD, DD, {"rank": 2}, freeze_base=False)
    assert all(p.requires_grad for p in free.parameters())


def test_linear_init_from_a_base_and_identity() -> None:
    w, b = np.ones((DD, QD), np.float32), np.full(DD, 0.5, np.float32)
    t = init_tensors("linear", QD, DD, base=(w, b))
    np.testing.assert_array_equal(t["weight"], w)
    np.testing.assert_array_equal(t["bias"], b)
    eye = identity_init("linear", DD, DD)
    np.testing.assert_array_equal(eye["weight"], np.eye(DD))


def test_init_refusals() -> None:
    with pytest.raises(ValueError, match="needs a base map"):
        init_tensors("lowrank", QD, DD, {"rank": 2})
    with pytest.raises(ValueError, match="only used by linear and lowrank"):
        init_tensors(
            "hybrid", QD + DD, DD, PARAMS[AdapterKind.HYBRID], base=(np.eye(DD), np.zeros(DD))
        )
    with pytest.raises(ValueError, match="base has shapes"):
        init_tensors("linear", QD, DD, base=(np.eye(DD), np.zeros(DD)))
    with pytest.raises(ValueError, match="no identity"):
        identity_init("mlp", DD, DD)
    with pytest.raises(ValueError, match="query_dim \\+ document_dim"):
        build_module("hybrid", QD, DD, PARAMS[AdapterKind.HYBRID])
    with pytest.raises(ValueError, match="'rank' is required"):
        build_module("lowrank", DD, DD, {})
    with pytest.raises(ValueError, match="bad shapes"):
        build_module("linear", QD, DD, init={"weight": np.zeros((QD, DD)), "bias": np.zeros(DD)})


# -- checkpoint round trip --------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(PARAMS), ids=KIND_IDS)
def test_checkpoint_round_trip(tmp_path: Path, kind: AdapterKind) -> None:
    m = make_manifest(kind, name=f"{kind.value}-adapter")
    tensors = export_tensors(build_module_for(m, random_tensors(m, seed=11)))
    saved = save_checkpoint(tmp_path / kind.value, m, tensors)
    loaded = load_checkpoint(tmp_path / kind.value)
    assert loaded.id == saved.id
    assert loaded.manifest.kind == kind and loaded.manifest.params == m.params
    assert loaded.manifest.inputs == m.inputs
    assert loaded.tensors.keys() == tensors.keys()
    for k in tensors:
        np.testing.assert_array_equal(loaded.tensors[k], tensors[k])
    x = unit_rows(4, m.in_dim)
    np.testing.assert_allclose(loaded.apply(x), forward(m, tensors, x), atol=1e-7)
    assert np.allclose(np.linalg.norm(loaded.apply(x), axis=1), 1.0, atol=1e-5)
    # and back into torch: the same module
    again = build_module_for(loaded.manifest, loaded.tensors)
    with torch.no_grad():
        y = again(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(forward_raw(loaded.manifest, loaded.tensors, x), y, atol=1e-5)
