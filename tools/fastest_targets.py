"""The speed targets of ``litevit export --fastest``, read from a ``litevit bench --quick`` run's JSON lines.

The bench races litevit's ``--fastest`` candidates by ``--fastest``'s own routine (:mod:`litevit.bench.pick`) and
records the per-round ratios of its pick, and of the fastest file it could not judge without images (bf16, int8
calibrated on noise: accuracy not measured), against litevit's own fp32 ONNX in onnxruntime and its fp32 IR at
OpenVINO's defaults. This tool sets them against the targets for the CPU it runs on (run it where the bench ran),
each verdict decided on the 95 % interval of the median ratio ("not decided" when it spans the target):

- native bf16 (AVX512_BF16 or AMX-BF16): >= 2.5x onnxruntime fp32 for LeViT, >= 1.8x for the other families;
- VNNI without bf16: >= 2.0x and >= 1.5x;
- everywhere: >= 1.2x OpenVINO at its defaults.

    .venv/bin/python tools/fastest_targets.py runs/bench/bench.jsonl > benchmarks/speed/fastest_targets_amd.md
"""

from __future__ import annotations

import sys

from litevit._extras import cpu_flags, has_native_bf16, has_vnni
from litevit.bench.report import read_jsonl
from litevit.bench.run import Comparison
from litevit.registry import get_variant


def targets(flags: frozenset[str]) -> tuple[float, float] | None:
    """(LeViT, other families) speed-up over onnxruntime fp32 this CPU's class is held to; None: no such target."""
    if has_native_bf16(flags):
        return 2.5, 1.8
    if has_vnni(flags):
        return 2.0, 1.5
    return None


KINDS = {  # row label -> (against onnxruntime fp32, against OpenVINO's defaults)
    "pick": ("litevit onnxruntime fp32", "litevit openvino defaults"),
    "not measured": ("unmeasured vs litevit onnxruntime fp32", "unmeasured vs litevit openvino defaults"),
}


def main(path: str) -> int:
    result = read_jsonl(path)
    goal = targets(cpu_flags())
    rows: dict[tuple[str, int, int, str], dict[str, Comparison]] = {}
    for c in result.comparisons:
        for label, kinds in KINDS.items():
            if c.against in kinds:
                rows.setdefault((c.model, c.batch_size, c.threads, label), {})[c.against] = c
    first = result.records[0]
    print(f"Hardware: {first.device_name}; torch {first.torch_version}; commit {first.git_commit}; "
          f"bench records: `{path}`. Verdicts at 95 % (the interval of the median per-round ratio).\n")  # fmt: skip
    print("| model | threads | batch | file | accuracy | vs onnxruntime fp32 (95%) | target | "
          "vs OpenVINO defaults (95%) | target 1.2x |")  # fmt: skip
    print("|---|---:|---:|---|---|---|---|---|---|")
    for (model, batch, threads, label), against in sorted(rows.items()):
        ort, ov = (against.get(kind) for kind in KINDS[label])
        chosen = (ort or ov).ours.split(":")[2].partition("@")[0]
        want = None if goal is None else goal[0] if get_variant(model).family == "levit" else goal[1]
        note = (ort or ov).note
        accuracy = "not measured (needs images)" if label != "pick" else "exact" if "exact to fp32" in note else "gated"

        def cell(c: Comparison | None, need: float | None) -> tuple[str, str]:
            if c is None:
                return "-", "-"
            text = f"{c.speedup_median:.2f}x ({c.median_low:.2f}-{c.median_high:.2f})"
            return text, "-" if need is None else c.verdict(need)

        (ort_text, ort_ok), (ov_text, ov_ok) = cell(ort, want), cell(ov, 1.2)
        print(f"| {model} | {threads} | {batch} | {chosen} | {accuracy} | {ort_text} | {ort_ok} | {ov_text} | "
              f"{ov_ok} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
