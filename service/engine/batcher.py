"""Dynamic batching between the routes and the encoders.

Requests are admitted (`Runtime.prepare`: tokenised once, limits checked, cache looked up),
then `await Batcher.submit(prepared, timeout_s)`; one background asyncio task gathers the
queued requests into a batch and runs `Runtime.run_prepared` (one encoder pass per encoder
and input kind, for requests of any tenants) on ONE dedicated worker thread, so the event
loop, health checks and /metrics never wait behind a batch.

The worker is the clock: whenever it is free, everything queued (up to `max_items` texts or
`max_tokens` tokens, by the encoders' own counts from admission) becomes the next batch, so
a lone request never waits and requests arriving during a batch share the next one.
`concurrency` > 1 keeps that many batches in flight on as many workers: for an engine that
schedules its own batches (vLLM), whose continuous batching needs new requests to arrive
while earlier ones run; an in-process torch encoder keeps 1 (two forwards would only fight
for the same cores).
`max_wait_ms` > 0 adds a wait for a fuller batch. A single request larger than a limit is
batched alone, never split.

Background work (the quality gates, the shadow, the warm-up: service/engine/background.py)
queues in its own lane: `background(fn)` runs `fn` on the same worker, one small chunk at a
time, and only when no live request waits, no live batch runs and the worker has then stayed
idle for `BACKGROUND_IDLE_GRACE_S` (or, under traffic that never leaves the worker idle, once
a chunk has waited `BACKGROUND_MAX_WAIT_S`, so admin work cannot starve). A live request
therefore waits behind at most one chunk, and admin work never starts a second OpenMP team
or races a live batch for the encoder.

Items whose future is already done (the client went away, or its deadline passed) are
dropped before a batch starts. Backpressure: when `max_queue` texts are already waiting,
`submit` answers 429 at once. The loop never dies on an exception: that batch's requests get
the error (503 when it is not an ServiceError) and the next batch runs as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from service.engine.batch_cost import BatchCostModel
from service.engine.embedding import EmbedOutcome, Prepared
from service.engine.errors import ServiceError
from service.ops.metrics import Metrics
from service.ops.tasks import cancel_and_wait
from service.runtime import Runtime

T = TypeVar("T")

# a background chunk waits for an idle worker at most this long, then goes before live work
BACKGROUND_MAX_WAIT_S = 1.0
# the worker counts as idle once no live request came for this long: clients in a closed loop
# send their next request within milliseconds of an answer, and a chunk started in that gap
# made every one of them wait behind it (bench/README.md, bench.interference)
BACKGROUND_IDLE_GRACE_S = 0.02

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    item: Prepared
    future: asyncio.Future[EmbedOutcome]
    enqueued: float
    texts: int
    tokens: int
    wait_s: float = field(default=0.0)


@dataclass
class _Job:
    """One background chunk: a callable for the worker and the future its caller waits on."""

    fn: Callable[[], object]
    future: Future[object]
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    """Queue + one batching task; start() in the lifespan, stop() at the end."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_items: int,
        max_tokens: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics,
        max_queue_wait_ms: float = 0.0,
        concurrency: int = 1,
    ) -> None:
        if max_items <= 0 or max_tokens <= 0 or max_queue <= 0 or max_wait_ms < 0:
            raise ValueError("batch limits must be positive (max_wait_ms >= 0)")
        if concurrency <= 0:
            raise ValueError("concurrency must be positive")
        self.concurrency = concurrency
        self.runtime = runtime
        self.max_items = max_items
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_ms / 1e3
        self.max_queue = max_queue
        self.max_queue_wait_s = max_queue_wait_ms / 1e3
        # how long recent batches took for their tokens (fixed + per-token cost) and the batch
        # now running: an estimate of how long a new request would wait, so overload is
        # refused at once (429) instead of queueing work that blows every accepted latency
        self.cost = BatchCostModel()
        # batches now on a worker: (tokens, start time) each
        self._inflight: dict[int, tuple[int, float]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self.metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._background: deque[_Job] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued_texts = 0
        self._queued_tokens = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0  # batches run (for tests and debugging)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        if self.running:
            raise RuntimeError("batcher already running")
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="querylift-batch"
        )
        self._task = asyncio.create_task(self._run(), name="querylift-batcher")
        return self._task

    async def stop(self) -> None:
        """Cancel the loop; queued requests get 503. A batch already in its thread finishes
        there, but its requests are answered 503 now."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            await cancel_and_wait(task)
        for worker in list(self._workers):
            await cancel_and_wait(worker)
        err = ServiceError("shutting_down", "the service is shutting down", retry_after_s=1)
        self._fail_queued(err)
        while self._background:
            job = self._background.popleft()
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(err)
        self.metrics.background_waiting.set(0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def background(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on a batch worker once no live request waits and no live batch runs.

        Callable from any thread. `fn` should be one small chunk of work (BackgroundLane cuts
        them): a live request that arrives while it runs waits for it. Cancelling the future
        before it starts skips it."""
        if self._loop is None or not self.running:
            raise ServiceError("not_ready", "the service is not accepting work right now")
        job = _Job(fn, Future())  # type: ignore[arg-type]
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._enqueue_background(job)
        else:
            self._loop.call_soon_threadsafe(self._enqueue_background, job)
        return job.future  # type: ignore[return-value]

    def _enqueue_background(self, job: _Job) -> None:
        if not self.running or self._wake is None:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(
                    ServiceError("shutting_down", "the service is shutting down")
                )
            return
        self._background.append(job)
        self.metrics.background_waiting.set(len(self._background))
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    # -- requests ----------------------------------------------------------------------------
    def estimated_wait_s(self, extra_tokens: int = 0) -> float:
        """Seconds until a request of `extra_tokens` tokens would be done: what is left of the
        running batch, then the queue and the request in batches of at most `max_tokens`
        (0 before the first batch has been timed)."""
        if not self.cost.trained:
            return 0.0
        running = 0.0
        if len(self._inflight) >= self.concurrency:  # every worker busy: the first one free
            now = time.monotonic()
            running = min(
                max(self.cost.seconds(tokens, tokens) - (now - since), 0.0)
                for tokens, since in self._inflight.values()
            )
        queued = self.cost.seconds(self._queued_tokens + extra_tokens, self.max_tokens)
        return running + queued / self.concurrency

    def check_admission(self, tokens: int = 0) -> None:
        """429 when the queue is full or the estimated wait is past `max_queue_wait_ms`; cheap,
        so routes call it before tokenising. A request never waits behind nothing: with an
        empty queue and no batch running it is always admitted."""
        busy = self._queued_texts > 0 or bool(self._inflight)
        if not busy:
            return
        if self._queued_texts >= self.max_queue:
            self._refuse(f"{self._queued_texts} texts are already waiting", 1.0)
        if self.max_queue_wait_s > 0:
            wait = self.estimated_wait_s(tokens)
            if wait > self.max_queue_wait_s:
                self._refuse(
                    f"the queue would take about {wait * 1e3:.0f} ms (limit "
                    f"{self.max_queue_wait_s * 1e3:.0f} ms)",
                    wait,
                )

    def _refuse(self, why: str, retry_after_s: float) -> None:
        self.metrics.rejected.labels("overloaded").inc()
        raise ServiceError(
            "overloaded",
            f"{why}; try again shortly",
            {
                "queued": self._queued_texts,
                "max_queue": self.max_queue,
                "estimated_wait_ms": round(self.estimated_wait_s() * 1e3, 1),
            },
            retry_after_s=retry_after_s,
        )

    async def submit(self, item: Prepared, timeout_s: float) -> EmbedOutcome:
        """The item's outcome; raises its ServiceError, 429 when overloaded, 504 past timeout_s.

        Cancelling the call (the client went away) drops the item if its batch has not
        started yet.
        """
        if not self.running or self._wake is None:
            raise ServiceError("not_ready", "the service is not accepting work right now")
        n = max(item.misses, 1)
        if self._queued_texts and self._queued_texts + n > self.max_queue:
            self._refuse(f"{self._queued_texts} texts are already waiting", 1.0)
        self.check_admission(item.miss_tokens)
        loop = asyncio.get_running_loop()
        pending = _Pending(
            item,
            loop.create_future(),
            time.monotonic(),
            n,
            item.miss_tokens,
        )
        self._queue.append(pending)
        self._queued_texts += pending.texts
        self._queued_tokens += pending.tokens
        self.metrics.queue_depth.set(self._queued_texts)
        self._wake.set()
        try:
            # the deadline (or the client going away) cancels this task and so the future:
            # a batch that has not started yet skips the item
            async with asyncio.timeout(timeout_s):
                out = await pending.future
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise ServiceError(
                "timeout",
                f"no result within {timeout_s:g} s",
                {"timeout_s": timeout_s},
            ) from None
        out.timings_ms = {"queue": pending.wait_s * 1e3, **out.timings_ms}
        return out

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        free = asyncio.Semaphore(self.concurrency)
        while True:
            try:
                # a worker first, then the batch: while all are busy the queue keeps growing
                # into the next batch
                await free.acquire()
                batch = await self._collect()
            except asyncio.CancelledError:
                raise
            except Exception:  # never die: log it and go on with the next batch
                free.release()
                log.exception("batcher loop error")
                continue
            if isinstance(batch, _Job):
                try:
                    await self._execute_background(batch)
                finally:
                    free.release()
                continue
            if not batch:
                free.release()
                continue
            if self.concurrency == 1:
                try:
                    await self._execute(batch)
                finally:
                    free.release()
                continue
            worker = asyncio.create_task(self._execute(batch), name="querylift-batch")
            self._workers.add(worker)

            def done(t: asyncio.Task[None]) -> None:
                self._workers.discard(t)
                free.release()
                if self._wake is not None and self._background:
                    self._wake.set()  # the last live batch out: background may go now
                if not t.cancelled() and t.exception() is not None:
                    log.error("batch worker error", exc_info=t.exception())

            worker.add_done_callback(done)

    def _full(self) -> bool:
        return self._queued_texts >= self.max_items or self._queued_tokens >= self.max_tokens

    async def _collect(self) -> list[_Pending] | _Job:
        """The next live batch; a background chunk only when nothing live waits or runs."""
        assert self._wake is not None
        while not self._queue or self._background_overdue():
            if self._background and not self._inflight:
                if not self._background_overdue() and not await self._idle_for_grace():
                    continue  # something came within the grace: look again
                job = self._background.popleft()
                self.metrics.background_waiting.set(len(self._background))
                return job
            self._wake.clear()
            await self._wake.wait()
        deadline = self._queue[0].enqueued + self.max_wait_s
        while not self._full():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                break
        batch: list[_Pending] = []
        texts = tokens = 0
        while self._queue:
            p = self._queue[0]
            if (
                not p.future.done()
                and batch
                and (texts + p.texts > self.max_items or tokens + p.tokens > self.max_tokens)
            ):
                break
            self._queue.popleft()
            self._queued_texts -= p.texts
            self._queued_tokens -= p.tokens
            if p.future.done():  # cancelled: client gone or deadline passed
                continue
            batch.append(p)
            texts += p.texts
            tokens += p.tokens
        self.metrics.queue_depth.set(self._queued_texts)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        assert self._executor is not None
        now = time.monotonic()
        for p in batch:
            p.wait_s = now - p.enqueued
        tokens = sum(p.tokens for p in batch)
        key = id(batch)
        self._inflight[key] = (max(tokens, 1), now)
        loop = asyncio.get_running_loop()
        # the worker starts now; the bookkeeping is done while it runs, and once it is back
        # the results go out before anything else: both off the request's critical path
        work = loop.run_in_executor(
            self._executor, self.runtime.run_prepared, [p.item for p in batch]
        )
        self._observe(batch, tokens)
        results: list[EmbedOutcome | ServiceError]
        elapsed = None
        try:
            results = await work
            elapsed = time.monotonic() - now
        except asyncio.CancelledError:
            err = ServiceError(
                "shutting_down",
                "the service is shutting down",
                retry_after_s=1,
            )
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            raise
        except ServiceError as e:
            results = [e] * len(batch)
        except Exception as e:
            log.exception("batch of %d requests failed", len(batch))
            failed = ServiceError(
                "batch_failed",
                f"embedding failed: {type(e).__name__}",
                retry_after_s=1,
            )
            results = [failed] * len(batch)
        finally:
            self._inflight.pop(key, None)
        for p, r in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(r, ServiceError):
                p.future.set_exception(r)
            else:
                p.future.set_result(r)
        if elapsed is not None:
            self.cost.observe(tokens, elapsed)

    async def _idle_for_grace(self) -> bool:
        """Whether the worker stayed idle for BACKGROUND_IDLE_GRACE_S with a chunk still
        waiting: a live request that comes back within it goes first."""
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), BACKGROUND_IDLE_GRACE_S)
            return False
        except TimeoutError:
            return not self._queue and bool(self._background) and not self._inflight

    def _background_overdue(self) -> bool:
        """A chunk that has waited BACKGROUND_MAX_WAIT_S goes before the live queue: under
        traffic that never leaves the worker idle, admin work still moves (one chunk per
        period at most, so a live request still waits behind at most one chunk)."""
        return bool(self._background) and (
            time.monotonic() - self._background[0].enqueued > BACKGROUND_MAX_WAIT_S
        )

    async def _execute_background(self, job: _Job) -> None:
        assert self._executor is not None
        if not job.future.set_running_or_notify_cancel():
            return  # its caller gave up before it started
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        try:
            result = await loop.run_in_executor(self._executor, job.fn)
        except asyncio.CancelledError:
            job.future.set_exception(
                ServiceError("shutting_down", "the service is shutting down", retry_after_s=1)
            )
            raise
        except BaseException as e:  # the caller's to judge (it waits on the future)
            job.future.set_exception(e)
        else:
            job.future.set_result(result)
        finally:
            self.metrics.background_chunk.observe(time.monotonic() - start)

    def _observe(self, batch: list[_Pending], tokens: int) -> None:
        m = self.metrics
        for p in batch:
            m.queue_wait.observe(p.wait_s)
        m.batch_size.observe(sum(p.texts for p in batch))
        m.batch_tokens.observe(tokens)
        m.batch_requests.observe(len(batch))
        self.batches += 1

    def _fail_queued(self, err: ServiceError) -> None:
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(err)
        self._queued_texts = self._queued_tokens = 0
        self.metrics.queue_depth.set(0)
