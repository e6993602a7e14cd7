"""Shared fixtures: tiny local encoders, an in-memory Qdrant, tenants and adapters.

Nothing here touches the network; the embedded models are only used by tests marked `models`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adapters import AdapterKind, Manifest, ModelInfo
from adapters.checkpoint import serialize
from adapters.store import AdapterStore
from encoders import Encoder, EncoderSpec, Pooling, build_encoder
from service.app import create_app
from service.bindings.tenants import hash_key
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.tiny_models import build_tiny_bert, build_tiny_qwen3
from training.data import Document

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QWEN_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
KEYS = {"acme": "key-acme-123", "globex": "key-globex-456", "initech": "key-initech-789"}

DOCS = [
    Document("d1", "malaria is caused by a parasite the mosquito carries", {"topic": "malaria"}),
    Document("d2", "the mosquito is the vector of malaria in children", {"topic": "malaria"}),
    Document("d3", "cancer cells increase the risk of disease", {"topic": "cancer"}),
    Document("d4", "vitamin effects on the immune response to infection", {"topic": "immune"}),
    Document("d5", "the heart and blood of mice in the study", {"topic": "heart"}),
    Document("d6", "drug treatment results for patients with brain disease", {"topic": "brain"}),
]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "bert": build_tiny_bert(root / "bert", hidden=32),
        "qwen3": build_tiny_qwen3(root / "qwen3", hidden=48),
    }


@pytest.fixture(scope="session")
def query_spec(model_dirs: dict[str, Path]) -> EncoderSpec:
    return EncoderSpec(
        name="tiny-qwen3",
        path=str(model_dirs["qwen3"]),
        pooling=Pooling.LAST,
        query_template=QWEN_TEMPLATE,
        default_instruction="Given a claim, find evidence",
        max_tokens=64,
    )


@pytest.fixture(scope="session")
def doc_spec(model_dirs: dict[str, Path]) -> EncoderSpec:
    return EncoderSpec(name="tiny-bert", path=str(model_dirs["bert"]), max_tokens=32)


@pytest.fixture(scope="session")
def query_encoder(query_spec: EncoderSpec) -> Encoder:
    return build_encoder(query_spec)


@pytest.fixture(scope="session")
def document_encoder(doc_spec: EncoderSpec) -> Encoder:
    return build_encoder(doc_spec)


def make_linear(
    query_encoder: Encoder, document_encoder: Encoder, seed: int, **overrides: object
) -> tuple[bytes, bytes]:
    """A random linear adapter checkpoint (tensor bytes, manifest bytes)."""
    rng = np.random.default_rng(seed)
    din, dout = query_encoder.dim, document_encoder.dim
    manifest = Manifest(
        kind=AdapterKind.LINEAR,
        in_dim=din,
        out_dim=dout,
        query_model=ModelInfo(name=query_encoder.name, dim=din),
        document_model=ModelInfo(name=document_encoder.name, dim=dout),
        name=f"random-{seed}",
    )
    manifest = manifest.model_copy(update=overrides)
    tensors = {
        "weight": rng.standard_normal((dout, din)).astype(np.float32) / np.sqrt(din),
        "bias": rng.standard_normal(dout).astype(np.float32) * 0.01,
    }
    return serialize(manifest, tensors)


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "adapters")


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    """acme and globex share collection `docs`; initech has no adapter."""
    path = tmp_path / "tenants.json"
    path.write_text(
        json.dumps(
            {
                "tenants": [
                    {"name": n, "api_keys_sha256": [hash_key(k)], "collection": "docs"}
                    for n, k in KEYS.items()
                ]
            }
        )
    )
    return path


def index_docs(
    gateway: QdrantGateway,
    encoder: Encoder,
    tenant: str,
    docs: list[Document],
    collection: str = "docs",
) -> None:
    from querylift.indexing import index_documents

    index_documents(
        gateway,
        encoder,
        docs,
        collection=collection,
        tenant_field="tenant",
        tenant_value=tenant,
        progress=False,
    )


@pytest.fixture
def gateway(document_encoder: Encoder) -> Iterator[QdrantGateway]:
    gw = QdrantGateway(path=":memory:")
    index_docs(gw, document_encoder, "acme", DOCS)
    index_docs(
        gw,
        document_encoder,
        "globex",
        [
            Document("g1", "globex secret malaria mosquito plan", {"topic": "malaria"}),
            Document("g2", "globex secret cancer plan", {"topic": "cancer"}),
        ],
    )
    yield gw
    gw.close()


@pytest.fixture
def settings(tmp_path: Path, tenants_file: Path, store: AdapterStore) -> Settings:
    return Settings(
        tenants_file=tenants_file,
        adapter_store=store.root,
        collection="docs",
        qdrant_path=tmp_path / "unused-qdrant",
        max_inputs=8,
        max_input_chars=2000,
    )


@pytest.fixture
def adapters_bound(
    store: AdapterStore, query_encoder: Encoder, document_encoder: Encoder
) -> dict[str, str]:
    """acme and globex each get their own random adapter; initech none."""
    ids = {}
    for seed, tenant in enumerate(("acme", "globex")):
        adapter = store.put(*make_linear(query_encoder, document_encoder, seed))
        store.activate(tenant, adapter.id)
        ids[tenant] = adapter.id
    return ids


@pytest.fixture
def client(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    gateway: QdrantGateway,
    adapters_bound: dict[str, str],
) -> Iterator[TestClient]:
    app = create_app(
        settings, query_encoder=query_encoder, document_encoder=document_encoder, gateway=gateway
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
def make_client(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    gateway: QdrantGateway,
    adapters_bound: dict[str, str],
) -> Iterator[Callable[..., TestClient]]:
    """Apps with settings overrides (`make_client(max_queue=1)`), closed at the end."""
    stack: list[TestClient] = []

    def make(**update: object) -> TestClient:
        app = create_app(
            settings.model_copy(update=update),
            query_encoder=query_encoder,
            document_encoder=document_encoder,
            gateway=gateway,
        )
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        stack.append(c)
        return c

    yield make
    for c in reversed(stack):
        c.__exit__(None, None, None)


def server_env(query_spec: EncoderSpec, doc_spec: EncoderSpec, **env: str) -> dict[str, str]:
    """Environment for a `querylift serve` (or bench) subprocess on the tiny models: no
    inherited QUERYLIFT_* setting, offline, this checkout importable; `env` added last."""
    out = {k: v for k, v in os.environ.items() if not k.upper().startswith("QUERYLIFT_")}
    pythonpath = [str(REPO), *filter(None, out.get("PYTHONPATH", "").split(os.pathsep))]
    out.update(
        {
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "QUERYLIFT_QUERY_ENCODER__NAME": query_spec.name,
            "QUERYLIFT_QUERY_ENCODER__PATH": query_spec.path,
            "QUERYLIFT_QUERY_ENCODER__POOLING": query_spec.pooling.value,
            "QUERYLIFT_QUERY_ENCODER__QUERY_TEMPLATE": query_spec.query_template,
            "QUERYLIFT_QUERY_ENCODER__DEFAULT_INSTRUCTION": query_spec.default_instruction,
            "QUERYLIFT_QUERY_ENCODER__MAX_TOKENS": str(query_spec.max_tokens),
            "QUERYLIFT_DOCUMENT_ENCODER__NAME": doc_spec.name,
            "QUERYLIFT_DOCUMENT_ENCODER__PATH": doc_spec.path,
            "QUERYLIFT_DOCUMENT_ENCODER__MAX_TOKENS": str(doc_spec.max_tokens),
            **env,
        }
    )
    return out
