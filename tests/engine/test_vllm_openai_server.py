"""vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server --runner pooling`)
as the upstream of the `openai_http` backend: the same vectors as the in-process engine.

This is the sidecar deployment: querylift keeps the prompt, the tokenizer (counts, refusal,
truncation) and normalisation; the vLLM server only embeds the text it is sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from encoders import Encoder, build_encoder
from tests.engine.conftest import ENGINE_READY_S, MAX_TOKENS, engine_spec
from tests.live import free_port

TOL = 1e-4
TEXTS = ["what causes malaria", "the heart of mice", "vitamin effects on the immune response"]
LONG = " ".join(["cancer cells increase the risk of disease"] * 20)


@pytest.fixture(scope="module")
def vllm_server(engine_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(engine_model),
        "--runner",
        "pooling",
        "--served-model-name",
        "tiny-qwen3-engine",
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_TOKENS),
        "--pooler-config",
        json.dumps({"pooling_type": "LAST"}),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ENGINE_READY_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up in {ENGINE_READY_S}s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def upstream(vllm_server: str, engine_model: Path) -> Iterator[Encoder]:
    enc = build_encoder(
        engine_spec(
            engine_model,
            backend="openai_http",
            url=f"{vllm_server}/v1",
            upstream_model="tiny-qwen3-engine",
        )
    )
    yield enc
    close = getattr(enc, "close", None)
    if callable(close):
        close()


def test_the_server_lists_the_model(vllm_server: str) -> None:
    models = httpx.get(f"{vllm_server}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny-qwen3-engine"]


@pytest.mark.parametrize("kind", ["query", "document"])
def test_the_server_gives_the_in_process_engines_vectors(
    upstream: Encoder, vllm_encoder: Encoder, kind: str
) -> None:
    a = upstream.encode(TEXTS, kind)  # type: ignore[arg-type]
    b = vllm_encoder.encode(TEXTS, kind)  # type: ignore[arg-type]
    assert a.token_counts == b.token_counts
    np.testing.assert_allclose(a.vectors, b.vectors, atol=TOL, rtol=0)


def test_over_long_inputs_cut_the_same_way(upstream: Encoder, vllm_encoder: Encoder) -> None:
    texts = [LONG, TEXTS[0]]
    a = upstream.encode(texts, "document", truncate=True)
    b = vllm_encoder.encode(texts, "document", truncate=True)
    assert a.token_counts == b.token_counts and a.token_counts[0] == MAX_TOKENS
    np.testing.assert_allclose(a.vectors, b.vectors, atol=TOL, rtol=0)
