"""`querylift train` -> checkpoint -> the service, end to end on a synthetic BEIR dataset.

The service must accept the checkpoint unchanged, and its /embed query vectors for the test
queries, searched against the same document vectors, must reproduce the eval's nDCG@10.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from adapters.folder import FolderStore
from querylift.cli import app as cli
from service.app import create_app
from service.ops.settings import Settings
from service.search.qdrant_gateway import QdrantGateway
from tests.conftest import encoder_env
from tests.tiny_models import WORDS
from training.cache import EmbeddingCache
from training.data import load_beir
from training.evaluate import evaluate_vectors


def write_synthetic_beir(root: Path, n_docs: int = 80, seed: int = 0) -> Path:
    """Documents are random word bags; each query is a few words of its one relevant doc."""
    rng = random.Random(seed)
    words = [w for w in WORDS if len(w) > 2]
    (root / "qrels").mkdir(parents=True)
    docs = {f"d{i}": " ".join(rng.sample(words, 12)) for i in range(n_docs)}
    with open(root / "corpus.jsonl", "w") as f:
        for i, t in docs.items():
            f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    with open(root / "queries.jsonl", "w") as qf:
        rows = {"train": [], "test": []}
        for n, (doc_id, text) in enumerate(docs.items()):
            q = " ".join(rng.sample(text.split(), 4))
            qf.write(json.dumps({"_id": f"q{n}", "text": q}) + "\n")
            rows["test" if n % 4 == 0 else "train"].append(f"q{n}\t{doc_id}\t1\n")
    for split, lines in rows.items():
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(lines)
        )
    return root


@pytest.mark.parametrize(("kind", "mode"), [("linear", "both"), ("hybrid", "label_only")])
def test_trained_checkpoint_serves_and_reproduces_eval(
    tmp_path, monkeypatch, query_spec, doc_spec, query_encoder, document_encoder, kind, mode
):
    data = write_synthetic_beir(tmp_path / "beir")
    for key, value in encoder_env(query_spec, doc_spec).items():
        monkeypatch.setenv(key, value)
    out, cache_dir = tmp_path / "run", tmp_path / "cache"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(data),
            "--out",
            str(out),
            "--mode",
            mode,
            "--kind",
            kind,
            "--epochs",
            "15",
            "--lr",
            "0.01",
            "--cache",
            str(cache_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert {"report.json", "report.md", "report.png", "checkpoint"} <= {
        p.name for p in out.iterdir()
    }
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    eval_ndcg = manifest["evaluation"]["metrics"]["ndcg@10"]

    # the service takes the checkpoint as written
    store = FolderStore(tmp_path / "store")
    adapter = store.put_dir(out / "checkpoint")
    store.activate("default", adapter.id)
    settings = Settings(adapter_store=store.root, qdrant_path=tmp_path / "q")
    app = create_app(
        settings,
        query_encoder=query_encoder,
        document_encoder=document_encoder,
        gateway=QdrantGateway(path=":memory:"),
    )
    ds = load_beir(data)
    test = ds.qrels["test"]
    test_ids = sorted(test)
    with TestClient(app) as client:
        r = client.post("/embed", json={"input": [ds.queries[i] for i in test_ids]})
        assert r.status_code == 200, r.text
        assert r.json()["adapter"]["id"] == adapter.id
        served = np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

    # the same document vectors the eval searched
    doc_ids = list(ds.corpus)
    docs = EmbeddingCache(cache_dir).encode(
        document_encoder, [ds.corpus[i] for i in doc_ids], "document"
    )
    ndcg = evaluate_vectors(served, docs, test_ids, doc_ids, test)["ndcg@10"]
    assert ndcg == pytest.approx(eval_ndcg, abs=1e-3)
    if kind == "hybrid":  # starts at the document model; early stopping keeps it near or above
        baseline = manifest["evaluation"]["baseline"]["metrics"]["ndcg@10"]
        assert eval_ndcg >= baseline - 0.05


def test_train_refuses_bad_input_with_one_clear_message(tmp_path):
    data = write_synthetic_beir(tmp_path / "beir")
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tnope\t1\n")
    result = CliRunner().invoke(cli, ["train", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "nope" in result.output and "test.tsv" in result.output
