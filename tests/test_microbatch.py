"""Micro-batching (thawing.deploy.microbatch) with a stand-in model: grouping up to max_batch texts, waiting up to
max_wait_ms, each request answered with its own slice, a full queue refused, a failing request kept apart.

Run: `.venv/bin/python -m pytest -q tests/test_microbatch.py`
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from thawing.deploy.microbatch import Busy, Closed, MicroBatcher, RunFailed


def _batch_run(jobs):
    """A stand-in model: each text's length; a text 'boom' makes the whole batch fail."""
    if any("boom" in job.texts for job in jobs):
        raise ValueError("boom")
    return [[len(t) for t in job.texts] for job in jobs]


async def _submit_all(batcher, requests, delays=None):
    """Submit each request (after its delay in seconds); its answer, or the status of its refusal."""
    executor = ThreadPoolExecutor(max_workers=1)
    batcher.start(executor)
    try:
        async def one(texts, delay):
            await asyncio.sleep(delay)
            try:
                return await batcher.submit(texts, [])
            except (Busy, RunFailed) as exc:
                return type(exc).__name__
        delays = delays or [0.0] * len(requests)
        return await asyncio.gather(*(one(texts, d) for texts, d in zip(requests, delays, strict=True)))
    finally:
        await batcher.stop()
        executor.shutdown()


def test_batcher_groups_up_to_max_batch_and_answers_each_its_slice():
    batcher = MicroBatcher(_batch_run, max_batch=8, max_wait_ms=200)
    requests = [["x" * (i + 1)] * 3 for i in range(10)]  # 30 texts, 3 per request
    answers = asyncio.run(_submit_all(batcher, requests))
    assert answers == [[i + 1] * 3 for i in range(10)]
    assert batcher.stats.requests == 10 and batcher.stats.texts == 30
    assert batcher.stats.largest_batch == 6  # two requests fit in 8 texts, a third would not
    assert batcher.stats.batches == 5


@pytest.mark.parametrize("wait_ms,batches", [(0, 4), (1000, 1)])
def test_batcher_waits_max_wait_for_later_requests(wait_ms, batches):
    batcher = MicroBatcher(_batch_run, max_batch=64, max_wait_ms=wait_ms)
    start = time.perf_counter()
    answers = asyncio.run(_submit_all(batcher, [["a"], ["bb"], ["ccc"], ["dddd"]], delays=[0, 0.1, 0.2, 0.3]))
    assert answers == [[1], [2], [3], [4]]
    assert batcher.stats.batches == batches
    assert time.perf_counter() - start < 1.0 + 1.5  # the first request waited about max_wait_ms, no longer


def test_batcher_refuses_past_max_queue():
    release = threading.Event()

    def slow(jobs):
        release.wait(10)
        return _batch_run(jobs)

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=2, max_wait_ms=0, max_queue=2)
        executor = ThreadPoolExecutor(max_workers=1)
        batcher.start(executor)
        running = asyncio.ensure_future(batcher.submit(["a"], []))  # taken by the model, which now blocks
        await asyncio.sleep(0.2)
        waiting = asyncio.ensure_future(batcher.submit(["bb", "cc"], []))  # fills the queue
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="2 texts are waiting"):
            await batcher.submit(["d"], [])
        release.set()
        answers = [await running, await waiting]
        await batcher.stop()
        executor.shutdown()
        return answers

    assert asyncio.run(scenario()) == [[1], [2, 2]]


def test_a_failing_request_does_not_fail_its_batch():
    batcher = MicroBatcher(_batch_run, max_batch=64, max_wait_ms=200)
    answers = asyncio.run(_submit_all(batcher, [["ab"], ["boom"], ["abc", "d"]]))
    assert answers == [[2], "RunFailed", [3, 1]]
    assert batcher.stats.failed == 1


def test_stop_answers_running_and_waiting_requests():
    release = threading.Event()

    def slow(jobs):
        release.wait(10)
        return _batch_run(jobs)

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0)
        executor = ThreadPoolExecutor(max_workers=1)
        batcher.start(executor)
        running = asyncio.ensure_future(batcher.submit(["a"], []))
        await asyncio.sleep(0.2)
        waiting = asyncio.ensure_future(batcher.submit(["b"], []))
        await asyncio.sleep(0.05)
        await batcher.stop()
        release.set()
        executor.shutdown()
        answers = await asyncio.wait_for(asyncio.gather(running, waiting, return_exceptions=True), 5)
        return [type(x) for x in answers]

    assert asyncio.run(scenario()) == [Closed, Closed]
