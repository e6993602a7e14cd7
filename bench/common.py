"""Shared helpers of the benchmarks: a querylift server in a subprocess, latency summaries,
the serving setup and closed-loop client that bench.serve, bench.overload, bench.engine_cpu
and bench.first_request drive, a random linear adapter, encoders from a models folder, the
markdown tables of the quality reports, and SciFact's two k-means topic halves
(bench.domain_shift, bench.label_free).

Here rather than in the bench that first needed them, so that no bench imports another.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from adapters import Adapter, AdapterKind, Manifest
from adapters.checkpoint import serialize
from adapters.stores import open_store
from bench import load
from encoders import Encoder, EncoderSpec, build_encoder
from querylift.indexing import index_documents
from service.bindings.tenants import hash_key
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER
from service.search.qdrant_gateway import QdrantGateway
from training.align import model_info
from training.data import Dataset, read_corpus, read_queries

KEY = "bench-serve-key"  # the one tenant's API key of `build_setup`
DEMO = Path(__file__).resolve().parents[1] / "demo" / "scifact-mini"


def dataset_args(ap: argparse.ArgumentParser, out: str | None = None) -> None:
    """The options every offline SciFact bench takes: --data, --models-dir, --cache (and --out,
    the report's path without suffix, where it writes one)."""
    ap.add_argument("--data", type=Path, required=True, help="SciFact in BEIR layout")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--cache", type=Path, default=Path("var/cache"), help="embedding cache")
    if out is not None:
        ap.add_argument("--out", type=Path, default=Path(out), help="OUT.json/.md")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: Mapping[str, str], timeout_s: float = 180.0) -> Iterator[str]:
    """Run `querylift serve` on a loopback port with `env` added; yield its base URL."""
    log_path = Path(env.get("QUERYLIFT_ADAPTER_STORE", ".")) / "server.log"
    with server_process(env, log_path, timeout_s) as (url, _):
        yield url


@contextmanager
def server_process(
    env: Mapping[str, str], log_path: Path, timeout_s: float = 180.0
) -> Iterator[tuple[str, int]]:
    """`querylift serve` on a loopback port with `env` added: yields (base URL, pid), the pid
    for benchmarks that watch the server's memory."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "querylift.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port)],
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout_s}s; see {log_path}")
            time.sleep(0.25)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def summary_ms(seconds: list[float]) -> str:
    if not seconds:
        return "n/a"
    a = np.asarray(seconds) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return (
        f"p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {a.max():.1f} ms (n={len(a)})"
    )


class Steal:
    """Share of CPU time the hypervisor took from this VM (`steal` in /proc/stat) between
    `start()` and `read()`; None where /proc/stat has no steal column (not Linux).

    On a shared cloud VM, steal bursts slow a run several-fold for seconds at a time; the
    serving benches measure it per window and leave out windows it spoiled."""

    def __init__(self) -> None:
        self._start = self._ticks()

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 8:
            return None
        return fields[7], sum(fields[:8])

    def start(self) -> Steal:
        self._start = self._ticks()
        return self

    def read(self) -> float | None:
        end = self._ticks()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        return (end[0] - self._start[0]) / (end[1] - self._start[1])


def verdict(checks: dict[str, bool]) -> int:
    """Print a PASS/FAIL line per check; the exit status (1 when one failed)."""
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


# --------------------------------------------------------------------------- models, adapters


def load_encoder(spec: EncoderSpec, models_dir: Path) -> Encoder:
    """`spec` with its model folder looked up in `models_dir` (exits naming the fix if absent)."""
    path = Path(models_dir) / Path(spec.path).name
    if not path.is_dir():
        raise SystemExit(f"{path}: no such model folder (run `querylift setup --no-demo`)")
    return build_encoder(spec.model_copy(update={"path": str(path)}))


def random_linear(q: Encoder, d: Encoder, seed: int) -> tuple[bytes, bytes]:
    """A seeded random linear adapter from `q`'s space to `d`'s, as (tensors, manifest) bytes:
    valid for the service, its vectors meaningless, which serving benches do not care about."""
    rng = np.random.default_rng(seed)
    manifest = Manifest(
        kind=AdapterKind.LINEAR,
        in_dim=q.dim,
        out_dim=d.dim,
        query_model=model_info(q),
        document_model=model_info(d),
        name=f"bench-random-{seed}",
    )
    w = rng.standard_normal((d.dim, q.dim)).astype(np.float32) / np.sqrt(q.dim)
    return serialize(manifest, {"weight": w, "bias": np.zeros(d.dim, np.float32)})


# --------------------------------------------------------------------------- serving setup


@dataclass
class Setup:
    env: dict[str, str]
    query_encoder: Encoder
    document_encoder: Encoder
    adapter: Adapter
    texts: list[str]
    work: Path


def build_setup(models: Path, docs: int = 200, **env: str) -> Setup:
    """Models, one tenant with a linear adapter, a small indexed collection, the env."""
    q = load_encoder(EMBEDDED_QUERY_ENCODER, models)
    d = load_encoder(EMBEDDED_DOCUMENT_ENCODER, models)
    work = Path(tempfile.mkdtemp(prefix="querylift-bench-"))
    store = open_store(work / "store")
    adapter = store.put(*random_linear(q, d, 1))
    store.activate("bench", adapter.id)
    tenants = work / "tenants.json"
    tenants.write_text(
        json.dumps(
            {
                "tenants": [
                    {"name": "bench", "api_keys_sha256": [hash_key(KEY)], "collection": "bench"}
                ]
            }
        )
    )
    gw = QdrantGateway(path=str(work / "qdrant"))
    corpus = list(itertools.islice(read_corpus(DEMO / "corpus.jsonl.gz"), docs))
    index_documents(
        gw, d, corpus, collection="bench", tenant_field="tenant", tenant_value="bench",
        progress=False,
    )  # fmt: skip
    gw.close()
    texts = list(read_queries(DEMO / "queries.jsonl.gz").values())
    base = {
        "QUERYLIFT_QUERY_ENCODER__PATH": str(models / "all-mpnet-base-v2"),
        "QUERYLIFT_DOCUMENT_ENCODER__PATH": str(models / "all-MiniLM-L6-v2"),
        "QUERYLIFT_TENANTS_FILE": str(tenants),
        "QUERYLIFT_ADAPTER_STORE": store.location,
        "QUERYLIFT_QDRANT_PATH": str(work / "qdrant"),
        "QUERYLIFT_LOG_LEVEL": "warning",
        "QUERYLIFT_QUERY_CACHE_SIZE": "0",
        # closed-loop clients never push past their concurrency: measure the engine, not the
        # admission control (bench.overload does that)
        "QUERYLIFT_MAX_QUEUE_WAIT_MS": "0",
    }
    return Setup({**base, **env}, q, d, adapter, texts, work)


@dataclass
class Run:
    name: str
    concurrency: int
    per_request: int
    latencies: list[float] = field(default_factory=list)
    texts_sent: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    timings: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def texts_per_s(self) -> float:
        return self.ok * self.per_request / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1e3, q)) if self.latencies else 0


async def closed_loop(
    url: str,
    run: Run,
    texts: Iterator[str],
    duration: float,
    max_requests: int,
    endpoint: str = "/embed",
) -> None:
    """`run.concurrency` workers, each sending its next request as soon as one returns; no
    new request after `duration` (the ones in flight finish and count)."""
    sent = 0
    async with load.session(url, KEY, run.concurrency + 4, 600) as client:
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < stop_at and sent < max_requests:
                sent += 1
                batch = [next(texts) for _ in range(run.per_request)]
                body: dict[str, Any] = (
                    {"query": batch[0], "top_k": 10} if endpoint == "/search" else {"input": batch}
                )
                t0 = time.perf_counter()
                status, _, data = await load.post_json(
                    client, endpoint, body, parse=endpoint == "/search"
                )
                dt = time.perf_counter() - t0
                run.statuses[status] = run.statuses.get(status, 0) + 1
                if status == 200:
                    run.latencies.append(dt)
                    run.texts_sent.extend(batch)
                    if endpoint == "/search":
                        run.timings.append(data["timings_ms"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(run.concurrency)))
        run.elapsed = time.perf_counter() - t0


# --------------------------------------------------------------------------- report tables


def md_table(header: list[str], body: list[list[str]], right_from: int = 1) -> str:
    """A markdown table, columns from `right_from` on right-aligned (the numbers)."""
    align = [":---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def pts(v: float | None) -> str:
    """A metric difference in signed points (0.012 -> "+1.2"); empty when there is none."""
    if v is None or not math.isfinite(v):
        return ""
    v = round(v * 100, 1)
    return f"{v + 0.0:+.1f}"


# --------------------------------------------------------------------------- topic halves


def spherical_kmeans(
    x: np.ndarray, k: int = 2, seed: int = 0, restarts: int = 10, iters: int = 100
) -> tuple[np.ndarray, float]:
    """Cluster L2-normalised rows by cosine (k-means++ seeding); the best of `restarts` runs.

    Returns (labels, objective = mean cosine to the own centroid). Tiny on purpose: sklearn is
    not a dependency and 5k x 384 needs nothing more.
    """
    x = np.asarray(x, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, float] | None = None
    for _ in range(restarts):
        centres = [x[rng.integers(len(x))]]
        while len(centres) < k:
            dist = 1.0 - np.max(x @ np.stack(centres).T, axis=1)
            p = np.clip(dist, 0, None) ** 2
            centres.append(x[rng.choice(len(x), p=p / p.sum())])
        c = np.stack(centres)
        labels = np.full(len(x), -1)
        for _ in range(iters):
            new = np.argmax(x @ c.T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    m = members.sum(axis=0)
                    c[j] = m / np.linalg.norm(m)
        objective = float(np.mean(np.sum(x * c[labels], axis=1)))
        if best is None or objective > best[1]:
            best = (labels.copy(), objective)
    assert best is not None
    return best


@dataclass
class Half:
    """One topic half as a dataset of its own (BEIR splits train/test), plus all its qrels."""

    name: str
    ds: Dataset
    all_qrels: dict[str, dict[str, int]]


def split_halves(
    ds: Dataset, doc_ids: list[str], labels: np.ndarray
) -> tuple[list[Half], dict[str, Any]]:
    """Two Datasets by document label; each query follows its positives (straddlers dropped)."""
    half_of = dict(zip(doc_ids, labels.tolist(), strict=True))
    qrels: list[dict[str, dict[str, dict[str, int]]]] = [{}, {}]
    straddling = {split: 0 for split in ds.qrels}
    for split, per_q in ds.qrels.items():
        for qid, rel in per_q.items():
            halves = {half_of[doc] for doc, r in rel.items() if r > 0 and doc in half_of}
            if len(halves) != 1:
                straddling[split] += 1
                continue
            h = halves.pop()
            qrels[h].setdefault(split, {})[qid] = dict(rel)
    out = []
    for h, name in enumerate("AB"):
        corpus = {i: ds.corpus[i] for i in doc_ids if half_of[i] == h}
        qids = {q for per_q in qrels[h].values() for q in per_q}
        out.append(
            Half(
                name,
                Dataset(
                    name=f"{ds.name}-{name}",
                    corpus=corpus,
                    queries={q: ds.queries[q] for q in sorted(qids)},
                    qrels=qrels[h],
                    source=f"{ds.source} (k-means half {name})",
                ),
                {q: rel for per_q in qrels[h].values() for q, rel in per_q.items()},
            )
        )
    stats = {
        "documents": {h.name: len(h.ds.corpus) for h in out},
        "queries": {h.name: {s: len(v) for s, v in h.ds.qrels.items()} for h in out},
        "straddling_dropped": straddling,
    }
    return out, stats
