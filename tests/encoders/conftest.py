"""Helpers of the encoder tests: the parts of the encoder contract every backend keeps."""

from __future__ import annotations

import numpy as np

from encoders import Encoder


def assert_empty_input_ok(enc: Encoder) -> None:
    """No texts: an empty (0, dim) float32 answer, no token counts, no error."""
    for kind in ("query", "document"):
        res = enc.encode([], kind)
        assert res.vectors.shape == (0, enc.dim)
        assert res.vectors.dtype == np.float32
        assert res.token_counts == []
        assert enc.count_tokens([], kind) == []
        assert enc.format([], kind) == []
        assert enc.encode([], kind, truncate=False).vectors.shape == (0, enc.dim)
