"""GET /info and querylift_build_info: what is served, and to the caller's tenant through what."""

from __future__ import annotations

import re
from importlib.metadata import version

from fastapi.testclient import TestClient

from adapters.store import AdapterStore
from encoders import Encoder
from tests.conftest import KEYS, auth, make_linear


def test_info_names_the_encoders_and_limits_without_a_key(client: TestClient) -> None:
    r = client.get("/info")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == version("querylift")
    assert body["profile"] == "embedded"
    q, d = body["query_encoder"], body["document_encoder"]
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert q["name"] == runtime.query_encoder.name and q["dim"] == runtime.query_encoder.dim
    assert d["name"] == runtime.document_encoder.name and d["dim"] == 32
    assert (
        q["pooling"] == "last" and q["query_template"] == runtime.query_encoder.spec.query_template
    )
    assert q["max_tokens"] == runtime.query_encoder.max_tokens
    assert q["engine"].startswith("transformers==") and len(q["fingerprint"]) >= 16
    assert {"linear", "hybrid", "mlp", "lowrank"} <= set(body["adapter_kinds"])
    assert body["limits"] == {"max_inputs": 8, "max_input_chars": 2000, "max_body_bytes": 8 << 20}
    assert body["tenant"] is None


def test_two_tenants_see_their_own_adapter(
    client: TestClient, adapters_bound: dict[str, str]
) -> None:
    acme = client.get("/info", headers=auth("acme")).json()["tenant"]
    globex = client.get("/info", headers=auth("globex")).json()["tenant"]
    initech = client.get("/info", headers=auth("initech")).json()["tenant"]
    assert acme["name"] == "acme" and acme["collection"] == "docs" and acme["scope"] == "field"
    assert acme["served_by"] == "adapter" and acme["adapter"]["id"] == adapters_bound["acme"]
    assert globex["adapter"]["id"] == adapters_bound["globex"] != acme["adapter"]["id"]
    assert acme["adapter"]["kind"] == "linear" and acme["adapter"]["out_dim"] == acme["dim"] == 32
    assert initech["served_by"] == "document_encoder" and initech["adapter"] is None
    # what /embed reports agrees
    r = client.post("/embed", json={"input": ["q"]}, headers=auth("globex"))
    assert r.json()["adapter"] == {"id": globex["adapter"]["id"], "version": 1}


def test_info_follows_an_activation(
    client: TestClient, store: AdapterStore, query_encoder: Encoder, document_encoder: Encoder
) -> None:
    new = store.put(*make_linear(query_encoder, document_encoder, 11))
    store.activate("acme", new.id)
    client.app.state.runtime.sync()  # type: ignore[attr-defined]
    acme = client.get("/info", headers=auth("acme")).json()["tenant"]
    assert acme["adapter"]["id"] == new.id and acme["adapter"]["version"] == 2


def test_an_unknown_key_is_401_and_nothing_secret_is_shown(client: TestClient) -> None:
    r = client.get("/info", headers={"Authorization": "Bearer not-a-key"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    text = client.get("/info", headers=auth("acme")).text
    for key in KEYS.values():
        assert key not in text
    assert "api_key" not in text and "qdrant" not in text.lower() and "/tmp" not in text


def test_build_info_metric(client: TestClient) -> None:
    metrics = client.get("/metrics").text
    line = next(m for m in metrics.splitlines() if m.startswith("querylift_build_info{"))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert labels == {
        "version": version("querylift"),
        "profile": "embedded",
        "query_encoder": runtime.query_encoder.name,
        "query_dim": str(runtime.query_encoder.dim),
        "document_encoder": runtime.document_encoder.name,
        "document_dim": "32",
    }
    assert line.endswith(" 1.0")
