"""The thread tuner keeps whichever thread count ran the shorter steps, and training gives the count back."""

import torch
from synthetic import write_synthetic
from test_train import tiny_config

from magvlt.train import rundir
from magvlt.train.loop import train
from magvlt.train.threads import ThreadTuner


def run(tuner: ThreadTuner, seconds: dict[int, float], steps: int) -> list[int]:
    """The thread count of each step when a step on n threads takes seconds[n]."""
    counts = []
    for _ in range(steps):
        tuner.before_step()
        counts.append(torch.get_num_threads())
        tuner.after_step(seconds[counts[-1]])
    return counts


def test_switches_to_one_thread_when_it_is_faster_and_back_when_it_is_not():
    threads = torch.get_num_threads()
    try:
        tuner = ThreadTuner(threads=2, every=1.0, probe=3)
        loaded = run(tuner, {2: 0.4, 1: 0.16}, 6)  # a busy neighbour: 2 threads wait for each other
        assert loaded == [2] * 3 + [1] * 3 and tuner.current == 1  # the first probe comes after 3 steps, not later
        # one second later 2 threads are probed again: a step over twice the median ends the probe at once, and
        # the next probe waits twice as long
        assert run(tuner, {2: 0.4, 1: 0.16}, 28) == [1] * 7 + [2] + [1] * 13 + [2] + [1] * 6 and tuner.current == 1
        quiet = run(ThreadTuner(threads=2, every=1.0, probe=3), {2: 0.12, 1: 0.19}, 30)
        assert quiet.count(1) == 6 and quiet[3:6] == [1] * 3  # probes of 1 thread lost: back off (1 s, then 2 s)
        tuner = ThreadTuner(threads=2, every=1.0, probe=3)
        run(tuner, {2: 0.12, 1: 0.19}, 60)  # quiet for a while: probes are 4 s apart by now
        tuner.waited = 0.0  # ...and one just ended; then a neighbour comes: probed within a second, not four
        assert run(tuner, {2: 0.4, 1: 0.16}, 12) == [2] * 3 + [1] * 9 and tuner.current == 1
        assert run(ThreadTuner(threads=1, every=0.1, probe=1), {1: 0.1}, 5) == [1] * 5  # nothing to choose from
    finally:
        torch.set_num_threads(threads)


def test_a_tuned_run_records_its_thread_count_and_restores_the_setting(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64)
    before = torch.get_num_threads()
    records = rundir.read_metrics(train(tiny_config(tune_threads=True), data, tmp_path / "run", progress=False))
    assert all(r["threads"] in (1, before) for r in records) and torch.get_num_threads() == before
