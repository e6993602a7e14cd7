"""Matryoshka prefixes on SciFact: what serving (and indexing) the first N dims costs.

    python -m bench.matryoshka --data ../shared/data/scifact [--dims 384 256 128] \
        [--models-dir models] [--cache var/cache] [--seed 0] [--checkpoint DIR]

A collection indexed with `querylift index --dim N` holds each document vector's first N
values, renormalised, and the service cuts every query vector the same way
(encoders/matryoshka.py). This scores that on SciFact test (300 queries) for MiniLM's own query
vectors and for the hybrid adapter `querylift train` makes (trained here on SciFact train with
the package defaults, or loaded from `--checkpoint`), at each size, the documents cut alike.
Every vector comes from the embedding cache (training/cache.py); the metrics are
training/evaluate.py's (exact search, ranx).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adapters import AdapterKind
from adapters.checkpoint import load_checkpoint
from adapters.kinds import forward as adapter_forward
from bench.common import dataset_args, load_encoder
from encoders.matryoshka import truncate
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER
from training.cache import EmbeddingCache
from training.data import load_beir, make_splits
from training.evaluate import evaluate_vectors
from training.pipeline import TrainConfig, Vectors, check_encoders, run_training

METRICS = ("ndcg@10", "recall@100")


def at_dim(x: np.ndarray, dim: int) -> np.ndarray:
    """The served vectors at `dim`: whole at the full size, else the renormalised prefix."""
    return x if dim == x.shape[1] else truncate(x, dim)


def table(scores: dict[str, dict[int, dict[str, float]]], full: int) -> str:
    """One row per (system, size); Δ in nDCG / recall points against the same system whole."""
    lines = [
        "| | dims | nDCG@10 | Δ vs full | Recall@100 | Δ vs full |",
        "| :--- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, by_dim in scores.items():
        base = by_dim[full]
        for dim, m in by_dim.items():
            deltas = ["—" if dim == full else f"{(m[k] - base[k]) * 100:+.1f}" for k in METRICS]
            lines.append(
                f"| {label} | {dim} | {m['ndcg@10']:.3f} | {deltas[0]} | "
                f"{m['recall@100']:.3f} | {deltas[1]} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.matryoshka", description=__doc__.split("\n")[0]
    )
    dataset_args(ap)
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 256, 128])
    ap.add_argument("--seed", type=int, default=0, help="training seed (validation split, init)")
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a hybrid checkpoint folder (`querylift train`'s DIR/checkpoint) instead of "
        "training one",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    ds = load_beir(args.data)
    q = load_encoder(EMBEDDED_QUERY_ENCODER, args.models_dir)
    d = load_encoder(EMBEDDED_DOCUMENT_ENCODER, args.models_dir)
    dims = sorted(set(args.dims), reverse=True)
    if dims[0] != d.dim or dims[-1] < 1:
        raise SystemExit(f"--dims: the largest must be {d.dim} (the full size), all >= 1")
    cache = EmbeddingCache(args.cache)
    vec = Vectors(ds, q, d, cache, AdapterKind.HYBRID)  # documents, [mpnet; MiniLM] queries
    test = make_splits(ds, seed=args.seed)["test"]
    test_ids = sorted(test)

    t1 = time.perf_counter()
    if args.checkpoint is not None:
        adapter = load_checkpoint(args.checkpoint)
        check_encoders(adapter, q, d)
        manifest, tensors = adapter.manifest, adapter.tensors
        trained = f"loaded from {args.checkpoint}"
    else:  # what `querylift train DATA --kind hybrid --mode label_only` does, same defaults
        cfg = TrainConfig(mode="label_only", kind=AdapterKind.HYBRID, seed=args.seed)
        res = run_training(ds, q, d, cache, cfg)
        manifest, tensors = res.manifest, res.adapter_tensors
        trained = f"trained in {time.perf_counter() - t1:.1f}s (seed {args.seed})"
    if manifest.kind != AdapterKind.HYBRID:
        raise SystemExit(f"{args.checkpoint}: a {manifest.kind.value} adapter, not a hybrid")

    systems = {
        f"{d.name} alone": vec.document_queries(test_ids),
        f"{q.name} + {d.name} -> hybrid adapter": adapter_forward(
            manifest, tensors, vec.inputs(test_ids)
        ),
    }
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for label, z in systems.items():
        scores[label] = {}
        for dim in dims:
            scores[label][dim] = evaluate_vectors(
                at_dim(z, dim), at_dim(vec.docs, dim), test_ids, vec.doc_ids, test, METRICS
            )
    wall = time.perf_counter() - t0

    print(
        f"## SciFact test ({len(test_ids)} queries, {len(vec.doc_ids)} documents): "
        f"Matryoshka prefixes of {d.name} ({d.dim}-d), queries and documents cut alike\n"
    )
    print(table(scores, d.dim))
    print(
        f"\nadapter {trained}; encoded {cache.stats.encoded} texts missing from the cache "
        f"({cache.stats.encode_seconds:.1f}s); total {wall:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
