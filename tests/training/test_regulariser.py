"""`LabelConfig.reg`: label training is pulled toward its starting weights (the hybrid's
identity, a ridge fit for linear `both`), never toward zero, and the pull grows with the
strength (issue 8: regularisation toward the start)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from adapters import AdapterKind
from training.modules import build_module, export_tensors, hybrid_identity, init_tensors
from training.pipeline import DEFAULT_REG, TrainConfig
from training.trainer import LabelConfig, LabelSet, train_labels

QD, DD, N_DOCS, N_QUERIES = 12, 8, 48, 96
REGS = (0.0, 0.01, 0.1, 1.0, 10.0)


def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Docs in R^DD; each query's big-model vector is a fixed linear image of its positive,
    its document-model vector that positive drowned in noise: there is something to learn
    beyond the identity start."""
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((N_DOCS, DD))
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    pos = rng.integers(0, N_DOCS, N_QUERIES)
    mix = rng.standard_normal((QD, DD))
    q_big = docs[pos] @ mix.T + 0.05 * rng.standard_normal((N_QUERIES, QD))
    q_doc = docs[pos] + 1.5 * rng.standard_normal((N_QUERIES, DD))
    return (
        docs.astype(np.float32),
        q_big.astype(np.float32),
        q_doc.astype(np.float32),
        [[int(p)] for p in pos],
    )


def start_for(kind: AdapterKind) -> tuple[int, dict, dict[str, np.ndarray]]:
    """(in_dim, params, start tensors): linear and lowrank start at a (ridge-like) base map that
    is far from zero; the hybrid at its identity; the mlp at its random init."""
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((DD, QD)).astype(np.float32), np.full(DD, 0.3, np.float32))
    if kind == AdapterKind.HYBRID:
        params = {"query_dim": QD, "document_dim": DD}
        return QD + DD, params, init_tensors(kind, QD + DD, DD, params)
    params = {"hidden": 16} if kind == AdapterKind.MLP else {"rank": 4}
    with_base = kind in (AdapterKind.LINEAR, AdapterKind.LOWRANK)
    return QD, params, init_tensors(kind, QD, DD, params, base=base if with_base else None, seed=1)


def distance(module: torch.nn.Module, start: dict[str, np.ndarray]) -> float:
    """L2 distance of the trainable parameters from the start."""
    return float(
        np.sqrt(
            sum(
                ((p.detach().numpy() - start[n]) ** 2).sum()
                for n, p in module.named_parameters()
                if p.requires_grad
            )
        )
    )


def trained(kind: AdapterKind, reg: float) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
    docs, q_big, q_doc, positives = planted()
    in_dim, params, start = start_for(kind)
    x = np.concatenate([q_big, q_doc], axis=1) if kind == AdapterKind.HYBRID else q_big
    module = build_module(kind, in_dim, DD, params, start)
    train = LabelSet(x, [f"q{i}" for i in range(len(x))], positives)
    cfg = LabelConfig(epochs=30, lr=1e-2, batch_size=32, temperature=0.1, reg=reg, seed=0)
    train_labels(module, train, docs, [f"d{i}" for i in range(N_DOCS)], cfg)
    return module, start


def test_hybrid_starts_at_the_identity_on_the_document_part():
    _, params, start = start_for(AdapterKind.HYBRID)
    module = build_module(AdapterKind.HYBRID, QD + DD, DD, params)
    got = export_tensors(module)
    want = hybrid_identity(QD, DD)
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(got[name], want[name])
        np.testing.assert_array_equal(start[name], want[name])
    x = np.random.default_rng(2).standard_normal((5, QD + DD)).astype(np.float32)
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), x[:, QD:])


def test_reg_distance_shrinks_monotonically_with_strength():
    dist = [distance(*trained(AdapterKind.HYBRID, reg)) for reg in REGS]
    assert dist[0] > 0.5, dist  # unregularised training moves away from the identity
    assert all(a > b for a, b in pairwise(dist)), dist
    assert dist[-1] < 0.05 * dist[0], dist  # a strong pull keeps the start


@pytest.mark.parametrize(
    "kind", [AdapterKind.LINEAR, AdapterKind.HYBRID, AdapterKind.LOWRANK, AdapterKind.MLP]
)
def test_reg_pulls_toward_the_start_not_zero(kind: AdapterKind):
    free, start = trained(kind, 0.0)
    held, _ = trained(kind, 100.0)
    assert distance(free, start) > 0.3
    assert distance(held, start) < 0.1 * distance(free, start)
    # the start is far from zero (a base map, the identity, an init): so is the held module
    zero = {n: np.zeros_like(v) for n, v in start.items()}
    assert distance(held, zero) > 0.9 * distance(build_module_like(kind, start), zero)


def build_module_like(kind: AdapterKind, start: dict[str, np.ndarray]) -> torch.nn.Module:
    in_dim, params, _ = start_for(kind)
    return build_module(kind, in_dim, DD, params, start)


def test_hybrid_defaults_to_its_pull_and_an_explicit_strength_wins():
    hybrid = TrainConfig(mode="label_only", kind="hybrid")
    assert hybrid.labels.reg == DEFAULT_REG[AdapterKind.HYBRID] > 0
    assert TrainConfig.model_validate(hybrid.model_dump()).labels.reg == hybrid.labels.reg
    assert TrainConfig(kind="hybrid", labels={"reg": 0.0}).labels.reg == 0.0
    assert TrainConfig(kind="hybrid", labels=LabelConfig(epochs=3)).labels.reg == hybrid.labels.reg
    assert TrainConfig(mode="both").labels.reg == 0.0  # linear: its start (ridge) is no safer
