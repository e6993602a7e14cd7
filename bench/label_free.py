"""Adapters without labels: distil mpnet's ranking into the hybrid, scored with SciFact's qrels.

    python -m bench.label_free --data ../shared/data/scifact [--seeds 0 1 2] \
        [--parts main halves rules sweep] [--out reports/label_free]

The student (training/distill.py: the hybrid adapter trained on KL to the teacher over the
MiniLM index's top-100 candidates, with the pull toward its start) never sees a qrel; the
qrels only score it afterwards, against MiniLM alone (the index's own query vectors) and
against the teacher itself (mpnet on both sides, exact search over the whole corpus: the
ceiling). "Margin reached" = (student - MiniLM) / (teacher - MiniLM).

Parts:
- main: SciFact test after training on (a) pseudo-queries cut from the corpus, (b) the train
  queries' text (their qrels unused), (c) both mixed; mean and spread over the seeds (a seed
  picks the held-out queries; the random-sentence rule also draws with it).
- halves: bench.domain_shift's two k-means topic halves: trained on one half (its train
  queries' text, or pseudo-queries from its corpus), scored on that half's test queries
  (in-domain) and on all of the other half's queries over the other half's corpus
  (out-of-domain), each against MiniLM alone.
- rules: which pseudo-query rule (title, first / last / random sentence, 20 words).
- sweep: pull and temperatures, one seed, on SciFact test and both halves.
- teacher: a teacher fused with MiniLM's cosine (it ranks better than mpnet alone) against
  mpnet alone: the teacher's own nDCG and what a student learns from it, at the defaults.

Vectors come from the embedding cache (var/cache): bench.quality filled the MiniLM and
mpnet query vectors; the first run of this bench adds mpnet's document vectors of SciFact
(the teacher's ceiling needs all of them; about 45 minutes on 2 CPU cores) and the
pseudo-queries' vectors. Writes OUT.json and OUT.md; prints the tables.
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

from adapters.fsutil import atomic_write_bytes
from bench.common import (
    Half,
    dataset_args,
    load_encoder,
    md_table,
    pts,
    spherical_kmeans,
    split_halves,
)
from encoders import Encoder
from service.ops.settings import EMBEDDED_DOCUMENT_ENCODER, EMBEDDED_QUERY_ENCODER
from training.cache import EmbeddingCache
from training.data import Document, load_beir, read_corpus
from training.distill import (
    DEFAULT_PULL,
    DEFAULT_TEMPERATURE,
    DistillOutcome,
    distill_adapter,
)
from training.evaluate import evaluate_vectors
from training.pipeline import git_revision
from training.pseudo import DEFAULT_RULE, PSEUDO_RULES, PseudoRule, mix_queries, pseudo_queries

log = logging.getLogger("bench.label_free")

TITLE = "Adapters without labels: distilling mpnet's ranking into the hybrid (SciFact)"
SWEEP_PULLS = (0.0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 1.0)
SWEEP_TEMPERATURES = ((0.01, 0.01), (0.02, 0.02), (0.02, 0.05), (0.1, 0.1))  # (t_T, t_S)


class Scorer:
    """nDCG@10 of MiniLM alone, the teacher and a student on any subset of SciFact, from the
    cached vectors of the whole corpus and of every query."""

    def __init__(self, ds: Any, q: Encoder, d: Encoder, cache: EmbeddingCache) -> None:
        self.ds = ds
        self.doc_ids = list(ds.corpus)
        self.row = {i: r for r, i in enumerate(self.doc_ids)}
        texts = [ds.corpus[i] for i in self.doc_ids]
        self.small = cache.encode(d, texts, "document", desc="documents (MiniLM)")
        self.big = cache.encode(q, texts, "document", desc="documents (mpnet, the teacher)")
        self.qids = sorted(ds.queries)
        qtexts = [ds.queries[i] for i in self.qids]
        self.q_big = cache.encode(q, qtexts, "query")
        self.q_small = cache.encode(d, qtexts, "query")
        self.qrow = {i: r for r, i in enumerate(self.qids)}

    def _score(
        self, z: np.ndarray, docs: np.ndarray, ids: list[str], corpus: list[str], qrels: Any
    ) -> float:
        rows = [self.row[i] for i in corpus]
        return evaluate_vectors(z, docs[rows], ids, corpus, qrels, metrics=("ndcg@10",))["ndcg@10"]

    def minilm(self, corpus: list[str], qrels: dict[str, dict[str, int]]) -> float:
        ids = sorted(qrels)
        z = self.q_small[[self.qrow[i] for i in ids]]
        return self._score(z, self.small, ids, corpus, qrels)

    def teacher(
        self, corpus: list[str], qrels: dict[str, dict[str, int]], small_weight: float = 0.0
    ) -> float:
        """The teacher's own nDCG@10 (exact search over `corpus`); fused with MiniLM's cosine
        at `small_weight` as [sqrt(1-w) big; sqrt(w) small] vectors (unit: their dot product
        is the fused score)."""
        ids = sorted(qrels)
        r = [self.qrow[i] for i in ids]
        a, b = np.sqrt(1 - small_weight), np.sqrt(small_weight)
        z = np.concatenate([a * self.q_big[r], b * self.q_small[r]], axis=1)
        docs = np.concatenate([a * self.big, b * self.small], axis=1)
        return self._score(z, docs, ids, corpus, qrels)

    def student(
        self, out: DistillOutcome, corpus: list[str], qrels: dict[str, dict[str, int]]
    ) -> float:
        ids = sorted(qrels)
        r = [self.qrow[i] for i in ids]
        z = out.adapter.apply(np.concatenate([self.q_big[r], self.q_small[r]], axis=1))
        return self._score(z, self.small, ids, corpus, qrels)


@dataclass(frozen=True)
class Setting:
    """Distillation knobs one row uses."""

    pull: float = DEFAULT_PULL
    t_teacher: float = DEFAULT_TEMPERATURE
    t_student: float = DEFAULT_TEMPERATURE
    small_weight: float = 0.0  # > 0: the teacher fuses MiniLM's cosine in (the teacher part)

    @property
    def label(self) -> str:
        fused = f", teacher fused {self.small_weight:g} MiniLM" if self.small_weight else ""
        return f"pull {self.pull:g}, t_T {self.t_teacher:g}, t_S {self.t_student:g}{fused}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ds = load_beir(args.data)
        self.docs = {doc.id: doc for doc in read_corpus(args.data)}  # with their titles
        self.q = load_encoder(EMBEDDED_QUERY_ENCODER, args.models_dir)
        self.d = load_encoder(EMBEDDED_DOCUMENT_ENCODER, args.models_dir)
        self.cache = EmbeddingCache(args.cache)
        self.scorer = Scorer(self.ds, self.q, self.d, self.cache)
        self.runs: list[dict[str, Any]] = []

    def texts(self, source: str, corpus: list[str], qids: list[str], seed: int) -> list[str]:
        docs = [self.docs[i] for i in corpus]
        rule: PseudoRule = DEFAULT_RULE
        if source.startswith("pseudo:"):
            rule = source.split(":", 1)[1]  # type: ignore[assignment]
        if source.startswith("pseudo"):
            return pseudo_queries(docs, rule, seed=seed)
        real = [self.ds.queries[i] for i in qids]
        if source == "queries":
            return real
        if source == "mixed":
            return mix_queries(real, pseudo_queries(docs, rule, seed=seed), seed)
        raise ValueError(source)

    def distill(
        self, corpus: list[str], texts: list[str], seed: int, setting: Setting
    ) -> DistillOutcome:
        docs: list[Document] = [self.docs[i] for i in corpus]
        return distill_adapter(
            self.q,
            self.d,
            docs,
            texts,
            seed=seed,
            steps=self.args.steps,
            teacher_temperature=setting.t_teacher,
            student_temperature=setting.t_student,
            pull=setting.pull,
            teacher_small_weight=setting.small_weight,
            cache=self.cache,
        )

    def record(self, part: str, rec: dict[str, Any]) -> dict[str, Any]:
        rec = {"part": part, **rec}
        self.runs.append(rec)
        shown = {k: v for k, v in rec.items() if k not in ("part", "agreement")}
        line = ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
        print(f"[{len(self.runs)}] {part}: {line}", file=sys.stderr, flush=True)
        return rec

    # ------------------------------------------------------------------ SciFact test

    def scifact(self, source: str, seed: int, setting: Setting, part: str) -> dict[str, Any]:
        corpus = self.scorer.doc_ids
        train_q = sorted(self.ds.qrels["train"])
        out = self.distill(corpus, self.texts(source, corpus, train_q, seed), seed, setting)
        return self.record(
            part,
            {
                "source": source,
                "seed": seed,
                "setting": setting.label,
                "ndcg@10": self.scorer.student(out, corpus, self.ds.qrels["test"]),
                "train_s": out.stats["seconds"]["train"],
                "queries": out.stats["counts"]["queries"],
                "agreement": out.stats["agreement"]["held_out"],
            },
        )

    # ------------------------------------------------------------------ the halves

    def halves(self) -> list[Half]:
        labels, _ = spherical_kmeans(self.scorer.small, 2, seed=self.args.kmeans_seed)
        halves, stats = split_halves(self.ds, self.scorer.doc_ids, labels)
        self.halves_stats = stats
        return halves

    def shift(
        self, src: Half, dst: Half, source: str, seed: int, setting: Setting, part: str
    ) -> dict[str, Any]:
        corpus = list(src.ds.corpus)
        train_q = sorted(src.ds.qrels["train"])
        out = self.distill(corpus, self.texts(source, corpus, train_q, seed), seed, setting)
        return self.record(
            part,
            {
                "direction": f"{src.name}->{dst.name}",
                "source": source,
                "seed": seed,
                "setting": setting.label,
                "in": self.scorer.student(out, corpus, src.ds.qrels["test"]),
                "out": self.scorer.student(out, list(dst.ds.corpus), dst.all_qrels),
                "train_s": out.stats["seconds"]["train"],
                "queries": out.stats["counts"]["queries"],
                "agreement": out.stats["agreement"]["held_out"],
            },
        )

    def shift_bases(self, halves: list[Half]) -> dict[str, dict[str, float]]:
        a, b = halves
        out = {}
        for src, dst in ((a, b), (b, a)):
            out[f"{src.name}->{dst.name}"] = {
                "in": self.scorer.minilm(list(src.ds.corpus), src.ds.qrels["test"]),
                "out": self.scorer.minilm(list(dst.ds.corpus), dst.all_qrels),
                "teacher_in": self.scorer.teacher(list(src.ds.corpus), src.ds.qrels["test"]),
            }
        return out


def _spread(values: list[float]) -> str:
    """mean ± half the min-max range, as nDCG (3 decimals)."""
    m = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{m:.3f} ± {half:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.label_free", description=__doc__.split("\n")[0]
    )
    dataset_args(ap, out="reports/label_free")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--parts",
        nargs="+",
        default=["main", "halves", "rules"],
        choices=["main", "halves", "rules", "sweep", "teacher"],
    )
    ap.add_argument(
        "--teacher-small-weights",
        type=float,
        nargs="+",
        default=[0.5],
        help="teacher part: MiniLM's share of a fused teacher's cosine",
    )
    ap.add_argument("--rule-seeds", type=int, nargs="+", default=[0], help="rules part")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--pulls", type=float, nargs="*", default=list(SWEEP_PULLS))
    ap.add_argument(
        "--temperatures",
        nargs="*",
        default=[f"{t}:{s}" for t, s in SWEEP_TEMPERATURES],
        help="sweep: t_T:t_S pairs (at the default pull)",
    )
    ap.add_argument("--kmeans-seed", type=int, default=0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    wall0 = time.perf_counter()
    seeds = list(dict.fromkeys(args.seeds))
    b = Bench(args)
    s = b.scorer
    test = b.ds.qrels["test"]
    base = s.minilm(s.doc_ids, test)
    teacher = s.teacher(s.doc_ids, test)
    margin = teacher - base
    md = [f"# {TITLE}\n"]
    md.append(
        f"nDCG@10 on SciFact test ({len(test)} queries, {len(s.doc_ids)} documents). MiniLM "
        f"alone {base:.3f}; the teacher (mpnet on both sides, exact search) {teacher:.3f}, a "
        f"margin of {pts(margin)} points. Defaults: {Setting().label}, {args.steps} steps, "
        f"pseudo-query rule `{DEFAULT_RULE}`. ± is half the min-max range over seeds {seeds}.\n"
    )
    meta: dict[str, Any] = {"minilm": base, "teacher": teacher}
    default = Setting()

    if "main" in args.parts:
        rows = []
        for source in ("pseudo", "queries", "mixed"):
            recs = [b.scifact(source, seed, default, "main") for seed in seeds]
            vals = [r["ndcg@10"] for r in recs]
            gain = statistics.fmean(vals) - base
            agree = [r["agreement"] for r in recs]
            rows.append(
                [
                    {
                        "pseudo": "(a) pseudo-queries from the corpus",
                        "queries": "(b) the train queries' text (no qrels)",
                        "mixed": "(c) (b) + as many pseudo-queries",
                    }[source],
                    str(recs[0]["queries"]),
                    _spread(vals),
                    pts(gain),
                    f"{gain / margin:.0%}",
                    f"{statistics.fmean(a['document_model'] for a in agree):.3f} → "
                    f"{statistics.fmean(a['student'] for a in agree):.3f}",
                    f"{statistics.fmean(r['train_s'] for r in recs):.1f}",
                ]
            )
        body = [
            ["MiniLM alone (the index's own query vectors)", "", f"{base:.3f}", "", "", "", ""],
            [
                "teacher: mpnet on both sides (the ceiling)",
                "",
                f"{teacher:.3f}",
                pts(margin),
                "100%",
                "1.000",
                "",
            ],
            *rows,
        ]
        md.append("## SciFact test\n")
        md.append(
            md_table(
                [
                    "trained on",
                    "queries",
                    "nDCG@10",
                    "Δ vs MiniLM (pts)",
                    "margin reached",
                    "held-out agreement (MiniLM → student)",
                    "training s",
                ],
                body,
            )
        )

    halves: list[Half] = []
    bases: dict[str, dict[str, float]] = {}
    if {"halves", "sweep", "rules", "teacher"} & set(args.parts):
        halves = b.halves()
        bases = b.shift_bases(halves)
        meta["halves"] = {"stats": b.halves_stats, "bases": bases}

    def shift_rows(setting: Setting, run_seeds: list[int], part: str) -> list[list[str]]:
        body = []
        for src, dst in ((halves[0], halves[1]), (halves[1], halves[0])):
            key = f"{src.name}->{dst.name}"
            for source in ("queries", "pseudo"):
                recs = [b.shift(src, dst, source, sd, setting, part) for sd in run_seeds]
                din = [r["in"] - bases[key]["in"] for r in recs]
                dout = [r["out"] - bases[key]["out"] for r in recs]
                body.append(
                    [
                        f"{key}, {'train queries' if source == 'queries' else 'pseudo-queries'}",
                        str(recs[0]["queries"]),
                        f"{bases[key]['in']:.3f}",
                        pts(statistics.fmean(din)),
                        f"{min(din) * 100:+.1f}",
                        f"{bases[key]['out']:.3f}",
                        pts(statistics.fmean(dout)),
                        f"{min(dout) * 100:+.1f}",
                    ]
                )
        return body

    header = [
        "direction, trained on",
        "queries",
        "in-domain MiniLM",
        "in Δ (pts)",
        "worst seed",
        "out-of-domain MiniLM",
        "out Δ (pts)",
        "worst seed",
    ]
    if "halves" in args.parts:
        md.append("## Domain shift: bench.domain_shift's topic halves\n")
        md.append(
            f"Half A {len(halves[0].ds.corpus)} documents, half B {len(halves[1].ds.corpus)}. "
            "In-domain: the training half's test queries on its own corpus; out-of-domain: all "
            "of the other half's queries on the other half's corpus; Δ against MiniLM alone on "
            f"the same queries, mean of seeds {seeds} and the worst seed.\n"
        )
        md.append(md_table(header, shift_rows(default, seeds, "halves")))

    if "rules" in args.parts:
        body = []
        for rule in PSEUDO_RULES:
            recs = [b.scifact(f"pseudo:{rule}", sd, default, "rules") for sd in args.rule_seeds]
            vals = [r["ndcg@10"] for r in recs]
            row = [
                rule + (" (default)" if rule == DEFAULT_RULE else ""),
                _spread(vals),
                pts(statistics.fmean(vals) - base),
                f"{(statistics.fmean(vals) - base) / margin:.0%}",
            ]
            for src, dst in ((halves[0], halves[1]), (halves[1], halves[0])):
                key = f"{src.name}->{dst.name}"
                shifted = [
                    b.shift(src, dst, f"pseudo:{rule}", sd, default, "rules")
                    for sd in args.rule_seeds
                ]
                din = statistics.fmean(r["in"] for r in shifted) - bases[key]["in"]
                dout = statistics.fmean(r["out"] for r in shifted) - bases[key]["out"]
                row.append(f"{pts(din)} / {pts(dout)}")
            body.append(row)
        md.append(
            "## Pseudo-query rules (one pseudo-query per document; SciFact test and the halves, "
            f"in / out of domain Δ; seeds {args.rule_seeds})\n"
        )
        md.append(
            md_table(
                [
                    "rule (cut to 20 words)",
                    "SciFact nDCG@10",
                    "Δ (pts)",
                    "margin",
                    f"{halves[0].name}→{halves[1].name} in / out",
                    f"{halves[1].name}→{halves[0].name} in / out",
                ],
                body,
            )
        )

    if "teacher" in args.parts:
        body = []
        for w in [0.0, *args.teacher_small_weights]:
            st = Setting(small_weight=w)
            sf = statistics.fmean(
                b.scifact("queries", sd, st, "teacher")["ndcg@10"] for sd in seeds
            )
            row = [
                "mpnet alone (the rule)" if w == 0 else f"{1 - w:g} mpnet + {w:g} MiniLM",
                f"{b.scorer.teacher(b.scorer.doc_ids, b.ds.qrels['test'], w):.3f}",
                f"{sf:.3f}",
                pts(sf - base),
            ]
            for src, dst in ((halves[0], halves[1]), (halves[1], halves[0])):
                key = f"{src.name}->{dst.name}"
                t_in = b.scorer.teacher(list(src.ds.corpus), src.ds.qrels["test"], w)
                recs = [b.shift(src, dst, "queries", sd, st, "teacher") for sd in seeds]
                din = statistics.fmean(r["in"] for r in recs) - bases[key]["in"]
                dout = statistics.fmean(r["out"] for r in recs) - bases[key]["out"]
                row.append(f"{pts(t_in - bases[key]['in'])}: {pts(din)} / {pts(dout)}")
            body.append(row)
        md.append(
            "## The teacher: mpnet alone or fused with MiniLM (train queries' text, defaults, "
            f"seeds {seeds})\n"
        )
        md.append(
            md_table(
                [
                    "teacher",
                    "teacher nDCG@10 (SciFact test)",
                    "student nDCG@10",
                    "student Δ (pts)",
                    f"{halves[0].name}→{halves[1].name} teacher Δ in: student in / out",
                    f"{halves[1].name}→{halves[0].name} teacher Δ in: student in / out",
                ],
                body,
            )
        )

    if "sweep" in args.parts:
        sd = seeds[:1]
        settings = [Setting(pull=p) for p in args.pulls] + [
            Setting(t_teacher=float(tt), t_student=float(ts))
            for tt, ts in (pair.split(":") for pair in args.temperatures)
        ]
        body = []
        for st in dict.fromkeys(settings):
            row = [st.label]
            for source in ("queries", "pseudo"):
                r = b.scifact(source, sd[0], st, "sweep")
                row.append(pts(r["ndcg@10"] - base))
            for src, dst in ((halves[0], halves[1]), (halves[1], halves[0])):
                key = f"{src.name}->{dst.name}"
                for source in ("queries", "pseudo"):
                    r = b.shift(src, dst, source, sd[0], st, "sweep")
                    row.append(
                        f"{pts(r['in'] - bases[key]['in'])} / {pts(r['out'] - bases[key]['out'])}"
                    )
            body.append(row)
        md.append(f"## Sweep (seed {sd[0]}; Δ nDCG@10 points vs MiniLM alone)\n")
        md.append(
            md_table(
                [
                    "setting",
                    "SciFact, train queries",
                    "SciFact, pseudo",
                    "A→B queries in / out",
                    "A→B pseudo in / out",
                    "B→A queries in / out",
                    "B→A pseudo in / out",
                ],
                body,
            )
        )

    text = "\n".join(md)
    print(text)
    report = {
        "title": TITLE,
        "command": "python -m bench.label_free " + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": str(args.data),
        "dataset_fingerprint": b.ds.fingerprint(),
        "seeds": seeds,
        "defaults": {"setting": default.label, "steps": args.steps, "rule": DEFAULT_RULE},
        **meta,
        "runs": b.runs,
        "cache": {"hits": b.cache.stats.hits, "encoded": b.cache.stats.encoded},
        "git_revision": git_revision(),
        "wall_s": time.perf_counter() - wall0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out.with_suffix(".json"), json.dumps(report, indent=2).encode())
    atomic_write_bytes(args.out.with_suffix(".md"), text.encode())
    print(f"reports: {args.out.with_suffix('.json')}, {args.out.with_suffix('.md')}")
    print(f"total wall time: {time.perf_counter() - wall0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
