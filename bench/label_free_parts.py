"""bench.label_free's parts, each run and rendered as its markdown section: SciFact test
(main), the topic halves, the pseudo-query rules, the teacher, the sweep."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field

from bench.common import Half, md_table, pts
from bench.label_free_runs import Bench, Setting
from training.pseudo import DEFAULT_RULE, PSEUDO_RULES

SHIFT_HEADER = [
    "direction, trained on",
    "queries",
    "in-domain MiniLM",
    "in Δ (pts)",
    "worst seed",
    "out-of-domain MiniLM",
    "out Δ (pts)",
    "worst seed",
]


def _spread(values: list[float]) -> str:
    """mean ± half the min-max range, as nDCG (3 decimals)."""
    m = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{m:.3f} ± {half:.3f}"


@dataclass
class Parts:
    """What every part shares: the bench, the options, the seeds, MiniLM's and the teacher's
    nDCG@10 on SciFact test, and (for the parts that use them) the topic halves and their
    MiniLM baselines."""

    bench: Bench
    args: argparse.Namespace
    seeds: list[int]
    base: float
    teacher: float
    default: Setting = field(default_factory=Setting)
    halves: list[Half] = field(default_factory=list)
    bases: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        return self.teacher - self.base

    @property
    def directions(self) -> tuple[tuple[Half, Half], tuple[Half, Half]]:
        """(A, B) and (B, A): trained on the first half, shifted to the second."""
        a, b = self.halves
        return (a, b), (b, a)

    def shift_rows(self, setting: Setting, run_seeds: list[int], part: str) -> list[list[str]]:
        """SHIFT_HEADER's rows: each direction trained on queries and on pseudo-queries."""
        body = []
        for src, dst in self.directions:
            key = f"{src.name}->{dst.name}"
            for source in ("queries", "pseudo"):
                recs = [self.bench.shift(src, dst, source, sd, setting, part) for sd in run_seeds]
                din = [r["in"] - self.bases[key]["in"] for r in recs]
                dout = [r["out"] - self.bases[key]["out"] for r in recs]
                body.append(
                    [
                        f"{key}, {'train queries' if source == 'queries' else 'pseudo-queries'}",
                        str(recs[0]["queries"]),
                        f"{self.bases[key]['in']:.3f}",
                        pts(statistics.fmean(din)),
                        f"{min(din) * 100:+.1f}",
                        f"{self.bases[key]['out']:.3f}",
                        pts(statistics.fmean(dout)),
                        f"{min(dout) * 100:+.1f}",
                    ]
                )
        return body

    def main(self) -> list[str]:
        """SciFact test after training on pseudo-queries, the train queries' text, or both."""
        md: list[str] = []
        rows = []
        for source in ("pseudo", "queries", "mixed"):
            recs = [self.bench.scifact(source, seed, self.default, "main") for seed in self.seeds]
            vals = [r["ndcg@10"] for r in recs]
            gain = statistics.fmean(vals) - self.base
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
                    f"{gain / self.margin:.0%}",
                    f"{statistics.fmean(a['document_model'] for a in agree):.3f} → "
                    f"{statistics.fmean(a['student'] for a in agree):.3f}",
                    f"{statistics.fmean(r['train_s'] for r in recs):.1f}",
                ]
            )
        body = [
            [
                "MiniLM alone (the index's own query vectors)",
                "",
                f"{self.base:.3f}",
                "",
                "",
                "",
                "",
            ],
            [
                "teacher: mpnet on both sides (the ceiling)",
                "",
                f"{self.teacher:.3f}",
                pts(self.margin),
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
        return md

    def shift(self) -> list[str]:
        """Trained on one topic half, scored in and out of domain."""
        md: list[str] = []
        a, b = self.halves
        md.append("## Domain shift: bench.domain_shift's topic halves\n")
        md.append(
            f"Half A {len(a.ds.corpus)} documents, half B {len(b.ds.corpus)}. "
            "In-domain: the training half's test queries on its own corpus; out-of-domain: all "
            "of the other half's queries on the other half's corpus; Δ against MiniLM alone on "
            f"the same queries, mean of seeds {self.seeds} and the worst seed.\n"
        )
        md.append(md_table(SHIFT_HEADER, self.shift_rows(self.default, self.seeds, "halves")))
        return md

    def rules(self) -> list[str]:
        """Which pseudo-query rule, on SciFact test and both halves."""
        md: list[str] = []
        a, b = self.halves
        body = []
        for rule in PSEUDO_RULES:
            recs = [
                self.bench.scifact(f"pseudo:{rule}", sd, self.default, "rules")
                for sd in self.args.rule_seeds
            ]
            vals = [r["ndcg@10"] for r in recs]
            row = [
                rule + (" (default)" if rule == DEFAULT_RULE else ""),
                _spread(vals),
                pts(statistics.fmean(vals) - self.base),
                f"{(statistics.fmean(vals) - self.base) / self.margin:.0%}",
            ]
            for src, dst in self.directions:
                key = f"{src.name}->{dst.name}"
                shifted = [
                    self.bench.shift(src, dst, f"pseudo:{rule}", sd, self.default, "rules")
                    for sd in self.args.rule_seeds
                ]
                din = statistics.fmean(r["in"] for r in shifted) - self.bases[key]["in"]
                dout = statistics.fmean(r["out"] for r in shifted) - self.bases[key]["out"]
                row.append(f"{pts(din)} / {pts(dout)}")
            body.append(row)
        md.append(
            "## Pseudo-query rules (one pseudo-query per document; SciFact test and the halves, "
            f"in / out of domain Δ; seeds {self.args.rule_seeds})\n"
        )
        md.append(
            md_table(
                [
                    "rule (cut to 20 words)",
                    "SciFact nDCG@10",
                    "Δ (pts)",
                    "margin",
                    f"{a.name}→{b.name} in / out",
                    f"{b.name}→{a.name} in / out",
                ],
                body,
            )
        )
        return md

    def fused_teacher(self) -> list[str]:
        """mpnet alone against teachers fused with MiniLM's cosine."""
        md: list[str] = []
        a, b = self.halves
        scorer = self.bench.scorer
        body = []
        for w in [0.0, *self.args.teacher_small_weights]:
            st = Setting(small_weight=w)
            sf = statistics.fmean(
                self.bench.scifact("queries", sd, st, "teacher")["ndcg@10"] for sd in self.seeds
            )
            row = [
                "mpnet alone (the rule)" if w == 0 else f"{1 - w:g} mpnet + {w:g} MiniLM",
                f"{scorer.teacher(scorer.doc_ids, self.bench.ds.qrels['test'], w):.3f}",
                f"{sf:.3f}",
                pts(sf - self.base),
            ]
            for src, dst in self.directions:
                key = f"{src.name}->{dst.name}"
                t_in = scorer.teacher(list(src.ds.corpus), src.ds.qrels["test"], w)
                recs = [
                    self.bench.shift(src, dst, "queries", sd, st, "teacher") for sd in self.seeds
                ]
                din = statistics.fmean(r["in"] for r in recs) - self.bases[key]["in"]
                dout = statistics.fmean(r["out"] for r in recs) - self.bases[key]["out"]
                row.append(f"{pts(t_in - self.bases[key]['in'])}: {pts(din)} / {pts(dout)}")
            body.append(row)
        md.append(
            "## The teacher: mpnet alone or fused with MiniLM (train queries' text, defaults, "
            f"seeds {self.seeds})\n"
        )
        md.append(
            md_table(
                [
                    "teacher",
                    "teacher nDCG@10 (SciFact test)",
                    "student nDCG@10",
                    "student Δ (pts)",
                    f"{a.name}→{b.name} teacher Δ in: student in / out",
                    f"{b.name}→{a.name} teacher Δ in: student in / out",
                ],
                body,
            )
        )
        return md

    def sweep(self) -> list[str]:
        """Pull and temperatures, one seed, on SciFact test and both halves."""
        md: list[str] = []
        sd = self.seeds[:1]
        settings = [Setting(pull=p) for p in self.args.pulls] + [
            Setting(t_teacher=float(tt), t_student=float(ts))
            for tt, ts in (pair.split(":") for pair in self.args.temperatures)
        ]
        body = []
        for st in dict.fromkeys(settings):
            row = [st.label]
            for source in ("queries", "pseudo"):
                r = self.bench.scifact(source, sd[0], st, "sweep")
                row.append(pts(r["ndcg@10"] - self.base))
            for src, dst in self.directions:
                key = f"{src.name}->{dst.name}"
                for source in ("queries", "pseudo"):
                    r = self.bench.shift(src, dst, source, sd[0], st, "sweep")
                    base = self.bases[key]
                    row.append(f"{pts(r['in'] - base['in'])} / {pts(r['out'] - base['out'])}")
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
        return md
