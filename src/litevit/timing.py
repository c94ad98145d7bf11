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


SETTLE_S = 0.02  # untimed calls that open each block: the caches refill over several calls after other runners ran
BLOCK_S = 0.03  # timed calls that follow them, one sample per block


def time_interleaved(
    runners: dict[str, Callable[[], Any]], seconds: float, warmup: float, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Per-call times (s) of each runner, one per round, measured in interleaved rounds after a time-based warm-up.

    Each round runs every runner as a block, as a program that calls one model in a loop runs it: untimed calls for
    ``SETTLE_S`` (at least one), then timed calls for ``BLOCK_S`` (at least one), whose median is the round's sample.
    The untimed calls matter: a model called right after others finds their data in the caches, not its own, and
    runs up to 2.4x slower for its first calls, recovering over 3-10 calls (EfficientViT-M0's onnxruntime file at
    batch 1: 3.0, 2.3, 2.0, 1.8 ms, then 1.6 ms; benchmarks/speed/cache_warmup.jsonl). The order rotates every
    round; at least three rounds are run."""
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
            times[name].append(_block(runners[name], sync))
        round_index += 1
    return times


def _block(run: Callable[[], Any], sync: Callable[[], None]) -> float:
    """The median time (s) of the timed calls of one block (see :func:`time_interleaved`)."""
    start = time.perf_counter()
    while True:
        run()
        sync()
        if time.perf_counter() - start >= SETTLE_S:
            break
    samples: list[float] = []
    start = time.perf_counter()
    while not samples or time.perf_counter() - start < BLOCK_S:
        call = time.perf_counter()
        run()
        sync()
        samples.append(time.perf_counter() - call)
    samples.sort()
    return samples[len(samples) // 2]
