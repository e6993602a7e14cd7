"""The label-free quality gate through the admin API (issue 18).

The tiny models are random and unrelated, so with them as they are the document model agrees
with the teacher no better than chance (about 0.24 nDCG@10, no better than a random adapter)
and no refusal could mean anything. A real big model mostly agrees with the small one and
knows more; so here the query encoder (the teacher) is built that way: `TinyMix` embeds a text
as the document model's vector joined with the tiny Qwen3's (weighted 0.7), its ranking the
small model's view plus features the small one lacks. The document model alone then agrees
about 0.54; what the extra features add is learnable for the words an adapter was distilled on,
not for others.

The data: two corpora over disjoint halves of the tiny vocabulary, tenant initech's (indexed in
collection `docs`, scoped by the tenant field like acme's and globex's) and another one.
Distilled with `training.distill.distill_adapter`, the tenant's own adapter agrees about 0.80 on
queries it never saw; one distilled on the other corpus about 0.44 (below the document model:
its extra weights are noise for these words); random maps about 0.15. The gate must accept the
first and refuse the others.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from encoders import Encoder, EncodeResult, EncoderSpec, InputKind, Tokenized
from encoders.base import EncoderBase, Instruction
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import (
    admin_headers,
    assert_error,
    auth,
    docs_tenants,
    index_docs,
    make_hybrid,
    make_linear,
)
from tests.tiny_models import WORDS
from training.data import Document
from training.distill import DistillOutcome, distill_adapter

TENANT = "initech"  # no adapter bound: serves the document encoder's own vectors
_VOCAB = [w for w in WORDS if len(w) > 2]
OWN_WORDS, OTHER_WORDS = _VOCAB[: len(_VOCAB) // 2], _VOCAB[len(_VOCAB) // 2 :]


def corpus(vocab: list[str], tag: str, seed: int) -> tuple[list[Document], list[str]]:
    """60 word-bag documents and up to 200 distinct 4-word queries, each from one document."""
    rng = random.Random(seed)
    docs = [Document(f"{tag}{i}", " ".join(rng.sample(vocab, 10))) for i in range(60)]
    queries = [" ".join(rng.sample(rng.choice(docs).text.split(), 4)) for _ in range(200)]
    return docs, list(dict.fromkeys(queries))


DOCS, QUERIES = corpus(OWN_WORDS, "i", 1)
OTHER_DOCS, OTHER_QUERIES = corpus(OTHER_WORDS, "o", 2)
TRAIN, HELD_OUT = QUERIES[:140], QUERIES[140:]


class TinyMix(EncoderBase):
    """The teacher: [document model's vector; 0.7 x tiny Qwen3's], unit length, for queries
    and documents alike (no prompt)."""

    WEIGHT = 0.7

    def __init__(self, small: Encoder, extra: Encoder) -> None:
        self.small, self.extra = small, extra
        self.spec = EncoderSpec(name="tiny-mix", path="tiny-mix", max_tokens=small.max_tokens)
        self._dim = small.dim + extra.dim
        self._max_tokens = small.max_tokens

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> Tokenized:
        formatted = self.format(texts, kind, instruction)
        return Tokenized(formatted, self.small.count_tokens(formatted, "document"), None)

    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        if not truncate:
            self.check_length(tokens)
        a = self.small.encode(tokens.texts, "document", truncate=True).vectors
        b = self.extra.encode(tokens.texts, "document", truncate=True).vectors
        v = np.concatenate([a, self.WEIGHT * b], axis=1)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        counts = [min(c, self._max_tokens) for c in tokens.counts]
        return EncodeResult(v.astype(np.float32), counts)


@pytest.fixture(scope="module")
def query_encoder(query_encoder: Encoder, document_encoder: Encoder) -> Encoder:
    """This module's query encoder (the apps' and distillation's): the teacher above."""
    return TinyMix(document_encoder, query_encoder)


@pytest.fixture(scope="module")
def own(query_encoder: Encoder, document_encoder: Encoder) -> DistillOutcome:
    """Distilled on the tenant's own corpus and training queries (never the held-out ones)."""
    return distill_adapter(query_encoder, document_encoder, DOCS, TRAIN, seed=0, pull=0.02)


@pytest.fixture(scope="module")
def other(query_encoder: Encoder, document_encoder: Encoder) -> DistillOutcome:
    return distill_adapter(
        query_encoder, document_encoder, OTHER_DOCS, OTHER_QUERIES, seed=0, pull=0.02
    )


@pytest.fixture
def start(
    start_admin: Callable[..., TestClient], gateway: QdrantGateway, document_encoder: Encoder
) -> Callable[..., TestClient]:
    """`start(tenant rows=None, **settings)`: a started app with the admin API on, initech's
    corpus indexed."""
    index_docs(gateway, document_encoder, TENANT, DOCS)

    def make(rows: list[dict[str, Any]] | None = None, **update: object) -> TestClient:
        return start_admin(rows, **{"gate_resamples": 1000, **update})

    return make


def upload(client: TestClient, ckpt: tuple[bytes, bytes]) -> str:
    tensors, manifest = ckpt
    files = {
        "adapter.safetensors": ("adapter.safetensors", tensors, "application/octet-stream"),
        "manifest.json": ("manifest.json", manifest, "application/json"),
    }
    r = client.post("/admin/adapters", files=files, headers=admin_headers())
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def activate(client: TestClient, adapter_id: str | None, **body: object):
    return client.put(
        f"/admin/tenants/{TENANT}/adapter",
        json={"adapter_id": adapter_id, **body},
        headers=admin_headers("alice"),
    )


def served(client: TestClient) -> str | None:
    r = client.post("/embed", json={"input": ["malaria"]}, headers=auth(TENANT))
    assert r.status_code == 200, r.text
    adapter = r.json()["adapter"]
    return adapter["id"] if adapter else None


def put_queries(client: TestClient, queries: list[str]) -> dict[str, Any]:
    r = client.put(f"/admin/tenants/{TENANT}/queries", json=queries, headers=admin_headers())
    assert r.status_code == 200, r.text
    return r.json()


def refused(resp) -> dict[str, Any]:
    """The quality gate's 422 in the one error shape; returns its details."""
    details = assert_error(resp, 422, "quality_gate_failed")["details"]
    assert details["gate"]["decision"] == "refuse" and details["reasons"]
    assert all("agreement with the query encoder" in r for r in details["reasons"])
    return details


def audit(admin_settings: Settings) -> list[dict[str, Any]]:
    assert admin_settings.audit_log is not None
    return [json.loads(x) for x in admin_settings.audit_log.read_text().splitlines()]


# -- the decision ------------------------------------------------------------------------------
def test_the_own_distilled_adapter_is_accepted_and_the_others_refused(
    start, own: DistillOutcome, other: DistillOutcome, query_encoder, document_encoder
):
    client = start()
    put_queries(client, HELD_OUT)
    candidates = {
        "random linear": make_linear(query_encoder, document_encoder, 11),
        "random hybrid": make_hybrid(query_encoder, document_encoder, 3),
        "distilled on another corpus": other.checkpoint,
    }
    for n, (what, ckpt) in enumerate(candidates.items()):
        details = refused(activate(client, upload(client, ckpt)))
        lf, gate = details["label_free"], details["gate"]
        # the teacher's candidate vectors are embedded once, then kept for the next runs
        assert (lf["teacher_cached"] == lf["teacher_rows"]) == (n > 0), (what, lf)
        assert lf["source"] == "query_set" and lf["queries_scored"] == len(HELD_OUT), what
        assert lf["candidate_agreement"] == gate["candidate_ndcg"], what
        assert lf["candidate_agreement"] < lf["baseline_agreement"] - 0.05, (what, lf)
        assert gate["vs_baseline"]["regression"] and gate["vs_baseline"]["ci_high"] < 0, what
        assert f"{lf['candidate_agreement']:.4f}" in details["reasons"][0], what
        assert served(client) is None, what  # nothing changed

    own_id = upload(client, own.checkpoint)
    r = activate(client, own_id)
    assert r.status_code == 200, r.text
    body = r.json()
    lf = body["label_free"]
    assert body["gate"]["decision"] == "accept" and body["forced"] is False
    assert lf["candidate_agreement"] > lf["baseline_agreement"] + 0.15, lf
    assert lf["current_agreement"] is None  # the tenant served the document model alone
    assert lf["teacher"] == query_encoder.name and lf["mean_candidates"] == len(DOCS)
    assert served(client) == own_id

    # now the current adapter is a reference too: the other corpus's is refused against both
    details = refused(activate(client, upload(client, other.checkpoint)))
    assert details["label_free"]["current_agreement"] == pytest.approx(lf["candidate_agreement"])
    assert details["gate"]["vs_current"]["regression"]
    assert served(client) == own_id

    record = client.get(f"/admin/tenants/{TENANT}", headers=admin_headers()).json()["gate"]
    assert record["adapter_id"] == own_id and record["label_free"]["source"] == "query_set"


def test_the_held_out_share_of_the_query_log_gates_an_adapter_distilled_on_the_rest(
    start, query_encoder: Encoder, document_encoder: Encoder
):
    """The whole loop: traffic -> query log -> `?split=train` export -> distil -> activate,
    gated on the held-out texts the export left out."""
    client = start(
        [*docs_tenants()[:2], {"name": TENANT, "collection": "docs", "query_log": True}],
        gate_holdout_fraction=0.3,
        gate_label_free_min_log_queries=10,
    )
    for i in range(0, len(QUERIES), 8):  # max_inputs is 8 in the conftest settings
        r = client.post("/embed", json={"input": QUERIES[i : i + 8]}, headers=auth(TENANT))
        assert r.status_code == 200, r.text

    def export(split: str) -> list[str]:
        r = client.get(
            f"/admin/tenants/{TENANT}/query-log", params={"split": split}, headers=admin_headers()
        )
        assert r.status_code == 200, r.text
        return [json.loads(x)["text"] for x in r.text.splitlines()]

    train, held = export("train"), export("holdout")
    assert sorted(train + held) == sorted(QUERIES) and not set(train) & set(held)
    outcome = distill_adapter(query_encoder, document_encoder, DOCS, train, seed=0, pull=0.02)

    details = refused(
        activate(client, upload(client, make_linear(query_encoder, document_encoder, 5)))
    )
    assert details["label_free"]["source"] == "query_log"
    assert details["label_free"]["queries_available"] == len(held)

    r = activate(client, upload(client, outcome.checkpoint))
    assert r.status_code == 200, r.text
    lf = r.json()["label_free"]
    assert lf["source"] == "query_log" and lf["queries_used"] == len(held)
    assert lf["candidate_agreement"] > lf["baseline_agreement"], lf


# -- precedence, force, nothing to gate on ------------------------------------------------------
def test_a_validation_set_keeps_precedence(start, query_encoder, document_encoder):
    client = start()
    put_queries(client, HELD_OUT)
    pairs = [{"query": d.text, "positive_ids": [d.id]} for d in DOCS]
    r = client.put(f"/admin/tenants/{TENANT}/validation", json=pairs, headers=admin_headers())
    assert r.status_code == 200, r.text
    sha = r.json()["validation"]["sha256"]
    r = activate(client, upload(client, make_hybrid(query_encoder, document_encoder, None)))
    assert r.status_code == 200, r.text  # the identity hybrid: exactly the document model
    assert r.json()["gate"]["validation_sha256"] == sha
    assert "label_free" not in r.json() and r.json()["gate"]["decision"] == "accept"
    record = client.get(f"/admin/tenants/{TENANT}", headers=admin_headers()).json()["gate"]
    assert record["label_free"] is None


def test_force_activates_past_a_refusal_and_says_so(
    start, admin_settings, query_encoder, document_encoder
):
    client = start()
    put_queries(client, HELD_OUT)
    bad = upload(client, make_linear(query_encoder, document_encoder, 11))
    r = activate(client, bad, force=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["forced"] is True and body["gate"]["decision"] == "refuse"
    assert body["label_free"]["candidate_agreement"] < body["label_free"]["baseline_agreement"]
    assert served(client) == bad
    line = [e for e in audit(admin_settings) if e["action"] == "activate"][-1]
    assert line["outcome"] == "ok" and line["force"] is True
    assert line["label_free"]["candidate_agreement"] == body["label_free"]["candidate_agreement"]


def test_no_unlabelled_queries_no_gate(start, query_encoder, document_encoder):
    # the log is on, but holds too few held-out texts; no query set, no validation set
    client = start(
        [*docs_tenants()[:2], {"name": TENANT, "collection": "docs", "query_log": True}],
    )
    r = client.post("/embed", json={"input": HELD_OUT[:8]}, headers=auth(TENANT))
    assert r.status_code == 200
    bad = upload(client, make_linear(query_encoder, document_encoder, 11))
    r = activate(client, bad)
    assert r.status_code == 200, r.text
    assert "gate" not in r.json() and served(client) == bad


def test_the_work_is_capped_and_timed(start, other: DistillOutcome):
    client = start(gate_label_free_queries=12, gate_label_free_candidates=20)
    put_queries(client, HELD_OUT)
    details = refused(activate(client, upload(client, other.checkpoint)))
    lf = details["label_free"]
    assert lf["queries_available"] == len(HELD_OUT) and lf["queries_used"] == 12
    assert lf["candidates_per_query"] == 20 and lf["mean_candidates"] == 20
    assert lf["teacher_rows"] <= 12 * (1 + 20)
    assert details["gate"]["n_queries"] == 12
    seconds = lf["seconds"]
    assert set(seconds) == {"embed", "search", "teacher", "score", "total"}
    assert 0 < seconds["total"] >= max(v for k, v in seconds.items() if k != "total")


def test_a_restarted_service_embeds_no_candidate_twice(
    start, other: DistillOutcome, admin_settings: Settings
):
    """The teacher's document vectors outlive the process: the next service on the same store
    (a restart, another replica) finds them on disk, and the decision is the same."""
    first = start()
    put_queries(first, HELD_OUT)
    adapter = upload(first, other.checkpoint)
    before = refused(activate(first, adapter))
    lf = before["label_free"]
    # a fresh store: only the query vectors were cached (served moments before), no document
    assert lf["teacher_cached"] == lf["queries_scored"] < lf["teacher_rows"]
    first.__exit__(None, None, None)
    folder = Path(admin_settings.adapter_store) / "teacher-cache"
    assert list(folder.rglob("*.safetensors"))

    again = refused(activate(start(), adapter))  # the query set and the adapter are stored
    lf2 = again["label_free"]
    assert lf2["teacher_rows"] == lf["teacher_rows"]
    assert lf2["teacher_cached"] == lf2["teacher_rows"]  # every document came from the disk
    assert lf2["candidate_agreement"] == pytest.approx(lf["candidate_agreement"], abs=1e-6)
    assert lf2["baseline_agreement"] == pytest.approx(lf["baseline_agreement"], abs=1e-6)


def test_the_gate_cannot_run_without_a_collection(start, query_encoder, document_encoder):
    client = start(
        [*docs_tenants(), {"name": "nocoll", "api_keys_sha256": [], "collection": "missing"}]
    )
    r = client.put("/admin/tenants/nocoll/queries", json=HELD_OUT[:5], headers=admin_headers())
    assert r.status_code == 200, r.text
    adapter = upload(client, make_linear(query_encoder, document_encoder, 11))
    r = client.put(
        "/admin/tenants/nocoll/adapter", json={"adapter_id": adapter}, headers=admin_headers()
    )
    assert_error(r, 409, "gate_unavailable")


# -- query sets --------------------------------------------------------------------------------
def test_query_set_upload_get_delete(start, admin_settings: Settings):
    client = start(gate_max_queries=10)
    got = put_queries(client, ["malaria", "heart", "malaria"])
    assert got["queries"]["n_queries"] == 2 and got["duplicates_dropped"] == 1
    export_lines = "".join(
        json.dumps({"text": t, "endpoint": "/search", "ts": 1.0}) + "\n" for t in ("a b", "c d")
    )
    r = client.put(
        f"/admin/tenants/{TENANT}/queries", content=export_lines.encode(), headers=admin_headers()
    )
    assert r.status_code == 200 and r.json()["queries"]["n_queries"] == 2
    r = client.get(f"/admin/tenants/{TENANT}/queries", headers=admin_headers())
    assert r.json()["texts"] == ["a b", "c d"] and r.json()["queries"]["actor"] == "admin"
    info = client.get(f"/admin/tenants/{TENANT}", headers=admin_headers()).json()
    assert info["queries"]["n_queries"] == 2

    for body, status, code in (
        (b"[1, 2]", 422, "invalid_query_set"),
        (b'["ok", ""]', 422, "invalid_query_set"),
        (b'{"text": "a"}\n{"txt": "b"}\n', 422, "invalid_query_set"),
        (b"[not json", 422, "invalid_query_set"),
        (b"[]", 422, "invalid_query_set"),
        (json.dumps([f"q{i}" for i in range(11)]).encode(), 413, "too_many_queries"),
        (json.dumps(["x" * 2001]).encode(), 422, "invalid_query_set"),
    ):
        r = client.put(f"/admin/tenants/{TENANT}/queries", content=body, headers=admin_headers())
        assert_error(r, status, code)
    assert_error(
        client.put(f"/admin/tenants/{TENANT}/queries", json=["a"], headers=auth(TENANT)),
        401,
        "unauthorized",
    )
    assert (
        client.delete(f"/admin/tenants/{TENANT}/queries", headers=admin_headers()).status_code
        == 204
    )
    assert_error(
        client.get(f"/admin/tenants/{TENANT}/queries", headers=admin_headers()),
        404,
        "query_set_not_found",
    )
    assert_error(
        client.delete(f"/admin/tenants/{TENANT}/queries", headers=admin_headers()),
        404,
        "query_set_not_found",
    )
    actions = [(e["action"], e["outcome"]) for e in audit(admin_settings)]
    assert actions == [
        ("set_queries", "ok"),
        ("set_queries", "ok"),
        *[("set_queries", "refused")] * 7,
        ("delete_queries", "ok"),
        ("delete_queries", "refused"),
    ]
