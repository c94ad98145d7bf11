"""tools/runner_overhead.py's reading of benchmark_app's report, which switches from ms to us below 1 ms."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")
TOOL = Path(__file__).resolve().parents[2] / "tools" / "runner_overhead.py"
sys.path.insert(0, str(TOOL.parent))  # as when run: the tool imports tools/_measuring.py
spec = importlib.util.spec_from_file_location("runner_overhead", TOOL)
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)

REPORT = """[ INFO ] Latency:
[ INFO ]    Median:        {median}
[ INFO ]    Average:       851.02 us
[ INFO ] Throughput:   1157.05 FPS"""


@pytest.mark.parametrize(("median", "ms"), [("805.53 us", 0.80553), ("1.81 ms", 1.81), ("12.5 ms", 12.5)])
def test_median_is_read_in_milliseconds_from_either_unit(median: str, ms: float) -> None:
    assert overhead.median_ms(REPORT.format(median=median)) == pytest.approx(ms, rel=1e-12)


def test_a_report_without_a_median_is_an_error_naming_its_end() -> None:
    with pytest.raises(RuntimeError, match="no median latency.*Throughput"):
        overhead.median_ms("[ INFO ] Throughput:   1157.05 FPS")
