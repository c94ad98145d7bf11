"""The speed targets of ``litevit export --fastest``, read from a ``litevit bench`` run's JSON lines.

The bench times litevit's ``--fastest`` candidates (the same files, built by the same exporter) interleaved with
litevit's own fp32 ONNX in onnxruntime and its fp32 IR compiled at OpenVINO's defaults, and records the per-round
ratios of the fastest file against both (``Comparison.against`` "litevit onnxruntime fp32" / "litevit openvino
defaults"). This tool sets them against the targets for the CPU it runs on (run it where the bench ran):

- native bf16 (AVX512_BF16 or AMX-BF16): >= 2.5x onnxruntime fp32 for LeViT, >= 1.8x for the other families;
- VNNI without bf16: >= 2.0x and >= 1.5x;
- everywhere: >= 1.2x OpenVINO at its defaults.

    .venv/bin/python tools/fastest_targets.py runs/bench-full/bench.jsonl > benchmarks/speed/fastest_targets.md
"""

from __future__ import annotations

import sys

from litevit._extras import cpu_flags, has_native_bf16, has_vnni
from litevit.bench.report import read_jsonl, route_name
from litevit.bench.run import Comparison
from litevit.registry import get_variant


def targets(flags: frozenset[str]) -> tuple[float, float] | None:
    """(LeViT, other families) speed-up over onnxruntime fp32 this CPU's class is held to; None: no such target."""
    if has_native_bf16(flags):
        return 2.5, 1.8
    if has_vnni(flags):
        return 2.0, 1.5
    return None


def main(path: str) -> int:
    result = read_jsonl(path)
    goal = targets(cpu_flags())
    rows: dict[tuple[str, int, int], dict] = {}
    for c in result.comparisons:
        if c.against.startswith("litevit "):
            rows.setdefault((c.model, c.batch_size, c.threads), {})[c.against] = c
    first = result.records[0]
    print(f"Hardware: {first.device_name}; torch {first.torch_version}; commit {first.git_commit}; "
          f"bench records: `{path}`.\n")  # fmt: skip
    print("| model | threads | batch | fastest file | vs onnxruntime fp32 (p10-p90) | target | "
          "vs OpenVINO defaults (p10-p90) | target 1.2x |")  # fmt: skip
    print("|---|---:|---:|---|---|---|---|---|")
    for (model, batch, threads), against in rows.items():
        ort, ov = against.get("litevit onnxruntime fp32"), against.get("litevit openvino defaults")
        runtime, _, precision = (ort or ov).ours.split(":")[2].partition("@")
        chosen = route_name(runtime, precision)
        want = None if goal is None else goal[0] if get_variant(model).family == "levit" else goal[1]

        def cell(c: Comparison | None, need: float | None) -> tuple[str, str]:
            if c is None:
                return "-", "-"
            text = f"{c.speedup_median:.2f}x ({c.speedup_p10:.2f}-{c.speedup_p90:.2f})"
            met = c.speedup_median >= need if need is not None else None
            return text, "-" if met is None else "met" if met else f"missed ({c.speedup_median:.3f}x < {need}x)"

        (ort_text, ort_ok), (ov_text, ov_ok) = cell(ort, want), cell(ov, 1.2)
        print(f"| {model} | {threads} | {batch} | {chosen} | {ort_text} | {ort_ok} | {ov_text} | {ov_ok} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
