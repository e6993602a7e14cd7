"""Identical-text alignment: a closed-form ridge fit from query-model to document-model space.

Solves ERA's stage 1 exactly in seconds (the cosine-loss gradient fit lands in the same place
up to scale); a starting point, not a product: on SciFact it is worse than the document
model alone, which is why label training exists.
"""

from __future__ import annotations

import random

import numpy as np

from adapters import AdapterKind, Manifest, ModelInfo
from encoders import Encoder


def model_info(encoder: Encoder) -> ModelInfo:
    s = encoder.spec
    return ModelInfo(
        name=encoder.name,
        dim=encoder.dim,
        revision=s.revision,
        pooling=s.pooling.value,
        prompt_template=s.query_template,
        instruction=s.default_instruction or None,
        max_tokens=encoder.max_tokens,
        engine=encoder.engine,
    )


def sample_texts(texts: dict[str, str], n: int = 1000, seed: int = 0) -> list[str]:
    """ERA's identical-text set: up to `n` corpus texts, a seeded sample by id."""
    ids = sorted(texts)
    if len(ids) > n:
        ids = sorted(random.Random(seed).sample(ids, n))
    return [texts[i] for i in ids]


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Return (weight [out, in], bias [out]) minimising ||x W^T + b - y||^2 + alpha ||W||^2."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ yc)  # [in, out]
    bias = ym - xm @ w
    return w.T.astype(np.float32), bias.astype(np.float32)


def alignment_manifest(
    query_encoder: Encoder,
    document_encoder: Encoder,
    *,
    alpha: float,
    n_texts: int,
    data: str,
    seed: int | None = None,
) -> Manifest:
    return Manifest(
        kind=AdapterKind.LINEAR,
        in_dim=query_encoder.dim,
        out_dim=document_encoder.dim,
        normalize=True,
        query_model=model_info(query_encoder),
        document_model=model_info(document_encoder),
        training={
            "mode": "alignment_only",
            "method": "ridge_closed_form",
            "alpha": alpha,
            "texts": n_texts,
            "data": data,
            "seed": seed,
        },
    )
