"""Rebuild demo/scifact-mini from a BEIR SciFact folder (run once; the output is committed).

Keeps every document cited by a train or test claim plus seeded random distractors, so the
demo is small yet every claim still has its evidence in the index.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scifact", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--distractors", type=int, default=333)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    qrels: dict[str, list[list[str]]] = {}
    for split in ("train", "test"):
        with open(a.scifact / "qrels" / f"{split}.tsv") as f:
            qrels[split] = list(csv.reader(f, delimiter="\t"))[1:]
    relevant = {row[1] for rows in qrels.values() for row in rows}
    with gzip.open(a.scifact / "corpus.jsonl.gz", "rt") as f:
        corpus = [json.loads(line) for line in f]
    others = sorted(d["_id"] for d in corpus if d["_id"] not in relevant)
    keep = relevant | set(random.Random(a.seed).sample(others, a.distractors))
    query_ids = {row[0] for rows in qrels.values() for row in rows}

    (a.out / "qrels").mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(a.out / "corpus.jsonl.gz", "wb", mtime=0) as f:
        for d in corpus:
            if d["_id"] in keep:
                rec = {"_id": d["_id"], "title": d["title"], "text": d["text"]}
                f.write((json.dumps(rec) + "\n").encode())
    with (
        gzip.open(a.scifact / "queries.jsonl.gz", "rt") as src,
        gzip.GzipFile(a.out / "queries.jsonl.gz", "wb", mtime=0) as dst,
    ):
        for line in src:
            q = json.loads(line)
            if q["_id"] in query_ids:
                dst.write((json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n").encode())
    for split, rows in qrels.items():
        with open(a.out / "qrels" / f"{split}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["query-id", "corpus-id", "score"])
            w.writerows(rows)
    print(f"{len(keep)} documents ({len(relevant)} cited), {len(query_ids)} claims")


if __name__ == "__main__":
    main()
