"""One rule in one place, offline and online (issue 17).

Fit (adapters/compat.py): a checkpoint that does not fit the configured encoders must be
refused by `querylift eval` (plain and --gate) and by activation through the admin API, with
the same reason: a checkpoint that passes the offline evaluation and is then refused at
activation is the bug this guards. Pairs (adapters/pairs.py): a bad line of a pairs file is
refused by `load_pairs` and by a validation-set upload with the same reason and line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from encoders import Encoder
from querylift.cli import app as cli
from service.ops.settings import Settings
from tests.conftest import DOCS, admin_headers, fake_encoder, make_hybrid, make_linear
from training.data import DataError, load_pairs

WRONG = 16  # a document-model width the tiny document encoder (32-d) does not have

Build = Callable[[Encoder, Encoder], tuple[bytes, bytes]]


# (case, checkpoint builder, the reason both sides must give, formatted with the served dim)
CASES: list[tuple[str, Build, str]] = [
    (
        "linear with the wrong out_dim",
        lambda q, d: make_linear(q, fake_encoder(d.name, WRONG), 40),
        "out_dim {wrong} != document encoder dim {served}",
    ),
    (
        "hybrid with the wrong params.document_dim",
        lambda q, d: make_hybrid(q, fake_encoder(d.name, WRONG), 41),
        "params.document_dim {wrong} != document encoder dim {served}",
    ),
]


@pytest.fixture
def admin_client(
    admin_settings: Settings, make_app: Callable[..., FastAPI]
) -> Iterator[TestClient]:
    with TestClient(make_app(admin_settings), raise_server_exceptions=False) as c:
        yield c


def _activation_reasons(client: TestClient, ckpt: tuple[bytes, bytes]) -> list[str]:
    tensors, manifest = ckpt
    files = {
        "adapter.safetensors": ("adapter.safetensors", tensors, "application/octet-stream"),
        "manifest.json": ("manifest.json", manifest, "application/json"),
    }
    auth = admin_headers()
    up = client.post("/admin/adapters", files=files, headers=auth)
    assert up.status_code == 201, up.text  # a consistent checkpoint: refused only on fit
    r = client.put(
        "/admin/tenants/acme/adapter", json={"adapter_id": up.json()["id"]}, headers=auth
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "adapter_incompatible", error
    return error["details"]["reasons"]


def _eval_output(tmp_path: Path, ckpt: tuple[bytes, bytes], gate: bool) -> str:
    """`querylift eval` of `ckpt` (run with `cli_env`: the tiny models' settings)."""
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(ckpt[0])
    (folder / "manifest.json").write_bytes(ckpt[1])
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in DOCS))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"query": " ".join(d.text.split()[:3]), "positive_ids": [d.id]}) + "\n"
            for d in DOCS
        )
    )
    args = ["eval", str(pairs), "--corpus", str(corpus), "--cache", str(tmp_path / "cache")]
    args += ["--checkpoint", str(folder), *(["--gate"] if gate else ["--split", "all"])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    return result.output


@pytest.mark.parametrize("gate", [False, True], ids=["eval", "eval --gate"])
@pytest.mark.parametrize(("case", "build", "reason"), CASES, ids=[c[0] for c in CASES])
def test_eval_and_activation_refuse_with_the_same_reason(
    admin_client: TestClient,
    tmp_path: Path,
    cli_env: Callable[..., None],
    query_encoder: Encoder,
    document_encoder: Encoder,
    case: str,
    build: Build,
    reason: str,
    gate: bool,
):
    assert document_encoder.dim != WRONG
    expected = reason.format(wrong=WRONG, served=document_encoder.dim)
    ckpt = build(query_encoder, document_encoder)
    reasons = _activation_reasons(admin_client, ckpt)
    assert expected in reasons, reasons

    output = _eval_output(tmp_path, ckpt, gate)
    assert expected in output, output
    # every reason eval gives is one activation gives (which also checks the collection)
    offline = output.split("does not fit: ", 1)[1].strip().split("; ")
    assert set(offline) <= set(reasons), (offline, reasons)


OK = {"query": "malaria", "positive_ids": ["d1"]}
# (case, records after one good line, the reason both sides give for line 2)
BAD_PAIRS: list[tuple[str, dict, str]] = [
    ("blank query", {"query": " ", "positive_ids": ["d1"]}, "missing or empty `query`"),
    (
        "no positives",
        {"query": "x"},
        "`positive_ids` must be a non-empty list of document ids",
    ),
    (
        "a boolean id",
        {"query": "x", "positive_ids": [True]},
        "`positive_ids` holds True, not a document id",
    ),
    (  # the service used to ignore negatives whatever their shape
        "negatives not a list",
        {"query": "x", "positive_ids": ["d1"], "negative_ids": "d2"},
        "`negative_ids` must be a list of document ids",
    ),
    (
        "positive and negative",
        {"query": "x", "positive_ids": ["d1"], "negative_ids": ["d1"]},
        "document id 'd1' is both positive and negative",
    ),
    ("repeated id", {**OK, "id": "q1"}, "duplicate query id 'q1'"),
]


@pytest.mark.parametrize(("case", "record", "reason"), BAD_PAIRS, ids=[c[0] for c in BAD_PAIRS])
def test_training_and_the_service_refuse_a_bad_pairs_line_alike(
    admin_client: TestClient, tmp_path: Path, case: str, record: dict, reason: str
):
    body = (json.dumps(OK) + "\n" + json.dumps(record) + "\n").encode()
    r = admin_client.put(
        "/admin/tenants/acme/validation",
        content=body,
        headers=admin_headers(),
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_validation_set", error
    assert error["message"] == f"line 2: {reason}" and error["details"]["line"] == 2, error

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in DOCS))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(body)
    with pytest.raises(DataError) as e:
        load_pairs(pairs, corpus)
    assert str(e.value) == f"{pairs}:2: {reason}"
