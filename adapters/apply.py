"""Apply different adapters to the rows of one batch: one matmul per adapter group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adapters.checkpoint import Adapter


def apply_grouped(
    x: np.ndarray, adapters: Sequence[Adapter | None], out_dim: int | None = None
) -> np.ndarray:
    """Row i goes through adapters[i]; rows whose adapter is None pass through unchanged.

    All adapters must share one output dim (rows land in one result matrix).
    """
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d batch, got shape {x.shape}")
    if len(adapters) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} rows but {len(adapters)} adapters")
    groups: dict[int, list[int]] = {}
    by_key: dict[int, Adapter | None] = {}
    for i, a in enumerate(adapters):
        key = id(a)
        groups.setdefault(key, []).append(i)
        by_key[key] = a
    bad_in = sorted(
        {
            a.manifest.in_dim
            for a in by_key.values()
            if a is not None and a.manifest.in_dim != x.shape[1]
        }
    )
    if bad_in:
        raise ValueError(f"batch has input dim {x.shape[1]} but adapters expect {bad_in}")
    dims = {a.manifest.out_dim if a is not None else x.shape[1] for a in by_key.values()}
    if out_dim is not None:
        dims.add(out_dim)
    if not dims:  # an empty batch with no out_dim given: nothing changes shape
        dims.add(x.shape[1])
    if len(dims) != 1:
        raise ValueError(f"adapters in one batch disagree on the output dim: {sorted(dims)}")
    out = np.empty((x.shape[0], dims.pop()), dtype=np.float32)
    for key, rows in groups.items():
        a = by_key[key]
        idx = np.asarray(rows)
        out[idx] = x[idx] if a is None else a.apply(x[idx])
    return out


def check_finite_output(adapter: Adapter) -> None:
    """Apply `adapter` once to a unit row; ValueError when its output is not finite.

    Finite tensors can still overflow together; this catches it before a request does, and
    the adapter's first matmul (allocation, kernel choice) happens here rather than in one.
    """
    in_dim = adapter.manifest.in_dim
    out = adapter.apply(np.full((1, in_dim), in_dim**-0.5, dtype=np.float32))
    if not np.all(np.isfinite(out)):
        raise ValueError("its output is not finite")
