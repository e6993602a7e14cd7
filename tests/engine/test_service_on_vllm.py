"""The whole service with its query encoder on vLLM's engine: /embed, /v1/embeddings through
the `openai` client, /search on an indexed collection, a hot swap under concurrent load, and
64 requests in flight at once, batched inside the engine (its step metrics say so).

The app runs under a real uvicorn on loopback; the engine is the session's one `vllm_encoder`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr
from qdrant_client import models

from adapters.folder import FolderStore
from encoders import Encoder
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import (
    ADMIN,
    DOCS,
    KEYS,
    admin_headers,
    auth,
    bind_random_adapters,
    embeddings,
    index_docs,
    make_linear,
)
from tests.live import serve

TEXTS = ["what causes malaria", "the heart of mice", "drug treatment for brain disease"]


def metric_samples(text: str, name: str) -> dict[str, float]:
    """{label string: value} of one metric family's samples in Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


@pytest.fixture
def stack(
    tmp_path: Path,
    tenants_file: Path,
    vllm_encoder: Encoder,
    document_encoder: Encoder,
) -> Iterator[dict[str, Any]]:
    """A live service on the engine: acme and globex with their own adapters, initech none."""
    store = FolderStore(tmp_path / "adapters")
    ids = bind_random_adapters(store, vllm_encoder, document_encoder)
    gateway = QdrantGateway(path=":memory:")
    index_docs(gateway, document_encoder, "acme", DOCS)
    settings = Settings(
        tenants_file=tenants_file,
        adapter_store=store.root,
        collection="docs",
        qdrant_path=tmp_path / "unused-qdrant",
        admin_token=SecretStr(ADMIN),
        max_inputs=64,
    )
    app = create_app(
        settings, query_encoder=vllm_encoder, document_encoder=document_encoder, gateway=gateway
    )
    with serve(app) as url:
        yield {"url": url, "store": store, "ids": ids, "gateway": gateway}
    gateway.close()


def test_embed_is_the_engine_vector_through_the_tenant_adapter(
    stack: dict[str, Any], vllm_encoder: Encoder, hf_encoder: Encoder
) -> None:
    r = httpx.post(f"{stack['url']}/embed", json={"input": TEXTS}, headers=auth("acme"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter"] == {"id": stack["ids"]["acme"], "version": 1}
    assert body["model"]  # the model name the response reports
    adapter = stack["store"].get(stack["ids"]["acme"])
    engine_raw = vllm_encoder.encode(TEXTS, "query").vectors
    np.testing.assert_allclose(embeddings(body), adapter.apply(engine_raw), atol=1e-5)
    # and what an adapter trained on the transformers backend's vectors expects
    np.testing.assert_allclose(
        embeddings(body), adapter.apply(hf_encoder.encode(TEXTS, "query").vectors), atol=1e-4
    )
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(vllm_encoder.tokenize(TEXTS, "query").counts)


def test_the_openai_client(stack: dict[str, Any]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack['url']}/v1", api_key=KEYS["acme"], max_retries=0)
    res = client.embeddings.create(model="querylift", input=TEXTS)
    got = np.asarray([d.embedding for d in res.data], dtype=np.float32)
    ref = httpx.post(f"{stack['url']}/embed", json={"input": TEXTS}, headers=auth("acme"))
    np.testing.assert_allclose(got, embeddings(ref.json()), atol=1e-6)
    # asked for explicitly, base64 comes back undecoded: little-endian float32 bytes
    b64 = client.embeddings.create(model="querylift", input=TEXTS, encoding_format="base64")
    raw = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in b64.data])
    np.testing.assert_array_equal(raw, got)


def test_search_returns_what_qdrant_returns_for_the_embed_vector(stack: dict[str, Any]) -> None:
    query = "what causes malaria"
    r = httpx.post(
        f"{stack['url']}/search", json={"query": query, "top_k": 5}, headers=auth("acme")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["adapter"]["id"] == stack["ids"]["acme"]
    assert set(body["timings_ms"]) >= {"encode", "adapt", "search"}
    vec = embeddings(
        httpx.post(f"{stack['url']}/embed", json={"input": query}, headers=auth("acme")).json()
    )[0]
    direct = stack["gateway"].query(
        "docs",
        vec.tolist(),
        flt=models.Filter(
            must=[models.FieldCondition(key="tenant", match=models.MatchValue(value="acme"))]
        ),
        limit=5,
    )
    assert [h["id"] for h in body["results"]] == [p.payload["doc_id"] for p in direct]
    np.testing.assert_allclose(
        [h["score"] for h in body["results"]], [p.score for p in direct], atol=1e-5
    )
    assert len(body["results"]) == 5


def test_readyz_and_metrics_name_the_engine_build(
    stack: dict[str, Any], vllm_encoder: Encoder
) -> None:
    r = httpx.get(f"{stack['url']}/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["engines"]["query"] == vllm_encoder.engine
    assert vllm_encoder.engine.startswith("vllm")
    text = httpx.get(f"{stack['url']}/metrics").text
    info = metric_samples(text, "querylift_engine_info")
    assert any(f'build="{vllm_encoder.engine}"' in k and 'role="query"' in k for k in info), info


def test_64_requests_in_flight_share_engine_steps(stack: dict[str, Any]) -> None:
    words = "malaria mosquito cancer cell gene protein brain heart blood drug".split()
    texts = [f"{words[i % 10]} {words[(i * 7) % 10]} study {i}" for i in range(64)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack["url"], timeout=120) as c:
            return await asyncio.gather(
                *(c.post("/embed", json={"input": t}, headers=auth("acme")) for t in texts)
            )

    before = metric_samples(
        httpx.get(f"{stack['url']}/metrics").text, "querylift_engine_step_requests_count"
    )
    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 64
    text = httpx.get(f"{stack['url']}/metrics").text
    count = metric_samples(text, "querylift_engine_step_requests_count")
    total = metric_samples(text, "querylift_engine_step_requests_sum")
    key = next(iter(count))
    steps = count[key] - before.get(key, 0.0)
    assert total[key] >= 64
    # 64 requests finished in fewer engine steps than requests: vLLM batched them
    buckets = metric_samples(text, "querylift_engine_step_requests_bucket")
    single = next(v for k, v in buckets.items() if 'le="1.0"' in k)
    assert count[key] - single > 0, "no engine step ever ran more than one request"
    assert 0 < steps < 64, steps


def test_hot_swap_under_concurrent_load_fails_no_request(
    stack: dict[str, Any], vllm_encoder: Encoder, document_encoder: Encoder
) -> None:
    url, store = stack["url"], stack["store"]
    old = stack["ids"]["acme"]
    new = store.put(*make_linear(vllm_encoder, document_encoder, 11)).id
    raw = vllm_encoder.encode(TEXTS, "query").vectors
    expected = {aid: store.get(aid).apply(raw) for aid in (old, new)}
    stop = threading.Event()
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/embed", json={"input": TEXTS}, headers=auth("acme"))
                with lock:
                    results.append((r.status_code, r.json()))

    workers = [threading.Thread(target=load) for _ in range(8)]
    for w in workers:
        w.start()
    swaps = 0
    try:
        with httpx.Client(base_url=url, timeout=60) as admin:
            deadline = time.monotonic() + 60
            while swaps < 20 and time.monotonic() < deadline:
                target = new if swaps % 2 == 0 else old
                r = admin.put(
                    "/admin/tenants/acme/adapter",
                    json={"adapter_id": target},
                    headers=admin_headers(),
                )
                assert r.status_code == 200, r.text
                swaps += 1
                time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert swaps == 20
    assert len(results) >= 20
    assert [s for s, _ in results if s != 200] == []
    seen = set()
    for _, body in results:
        aid = body["adapter"]["id"]
        seen.add(aid)
        np.testing.assert_allclose(embeddings(body), expected[aid], atol=1e-5)
    assert seen == {old, new}
