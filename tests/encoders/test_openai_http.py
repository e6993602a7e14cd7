"""The openai_http encoder against live upstreams on loopback.

Two upstreams, both real HTTP servers (uvicorn on 127.0.0.1):
- querylift's own `/v1/embeddings` in development mode: a tenant without an adapter gets the
  document encoder's vectors, so an OpenAIHTTPEncoder with the same tokenizer must reproduce
  `document_encoder.encode(texts, "query")` exactly (the encoder contract, end to end);
- a small fake upstream that records every request and answers canned vectors or scripted
  faults (5xx, 4xx, slowness), to check what is sent and how failures are handled.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from transformers import AutoTokenizer

from encoders import Encoder, EncoderSpec, build_encoder
from encoders.base import InputTooLongError
from encoders.openai_http import OpenAIHTTPEncoder, UpstreamError
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import long_text
from tests.encoders.conftest import assert_empty_input_ok
from tests.live import free_port, serve

QWEN3_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
DEFAULT_INSTRUCTION = "given a claim find evidence"
ATOL = 1e-5
FAKE_DIM = 8

# Very different lengths, in an order that length-sorting would reshuffle.
TEXTS = [
    "what causes malaria in children and women and men in the study of the disease",
    "cell",
    "the mosquito is the parasite",
    "does vitamin a decrease the risk of heart disease in patients with cancer",
    "a",
    "gene and protein",
]


# ---------------------------------------------------------------- the fake upstream


def canned(text: str, dim: int = FAKE_DIM) -> np.ndarray:
    """The fake's vector for a text: deterministic, distinct per text, not normalised."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return (rng.standard_normal(dim) * 3).astype(np.float32)


class FakeUpstream:
    """Records requests; answers canned embeddings, or the scripted statuses first."""

    def __init__(self) -> None:
        self.reset()

    def reset(
        self,
        script: list[int | tuple[int, dict[str, str]]] | None = None,
        delay_s: float = 0.0,
        float_only: bool = False,
        usage: bool = True,
        mode: str = "ok",
    ) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script = list(script or [])
        self.delay_s = delay_s
        self.float_only = float_only
        self.usage = usage
        self.mode = mode
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def inputs(self) -> list[list[str]]:
        return [r["body"]["input"] for r in self.requests]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Any:
            body = await request.json()
            with self._lock:
                self.requests.append({"body": body, "headers": dict(request.headers)})
                step = self.script.pop(0) if self.script else 200
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status, headers = step if isinstance(step, tuple) else (step, {})
            if status != 200:
                message = f"scripted failure {status}: the input is not acceptable"
                err = {"error": {"message": message, "type": "fake", "code": status}}
                return JSONResponse(err, status_code=status, headers=headers)
            if self.mode == "not_json":
                return PlainTextResponse("<html>gateway says hi</html>")
            texts = body["input"]
            vecs = [canned(t) for t in texts]
            if self.mode == "short":
                vecs = vecs[:-1]
            if self.mode == "wrong_dim":
                vecs = [np.concatenate([v, v]) for v in vecs]
            data = []
            for i, v in enumerate(vecs):
                if body.get("encoding_format") == "base64" and not self.float_only:
                    import base64

                    emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode()
                else:
                    emb = v.tolist()
                data.append({"object": "embedding", "index": i, "embedding": emb})
            data.reverse()  # order must come from `index`, not position
            out: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
            if self.usage:
                n = 10 * len(texts)
                out["usage"] = {"prompt_tokens": n, "total_tokens": n}
            return out

        return app


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with serve(fake.app()) as base:
        yield fake, base + "/v1"


@pytest.fixture
def fake(fake_server: tuple[FakeUpstream, str]) -> FakeUpstream:
    fake_server[0].reset()
    return fake_server[0]


@pytest.fixture
def fake_url(fake_server: tuple[FakeUpstream, str]) -> str:
    return fake_server[1]


# ---------------------------------------------------------------- querylift as the upstream


@pytest.fixture(scope="module")
def live_url(
    tmp_path_factory: pytest.TempPathFactory, query_encoder: Encoder, document_encoder: Encoder
) -> Iterator[str]:
    root = tmp_path_factory.mktemp("openai-http-live")
    settings = Settings(
        adapter_store=root / "adapters",
        qdrant_path=root / "unused-qdrant",
        collection="docs",
        max_inputs=64,
    )
    assert settings.tenants_file is None  # development mode: no adapter, document vectors
    gateway = QdrantGateway(path=":memory:")
    app = create_app(
        settings, query_encoder=query_encoder, document_encoder=document_encoder, gateway=gateway
    )
    try:
        with serve(app) as base:
            yield base + "/v1"
    finally:
        gateway.close()


Maker = Callable[..., OpenAIHTTPEncoder]


@pytest.fixture
def make(model_dirs: dict[str, Path]) -> Iterator[Maker]:
    """Build encoders with fast test defaults (small timeouts and backoff); close them after."""
    made: list[OpenAIHTTPEncoder] = []

    def _make(url: str, *, model: str = "bert", backoff_s: float = 0.01, **kw: Any):
        ctor = {k: kw.pop(k) for k in ("dim", "encoding_format", "concurrency") if k in kw}
        kw.setdefault("name", "remote-tiny")
        kw.setdefault("timeout_s", 2.0)
        kw.setdefault("max_retries", 2)
        spec = EncoderSpec(path=str(model_dirs[model]), backend="openai_http", url=url, **kw)
        enc = OpenAIHTTPEncoder(spec, backoff_s=backoff_s, **ctor)
        made.append(enc)
        return enc

    yield _make
    for enc in made:
        enc.close()


def live_kwargs(document_encoder: Encoder, **kw: Any) -> dict[str, Any]:
    """The same tokenizer and limit as the upstream's document encoder."""
    return {"max_tokens": document_encoder.max_tokens, **kw}


# ---------------------------------------------------------------- contract, live upstream


def test_live_matches_the_document_encoder(
    make: Maker, live_url: str, document_encoder: Encoder
) -> None:
    enc = make(live_url, batch_size=2, **live_kwargs(document_encoder))
    assert isinstance(enc, Encoder)
    assert enc.name == "remote-tiny"
    assert enc.dim == document_encoder.dim == 32  # probed
    assert enc.max_tokens == document_encoder.max_tokens
    expected = document_encoder.encode(TEXTS, "query")
    res = enc.encode(TEXTS, "query")
    assert res.vectors.dtype == np.float32
    assert res.vectors.shape == (len(TEXTS), enc.dim)
    np.testing.assert_allclose(res.vectors, expected.vectors, atol=ATOL, rtol=0)
    assert res.token_counts == expected.token_counts
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    # querylift's usage counts the same tokenizer's tokens, summed over the 3 batches
    total = sum(expected.token_counts)
    assert enc.last_usage == {"prompt_tokens": total, "total_tokens": total}


def test_factory_builds_the_openai_http_backend(
    model_dirs: dict[str, Path], live_url: str, document_encoder: Encoder
) -> None:
    spec = EncoderSpec(
        name="remote",
        path=str(model_dirs["bert"]),
        backend="openai_http",
        url=live_url,
        max_tokens=document_encoder.max_tokens,
    )
    enc = build_encoder(spec)
    try:
        assert isinstance(enc, OpenAIHTTPEncoder)
        np.testing.assert_allclose(
            enc.encode(TEXTS[:2], "document").vectors,
            document_encoder.encode(TEXTS[:2], "document").vectors,
            atol=ATOL,
        )
    finally:
        enc.close()


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_live_rows_in_input_order(
    make: Maker, live_url: str, document_encoder: Encoder, batch_size: int
) -> None:
    enc = make(live_url, batch_size=batch_size, **live_kwargs(document_encoder))
    res = enc.encode(TEXTS, "document")
    single = np.concatenate([enc.encode([t], "document").vectors for t in TEXTS])
    np.testing.assert_allclose(res.vectors, single, atol=ATOL)
    assert len({tuple(np.round(v, 4)) for v in res.vectors}) == len(TEXTS)
    dup = enc.encode([TEXTS[0], TEXTS[1], TEXTS[0]], "document").vectors
    np.testing.assert_allclose(dup[0], dup[2], atol=ATOL)
    np.testing.assert_allclose(dup[0], res.vectors[0], atol=ATOL)


def test_live_float_and_base64_agree(make: Maker, live_url: str, document_encoder: Encoder) -> None:
    b64 = make(live_url, **live_kwargs(document_encoder))
    flt = make(live_url, encoding_format="float", **live_kwargs(document_encoder))
    np.testing.assert_allclose(
        b64.encode(TEXTS, "query").vectors, flt.encode(TEXTS, "query").vectors, atol=ATOL
    )


def test_live_empty_input(make: Maker, live_url: str, document_encoder: Encoder) -> None:
    enc = make(live_url, **live_kwargs(document_encoder))
    assert_empty_input_ok(enc)


def test_live_count_tokens_untruncated(
    make: Maker, live_url: str, document_encoder: Encoder
) -> None:
    enc = make(live_url, **live_kwargs(document_encoder))
    texts = ["the cell", long_text(100)]
    assert enc.count_tokens(texts, "document") == [4, 102]
    assert enc.count_tokens(texts, "query") == document_encoder.count_tokens(texts, "query")


def test_live_truncate_true_cuts_like_the_local_encoder(
    make: Maker, live_url: str, document_encoder: Encoder
) -> None:
    limit = document_encoder.max_tokens
    enc = make(live_url, batch_size=2, **live_kwargs(document_encoder))
    texts = [long_text(40), "the cell", "cancer " + long_text(40)]
    expected = document_encoder.encode(texts, "query", truncate=True)
    res = enc.encode(texts, "query", truncate=True)
    assert res.token_counts == expected.token_counts == [limit, 4, limit]
    np.testing.assert_allclose(res.vectors, expected.vectors, atol=ATOL, rtol=0)
    # truncation keeps the head: anything past the limit does not matter
    tail = enc.encode([long_text(40) + " cancer cell gene"], "query")
    np.testing.assert_allclose(tail.vectors[0], res.vectors[0], atol=ATOL)
    # truncate=True is the default; count_tokens still reports the untruncated count
    np.testing.assert_allclose(enc.encode(texts, "query").vectors, res.vectors, atol=ATOL)
    assert enc.count_tokens(texts, "query") == [42, 4, 43]


def test_live_truncate_false_refuses(make: Maker, live_url: str, document_encoder: Encoder) -> None:
    enc = make(live_url, max_tokens=16)
    texts = ["the cell", long_text(14), long_text(15), long_text(40)]
    assert enc.count_tokens(texts, "document") == [4, 16, 17, 42]
    with pytest.raises(InputTooLongError) as info:
        enc.encode(texts, "document", truncate=False)
    assert (info.value.index, info.value.tokens, info.value.max_tokens) == (2, 17, 16)
    ok = enc.encode(texts[:2], "document", truncate=False)
    assert ok.token_counts == [4, 16]
    np.testing.assert_allclose(
        ok.vectors, document_encoder.encode(texts[:2], "document").vectors, atol=ATOL
    )


def test_live_upstream_refusal_is_a_4xx_upstream_error(
    make: Maker, live_url: str, document_encoder: Encoder
) -> None:
    """A local limit above the upstream's: querylift answers 413 naming the input; no retry."""
    enc = make(live_url, max_tokens=64)
    assert enc.max_tokens == 64 > document_encoder.max_tokens
    with pytest.raises(UpstreamError) as info:
        enc.encode(["the cell", long_text(40)], "document")
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.status == 413
    assert err.attempts == 1
    assert "input 1 has 42 tokens" in str(err)


def test_live_thread_safe(make: Maker, live_url: str, document_encoder: Encoder) -> None:
    enc = make(live_url, batch_size=2, **live_kwargs(document_encoder))
    expected = document_encoder.encode(TEXTS, "query").vectors
    jobs = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 2
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda texts: enc.encode(texts, "query").vectors, jobs))
    for i, got in enumerate(results):
        shift = i % len(TEXTS)
        np.testing.assert_allclose(got, np.roll(expected, -shift, axis=0), atol=ATOL)


# ---------------------------------------------------------------- what is sent (fake upstream)


def test_dim_probe(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url)
    assert enc.dim == FAKE_DIM
    assert fake.calls == 1 and fake.inputs() == [["ping"]]
    fake.reset()
    known = make(fake_url, dim=FAKE_DIM)
    assert known.dim == FAKE_DIM
    assert fake.calls == 0  # a known dim needs no probe
    res = known.encode([], "query")
    assert res.vectors.shape == (0, FAKE_DIM) and fake.calls == 0


def test_request_shape(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM, batch_size=2, api_key="sk-upstream", upstream_model="m-up")
    texts = [f"text {i}" for i in range(5)]
    enc.encode(texts, "document")
    assert fake.calls == 3  # batches of 2, 2, 1
    bodies = [r["body"] for r in fake.requests]
    assert all(b["model"] == "m-up" and b["encoding_format"] == "base64" for b in bodies)
    assert sorted(b["input"] for b in bodies) == [texts[0:2], texts[2:4], texts[4:]]
    assert {r["headers"]["authorization"] for r in fake.requests} == {"Bearer sk-upstream"}

    fake.reset()
    anon = make(fake_url, dim=FAKE_DIM, encoding_format="float")
    anon.encode(["x"], "query")
    (req,) = fake.requests
    assert req["body"] == {"model": "remote-tiny", "input": ["x"], "encoding_format": "float"}
    assert "authorization" not in req["headers"]


def test_prompt_formatting_applied_locally(
    make: Maker, fake: FakeUpstream, fake_url: str, model_dirs: dict[str, Path]
) -> None:
    enc = make(
        fake_url,
        model="qwen3",
        dim=FAKE_DIM,
        query_template=QWEN3_TEMPLATE,
        default_instruction=DEFAULT_INSTRUCTION,
    )
    text = "what causes malaria"
    prompted = f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:{text}"
    q = enc.encode([text], "query")
    d = enc.encode([text], "document", instruction="ignored for documents")
    o = enc.encode([text, "cell"], "query", instruction=["find evidence", None])
    assert fake.inputs() == [
        [prompted],
        [text],
        [
            "Instruct: find evidence\nQuery:what causes malaria",
            f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:cell",
        ],
    ]
    np.testing.assert_allclose(q.vectors[0], unit(canned(prompted)), atol=ATOL)
    np.testing.assert_allclose(d.vectors[0], unit(canned(text)), atol=ATOL)
    assert o.vectors.shape == (2, FAKE_DIM)
    # the local counts include the prompt (as the transformers backend's do)
    tok = AutoTokenizer.from_pretrained(model_dirs["qwen3"])
    assert q.token_counts == [len(tok(prompted)["input_ids"])]
    assert d.token_counts == [len(tok(text)["input_ids"])]
    assert enc.count_tokens([text], "query") == q.token_counts
    assert q.token_counts[0] > d.token_counts[0]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("float_only", [False, True])
def test_order_by_index_and_both_response_shapes(
    make: Maker, fake: FakeUpstream, fake_url: str, float_only: bool
) -> None:
    """The fake answers rows in reverse order, as base64 or floats (whatever was asked)."""
    fake.reset(float_only=float_only)
    enc = make(fake_url, dim=FAKE_DIM, batch_size=4, normalize=False)
    res = enc.encode(TEXTS, "document")
    np.testing.assert_allclose(res.vectors, np.stack([canned(t) for t in TEXTS]), atol=ATOL)


def test_normalisation_is_local(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    raw = make(fake_url, dim=FAKE_DIM, normalize=False).encode(TEXTS, "query").vectors
    normed = make(fake_url, dim=FAKE_DIM).encode(TEXTS, "query").vectors
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-2)  # the upstream does not normalise
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(normed, raw / norms[:, None], atol=ATOL)


def test_truncate_false_refuses_before_sending(
    make: Maker, fake: FakeUpstream, fake_url: str
) -> None:
    enc = make(fake_url, dim=FAKE_DIM, max_tokens=16)
    with pytest.raises(InputTooLongError) as info:
        enc.encode(["the cell", long_text(20)], "document", truncate=False)
    assert info.value.index == 1 and info.value.tokens == 22
    assert fake.calls == 0


def test_truncate_true_sends_a_prefix(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM, max_tokens=8)
    res = enc.encode(["Malaria CELL, the Gene of a MOSQUITO and more", "the cell"], "document")
    # [CLS] + 6 words + [SEP]; the original casing and punctuation survive the cut
    assert fake.inputs() == [["Malaria CELL, the Gene of", "the cell"]]
    assert res.token_counts == [8, 4]
    assert enc.count_tokens(fake.inputs()[0], "document") == [8, 4]


def test_truncation_recounts_the_prefix(
    make: Maker, fake: FakeUpstream, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A BPE merge across the cut can change the count: the prefix is shortened until it fits."""
    enc = make(fake_url, dim=FAKE_DIM, max_tokens=8)
    real = enc._count

    def merged(formatted: list[str]) -> list[int]:  # prefixes of 6+ words count one more
        return [c + (len(t.split()) >= 6) for c, t in zip(real(formatted), formatted, strict=True)]

    monkeypatch.setattr(enc, "_count", merged)
    res = enc.encode([long_text(20)], "document")
    assert fake.inputs() == [[long_text(5)]]
    assert res.token_counts == [7]


def test_usage_passed_through(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM, batch_size=2)
    res = enc.encode(TEXTS, "document")  # 3 batches of 2: the fake says 20 tokens each
    assert enc.last_usage == {"prompt_tokens": 60, "total_tokens": 60}
    assert res.token_counts == enc.count_tokens(TEXTS, "document")  # local counts
    # per thread: another thread's calls do not show here
    seen: list[object] = []
    t = threading.Thread(target=lambda: seen.append(enc.last_usage))
    t.start()
    t.join()
    assert seen == [None]
    fake.reset(usage=False)
    enc.encode(TEXTS[:1], "document")
    assert enc.last_usage is None
    enc.encode([], "document")
    assert enc.last_usage is None


@pytest.mark.parametrize("mode", ["short", "wrong_dim", "not_json"])
def test_malformed_responses(make: Maker, fake: FakeUpstream, fake_url: str, mode: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM)
    fake.reset(mode=mode)
    with pytest.raises(UpstreamError) as info:
        enc.encode(["the cell", "a"], "document")
    assert info.value.status is None
    assert fake.calls == 1  # a malformed 200 is not retried


# ---------------------------------------------------------------- faults


def test_5xx_then_success_is_retried(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM, max_retries=2)
    fake.reset(script=[500])
    res = enc.encode(["the cell"], "document")
    assert fake.calls == 2
    np.testing.assert_allclose(res.vectors[0], unit(canned("the cell")), atol=ATOL)
    fake.reset(script=[502, 503])
    enc.encode(["the cell"], "document")
    assert fake.calls == 3


def test_5xx_forever_exhausts_the_retries(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM, max_retries=3)
    fake.reset(script=[503] * 10)
    with pytest.raises(UpstreamError) as info:
        enc.encode(["the cell"], "document")
    assert fake.calls == 4  # max_retries + 1
    assert info.value.status == 503 and info.value.attempts == 4
    assert "scripted failure 503" in str(info.value)
    none = make(fake_url, dim=FAKE_DIM, max_retries=0)
    fake.reset(script=[500] * 10)
    with pytest.raises(UpstreamError):
        none.encode(["the cell"], "document")
    assert fake.calls == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422, 429])
def test_4xx_is_not_retried(make: Maker, fake: FakeUpstream, fake_url: str, status: int) -> None:
    enc = make(fake_url, dim=FAKE_DIM, max_retries=3)
    fake.reset(script=[status])
    with pytest.raises(UpstreamError) as info:
        enc.encode(["the cell"], "document")
    assert fake.calls == 1
    assert info.value.status == status
    assert f"answered {status}: scripted failure {status}: the input is not acceptable" in str(
        info.value
    )


def test_retry_after_is_honoured(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url, dim=FAKE_DIM, max_retries=1)
    fake.reset(script=[(503, {"Retry-After": "0.3"})])
    start = time.monotonic()
    enc.encode(["the cell"], "document")
    assert time.monotonic() - start >= 0.3
    assert fake.calls == 2


def test_slow_upstream_times_out_after_retries(
    make: Maker, fake: FakeUpstream, fake_url: str
) -> None:
    enc = make(fake_url, dim=FAKE_DIM, timeout_s=0.1, max_retries=1)
    fake.reset(delay_s=0.5)
    start = time.monotonic()
    with pytest.raises(UpstreamError, match="timed out") as info:
        enc.encode(["the cell"], "document")
    elapsed = time.monotonic() - start
    assert info.value.status is None and info.value.attempts == 2
    assert fake.calls == 2
    assert elapsed < 1.0
    # a slow but in-time upstream is fine
    fake.reset(delay_s=0.05)
    patient = make(fake_url, dim=FAKE_DIM, timeout_s=2.0)
    assert patient.encode(["the cell"], "document").vectors.shape == (1, FAKE_DIM)


def test_dead_upstream_fails_promptly(make: Maker) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    enc = make(dead, dim=FAKE_DIM, max_retries=2)
    start = time.monotonic()
    with pytest.raises(UpstreamError, match="unreachable") as info:
        enc.encode(["the cell"], "document")
    assert time.monotonic() - start < 2.0
    assert info.value.status is None and info.value.attempts == 3
    assert isinstance(info.value.__cause__, Exception)
    # without a known dim the probe fails at construction, with the same error
    with pytest.raises(UpstreamError, match="unreachable"):
        make(dead, max_retries=0)


def test_spec_needs_a_url(model_dirs: dict[str, Path]) -> None:
    spec = EncoderSpec(name="x", path=str(model_dirs["bert"]), backend="openai_http")
    with pytest.raises(ValueError, match="needs `url`"):
        OpenAIHTTPEncoder(spec)


def test_full_endpoint_url_is_accepted(make: Maker, fake: FakeUpstream, fake_url: str) -> None:
    enc = make(fake_url + "/embeddings/", dim=FAKE_DIM)
    assert enc.url == fake_url + "/embeddings"
    enc.encode(["a"], "document")
    assert fake.calls == 1


def test_close(model_dirs: dict[str, Path], fake: FakeUpstream, fake_url: str) -> None:
    spec = EncoderSpec(name="x", path=str(model_dirs["bert"]), backend="openai_http", url=fake_url)
    with OpenAIHTTPEncoder(spec, dim=FAKE_DIM) as enc:
        enc.encode(["a"], "document")
    with pytest.raises(RuntimeError):
        enc.encode(["a"], "document")
    enc.close()  # idempotent
