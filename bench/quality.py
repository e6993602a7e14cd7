"""SciFact quality benchmark (bench/README.md): the document model alone vs each adapter mode.

    python -m bench.quality --dataset ../shared/data/scifact --models-dir models \
        --cache var/cache --out reports/quality --seeds 0 1 2 [--extra]

Every trained row runs once per seed (the seed drives the validation split, the alignment
sample and the initialisation); the main table gives the seed means of nDCG@10, Recall@100 and
MRR@10 on SciFact test (300 queries), the seeds table the spread and the training / encoding
time. The leakage table answers how much of each gain comes from documents the adapter saw as
positives: on SciFact most test-relevant documents are also train positives, so it scores every
row again (first seed only) with every train/val positive removed from the index and from the
test qrels; queries left with no relevant document are not scored.

Reports (report.json / report.md / report.png, plus seeds.md and leakage.md) go to --out.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters import AdapterKind
from adapters.fsutil import atomic_write_bytes
from adapters.gate import Bootstrap, paired_bootstrap
from adapters.kinds import forward as adapter_forward
from bench.common import load_encoder, md_table, pts
from encoders import Encoder
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER
from training.cache import EmbeddingCache
from training.data import Dataset, load_beir, make_splits
from training.evaluate import METRICS, evaluate_vectors, exact_search, per_query
from training.pipeline import TrainConfig, TrainResult, Vectors, git_revision, run_training
from training.report import markdown_table, write_report

log = logging.getLogger("bench.quality")

TITLE = "SciFact test quality: document model alone vs query adapters"


@dataclass(frozen=True)
class Row:
    """One trained row: which encoder embeds the queries, and the TrainConfig fields."""

    label: str
    query: str  # "big" (the query model) or "doc" (the document model itself)
    config: dict[str, Any] = field(default_factory=dict)
    extra: bool = False

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig.model_validate({**self.config, "seed": seed})

    @property
    def kind(self) -> AdapterKind:
        return AdapterKind(self.config.get("kind", AdapterKind.LINEAR))


def rows_for(q: str, d: str, extra: bool) -> list[Row]:
    big = f"{q} -> {d}"
    rows = [
        Row(f"{big} linear alignment_only (ridge)", "big", {"mode": "alignment_only"}),
        Row(f"{big} linear label_only", "big", {"mode": "label_only"}),
        Row(f"{big} linear both (ridge + labels)", "big", {"mode": "both"}),
        Row(f"{d} -> {d} linear label_only (identity init)", "doc", {"mode": "label_only"}),
        Row(
            f"{big} hybrid label_only",
            "big",
            {"mode": "label_only", "kind": AdapterKind.HYBRID},
        ),
    ]
    if extra:
        rows += [
            Row(
                f"{big} linear alignment_only (cosine)",
                "big",
                {"mode": "alignment_only", "alignment": "cosine"},
                extra=True,
            ),
            Row(
                f"{big} linear both (mined negatives)",
                "big",
                {"mode": "both", "labels": {"negatives": "mined"}},
                extra=True,
            ),
            Row(f"{big} mlp both", "big", {"mode": "both", "kind": AdapterKind.MLP}, extra=True),
            Row(
                f"{big} lowrank both",
                "big",
                {"mode": "both", "kind": AdapterKind.LOWRANK},
                extra=True,
            ),
        ]
    return rows


# --------------------------------------------------------------------------- leakage


@dataclass
class Unseen:
    """The test split with every train/val positive removed from the index and the qrels."""

    excluded: set[str]
    doc_ids: list[str]
    docs: np.ndarray
    qrels: dict[str, dict[str, int]]
    test_relevant: int
    shared: int
    queries_before: int

    @classmethod
    def build(cls, splits: dict[str, dict[str, dict[str, int]]], vec: Vectors) -> Unseen:
        seen = {doc for s in ("train", "val") for rel in splits[s].values() for doc in rel}
        test = splits["test"]
        relevant = {doc for rel in test.values() for doc in rel}
        keep = [i for i, doc in enumerate(vec.doc_ids) if doc not in seen]
        qrels = {}
        for qid, rel in test.items():
            left = {doc: r for doc, r in rel.items() if doc not in seen and r > 0}
            if left:
                qrels[qid] = left
        return cls(
            excluded=seen,
            doc_ids=[vec.doc_ids[i] for i in keep],
            docs=vec.docs[keep],
            qrels=qrels,
            test_relevant=len(relevant),
            shared=len(relevant & seen),
            queries_before=len(test),
        )

    def ndcg_per_query(self, z: np.ndarray, query_ids: Sequence[str]) -> dict[str, float]:
        """nDCG@10 of each scored query (those with an unseen relevant document)."""
        pos = {q: i for i, q in enumerate(query_ids)}
        ids = sorted(self.qrels)
        run = exact_search(z[[pos[q] for q in ids]], self.docs, ids, self.doc_ids, k=100)
        return per_query(run, self.qrels, "ndcg@10")


def unseen_ci(a: dict[str, float], b: dict[str, float]) -> Bootstrap:
    """95% paired-bootstrap interval of mean(a - b) over the queries: the quality gate's own
    (adapters/gate.py), with the 10,000 seeded resamples the leakage note reports."""
    return paired_bootstrap([a[q] - b[q] for q in sorted(a)], n_resamples=10_000, seed=0)


# --------------------------------------------------------------------------- tables


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed mean / min / max / std of every metric, mean training and encoding seconds."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for m in METRICS:
        vals = [r["metrics"][m] for r in runs]
        out[m] = {
            "mean": statistics.fmean(vals),
            "min": min(vals),
            "max": max(vals),
            "std": _std(vals),
            "per_seed": vals,
        }
    out["best_epoch"] = [r["best_epoch"] for r in runs]
    out["train_s"] = statistics.fmean(r["train_s"] for r in runs)
    out["encode_s"] = statistics.fmean(r["encode_s"] for r in runs)
    out["total_s"] = statistics.fmean(r["total_s"] for r in runs)
    return out


def seeds_table(summary: dict[str, dict[str, Any]]) -> str:
    body = []
    for label, s in summary.items():
        n = s["ndcg@10"]
        trained = bool(s.get("trained", True))
        body.append(
            [
                label,
                str(len(s["seeds"])) if trained else "—",
                f"{n['mean']:.3f}",
                f"{n['min']:.3f}–{n['max']:.3f}",
                f"{n['std']:.4f}",
                " / ".join(f"{v:.3f}" for v in n["per_seed"]),
                f"{s['recall@100']['mean']:.3f}",
                f"{s['mrr@10']['mean']:.3f}",
                " / ".join("—" if e is None else str(e) for e in s.get("best_epoch", [])) or "—",
                f"{s['train_s']:.1f}" if trained else "—",
                f"{s['encode_s']:.1f}" if trained else "—",
            ]
        )
    header = [
        "",
        "seeds",
        "nDCG@10 mean",
        "nDCG@10 min–max",
        "nDCG@10 std",
        "nDCG@10 per seed",
        "Recall@100 mean",
        "MRR@10 mean",
        "best epoch per seed",
        "train s (mean)",
        "encode s (mean)",
    ]
    return md_table(header, body)


def leakage_table(leak: dict[str, dict[str, float]], baseline: str) -> str:
    b = leak[baseline]
    body = []
    for label, r in leak.items():
        is_base = label == baseline
        gain_all = r["all"] - b["all"]
        gain_same = r["same_queries"] - b["same_queries"]
        gain_unseen = r["unseen"] - b["unseen"]
        if is_base or gain_all <= 0.005:
            kept = "—"
        elif gain_unseen <= 0:
            kept = "none"
        else:
            kept = f"{gain_unseen / gain_all:.0%}"
        ci = "—" if is_base else f"{pts(r['ci_lo'])} … {pts(r['ci_hi'])}"
        body.append(
            [
                label,
                f"{r['all']:.3f}",
                "—" if is_base else pts(gain_all),
                f"{r['same_queries']:.3f}",
                "—" if is_base else pts(gain_same),
                f"{r['unseen']:.3f}",
                "—" if is_base else pts(gain_unseen),
                ci,
                kept,
            ]
        )
    header = [
        "",
        "nDCG@10 all test",
        "Δ (pts)",
        "same queries, full index",
        "Δ (pts)",
        "unseen docs only",
        "Δ (pts)",
        "Δ 95% CI",
        "gain kept",
    ]
    return md_table(header, body)


# --------------------------------------------------------------------------- main


def train_row(
    ds: Dataset, row: Row, q: Encoder, d: Encoder, cache: EmbeddingCache, seed: int
) -> tuple[TrainResult, dict[str, Any]]:
    t0 = time.perf_counter()
    res = run_training(ds, q, d, cache, row.train_config(seed))
    key = res.extra.get("label") or next(k for k in res.metrics if not k.endswith(" alone"))
    t = res.timings
    record = {
        "seed": seed,
        "metrics": res.metrics[key],
        "baseline_metrics": res.metrics.get(f"{d.name} alone"),
        "train_s": t.get("label_train_s", 0.0) + t.get("align_s", 0.0),
        "encode_s": t.get("encode_s", 0.0),
        "total_s": time.perf_counter() - t0,
        "timings": dict(t),
        "best_epoch": res.manifest.training.get("best_epoch"),
        "splits": res.splits,
    }
    return res, record


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, required=True, help="SciFact in BEIR layout")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--cache", type=Path, default=Path("var/cache"), help="embedding cache")
    ap.add_argument("--out", type=Path, default=Path("reports/quality"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--extra",
        action="store_true",
        help="also cosine alignment, ERA mined negatives, mlp both, lowrank both",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    seeds = list(dict.fromkeys(args.seeds))
    wall0 = time.perf_counter()

    ds = load_beir(args.dataset)
    q = load_encoder(EMBEDDED_QUERY_ENCODER, args.models_dir)
    d = load_encoder(EMBEDDED_DOCUMENT_ENCODER, args.models_dir)
    cache = EmbeddingCache(args.cache)
    encoders = {"big": q, "doc": d}

    # The test split is SciFact's own and does not depend on the seed; the leakage analysis uses
    # the first seed's train/val split (train + val = SciFact train for every seed).
    leak_seed = seeds[0]
    splits = make_splits(ds, seed=leak_seed)
    test = splits["test"]
    test_ids = sorted(test)
    base_vec = Vectors(ds, d, d, cache, AdapterKind.LINEAR)
    unseen = Unseen.build(splits, base_vec)
    same_q = {qid: test[qid] for qid in unseen.qrels}

    baseline = f"{d.name} alone"
    zb = base_vec.document_queries(test_ids)
    base_metrics = evaluate_vectors(zb, base_vec.docs, test_ids, base_vec.doc_ids, test)
    pos = {qid: i for i, qid in enumerate(test_ids)}
    same_rows = [pos[qid] for qid in sorted(same_q)]

    unseen_pq: dict[str, dict[str, float]] = {}

    def leak_scores(label: str, z: np.ndarray) -> dict[str, float]:
        unseen_pq[label] = unseen.ndcg_per_query(z, test_ids)
        return {
            "all": evaluate_vectors(z, base_vec.docs, test_ids, base_vec.doc_ids, test)["ndcg@10"],
            "same_queries": evaluate_vectors(
                z[same_rows], base_vec.docs, sorted(same_q), base_vec.doc_ids, same_q
            )["ndcg@10"],
            "unseen": statistics.fmean(unseen_pq[label].values()),
        }

    leak: dict[str, dict[str, float]] = {baseline: leak_scores(baseline, zb)}
    summary: dict[str, dict[str, Any]] = {
        baseline: {
            "seeds": [],
            "trained": False,
            **{
                m: {"mean": v, "min": v, "max": v, "std": 0.0, "per_seed": [v]}
                for m, v in base_metrics.items()
            },
            "train_s": 0.0,
            "encode_s": 0.0,
        }
    }
    per_seed: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, Any] = {}
    rows = rows_for(q.name, d.name, args.extra)
    vectors: dict[tuple[str, AdapterKind], Vectors] = {}
    n_runs, done = len(rows) * len(seeds), 0
    for row in rows:
        qenc = encoders[row.query]
        configs[row.label] = row.train_config(seeds[0]).model_dump(mode="json", exclude={"seed"})
        runs = []
        for seed in seeds:
            res, rec = train_row(ds, row, qenc, d, cache, seed)
            done += 1
            print(
                f"[{done}/{n_runs}] {row.label} seed {seed}: nDCG@10 "
                f"{rec['metrics']['ndcg@10']:.3f}, train {rec['train_s']:.1f}s, "
                f"encode {rec['encode_s']:.1f}s, total {rec['total_s']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            if rec["baseline_metrics"] and not math.isclose(
                rec["baseline_metrics"]["ndcg@10"], base_metrics["ndcg@10"], abs_tol=1e-6
            ):
                log.warning("pipeline's baseline differs from ours: %s", rec["baseline_metrics"])
            if seed == leak_seed:
                vkey = (row.query, row.kind)
                if vkey not in vectors:
                    vectors[vkey] = Vectors(ds, qenc, d, cache, row.kind)
                x = vectors[vkey].inputs(test_ids)
                z = adapter_forward(res.manifest, res.adapter_tensors, x)
                leak[row.label] = leak_scores(row.label, z)
                ci = unseen_ci(unseen_pq[row.label], unseen_pq[baseline])
                leak[row.label].update(ci_lo=ci.ci_low, ci_hi=ci.ci_high)
                if not math.isclose(
                    leak[row.label]["all"], rec["metrics"]["ndcg@10"], abs_tol=1e-6
                ):
                    log.warning(
                        "%s: re-applied adapter gives nDCG@10 %.4f, the pipeline reported %.4f",
                        row.label,
                        leak[row.label]["all"],
                        rec["metrics"]["ndcg@10"],
                    )
            runs.append(rec)
        per_seed[row.label] = runs
        summary[row.label] = summarise(runs)

    main_rows = {label: {m: s[m]["mean"] for m in METRICS} for label, s in summary.items()}
    main_md = markdown_table(main_rows, baseline=baseline, metrics=list(METRICS))
    seeds_md = seeds_table(summary)
    leak_md = leakage_table(leak, baseline)
    leak_note = (
        f"Test-relevant documents: {unseen.test_relevant}; of these {unseen.shared} are also "
        f"train/val positives (seed {leak_seed} split). Removed from the index: "
        f"{len(unseen.excluded)} train/val positives ({len(unseen.doc_ids)} of "
        f"{len(base_vec.doc_ids)} documents left). Test queries still scored: "
        f"{len(unseen.qrels)} of {unseen.queries_before}. Seed {leak_seed} adapters. "
        "'same queries, full index' scores those queries on the full index with their full "
        "qrels, separating the query-subset effect from the document removal. 'gain kept' = "
        "unseen-docs gain / all-test gain; 'Δ 95% CI': paired bootstrap over the "
        "scored queries (10,000 resamples) of the unseen-docs gain."
    )
    wall = time.perf_counter() - wall0

    print(f"## {TITLE}\n")
    print(
        f"Seed means over seeds {seeds}; {len(test_ids)} test queries; "
        f"baseline: {baseline} (its own query vectors).\n"
    )
    print(main_md)
    print("## Seeds: spread and time\n")
    print(seeds_md)
    print("## Leakage: documents that are also train/val positives removed\n")
    print(leak_note + "\n")
    print(leak_md)

    meta = {
        "command": "python -m bench.quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": str(args.dataset),
        "dataset_fingerprint": ds.fingerprint(),
        "query_encoder": q.spec.model_dump(mode="json"),
        "document_encoder": d.spec.model_dump(mode="json"),
        "seeds": seeds,
        "splits": {k: len(v) for k, v in splits.items()},
        "test_queries": len(test_ids),
        "metrics": "seed means; std is the sample std over seeds",
        "train_s": "label_train_s + align_s (seed mean)",
        "encode_s": "seconds spent encoding texts missing from the embedding cache (seed mean)",
        "configs": configs,
        "summary": summary,
        "per_seed": per_seed,
        "leakage": {
            "seed": leak_seed,
            "test_relevant_docs": unseen.test_relevant,
            "shared_with_train_val": unseen.shared,
            "excluded_docs": len(unseen.excluded),
            "queries_scored": len(unseen.qrels),
            "queries_total": unseen.queries_before,
            "ndcg@10": leak,
            "unseen_per_query_ndcg@10": unseen_pq,
            "note": leak_note,
        },
        "cache": {
            "hits": cache.stats.hits,
            "encoded": cache.stats.encoded,
            "encode_s": cache.stats.encode_seconds,
        },
        "git_revision": git_revision(),
        "wall_s": wall,
    }
    paths = write_report(args.out, TITLE, main_rows, meta=meta, baseline=baseline)
    atomic_write_bytes(args.out / "seeds.md", f"# Seeds: spread and time\n\n{seeds_md}".encode())
    atomic_write_bytes(
        args.out / "leakage.md",
        f"# Leakage: unseen documents only\n\n{leak_note}\n\n{leak_md}".encode(),
    )
    written = [*paths.values(), args.out / "seeds.md", args.out / "leakage.md"]
    print(f"reports: {', '.join(str(p) for p in written)}")
    print(f"total wall time: {time.perf_counter() - wall0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
