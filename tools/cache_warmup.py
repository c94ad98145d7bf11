"""How a model's call time recovers when it is called again after other models ran: the reason
:func:`litevit.timing.time_interleaved` opens every block with untimed calls.

For each model, batch-1 files are written (fp32 ONNX; OpenVINO fp32, bf16 where the CPU computes it natively, and
int8 calibrated on noise: only speed is measured) and run by litevit's runner, 1 thread, as the bench runs them
(the fp32 IR also at OpenVINO's defaults). In rotating rounds each runner is called ``--calls`` times in a row and
each call is timed: the median per call index says how many calls a runner needs after the others to reach its
steady speed. Call 0 is what timing one call per runner per round measured (the method before 2026-12-07); the
steady time is the median of calls 5 and later. One JSON line per model:

    .venv/bin/python tools/cache_warmup.py levit_128s efficientvit_m0 mobilevit_xxs \
        --out benchmarks/speed/cache_warmup.jsonl
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _measuring import emit, speed_file

import litevit
from litevit._extras import cpu_isa, cpu_model, has_native_bf16
from litevit.bench.timing import git_commit
from litevit.deploy.runtime import ExportedModel

STEADY_FROM = 5  # call index from which a runner is taken as warm


def runners(name: str, folder: Path) -> dict[str, ExportedModel]:
    """litevit's runners of one model's batch-1 files, by route name."""
    model = litevit.create_model(name)
    files = {"ort-fp32": ("onnx", "fp32"), "ov-fp32": ("xml", "fp32"), "ov-int8": ("xml", "int8")}
    if has_native_bf16():
        files["ov-bf16"] = ("xml", "bf16")
    paths = {}
    for route, (suffix, precision) in files.items():
        paths[route] = speed_file(model, folder / f"{name}-{route}.{suffix}", precision, batch=1)
    out = {route: ExportedModel(path, threads=1) for route, path in paths.items()}
    out["ov-defaults"] = ExportedModel(paths["ov-fp32"], threads=1, inference_precision="defaults")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--calls", type=int, default=12, help="calls in a row per runner and round (default 12)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per model (default 10)")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="litevit-warmup-"))
    try:
        for name in args.models:
            found = runners(name, folder)
            size = found["ov-fp32"].metadata.img_size
            x = torch.randn(1, 3, *size)
            for run in found.values():
                for _ in range(20):
                    run(x)
            rows: dict[str, list[list[float]]] = {route: [] for route in found}
            order = list(found)
            deadline, rounds = time.perf_counter() + args.seconds, 0
            while time.perf_counter() < deadline or rounds < 3:
                shift = rounds % len(order)
                for route in order[shift:] + order[:shift]:
                    row = []
                    for _ in range(args.calls):
                        start = time.perf_counter()
                        found[route](x)
                        row.append(time.perf_counter() - start)
                    rows[route].append(row)
                rounds += 1
            by_index = {
                r: [statistics.median(c[i] for c in v) * 1e3 for i in range(args.calls)] for r, v in rows.items()
            }
            steady = {r: statistics.median(t for c in v for t in c[STEADY_FROM:]) * 1e3 for r, v in rows.items()}
            record = {
                "model": name, "batch": 1, "threads": 1, "rounds": rounds, "calls_per_block": args.calls,
                "ms_by_call_index": {r: [round(t, 4) for t in v] for r, v in by_index.items()},
                "first_call_ms": {r: round(v[0], 4) for r, v in by_index.items()},
                "steady_ms": {r: round(v, 4) for r, v in steady.items()},
                "first_over_steady": {r: round(by_index[r][0] / steady[r], 3) for r in steady},
                "cpu": cpu_model(), "isa": cpu_isa(), "torch": torch.__version__, "commit": git_commit(),
                "command": "python tools/cache_warmup.py " + " ".join(sys.argv[1:]),
            }  # fmt: skip
            emit(record, args.out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
