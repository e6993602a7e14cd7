"""Vectors for the search-engine benches: real sentence embeddings of SciFact, and seeded
synthetic clustered vectors for sizes no real set reaches (1M).

HNSW recall depends on the data (uniform random 384-d vectors are far harder than real
embeddings, DESIGN.md §5), so defaults are chosen on real MiniLM vectors and only the scale
is extrapolated with synthetic ones.

Real set: every sentence of SciFact's abstracts (the corpus' `text` field, titles left out).
Sentences are cut by one regular expression: a break after `.`, `!` or `?` followed by
whitespace and then an upper-case letter, a digit or an opening bracket/quote (SciFact's
`text` is its sentences joined by single spaces, so this recovers nearly all of them; an
abbreviation such as "et al. The" may split wrongly, which does not matter for a vector
set). Pieces shorter than `MIN_CHARS` are dropped. `HELDOUT` sentences, chosen by a seeded
shuffle, are kept out of the index as a second query set; SciFact's test queries are the
first. Everything is encoded by the embedded document encoder (all-MiniLM-L6-v2, 384-d,
L2-normalised): a real query lands near the document model's query vector once an adapter
has mapped it, so the document model's own query vectors stand in for it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adapters.fsutil import atomic_write_bytes
from training.data import read_queries

MIN_CHARS = 20
HELDOUT = 1000
SEED = 0
BATCH = 64
SPLIT_RULE = r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])"
_SPLIT = re.compile(SPLIT_RULE)
CACHE_VERSION = 1  # bump when the rule, the selection or the layout changes


@dataclass(frozen=True)
class SentenceSet:
    base: np.ndarray  # (n, 384) float32, the indexed sentences
    base_doc: np.ndarray  # (n,) int32, the abstract (corpus line number) of each base row
    heldout: np.ndarray  # (HELDOUT, 384) float32, sentences not indexed
    queries: np.ndarray  # (300, 384) float32, SciFact test queries
    meta: dict[str, object]


def split_sentences(text: str) -> list[str]:
    """The module docstring's rule: cut after . ! ? before a capital/digit/bracket."""
    return [s for s in (p.strip() for p in _SPLIT.split(text)) if len(s) >= MIN_CHARS]


def read_sentences(data: Path) -> tuple[list[str], list[int]]:
    """Every sentence of the corpus in file order, and the corpus line it came from."""
    sentences: list[str] = []
    docs: list[int] = []
    with gzip.open(Path(data) / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            for s in split_sentences(str(json.loads(line).get("text") or "")):
                sentences.append(s)
                docs.append(i)
    return sentences, docs


def test_query_texts(data: Path) -> list[str]:
    """SciFact's test queries (ids from qrels/test.tsv), in query-id order."""
    ids: set[str] = set()
    with open(Path(data) / "qrels" / "test.tsv", encoding="utf-8") as f:
        for line in f:
            qid = line.split("\t", 1)[0].strip()
            if qid and qid != "query-id":
                ids.add(qid)
    queries = read_queries(Path(data) / "queries.jsonl.gz")
    missing = ids - queries.keys()
    if missing:
        raise ValueError(f"{data}: qrels/test.tsv names unknown queries {sorted(missing)[:5]}")
    return [queries[q] for q in sorted(ids, key=lambda q: (len(q), q))]


def encode_texts(texts: list[str], models_dir: Path, desc: str) -> np.ndarray:
    """Document-encoder vectors of `texts` in input order; batches are length-sorted so that
    padding wastes little time on two shared cores."""
    from bench.common import load_encoder
    from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER

    encoder = load_encoder(EMBEDDED_DOCUMENT_ENCODER, models_dir)
    try:
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), encoder.dim), np.float32)
        for start in tqdm(range(0, len(texts), BATCH), desc=desc, unit="batch"):
            rows = order[start : start + BATCH]
            out[rows] = encoder.encode([texts[i] for i in rows], "document").vectors
    finally:
        encoder.close()
    return out


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _source_stamp(data: Path) -> dict[str, object]:
    files = ["corpus.jsonl.gz", "queries.jsonl.gz", "qrels/test.tsv"]
    return {f: os.stat(Path(data) / f).st_size for f in files}


def scifact_sentences(
    data: Path, models_dir: Path, cache: Path = Path("var/bench/scifact-sentences")
) -> SentenceSet:
    """The real-embedding set, encoded once and cached under `cache` (reused while the
    source files, the model and `CACHE_VERSION` are unchanged; each file is written to a
    temp name, fsynced and renamed, the JSON last, so a half-written cache is never read)."""
    data, models_dir, cache = Path(data), Path(models_dir), Path(cache)
    from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER

    want = {
        "version": CACHE_VERSION,
        "model": EMBEDDED_DOCUMENT_ENCODER.name,
        "model_dir": str((models_dir / EMBEDDED_DOCUMENT_ENCODER.name).resolve()),
        "source": str(data.resolve()),
        "source_sizes": _source_stamp(data),
        "split_rule": SPLIT_RULE,
        "min_chars": MIN_CHARS,
        "heldout": HELDOUT,
        "seed": SEED,
    }
    meta_path = cache / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in want.items()):
            return SentenceSet(
                base=np.load(cache / "base.npy"),
                base_doc=np.load(cache / "base_doc.npy"),
                heldout=np.load(cache / "heldout.npy"),
                queries=np.load(cache / "queries.npy"),
                meta=meta,
            )
    sentences, docs = read_sentences(data)
    queries = test_query_texts(data)
    perm = np.random.default_rng(SEED).permutation(len(sentences))
    held, base = np.sort(perm[:HELDOUT]), np.sort(perm[HELDOUT:])
    vectors = encode_texts(sentences, models_dir, "sentences")
    qvec = encode_texts(queries, models_dir, "queries")
    arrays = {
        "base.npy": vectors[base],
        "base_doc.npy": np.asarray(docs, np.int32)[base],
        "heldout.npy": vectors[held],
        "queries.npy": qvec,
    }
    for name, a in arrays.items():
        atomic_write_bytes(cache / name, _npy_bytes(a))
    meta = {
        **want,
        "count": len(base),
        "sentences": len(sentences),
        "documents": len(set(docs)),
        "queries": len(queries),
        "dim": int(vectors.shape[1]),
        "dtype": "float32",
        "normalised": True,
    }
    atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
    base_vec, base_doc, held_vec = arrays["base.npy"], arrays["base_doc.npy"], arrays["heldout.npy"]
    return SentenceSet(base_vec, base_doc, held_vec, qvec, meta)


def synthetic_clustered(
    n: int,
    dim: int = 384,
    per_cluster: int = 300,
    clusters_per_topic: int = 30,
    topic_spread: float = 1.0,
    spread: float = 1.5,
    rank: int = 24,
    decay: float = 1.0,
    iso: float = 0.3,
    seed: int = 0,
    chunk: int = 100_000,
) -> np.ndarray:
    """`n` unit vectors from a two-level mixture of Gaussians on the sphere, from `seed`.

    Topics are uniform on the sphere; each cluster centre is a topic plus isotropic noise
    (norm ~`topic_spread`); each point is its centre plus noise of norm ~`spread` in the
    cluster's own random `rank`-dimensional subspace (power-law variances, exponent
    `decay`) plus a little isotropic noise (`iso`), renormalised. Each shape choice answers
    a failure of a simpler mixture measured here with Edge's HNSW: isotropic noise makes
    every cluster a ball of uniform random points, near-equidistant, HNSW's worst case and
    unlike real embeddings; noise along one subspace shared by all clusters filled that
    subspace as n grew, and at 1M recall@10 fell to 0.70 (m 32, ef 256) while it was 1.00 at
    100k; uniform centres with no topic level give greedy search no slope between clusters.

    Defaults (`per_cluster` points a cluster on average, n / 300 clusters) were fitted to
    the SciFact sentence set at its own size (43.8k, 1,000 held-out queries): mean cosine of
    the 1st / 10th neighbour 0.757 / 0.654 (real 0.714 / 0.559); Edge HNSW (m 16,
    ef_construct 100, hnsw_ef 64) recall@10 0.994 unfiltered, 0.965 with a 2-way tenant
    filter (real: 0.994 / 0.956 on held-out sentences, 0.988 / 0.949 on test queries). Read
    synthetic recall at other sizes as a trend, not as a real set's number. Generated in
    chunks: 1M x 384 costs its 1.5 GB plus the clusters' bases (n / 300 x rank x dim).
    """
    k = max(10, n // per_cluster)
    t = max(2, k // clusters_per_topic)
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((t, dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[rng.integers(0, t, k)] + np.float32(topic_spread / np.sqrt(dim)) * (
        rng.standard_normal((k, dim)).astype(np.float32)
    )
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scale = (np.arange(rank) + 1.0) ** (-decay / 2)
    scale *= spread / np.linalg.norm(scale)  # a standard normal draw times scale: norm ~spread
    bases = np.empty((k, rank, dim), np.float32)
    for j in range(k):
        q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        bases[j] = scale[:, None] * q.T
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        crng = np.random.default_rng([seed, start // chunk])
        m = min(chunk, n - start)
        labels = crng.integers(0, k, m)
        z = crng.standard_normal((m, rank), dtype=np.float32)
        x = centres[labels] + np.float32(iso / np.sqrt(dim)) * crng.standard_normal(
            (m, dim), dtype=np.float32
        )
        order = np.argsort(labels, kind="stable")
        cuts = np.flatnonzero(np.diff(labels[order])) + 1
        for rows in np.split(order, cuts):
            x[rows] += z[rows] @ bases[labels[rows[0]]]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out
