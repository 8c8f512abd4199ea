"""Timing that is fair on a shared machine."""

from __future__ import annotations

import time


def interleaved_best_times(methods: dict, repeats: dict) -> dict:
    """Best time of each method, running them in turn so that slow drifts of a shared machine hit every method
    alike, and in reversed order every other round (A, B, C, C, B, A, ...) so that no method always runs right
    after the same other one (what a method leaves behind in caches and allocators then favours or hurts each
    alike)."""
    times = {name: [] for name in methods}
    names = list(methods)
    for round_index in range(max(repeats.values())):
        for name in names if round_index % 2 == 0 else names[::-1]:
            if round_index < repeats[name]:
                start = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}
