"""Dynamic batching: requests wait in a bounded queue; one worker thread runs them as model batches.

The worker takes the oldest waiting request, then up to `max_batch - 1` more with the same batch key (task and
options such as steps and candidates) that arrive within `max_wait` seconds, and makes one call for all of them.
Requests with another key wait for a later batch, in arrival order. Model calls never run on the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

# run(key, payloads, on_step) -> one result per payload; on_step(index, step, steps, frame) or None
RunBatch = Callable[[Hashable, list, Callable | None], list]
StepSink = Callable[[int, int, object], None]  # (step, steps, frame), called on the worker thread


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class Job:
    """One request: its batch key, its inputs, where its result goes and (streaming) where its frames go."""

    key: Hashable
    payload: object
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_step: StepSink | None = None
    queued: float = field(default_factory=time.monotonic)

    def settle(self, result=None, error: BaseException | None = None) -> None:
        """Resolve the future on its event loop (thread-safe; a request that went away is skipped)."""

        def resolve():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(result)

        self.loop.call_soon_threadsafe(resolve)


class Batcher:
    """A bounded queue of jobs and the worker thread that runs them in batches."""

    def __init__(self, run: RunBatch, max_batch: int = 32, max_wait: float = 0.01, max_queue: int = 256):
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._held: deque[Job] = deque()  # taken from the inbox but of another key than the batch being formed
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0  # model calls made, for /health and tests

    @property
    def waiting(self) -> int:
        """Requests accepted and not yet started."""
        return self._waiting

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="magvlt-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let the running batch finish, then end the worker."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None

    def enqueue(self, key: Hashable, payload, on_step: StepSink | None = None) -> Job:
        """Queue a job (from the event loop) or raise QueueFull; await `job.future` for its result."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._waiting >= self.max_queue:
                raise QueueFull(f"{self._waiting} requests are waiting")
            self._waiting += 1
        job = Job(key, payload, loop, loop.create_future(), on_step)
        self._inbox.put(job)
        return job

    async def submit(self, key: Hashable, payload, on_step: StepSink | None = None):
        """Queue a job and wait for its result."""
        return await self.enqueue(key, payload, on_step).future

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            with self._lock:
                self._waiting -= len(batch)
            self._run(batch)

    def _next_batch(self) -> list[Job] | None:
        """The oldest job and the jobs of its key that arrive within max_wait (at most max_batch); None: stop."""
        first = self._held.popleft() if self._held else self._inbox.get()
        if first is None:
            return None
        batch = [first] + self._take_held(first.key, self.max_batch - 1)
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch and (left := deadline - time.monotonic()) > 0:
            try:
                job = self._inbox.get(timeout=left)
            except queue.Empty:
                break
            if job is None:
                self._inbox.put(None)  # stop after this batch
                break
            (batch if job.key == first.key else self._held).append(job)
        return batch

    def _take_held(self, key: Hashable, limit: int) -> list[Job]:
        """Remove and return up to `limit` held jobs of `key`, oldest first."""
        taken = [job for job in self._held if job.key == key][:limit]
        for job in taken:
            self._held.remove(job)
        return taken

    def _run(self, batch: list[Job]) -> None:
        """One model call for the batch; its results (or its error) go to every job."""
        try:
            results = self.run(batch[0].key, [job.payload for job in batch], self._frames_to(batch))
            for job, result in zip(batch, results, strict=True):
                job.settle(result)
        except Exception as e:  # noqa: BLE001 - the worker outlives any bad batch; the requests get the error
            for job in batch:
                job.settle(error=e)  # a job already settled keeps its result
        finally:
            self.batches += 1

    @staticmethod
    def _frames_to(batch: list[Job]) -> Callable | None:
        """on_step(index, step, steps, frame) that passes frames to the jobs that stream; None if none does."""
        if all(job.on_step is None for job in batch):
            return None

        def on_step(i: int, step: int, steps: int, frame) -> None:
            if batch[i].on_step is not None:
                batch[i].on_step(step, steps, frame)

        return on_step
