"""Adapter architectures as pure functions over numpy, so the service needs no autograd.

Each kind declares its tensors (name -> shape from the manifest) and how to apply them:

- linear:  y = x W^T + b                                   weight [out, in], bias [out]
- identity: y = x                                           (no tensors)
- mlp:     y = act(x W1^T + b1) W2^T + b2                   w1 [hidden, in], b1 [hidden],
                                                            w2 [out, hidden], b2 [out]
- lowrank: y = x W^T + b + (x D^T) U^T                      weight [out, in], bias [out],
                                                            down [rank, in], up [out, rank]
- hybrid:  y = [q; d] W^T + b, in = query_dim + document_dim   weight [out, in], bias [out]

All are followed by L2 normalisation when the manifest says so. training/modules.py holds
the torch twins of these, with the same tensor names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from adapters.manifest import AdapterKind, Manifest

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class KindSpec:
    shapes: Callable[[Manifest], dict[str, tuple[int, ...]]]
    forward: Callable[[Manifest, Tensors, np.ndarray], np.ndarray]


# -- erf / gelu without scipy -----------------------------------------------------------------
# erf on [0, ERF_CUT] as piecewise Chebyshev interpolants built at import time from math.erf
# (a few hundred scalar calls); beyond ERF_CUT, erf(x) == 1 in double precision (erfc(6) is
# about 2e-17). Accurate to ~1e-15, so gelu matches torch's exact (erf) gelu to float32
# rounding.
_ERF_CUT = 6.0
_ERF_PIECES = 24
_ERF_DEGREE = 16


def _erf_tables() -> np.ndarray:
    """Chebyshev coefficients, [degree + 1, pieces] (one row per degree: cheap gathers)."""
    width = _ERF_CUT / _ERF_PIECES
    k = np.arange(_ERF_DEGREE + 1)
    nodes = np.cos(np.pi * (k + 0.5) / (_ERF_DEGREE + 1))  # Chebyshev points on [-1, 1]
    coeffs = np.empty((_ERF_PIECES, _ERF_DEGREE + 1))
    for i in range(_ERF_PIECES):
        lo = i * width
        values = np.array([math.erf(lo + (t + 1.0) * width / 2.0) for t in nodes])
        coeffs[i] = np.polynomial.chebyshev.chebfit(nodes, values, _ERF_DEGREE)
    return np.ascontiguousarray(coeffs.T)


_ERF_COEFFS = _erf_tables()


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float64 (numpy only)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.nan_to_num(np.abs(x)), _ERF_CUT)  # NaN: any piece, put back below
    width = _ERF_CUT / _ERF_PIECES
    piece = np.minimum((a / width).astype(np.intp), _ERF_PIECES - 1)
    t = (a - piece * width) * (2.0 / width) - 1.0  # local variable in [-1, 1]
    t2 = 2.0 * t
    # Clenshaw recurrence, vectorised over elements
    b1 = np.take(_ERF_COEFFS[_ERF_DEGREE], piece)
    b2 = np.zeros_like(t)
    for j in range(_ERF_DEGREE - 1, 0, -1):
        nb = t2 * b1
        nb -= b2
        nb += np.take(_ERF_COEFFS[j], piece)
        b1, b2 = nb, b1
    y = t * b1 - b2 + np.take(_ERF_COEFFS[0], piece)
    y = np.where(np.abs(x) >= _ERF_CUT, 1.0, y)
    return np.where(np.isnan(x), np.nan, np.copysign(y, x))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact gelu, x * Phi(x), as torch.nn.functional.gelu(approximate="none")."""
    x64 = np.asarray(x, dtype=np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0)))).astype(np.float32)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0).astype(np.float32, copy=False)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"gelu": gelu, "relu": relu}


# -- kinds ------------------------------------------------------------------------------------
def _linear_shapes(m: Manifest) -> dict[str, tuple[int, ...]]:
    return {"weight": (m.out_dim, m.in_dim), "bias": (m.out_dim,)}


def _linear_forward(m: Manifest, t: Tensors, x: np.ndarray) -> np.ndarray:
    return x @ t["weight"].T + t["bias"]


def _mlp_shapes(m: Manifest) -> dict[str, tuple[int, ...]]:
    h = int(m.resolved_params["hidden"])
    return {"w1": (h, m.in_dim), "b1": (h,), "w2": (m.out_dim, h), "b2": (m.out_dim,)}


def _mlp_forward(m: Manifest, t: Tensors, x: np.ndarray) -> np.ndarray:
    act = ACTIVATIONS[m.resolved_params["activation"]]
    h = act(x @ t["w1"].T + t["b1"])
    return h @ t["w2"].T + t["b2"]


def _lowrank_shapes(m: Manifest) -> dict[str, tuple[int, ...]]:
    r = int(m.resolved_params["rank"])
    return {
        "weight": (m.out_dim, m.in_dim),
        "bias": (m.out_dim,),
        "down": (r, m.in_dim),
        "up": (m.out_dim, r),
    }


def _lowrank_forward(m: Manifest, t: Tensors, x: np.ndarray) -> np.ndarray:
    return x @ t["weight"].T + t["bias"] + (x @ t["down"].T) @ t["up"].T


KINDS: dict[AdapterKind, KindSpec] = {
    AdapterKind.LINEAR: KindSpec(_linear_shapes, _linear_forward),
    AdapterKind.IDENTITY: KindSpec(lambda m: {}, lambda m, t, x: x),
    AdapterKind.MLP: KindSpec(_mlp_shapes, _mlp_forward),
    AdapterKind.LOWRANK: KindSpec(_lowrank_shapes, _lowrank_forward),
    # the input is the concatenation [query-model vector; document-model vector]
    AdapterKind.HYBRID: KindSpec(_linear_shapes, _linear_forward),
}


def forward_raw(manifest: Manifest, tensors: Tensors, x: np.ndarray) -> np.ndarray:
    """Apply the adapter to rows of `x` (float32) without the final normalisation."""
    if x.ndim != 2 or x.shape[1] != manifest.in_dim:
        raise ValueError(
            f"{manifest.kind.value} adapter expects rows of {manifest.in_dim} "
            f"(inputs: {' + '.join(manifest.inputs)}), got shape {x.shape}"
        )
    return KINDS[manifest.kind].forward(manifest, tensors, x).astype(np.float32, copy=False)


def forward(manifest: Manifest, tensors: Tensors, x: np.ndarray) -> np.ndarray:
    """Apply the adapter to rows of `x` (float32), L2-normalising when the manifest says so."""
    y = forward_raw(manifest, tensors, x)
    if manifest.normalize:
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        y = y / np.maximum(norms, 1e-12)
    return y
