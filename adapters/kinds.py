"""Adapter architectures as pure functions over numpy, so the service needs no autograd.

Each kind declares its tensors (name -> shape from the manifest) and how to apply them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from adapters.manifest import AdapterKind, Manifest

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class KindSpec:
    shapes: Callable[[Manifest], dict[str, tuple[int, ...]]]
    forward: Callable[[Tensors, np.ndarray], np.ndarray]


def _linear_shapes(m: Manifest) -> dict[str, tuple[int, ...]]:
    return {"weight": (m.out_dim, m.in_dim), "bias": (m.out_dim,)}


def _linear_forward(t: Tensors, x: np.ndarray) -> np.ndarray:
    return x @ t["weight"].T + t["bias"]


KINDS: dict[AdapterKind, KindSpec] = {
    AdapterKind.LINEAR: KindSpec(_linear_shapes, _linear_forward),
    AdapterKind.IDENTITY: KindSpec(lambda m: {}, lambda t, x: x),
}


def forward(manifest: Manifest, tensors: Tensors, x: np.ndarray) -> np.ndarray:
    """Apply the adapter to rows of `x` (float32), L2-normalising when the manifest says so."""
    y = KINDS[manifest.kind].forward(tensors, x).astype(np.float32, copy=False)
    if manifest.normalize:
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        y = y / np.maximum(norms, 1e-12)
    return y
