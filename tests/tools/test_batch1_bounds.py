"""tools/batch1_bounds.py's arithmetic: the per-node slope fit, the floors, the verdict, the byte count, the report."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "batch1_bounds.py"
sys.path.insert(0, str(TOOL.parent))  # as when run: the tool imports tools/batch1_graph.py
spec = importlib.util.spec_from_file_location("batch1_bounds", TOOL)
bounds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bounds)


def sse(xs: list[float], ys: list[float], slope: float, intercept: float) -> float:
    return sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True))


def test_line_fit_recovers_an_exact_line() -> None:
    xs = [50.0, 100.0, 200.0]
    slope, intercept = bounds.line_fit(xs, [0.4e-3 * x + 0.018 for x in xs])
    assert slope == pytest.approx(0.4e-3) and intercept == pytest.approx(0.018)


def test_line_fit_is_the_least_squares_line_by_brute_force() -> None:
    rng = np.random.default_rng(0)
    xs = [50.0, 100.0, 150.0, 200.0]
    ys = [0.4e-3 * x + 0.018 + float(rng.normal(0, 0.01)) for x in xs]
    slope, intercept = bounds.line_fit(xs, ys)
    grid = itertools.product(np.linspace(0, 1e-3, 201), np.linspace(-0.05, 0.1, 301))
    best = min(grid, key=lambda line: sse(xs, ys, *line))
    assert sse(xs, ys, slope, intercept) <= sse(xs, ys, *best)
    assert slope == pytest.approx(best[0], abs=5e-6) and intercept == pytest.approx(best[1], abs=1e-3)


def test_verdict_names_the_floor_with_the_largest_share() -> None:
    shares, bound = bounds.verdict({"per-node": 0.1, "memory": 1.0, "compute": 3.0}, 4.0, 0.5)
    assert shares == pytest.approx({"per-node": 0.025, "memory": 0.25, "compute": 0.75})
    assert bound == "compute"


def test_verdict_names_none_when_no_floor_explains_enough() -> None:
    assert bounds.verdict({"per-node": 0.1, "memory": 1.0, "compute": 3.0}, 10.0, 0.5)[1] == "none alone (<50 %)"


def test_memory_floor_charges_weights_beyond_the_l2_at_the_dram_bandwidth() -> None:
    # 1e6 bytes at 1 GB/s take 1 ms; the per-call data always move at the L2's bandwidth
    assert bounds.memory_floor_ms(2_000_000, 1_000_000, 1 << 20, 10.0, 100.0) == (pytest.approx(0.21), "DRAM")
    assert bounds.memory_floor_ms(500_000, 1_000_000, 1 << 20, 10.0, 100.0) == (pytest.approx(0.015), "L2")


@pytest.mark.parametrize(("precision", "weight_bytes"), [("f32", 16 * 32 * 4), ("bf16", 16 * 32 * 2)])
def test_weights_are_counted_at_the_precision_their_layer_runs_at(precision: str, weight_bytes: int) -> None:
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    from litevit._extras import has_native_bf16
    from litevit.deploy.openvino import openvino_config

    if precision == "bf16" and not has_native_bf16():
        pytest.skip("no native bf16 on this CPU")
    x = ops.parameter([1, 16], np.float32)
    model = ov.Model([ops.relu(ops.matmul(x, ops.constant(np.ones((16, 32), np.float32)), False, False))], [x])
    figures = bounds.runtime_figures(ov.Core().compile_model(model, "CPU", openvino_config(1, precision)))
    assert figures["weight_bytes"] == weight_bytes  # the weight's transpose runs at compile time: no node, no bytes
    assert figures["constant_path_nodes"] >= 1
    assert figures["per_call_nodes"] == figures["runtime_nodes"] - figures["constant_path_nodes"] >= 1


def test_report_renders_a_record(tmp_path: Path) -> None:
    floors = {"per-node": 0.1, "memory": 1.0, "compute": 3.0}
    shares, bound = bounds.verdict(floors, 4.0, 0.5)
    record = dict(
        model="levit_128s", precision="int8", ms=4.0, ms_p10=3.9, ms_p90=4.2, per_call_nodes=191, runtime_nodes=426,
        constant_path_nodes=0, floors_ms=floors, shares=shares, call_ms=0.02, call_share=0.005, bound=bound,
        macs=305e6, weight_bytes=7.75e6, io_bytes=6e5, activation_bytes=8e6, weights_at="DRAM", dram_gbs=20.0,
        l2_gbs=140.0, peak_gmacs=260.0, node_ms=4e-4, cpu="AMD EPYC", isa=["AVX2"], torch="2", openvino="2026",
        threads=1, load_average=0.1, command="python x", commit="abc",
    )  # fmt: skip
    path = tmp_path / "bounds.jsonl"
    path.write_text(json.dumps(record) + "\n")
    text = bounds.report(path)
    assert "| levit_128s | int8 | 4.000 (3.90-4.20) | 191 | 0.100 (2 %) | 1.000 (25 %) | 3.000 (75 %) |" in text
    assert text.count("| compute |") == 1 and bounds.METHOD in text
