"""The data that flows through one embed request: admitted, batched, encoded, adapted.

A request is tokenised once at admission (`Runtime.prepare`) into one `EncoderRows` per encoder it
needs; cached query rows arrive with their vectors, the others (`miss`) are encoded in a
shared batch; then the tenant's adapter maps the rows into the index's space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from adapters import Adapter
from encoders import Encoder, InputKind, Tokenized

EncoderRole = Literal["query", "document"]


@dataclass(frozen=True)
class ActiveAdapter:
    adapter: Adapter
    version: int

    def ref(self) -> dict[str, object]:
        return {"id": self.adapter.id, "version": self.version}


@dataclass
class EmbedItem:
    """One request's texts; items of several tenants can share one encoder pass."""

    tenant: str
    texts: list[str]
    kind: InputKind
    instruction: str | None = None
    truncate: bool = False
    # The adapter the rows go through, when already decided: the routes resolve the tenant's
    # own off the event loop (`Runtime.resolve_adapter`: an evicted adapter reloads in a
    # thread), and evaluations (quality gate, shadow) name a candidate; `baseline=True` means
    # no adapter at all (the document encoder's own query vectors). Never from a client body.
    adapter: ActiveAdapter | None = None
    baseline: bool = False


@dataclass(frozen=True)
class Truncation:
    """An input cut to the encoder's limit because the client asked for truncate=true."""

    index: int
    tokens: int  # before the cut (the larger count where two encoders read the text)
    kept: int


@dataclass
class EncoderRows:
    """One request's rows for one encoder."""

    which: EncoderRole
    encoder: Encoder
    tokens: Tokenized  # the rows to encode (cache misses), in `miss` order
    vectors: np.ndarray  # (rows, encoder dim): cache hits at admission, the rest by the batch
    miss: list[int]
    counts: list[int]  # untruncated token counts of every row


@dataclass
class Prepared:
    item: EmbedItem
    active: ActiveAdapter | None
    parts: dict[EncoderRole, EncoderRows]
    truncated: list[Truncation]
    timings_ms: dict[str, float] = field(default_factory=dict)
    degraded: str | None = None  # why the document encoder answered instead (the fallback)
    # the tenant's served size when its collection holds a Matryoshka prefix: the final
    # vectors are cut to it and renormalised (None: the document encoder's full size)
    dim: int | None = None

    @property
    def misses(self) -> int:
        return sum(len(p.miss) for p in self.parts.values())

    @property
    def miss_tokens(self) -> int:
        """Tokens the batch will run for this request (after any cut): batch cutting."""
        return sum(
            min(c, p.encoder.max_tokens) for p in self.parts.values() for c in p.tokens.counts
        )

    def cache_state(self) -> str:
        """hit: every query row came from the cache; miss: none did; partial: some."""
        if self.item.kind != "query":
            return "off"
        rows = sum(len(p.counts) for p in self.parts.values())
        missed = self.misses
        return "hit" if missed == 0 else "miss" if missed == rows else "partial"


@dataclass
class EmbedOutcome:
    vectors: np.ndarray
    token_counts: list[int]  # per row, as fed to the serving encoder (after any cut)
    model: str
    adapter: ActiveAdapter | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    truncated: list[Truncation] = field(default_factory=list)
    cache: str = "off"
    degraded: str | None = None
