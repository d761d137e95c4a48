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
    """Every `every` steps, run `probe` steps with the other thread count (all threads, or one) and keep whichever
    had the shorter median step; the loop calls `before_step()` and then `after_step(seconds)` for each step."""

    def __init__(self, threads: int | None = None, every: int = 100, probe: int = 6):
        self.most = threads or torch.get_num_threads()
        self.current, self.every, self.probe = self.most, every, probe
        self.recent: list[float] = []  # the last `probe` steps at the current count
        self.probed: list[float] = []
        self.since = 0

    @property
    def probing(self) -> bool:
        return self.most > 1 and self.since >= self.every

    @property
    def other(self) -> int:
        return 1 if self.current == self.most else self.most

    def before_step(self) -> None:
        torch.set_num_threads(self.other if self.probing else self.current)

    def after_step(self, seconds: float) -> None:
        if not self.probing:
            self.recent = (self.recent + [seconds])[-self.probe :]
            self.since += 1
            return
        self.probed.append(seconds)
        if len(self.probed) == self.probe:
            if statistics.median(self.probed) < statistics.median(self.recent):
                self.current, self.recent = self.other, self.probed
            self.probed, self.since = [], 0


@contextlib.contextmanager
def threads_set(n: int | None = None):
    """Run the block on n intra-op threads (None: as it is) and give the previous count back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
