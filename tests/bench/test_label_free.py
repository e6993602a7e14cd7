"""bench.label_free's report, every part, from a tiny corpus and a stand-in for distillation
and scoring (the real runs need SciFact, both models and most of an hour): the parts' tables
and the JSON report come out whole, in the documented order, with the documented options."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench import label_free
from training.data import Dataset, Document

WORDS = ["malaria", "mosquito", "parasite", "fever", "tumour", "cell", "gene", "cancer"]


def tiny_dataset() -> Dataset:
    """Eight documents in two topics; each query's positive is in one topic."""
    corpus = {
        f"d{i}": f"Title {i}. {WORDS[i]} study one. {WORDS[i]} finding two." for i in range(8)
    }
    queries = {f"q{i}": f"what about {WORDS[i]}" for i in range(8)}
    qrels = {
        "train": {f"q{i}": {f"d{i}": 1} for i in (0, 1, 4, 5)},
        "test": {f"q{i}": {f"d{i}": 1} for i in (2, 3, 6, 7)},
    }
    return Dataset(name="tiny", corpus=corpus, queries=queries, qrels=qrels, source="test")


def score(*parts: Any) -> float:
    """A stable nDCG-like number in [0.5, 0.8) from what a run was given."""
    return 0.5 + zlib.crc32(repr(parts).encode()) % 300 / 1000


class Scorer:
    def __init__(self, ds: Dataset) -> None:
        self.doc_ids = list(ds.corpus)
        self.small = np.array([[1.0, 0.1 * i] if i < 4 else [0.1 * i, 1.0] for i in range(8)])
        self.small /= np.linalg.norm(self.small, axis=1, keepdims=True)

    def minilm(self, corpus: list[str], qrels: dict[str, Any]) -> float:
        return score("minilm", sorted(corpus), sorted(qrels)) - 0.1

    def teacher(self, corpus: list[str], qrels: dict[str, Any], small_weight: float = 0.0) -> float:
        return score("teacher", sorted(corpus), sorted(qrels), small_weight) + 0.2

    def student(self, out: Any, corpus: list[str], qrels: dict[str, Any]) -> float:
        return score(out.key, sorted(corpus), sorted(qrels))


class FakeBench(label_free.Bench):
    """The real Bench (texts, records, halves, shifts) around stand-in models and distillation."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ds = tiny_dataset()
        self.docs = {i: Document(i, t) for i, t in self.ds.corpus.items()}
        self.cache = SimpleNamespace(stats=SimpleNamespace(hits=3, encoded=5))
        self.scorer = Scorer(self.ds)  # type: ignore[assignment]
        self.runs = []

    def distill(self, corpus: list[str], texts: list[str], seed: int, setting: Any) -> Any:
        return SimpleNamespace(
            key=(sorted(corpus), texts, seed, setting.label),
            stats={
                "seconds": {"train": 0.25},
                "counts": {"queries": len(texts)},
                "agreement": {"held_out": {"document_model": 0.5, "student": 0.75}},
            },
        )


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, dict]:
    monkeypatch.setattr(label_free, "Bench", FakeBench)
    out = tmp_path / "report"
    code = label_free.main(["--data", str(tmp_path), "--out", str(out), *args])
    return (
        code,
        out.with_suffix(".md").read_text(),
        json.loads(out.with_suffix(".json").read_text()),
    )


def test_every_part_renders_its_table_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = ["main", "halves", "rules", "teacher", "sweep"]
    code, md, report = run(
        tmp_path, monkeypatch, "--seeds", "0", "1", "--parts", *parts, "--pulls", "0.1", "0.2"
    )
    assert code == 0
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings == [
        f"# {label_free.TITLE}",
        "## SciFact test",
        "## Domain shift: bench.domain_shift's topic halves",
        "## Pseudo-query rules (one pseudo-query per document; SciFact test and the halves, "
        "in / out of domain Δ; seeds [0])",
        "## The teacher: mpnet alone or fused with MiniLM (train queries' text, defaults, "
        "seeds [0, 1])",
        "## Sweep (seed 0; Δ nDCG@10 points vs MiniLM alone)",
    ]
    assert "| (a) pseudo-queries from the corpus |" in md
    assert "| A->B, train queries |" in md and "| B->A, pseudo-queries |" in md
    assert "| last (default) |" in md and "| 0.5 mpnet + 0.5 MiniLM |" in md
    assert "| pull 0.1, t_T 0.05, t_S 0.05 |" in md and "| pull 0.2, t_T 0.02, t_S 0.02 |" in md
    printed = capsys.readouterr()
    assert md in printed.out and "reports: " in printed.out
    assert "[1] main: source=pseudo, seed=0" in printed.err
    assert report["command"].startswith("python -m bench.label_free --data ")
    assert report["seeds"] == [0, 1] and report["cache"] == {"hits": 3, "encoded": 5}
    assert {r["part"] for r in report["runs"]} == set(parts)
    assert set(report["halves"]) == {"stats", "bases"}
    assert report["minilm"] < report["teacher"]


def test_the_default_parts_are_main_halves_and_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, md, report = run(tmp_path, monkeypatch, "--seeds", "0")
    assert [line for line in md.splitlines() if line.startswith("## ")] == [
        "## SciFact test",
        "## Domain shift: bench.domain_shift's topic halves",
        "## Pseudo-query rules (one pseudo-query per document; SciFact test and the halves, "
        "in / out of domain Δ; seeds [0])",
    ]
    assert {r["part"] for r in report["runs"]} == {"main", "halves", "rules"}
