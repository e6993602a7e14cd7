"""The official `openai` client against a live querylift on loopback (acceptance: issue 2)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from tests.conftest import KEYS
from tests.live import serve

openai = pytest.importorskip("openai")


@pytest.fixture
def base_url(make_app, adapters_bound):
    with serve(make_app()) as url:
        yield url


def test_openai_client_gets_adapted_embeddings(base_url, document_encoder):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEYS["acme"], max_retries=0)
    texts = ["what causes malaria", "the heart of mice"]
    as_float = client.embeddings.create(model="querylift", input=texts, encoding_format="float")
    as_b64 = client.embeddings.create(model="querylift", input=texts, encoding_format="base64")
    default = client.embeddings.create(model="querylift", input=texts[0])
    for resp in (as_float, as_b64, default):
        assert resp.usage.prompt_tokens > 0
    f = np.array([d.embedding for d in as_float.data])
    # asked for explicitly, base64 comes back as the raw string: little-endian float32
    b = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in as_b64.data])
    assert f.shape == b.shape == (2, document_encoder.dim)
    np.testing.assert_allclose(f, b, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.array(default.data[0].embedding), f[0], atol=1e-6)
    # the same vectors /embed gives this tenant
    r = httpx.post(
        f"{base_url}/embed",
        json={"input": texts},
        headers={"Authorization": f"Bearer {KEYS['acme']}"},
    )
    np.testing.assert_allclose(np.array([d["embedding"] for d in r.json()["data"]]), f, atol=1e-6)


def test_openai_client_sees_auth_and_input_errors(base_url):
    bad = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="querylift", input="x")
    good = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEYS["acme"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        good.embeddings.create(model="querylift", input="x", dimensions=3)
    assert "dimensions" in str(e.value)
