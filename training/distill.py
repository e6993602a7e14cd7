"""Adapters without labels: distil the big model's ranking of the small index's candidates.

For each unlabelled query (real traffic, or pseudo-queries cut from the corpus: training/
pseudo.py) the small index proposes its top-`candidates` documents and the big model, on both
sides, scores them: the teacher (adapters/teacher.py, the rule the service's label-free gate
applies too). The student is the hybrid adapter ([big query; small query] -> small space,
starting at the identity on the small part, i.e. at what the index does today), trained full
batch with AdamW on KL(teacher softmax at t_T || student softmax at t_S) over those candidates,
plus the pull toward its start (training/trainer.py's `reg` term), which is what keeps it from
losing out of domain.

The big model encodes only the queries and the candidate documents (through the embedding
cache like every other vector), never a large corpus whole. Held-out queries (never trained
on) report the student's agreement with the teacher next to the document model's own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from adapters import AdapterKind, Manifest
from adapters.checkpoint import Adapter, parse_checkpoint, save_checkpoint, serialize
from adapters.teacher import CANDIDATES, agreement, student_scores, teacher_scores
from adapters.teacher import candidates as small_candidates
from encoders import Encoder, InputKind
from training.align import model_info
from training.cache import EmbeddingCache
from training.data import Document
from training.modules import build_module, export_tensors, manifest_params
from training.pseudo import DEFAULT_RULE, MAX_WORDS, PseudoRule, pseudo_queries
from training.trainer import pull_term

log = logging.getLogger(__name__)

# Chosen on SciFact by bench/label_free.py (bench/README.md, "Adapters without labels").
DEFAULT_STEPS = 200
DEFAULT_LR = 1e-3
DEFAULT_TEMPERATURE = 0.05  # teacher and student alike: beat 0.01 and 0.02
# the weakest pull that kept every out-of-domain loss (both topic halves, real and pseudo
# queries, 3 seeds) within 0.5 nDCG@10 points; 0.02 gained more in domain but lost 0.9
DEFAULT_PULL = 0.2
HOLDOUT = 0.1  # share of the queries kept out of training to report agreement on
_CHUNK_BYTES = 256 << 20  # candidate vectors per chunk of queries (float32)
_KEEP_BYTES = 1 << 30  # up to this much, every query's candidate vectors are gathered once


@dataclass
class DistillOutcome:
    """The distilled hybrid adapter as `querylift train` writes it, and what the run saw."""

    manifest: Manifest
    tensors: dict[str, np.ndarray] = field(repr=False)
    tensor_bytes: bytes = field(repr=False)
    manifest_bytes: bytes = field(repr=False)
    adapter: Adapter
    stats: dict[str, Any]
    history: list[dict[str, float]]

    @property
    def checkpoint(self) -> tuple[bytes, bytes]:
        """(tensor bytes, manifest bytes), e.g. for `AdapterStore.put(*outcome.checkpoint)`."""
        return self.tensor_bytes, self.manifest_bytes

    def save(self, path: Path) -> Adapter:
        """Write the checkpoint folder (adapter.safetensors + manifest.json), atomically."""
        return save_checkpoint(path, self.manifest, self.tensors)


def _encode(
    cache: EmbeddingCache | None, encoder: Encoder, texts: list[str], kind: InputKind
) -> np.ndarray:
    """float32 vectors through the cache when there is one (each text encoded once ever)."""
    if cache is not None:
        return cache.encode(encoder, texts, kind, desc=f"{kind}s ({encoder.name})")
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    rows = [
        encoder.encode(texts[s : s + 256], kind, truncate=True).vectors
        for s in range(0, len(texts), 256)
    ]
    return np.concatenate(rows).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def corpus_fingerprint(corpus: Sequence[Document]) -> str:
    """sha256 (16 hex digits) of the (id, text) pairs, independent of their order."""
    h = hashlib.sha256()
    for doc_id, text in sorted((d.id, d.text) for d in corpus):
        h.update(doc_id.encode() + b"\0" + text.encode() + b"\n")
    return h.hexdigest()[:16]


def split_holdout(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): a seeded `share` held out, none below 5 queries (too few
    to spare one), always at least one to train on."""
    rows = list(range(n))
    held = round(share * n) if n >= 5 else 0
    if share > 0 and n >= 5:
        held = max(1, held)
    held = min(held, n - 1) if n else 0
    random.Random(seed).shuffle(rows)
    return sorted(rows[held:]), sorted(rows[:held])


class _Candidates:
    """Each query's small-index candidates and the vectors both sides score them with."""

    def __init__(
        self,
        query_encoder: Encoder,
        document_encoder: Encoder,
        corpus: Sequence[Document],
        queries: list[str],
        k: int,
        cache: EmbeddingCache | None,
        small_weight: float = 0.0,
    ) -> None:
        q, d = query_encoder, document_encoder
        self.small_weight = small_weight
        self.docs_small = _unit(_encode(cache, d, [doc.text for doc in corpus], "document"))
        self.q_big = _encode(cache, q, queries, "query")
        self.q_small = _encode(cache, d, queries, "query")
        self.index = small_candidates(self.q_small, self.docs_small, k)  # (n, k)
        # the big model sees only the documents some query's candidates hold
        self.unique, inverse = np.unique(self.index, return_inverse=True)
        self.local = inverse.reshape(self.index.shape)
        self.docs_big = _encode(cache, q, [corpus[i].text for i in self.unique], "document")
        self.teacher = self.teacher_scores(np.arange(len(queries)))

    def teacher_scores(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(self.index[rows].shape, np.float32)
        step = max(1, _CHUNK_BYTES // (4 * self.index.shape[1] * self.docs_big.shape[1]))
        for s in range(0, len(rows), step):
            r = rows[s : s + step]
            out[s : s + step] = teacher_scores(self.q_big[r], self.docs_big[self.local[r]])
        if self.small_weight:  # a fused teacher: ranks better, teaches less (bench/README.md)
            small = student_scores(self.q_small[rows], self.docs_small[self.index[rows]])
            out = (1 - self.small_weight) * out + self.small_weight * small
        return out

    def inputs(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """The hybrid's input: [big query vector; small query vector]."""
        return np.concatenate([self.q_big[rows], self.q_small[rows]], axis=1)

    def agreement(self, z: np.ndarray, rows: list[int]) -> float:
        """Mean nDCG@10 of `z`'s ranking of the candidates against the teacher's."""
        if not rows:
            return math.nan
        cand = self.docs_small[self.index[rows]]
        return float(agreement(student_scores(z, cand), self.teacher[rows]).mean())


class _StudentBatch:
    """The training queries' inputs, candidate vectors and teacher targets, in chunks of
    queries: the candidate vectors (queries x k x dim) are gathered once when they fit in
    `_KEEP_BYTES`, else chunk by chunk at every step (bounded memory on a large corpus)."""

    def __init__(
        self, x: np.ndarray, docs: np.ndarray, index: np.ndarray, target: torch.Tensor
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.docs = torch.from_numpy(docs)
        self.index = torch.from_numpy(index.astype(np.int64))
        self.target = target
        self.n, k = index.shape
        self.step = max(1, _CHUNK_BYTES // (4 * k * docs.shape[1]))
        keep = 4 * self.n * k * docs.shape[1] <= _KEEP_BYTES
        self.kept = [self._gather(s) for s in range(0, self.n, self.step)] if keep else None

    def _gather(self, s: int) -> torch.Tensor:
        return self.docs[self.index[s : s + self.step]]

    def kl(self, module: torch.nn.Module, t_student: float, backward: bool) -> float:
        """Mean KL(teacher || student) over all rows, computed (and back-propagated) chunk
        by chunk: one full-batch gradient."""
        total = 0.0
        for c, s in enumerate(range(0, self.n, self.step)):
            cand = self.kept[c] if self.kept is not None else self._gather(s)
            z = F.normalize(module(self.x[s : s + self.step]), dim=-1)
            logq = F.log_softmax(torch.einsum("bd,bkd->bk", z, cand) / t_student, dim=-1)
            p = self.target[s : s + self.step]
            kl = (p * (torch.log(p.clamp_min(1e-30)) - logq)).sum() / self.n
            if backward:
                kl.backward()
            total += float(kl.detach())
        return total


def distill_adapter(
    query_encoder: Encoder,
    document_encoder: Encoder,
    corpus: Sequence[Document],
    queries: Sequence[str],
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    teacher_temperature: float = DEFAULT_TEMPERATURE,
    student_temperature: float = DEFAULT_TEMPERATURE,
    pull: float = DEFAULT_PULL,
    teacher_small_weight: float = 0.0,
    cache: EmbeddingCache | None = None,
    candidates: int = CANDIDATES,
    lr: float = DEFAULT_LR,
    holdout: float = HOLDOUT,
    query_source: str | None = None,
    pseudo_rule: PseudoRule = DEFAULT_RULE,
    data: str | None = None,
    name: str | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> DistillOutcome:
    """Distil the query encoder's ranking (on both sides) into a hybrid adapter over the
    document encoder's index of `corpus`, from unlabelled `queries`.

    With no queries, one pseudo-query per document is cut from `corpus` (`pseudo_rule`).
    `query_source` only labels the manifest ("queries", "log", "mixed"...; default "queries",
    "pseudo" when none were given). `pull` is the L2 pull toward the start (the document
    model itself); `holdout` of the queries is never trained on and reports agreement.
    `teacher_small_weight` > 0 fuses the document model's cosine into the teacher's (for
    bench.label_free: a fused teacher ranks better but teaches less; 0 is the rule).
    """
    t0 = time.perf_counter()
    if not corpus:
        raise ValueError("an empty corpus: nothing to distil over")
    for label, v in (
        ("teacher_temperature", teacher_temperature),
        ("student_temperature", student_temperature),
        ("lr", lr),
    ):
        if not v > 0:
            raise ValueError(f"{label} must be positive, got {v}")
    if not 0 <= teacher_small_weight < 1:
        raise ValueError(f"teacher_small_weight must be in [0, 1), got {teacher_small_weight}")
    if steps < 0 or pull < 0 or candidates < 1 or not 0 <= holdout < 1:
        raise ValueError("steps and pull must be >= 0, candidates >= 1, 0 <= holdout < 1")
    q, d = query_encoder, document_encoder
    texts = list(dict.fromkeys(t.strip() for t in queries if t.strip()))
    if not texts:
        texts = pseudo_queries(corpus, pseudo_rule, MAX_WORDS, seed)
        query_source = "pseudo"
    source = query_source or "queries"
    enc0 = cache.stats.encode_seconds if cache is not None else 0.0

    k = min(candidates, len(corpus))
    cand = _Candidates(q, d, corpus, texts, k, cache, teacher_small_weight)
    t_ready = time.perf_counter()
    train_rows, held_rows = split_holdout(len(texts), holdout, seed)

    params = manifest_params(AdapterKind.HYBRID, {"query_dim": q.dim, "document_dim": d.dim})
    torch.manual_seed(seed)
    module = build_module(AdapterKind.HYBRID, q.dim + d.dim, d.dim, params, seed=seed)
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    target = F.softmax(torch.from_numpy(cand.teacher[train_rows]) / teacher_temperature, dim=-1)
    batch = _StudentBatch(cand.inputs(train_rows), cand.docs_small, cand.index[train_rows], target)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    history: list[dict[str, float]] = []
    module.train()
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        last = step == steps  # the final pass only measures
        with torch.set_grad_enabled(not last):
            kl = batch.kl(module, student_temperature, backward=not last)
            reg = pull_term(module, start) if pull else torch.zeros(())
            if pull and not last:
                (pull * reg).backward()
        history.append({"step": step, "kl": kl, "pull": float(reg.detach()) * pull})
        if progress is not None:
            progress(history[-1])
        if not last:
            opt.step()
    module.eval()
    tensors = export_tensors(module)
    train_s = time.perf_counter() - t_ready

    with torch.no_grad():
        z = F.normalize(module(torch.from_numpy(cand.inputs(np.arange(len(texts))))), dim=-1)
    z = z.numpy()
    agree = {
        split: {
            "document_model": cand.agreement(cand.q_small[rows], rows),
            "student": cand.agreement(z[rows], rows),
            "teacher": 1.0,  # the ceiling: agreement is measured against the teacher itself
        }
        for split, rows in (("held_out", held_rows), ("train", train_rows))
    }
    counts = {
        "corpus_documents": len(corpus),
        "queries": len(texts),
        "train_queries": len(train_rows),
        "held_out_queries": len(held_rows),
        "candidates_per_query": k,
        "candidate_documents": len(cand.unique),  # the only documents the big model encoded
    }
    manifest = Manifest(
        kind=AdapterKind.HYBRID,
        in_dim=q.dim + d.dim,
        out_dim=d.dim,
        normalize=True,
        params=params,
        query_model=model_info(q),
        document_model=model_info(d),
        name=name,
        training={
            "mode": "distill",
            "teacher": {
                "model": q.name,
                "scores": "query model on both sides, cosine"
                + (
                    f", fused {1 - teacher_small_weight:g}:{teacher_small_weight:g} with the "
                    "document model's"
                    if teacher_small_weight
                    else ""
                ),
                "candidates": f"top {k} of the document model's index",
            },
            "teacher_temperature": teacher_temperature,
            "student_temperature": student_temperature,
            "pull": pull,
            "steps": steps,
            "lr": lr,
            "query_source": source,
            **(
                {"pseudo_rule": pseudo_rule, "pseudo_max_words": MAX_WORDS}
                if source in ("pseudo", "mixed")
                else {}
            ),
            "counts": counts,
            "holdout": holdout,
            "seed": seed,
            "data": {"source": data, "corpus_fingerprint": corpus_fingerprint(corpus)},
        },
        evaluation={
            "label_free": True,
            "metric": "agreement@10 with the teacher over the candidates",
            "split": "held_out",
            "queries": len(held_rows),
            "agreement": agree["held_out"],
        },
    )
    tensor_bytes, manifest_bytes = serialize(manifest, tensors)
    adapter = parse_checkpoint(tensor_bytes, manifest_bytes)
    stats = {
        "agreement": agree,
        "counts": counts,
        "seconds": {
            "vectors": t_ready - t0,
            "encode": (cache.stats.encode_seconds - enc0) if cache is not None else None,
            "train": train_s,
            "total": time.perf_counter() - t0,
        },
        "query_source": source,
        "final_kl": history[-1]["kl"],
        "start_kl": history[0]["kl"],
    }
    log.info("distilled %s: %s", adapter.id, stats)
    return DistillOutcome(
        adapter.manifest, tensors, tensor_bytes, manifest_bytes, adapter, stats, history
    )
