"""The dynamic batcher on its own: gathering, batching off, load shedding, failure isolation."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from leanlm.serve.batcher import Batcher, QueueFull


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


class Recorder:
    """A model function that records each call's items (optionally slow, optionally failing)."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.calls: list[list] = []
        self.threads: set[str] = set()
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, items):
        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail_on in items:
            raise RuntimeError("boom")
        return [f"<{x}>" for x in items]


def test_concurrent_requests_share_one_call_and_get_their_own_results():
    fn = Recorder()

    async def main():
        b = Batcher(fn, max_batch=32, max_wait_ms=50, max_queue=100, name="t")
        out = await asyncio.gather(*(b.submit([f"{i}a", f"{i}b"]) for i in range(8)))
        await b.close()
        return b, out

    b, out = run(main())
    assert out == [[f"<{i}a>", f"<{i}b>"] for i in range(8)]
    assert len(fn.calls) == 1 and len(fn.calls[0]) == 16
    assert all(t.startswith("leanlm-t") for t in fn.threads)  # the worker thread, never the loop
    snap = b.stats.snapshot(b.queue_depth)
    assert snap["batches"] == 1 and snap["batch_size"]["histogram"] == {"16": 1} and snap["requests"] == 8


def test_max_batch_caps_a_call_and_a_large_request_runs_alone():
    fn = Recorder()

    async def main():
        b = Batcher(fn, max_batch=4, max_wait_ms=50, max_queue=100)
        await asyncio.gather(*(b.submit([i]) for i in range(10)), b.submit(list(range(100, 109))))
        await b.close()

    run(main())
    assert all(len(c) <= 4 for c in fn.calls if c[0] < 100)
    assert [len(c) for c in fn.calls if c[0] >= 100] == [9]
    assert sorted(x for c in fn.calls for x in c) == sorted(list(range(10)) + list(range(100, 109)))


def test_batching_off_runs_one_request_per_call():
    fn = Recorder()

    async def main():
        b = Batcher(fn, max_batch=1, max_wait_ms=50, max_queue=100)
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit([i]) for i in range(6)))
        await b.close()
        return time.perf_counter() - t0

    elapsed = run(main())
    assert [len(c) for c in fn.calls] == [1] * 6
    assert elapsed < 2  # max_batch=1 never waits for company


def test_a_lone_client_never_waits_for_company_but_concurrent_requests_are_gathered():
    fast, slow = Recorder(), Recorder(delay=0.03)

    async def main():
        lone = Batcher(fast, max_batch=32, max_wait_ms=80, max_queue=100)
        waits = []
        for i in range(20):  # one client, back to back: each request finds the server empty
            t0 = time.perf_counter()
            await lone.submit([f"lone{i}"])
            waits.append(time.perf_counter() - t0)
        await lone.close()

        busy = Batcher(slow, max_batch=32, max_wait_ms=80, max_queue=100)

        async def later(i):
            await asyncio.sleep(0.01 * i)  # arrivals 10 ms apart while 30 ms batches run
            return await busy.submit([f"s{i}"])

        out = await asyncio.gather(*(later(i) for i in range(12)))
        await busy.close()
        return waits, out

    waits, out = run(main())
    assert max(waits) < 0.04  # none of them sat out the 80 ms wait
    assert out == [[f"<s{i}>"] for i in range(12)]
    assert len(slow.calls) <= 6  # gathered, not run one by one


def test_full_queue_raises_at_once_and_counts_rejections():
    fn = Recorder(delay=0.2)

    async def main():
        b = Batcher(fn, max_batch=1, max_wait_ms=0, max_queue=2)
        first = asyncio.ensure_future(b.submit(["running"]))
        await asyncio.sleep(0.05)  # the first is running now; two more fill the queue
        waiting = [asyncio.ensure_future(b.submit([i])) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            b.enqueue(["one too many"])
        results = await asyncio.gather(first, *waiting)
        await b.close()
        return b, results

    b, results = run(main())
    assert results == [["<running>"], ["<0>"], ["<1>"]] and b.stats.rejected == 1


def test_a_failing_batch_fails_only_its_requests():
    fn = Recorder(fail_on="bad")

    async def main():
        b = Batcher(fn, max_batch=8, max_wait_ms=30, max_queue=100)
        together = await asyncio.gather(b.submit(["bad"]), b.submit(["good"]), return_exceptions=True)
        after = await b.submit(["fine"])
        await b.close()
        return b, together, after

    b, together, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in together)  # same batch, same fate
    assert after == ["<fine>"] and b.stats.failed_batches == 1


def test_wrong_result_count_is_an_error_not_a_hang():
    async def main():
        b = Batcher(lambda items: items[:-1], max_batch=8, max_wait_ms=0, max_queue=10)
        with pytest.raises(RuntimeError, match="returned 1 results for 2"):
            await b.submit(["a", "b"])
        await b.close()

    run(main())


def test_cancelled_request_is_dropped_before_it_runs():
    fn = Recorder(delay=0.1)

    async def main():
        b = Batcher(fn, max_batch=1, max_wait_ms=0, max_queue=10)
        first = asyncio.ensure_future(b.submit(["first"]))
        await asyncio.sleep(0.02)
        with pytest.raises(asyncio.TimeoutError):
            await b.submit(["late"], timeout=0.01)
        await first
        await asyncio.sleep(0.05)
        await b.close()

    run(main())
    assert ["late"] not in fn.calls


def test_token_budget_keeps_long_texts_out_of_big_batches():
    fn = Recorder()

    async def main():
        b = Batcher(fn, max_batch=32, max_wait_ms=50, max_queue=100, tokens_of=len, max_batch_tokens=40)
        # 4-token items: 10 fit in 40 padded tokens; a 30-token item may share with one other at most
        await asyncio.gather(*(b.submit(["abcd"]) for _ in range(12)), b.submit(["x" * 30]))
        await b.close()

    run(main())
    for call in fn.calls:
        assert len(call) * max(len(x) for x in call) <= 40 or len(call) == 1, call
    assert sum(len(c) for c in fn.calls) == 13


def test_closed_batcher_refuses_new_requests():
    from leanlm.serve.batcher import Closed

    async def main():
        b = Batcher(Recorder(), max_batch=4, max_wait_ms=0, max_queue=10)
        assert await b.submit(["x"]) == ["<x>"]
        await b.close()
        with pytest.raises(Closed):
            b.enqueue(["y"])

    run(main())
