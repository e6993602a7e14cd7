"""Gradient training of adapters on cached vectors (the encoders stay frozen).

Two objectives:
- alignment (ERA stage 1): identical texts through both models, loss 1 - cosine;
- labels (ERA stage 2): InfoNCE with temperature over the frozen document vectors, either
  against the whole corpus (`negatives="full"`, exact and cheap for corpora that fit in memory)
  or against ERA's mined hard negatives plus in-batch negatives (`negatives="mined"`).
Label training can pull the weights toward their starting point (`reg`), warms up then decays
the learning rate linearly, early-stops on validation nDCG@10 (or loss) and restores the best
state.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.evaluate import evaluate_vectors


class LabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=60, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    temperature: float = Field(default=0.05, gt=0)
    batch_size: int = Field(default=256, ge=1)
    warmup: float = Field(default=0.1, ge=0, lt=1)
    patience: int = Field(default=5, ge=1, description="epochs without improvement")
    monitor: Literal["ndcg@10", "loss"] = Field(
        default="loss",
        description="early stopping on validation loss (smooth, stable across seeds) or nDCG@10",
    )
    negatives: Literal["full", "mined"] = "full"
    hard_negatives: int = Field(default=5, ge=1)
    mine_depth: int = Field(default=2000, ge=1)
    mine_margin: float = Field(default=0.95, gt=0)
    reg: float = Field(
        default=0.0,
        ge=0,
        description="strength of an L2 pull toward the weights label training starts from "
        "(the hybrid's identity, the alignment fit under `both`), not toward zero: reg x the "
        "summed squared distance is added to every batch's loss (weight_decay, by contrast, "
        "pulls toward zero)",
    )
    seed: int = 0


class AlignConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    batch_size: int = Field(default=256, ge=1)
    seed: int = 0


@dataclass
class LabelSet:
    """Queries (input vectors) with the row indices of their relevant documents."""

    x: np.ndarray
    query_ids: list[str]
    positives: list[list[int]]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    def pairs(self) -> np.ndarray:
        return np.array(
            [(i, j) for i, pos in enumerate(self.positives) for j in pos], dtype=np.int64
        ).reshape(-1, 2)


@dataclass
class TrainOutcome:
    history: list[dict[str, float]]
    best_epoch: int
    best: dict[str, float]
    seconds: float


def _schedule(
    opt: torch.optim.Optimizer, steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warm = int(warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _embed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(module(x), dim=-1)


def pull_term(module: nn.Module, start: dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared distance of the trainable weights from `start`: an adapter that starts somewhere
    good (the document model itself) keeps most of it off the training domain."""
    return sum(((p - start[n]) ** 2).sum() for n, p in module.named_parameters() if p.requires_grad)


def mine_hard_negatives(
    z: torch.Tensor,
    docs: torch.Tensor,
    pairs: np.ndarray,
    positives: list[list[int]],
    k: int,
    depth: int,
    margin: float,
) -> torch.Tensor:
    """ERA's rule: per (query, positive), the top-`k` of the `depth` nearest documents that are
    not positives and score below `margin` x the positive's score (-1 marks a missing slot)."""
    out = torch.full((len(pairs), k), -1, dtype=torch.long)
    depth = min(depth, docs.shape[0])
    for s in range(0, len(pairs), 512):
        chunk = pairs[s : s + 512]
        scores = z[chunk[:, 0]] @ docs.T
        top = scores.topk(depth, dim=1)
        for r, (qi, pj) in enumerate(chunk):
            limit = margin * float(scores[r, pj])
            pos = set(positives[qi])
            picked = [
                int(j)
                for v, j in zip(top.values[r].tolist(), top.indices[r].tolist(), strict=True)
                if j not in pos and v < limit
            ][:k]
            out[s + r, : len(picked)] = torch.tensor(picked, dtype=torch.long)
    return out


def _full_loss(
    z: torch.Tensor,
    docs: torch.Tensor,
    qi: torch.Tensor,
    pj: torch.Tensor,
    pos_mask: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    logits = z @ docs.T / tau
    other = pos_mask[qi].clone()
    other[torch.arange(len(pj)), pj] = False  # each pair: its positive vs all non-positives
    return F.cross_entropy(logits.masked_fill(other, -1e4), pj)


def _mined_loss(
    z: torch.Tensor,
    docs: torch.Tensor,
    qi: torch.Tensor,
    pj: torch.Tensor,
    negs: torch.Tensor,
    pos_mask: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    pos = (z * docs[pj]).sum(-1, keepdim=True)
    hard = torch.einsum("bd,bkd->bk", z, docs[negs.clamp(min=0)]).masked_fill(negs < 0, -1e4)
    inbatch = z @ docs[pj].T  # other pairs' positives are negatives, unless also positive here
    same = pos_mask[qi][:, pj] | torch.eye(len(pj), dtype=torch.bool)
    inbatch = inbatch.masked_fill(same, -1e4)
    logits = torch.cat([pos, hard, inbatch], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(pj), dtype=torch.long))


def train_labels(
    module: nn.Module,
    train: LabelSet,
    docs: np.ndarray,
    doc_ids: list[str],
    cfg: LabelConfig,
    val: LabelSet | None = None,
    log: object | None = None,
) -> TrainOutcome:
    """InfoNCE on (query, positive) pairs against frozen, L2-normalised document vectors."""
    start_time = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = torch.from_numpy(np.ascontiguousarray(docs, dtype=np.float32))
    x = torch.from_numpy(np.ascontiguousarray(train.x, dtype=np.float32))
    pairs = train.pairs()
    if len(pairs) == 0:
        raise ValueError("no (query, positive) pairs to train on")
    pos_mask = torch.zeros(len(train.positives), d.shape[0], dtype=torch.bool)
    pos_mask[pairs[:, 0], pairs[:, 1]] = True
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    negs = None
    if cfg.negatives == "mined":
        with torch.no_grad():
            negs = mine_hard_negatives(
                _embed(module, x),
                d,
                pairs,
                train.positives,
                cfg.hard_negatives,
                cfg.mine_depth,
                cfg.mine_margin,
            )
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    sched = _schedule(opt, cfg.epochs * steps_per_epoch, cfg.warmup)
    p_all = torch.from_numpy(pairs)

    val_pairs = val.pairs() if val is not None else None
    val_mask = None
    val_qrels: dict[str, dict[str, int]] = {}
    if val is not None:
        # qrels are optional on a LabelSet: its positives are the relevant documents then
        val_qrels = val.qrels or {
            qid: {doc_ids[j]: 1 for j in pos}
            for qid, pos in zip(val.query_ids, val.positives, strict=True)
            if pos
        }
    if val is not None and len(val_pairs):
        val_mask = torch.zeros(len(val.positives), d.shape[0], dtype=torch.bool)
        val_mask[val_pairs[:, 0], val_pairs[:, 1]] = True

    def validate() -> dict[str, float]:
        if val is None or val_mask is None:
            return {}
        module.eval()
        with torch.no_grad():
            zv = _embed(module, torch.from_numpy(np.asarray(val.x, dtype=np.float32)))
            vp = torch.from_numpy(val_pairs)
            loss = _full_loss(zv[vp[:, 0]], d, vp[:, 0], vp[:, 1], val_mask, cfg.temperature)
            m = evaluate_vectors(
                zv.numpy(), docs, val.query_ids, doc_ids, val_qrels, metrics=("ndcg@10", "mrr@10")
            )
        module.train()
        return {"val_loss": float(loss), "val_ndcg@10": m["ndcg@10"]}

    history: list[dict[str, float]] = []
    best_state = copy.deepcopy(module.state_dict())
    first = validate()
    best = {"epoch": 0, **first}
    history.append({"epoch": 0, **first})
    bad_epochs = 0
    module.train()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(p_all), generator=gen)
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            qi, pj = p_all[idx, 0], p_all[idx, 1]
            z = _embed(module, x[qi])
            if negs is None:
                loss = _full_loss(z, d, qi, pj, pos_mask, cfg.temperature)
            else:
                loss = _mined_loss(z, d, qi, pj, negs[idx], pos_mask, cfg.temperature)
            if cfg.reg:
                loss = loss + cfg.reg * pull_term(module, start)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "train_loss": total / len(order), **validate()}
        history.append(row)
        if log is not None:
            log(row)  # type: ignore[operator]
        if not row.keys() - {"epoch", "train_loss"}:
            best_state, best = copy.deepcopy(module.state_dict()), row
            continue
        improved = (
            row["val_ndcg@10"] > best.get("val_ndcg@10", -1.0)
            if cfg.monitor == "ndcg@10"
            else row["val_loss"] < best.get("val_loss", math.inf)
        )
        if improved:
            best_state, best, bad_epochs = copy.deepcopy(module.state_dict()), row, 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    return TrainOutcome(history, int(best.get("epoch", 0)), best, time.perf_counter() - start_time)


def train_alignment(
    module: nn.Module, x: np.ndarray, y: np.ndarray, cfg: AlignConfig
) -> TrainOutcome:
    """ERA stage 1 by gradient: the same texts through both models, loss 1 - cosine."""
    start_time = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = F.normalize(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)), dim=-1)
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    history = []
    module.train()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = (1 - (_embed(module, xt[idx]) * yt[idx]).sum(-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch, "align_loss": total / len(order)})
    module.eval()
    return TrainOutcome(history, cfg.epochs, history[-1], time.perf_counter() - start_time)
