"""The encoder fingerprint names the model really run, weights included, and keys every cache.

The acceptance test of issue 23 point 6 is `test_new_weights_under_the_same_name_miss_every_cache`:
a model folder is rebuilt in place under the same name, and the training embedding cache, the
label-free gate's teacher cache (on disk, and after a restart) and the service's raw
query-vector cache all miss.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from encoders import EncoderSpec, Pooling, build_encoder
from encoders import fingerprint as fp
from service.engine.query_cache import QueryVectorCache
from service.evaluation.teacher_cache import TeacherCache
from service.ops.metrics import Metrics
from tests.tiny_models import build_tiny_bert, build_tiny_qwen3
from training.cache import EmbeddingCache

QWEN3_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
BASE = {"name": "m", "path": "/models/m"}  # no such folder: a hub id
TEXTS = ["malaria is caused by a parasite", "the mosquito", "cancer cells in the study"]


# ---------------------------------------------------------------- the spec's fields


def test_fingerprint_stable() -> None:
    a = EncoderSpec(**BASE)
    b = EncoderSpec(**BASE)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    int(a.fingerprint(), 16)
    # String and enum pooling spell the same spec.
    assert (
        EncoderSpec(**BASE, pooling="last").fingerprint()
        == EncoderSpec(**BASE, pooling=Pooling.LAST).fingerprint()
    )


@pytest.mark.parametrize(
    "change",
    [
        {"name": "other"},
        {"path": "/models/other"},  # another hub id
        {"pooling": "last"},
        {"pooling": "cls"},
        {"query_template": QWEN3_TEMPLATE},
        {"document_template": "passage: {text}"},
        {"default_instruction": "find evidence"},
        {"max_tokens": 256},
        {"normalize": False},
        {"revision": "abc123"},
        {"backend": "vllm"},
        {"backend": "openai_http"},
        {"dtype": "bfloat16"},
        {"dtype": "float16"},
    ],
)
def test_fingerprint_changes_with_vector_fields(change: dict) -> None:
    assert EncoderSpec(**{**BASE, **change}).fingerprint() != EncoderSpec(**BASE).fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": 7},
        {"threads": 3},
        {"device": "cuda", "dtype": "float32"},
        {"timeout_s": 5.0, "max_retries": 0, "gpu_memory_utilization": 0.5},
    ],
)
def test_fingerprint_ignores_runtime_fields(change: dict) -> None:
    base = {**BASE, "dtype": "float32"}
    assert EncoderSpec(**{**base, **change}).fingerprint() == EncoderSpec(**base).fingerprint()


def test_auto_dtype_is_the_dtype_the_backend_runs() -> None:
    def spec(**kw: object) -> str:
        return EncoderSpec(**{**BASE, **kw}).fingerprint()

    # transformers: float32 on CPU, bfloat16 on CUDA (any card)
    assert spec(dtype="auto") == spec(dtype="float32")
    assert spec(dtype="auto", device="cuda") == spec(dtype="bfloat16", device="cuda:1")
    assert spec(dtype="auto") != spec(dtype="auto", device="cuda")
    # vllm: the pinned production dtype
    assert spec(backend="vllm") == spec(backend="vllm", dtype="bfloat16")
    assert spec(backend="vllm", max_model_len=64) != spec(backend="vllm")


def test_openai_http_upstream_is_part_of_it() -> None:
    http = {**BASE, "backend": "openai_http", "url": "http://a/v1"}
    one = EncoderSpec(**http).fingerprint()
    assert EncoderSpec(**{**http, "url": "http://b/v1"}).fingerprint() != one
    assert EncoderSpec(**{**http, "upstream_model": "big"}).fingerprint() != one
    assert EncoderSpec(**{**http, "upstream_model": "m"}).fingerprint() == one  # the default
    assert EncoderSpec(**{**http, "api_key": "secret"}).fingerprint() == one
    assert EncoderSpec(**{**http, "dtype": "float16"}).fingerprint() == one  # not ours to run


# ---------------------------------------------------------------- the weights' identity


def weights_folder(path: Path, seed: int = 0, shape: tuple[int, ...] = (4, 8)) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"hidden_size": shape[-1]}))
    rng = np.random.default_rng(seed)
    tensors = {n: rng.standard_normal(shape).astype(np.float32) for n in ("a.weight", "b.weight")}
    save_file(tensors, str(path / "model.safetensors"))
    return path


def spec_at(path: Path, name: str = "m") -> EncoderSpec:
    return EncoderSpec(name=name, path=str(path))


def test_local_weights_are_part_of_it(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path / "m")
    one = spec_at(folder).fingerprint()
    assert one == spec_at(folder).fingerprint()
    assert one != EncoderSpec(name="m", path="hub/m").fingerprint()
    # the same model at another mount point shares the key
    assert spec_at(shutil.copytree(folder, tmp_path / "copy")).fingerprint() == one

    weights_folder(folder, seed=1)  # same shapes, same header, other values
    two = spec_at(folder).fingerprint()
    assert two != one
    weights_folder(folder, seed=1, shape=(4, 16))
    assert spec_at(folder).fingerprint() not in (one, two)


def test_what_changes_it_and_what_does_not(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path / "m")
    before = spec_at(folder).fingerprint()

    (folder / "README.md").write_text("a model card")  # no vector depends on it
    os.utime(folder / "model.safetensors")  # touched, same content
    assert spec_at(folder).fingerprint() == before

    (folder / "tokenizer.json").write_text("{}")  # other token ids, other vectors
    after_tokenizer = spec_at(folder).fingerprint()
    assert after_tokenizer != before

    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "layer_norm_eps": 1e-6}))
    after_config = spec_at(folder).fingerprint()
    assert after_config != after_tokenizer

    # a torch checkpoint: its tail (the zip's directory, CRC-32s of every tensor) counts
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 100_000 + b"crc-1")
    with_bin = spec_at(folder).fingerprint()
    assert with_bin != after_config
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 100_000 + b"crc-2")
    assert spec_at(folder).fingerprint() != with_bin


def test_reads_headers_not_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 GiB safetensors file (sparse, no disk used) costs a header and a page per tensor."""
    folder = tmp_path / "big"
    folder.mkdir()
    each = 1 << 30
    header = json.dumps(
        {
            f"layer{i}.weight": {
                "dtype": "F32",
                "shape": [each // 4],
                "data_offsets": [i * each, (i + 1) * each],
            }
            for i in range(4)
        }
    ).encode()
    with (folder / "model.safetensors").open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * each)

    read = []
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    spec_at(folder).fingerprint()
    assert len(read) == 4 and sum(read) <= 4 * 4096


def test_computed_once_per_folder_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = weights_folder(tmp_path / "m")
    digests = []
    real = fp._digest
    monkeypatch.setattr(fp, "_digest", lambda files: digests.append(files) or real(files))
    spec = spec_at(folder)
    first = spec.fingerprint()
    for kw in ({}, {"max_tokens": 8}, {"name": "n"}):
        EncoderSpec(**{**spec.model_dump(), **kw}).fingerprint()
    assert len(digests) == 1  # one read of the folder for every spec on it
    weights_folder(folder, seed=2)
    assert spec.fingerprint() != first
    assert len(digests) == 2


def test_an_encoder_reads_it_when_it_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request (on the event loop) finds it computed: one stat a file, no read."""
    encoder = build_encoder(spec_at(build_tiny_bert(tmp_path / "bert")))
    monkeypatch.setattr(fp, "_digest", lambda files: pytest.fail("read again"))
    assert len(encoder.spec.fingerprint()) == 16


# ---------------------------------------------------------------- acceptance: every cache misses


@pytest.mark.parametrize("model", ["bert", "qwen3"])
def test_new_weights_under_the_same_name_miss_every_cache(tmp_path: Path, model: str) -> None:
    """The Makefile's `QWEN3=` case: other weights in the same folder under the same name."""
    folder = tmp_path / "model"

    def build(seed: int) -> None:
        if model == "bert":
            build_tiny_bert(folder, seed=seed)
        else:
            build_tiny_qwen3(folder, seed=seed)

    build(seed=0)
    spec = EncoderSpec(name="the-query-model", path=str(folder), max_tokens=32)
    old = build_encoder(spec)
    old_fp = old.spec.fingerprint()

    # fill the three caches with the old model's vectors (and show each one hits)
    training = EmbeddingCache(tmp_path / "embedding-cache")
    old_docs = training.encode(old, TEXTS, "document")
    old_queries = training.encode(old, TEXTS, "query", "find evidence")
    training.encode(old, TEXTS, "document")
    assert (training.stats.encoded, training.stats.hits) == (6, 3)

    teacher_dir = tmp_path / "teacher"
    teacher = TeacherCache(100, teacher_dir)
    teacher.put_many(old_fp, TEXTS, old.encode(TEXTS, "document").vectors)
    assert all(v is not None for v in TeacherCache(100, teacher_dir).get_many(old_fp, TEXTS))

    queries = QueryVectorCache(100, Metrics())
    formatted = old.format(TEXTS, "query")
    res = old.encode(TEXTS, "query")
    queries.put_many("acme", old_fp, formatted, res.vectors, res.token_counts)
    assert all(h is not None for h in queries.get_many("acme", old_fp, old.name, formatted))

    # new weights, same folder, same name, same shapes: the service restarts on them
    build(seed=1)
    new = build_encoder(spec)
    new_fp = new.spec.fingerprint()
    assert new_fp != old_fp
    new_docs = new.encode(TEXTS, "document").vectors
    assert not np.allclose(new_docs, old_docs, atol=1e-2)  # the model really changed

    # the training cache encodes everything again and answers the new model's vectors
    got = training.encode(new, TEXTS, "document")
    got_queries = training.encode(new, TEXTS, "query", "find evidence")
    assert (training.stats.encoded, training.stats.hits) == (12, 3)
    np.testing.assert_allclose(got, new_docs, atol=2e-3)  # documents are cached as fp16
    assert not np.allclose(got_queries, old_queries, atol=1e-2)

    # the teacher cache misses, in memory and on disk after a restart
    assert teacher.get_many(new_fp, TEXTS) == [None] * len(TEXTS)
    assert TeacherCache(100, teacher_dir).get_many(new_fp, TEXTS) == [None] * len(TEXTS)

    # the raw query-vector cache misses (the prompt-formatted texts are the same)
    assert new.format(TEXTS, "query") == formatted
    assert queries.get_many("acme", new_fp, new.name, formatted) == [None] * len(TEXTS)
