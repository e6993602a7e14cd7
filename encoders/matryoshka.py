"""Matryoshka prefixes: the first `dim` coordinates of each vector, back to unit length.

Matryoshka-trained models (Qwen3-Embedding-0.6B among them) pack most of their signal into the
leading dimensions, so a collection can be indexed at a prefix (e.g. 256 of 1024) to save
memory. The index, the service and the benchmarks must cut the same way, so they share this.
"""

from __future__ import annotations

import numpy as np

# a prefix this short is all zeros (a degenerate input): it stays zero instead of turning NaN
_MIN_NORM = 1e-12


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Rows of `vectors` cut to their first `dim` values and rescaled to unit L2 norm.

    Always a new float32 array (the input may be a cached row that must stay whole).
    """
    x = np.asarray(vectors, dtype=np.float32)
    if not 0 < dim <= x.shape[-1]:
        raise ValueError(f"prefix size {dim} is not in 1..{x.shape[-1]}")
    cut = np.array(x[..., :dim], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=-1, keepdims=True)
    cut /= np.maximum(norms, _MIN_NORM)
    return cut
