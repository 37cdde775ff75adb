"""The bounded batching queue between the HTTP layer and a backend, one per model.

Requests put their prepared images (uint8 (n, C, S, S)) into the queue and await their outputs.
`concurrency` worker tasks take up to `max_batch_size` images at a time, waiting at most `max_wait_ms`
for a batch to fill, so concurrent requests share model batches and one request's images may be
split across batches. The queue holds at most `queue_size` images: beyond that `submit` fails at once
with 429 instead of growing latency without bound. A request cancelled while waiting (its client went
away) takes its images that are not yet in a batch out of the queue at once: they are never inferred
and no longer count against the queue; at most the one batch already running still carries some.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

from serve.errors import GatewayError, backend_unavailable, queue_full
from serve.metrics import Metrics

log = logging.getLogger("serve")
Infer = Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]]


class _Job:
    """One request's images; `taken` of them are already in a batch, `done` have come back."""

    __slots__ = ("images", "future", "taken", "done", "parts")

    def __init__(self, images: np.ndarray, future: asyncio.Future) -> None:
        self.images = images
        self.future = future
        self.taken = 0
        self.done = 0
        self.parts: list[tuple[int, dict[str, np.ndarray]]] = []

    def add(self, start: int, outputs: dict[str, np.ndarray], count: int) -> None:
        if self.future.done():  # cancelled by the client, or an earlier part failed
            return
        self.parts.append((start, outputs))
        self.done += count
        if self.done == len(self.images):
            parts = [p for _, p in sorted(self.parts, key=lambda item: item[0])]
            result = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            self.future.set_result(result)

    def fail(self, err: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(err)


class Batcher:
    def __init__(self, model: str, infer: Infer, metrics: Metrics, *, max_batch_size: int, max_wait_ms: float,
                 queue_size: int, concurrency: int = 1, retry_after_s: int = 1) -> None:
        self.model = model
        self._infer = infer
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._pending: deque[_Job] = deque()
        self._queued = 0  # images in _pending not yet taken into a batch
        self._wakeup = asyncio.Event()
        self._closed = False
        self._depth = metrics.queue_depth.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._latency = metrics.inference.labels(model)
        self._workers = [asyncio.create_task(self._work(), name=f"batcher-{model}-{i}") for i in range(concurrency)]

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (n, C, S, S) -> outputs for these n images, in order. Raises 429 when the queue is full."""
        n = len(images)
        if self._closed:
            raise backend_unavailable(f"model {self.model!r} is shutting down")
        if self._queued + n > self.queue_size:
            raise queue_full(f"model {self.model!r}: queue full ({self._queued} images waiting, "
                             f"{n} more would exceed {self.queue_size}); retry later", self.retry_after_s)
        job = _Job(images, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._queued += n
        self._depth.set(self._queued)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(job)
            raise

    def _drop(self, job: _Job) -> None:
        """Take the images of an abandoned request that are not yet in a batch out of the queue."""
        if job in self._pending:
            self._pending.remove(job)
            self._queued -= len(job.images) - job.taken
            self._depth.set(self._queued)

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Up to max_batch_size images from the head of the queue, as (job, start, end) slices."""
        pieces, room = [], self.max_batch_size
        while self._pending and room:
            job = self._pending[0]
            if job.future.done():  # the client went away: skip its remaining images
                self._pending.popleft()
                self._queued -= len(job.images) - job.taken
                continue
            start = job.taken
            end = min(len(job.images), start + room)
            pieces.append((job, start, end))
            job.taken = end
            room -= end - start
            self._queued -= end - start
            if end == len(job.images):
                self._pending.popleft()
        self._depth.set(self._queued)
        return pieces

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queued:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait
            while self._queued < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            pieces = self._take()
            if pieces:
                await self._run(pieces)

    async def _run(self, pieces: list[tuple[_Job, int, int]]) -> None:
        if len(pieces) == 1:
            job, start, end = pieces[0]
            batch = job.images[start:end]
        else:
            batch = np.concatenate([job.images[start:end] for job, start, end in pieces])
        self._batch_size.observe(len(batch))
        began = time.perf_counter()
        try:
            outputs = await self._infer(batch)
        except asyncio.CancelledError:
            for job, _, _ in pieces:
                job.fail(backend_unavailable(f"model {self.model!r} is shutting down"))
            raise
        except GatewayError as err:
            for job, _, _ in pieces:
                job.fail(err)
            return
        except Exception as err:  # noqa: BLE001 - a failed batch fails its requests, never the worker
            log.exception("batch of model %s failed", self.model)
            for job, _, _ in pieces:
                job.fail(GatewayError(500, f"inference of model {self.model!r} failed: {err}", "inference_error"))
            return
        finally:
            self._latency.observe(time.perf_counter() - began)
        offset = 0
        for job, start, end in pieces:
            count = end - start
            job.add(start, {k: v[offset:offset + count] for k, v in outputs.items()}, count)
            offset += count

    async def close(self) -> None:
        self._closed = True
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        err = backend_unavailable(f"model {self.model!r} is shutting down")
        while self._pending:
            self._pending.popleft().fail(err)
        self._queued = 0
        self._depth.set(0)
