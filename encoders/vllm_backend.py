"""vLLM backend: an in-process `AsyncLLM` (pooling runner) behind the `Encoder` protocol.

This module tokenises, truncates and turns the engine's outputs into vectors; the parts it
composes live beside it:
- `encoders.engine_runner`: the engine on its own event-loop thread, driven from the
  service's worker threads (start-up, state, timeouts and aborts, shutdown);
- `encoders.vllm_engine`: building the real engine for a spec (vLLM imported only there);
- `encoders.vllm_build`: the pinned vLLM builds and dtype;
- `encoders.engine_errors`: why an engine cannot answer (503 / fallback).

`truncate_prompt_tokens` (a *left* truncation) is gone from recent vLLM versions, so this
backend tokenises and truncates itself and sends token ids (`TokensPrompt`), exactly the ids
the transformers backend would feed the model. Adapters are trained on one encoder's exact
outputs: the engine refuses to start on another vLLM version unless asked to.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from encoders.base import (
    EncoderBase,
    EncodeResult,
    EncoderSpec,
    InputKind,
    InputTooLongError,
    Instruction,
    StepObserver,
    Tokenized,
)
from encoders.engine_runner import EngineRunner
from encoders.vllm_build import installed_vllm_build, resolve_dtype
from encoders.vllm_engine import as_vector, build_vllm_engine, vllm_pooling_params


class VLLMEncoder(EncoderBase):
    """`Encoder` over an in-process vLLM `AsyncLLM`; start-up runs in the background.

    `engine` is an engine object (anything with vLLM's `encode`/`abort`/`shutdown`), a
    zero-argument factory that builds one, or None for the real vLLM engine.
    `pooling_params` builds the per-request pooling parameters (default: vLLM's class).
    `ready` is False until the engine is up and again once it has died or been closed;
    `encode` waits at most `startup_wait_s` for start-up and `request_timeout_s` for an
    answer, then raises `EncoderUnavailable` (the service answers 503 or falls back).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        engine: Any | Callable[[], Any] | None = None,
        *,
        pooling_params: Callable[..., Any] | None = None,
        tokenizer: Any | None = None,
        startup_wait_s: float | None = None,
        request_timeout_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(
            spec.path, revision=spec.revision
        )
        config = AutoConfig.from_pretrained(spec.path, revision=spec.revision)
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"{spec.path}: model config has no integer hidden_size")
        self._dim = hidden
        limits = [spec.max_tokens]
        if spec.max_model_len:
            limits.append(spec.max_model_len)
        model_max = getattr(config, "max_position_embeddings", None)
        if isinstance(model_max, int):
            limits.append(model_max)
        self._max_tokens = min(limits)
        spec.fingerprint()  # the weights' identity read now, at load, not on a first request
        self._pooling_params = pooling_params or vllm_pooling_params
        self.engine_build = installed_vllm_build()
        self.dtype = resolve_dtype(spec)
        # HF fast tokenizers are not safe to call concurrently with different truncation
        # settings ("Already borrowed"): one call at a time (it is microseconds).
        self._tok_lock = threading.Lock()
        self._step_observers: list[StepObserver] = []
        self._runner = EngineRunner(
            spec.name,
            engine or functools.partial(build_vllm_engine, spec, on_step=self._observe_step),
            startup_wait_s=spec.timeout_s if startup_wait_s is None else startup_wait_s,
            request_timeout_s=spec.timeout_s if request_timeout_s is None else request_timeout_s,
        )

    # ------------------------------------------------------------ protocol

    def tokenize(
        self, texts: list[str], kind: InputKind, instruction: Instruction = None
    ) -> Tokenized:
        formatted = self.format(texts, kind, instruction)
        if not formatted:
            return Tokenized([], [], [])
        ids = self._tokenize(formatted, truncate=False, check=False)
        return Tokenized(formatted, [len(x) for x in ids], ids)

    def encode_tokenized(self, tokens: Tokenized, truncate: bool = True) -> EncodeResult:
        if not len(tokens):
            return EncodeResult(np.empty((0, self._dim), dtype=np.float32), [])
        if not truncate:
            self.check_length(tokens)
        if tokens.ids is not None:
            token_ids = list(tokens.ids)
        else:
            token_ids = self._tokenize(tokens.texts, check=False)
        over = [i for i, x in enumerate(token_ids) if len(x) > self._max_tokens]
        if over:  # the tokenizer's own truncation keeps the special tokens
            cut = self._tokenize([tokens.texts[i] for i in over], truncate=True)
            for i, row in zip(over, cut, strict=True):
                token_ids[i] = row
        request_ids = [f"ql-{uuid.uuid4().hex}" for _ in token_ids]
        # A TokensPrompt (a TypedDict, so a plain dict): the ids we counted are what runs.
        prompts = [{"prompt_token_ids": ids} for ids in token_ids]
        outputs = self._runner.run(prompts, self._request_params, request_ids)
        vectors = np.empty((len(outputs), self._dim), dtype=np.float32)
        counts = []
        for i, (out, ids) in enumerate(zip(outputs, token_ids, strict=True)):
            vec = as_vector(out.outputs)
            if vec.shape != (self._dim,):
                raise ValueError(
                    f"vLLM returned shape {vec.shape} for request {out.request_id}, expected "
                    f"({self._dim},): per-token states mean the pooling task was not 'embed'"
                )
            vectors[i] = vec
            prompt_ids = getattr(out, "prompt_token_ids", None)
            counts.append(len(prompt_ids) if prompt_ids is not None else len(ids))
        if self.spec.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors /= np.maximum(norms, 1e-12)
        return EncodeResult(vectors, counts)

    # ------------------------------------------------------------ state

    @property
    def engine(self) -> str:
        return str(self.engine_build) if self.engine_build else "vllm (not installed)"

    @property
    def request_timeout_s(self) -> float:
        return self._runner.request_timeout_s

    @request_timeout_s.setter
    def request_timeout_s(self, value: float) -> None:
        self._runner.request_timeout_s = value

    def add_step_observer(self, observe: StepObserver) -> bool:
        """Call `observe(finished, prompt_tokens, running)` after every engine step."""
        self._step_observers.append(observe)
        return True

    def unfinished_requests(self) -> int | None:
        """Requests the engine holds now (None before start-up or if it cannot tell)."""
        count = getattr(self._runner.engine, "get_num_unfinished_requests", None)
        return int(count()) if callable(count) else None

    @property
    def ready(self) -> bool:
        """The engine is up and can take requests."""
        return self._runner.ready

    @property
    def alive(self) -> bool:
        """Starting or ready; False once start-up failed, the engine died or it was closed."""
        return self._runner.alive

    @property
    def error(self) -> str | None:
        return self._runner.error

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up finished (or `timeout`); return `ready`."""
        return self._runner.wait_ready(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is in flight, shut the engine down, stop the loop (idempotent)."""
        self._runner.close(timeout)

    def __enter__(self) -> VLLMEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "ready" if self.ready else ("starting" if self.alive else "unavailable")
        return f"VLLMEncoder({self.spec.name!r}, {self.engine_build}, {self.dtype}, {state})"

    # ------------------------------------------------------------ internals

    def _observe_step(self, finished: int, tokens: int, running: int) -> None:
        for observe in list(self._step_observers):
            observe(finished, tokens, running)

    def _request_params(self) -> Any:
        return self._pooling_params(task="embed", use_activation=self.spec.normalize)

    def _tokenize(
        self, formatted: list[str], truncate: bool = False, check: bool = True
    ) -> list[list[int]]:
        with self._tok_lock:
            if truncate:
                enc = self.tokenizer(
                    formatted,
                    add_special_tokens=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    verbose=False,
                )
            else:
                enc = self.tokenizer(formatted, add_special_tokens=True, verbose=False)
        ids = [list(x) for x in enc["input_ids"]]
        if not truncate and check:
            for i, row in enumerate(ids):
                if len(row) > self._max_tokens:
                    raise InputTooLongError(i, len(row), self._max_tokens)
        return ids
