"""A request micro-batcher for the reward server: many small requests, one model call.

Requests are handed to :meth:`MicroBatcher.submit` from the event loop. One background task
gathers the requests that arrive within ``max_wait_s`` of the oldest waiting one (or until
``max_batch_size`` items are waiting), runs ``run`` once on all of them in a worker thread, so
the event loop keeps accepting and answering requests meanwhile, and hands each request its
own part of the results. Batches run one at a time; requests arriving while one runs wait for
the next, so under load a batch closes as soon as the previous one ends.

If ``run`` raises on a batch of several requests, each of them is run again on its own, so
one request that makes the model fail fails alone; its caller gets the exception.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")  # a request's payload
R = TypeVar("R")  # a request's result

__all__ = ["MicroBatcher"]


@dataclass
class _Job(Generic[P, R]):
    payload: P
    size: int
    arrived: float
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[P, R]):
    """Gather concurrent requests into batches and run each batch once in a worker thread.

    Args:
        run: Called in the worker thread with the payloads of one batch (in arrival order);
            returns one result per payload.
        max_batch_size: Most items (the ``size`` of each request, summed) per batch; a single
            larger request runs alone.
        max_wait_s: How long the oldest waiting request waits for others to join its batch.

    Attributes:
        batches: Calls of ``run`` so far (retries of a failed batch included).
        requests: Requests answered so far, with a result or an error.
        items: Items of those requests.
        largest: Most requests run together in one batch so far.
        busy_s: Seconds spent in ``run`` so far (wall clock in the worker thread).
    """

    def __init__(
        self,
        run: Callable[[Sequence[P]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float,
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.batches = 0
        self.requests = 0
        self.items = 0
        self.largest = 0
        self.busy_s = 0.0
        self._waiting: collections.deque[_Job[P, R]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batching task and the worker thread on the running event loop."""
        self._arrived = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bt-laplace-batch"
        )
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the batching task; requests still waiting get ``RuntimeError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._waiting:
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ requests
    async def submit(self, payload: P, size: int) -> R:
        """Queue one request of ``size`` items and wait for its result.

        Raises:
            RuntimeError: If the batcher is not running.
            Exception: Whatever ``run`` raised on this request alone.
        """
        if self._task is None or self._arrived is None:
            raise RuntimeError("the batcher is not running; call `await batcher.start()` first")
        loop = asyncio.get_running_loop()
        job: _Job[P, R] = _Job(payload, size, loop.time(), loop.create_future())
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    async def _loop(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            # the window opens when the oldest waiting request arrived: requests that queued
            # up during the previous batch have waited long enough and go at once
            deadline = self._waiting[0].arrived + self.max_wait_s
            while sum(job.size for job in self._waiting) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            await self._run(self._take())

    def _take(self) -> list[_Job[P, R]]:
        """The oldest waiting requests, at most ``max_batch_size`` items (at least one)."""
        batch = [self._waiting.popleft()]
        size = batch[0].size
        while self._waiting and size + self._waiting[0].size <= self.max_batch_size:
            job = self._waiting.popleft()
            batch.append(job)
            size += job.size
        return batch

    async def _run(self, batch: list[_Job[P, R]]) -> None:
        jobs = [job for job in batch if not job.future.done()]  # a caller may have gone
        if not jobs:
            return
        self.largest = max(self.largest, len(jobs))
        try:
            results = await self._call([job.payload for job in jobs])
        except asyncio.CancelledError:  # stopped mid-batch: nobody will answer these
            for job in jobs:
                self._finish(job, error=RuntimeError("the server is shutting down"))
            raise
        except Exception as err:
            if len(jobs) == 1:
                self._finish(jobs[0], error=err)
                return
            for job in jobs:  # find the request(s) that fail: each on its own
                try:
                    (result,) = await self._call([job.payload])
                except Exception as single_err:
                    self._finish(job, error=single_err)
                else:
                    self._finish(job, result=result)
            return
        for job, result in zip(jobs, results, strict=True):
            self._finish(job, result=result)

    async def _call(self, payloads: list[P]) -> Sequence[R]:
        self.batches += 1
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self._timed, payloads)
        if len(results) != len(payloads):
            raise RuntimeError(
                f"the batch function returned {len(results)} results for {len(payloads)} requests"
            )
        return results

    def _timed(self, payloads: list[P]) -> Sequence[R]:
        start = time.perf_counter()
        try:
            return self.run(payloads)
        finally:
            self.busy_s += time.perf_counter() - start

    def _finish(self, job: _Job[P, R], *, result: Any = None, error: Any = None) -> None:
        self.requests += 1
        self.items += job.size
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
