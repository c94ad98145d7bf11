"""What the static batch is worth: one dynamic-batch OpenVINO IR compiled as written and reshaped to [1, 3, H, W].

For each model and precision, a dynamic-batch IR is written (``export --precision``; int8 calibrated on noise: only
speed is measured here) and compiled twice with litevit's settings (1 thread, one stream, the file's inference
precision): as written, and reshaped to batch 1 as ``export --fastest --batch 1`` writes it and litevit's runner
compiles it. Both take batch-1 calls, timed interleaved (:func:`litevit.timing.time_interleaved`). One JSON line per
IR, the static speed-up as the median per-round ratio with its p10-p90:

    .venv/bin/python tools/static_batch.py efficientvit_m0 levit_128s mobilevit_xxs \
        --out benchmarks/speed/static_batch.jsonl
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from _measuring import emit, speed_file

import litevit
from litevit._extras import cpu_isa, cpu_model, has_native_bf16
from litevit.bench.timing import git_commit
from litevit.deploy.openvino import openvino_config
from litevit.timing import percentile, time_interleaved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--precisions", nargs="+", default=["int8", "bf16"])
    parser.add_argument("--seconds", type=float, default=8.0, help="timing per IR (default 8)")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="litevit-static-"))
    core = ov.Core()
    try:
        for name in args.models:
            model = litevit.create_model(name)
            size = model.config.img_size
            for precision in args.precisions:
                if precision.endswith("bf16") and not has_native_bf16():
                    continue
                path = speed_file(model, folder / f"{name}-{precision}.xml", precision, batch="dynamic")
                config = openvino_config(1, "bf16" if precision.endswith("bf16") else "f32")
                written = core.read_model(str(path))
                static = written.clone()
                static.reshape([1, 3, size, size])
                x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
                requests = {
                    kind: core.compile_model(graph, "CPU", config).create_infer_request()
                    for kind, graph in (("dynamic", written), ("static", static))
                }
                calls = {kind: (lambda r=r, x=x: r.infer({0: x}, share_inputs=True)) for kind, r in requests.items()}
                times = time_interleaved(calls, args.seconds, warmup=1.0)
                ratios = [d / s for d, s in zip(times["dynamic"], times["static"], strict=True)]
                record = {
                    "model": name, "precision": precision, "batch": 1, "threads": 1,
                    "dynamic_ms": statistics.median(times["dynamic"]) * 1e3,
                    "static_ms": statistics.median(times["static"]) * 1e3,
                    "static_speedup": statistics.median(ratios), "speedup_p10": percentile(ratios, 0.1),
                    "speedup_p90": percentile(ratios, 0.9), "rounds": len(ratios), "cpu": cpu_model(),
                    "isa": cpu_isa(), "openvino": ov.__version__, "commit": git_commit(),
                    "command": "python tools/static_batch.py " + " ".join(sys.argv[1:]),
                }  # fmt: skip
                emit(record, args.out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
