"""Dynamic batching: many concurrent requests for one model, one forward pass.

Requests are queued on the event loop; a single gatherer task takes what is waiting, runs it as
ONE call of the blocking model function on the model's own worker thread, and scatters the results
back to each request's future. While a batch runs, new requests keep queuing, so under load batches
fill up on their own (continuous batching). When the worker is idle, the first request waits up to
`max_wait_ms` for company only if recent requests arrived while others were queued or running (a
running average of how many each found there): a lone client, however fast, finds the server empty
every time and never waits for company that is not coming, while concurrent clients and bursts
still gather into batches.

The queue is bounded: past `max_queue` waiting requests `enqueue` raises `QueueFull` at once
(the server answers 429) instead of letting latency and memory grow without limit. An exception
inside the model function fails that batch's requests only; the gatherer carries on.

Example:
    >>> b = Batcher(lambda texts: [len(t) for t in texts], max_batch=32, max_wait_ms=5, max_queue=256)
    >>> await b.submit(["a text", "another"])
    [6, 7]
"""
from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from leanlm.serve.metrics import Histogram, percentiles

BatchFn = Callable[[list[Any]], Sequence[Any]]

_WINDOW = 4096  # latency samples kept per batcher for percentiles (a bounded window)


class QueueFull(Exception):
    """The batcher already holds `max_queue` waiting requests (load shedding: answer 429)."""


class Closed(Exception):
    """The batcher is shutting down and takes no new requests (answer 503)."""


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future
    enqueued: float


@dataclass
class BatchStats:
    """Counters one batcher keeps; `snapshot()` is what /metrics shows."""

    requests: int = 0
    items: int = 0
    batches: int = 0
    failed_batches: int = 0
    rejected: int = 0
    max_batch_seen: int = 0
    sizes: collections.Counter = field(default_factory=collections.Counter)  # batch size -> count
    queue_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_WINDOW))
    run_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_WINDOW))
    queue_hist: Histogram = field(default_factory=Histogram)  # seconds, cumulative: Prometheus' view
    run_hist: Histogram = field(default_factory=Histogram)

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        return {
            "requests": self.requests, "items": self.items, "batches": self.batches,
            "failed_batches": self.failed_batches, "rejected": self.rejected, "queue_depth": queue_depth,
            "batch_size": {"max": self.max_batch_seen,
                           "mean": round(self.items / self.batches, 3) if self.batches else 0.0,
                           "histogram": {str(k): v for k, v in sorted(self.sizes.items())}},
            "queue_ms": percentiles(self.queue_ms), "run_ms": percentiles(self.run_ms),
        }


class Batcher:
    """Gather requests for one model function into batches and run them on a worker thread.

    Args:
        fn: blocking `fn(items) -> results`, one result per item, in order (one forward pass).
        max_batch: most items per call (1 = batching off: one request per call). A single request
            with more items than this still runs, alone.
        max_wait_ms: how long the first waiting request may wait for company, when recent arrivals
            say company is likely (0: never wait, run what is queued).
        max_queue: most requests waiting (not yet running) before `enqueue` raises QueueFull.
        name: names the worker thread (shows in stack dumps and profilers).
        tokens_of: `tokens_of(item) -> int`, an item's length in tokens; with `max_batch_tokens`
            a batch also stops growing before batch size x its longest item passes that budget
            (what the padded forward pass really costs).
        max_batch_tokens: the padded-token budget of one call (None: count items only).
        executor: a single-thread executor to run on (batchers of one model share one, so one
            model never runs two batches at once); default: the batcher's own.

    Example:
        >>> b = Batcher(model_fn, max_batch=32, max_wait_ms=5, max_queue=1024, name="minilm/classify")
        >>> labels = await b.submit(texts)
    """

    def __init__(self, fn: BatchFn, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024,
                 name: str = "model", tokens_of: Callable[[Any], int] | None = None,
                 max_batch_tokens: int | None = None, executor: ThreadPoolExecutor | None = None):
        self.fn, self.max_batch, self.max_wait, self.max_queue = fn, max_batch, max_wait_ms / 1e3, max_queue
        self.tokens_of = tokens_of
        self.max_batch_tokens = max_batch_tokens if tokens_of is not None else None
        self.name = name
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._busy = False  # a batch is on the worker thread
        self._running = 0  # requests in the batch on the worker thread
        self._company = 0.0  # running average of how many requests each arrival found queued or running
        # one thread per model: model objects (and their tokenizers) are not promised to be
        # thread-safe, and a slow model (a decoder) must never hold up another model's batches
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"leanlm-{name}")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def enqueue(self, items: Sequence[Any]) -> asyncio.Future:
        """Queue a request now (raising QueueFull or Closed at once); await the future for results."""
        if self._closed:
            raise Closed(f"{self.name} is shutting down")
        if len(self._queue) >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f"{self.name} has {len(self._queue)} requests waiting (max_queue={self.max_queue})")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._gather_loop(), name=f"batcher-{self.name}")
        future = loop.create_future()
        self._company = 0.7 * self._company + 0.3 * min(len(self._queue) + self._running, 4)
        self._queue.append(_Pending(list(items), future, loop.time()))
        self.stats.requests += 1
        self._wakeup.set()
        return future

    async def submit(self, items: Sequence[Any], timeout: float | None = None) -> list[Any]:
        """Queue `items` and wait for their results (asyncio.TimeoutError after `timeout` seconds;
        a timed-out request is dropped from the queue if it has not started)."""
        future = self.enqueue(items)
        return await asyncio.wait_for(future, timeout) if timeout else await future

    async def close(self) -> None:
        """Refuse new requests, let queued and running batches finish, stop the worker thread."""
        self._closed = True
        while (self._queue or self._busy) and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ the gatherer

    def company_expected(self) -> bool:
        """Whether waiting is likely to bring company: recent arrivals mostly found others in the server."""
        return self.max_wait > 0 and self._company >= 0.5

    def _waiting_items(self) -> int:
        return sum(len(p.items) for p in self._queue if not p.future.done())

    async def _gather_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._queue[0].enqueued + self.max_wait
            while self.max_batch > 1 and self.company_expected() and self._waiting_items() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._run(batch, loop)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        count = longest = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled or timed out while waiting: drop it
                self._queue.popleft()
                continue
            grown = count + len(head.items)
            if self.max_batch_tokens:
                longest = max(longest, *(self.tokens_of(x) for x in head.items))
            over = grown > self.max_batch or (self.max_batch_tokens and grown * longest > self.max_batch_tokens)
            if batch and over:
                break
            batch.append(self._queue.popleft())
            count = grown
            if count >= self.max_batch:
                break
        return batch

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        items = [x for p in batch for x in p.items]
        now = loop.time()
        for p in batch:
            self.stats.queue_ms.append((now - p.enqueued) * 1e3)
            self.stats.queue_hist.observe(now - p.enqueued)
        t0 = time.perf_counter()
        self._busy, self._running = True, len(batch)
        try:
            results = list(await loop.run_in_executor(self._executor, self.fn, items))
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: the model returned {len(results)} results for {len(items)} inputs")
        except Exception as e:  # the model failed: only this batch's requests hear about it
            self.stats.failed_batches += 1
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        finally:
            self._busy, self._running = False, 0
            ran = time.perf_counter() - t0
            self.stats.run_ms.append(ran * 1e3)
            self.stats.run_hist.observe(ran)
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.sizes[len(items)] += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(items))
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result(results[start:start + len(p.items)])
            start += len(p.items)
