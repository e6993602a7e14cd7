"""Training: alignment recovers a planted map, label training on a planted retrieval task
(early stopping, regularisation), the embedding cache, and the pipeline end to end.

Everything runs on synthetic data (numpy problems, a fake counting encoder, the tiny local
models from tests/tiny_models); assertions are about behaviour, never about timing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch.nn import functional as F

from adapters import AdapterKind
from adapters.checkpoint import load_checkpoint, save_checkpoint
from encoders import Encoder, EncodeResult, EncoderSpec, InputKind, Tokenized
from encoders.base import EncoderBase
from tests.tiny_models import WORDS
from training.align import ridge_fit
from training.cache import EmbeddingCache
from training.data import DataError, Dataset, make_splits
from training.evaluate import evaluate_vectors
from training.modules import build_module, export_tensors, hybrid_identity, identity_init
from training.pipeline import TrainConfig, run_training
from training.trainer import (
    AlignConfig,
    LabelConfig,
    LabelSet,
    train_alignment,
    train_labels,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny matrices: one thread is fastest and keeps results reproducible on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _embed(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(module(torch.from_numpy(np.asarray(x, np.float32))), dim=-1).numpy()


# --------------------------------------------------------------------------------------------
# 1. Alignment recovers a planted linear map.


@pytest.fixture(scope="module")
def planted_map() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n, din, dout = 2000, 24, 12
    x = rng.standard_normal((n, din)).astype(np.float32)
    a = (rng.standard_normal((dout, din)) / np.sqrt(din)).astype(np.float32)
    c = (0.5 * rng.standard_normal(dout)).astype(np.float32)
    y = _unit(x @ a.T + c).astype(np.float32)
    return {"x_train": x[:1500], "y_train": y[:1500], "x_test": x[1500:], "y_test": y[1500:]}


def test_ridge_fit_recovers_a_planted_map(planted_map: dict[str, np.ndarray]) -> None:
    w, b = ridge_fit(planted_map["x_train"], planted_map["y_train"], alpha=1e-3)
    assert w.shape == (12, 24) and b.shape == (12,)
    assert w.dtype == np.float32 and b.dtype == np.float32
    cos = (_unit(planted_map["x_test"] @ w.T + b) * planted_map["y_test"]).sum(-1)
    assert cos.mean() > 0.99
    assert cos.min() > 0.95


def test_ridge_fit_is_exact_on_a_noiseless_affine_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    w_true, b_true = rng.standard_normal((3, 6)), rng.standard_normal(3)
    w, b = ridge_fit(x, x @ w_true.T + b_true, alpha=1e-9)
    np.testing.assert_allclose(w, w_true, atol=1e-4)
    np.testing.assert_allclose(b, b_true, atol=1e-4)


def test_gradient_alignment_recovers_a_planted_map(planted_map: dict[str, np.ndarray]) -> None:
    module = build_module("linear", 24, 12, seed=0)
    before = (_embed(module, planted_map["x_test"]) * planted_map["y_test"]).sum(-1).mean()
    cfg = AlignConfig(epochs=15, lr=1e-2, weight_decay=0.0, batch_size=128)
    out = train_alignment(module, planted_map["x_train"], planted_map["y_train"], cfg)
    assert [r["epoch"] for r in out.history] == list(range(1, 16))
    assert out.history[-1]["align_loss"] < out.history[0]["align_loss"]
    cos = (_embed(module, planted_map["x_test"]) * planted_map["y_test"]).sum(-1)
    assert before < 0.5
    assert cos.mean() > 0.99
    assert not module.training  # handed back in eval mode


# --------------------------------------------------------------------------------------------
# 2. Label training on a planted retrieval task.

N_DOCS, DIM = 300, 16
DOC_IDS = [f"d{i}" for i in range(N_DOCS)]


def _label_set(x: np.ndarray, pos: np.ndarray, idx: range, *, qrels: bool = True) -> LabelSet:
    ids = [f"q{i}" for i in idx]
    rel = {f"q{i}": {DOC_IDS[pos[i]]: 1} for i in idx} if qrels else {}
    return LabelSet(x[list(idx)], ids, [[int(pos[i])] for i in idx], rel)


@pytest.fixture(scope="module")
def planted_task() -> dict[str, object]:
    """Fixed unit document vectors; a query is its positive document, noised, then distorted
    by a random invertible (ill-conditioned) map M, so the identity start is near random."""
    rng = np.random.default_rng(0)
    docs = _unit(rng.standard_normal((N_DOCS, DIM))).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    r, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    m = (q * np.geomspace(0.3, 3.0, DIM)) @ r
    n_queries = 600
    pos = rng.integers(0, N_DOCS, n_queries)
    clean = docs[pos] + 0.1 * rng.standard_normal((n_queries, DIM))
    x = (clean @ m).astype(np.float32)
    return {
        "docs": docs,
        "m": m,
        "train": _label_set(x, pos, range(0, 400)),
        "val": _label_set(x, pos, range(400, 500)),
        "test": _label_set(x, pos, range(500, 600)),
        # the same positives, undistorted: a validation set that prefers the identity start
        "val_identity": _label_set(clean.astype(np.float32), pos, range(400, 500)),
    }


def _ndcg(module: torch.nn.Module, ls: LabelSet, docs: np.ndarray) -> float:
    z = _embed(module, ls.x)
    return evaluate_vectors(z, docs, ls.query_ids, DOC_IDS, ls.qrels, metrics=("ndcg@10",))[
        "ndcg@10"
    ]


def _identity_linear() -> torch.nn.Module:
    return build_module("linear", DIM, DIM, init=identity_init("linear", DIM, DIM))


def test_planted_task_is_solvable_and_the_identity_start_is_poor(
    planted_task: dict[str, object],
) -> None:
    docs, test = planted_task["docs"], planted_task["test"]
    oracle = test.x @ np.linalg.inv(planted_task["m"])
    ndcg = evaluate_vectors(oracle, docs, test.query_ids, DOC_IDS, test.qrels)["ndcg@10"]
    assert ndcg > 0.95
    assert _ndcg(_identity_linear(), test, docs) < 0.1


@pytest.mark.parametrize("negatives", ["full", "mined"])
def test_label_training_raises_ndcg_and_restores_the_best_epoch(
    planted_task: dict[str, object], negatives: str
) -> None:
    docs, train, val, test = (planted_task[k] for k in ("docs", "train", "val", "test"))
    module = _identity_linear()
    start = _ndcg(module, test, docs)
    cfg = LabelConfig(
        epochs=10, lr=1e-1, batch_size=100, patience=3, negatives=negatives, mine_depth=N_DOCS
    )
    rows: list[dict[str, float]] = []
    out = train_labels(module, train, docs, DOC_IDS, cfg, val=val, log=rows.append)

    after = _ndcg(module, test, docs)
    assert after > start + 0.5, (start, after)
    assert after > 0.6

    # history: epoch 0 is the start, then one logged row per epoch run
    assert out.history[0]["epoch"] == 0 and "train_loss" not in out.history[0]
    assert out.history[1:] == rows
    assert [r["epoch"] for r in out.history] == list(range(len(out.history)))
    assert out.history[0]["val_ndcg@10"] == pytest.approx(_ndcg(_identity_linear(), val, docs))
    # the best epoch is the first with the highest validation nDCG@10, and it is restored
    scores = [r["val_ndcg@10"] for r in out.history]
    assert out.best_epoch == int(np.argmax(scores))
    assert out.best == out.history[out.best_epoch]
    assert out.best_epoch > 0
    assert _ndcg(module, val, docs) == pytest.approx(out.best["val_ndcg@10"], abs=1e-12)
    assert not module.training


def test_hybrid_starts_at_the_document_model_and_learns_to_add(
    planted_task: dict[str, object],
) -> None:
    """[q; d] inputs: d is the document model's own (noisy) query vector, q the distorted but
    cleaner big-model vector. The hybrid starts exactly at d's quality and improves on it."""
    docs, m = planted_task["docs"], planted_task["m"]
    rng = np.random.default_rng(1)
    n = 600
    pos = rng.integers(0, N_DOCS, n)
    xq = (docs[pos] + 0.1 * rng.standard_normal((n, DIM))) @ m
    xd = _unit(docs[pos] + 0.3 * rng.standard_normal((n, DIM)))
    x = np.concatenate([xq, xd], axis=1).astype(np.float32)
    train, val, test = (_label_set(x, pos, r) for r in (range(400), range(400, 500), range(500, n)))
    module = build_module("hybrid", 2 * DIM, DIM, {"query_dim": DIM, "document_dim": DIM})
    start = _ndcg(module, test, docs)
    own = evaluate_vectors(xd[500:], docs, test.query_ids, DOC_IDS, test.qrels)["ndcg@10"]
    assert start == pytest.approx(own, abs=1e-6)
    cfg = LabelConfig(epochs=10, lr=3e-2, batch_size=100, patience=3)
    train_labels(module, train, docs, DOC_IDS, cfg, val=val)
    after = _ndcg(module, test, docs)
    assert after > start + 0.15, (start, after)


def test_early_stopping_restores_the_start_when_training_only_hurts_validation(
    planted_task: dict[str, object],
) -> None:
    """Validation labels planted under the identity map: every epoch of training on the
    distorted queries moves away from them, so training stops after `patience` epochs and
    hands back exactly the starting weights."""
    docs, train, val = planted_task["docs"], planted_task["train"], planted_task["val_identity"]
    module = _identity_linear()
    start = export_tensors(module)
    cfg = LabelConfig(epochs=30, lr=1e-1, batch_size=100, patience=2)
    out = train_labels(module, train, docs, DOC_IDS, cfg, val=val)

    assert out.best_epoch == 0
    assert len(out.history) == 1 + cfg.patience  # stopped early, long before 30 epochs
    assert all(r["val_ndcg@10"] < out.history[0]["val_ndcg@10"] for r in out.history[1:])
    end = export_tensors(module)
    for name, value in start.items():
        np.testing.assert_array_equal(end[name], value)
    assert _ndcg(module, val, docs) == pytest.approx(out.best["val_ndcg@10"], abs=1e-12)


def test_early_stopping_on_validation_loss(planted_task: dict[str, object]) -> None:
    docs, train, val = (planted_task[k] for k in ("docs", "train", "val"))
    module = _identity_linear()
    cfg = LabelConfig(epochs=6, lr=1e-1, batch_size=100, monitor="loss")
    out = train_labels(module, train, docs, DOC_IDS, cfg, val=val)
    losses = [r["val_loss"] for r in out.history]
    assert out.best_epoch == int(np.argmin(losses)) > 0
    assert out.best["val_loss"] < out.history[0]["val_loss"]


def test_validation_without_qrels_uses_the_positives(planted_task: dict[str, object]) -> None:
    """A LabelSet's qrels are optional: validation falls back to its positives (relevance 1)."""
    docs, train = planted_task["docs"], planted_task["train"]
    val = planted_task["val"]
    bare = LabelSet(val.x, val.query_ids, val.positives)
    cfg = LabelConfig(epochs=2, lr=1e-1, batch_size=100)
    with_qrels = train_labels(_identity_linear(), train, docs, DOC_IDS, cfg, val=val)
    without = train_labels(_identity_linear(), train, docs, DOC_IDS, cfg, val=bare)
    assert [r["val_ndcg@10"] for r in without.history] == pytest.approx(
        [r["val_ndcg@10"] for r in with_qrels.history]
    )


def test_reg_keeps_the_weights_closer_to_the_start(planted_task: dict[str, object]) -> None:
    docs, train = planted_task["docs"], planted_task["train"]
    start = export_tensors(_identity_linear())

    def distance(reg: float) -> float:
        module = _identity_linear()
        cfg = LabelConfig(epochs=3, lr=1e-1, batch_size=100, reg=reg)
        train_labels(module, train, docs, DOC_IDS, cfg)  # no validation: every epoch runs
        end = export_tensors(module)
        return float(np.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start)))

    free, pulled = distance(0.0), distance(1.0)
    assert free > 0.1
    assert pulled < 0.5 * free, (free, pulled)


def test_no_pairs_is_an_error(planted_task: dict[str, object]) -> None:
    empty = LabelSet(np.zeros((2, DIM), np.float32), ["a", "b"], [[], []])
    with pytest.raises(ValueError, match="no \\(query, positive\\) pairs"):
        train_labels(_identity_linear(), empty, planted_task["docs"], DOC_IDS, LabelConfig())


# --------------------------------------------------------------------------------------------
# 3. The embedding cache.


class CountingEncoder(EncoderBase):
    """The encoder protocol over deterministic pseudo-random unit vectors, counting calls (the
    lifecycle, ready from the start, is EncoderBase's).

    A vector depends on (text, kind, instruction, max_tokens), like a real encoder's; its
    float32 values are not representable in fp16, so fp16 storage shows as a difference.
    """

    def __init__(self, name: str = "fake", dim: int = 8, max_tokens: int = 32) -> None:
        self.spec = EncoderSpec(
            name=name, path="/nonexistent", max_tokens=max_tokens, default_instruction="find"
        )
        self._dim = dim
        self.calls = 0
        self.encoded: list[str] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self.spec.max_tokens

    def format(self, texts: list[str], kind: InputKind, instruction: str | None = None) -> list:
        return list(texts)

    def count_tokens(
        self, texts: list[str], kind: InputKind, instruction: str | None = None
    ) -> list[int]:
        return [len(t.split()) for t in texts]

    def vector(self, text: str, kind: InputKind, instruction: str | None = None) -> np.ndarray:
        instr = self.spec.default_instruction if instruction is None else instruction
        key = f"{kind}\0{instr if kind == 'query' else ''}\0{self.max_tokens}\0{text}"
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self._dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode(
        self,
        texts: list[str],
        kind: InputKind,
        instruction: str | None = None,
        truncate: bool = True,
    ) -> EncodeResult:
        self.calls += 1
        self.encoded += texts
        vecs = np.stack([self.vector(t, kind, instruction) for t in texts]).astype(np.float32)
        return EncodeResult(vecs.reshape(len(texts), self._dim), [1] * len(texts))

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: str | None = None
    ) -> Tokenized:
        return Tokenized(list(texts), self.count_tokens(texts, kind))

    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        return self.encode(tokens.texts, "query", truncate=truncate)

    def fresh(self, texts: list[str], kind: InputKind, instruction: str | None = None):
        return np.stack([self.vector(t, kind, instruction) for t in texts])


TEXTS = [f"text number {i} about malaria" for i in range(40)]


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def _no_temp_files(root: Path) -> None:
    names = _files(root)
    assert names, "the cache wrote nothing"
    for name in names:
        assert name.endswith(".safetensors") and not name.startswith("."), names


def test_fake_encoder_implements_the_protocol() -> None:
    assert isinstance(CountingEncoder(), Encoder)


@pytest.mark.parametrize("kind", ["query", "document"])
def test_cache_second_run_encodes_nothing(tmp_path: Path, kind: InputKind) -> None:
    enc = CountingEncoder()
    first = EmbeddingCache(tmp_path, batch_size=16)
    a = first.encode(enc, TEXTS, kind)
    assert a.shape == (40, 8) and a.dtype == np.float32
    assert first.stats.encoded == 40 and first.stats.hits == 0
    assert enc.calls == 3  # batches of 16
    calls = enc.calls

    again = EmbeddingCache(tmp_path, batch_size=16)  # a new run over the same folder
    b = again.encode(enc, TEXTS, kind)
    assert again.stats.encoded == 0 and again.stats.hits == 40
    assert enc.calls == calls
    np.testing.assert_array_equal(a, b)
    # rows follow the requested order, whatever order they were cached in
    c = again.encode(enc, TEXTS[::-1], kind)
    np.testing.assert_array_equal(c, a[::-1])
    assert enc.calls == calls
    _no_temp_files(tmp_path)


def test_cache_encodes_only_new_texts_once(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    cache.encode(enc, TEXTS[:30], "query")
    enc.encoded.clear()
    new = ["a brand new text", "another new one"]
    wanted = [TEXTS[3], new[0], TEXTS[5], new[1], new[0], TEXTS[3]]
    out = EmbeddingCache(tmp_path).encode(enc, wanted, "query")
    assert enc.encoded == new  # only the new texts, each once, in first-seen order
    np.testing.assert_array_equal(out, enc.fresh(wanted, "query"))
    later = EmbeddingCache(tmp_path)
    both = TEXTS[:30] + new
    np.testing.assert_array_equal(later.encode(enc, both, "query"), enc.fresh(both, "query"))
    assert later.stats.encoded == 0 and later.stats.hits == 32
    assert len(_files(tmp_path)) == 1


def test_cache_empty_request(tmp_path: Path) -> None:
    enc = CountingEncoder()
    out = EmbeddingCache(tmp_path).encode(enc, [], "query")
    assert out.shape == (0, 8) and out.dtype == np.float32
    assert enc.calls == 0


def _stored(root: Path) -> dict[str, np.ndarray]:
    (path,) = root.iterdir()
    return st_load(path.read_bytes())


@pytest.mark.parametrize("name", ["fake", "acme-document-encoder"])
def test_cache_stores_queries_fp32_exactly(tmp_path: Path, name: str) -> None:
    """Queries are kept in float32, bit for bit, whatever the encoder is called."""
    enc = CountingEncoder(name)
    EmbeddingCache(tmp_path).encode(enc, TEXTS, "query", instruction="q")
    out = EmbeddingCache(tmp_path).encode(enc, TEXTS, "query", instruction="q")
    np.testing.assert_array_equal(out, enc.fresh(TEXTS, "query", "q"))
    assert _stored(tmp_path)["vectors"].dtype == np.float32


def test_cache_stores_documents_fp16(tmp_path: Path) -> None:
    enc = CountingEncoder()
    EmbeddingCache(tmp_path).encode(enc, TEXTS, "document")
    out = EmbeddingCache(tmp_path).encode(enc, TEXTS, "document")
    fresh = enc.fresh(TEXTS, "document")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, fresh, atol=1e-3)
    assert not np.array_equal(out, fresh)  # rounded through fp16
    assert _stored(tmp_path)["vectors"].dtype == np.float16


def test_cache_namespaces(tmp_path: Path) -> None:
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path)
    base = cache.encode(enc, TEXTS, "query")
    # another instruction: other vectors, encoded again, another file
    other = cache.encode(enc, TEXTS, "query", instruction="something else")
    assert cache.stats.encoded == 80
    np.testing.assert_array_equal(other, enc.fresh(TEXTS, "query", "something else"))
    assert not np.allclose(base, other)
    # the same texts as documents: another namespace too
    cache.encode(enc, TEXTS, "document")
    assert cache.stats.encoded == 120
    # documents have no instruction: it does not split their namespace
    cache.encode(enc, TEXTS, "document", instruction="ignored for documents")
    assert cache.stats.encoded == 120
    # a different fingerprint (max_tokens changes vectors): a different namespace
    short = CountingEncoder(max_tokens=16)
    assert short.spec.fingerprint() != enc.spec.fingerprint()
    v16 = cache.encode(short, TEXTS, "query")
    assert cache.stats.encoded == 160
    np.testing.assert_array_equal(v16, short.fresh(TEXTS, "query"))
    assert len(_files(tmp_path)) == 4
    # and each namespace is still served from its own file
    calls = enc.calls + short.calls
    again = EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(again.encode(enc, TEXTS, "query"), base)
    np.testing.assert_array_equal(again.encode(short, TEXTS, "query"), v16)
    assert again.stats.encoded == 0 and enc.calls + short.calls == calls


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _tamper_vectors(path: Path) -> None:
    """A well-formed file whose vectors no longer match its checksum."""
    data = st_load(path.read_bytes())
    data["vectors"] = data["vectors"].copy()
    data["vectors"][0] += 1.0
    path.write_bytes(st_save(data))


def _wrong_shape(path: Path) -> None:
    """Consistent checksum, but vectors of another dimension than the encoder's."""
    data = st_load(path.read_bytes())
    vecs = np.ascontiguousarray(data["vectors"][:, :4])
    keys = data["keys"]
    check = hashlib.sha256(keys.tobytes() + vecs.tobytes()).digest()
    path.write_bytes(
        st_save({"keys": keys, "vectors": vecs, "checksum": np.frombuffer(check, np.uint8).copy()})
    )


CORRUPTIONS = [_flip_middle, _truncate, _garbage, _empty, _tamper_vectors, _wrong_shape]


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupted_cache_is_detected_and_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corrupt, kind: InputKind
) -> None:
    enc = CountingEncoder()
    good = EmbeddingCache(tmp_path).encode(enc, TEXTS, kind)
    (path,) = tmp_path.iterdir()
    corrupt(path)
    calls = enc.calls

    cache = EmbeddingCache(tmp_path)
    with caplog.at_level(logging.WARNING, logger="training.cache"):
        out = cache.encode(enc, TEXTS, kind)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "corrupt" in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage()
    # never silently used: everything re-encoded, the result equals the first (good) run
    assert cache.stats.encoded == len(TEXTS) and cache.stats.hits == 0
    assert enc.calls > calls
    np.testing.assert_array_equal(out, good)
    # the rebuilt file is sound: a further run encodes nothing and warns no more
    caplog.clear()
    again = EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(again.encode(enc, TEXTS, kind), good)
    assert again.stats.encoded == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    _no_temp_files(tmp_path)


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails before the rename leaves the previous file whole and no temp file."""
    enc = CountingEncoder()
    EmbeddingCache(tmp_path).encode(enc, TEXTS[:10], "query")
    (path,) = tmp_path.iterdir()
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("adapters.fsutil.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        EmbeddingCache(tmp_path).encode(enc, TEXTS, "query")
    assert path.read_bytes() == before
    _no_temp_files(tmp_path)
    monkeypatch.undo()
    cache = EmbeddingCache(tmp_path)
    np.testing.assert_array_equal(cache.encode(enc, TEXTS, "query"), enc.fresh(TEXTS, "query"))
    assert cache.stats.encoded == 30  # the first ten survived the failed write


class _Counted:
    """Wrap a real encoder and count its encode calls."""

    def __init__(self, inner: Encoder) -> None:
        self.inner, self.spec, self.calls = inner, inner.spec, 0
        self.name, self.dim, self.max_tokens = inner.name, inner.dim, inner.max_tokens

    def encode(self, texts, kind, instruction=None, truncate=True) -> EncodeResult:
        self.calls += 1
        return self.inner.encode(texts, kind, instruction, truncate=truncate)


def test_cache_with_the_tiny_bert(tmp_path: Path, document_encoder: Encoder) -> None:
    enc = _Counted(document_encoder)
    texts = ["the mosquito carries malaria", "cancer cells", "vitamin and immune response"]
    direct_d = document_encoder.encode(texts, "document").vectors
    direct_q = document_encoder.encode(texts, "query").vectors
    cache = EmbeddingCache(tmp_path / "cache")
    np.testing.assert_allclose(cache.encode(enc, texts, "document"), direct_d, atol=1e-3)
    np.testing.assert_allclose(cache.encode(enc, texts, "query"), direct_q, atol=1e-6)
    calls = enc.calls
    again = EmbeddingCache(tmp_path / "cache")
    np.testing.assert_allclose(again.encode(enc, texts, "document"), direct_d, atol=1e-3)
    np.testing.assert_allclose(again.encode(enc, texts, "query"), direct_q, atol=1e-6)
    assert again.stats.encoded == 0 and enc.calls == calls


# --------------------------------------------------------------------------------------------
# 4. The pipeline end to end, with the tiny encoders of conftest.py.


def _synthetic_dataset(labelled: bool = True) -> Dataset:
    """40 documents of 6 content words; two queries each (3 of its words plus 1 stray word),
    one of them in test for every other document."""
    rng = np.random.default_rng(0)
    content = [w for w in WORDS if len(w) > 3]
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    train: dict[str, dict[str, int]] = {}
    test: dict[str, dict[str, int]] = {}
    for i in range(40):
        words = list(rng.choice(content, 6, replace=False))
        corpus[f"d{i}"] = " ".join(words)
        for j in range(2):
            qid = f"q{i}_{j}"
            queries[qid] = " ".join([*rng.choice(words, 3, replace=False), rng.choice(content)])
            (test if j == 1 and i % 2 == 0 else train)[qid] = {f"d{i}": 1}
    if not labelled:
        return Dataset("synthetic", corpus, {}, {}, "memory")
    return Dataset("synthetic", corpus, queries, {"train": train, "test": test}, "memory")


@pytest.fixture(scope="module")
def pipeline_cache(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingCache:
    return EmbeddingCache(tmp_path_factory.mktemp("pipeline-cache"))


def _config(mode: str, kind: str, lr: float = 1e-2, epochs: int = 8) -> TrainConfig:
    labels = LabelConfig(epochs=epochs, lr=lr, batch_size=32, patience=3)
    return TrainConfig(mode=mode, kind=kind, rank=4, val_fraction=0.2, labels=labels)


def _inputs(
    kind: AdapterKind, texts: list[str], q: Encoder, d: Encoder, cache: EmbeddingCache
) -> np.ndarray:
    x = cache.encode(q, texts, "query")
    if kind == AdapterKind.HYBRID:
        x = np.concatenate([x, cache.encode(d, texts, "query")], axis=1)
    return x


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("alignment_only", "linear"),
        ("label_only", "linear"),
        ("label_only", "hybrid"),
        ("both", "linear"),
        ("both", "lowrank"),
    ],
)
def test_run_training_end_to_end(
    tmp_path: Path,
    query_encoder: Encoder,
    document_encoder: Encoder,
    pipeline_cache: EmbeddingCache,
    mode: str,
    kind: str,
) -> None:
    ds = _synthetic_dataset()
    q, d = query_encoder, document_encoder
    result = run_training(ds, q, d, pipeline_cache, _config(mode, kind))
    m = result.manifest
    k = AdapterKind(kind)
    assert m.kind == k and m.out_dim == d.dim
    assert m.in_dim == (q.dim + d.dim if k == AdapterKind.HYBRID else q.dim)
    assert m.query_model.name == q.name and m.document_model.name == d.name

    # the service's checkpoint format accepts it, and it loads back unchanged
    saved = save_checkpoint(tmp_path / "ckpt", m, result.adapter_tensors)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.id == saved.id
    for name, value in result.adapter_tensors.items():
        np.testing.assert_array_equal(loaded.tensors[name], value)

    # provenance
    assert m.training["mode"] == mode
    assert m.training["data"]["fingerprint"] == ds.fingerprint()
    splits = m.training["data"]["splits"]
    assert set(splits) == {"train", "val", "test"}
    assert splits["test"] == 20 and splits["train"] + splits["val"] == 60
    assert splits["val"] > 0 and result.splits == splits

    # evaluation: the test split, reproduced from the saved checkpoint
    metrics = m.evaluation["metrics"]
    assert 0.0 <= metrics["ndcg@10"] <= 1.0
    assert m.evaluation["queries"] == 20
    test = make_splits(ds, seed=0, val_fraction=0.2)["test"]
    test_ids = sorted(test)
    x = _inputs(k, [ds.queries[i] for i in test_ids], q, d, pipeline_cache)
    docs = pipeline_cache.encode(d, list(ds.corpus.values()), "document")
    again = evaluate_vectors(loaded.apply(x), docs, test_ids, list(ds.corpus), test)
    assert again["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-6)
    if mode != "alignment_only":
        assert any("val_ndcg@10" in row for row in result.history)


def test_hybrid_label_only_is_never_worse_than_its_start_on_train(
    tmp_path: Path,
    query_encoder: Encoder,
    document_encoder: Encoder,
    pipeline_cache: EmbeddingCache,
) -> None:
    ds = _synthetic_dataset()
    q, d = query_encoder, document_encoder
    # a gentle learning rate: on these random tiny models a larger one only hurts validation
    cfg = _config("label_only", "hybrid", lr=1e-3, epochs=15)
    result = run_training(ds, q, d, pipeline_cache, cfg)
    if result.manifest.training["best_epoch"] == 0:  # nothing learnt: exactly the start
        for name, value in hybrid_identity(q.dim, d.dim).items():
            np.testing.assert_array_equal(result.adapter_tensors[name], value)
    train = make_splits(ds, seed=cfg.seed, val_fraction=cfg.val_fraction)["train"]
    ids = sorted(train)
    texts = [ds.queries[i] for i in ids]
    docs = pipeline_cache.encode(d, list(ds.corpus.values()), "document")
    x = _inputs(AdapterKind.HYBRID, texts, q, d, pipeline_cache)
    adapter = save_checkpoint(tmp_path / "hybrid", result.manifest, result.adapter_tensors)
    trained = evaluate_vectors(adapter.apply(x), docs, ids, list(ds.corpus), train)["ndcg@10"]
    start = evaluate_vectors(x[:, q.dim :], docs, ids, list(ds.corpus), train)["ndcg@10"]
    assert trained >= start - 1e-9, (start, trained)


def test_alignment_only_runs_without_labels(
    query_encoder: Encoder, document_encoder: Encoder, pipeline_cache: EmbeddingCache
) -> None:
    ds = _synthetic_dataset(labelled=False)
    result = run_training(
        ds, query_encoder, document_encoder, pipeline_cache, _config("alignment_only", "linear")
    )
    assert result.manifest.training["mode"] == "alignment_only"
    assert set(result.adapter_tensors) == {"weight", "bias"}
    assert result.adapter_tensors["weight"].shape == (document_encoder.dim, query_encoder.dim)


@pytest.mark.parametrize(
    ("labelled", "mode", "kind", "error", "match"),
    [
        (True, "both", "hybrid", ValueError, "hybrid"),
        (True, "alignment_only", "hybrid", ValueError, "hybrid"),
        (False, "label_only", "linear", DataError, "label"),
        (False, "both", "linear", DataError, "label"),
        (True, "label_only", "lowrank", ValueError, "lowrank"),
        (True, "label_only", "identity", ValueError, "identity"),
    ],
)
def test_run_training_refuses_bad_configs(
    query_encoder: Encoder,
    document_encoder: Encoder,
    pipeline_cache: EmbeddingCache,
    labelled: bool,
    mode: str,
    kind: str,
    error: type[Exception],
    match: str,
) -> None:
    ds = _synthetic_dataset(labelled=labelled)
    assert query_encoder.dim != document_encoder.dim
    with pytest.raises(error, match=match):
        run_training(ds, query_encoder, document_encoder, pipeline_cache, _config(mode, kind))
