"""Latency measurement: warm up, then timed trials with the clock read after synchronising.

Method (the same for every engine): run for at least ``warmup_iterations`` calls *and* at least
``warmup_seconds``; then ``trials`` trials of ``iterations`` calls each, every call timed alone
with ``perf_counter_ns`` read after ``sync()`` returns (a CUDA synchronise for GPU engines, so an
asynchronous launch is never timed as finished). The reported trial is the median trial by mean
latency; all samples are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _no_sync() -> None:
    return None


def warm_up(
    step: Callable[[], object], min_iterations: int, min_seconds: float, sync: Callable[[], None] = _no_sync
) -> int:
    """Call ``step`` until both minimums are reached; return the number of calls made."""
    done, start = 0, time.perf_counter()
    while done < min_iterations or time.perf_counter() - start < min_seconds:
        step()
        sync()
        done += 1
    return done


def time_trials(
    step: Callable[[], object], iterations: int, trials: int, sync: Callable[[], None] = _no_sync
) -> list[np.ndarray]:
    """Per-call latencies in milliseconds, one array of ``iterations`` values per trial."""
    results = []
    for _ in range(trials):
        samples = np.empty(iterations, dtype=np.float64)
        for i in range(iterations):
            begin = time.perf_counter_ns()
            step()
            sync()
            samples[i] = (time.perf_counter_ns() - begin) / 1e6
        results.append(samples)
    return results


@dataclass(frozen=True)
class LatencySummary:
    trial: int  # index of the reported (median) trial
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_sps: float


def latency_summary(trials: list[np.ndarray], batch: int) -> LatencySummary:
    """Statistics of the median trial (by mean latency); throughput = batch / mean latency."""
    if not trials or any(len(t) == 0 for t in trials):
        raise ValueError("latency_summary needs at least one non-empty trial")
    means = [float(t.mean()) for t in trials]
    # With an even count take the lower middle, so the reported trial is a real one.
    order = sorted(range(len(trials)), key=lambda i: (means[i], i))
    chosen = order[(len(order) - 1) // 2]
    samples = trials[chosen]
    p50, p95, p99 = (float(v) for v in np.percentile(samples, [50, 95, 99]))
    mean = means[chosen]
    return LatencySummary(
        trial=chosen, mean_ms=mean, p50_ms=p50, p95_ms=p95, p99_ms=p99, throughput_sps=batch * 1000.0 / mean
    )
