"""bench.label_free's runs: the scorer (nDCG@10 of MiniLM alone, the teacher and a student on
any subset of SciFact, from cached vectors) and the bench (distil one student from a choice of
queries, score it on SciFact test or across the topic halves, record the row)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import Half, load_encoder, spherical_kmeans, split_halves
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
from training.pseudo import DEFAULT_RULE, PseudoRule, mix_queries, pseudo_queries


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
