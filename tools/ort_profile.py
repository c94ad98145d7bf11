"""Per-operator onnxruntime time of litevit's export against timm's (same weights, same opset), 1 thread;
with ``--int8``, of litevit's fp32 export against its QDQ int8 export instead.

Usage: OMP_NUM_THREADS=1 python tools/ort_profile.py levit_128s [batch] [runs] [--int8]
Prints a header line (the command, commit, CPU and instruction sets, package versions, the load average when it
started: kernel times on a shared machine are noisy), then for each graph the kernel time per run and the share of
each operator type. Save the output under ``benchmarks/speed/`` (and list it in ``benchmarks/README.md``) when the
README quotes it.
"""

import argparse
import collections
import json
import os
import sys
import tempfile

import onnxruntime as ort
import timm
import torch

import litevit
from litevit.bench.runtimes import ONNX_OPSET
from litevit.bench.timing import device_name, git_commit
from litevit.deploy.exporting import export
from litevit.deploy.int8 import synthetic_calibration


def profile(path: str, x: torch.Tensor, runs: int) -> tuple[float, list[tuple[str, float]]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = path.removesuffix(".onnx")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    session.run(None, feed)  # warm-up
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    return total / (runs + 1) / 1e3, [(op, 100 * t / total) for op, t in per_op.most_common(10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("batch", type=int, nargs="?", default=16)
    parser.add_argument("runs", type=int, nargs="?", default=5)
    parser.add_argument("--int8", action="store_true", help="litevit fp32 against litevit QDQ int8")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(
        f"# OMP_NUM_THREADS={threads} python tools/ort_profile.py {' '.join(sys.argv[1:])}; commit {git_commit()}; "
        f"{device_name('cpu')}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    torch.set_num_threads(1)
    folder = tempfile.mkdtemp()
    if args.int8:
        ours = litevit.create_model(args.name).eval()
        size = ours.config.img_size
        export(ours, f"{folder}/fp32.onnx", opset=ONNX_OPSET)
        calibration = synthetic_calibration(size, size)
        export(ours, f"{folder}/int8.onnx", int8=True, calibration=calibration, calibration_images=32)
        labels = ("fp32", "int8")
    else:
        variant = litevit.get_variant(args.name)
        timm_name = next(n for n in variant.external_names if n in timm.list_models())
        theirs = timm.create_model(timm_name).eval()
        ours = litevit.create_model(args.name, checkpoint=theirs.state_dict()).eval()
        size = ours.config.img_size
        x = torch.randn(1, 3, size, size)
        export(ours, f"{folder}/litevit.onnx", format="onnx", img_size=size, opset=ONNX_OPSET)
        torch.onnx.export(
            theirs, (x,), f"{folder}/timm.onnx", input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
        )  # fmt: skip
        labels = ("litevit", "timm")
    x = torch.randn(args.batch, 3, size, size)
    for label in labels:
        ms, shares = profile(f"{folder}/{label}.onnx", x, args.runs)
        print(f"{label}: {ms:.1f} ms/run of kernels; " + ", ".join(f"{op} {share:.1f}%" for op, share in shares))


if __name__ == "__main__":
    main()
