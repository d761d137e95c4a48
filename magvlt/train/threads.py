"""Picking the CPU thread count while training: on cores shared with other work, fewer threads can be faster.

Measured on 2 cores (the demo's step, T2I): quiet, 2 threads 116-123 ms and 1 thread 178-208 ms; beside one `yes`
process 342-435 ms and 164-168 ms; beside a 2-thread torch job 456-3,952 ms and 235-266 ms. Threads that wait
for each other while the OS runs someone else on their core lose more than the core they share.
"""

from __future__ import annotations

import contextlib
import statistics

import torch


class ThreadTuner:
    """Try the other thread count (all threads, or one) for `probe` steps as soon as `probe` steps have run at the
    current one, then again after every `every` seconds of training, and keep whichever had the shorter median step;
    the loop calls `before_step()` and then `after_step(seconds)` for each step.

    A probe step over twice the current median ends its probe at once (beside a 2-thread job one step on 2 threads
    took up to 4 s), and each probe lost doubles the wait for the next, up to `most_wait` seconds, so that on a
    machine whose load does not change probing costs a few percent at most; a step over twice the median at the
    current count (the load changed) brings the wait back to `every`."""

    def __init__(self, threads: int | None = None, every: float = 20.0, probe: int = 6, most_wait: float = 320.0):
        self.most = threads or torch.get_num_threads()
        self.current, self.every, self.probe, self.most_wait = self.most, every, probe, most_wait
        self.recent: list[float] = []  # the last `probe` steps at the current count
        self.probed: list[float] = []
        self.wait, self.waited = every, every  # the first probe comes as soon as `recent` is full

    @property
    def probing(self) -> bool:
        return self.most > 1 and len(self.recent) == self.probe and self.waited >= self.wait

    @property
    def other(self) -> int:
        return 1 if self.current == self.most else self.most

    def before_step(self) -> None:
        torch.set_num_threads(self.other if self.probing else self.current)

    def after_step(self, seconds: float) -> None:
        if not self.probing:
            if len(self.recent) == self.probe and seconds > 2 * statistics.median(self.recent):
                self.wait = self.every  # the machine changed: probe again soon
            self.recent = (self.recent + [seconds])[-self.probe :]
            self.waited += seconds
            return
        self.probed.append(seconds)
        median = statistics.median(self.recent)
        if seconds > 2 * median:
            self._decide(won=False)
        elif len(self.probed) == self.probe:
            self._decide(won=statistics.median(self.probed) < median)

    def _decide(self, won: bool) -> None:
        if won:
            self.current, self.recent, self.wait = self.other, self.probed, self.every
        else:
            self.wait = min(2 * self.wait, self.most_wait)
        self.probed, self.waited = [], 0.0


@contextlib.contextmanager
def threads_set(n: int | None = None):
    """Run the block on n intra-op threads (None: as it is) and give the previous count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
