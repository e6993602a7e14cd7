"""Domain shift: how much a label-trained adapter costs on a collection it was not trained on.

    python -m bench.domain_shift --data ../shared/data/scifact [--seeds 0 1 2] \
        [--regs 0 0.003 0.01 0.02 0.025 0.03 0.1] [--out reports/domain_shift]

SciFact's corpus is cut into two topic halves by spherical k-means (k=2, seeded restarts, the
best objective kept) on the cached MiniLM document vectors; every query (train and test) goes
to the half holding all its positives (queries whose positives straddle are dropped). An
adapter trained on half A's train queries against half A's corpus is scored in-domain (half
A's test queries on half A's corpus) and out-of-domain (all of half B's queries, which it never
saw, on half B's corpus), each against the document model alone; then the other direction.

Rows: the hybrid (the product's default) at each regularisation strength (`reg`, the L2 pull
toward its identity start), linear `both` (ERA: ridge start + labels) and the ridge alignment
map alone as references; plus, for the hybrid, the same strengths trained on all of SciFact
train and scored on SciFact test (the numbers bench.quality reports). Everything comes from
the embedding cache: the alignment sets are drawn from the corpus texts bench.quality already
encoded (its seeds 0-2 samples), and an encoder call missing more than 16 texts aborts the run
unless `--allow-encode` is given (encoding SciFact from scratch takes 25+ minutes on CPU).

Writes OUT.json (every run) and OUT.md (the tables); prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters import AdapterKind
from adapters.fsutil import atomic_write_bytes
from adapters.kinds import forward as adapter_forward
from bench.common import dataset_args, load_encoder, md_table, pts, spherical_kmeans, split_halves
from encoders import Encoder
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER
from training.align import sample_texts
from training.cache import EmbeddingCache
from training.data import Dataset, load_beir
from training.evaluate import evaluate_vectors
from training.pipeline import TrainConfig, Vectors, git_revision, run_training

log = logging.getLogger("bench.domain_shift")

TITLE = "Domain shift: SciFact cut into two k-means topic halves"
DEFAULT_REGS = (0.0, 0.003, 0.01, 0.02, 0.025, 0.03, 0.1)
QUALITY_SEEDS = (0, 1, 2)  # bench.quality's alignment samples: the texts already in the cache


# --------------------------------------------------------------------------- the halves


def neighbour_purity(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of each document's k nearest neighbours (cosine) that lie in its own half."""
    x = np.asarray(x, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    same = 0
    for s in range(0, len(x), 1024):
        sims = x[s : s + 1024] @ x.T
        sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf
        nn = np.argpartition(-sims, k, axis=1)[:, :k]
        same += int((labels[nn] == labels[s : s + 1024, None]).sum())
    return same / (len(x) * k)


# --------------------------------------------------------------------------- runs


class _CacheOnly:
    """An encoder stand-in for runs that must hit the embedding cache: a miss of more than
    `limit` texts in one call raises (a handful, e.g. a train query the cached runs only ever
    had in validation, costs a second; a corpus sample costs many minutes)."""

    def __init__(self, inner: Encoder, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        if len(texts) > self._limit:
            raise RuntimeError(
                f"{self._inner.name}: {len(texts)} texts are not in the embedding cache "
                "(run bench.quality first, or pass --allow-encode)"
            )
        return self._inner.encode(texts, *args, **kwargs)


@dataclass(frozen=True)
class Row:
    label: str
    config: dict[str, Any]
    reg: float | None = None  # the hybrid sweep's strength (None for the references)

    @property
    def kind(self) -> AdapterKind:
        return AdapterKind(self.config.get("kind", AdapterKind.LINEAR))


def rows_for(regs: Sequence[float], linear_regs: Sequence[float], ridge: bool = True) -> list[Row]:
    rows = [
        Row(f"hybrid reg={r:g}", {"mode": "label_only", "kind": "hybrid", "labels": {"reg": r}}, r)
        for r in regs
    ]
    rows += [
        Row(f"linear both (ridge + labels) reg={r:g}", {"mode": "both", "labels": {"reg": r}})
        for r in linear_regs
    ]
    if ridge:
        rows.append(Row("linear alignment_only (ridge)", {"mode": "alignment_only"}))
    return rows


class Runner:
    """Trains rows on one dataset and scores them there and, optionally, on another."""

    def __init__(
        self, q: Encoder, d: Encoder, cache: EmbeddingCache, align_pool: dict[str, str]
    ) -> None:
        self.q, self.d, self.cache, self.align_pool = q, d, cache, align_pool
        self._vectors: dict[tuple[str, AdapterKind], Vectors] = {}

    def vectors(self, ds: Dataset, kind: AdapterKind) -> Vectors:
        key = (ds.name, AdapterKind.HYBRID if kind == AdapterKind.HYBRID else AdapterKind.LINEAR)
        if key not in self._vectors:
            self._vectors[key] = Vectors(ds, self.q, self.d, self.cache, key[1])
        return self._vectors[key]

    def baseline(self, ds: Dataset, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
        vec = self.vectors(ds, AdapterKind.LINEAR)
        ids = sorted(qrels)
        return evaluate_vectors(vec.document_queries(ids), vec.docs, ids, vec.doc_ids, qrels)

    def run(
        self,
        row: Row,
        seed: int,
        train_on: Dataset,
        elsewhere: tuple[Dataset, dict[str, dict[str, int]]] | None,
    ) -> dict[str, Any]:
        cfg = TrainConfig.model_validate({**row.config, "seed": seed})
        pool = {i: t for i, t in self.align_pool.items() if i in train_on.corpus}
        t0 = time.perf_counter()
        res = run_training(train_on, self.q, self.d, self.cache, cfg, align_corpus=pool)
        rec: dict[str, Any] = {
            "row": row.label,
            "reg": row.config.get("labels", {}).get("reg", 0.0),
            "seed": seed,
            "in_domain": res.metrics[res.extra["label"]],
            "best_epoch": res.manifest.training.get("best_epoch"),
            "seconds": time.perf_counter() - t0,
            "align_texts": min(cfg.align_texts, len(pool)) if cfg.mode != "label_only" else 0,
        }
        if elsewhere is not None:
            ds, qrels = elsewhere
            vec = self.vectors(ds, row.kind)
            ids = sorted(qrels)
            z = adapter_forward(res.manifest, res.adapter_tensors, vec.inputs(ids))
            rec["out_of_domain"] = evaluate_vectors(z, vec.docs, ids, vec.doc_ids, qrels)
        return rec


# --------------------------------------------------------------------------- tables


def _mean(runs: list[dict[str, Any]], where: str, metric: str = "ndcg@10") -> float:
    return statistics.fmean(r[where][metric] for r in runs)


def summarise(
    runs: list[dict[str, Any]], base_in: float, base_out: float | None
) -> dict[str, dict[str, Any]]:
    """Per row: seed means of in-domain and out-of-domain nDCG@10 and their deltas."""
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["row"] for r in runs):
        rs = [r for r in runs if r["row"] == label]
        s: dict[str, Any] = {
            "reg": rs[0]["reg"],
            "seeds": [r["seed"] for r in rs],
            "in": _mean(rs, "in_domain"),
            "in_per_seed": [r["in_domain"]["ndcg@10"] for r in rs],
            "best_epoch": [r["best_epoch"] for r in rs],
        }
        s["in_gain"] = s["in"] - base_in
        if base_out is not None and "out_of_domain" in rs[0]:
            s["out"] = _mean(rs, "out_of_domain")
            s["out_per_seed"] = [r["out_of_domain"]["ndcg@10"] for r in rs]
            s["out_delta"] = s["out"] - base_out
        out[label] = s
    hybrid = {k: s for k, s in out.items() if k.startswith("hybrid")}
    ref = next((s for s in hybrid.values() if s["reg"] == 0.0), None)
    if ref is not None and ref["in_gain"] > 0.005:
        for s in hybrid.values():
            s["kept"] = s["in_gain"] / ref["in_gain"]
    return out


def shift_table(summary: dict[str, dict[str, Any]], base_in: float, base_out: float) -> str:
    body = [["document model alone (MiniLM)", "—", f"{base_in:.3f}", "—", "—", f"{base_out:.3f}"]]
    body[0] += ["—", "—"]
    for label, s in summary.items():
        body.append(
            [
                label,
                f"{s['reg']:g}",
                f"{s['in']:.3f}",
                pts(s["in_gain"]),
                f"{s['kept']:.0%}" if "kept" in s else "—",
                f"{s['out']:.3f}",
                pts(s["out_delta"]),
                " / ".join(str(e) for e in s["best_epoch"]),
            ]
        )
    header = [
        "",
        "reg",
        "in-domain nDCG@10",
        "Δ vs MiniLM (pts)",
        "gain kept vs reg=0",
        "out-of-domain nDCG@10",
        "Δ vs MiniLM (pts)",
        "best epoch per seed",
    ]
    return md_table(header, body)


def full_table(summary: dict[str, dict[str, Any]], base: float) -> str:
    body = [["document model alone (MiniLM)", "—", f"{base:.3f}", "—", "—", "—"]]
    for label, s in summary.items():
        body.append(
            [
                label,
                f"{s['reg']:g}",
                f"{s['in']:.3f}",
                pts(s["in_gain"]),
                f"{s['kept']:.0%}" if "kept" in s else "—",
                " / ".join(f"{v:.3f}" for v in s["in_per_seed"]),
            ]
        )
    header = ["", "reg", "nDCG@10", "Δ vs MiniLM (pts)", "gain kept vs reg=0", "per seed"]
    return md_table(header, body)


def choose(
    directions: dict[str, dict[str, dict[str, Any]]],
    full: dict[str, dict[str, Any]] | None,
    max_loss: float = 0.01,
    min_kept: float = 0.9,
) -> tuple[float | None, list[str]]:
    """The strength with the largest mean in-domain gain among those meeting, in every
    direction, out-of-domain loss <= `max_loss` and >= `min_kept` of the reg=0 gain (in-domain
    and, when given, on full SciFact)."""
    regs = sorted(
        {s["reg"] for d in directions.values() for k, s in d.items() if k.startswith("hybrid")}
    )
    verdicts, ok = [], []
    for reg in regs:
        why = []
        gains = []
        for name, summary in [*directions.items(), *([("SciFact", full)] if full else [])]:
            s = next(v for k, v in summary.items() if k.startswith("hybrid") and v["reg"] == reg)
            gains.append(s["in_gain"])
            if "out_delta" in s and s["out_delta"] < -max_loss:
                why.append(f"{name}: out-of-domain {pts(s['out_delta'])} pts")
            if s.get("kept", 1.0) < min_kept:
                why.append(f"{name}: keeps {s['kept']:.0%} of the gain")
        verdicts.append(f"reg={reg:g}: " + ("meets both" if not why else "; ".join(why)))
        if not why:
            ok.append((statistics.fmean(gains), reg))
    return (max(ok)[1] if ok else None), verdicts


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.domain_shift", description=__doc__.split("\n")[0]
    )
    dataset_args(ap, out="reports/domain_shift")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--regs", type=float, nargs="+", default=list(DEFAULT_REGS))
    ap.add_argument("--linear-regs", type=float, nargs="*", default=[0.0, 0.01])
    ap.add_argument("--no-ridge", action="store_true", help="skip the ridge alignment rows")
    ap.add_argument("--kmeans-seed", type=int, default=0)
    ap.add_argument("--one-way", action="store_true", help="train on A only (skip B -> A)")
    ap.add_argument("--no-full", action="store_true", help="skip the full-SciFact hybrid rows")
    ap.add_argument("--allow-encode", action="store_true", help="encode cache misses")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    wall0 = time.perf_counter()
    seeds = list(dict.fromkeys(args.seeds))
    ds = load_beir(args.data)
    q: Encoder = load_encoder(EMBEDDED_QUERY_ENCODER, args.models_dir)
    d: Encoder = load_encoder(EMBEDDED_DOCUMENT_ENCODER, args.models_dir)
    if not args.allow_encode:
        q, d = _CacheOnly(q, 16), _CacheOnly(d, 16)  # type: ignore[assignment]
    cache = EmbeddingCache(args.cache)

    full_vec = Vectors(ds, d, d, cache, AdapterKind.LINEAR)
    labels, objective = spherical_kmeans(full_vec.docs, 2, seed=args.kmeans_seed)
    purity = neighbour_purity(full_vec.docs, labels)
    halves, split_stats = split_halves(ds, full_vec.doc_ids, labels)
    split_stats.update(kmeans_objective=objective, neighbour_purity_at_10=purity)
    pool_ids = {
        doc
        for s in QUALITY_SEEDS
        for doc in sample_ids(ds.corpus, 1000, s)  # what bench.quality's runs encoded
    }
    align_pool = {i: ds.corpus[i] for i in sorted(pool_ids)}
    runner = Runner(q, d, cache, align_pool)
    rows = rows_for(args.regs, args.linear_regs, ridge=not args.no_ridge)

    print(
        f"halves: documents {split_stats['documents']}, queries {split_stats['queries']}, "
        f"straddling queries dropped {split_stats['straddling_dropped']}, 10-NN purity "
        f"{purity:.1%}",
        file=sys.stderr,
        flush=True,
    )
    pairs = [(halves[0], halves[1])] + ([] if args.one_way else [(halves[1], halves[0])])
    directions: dict[str, dict[str, dict[str, Any]]] = {}
    all_runs: dict[str, list[dict[str, Any]]] = {}
    bases: dict[str, dict[str, float]] = {}
    n_runs = len(rows) * len(seeds) * len(pairs) + (
        0 if args.no_full else len(args.regs) * len(seeds)
    )
    done = 0

    def note(name: str, rec: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        ood = rec.get("out_of_domain", {}).get("ndcg@10")
        print(
            f"[{done}/{n_runs}] {name} {rec['row']} seed {rec['seed']}: in-domain "
            f"{rec['in_domain']['ndcg@10']:.3f}"
            + (f", out-of-domain {ood:.3f}" if ood is not None else "")
            + f" ({rec['seconds']:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    for src, dst in pairs:
        name = f"{src.name} -> {dst.name}"
        base_in = runner.baseline(src.ds, src.ds.qrels["test"])["ndcg@10"]
        base_out = runner.baseline(dst.ds, dst.all_qrels)["ndcg@10"]
        bases[name] = {"in_domain": base_in, "out_of_domain": base_out}
        runs = []
        for row in rows:
            for seed in seeds:
                rec = runner.run(row, seed, src.ds, (dst.ds, dst.all_qrels))
                note(name, rec)
                runs.append(rec)
        all_runs[name] = runs
        directions[name] = summarise(runs, base_in, base_out)

    full: dict[str, dict[str, Any]] | None = None
    if not args.no_full:
        base_full = runner.baseline(ds, ds.qrels["test"])["ndcg@10"]
        bases["SciFact"] = {"in_domain": base_full}
        runs = []
        for row in rows[: len(args.regs)]:
            for seed in seeds:
                rec = runner.run(row, seed, ds, None)
                note("SciFact", rec)
                runs.append(rec)
        all_runs["SciFact"] = runs
        full = summarise(runs, base_full, None)

    chosen, verdicts = choose(directions, full)
    md = [f"# {TITLE}\n"]
    md.append(
        f"Spherical k-means (k=2, seed {args.kmeans_seed}, 10 restarts) on the MiniLM document "
        f"vectors of SciFact's {len(ds.corpus)} documents: half A {split_stats['documents']['A']}"
        f" documents, half B {split_stats['documents']['B']}; 10-nearest-neighbour purity "
        f"{purity:.1%} (share of each document's 10 nearest neighbours in its own half). "
        f"Queries per half and split: {split_stats['queries']}; dropped because their positives "
        f"straddle the halves: {split_stats['straddling_dropped']}. In-domain: the training "
        "half's test queries on its own corpus; out-of-domain: all of the other half's queries "
        "(train + test, never seen) on the other half's corpus. nDCG@10, mean of seeds "
        f"{seeds}; Δ in nDCG points against MiniLM's own query vectors on the same queries; "
        "'gain kept' = in-domain gain / the reg=0 hybrid's gain. Linear rows draw their "
        f"identical-text sets from the training half's share of {len(align_pool)} cached "
        "corpus texts (plus its train queries).\n"
    )
    for name, summary in directions.items():
        b = bases[name]
        md.append(f"## Train on {name.split(' -> ')[0]}, out-of-domain = {name.split(' -> ')[1]}\n")
        md.append(shift_table(summary, b["in_domain"], b["out_of_domain"]))
    if full is not None:
        md.append("## Full SciFact: hybrid trained on SciFact train, scored on SciFact test\n")
        md.append(full_table(full, bases["SciFact"]["in_domain"]))
    md.append("## Choice (out-of-domain loss <= 1 point and >= 90% of the reg=0 gain kept)\n")
    md.append("\n".join(f"- {v}" for v in verdicts) + "\n")
    md.append(
        f"\nChosen: reg={chosen:g}\n" if chosen is not None else "\nNo strength meets both.\n"
    )
    text = "\n".join(md)
    print(text)
    meta = {
        "title": TITLE,
        "command": "python -m bench.domain_shift "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": str(args.data),
        "dataset_fingerprint": ds.fingerprint(),
        "seeds": seeds,
        "regs": args.regs,
        "halves": split_stats,
        "baselines": bases,
        "summary": {**directions, **({"SciFact": full} if full else {})},
        "runs": all_runs,
        "chosen_reg": chosen,
        "verdicts": verdicts,
        "cache": {"hits": cache.stats.hits, "encoded": cache.stats.encoded},
        "git_revision": git_revision(),
        "wall_s": time.perf_counter() - wall0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    atomic_write_bytes(args.out.with_suffix(".md"), text.encode())
    print(f"reports: {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}")
    print(f"total wall time: {time.perf_counter() - wall0:.1f}s")
    return 0


def sample_ids(corpus: dict[str, str], n: int, seed: int) -> list[str]:
    """The ids `training.align.sample_texts` picks (same rule), so their texts are cached."""
    keyed = {i: i for i in corpus}
    return sample_texts(keyed, n, seed)


if __name__ == "__main__":
    raise SystemExit(main())
