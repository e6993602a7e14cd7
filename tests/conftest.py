"""Shared fixtures and helpers: tiny local encoders, an in-memory Qdrant, tenants, adapters,
apps on them, the admin API, the error shape, metrics, and the environment of `querylift`
commands (in-process or as a subprocess).

Nothing here touches the network; the embedded models are only used by tests marked `models`.
Live servers on loopback are in tests/live.py, the tiny models in tests/tiny_models.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters import AdapterKind, Manifest, ModelInfo
from adapters.checkpoint import serialize
from adapters.folder import FolderStore
from adapters.store import AdapterStore
from encoders import Encoder, EncoderSpec, Pooling, build_encoder
from querylift.models import MINILM_DIR, MPNET_DIR, is_ready
from service.app import create_app
from service.bindings.tenants import hash_key
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.tiny_models import build_tiny_bert, build_tiny_qwen3
from training.data import Document
from training.modules import init_tensors

REPO = Path(__file__).resolve().parents[1]
# The embedded models `querylift setup --no-demo` unpacks (tests marked `models` use them).
MODELS = Path(os.environ.get("QUERYLIFT_TEST_MODELS_DIR", REPO / "models"))
needs_embedded_models = pytest.mark.skipif(
    not (is_ready(MODELS, MINILM_DIR) and is_ready(MODELS, MPNET_DIR)),
    reason=f"embedded models not unpacked in {MODELS}/ (run `querylift setup --no-demo`)",
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QWEN_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"
KEYS = {"acme": "key-acme-123", "globex": "key-globex-456", "initech": "key-initech-789"}
ADMIN = "admin-secret"  # the admin API's token where a test turns it on (`admin_settings`)

DOCS = [
    Document("d1", "malaria is caused by a parasite the mosquito carries", {"topic": "malaria"}),
    Document("d2", "the mosquito is the vector of malaria in children", {"topic": "malaria"}),
    Document("d3", "cancer cells increase the risk of disease", {"topic": "cancer"}),
    Document("d4", "vitamin effects on the immune response to infection", {"topic": "immune"}),
    Document("d5", "the heart and blood of mice in the study", {"topic": "heart"}),
    Document("d6", "drug treatment results for patients with brain disease", {"topic": "brain"}),
]
GLOBEX_DOCS = [
    Document("g1", "globex secret malaria mosquito plan", {"topic": "malaria"}),
    Document("g2", "globex secret cancer plan", {"topic": "cancer"}),
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


# -- adapters ----------------------------------------------------------------------------------
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


def fake_encoder(name: str, dim: int) -> SimpleNamespace:
    """Stands in for an encoder when building a checkpoint: only the name and dim are read."""
    return SimpleNamespace(name=name, dim=dim)


def hybrid_manifest(qe: Encoder, de: Encoder, qdim: int | None = None, **kw: Any) -> Manifest:
    qd = qe.dim if qdim is None else qdim
    dd = de.dim
    return Manifest(
        kind=AdapterKind.HYBRID,
        in_dim=qd + dd,
        out_dim=dd,
        params={"query_dim": qd, "document_dim": dd},
        query_model=ModelInfo(name=qe.name, dim=qd),
        document_model=ModelInfo(name=de.name, dim=dd),
        **kw,
    )


def make_hybrid(qe: Encoder, de: Encoder, seed: int | None) -> tuple[bytes, bytes]:
    """A hybrid adapter checkpoint. seed None: the identity-on-the-document-part start; else
    random tensors."""
    m = hybrid_manifest(qe, de, name=f"hybrid-{seed}")
    if seed is None:
        tensors = init_tensors(m.kind, m.in_dim, m.out_dim, m.params)
    else:
        rng = np.random.default_rng(seed)
        tensors = {
            "weight": (rng.standard_normal((m.out_dim, m.in_dim)) / np.sqrt(m.in_dim)),
            "bias": rng.standard_normal(m.out_dim) * 0.01,
        }
    return serialize(m, {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()})


def bind_random_adapters(
    store: AdapterStore, query_encoder: Encoder, document_encoder: Encoder
) -> dict[str, str]:
    """acme and globex each get their own random linear adapter (seeds 0, 1); initech none."""
    ids = {}
    for seed, tenant in enumerate(("acme", "globex")):
        adapter = store.put(*make_linear(query_encoder, document_encoder, seed))
        store.activate(tenant, adapter.id)
        ids[tenant] = adapter.id
    return ids


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "adapters")


@pytest.fixture
def adapters_bound(
    store: AdapterStore, query_encoder: Encoder, document_encoder: Encoder
) -> dict[str, str]:
    """acme and globex each get their own random adapter; initech none."""
    return bind_random_adapters(store, query_encoder, document_encoder)


# -- tenants and the collection ------------------------------------------------------------------
def write_tenants(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A tenants file of `rows`; a row without `api_keys_sha256` gets its KEYS key's digest."""
    for row in rows:
        if "api_keys_sha256" not in row:
            row["api_keys_sha256"] = [hash_key(KEYS[row["name"]])]
    path.write_text(json.dumps({"tenants": rows}))
    return path


def docs_tenants() -> list[dict[str, Any]]:
    """The KEYS tenants, all on collection `docs`."""
    return [{"name": n, "collection": "docs"} for n in KEYS]


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    """acme and globex share collection `docs`; initech has no adapter."""
    return write_tenants(tmp_path / "tenants.json", docs_tenants())


def index_docs(
    gateway: QdrantGateway,
    encoder: Encoder,
    tenant: str,
    docs: list[Document],
    collection: str = "docs",
    dim: int | None = None,
) -> None:
    """Index `docs` for `tenant` (payload field `tenant`); `dim`: at that Matryoshka prefix."""
    from querylift.indexing import index_documents

    index_documents(
        gateway,
        encoder,
        docs,
        collection=collection,
        tenant_field="tenant",
        tenant_value=tenant,
        progress=False,
        dim=dim,
    )


# -- the vector engines: the conformance suite runs every gateway test on each ---------------
TEST_QDRANT_URL = os.environ.get("QUERYLIFT_TEST_QDRANT_URL")
# the server where one is reachable, else qdrant-client's local mode as its stand-in
ENGINES = ["edge", "server" if TEST_QDRANT_URL else "local-mode"]


def open_engine(kind: str = "edge", folder: Path | None = None) -> QdrantGateway:
    """An empty engine of `kind`: "edge" (the embedded default, a temporary folder unless
    `folder`), "local-mode" (in memory, or the local-mode `folder`) or "server" (the one at
    QUERYLIFT_TEST_QDRANT_URL; `close_engine` drops what the test created)."""
    from service.search.client_backend import ClientBackend

    if kind == "edge":
        return QdrantGateway(path=str(folder) if folder else ":memory:")
    if kind == "local-mode":
        return QdrantGateway(
            backend=ClientBackend.local_mode(str(folder) if folder else ":memory:")
        )
    assert kind == "server" and TEST_QDRANT_URL, kind
    gw = QdrantGateway(url=TEST_QDRANT_URL)
    client = gw.backend.client  # type: ignore[attr-defined]
    gw.preexisting = {c.name for c in client.get_collections().collections}  # type: ignore[attr-defined]
    return gw


def close_engine(gw: QdrantGateway) -> None:
    if gw.kind == "server":
        client = gw.backend.client  # type: ignore[attr-defined]
        for c in client.get_collections().collections:
            if c.name not in getattr(gw, "preexisting", set()):
                client.delete_collection(c.name)
    gw.close()


@pytest.fixture
def engine() -> str:
    """The engine gateway tests run on: the embedded default here; tests/service/search and
    the search-parameter tests run on every one of ENGINES (their conftest / module)."""
    return "edge"


def shared_collection(
    document_encoder: Encoder, globex_docs: list[Document] = GLOBEX_DOCS, engine: str = "edge"
) -> QdrantGateway:
    """An engine whose collection `docs` holds acme's DOCS and `globex_docs`."""
    gw = open_engine(engine)
    index_docs(gw, document_encoder, "acme", DOCS)
    index_docs(gw, document_encoder, "globex", globex_docs)
    return gw


@pytest.fixture
def gateway(document_encoder: Encoder, engine: str) -> Iterator[QdrantGateway]:
    gw = shared_collection(document_encoder, engine=engine)
    yield gw
    close_engine(gw)


# -- the app -------------------------------------------------------------------------------------
def tiny_settings(root: Path, tenants_file: Path, adapter_store: Path, **more: Any) -> Settings:
    """The service's settings in these tests: collection `docs`, small input limits."""
    return Settings(
        tenants_file=tenants_file,
        adapter_store=adapter_store,
        collection="docs",
        qdrant_path=root / "unused-qdrant",
        max_inputs=8,
        max_input_chars=2000,
        **more,
    )


@pytest.fixture
def settings(tmp_path: Path, tenants_file: Path, store: AdapterStore) -> Settings:
    return tiny_settings(tmp_path, tenants_file, store.root)


@pytest.fixture
def make_app(
    settings: Settings,
    query_encoder: Encoder,
    document_encoder: Encoder,
    gateway: QdrantGateway,
) -> Callable[..., FastAPI]:
    """Apps on the tiny encoders and the in-memory `gateway`: `make_app()` with `settings`,
    `make_app(other_settings)`, `make_app(max_queue=1)` with overrides (not started)."""

    def make(s: Settings | None = None, /, **update: object) -> FastAPI:
        base = settings if s is None else s
        return create_app(
            base.model_copy(update=update) if update else base,
            query_encoder=query_encoder,
            document_encoder=document_encoder,
            gateway=gateway,
        )

    return make


@pytest.fixture
def client(
    make_app: Callable[..., FastAPI], adapters_bound: dict[str, str]
) -> Iterator[TestClient]:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def make_client(
    make_app: Callable[..., FastAPI], adapters_bound: dict[str, str]
) -> Iterator[Callable[..., TestClient]]:
    """Apps with settings overrides (`make_client(max_queue=1)`), closed at the end."""
    stack: list[TestClient] = []

    def make(**update: object) -> TestClient:
        c = TestClient(make_app(**update), raise_server_exceptions=False)
        c.__enter__()
        stack.append(c)
        return c

    yield make
    for c in reversed(stack):
        c.__exit__(None, None, None)


def long_text(words: int) -> str:
    """A text of `words` tokens for the tiny models (past their limits from 64 on)."""
    return " ".join(["malaria"] * words)


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


# -- the admin API -------------------------------------------------------------------------------
def admin_headers(actor: str | None = None) -> dict[str, str]:
    """The admin token (ADMIN), and `actor` as X-Querylift-Actor where given."""
    h = {"Authorization": f"Bearer {ADMIN}"}
    if actor is not None:
        h["X-Querylift-Actor"] = actor
    return h


@pytest.fixture
def admin_settings(settings: Settings, tmp_path: Path) -> Settings:
    """`settings` with the admin API on (token ADMIN) and an audit log."""
    return settings.model_copy(
        update={"admin_token": SecretStr(ADMIN), "audit_log": tmp_path / "audit.log"}
    )


@pytest.fixture
def start_admin(
    make_app: Callable[..., FastAPI], admin_settings: Settings, tmp_path: Path
) -> Iterator[Callable[..., TestClient]]:
    """`start(tenant rows=None, **settings)`: a started app with the admin API on, its tenants
    file of `rows` (default: the KEYS tenants on collection `docs`); closed at the end."""
    opened: list[TestClient] = []

    def make(rows: list[dict[str, Any]] | None = None, **update: object) -> TestClient:
        path = write_tenants(tmp_path / f"tenants-{len(opened)}.json", rows or docs_tenants())
        c = TestClient(
            make_app(admin_settings, tenants_file=path, **update), raise_server_exceptions=False
        )
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in reversed(opened):
        c.__exit__(None, None, None)


@pytest.fixture
def audit_lines(admin_settings: Settings) -> Callable[[], list[dict]]:
    """The audit log's records so far."""

    def read() -> list[dict]:
        path = admin_settings.audit_log
        assert path is not None
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    return read


# -- answers: the error shape, vectors, metrics --------------------------------------------------
def assert_error(resp: Any, status: int, code: str, *, request_id: bool = False) -> dict[str, Any]:
    """The one error shape with this status and code; returns `error`. `request_id`: the answer
    also carries an X-Request-ID."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if request_id:
        assert resp.headers["x-request-id"]
    return body["error"]


def embeddings(body: dict[str, Any]) -> np.ndarray:
    """The vectors of an /embed or /v1/embeddings answer, one row per input."""
    return np.asarray([d["embedding"] for d in body["data"]], dtype=np.float32)


def sample(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the app's metrics registry (0 when absent)."""
    value = client.app.state.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{want}}}" if labels else name) + r" (\S+)"
    m = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


# -- the environment of `querylift` commands -----------------------------------------------------
def encoder_env(query_spec: EncoderSpec, doc_spec: EncoderSpec) -> dict[str, str]:
    """QUERYLIFT_* settings that make the encoders these specs (the tiny models)."""
    return {
        "QUERYLIFT_QUERY_ENCODER__NAME": query_spec.name,
        "QUERYLIFT_QUERY_ENCODER__PATH": query_spec.path,
        "QUERYLIFT_QUERY_ENCODER__POOLING": query_spec.pooling.value,
        "QUERYLIFT_QUERY_ENCODER__QUERY_TEMPLATE": query_spec.query_template,
        "QUERYLIFT_QUERY_ENCODER__DEFAULT_INSTRUCTION": query_spec.default_instruction,
        "QUERYLIFT_QUERY_ENCODER__MAX_TOKENS": str(query_spec.max_tokens),
        "QUERYLIFT_DOCUMENT_ENCODER__NAME": doc_spec.name,
        "QUERYLIFT_DOCUMENT_ENCODER__PATH": doc_spec.path,
        "QUERYLIFT_DOCUMENT_ENCODER__MAX_TOKENS": str(doc_spec.max_tokens),
    }


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
            **encoder_env(query_spec, doc_spec),
            **env,
        }
    )
    return out


def querylift_settings(**settings: object) -> dict[str, str]:
    """`qdrant_path=p, log_level="info"` -> {"QUERYLIFT_QDRANT_PATH": str(p), ...}."""
    return {f"QUERYLIFT_{k.upper()}": str(v) for k, v in settings.items()}


@pytest.fixture
def cli_env(
    tmp_path: Path,
    query_spec: EncoderSpec,
    doc_spec: EncoderSpec,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., None]:
    """For `querylift` commands run in this process (doctor, index, eval, ...): no inherited
    QUERYLIFT_* setting, the tiny models as the encoders, `tmp_path` as the working folder (no
    stray .env). Call it to set more: `cli_env(qdrant_path=p)` sets QUERYLIFT_QDRANT_PATH."""
    for key in list(os.environ):
        if key.upper().startswith("QUERYLIFT_"):
            monkeypatch.delenv(key)
    for key, value in encoder_env(query_spec, doc_spec).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    def more(**settings: object) -> None:
        for key, value in querylift_settings(**settings).items():
            monkeypatch.setenv(key, value)

    return more
