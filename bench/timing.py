"""Side-by-side timing for the benchmarks: runners take turns within each round, so a machine whose speed
drifts (other work, a shared host: a fixed loop here varies by up to 50% from one second to the next)
slows all of them alike, and the ratios are taken within a round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

MIN_CALL_S = 0.02
"""The shortest turn: a call is repeated until its turn lasts this long."""
PAUSE_S = 0.2
"""Pause before each runner's turn: the thread pools of the one before (onnxruntime's spinning workers,
OpenMP's) must have gone to sleep, or they take the cores from the next (measured: up to 2x slower)."""


def interleaved(runners: dict[str, Callable[[], object]], warmup: int, rounds: int,
                sync: Callable[[], None] = lambda: None, pause_s: float = PAUSE_S,
                min_call_s: float = MIN_CALL_S) -> dict[str, list[float]]:
    """Seconds per call of each runner, one list entry per round; within a round each runner has one turn
    (its call repeated to last >= `min_call_s`), after a pause of `pause_s`. The first call after the pause
    wakes the thread pool and refills the caches: a turn of a few calls charges that to the fastest runner
    most, so a throughput comparison wants turns far longer than one call."""
    repeats = {}
    for name, fn in runners.items():
        for _ in range(warmup):
            fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        repeats[name] = max(1, round(min_call_s / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            time.sleep(pause_s)
            start = time.perf_counter()
            for _ in range(repeats[name]):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / repeats[name])
    return times


def median_speedup(base_s: Sequence[float], other_s: Sequence[float]) -> float:
    """Median over rounds of base time / other time: how many times faster `other` ran, round by round."""
    return statistics.median(b / o for b, o in zip(base_s, other_s, strict=True))
