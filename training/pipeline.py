"""From a dataset and two encoders to a checkpoint the service accepts (ERA: align, then train).

Modes: `alignment_only` (identical texts, closed-form ridge or cosine-loss gradient fit),
`label_only` (InfoNCE from the kind's default start: identity where one exists), `both` (ERA:
alignment as the starting point, then labels). The hybrid kind starts at the document model's
own query vectors ([q; d] -> d) and can only learn to add what the big model knows.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters import AdapterKind, Manifest
from adapters.checkpoint import Adapter, save_checkpoint
from adapters.compat import compatibility_problems
from adapters.kinds import forward as adapter_forward
from encoders import Encoder
from training.align import model_info, ridge_fit, sample_texts
from training.cache import EmbeddingCache
from training.data import DataError, Dataset, make_splits
from training.evaluate import METRICS, evaluate_vectors, mean_scores, vector_scores
from training.modules import build_module, export_tensors, init_tensors, manifest_params
from training.trainer import AlignConfig, LabelConfig, LabelSet, train_alignment, train_labels

log = logging.getLogger(__name__)

Mode = Literal["alignment_only", "label_only", "both"]

# `labels.reg` when the config does not set it. The hybrid starts at the document model itself,
# which holds up on collections the labels never covered; pulling toward that start trades a
# little in-domain gain for most of the out-of-domain loss (bench/domain_shift.py, README).
# The other kinds start at a ridge fit or a random init: no better off-domain, so no pull.
DEFAULT_REG: dict[AdapterKind, float] = {AdapterKind.HYBRID: 0.02}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = "both"
    kind: AdapterKind = AdapterKind.LINEAR
    alignment: Literal["ridge", "cosine"] = "ridge"
    align_texts: int = Field(default=1000, ge=1, description="corpus texts for alignment")
    ridge_alpha: float = Field(default=0.1, ge=0)
    align_queries: bool = Field(
        default=True,
        description="add the training queries' texts (no labels) to the identical-text set",
    )
    refit: bool = Field(
        default=True,
        description="after early stopping picks the epoch count, retrain on train + val",
    )
    hidden: int = Field(default=2048, ge=1, description="mlp hidden size")
    rank: int = Field(default=32, ge=1, description="lowrank rank")
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    seed: int = 0
    labels: LabelConfig = Field(default_factory=LabelConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)

    @model_validator(mode="after")
    def _kind_default_reg(self) -> TrainConfig:
        """An unset `labels.reg` becomes the kind's default (DEFAULT_REG); an explicit one,
        0 included, is kept."""
        if "reg" not in self.labels.model_fields_set:
            reg = DEFAULT_REG.get(self.kind, 0.0)
            self.labels = self.labels.model_copy(update={"reg": reg})
        return self


@dataclass
class TrainResult:
    adapter_tensors: dict[str, np.ndarray]
    manifest: Manifest
    metrics: dict[str, dict[str, float]]  # row label -> metric -> value (test split)
    history: list[dict[str, float]]
    timings: dict[str, float]
    splits: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Adapter:
        return save_checkpoint(path, self.manifest, self.adapter_tensors)


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Vectors:
    """The cached vectors a run needs, computed once through the embedding cache."""

    def __init__(
        self,
        ds: Dataset,
        query_encoder: Encoder,
        document_encoder: Encoder,
        cache: EmbeddingCache,
        kind: AdapterKind,
    ) -> None:
        self.ds = ds
        self.q = query_encoder
        self.d = document_encoder
        self.cache = cache
        self.kind = kind
        self.doc_ids = list(ds.corpus)
        self.docs = cache.encode(
            document_encoder,
            [ds.corpus[i] for i in self.doc_ids],
            "document",
            desc=f"documents ({document_encoder.name})",
        )
        self._row = {doc_id: i for i, doc_id in enumerate(self.doc_ids)}

    def inputs(self, query_ids: list[str]) -> np.ndarray:
        """Adapter inputs for queries: the query model's vectors ([q; d] for hybrid)."""
        texts = [self.ds.queries[i] for i in query_ids]
        x = self.cache.encode(self.q, texts, "query", desc=f"queries ({self.q.name})")
        if self.kind == AdapterKind.HYBRID:
            xd = self.cache.encode(self.d, texts, "query", desc=f"queries ({self.d.name})")
            x = np.concatenate([x, xd], axis=1)
        return x

    def document_queries(self, query_ids: list[str]) -> np.ndarray:
        texts = [self.ds.queries[i] for i in query_ids]
        return self.cache.encode(self.d, texts, "query", desc=f"queries ({self.d.name})")

    def label_set(self, qrels: dict[str, dict[str, int]]) -> LabelSet:
        ids = sorted(qrels)
        positives = [[self._row[doc] for doc, r in qrels[q].items() if r > 0] for q in ids]
        return LabelSet(self.inputs(ids), ids, positives, qrels)


def _dims(kind: AdapterKind, q: Encoder, d: Encoder) -> tuple[int, dict[str, Any]]:
    if kind == AdapterKind.HYBRID:
        return q.dim + d.dim, {"query_dim": q.dim, "document_dim": d.dim}
    return q.dim, {}


def run_training(
    ds: Dataset,
    query_encoder: Encoder,
    document_encoder: Encoder,
    cache: EmbeddingCache,
    cfg: TrainConfig,
    progress: Any = None,
    align_corpus: dict[str, str] | None = None,
) -> TrainResult:
    """Train one adapter on `ds` and score it on the test split.

    `align_corpus` replaces `ds.corpus` as the pool the identical-text alignment set is sampled
    from (e.g. texts already in the embedding cache, so a benchmark on a corpus subset encodes
    nothing new).
    """
    kind, q, d = cfg.kind, query_encoder, document_encoder
    if kind == AdapterKind.IDENTITY:
        raise ValueError("the identity kind has nothing to train")
    if kind == AdapterKind.HYBRID and cfg.mode != "label_only":
        raise ValueError("a hybrid adapter starts at the document model itself: use label_only")
    if cfg.mode != "alignment_only" and not ds.labelled:
        raise DataError(f"{ds.source}: no labels (qrels or pairs); only alignment_only can run")
    t0 = time.perf_counter()
    enc0 = cache.stats.encode_seconds
    timings: dict[str, float] = {}
    vec = Vectors(ds, q, d, cache, kind)
    splits = make_splits(ds, seed=cfg.seed, val_fraction=cfg.val_fraction) if ds.labelled else {}
    in_dim, kind_params = _dims(kind, q, d)
    params = manifest_params(
        kind,
        {
            **kind_params,
            **({"hidden": cfg.hidden} if kind == AdapterKind.MLP else {}),
            **({"rank": cfg.rank} if kind == AdapterKind.LOWRANK else {}),
        },
    )

    # --- starting point -----------------------------------------------------------------
    base = None
    history: list[dict[str, float]] = []
    init = None
    if cfg.mode in ("alignment_only", "both"):
        texts = sample_texts(align_corpus or ds.corpus, cfg.align_texts, cfg.seed)
        if cfg.align_queries and splits:
            texts += [ds.queries[i] for i in sorted(splits["train"])]
        xa = cache.encode(q, texts, "document", desc=f"alignment texts ({q.name})")
        ya = cache.encode(d, texts, "document", desc=f"alignment texts ({d.name})")
        # queries are short and are encoded as queries at serving time: align them as such
        if cfg.align_queries and splits:
            n_docs = len(texts) - len(splits["train"])
            qt = texts[n_docs:]
            xa = np.concatenate([xa[:n_docs], cache.encode(q, qt, "query")])
            ya = np.concatenate([ya[:n_docs], cache.encode(d, qt, "query")])
        t_align = time.perf_counter()
        if cfg.alignment == "ridge" and kind in (AdapterKind.LINEAR, AdapterKind.LOWRANK):
            base = ridge_fit(xa, ya, alpha=cfg.ridge_alpha)
            init = init_tensors(kind, in_dim, d.dim, params, base=base, seed=cfg.seed)
        else:
            module = build_module(kind, in_dim, d.dim, params, seed=cfg.seed)
            out = train_alignment(module, xa, ya, cfg.align.model_copy(update={"seed": cfg.seed}))
            history += [{"epoch": r["epoch"], "align_loss": r["align_loss"]} for r in out.history]
            init = export_tensors(module)
        timings["align_s"] = time.perf_counter() - t_align
    elif kind in (AdapterKind.LINEAR, AdapterKind.LOWRANK) and in_dim == d.dim:
        eye = (np.eye(d.dim, dtype=np.float32), np.zeros(d.dim, dtype=np.float32))
        init = init_tensors(kind, in_dim, d.dim, params, base=eye, seed=cfg.seed)
    elif kind == AdapterKind.LOWRANK:
        raise ValueError("lowrank between different dims needs a base map: use mode both")
    module = build_module(kind, in_dim, d.dim, params, init, seed=cfg.seed)

    # --- labels -------------------------------------------------------------------------
    label_outcome = None
    if cfg.mode in ("label_only", "both"):
        train_set = vec.label_set(splits["train"])
        val_set = vec.label_set(splits["val"])
        label_cfg = cfg.labels.model_copy(update={"seed": cfg.seed})
        start_tensors = export_tensors(module)
        label_outcome = train_labels(
            module, train_set, vec.docs, vec.doc_ids, label_cfg, val=val_set, log=progress
        )
        history += label_outcome.history
        timings["label_train_s"] = label_outcome.seconds
        if cfg.refit and label_outcome.best_epoch > 0:
            # the validation split chose how long to train; now learn from its labels too
            module = build_module(kind, in_dim, d.dim, params, start_tensors, seed=cfg.seed)
            both = vec.label_set({**splits["train"], **splits["val"]})
            epochs = label_outcome.best_epoch
            refit = train_labels(
                module, both, vec.docs, vec.doc_ids, label_cfg.model_copy(update={"epochs": epochs})
            )
            timings["label_train_s"] += refit.seconds
    tensors = export_tensors(module)

    # --- evaluation (test split) --------------------------------------------------------
    metrics: dict[str, dict[str, float]] = {}
    if splits:
        test = splits["test"]
        test_ids = sorted(test)
        metrics[f"{d.name} alone"] = evaluate_vectors(
            vec.document_queries(test_ids), vec.docs, test_ids, vec.doc_ids, test
        )
    manifest = Manifest(
        kind=kind,
        in_dim=in_dim,
        out_dim=d.dim,
        normalize=True,
        params=params,
        query_model=model_info(q),
        document_model=model_info(d),
        training={
            "mode": cfg.mode,
            "config": cfg.model_dump(mode="json"),
            "data": {
                "source": ds.source,
                "name": ds.name,
                "fingerprint": ds.fingerprint(),
                "splits": {k: len(v) for k, v in splits.items()},
                "seed": cfg.seed,
            },
            "best_epoch": label_outcome.best_epoch if label_outcome else None,
            "git_revision": git_revision(),
        },
    )
    label = f"{q.name} -> {d.name} {kind.value} {cfg.mode}"
    if splits:
        zt = adapter_forward(manifest, tensors, vec.inputs(test_ids))
        metrics[label] = evaluate_vectors(zt, vec.docs, test_ids, vec.doc_ids, test)
        manifest = manifest.model_copy(
            update={
                "evaluation": {
                    "split": "test",
                    "queries": len(test_ids),
                    "metrics": metrics[label],
                    "baseline": {"name": f"{d.name} alone", "metrics": metrics[f"{d.name} alone"]},
                }
            }
        )
    timings["encode_s"] = cache.stats.encode_seconds - enc0
    timings["total_s"] = time.perf_counter() - t0
    return TrainResult(
        tensors,
        manifest,
        metrics,
        history,
        timings,
        {k: len(v) for k, v in splits.items()},
        {"label": label},
    )


def check_encoders(adapter: Adapter, query_encoder: Encoder, document_encoder: Encoder) -> None:
    """Refuse to evaluate a checkpoint that the service would refuse to serve with these
    encoders: the service's own rule (adapters/compat.py), the same reasons."""
    problems = compatibility_problems(adapter, query_encoder, document_encoder)
    if problems:
        raise ValueError(f"checkpoint {adapter.id} does not fit: " + "; ".join(problems))


def adapter_scores(
    ds: Dataset,
    adapter: Adapter | None,
    query_encoder: Encoder,
    document_encoder: Encoder,
    cache: EmbeddingCache,
    qrels: dict[str, dict[str, int]],
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, float]]:
    """{metric: {query id: score}} of `adapter` (None: the document model's own query vectors)
    by exact search over the cached document vectors.

    The one scoring path of `querylift eval`: its table (`evaluate_adapter`, the means) and
    its quality gate (per-query nDCG@10 for the paired bootstrap) cannot score differently.
    """
    kind = adapter.manifest.kind if adapter else AdapterKind.LINEAR
    if adapter is not None:  # before encoding anything: a misfit is refused, never scored
        check_encoders(adapter, query_encoder, document_encoder)
    vec = Vectors(ds, query_encoder, document_encoder, cache, kind)
    ids = sorted(qrels)
    z = vec.document_queries(ids) if adapter is None else adapter.apply(vec.inputs(ids))
    return vector_scores(z, vec.docs, ids, vec.doc_ids, qrels, metrics)


def evaluate_adapter(
    ds: Dataset,
    adapter: Adapter | None,
    query_encoder: Encoder,
    document_encoder: Encoder,
    cache: EmbeddingCache,
    qrels: dict[str, dict[str, int]],
) -> dict[str, float]:
    """Metrics of `adapter` (None = the document model's own query vectors) on `qrels`."""
    return mean_scores(adapter_scores(ds, adapter, query_encoder, document_encoder, cache, qrels))
