"""Micro-batching: concurrent requests grouped into one model run, the model in one worker thread.

A background task on the event loop collects requests until they hold `max_batch` texts or the first has waited
`max_wait_ms`, whichever comes first, runs them together off the event loop (in the executor given to `start`: one
thread, so the model never runs twice at once and the loop keeps accepting requests meanwhile), and answers each with
its own result. A run that fails is repeated request by request, so only the request that fails fails. Used by
`thawing serve` (serve.py); nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class Busy(Exception):
    """The queue holds `max_queue` texts already: try again later."""


class Closed(Exception):
    """The batcher stopped before the request ran."""


class RunFailed(Exception):
    """The model raised on this request (logged with its traceback)."""


@dataclass
class Job:
    """One request waiting for the model: its texts, the tasks it asks for, and where its answer goes."""

    texts: list[str]
    tasks: list[str]
    future: asyncio.Future


@dataclass
class BatchStats:
    """Counters of one micro-batcher (`thawing serve` shows them in /info, so clients and tests see the grouping)."""

    requests: int = 0
    texts: int = 0
    batches: int = 0  # model runs
    largest_batch: int = 0  # texts in the largest model run
    model_seconds: float = 0.0  # wall time inside model runs (the rest of a request's latency is queue and HTTP)
    failed: int = 0  # requests whose run failed


class MicroBatcher:
    """Groups concurrent jobs into model runs of up to `max_batch` texts, waiting at most `max_wait_ms` after the first.

    `run(jobs)` computes one result per job; it runs in the executor given to `start` (one thread, shared by every
    batcher, so the model never runs twice at once). A job that would take a non-empty batch past `max_batch` waits
    for the next one.
    """

    def __init__(self, run: Callable[[list[Job]], list[Any]], max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue: int = 4096):
        self.run = run
        self.max_batch, self.max_wait_ms, self.max_queue = max_batch, max_wait_ms, max_queue
        self.stats = BatchStats()
        self._pending: deque[Job] = deque()
        self._queued_texts = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self, executor: ThreadPoolExecutor) -> None:
        """Start collecting, on the running event loop."""
        self._executor = executor
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop collecting; requests still waiting get `Closed`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            _answer(self._pending.popleft(), error=Closed("stopped before this request ran"))
        self._queued_texts = 0

    async def submit(self, texts: list[str], tasks: list[str]) -> Any:
        """Queue a request and wait for its result; `Busy` when `max_queue` texts are waiting already, `RunFailed` when
        `run` raised for it."""
        if self._task is None or self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queued_texts + len(texts) > self.max_queue:
            raise Busy(f"{self._queued_texts} texts are waiting")
        job = Job(texts, tasks, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._queued_texts += len(texts)
        self._wake.set()
        return await job.future

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            jobs = await self._collect()
            if jobs:
                await self._execute(jobs)

    async def _collect(self) -> list[Job]:
        """Take jobs until `max_batch` texts or the first job's wait is over, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_ms / 1000
        jobs: list[Job] = []
        size = 0
        while True:
            while self._pending and (not jobs or size + len(self._pending[0].texts) <= self.max_batch):
                job = self._pending.popleft()
                jobs.append(job)
                size += len(job.texts)
                self._queued_texts -= len(job.texts)
            self._wake.clear()
            if size >= self.max_batch or self._pending or loop.time() >= deadline:
                break  # full, or the next job does not fit, or time is up
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
        if self._pending:
            self._wake.set()  # what is left starts the next batch at once
        return [job for job in jobs if not job.future.done()]  # a client that went away needs no answer

    async def _execute(self, jobs: list[Job]) -> None:
        texts = sum(len(job.texts) for job in jobs)
        self.stats.requests += len(jobs)
        self.stats.texts += texts
        self.stats.largest_batch = max(self.stats.largest_batch, texts)
        try:
            await self._run_and_answer(jobs)
        finally:  # stopped while running: whoever still waits is told, not left hanging
            for job in jobs:
                _answer(job, error=Closed("stopped while this request ran"))

    async def _run_and_answer(self, jobs: list[Job]) -> None:
        try:
            results = await self._run_in_thread(jobs)
        except Exception:  # noqa: BLE001 (whatever the model raises, its requests get an answer)
            if len(jobs) == 1:
                self._fail(jobs[0])
                return
            for job in jobs:  # run each request alone, so that only the one that fails gets an error
                try:
                    (result,) = await self._run_in_thread([job])
                except Exception:  # noqa: BLE001 (as above: this request gets RunFailed)
                    self._fail(job)
                else:
                    _answer(job, result)
            return
        for job, result in zip(jobs, results, strict=True):
            _answer(job, result)

    async def _run_in_thread(self, jobs: list[Job]) -> list[Any]:
        self.stats.batches += 1
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            return await loop.run_in_executor(self._executor, self.run, jobs)
        finally:
            self.stats.model_seconds += loop.time() - start

    def _fail(self, job: Job) -> None:
        log.exception("a request failed in the model")
        self.stats.failed += 1
        _answer(job, error=RunFailed("the model failed on this request"))


def _answer(job: Job, result: Any = None, error: Exception | None = None) -> None:
    if job.future.done():  # the client went away
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)
