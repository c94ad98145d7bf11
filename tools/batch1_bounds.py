"""What bounds each model at batch 1 on this CPU, measured: its node count, memory or compute (issue #31).

Usage: OMP_NUM_THREADS=1 python tools/batch1_bounds.py [--calibration DIR] [--seconds S] [--out FILE.jsonl] MODEL...
       python tools/batch1_bounds.py --report FILE.jsonl

Per model it prints (and with ``--out`` appends) one JSON line per precision (f32, bf16 where the CPU has native
bf16, int8) with the machine, the command, the commit and every figure below; ``--report`` prints the markdown tables
of such a file, headed by ``METHOD``, which says how each figure is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from batch1_graph import SKIPPED_RUNTIME, rt_info  # the nodes counted as that tool counts them

IN_PLACE = {"Reshape"}  # runtime nodes that only relabel their input's buffer
PRECISION_BYTES = {"f32": 4, "i32": 4, "bf16": 2, "f16": 2, "i8": 1, "u8": 1, "i64": 8}
CHAIN_LENGTHS = (50, 100, 200)
DRAM_COPY = 256 << 20  # bytes of the large copy's source
CACHE_COPIES = 32  # copies of the L2-resident array per timed call
FLOORS = ("per-node", "memory", "compute")
METHOD = """\
Each model is exported as static batch-1 OpenVINO IRs (f32; bf16 where the CPU computes bf16 natively; int8 by NNCF,
calibrated on the command's folder) and compiled as litevit compiles them (`openvino_config`: 1 thread, one stream,
f32 or bf16 inference precision). *ms* is the median time of one infer request per call, the precisions timed
interleaved. Three floors, each the time the call would take if only that cost were paid:

- **per-node** = the nodes run per call (*nodes*: the CPU plugin's runtime nodes, Input and Output left out, and
  constant paths, which it runs once at compile time, and Reshapes, done in place; Reorders and Concats it does in
  place are counted, the runtime model not marking them: this floor can be high) x the measured cost of a node:
  the least-squares slope of time against nodes over chains of 50, 100 and 200 Softmax ops on a [1, 16] tensor,
  compiled with the same config (chains of Add/Multiply cannot serve: the plugin fuses them into one node) and
  timed interleaved among themselves after the model (a chain timed right after a model call runs cold). The
  intercept, the fixed cost of a call (*call*), is reported apart, in no floor.
- **memory** = weight bytes / the bandwidth of their level + (input + output + activation bytes) / the L2 bandwidth.
  Weight bytes: the elements that Consts and constant paths feed to per-call nodes x the narrower of their
  precision and the one their consumer runs at (the plugin repacks weights: bf16 for bf16 layers, i8 for int8).
  Activation bytes: the outputs of the nodes run per call, each written once. Bandwidth = 2 x bytes / time of a numpy
  copy (bytes read + written), measured in the same process: of a 256 MiB array (*DRAM*) and of an array a quarter
  of the L2 (*L2*). Weights larger than the L2 are charged at the DRAM one (*weights at*), though where they fit
  the L3 they may move faster: this floor is then high.
- **compute** = MACs per image (`litevit.flops.count_macs`, matmuls and convolutions) / the measured MAC peak of the
  precision (`litevit.bench.peak.openvino_peak`, a 1024^3 matmul; int8 files at the int8 peak).

*share* = floor / ms. The **bound** is the floor with the largest share, where that share is over the threshold
(50 % unless the command says otherwise); else "none alone". The shares need not sum to 100 %: costs overlap or
go unmodelled (element-wise work, attention's reshapes, cache misses beyond the counted bytes)."""


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of ``ys`` against ``xs``."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def verdict(floors: dict[str, float], ms: float, threshold: float) -> tuple[dict[str, float], str]:
    """Each floor's share of ``ms`` and the bound: the floor of the largest share, if that share exceeds
    ``threshold``, else ``"none alone (<T %)"``."""
    shares = {name: floor / ms for name, floor in floors.items()}
    top = max(shares, key=shares.__getitem__)
    return shares, top if shares[top] > threshold else f"none alone (<{100 * threshold:.0f} %)"


def memory_floor_ms(
    weight_bytes: int, data_bytes: int, l2_bytes: int, dram_gbs: float, cache_gbs: float
) -> tuple[float, str]:
    """Weights at the DRAM bandwidth when they exceed the L2 (else at the L2's), the per-call data (input, output,
    activations) at the L2's; GB/s are 1e6 bytes per ms. Returns the floor (ms) and which bandwidth the weights got."""
    level = "DRAM" if weight_bytes > l2_bytes else "L2"
    weights_gbs = dram_gbs if level == "DRAM" else cache_gbs
    return weight_bytes / (weights_gbs * 1e6) + data_bytes / (cache_gbs * 1e6), level


def l2_bytes() -> int:
    """This core's L2 size (sysfs; 1 MiB where unreadable)."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return int(size[:-1]) << {"K": 10, "M": 20}[size[-1]]
        except (OSError, KeyError, ValueError):
            break
    return 1 << 20


def _bytes(ports: Any) -> int:
    """The bytes of the tensors on ``ports`` (static shapes)."""
    return sum(int(np.prod(port.get_shape())) * port.get_element_type().size for port in ports)


def runtime_figures(compiled: Any) -> dict[str, int]:
    """The runtime nodes of a compiled model (as tools/batch1_graph.py counts them), those on constant paths (run
    once, at compile time), those run per call (the rest, Reshapes left out: done in place), the bytes of the weights
    as the kernels read them and the bytes the per-call nodes write."""
    keys = ("runtime_nodes", "constant_path_nodes", "per_call_nodes", "weight_bytes", "activation_bytes")
    figures, constant = dict.fromkeys(keys, 0), set()
    ops = compiled.get_runtime_model().get_ordered_ops()
    for op in ops:
        kind, name = rt_info(op, "layerType"), op.get_friendly_name()
        sources = {i.get_source_output().get_node().get_friendly_name() for i in op.inputs()}
        figures["runtime_nodes"] += kind not in SKIPPED_RUNTIME
        if kind == "Const" or (sources and sources <= constant):
            constant.add(name)
            figures["constant_path_nodes"] += kind != "Const"
        elif kind not in SKIPPED_RUNTIME | IN_PLACE:
            figures["per_call_nodes"] += 1
            figures["activation_bytes"] += _bytes(op.outputs())
    for op in ops:
        if op.get_friendly_name() not in constant:
            continue
        for out in op.outputs():  # each weight read once, at the widest precision a per-call consumer runs at
            consumers = [i.get_node() for i in out.get_target_inputs()]
            runs_at = [rt_info(c, "runtimePrecision") for c in consumers if c.get_friendly_name() not in constant]
            width = max((PRECISION_BYTES.get(p, 4) for p in runs_at), default=0)
            figures["weight_bytes"] += int(np.prod(out.get_shape())) * min(out.get_element_type().size, width)
    return figures


def node_costs(core: Any, configs: dict[str, dict], seconds: float) -> dict[str, dict]:
    """Per config: the nodes that run in chains of ``CHAIN_LENGTHS`` Softmax ops on a [1, 16] tensor, their median
    times (ms, timed interleaved) and the least-squares slope (ms per node) and intercept (ms per call)."""
    import openvino as ov
    from openvino import opset13 as ops

    from litevit.timing import time_interleaved

    data, runners, nodes = np.ones((1, 16), np.float32), {}, {}
    for name, config in configs.items():
        for length in CHAIN_LENGTHS:
            x = y = ops.parameter([1, 16], np.float32)
            for _ in range(length):
                y = ops.softmax(y, 1)
            compiled = core.compile_model(ov.Model([y], [x]), "CPU", config)
            request = compiled.create_infer_request()
            runners[name, length] = lambda r=request: r.infer({0: data}, share_inputs=True)
            nodes[name, length] = runtime_figures(compiled)["per_call_nodes"]
    times = time_interleaved({f"{c}_{k}": run for (c, k), run in runners.items()}, seconds, 0.1)
    costs = {}
    for name in configs:
        ms = {k: 1e3 * statistics.median(times[f"{name}_{k}"]) for k in CHAIN_LENGTHS}
        slope, intercept = line_fit([nodes[name, k] for k in CHAIN_LENGTHS], list(ms.values()))
        chain_nodes = {k: nodes[name, k] for k in CHAIN_LENGTHS}
        costs[name] = dict(chain_nodes=chain_nodes, chain_ms=ms, node_ms=slope, call_ms=intercept)
    return costs


def bandwidths(l2: int, seconds: float) -> dict[str, float]:
    """GB/s (bytes read + written) of a numpy copy of ``DRAM_COPY`` bytes and of one a quarter of the L2."""
    from litevit.timing import time_interleaved

    dram = np.ones(DRAM_COPY // 4, np.float32), np.empty(DRAM_COPY // 4, np.float32)
    cache = np.ones(l2 // 16, np.float32), np.empty(l2 // 16, np.float32)

    def copies() -> None:
        for _ in range(CACHE_COPIES):
            np.copyto(cache[1], cache[0])

    times = time_interleaved({"dram": lambda: np.copyto(dram[1], dram[0]), "cache": copies}, seconds, seconds / 10)
    moved = {"dram": 2 * DRAM_COPY, "cache": 2 * CACHE_COPIES * cache[0].nbytes}
    return {name: moved[name] / statistics.median(t) / 1e9 for name, t in times.items()}


def measure(name: str, folder: Path, calibration: Path, args: argparse.Namespace, meta: dict) -> list[dict]:
    """The records of one model: its IRs exported and timed interleaved, then the node probes, bandwidths and peaks."""
    import openvino as ov

    import litevit
    from litevit._extras import has_native_bf16
    from litevit.bench.peak import openvino_peak
    from litevit.deploy.exporting import export
    from litevit.deploy.openvino import openvino_config
    from litevit.flops import count_macs
    from litevit.timing import percentile, time_interleaved

    model = litevit.create_model(name).eval()
    size = model.config.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    macs = count_macs(model, size)
    precisions = ("f32", "bf16", "int8") if has_native_bf16() else ("f32", "int8")
    configs = {p: openvino_config(1, "bf16" if p == "bf16" else "f32") for p in precisions}  # int8: float parts f32
    core, x = ov.Core(), np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    runners, figures = {}, {}
    for precision in precisions:
        path = folder / f"{name}_{precision}.xml"
        export(
            model, path, batch=1, precision="fp32" if precision == "f32" else precision,
            calibration=calibration if precision == "int8" else None, calibration_images=args.calibration_images,
        )  # fmt: skip
        compiled = core.compile_model(core.read_model(path), "CPU", configs[precision])
        request = compiled.create_infer_request()
        runners[precision] = lambda r=request: r.infer({0: x}, share_inputs=True)
        figures[precision] = runtime_figures(compiled)
        figures[precision]["io_bytes"] = x.nbytes + _bytes(compiled.outputs)
    times = time_interleaved(runners, args.seconds, args.seconds / 20)
    costs = node_costs(core, {p: configs[p] for p in precisions if p != "int8"}, args.seconds / 4)
    l2 = l2_bytes()
    gbs = bandwidths(l2, args.seconds / 4)
    peak = openvino_peak(1, args.seconds / 4, args.seconds / 20)
    records = []
    for precision in precisions:
        ms = [1e3 * t for t in times[precision]]
        cost, f = costs["bf16" if precision == "bf16" else "f32"], figures[precision]
        data = f["io_bytes"] + f["activation_bytes"]
        memory, level = memory_floor_ms(f["weight_bytes"], data, l2, gbs["dram"], gbs["cache"])
        compute = macs / peak.of(precision) / 1e6
        floors = {"per-node": f["per_call_nodes"] * cost["node_ms"], "memory": memory, "compute": compute}
        shares, bound = verdict(floors, statistics.median(ms), args.threshold)
        record = dict(
            model=name, precision=precision, ms=statistics.median(ms), ms_p10=percentile(ms, 0.1),
            ms_p90=percentile(ms, 0.9), rounds=len(ms), **f, macs=macs,
            **cost, l2_bytes=l2, dram_gbs=gbs["dram"], l2_gbs=gbs["cache"], weights_at=level,
            peak_gmacs=peak.of(precision), peaks_gmacs=peak.gmacs, floors_ms=floors, shares=shares,
            call_share=cost["call_ms"] / statistics.median(ms), bound=bound,
            threshold=args.threshold, load_average=os.getloadavg()[0], **meta,
        )  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
    return records


def report(path: Path) -> str:
    """The markdown tables of a jsonl written by this tool, headed by the method."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    first = records[0]
    lines = [
        f"Hardware: {first['cpu']}; ISA {', '.join(first['isa'])}; torch {first['torch']}, openvino "
        f"{first['openvino']}; {first['threads']} thread, batch 1, static shapes; load average "
        f"{min(r['load_average'] for r in records):.2f}-{max(r['load_average'] for r in records):.2f}. Raw records: "
        f"`{path.as_posix()}`.", "",
        *dict.fromkeys(f"Command: `{r['command']}` (commit {r['commit']})." for r in records), "", METHOD, "",
        "| model | precision | ms (p10-p90) | nodes | per-node floor ms (share) | memory floor ms (share) | "
        "compute floor ms (share) | call ms (share) | bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in records:
        floors = " | ".join(f"{r['floors_ms'][k]:.3f} ({100 * r['shares'][k]:.0f} %)" for k in FLOORS)
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['ms']:.3f} ({r['ms_p10']:.2f}-{r['ms_p90']:.2f}) | "
            f"{r['per_call_nodes']} | {floors} | {r['call_ms']:.3f} ({100 * r['call_share']:.0f} %) | {r['bound']} |"
        )
    lines += [
        "", "The figures behind the floors (measured with each model, in the same process):", "",
        "| model | precision | runtime nodes (constant paths) | MACs (M) | weights MB | in+out+activations MB | "
        "weights at | DRAM GB/s | L2 GB/s | peak GMAC/s | node us | call us |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += [
        f"| {r['model']} | {r['precision']} | {r['runtime_nodes']} ({r['constant_path_nodes']}) | "
        f"{r['macs'] / 1e6:.1f} | {r['weight_bytes'] / 1e6:.2f} | {(r['io_bytes'] + r['activation_bytes']) / 1e6:.2f} "
        f"| {r['weights_at']} | {r['dram_gbs']:.1f} | {r['l2_gbs']:.1f} | {r['peak_gmacs']:.1f} | "
        f"{1e3 * r['node_ms']:.3f} | {1e3 * r['call_ms']:.1f} |"
        for r in records
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing of the IRs and node probes per model")
    parser.add_argument("--calibration", type=Path, help="int8 calibration images (default: synthetic noise)")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.5, help="share a floor must exceed to name the bound")
    parser.add_argument("--out", type=Path, help="append the records to this jsonl file")
    parser.add_argument("--report", type=Path, metavar="JSONL", help="print the markdown tables of a jsonl and stop")
    args = parser.parse_args()
    if args.report is not None:
        print(report(args.report))
        return
    if not args.models:
        parser.error("name at least one model")
    import openvino as ov
    import torch

    from litevit._extras import cpu_isa, cpu_model
    from litevit.bench.timing import git_commit
    from litevit.deploy.int8 import synthetic_calibration

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="litevit-bounds-"))
    meta = dict(
        cpu=cpu_model(), isa=list(cpu_isa()), torch=torch.__version__, openvino=ov.__version__, threads=1, batch=1,
        seconds=args.seconds, calibration=str(args.calibration or "synthetic noise"),
        calibration_images=args.calibration_images, commit=git_commit(),
        command=f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} python tools/batch1_bounds.py "
        + " ".join(sys.argv[1:]),
    )  # fmt: skip
    try:
        calibration = args.calibration or synthetic_calibration(224, 224, args.calibration_images, parent=folder)
        for name in args.models:
            records = measure(name, folder, calibration, args, meta)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
