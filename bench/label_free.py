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

Here: the options and the report; bench/label_free_runs.py: the scorer and one distil-and-score
run; bench/label_free_parts.py: each part's runs and table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from adapters.fsutil import atomic_write_bytes
from bench.common import dataset_args, pts
from bench.label_free_parts import Parts
from bench.label_free_runs import Bench, Setting
from training.pipeline import git_revision
from training.pseudo import DEFAULT_RULE

TITLE = "Adapters without labels: distilling mpnet's ranking into the hybrid (SciFact)"
SWEEP_PULLS = (0.0, 0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.3, 1.0)
SWEEP_TEMPERATURES = ((0.01, 0.01), (0.02, 0.02), (0.02, 0.05), (0.1, 0.1))  # (t_T, t_S)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
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
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    wall0 = time.perf_counter()
    seeds = list(dict.fromkeys(args.seeds))
    b = Bench(args)
    s = b.scorer
    test = b.ds.qrels["test"]
    parts = Parts(b, args, seeds, s.minilm(s.doc_ids, test), s.teacher(s.doc_ids, test))
    md = [f"# {TITLE}\n"]
    md.append(
        f"nDCG@10 on SciFact test ({len(test)} queries, {len(s.doc_ids)} documents). MiniLM "
        f"alone {parts.base:.3f}; the teacher (mpnet on both sides, exact search) "
        f"{parts.teacher:.3f}, a margin of {pts(parts.margin)} points. Defaults: "
        f"{Setting().label}, {args.steps} steps, pseudo-query rule `{DEFAULT_RULE}`. ± is half "
        f"the min-max range over seeds {seeds}.\n"
    )
    meta: dict[str, Any] = {"minilm": parts.base, "teacher": parts.teacher}
    if "main" in args.parts:
        md += parts.main()
    if {"halves", "sweep", "rules", "teacher"} & set(args.parts):
        parts.halves = b.halves()
        parts.bases = b.shift_bases(parts.halves)
        meta["halves"] = {"stats": b.halves_stats, "bases": parts.bases}
    if "halves" in args.parts:
        md += parts.shift()
    if "rules" in args.parts:
        md += parts.rules()
    if "teacher" in args.parts:
        md += parts.fused_teacher()
    if "sweep" in args.parts:
        md += parts.sweep()

    text = "\n".join(md)
    print(text)
    report = {
        "title": TITLE,
        "command": "python -m bench.label_free " + " ".join(sys.argv[1:] if argv is None else argv),
        "dataset": str(args.data),
        "dataset_fingerprint": b.ds.fingerprint(),
        "seeds": seeds,
        "defaults": {"setting": parts.default.label, "steps": args.steps, "rule": DEFAULT_RULE},
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
