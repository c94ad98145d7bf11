"""Interleaved timing: every runner of a comparison is called in rotating rounds, so that drifts in machine load hit
every side of a ratio alike. The one timing primitive of the bench, ``litevit export --fastest`` and the tools."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_interleaved(
    runners: dict[str, Callable[[], Any]], seconds: float, warmup: float, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Per-call times (s) of each runner, measured in interleaved rounds after a time-based warm-up."""
    for run in runners.values():
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            run()
        sync()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    deadline = time.perf_counter() + seconds
    round_index = 0
    while time.perf_counter() < deadline or round_index < 3:
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            runners[name]()
            sync()
            times[name].append(time.perf_counter() - start)
        round_index += 1
    return times
