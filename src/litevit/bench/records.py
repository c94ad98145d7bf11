"""What one bench run measured: a record per runner and a comparison per pair of routes, and their names."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..deploy.accuracy import median_bounds
from ..timing import percentile
from .runtimes import DEFAULTS


@dataclass
class BenchRecord:
    model: str
    source: str  # "litevit", "timm"
    runtime: str  # eager | compile | onnxruntime
    fused: bool
    batch_size: int
    img_size: tuple[int, int]
    dtype: str
    channels_last: bool
    device: str
    device_name: str
    threads: int
    torch_version: str
    git_commit: str
    params_m: float
    macs_m: float
    paper_top1: float | None
    median_ms: float  # per call
    p10_ms: float
    p90_ms: float
    images_per_s: float  # batch_size / median call time
    samples: int
    baseline: str | None  # the runner the speedups are against (None: this is it)
    speedup_median: float  # baseline time / this time, per interleaved round
    speedup_p10: float
    speedup_p90: float
    precision: str = ""  # what ran: fp32, int8, OpenVINO's f32 / bf16 / "defaults (bf16)", "int8 + f32"; "" in old runs
    decision: str = ""  # litevit's --fastest candidates in the quick bench: chosen, eligible, or why not


def record_key(source: str, model: str, runtime: str, precision: str = "", fused: bool = False) -> str:
    """A runner's name in a group: ``source:model:runtime[@precision][:fused]``."""
    at = f"@{precision}" if precision else ""
    return f"{source}:{model}:{runtime}{at}{':fused' if fused else ''}"


def at_defaults(runtime: str, precision: str) -> bool:
    """Whether a route runs as its runtime's defaults give it: every route but OpenVINO with a pinned precision."""
    return not runtime.startswith("openvino") or precision.split(" + ")[-1].startswith(DEFAULTS)


@dataclass
class Comparison:
    """litevit's fastest runner against another source's runner on the same model, batch and machine: that
    source's fastest route at its runtimes' defaults (``against="fastest"``), or its fp32 OpenVINO IR at OpenVINO's
    defaults (``against="openvino defaults"``)."""

    model: str
    batch_size: int
    ours: str
    theirs: str
    speedup_median: float  # their time / our time, per interleaved round
    speedup_p10: float
    speedup_p90: float
    threads: int = 1
    against: str = "fastest"
    note: str = ""  # how litevit's pick was decided (the quick bench's --fastest race)
    median_low: float | None = None  # the 95 % interval of the median ratio (None in older runs): verdicts use it
    median_high: float | None = None

    @classmethod
    def of(
        cls, times: dict[str, list[float]], model: str, batch_size: int, ours: str, theirs: str, threads: int,
        against: str, note: str = "",
    ) -> Comparison:  # fmt: skip
        """``ours`` against ``theirs`` from their per-call times, timed in the same interleaved rounds."""
        ratios = round_ratios(times, theirs, ours)
        low, high = median_bounds(ratios)
        return cls(
            model, batch_size, ours, theirs, statistics.median(ratios), percentile(ratios, 0.1),
            percentile(ratios, 0.9), threads, against, note, low, high,
        )  # fmt: skip

    def verdict(self, target: float) -> str:
        """``met``, ``missed``, or ``not decided`` at 95 % against a speed-up ``target``."""
        if self.median_low is None or self.median_high is None:
            return "not decided (no interval recorded)"
        if self.median_low >= target:
            return "met"
        if self.median_high < target:
            return f"missed ({self.median_high:.2f}x < {target}x at 95%)"
        return f"not decided at 95% ({self.median_low:.2f}-{self.median_high:.2f}x spans {target}x)"


def round_ratios(times: dict[str, list[float]], slow: str, fast: str) -> list[float]:
    return [a / b for a, b in zip(times[slow], times[fast], strict=True)]


def compared(source: str, runtime: str, precision: str) -> bool:
    """Whether a runner takes part in the comparisons: litevit's at the precision its runner compiles with (never at
    OpenVINO's defaults), another source's only at its runtimes' defaults."""
    if source == "litevit":
        return not (runtime.startswith("openvino") and at_defaults(runtime, precision))
    return at_defaults(runtime, precision)
