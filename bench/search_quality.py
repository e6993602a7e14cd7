"""nDCG@10 and Recall@100 of a running service's `/search` on a BEIR split: what a tenant's
users get, through the whole path (encoder, the tenant's adapter, Qdrant).

    .venv/bin/python -m bench.search_quality --data demo/scifact-mini --split test \\
        --url http://127.0.0.1:8080 [--key TENANT_KEY]

The collection must hold the BEIR corpus with its ids as `doc_id` (`querylift index` does).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx

from training.data import load_beir
from training.evaluate import evaluate_run


def search_run(
    url: str, key: str | None, queries: dict[str, str], k: int
) -> tuple[dict[str, dict[str, float]], float]:
    """{query id: {doc id: score}} from /search, and the seconds it took."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    run: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for qid, text in queries.items():
            r = client.post("/search", json={"query": text, "top_k": k, "with_payload": False})
            r.raise_for_status()
            run[qid] = {h["id"]: h["score"] for h in r.json()["results"]}
    return run, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="BEIR folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--key", default=None, help="tenant API key (none in development mode)")
    ap.add_argument("--label", default="/search")
    ap.add_argument("--save-run", type=Path, help="write the run (JSON) to compare later")
    ap.add_argument(
        "--compare", type=Path, help="a saved run: how many queries' top-10 ids are the same"
    )
    args = ap.parse_args()
    ds = load_beir(args.data)
    qrels = ds.qrels[args.split]
    queries = {q: ds.queries[q] for q in qrels}
    run, seconds = search_run(args.url, args.key, queries, k=100)
    scores = evaluate_run(run, qrels, ["ndcg@10", "recall@100"])
    print(
        f"{args.label}: nDCG@10 {scores['ndcg@10']:.3f}, Recall@100 {scores['recall@100']:.3f} "
        f"({len(queries)} {args.split} queries, {seconds:.1f} s)"
    )
    if args.save_run:
        args.save_run.write_text(json.dumps(run))
    if args.compare:
        same, scores_off = top10_agreement(run, json.loads(args.compare.read_text()))
        print(
            f"top-10 ids in the same order as {args.compare}: {same} of {len(run)} queries; "
            f"largest score difference {scores_off:.2e}"
        )


def top10_agreement(
    run: dict[str, dict[str, float]], other: dict[str, dict[str, float]]
) -> tuple[int, float]:
    """Queries whose top-10 ids agree in order, and the largest score gap among them."""
    same, worst = 0, 0.0
    for qid, hits in run.items():
        mine = sorted(hits.items(), key=lambda kv: -kv[1])[:10]
        theirs = sorted(other.get(qid, {}).items(), key=lambda kv: -kv[1])[:10]
        if [d for d, _ in mine] == [d for d, _ in theirs]:
            same += 1
            worst = max([worst, *(abs(a - b) for (_, a), (_, b) in zip(mine, theirs, strict=True))])
    return same, worst


if __name__ == "__main__":
    main()
