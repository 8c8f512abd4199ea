"""Timing that is fair on a shared machine."""

from __future__ import annotations

import statistics
import time


def interleaved_times(methods: dict, repeats: dict, clock=time.perf_counter) -> dict[str, list[float]]:
    """Every timed run of each method, running them in turn so that slow drifts of a shared machine hit every
    method alike, and in reversed order every other round (A, B, C, C, B, A, ...) so that no method always runs
    right after the same other one (what a method leaves behind in caches and allocators then favours or hurts
    each alike). Run ``i`` of every method belongs to round ``i``, which :func:`paired_ratio` relies on.

    ``clock``: ``time.perf_counter`` (wall time) or ``time.process_time`` (this process's CPU time, which leaves
    out the time the machine gave to other processes: the fairer clock for one-thread work on a shared machine)."""
    times = {name: [] for name in methods}
    names = list(methods)
    for round_index in range(max(repeats.values())):
        for name in names if round_index % 2 == 0 else names[::-1]:
            if round_index < repeats[name]:
                start = clock()
                methods[name]()
                times[name].append(clock() - start)
    return times


def interleaved_best_times(methods: dict, repeats: dict) -> dict[str, float]:
    """Best wall time of each method, timed by :func:`interleaved_times`."""
    return {name: min(values) for name, values in interleaved_times(methods, repeats).items()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator / denominator times taken in the same round of :func:`interleaved_times`.

    Two runs of one round are seconds apart, so a slow spell of a shared machine (seconds to minutes) slows both;
    the best time of each method, taken in different rounds, lets one lucky run decide. The median of the paired
    ratios is the noise-robust estimate of how much faster the denominator's method is."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))
