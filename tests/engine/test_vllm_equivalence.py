"""vLLM's engine gives the transformers backend's vectors, on the same model folder.

Adapters are trained on one encoder's outputs and served on another's, so the two backends
must agree: same prompt, same token ids, same truncation, same pooling, within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from encoders import Encoder
from encoders.base import InputTooLongError
from encoders.vllm_build import VLLM_BUILDS, installed_vllm_build
from tests.engine.conftest import MAX_TOKENS

TOL = 1e-4
TEXTS = [
    "what causes malaria",
    "the mosquito is the vector of malaria in children",
    "vitamin effects on the immune response to infection",
    "a",
]
LONG = " ".join(["cancer cells increase the risk of disease"] * 20)  # ~140 tokens


def assert_same(a: Encoder, b: Encoder, texts: list[str], kind: str, **kw: object) -> None:
    ra = a.encode(texts, kind, **kw)  # type: ignore[arg-type]
    rb = b.encode(texts, kind, **kw)  # type: ignore[arg-type]
    assert ra.token_counts == rb.token_counts
    assert ra.vectors.shape == rb.vectors.shape == (len(texts), a.dim)
    assert ra.vectors.dtype == np.float32
    np.testing.assert_allclose(ra.vectors, rb.vectors, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ra.vectors, axis=1), 1.0, atol=1e-5)


def test_the_engine_is_an_accepted_vllm_build(vllm_encoder: Encoder) -> None:
    build = installed_vllm_build()
    assert build is not None and build.accepted, build
    assert build.distribution in VLLM_BUILDS
    assert vllm_encoder.engine == str(build)
    assert vllm_encoder.ready


def test_queries_with_the_instruction_prompt(vllm_encoder: Encoder, hf_encoder: Encoder) -> None:
    formatted = vllm_encoder.format(TEXTS[:1], "query")
    assert formatted[0].startswith("Instruct: Given a claim, find evidence\nQuery:")
    assert_same(vllm_encoder, hf_encoder, TEXTS, "query")
    assert_same(vllm_encoder, hf_encoder, TEXTS, "query", instruction="find the answer")


def test_documents_without_a_prompt(vllm_encoder: Encoder, hf_encoder: Encoder) -> None:
    assert vllm_encoder.format(TEXTS[:1], "document") == TEXTS[:1]
    assert_same(vllm_encoder, hf_encoder, TEXTS, "document")
    q = vllm_encoder.encode(TEXTS[:1], "query").vectors
    d = vllm_encoder.encode(TEXTS[:1], "document").vectors
    assert float(q[0] @ d[0]) < 0.9999  # the prompt really changes the vector


def test_inputs_past_max_tokens_are_cut_as_the_transformers_backend_cuts_them(
    vllm_encoder: Encoder, hf_encoder: Encoder
) -> None:
    texts = [LONG, TEXTS[0]]
    counts = vllm_encoder.tokenize(texts, "document").counts
    assert counts[0] > MAX_TOKENS
    assert counts == hf_encoder.tokenize(texts, "document").counts
    assert_same(vllm_encoder, hf_encoder, texts, "document", truncate=True)
    assert_same(vllm_encoder, hf_encoder, texts, "query", truncate=True)
    assert vllm_encoder.encode(texts, "query").token_counts[0] == MAX_TOKENS
    with pytest.raises(InputTooLongError) as err:
        vllm_encoder.encode(texts, "query", truncate=False)
    assert err.value.index == 0 and err.value.max_tokens == MAX_TOKENS


def test_a_batch_of_64(vllm_encoder: Encoder, hf_encoder: Encoder) -> None:
    rng = np.random.default_rng(0)
    words = "malaria mosquito cancer cell gene protein brain heart blood drug risk".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(64)]
    assert_same(vllm_encoder, hf_encoder, texts, "query")
