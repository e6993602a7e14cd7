"""An asyncio-native engine (vLLM's `AsyncLLM` API) driven from caller threads.

The service encodes from worker threads; the engine lives on an event loop. So the runner
owns one loop in a background thread, builds the engine on it (in the background: `ready`
says when it is up), and every call submits one coroutine there and waits for it, at most a
request timeout, aborting in the engine what it stopped waiting for. Inside, each prompt is
one engine request, all of them in flight at once, so the engine's scheduler batches them
with whatever other threads sent.

The engine API it relies on (vLLM's, the versions in `encoders.vllm_build`):
`encode(prompt, pooling_params, request_id=...)` an async generator of outputs,
`abort(request_id | ids)` (async), `shutdown()` (sync), `.errored`, and an `EngineDeadError`
when the engine core process has died.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from encoders.engine_errors import EncoderTimeout, EncoderUnavailable, is_engine_dead_error

log = logging.getLogger(__name__)

_ABORT_WAIT_S = 5.0
_CLOSE_DRAIN_S = 5.0


def _shutdown_engine(engine: Any) -> Any:
    shutdown = getattr(engine, "shutdown", None)
    return shutdown() if callable(shutdown) else None


class EngineRunner:
    """One engine on its own event-loop thread: start-up, state, requests, shutdown.

    `engine` is an engine object (anything with `encode`/`abort`/`shutdown`) or a
    zero-argument factory that builds one on the loop thread. `ready` is False until the
    engine is up and again once it has died or been closed; `run` waits at most
    `startup_wait_s` for start-up and `request_timeout_s` for an answer, then raises
    `EncoderUnavailable` (the service answers 503 or falls back).
    """

    def __init__(
        self,
        name: str,
        engine: Any | Callable[[], Any],
        *,
        startup_wait_s: float,
        request_timeout_s: float,
    ) -> None:
        self.name = name
        self.startup_wait_s = startup_wait_s
        self._request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._engine: Any | None = None
        self._start_error: BaseException | None = None
        self._dead: BaseException | None = None
        self._closed = False
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._late_shutdown: asyncio.Future[Any] | None = None
        self._ready_evt = threading.Event()

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"vllm-{name}", daemon=True)
        self._thread.start()
        if hasattr(engine, "encode"):
            self._engine = engine
            self._ready_evt.set()
        else:
            # Built on the loop thread itself, as vLLM's own server does (the engine's output
            # handler and IPC sockets belong to the loop that will drive them).
            self._loop.call_soon_threadsafe(self._start, engine)

    # ------------------------------------------------------------ state

    @property
    def request_timeout_s(self) -> float:
        return self._request_timeout_s

    @request_timeout_s.setter
    def request_timeout_s(self, value: float) -> None:
        if value <= 0:
            raise ValueError("request_timeout_s must be > 0")
        self._request_timeout_s = value

    @property
    def engine(self) -> Any | None:
        """The engine once built (None before), whatever its state."""
        with self._lock:
            return self._engine

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

    # ------------------------------------------------------------ requests

    def run(
        self, prompts: list[dict[str, Any]], params: Callable[[], Any], request_ids: list[str]
    ) -> list[Any]:
        """Each prompt's final output, in order; `params()` makes one request's parameters."""
        engine = self._engine_or_raise()
        # Registered under the lock, so close() either sees this call and cancels it or has
        # already refused it: no caller is left waiting on a stopped loop.
        with self._lock:
            if self._closed:
                raise EncoderUnavailable("the vLLM encoder is closed", "closed")
            fut = asyncio.run_coroutine_threadsafe(
                self._encode_all(engine, prompts, params, request_ids), self._loop
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
        log.info("vLLM engine ready: %s", self.name)

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
            self._ready_evt.wait(self.startup_wait_s)
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
        self,
        engine: Any,
        prompts: list[dict[str, Any]],
        params: Callable[[], Any],
        request_ids: list[str],
    ) -> list[Any]:
        tasks = [
            asyncio.ensure_future(self._encode_one(engine, prompt, params(), rid))
            for prompt, rid in zip(prompts, request_ids, strict=True)
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

    @staticmethod
    async def _encode_one(engine: Any, prompt: dict[str, Any], params: Any, rid: str) -> Any:
        final = None
        async for out in engine.encode(prompt, params, request_id=rid):
            final = out
        if final is None:
            raise RuntimeError(f"vLLM returned no output for request {rid}")
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
