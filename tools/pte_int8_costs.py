"""The accuracy cost and x86 speed of the int8 ExecuTorch ``.pte`` (PT2E, XNNPACK's quantizer), per family.

Each family's smallest variant, trained at 64 px on scikit-learn's digits (the runs of ``tools/precision_costs.py``'s
configuration, read from ``RUNS/<model>/best.safetensors``; the data set from ``DATA/{train,val}``, as
``precision_costs.make_digits`` writes it), is exported as an fp32 ``.pte`` and as an int8 ``.pte`` calibrated on 300
training images with ``--check`` (its held-out images are training images too), and both files run in ExecuTorch's
runtime on the held-out val images at batch 1: top-1, the drop against PyTorch fp32 top-1, top-1 agreement with
PyTorch fp32, the XNNPACK share and the operators left float. Speed: the two files timed interleaved
(``litevit.timing.time_interleaved``), batch 1, ExecuTorch's threadpool at 1 thread, on this CPU only: XNNPACK's
int8 kernels are tuned for ARM; no ARM device was measured.

    OMP_NUM_THREADS=1 .venv/bin/python tools/pte_int8_costs.py --runs RUNS --data DATA --out benchmarks/mobile/pte_int8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _digits import accuracy, agreement, val_set

import litevit
from litevit._extras import cpu_isa, cpu_model
from litevit.bench.timing import git_commit
from litevit.deploy.executorch import set_threads
from litevit.deploy.exporting import export
from litevit.deploy.runtime import ExportedModel
from litevit.timing import time_interleaved

FAMILY_MODELS = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]


def _run(model: ExportedModel, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i : i + 1]) for i in range(len(images))])


def costs(name: str, runs: Path, data_root: Path, work: Path, seconds: float) -> dict:
    """One family: accuracy of both files on the val images, the int8 export's checks, and their batch-1 times."""
    fp32 = litevit.load(runs / name / "best.safetensors").eval()
    images, targets = val_set(fp32, data_root)
    with torch.inference_mode():
        reference = fp32(images)
    start = time.perf_counter()
    int8 = export(fp32, work / f"{name}-int8.pte", precision="int8", calibration=data_root / "train", check=True)
    export_s = time.perf_counter() - start
    float_file = export(fp32, work / f"{name}-fp32.pte").path
    set_threads(1)
    files = {"fp32": ExportedModel(float_file), "int8": ExportedModel(int8.path)}
    logits = {kind: _run(model, images) for kind, model in files.items()}
    x = images[:1].contiguous()
    times = time_interleaved({kind: (lambda m=model: m(x)) for kind, model in files.items()}, seconds, warmup=1.0)
    median = {kind: statistics.median(values) * 1e3 for kind, values in times.items()}
    check, reference_check, report = int8.int8_check, int8.pte_reference_check, int8.delegation
    row = dict(
        model=name, images=len(targets), top1_pytorch=round(accuracy(reference, targets), 3),
        top1_pte_fp32=round(accuracy(logits["fp32"], targets), 3),
        top1_pte_int8=round(accuracy(logits["int8"], targets), 3),
        agreement_int8=round(agreement(logits["int8"], reference), 3),
        check_agreement=check.agreement, check_correlation=round(check.correlation, 4),
        reference_rel_diff=round(reference_check.max_rel_diff, 5), xnnpack_share=round(report.share, 4),
        quantized_ops=report.quantized, float_ops=report.float_ops, portable_ops=report.remaining,
        ms_fp32=round(median["fp32"], 3), ms_int8=round(median["int8"], 3), calls=len(times["int8"]),
        speedup=round(median["fp32"] / median["int8"], 3), export_int8_s=round(export_s, 1),
    )  # fmt: skip
    row["drop"] = round(row["top1_pytorch"] - row["top1_pte_int8"], 3)
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    n = rows[0]["images"] if rows else 0
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))
    loads = ", ".join(f"{r['model']} {r['load']:.1f}" for r in rows)
    commits = ", ".join(f"{r['model']} {r.get('commit', 'not recorded')}" for r in rows)
    machines: dict[str, list[str]] = {}
    for r in rows:
        machines.setdefault(r["cpu"], []).append(r["model"])
    hardware = "; ".join(f"{cpu} for {', '.join(models)}" for cpu, models in machines.items())
    notes = " ".join(f"{r['model']}: {r['note']}" for r in rows if r.get("note"))
    lines = [
        f"Hardware: {hardware} (2 cores, shared; 1-minute load average when each model started: {loads}); torch "
        f"{torch.__version__}; commit when each model started: {commits}. Commands: {commands}. {notes}".rstrip(),
        "",
        f"Accuracy: each family's smallest variant trained at 64 px on scikit-learn's digits ({n} held-out images, "
        f"1 image = {100 / n if n else 0:.2f} points); drop = PyTorch fp32 top-1 - int8 .pte top-1. Speed: median "
        "ms per image, batch 1, 1 thread, fp32 and int8 .pte interleaved, on these x86 CPUs (XNNPACK's int8 kernels "
        "are tuned for ARM; no ARM device was measured).",
        "",
        "| model | PyTorch fp32 | fp32 .pte | int8 .pte | drop | agreement | XNNPACK share | float in XNNPACK | "
        "fp32 .pte ms | int8 .pte ms | int8 speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        kept = ", ".join(f"{op.split('.')[0]} x{count}" for op, count in sorted(r["float_ops"].items())) or "none"
        lines.append(
            f"| {r['model']} | {r['top1_pytorch']:.2f} | {r['top1_pte_fp32']:.2f} | {r['top1_pte_int8']:.2f} | "
            f"{r['drop']:+.2f} | {r['agreement_int8']:.2f} | {r['xnnpack_share']:.1%} | {kept} | {r['ms_fp32']:.2f} | "
            f"{r['ms_int8']:.2f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=FAMILY_MODELS)
    parser.add_argument("--runs", type=Path, required=True, help="RUNS/<model>/best.safetensors")
    parser.add_argument("--data", type=Path, required=True, help="the digits folder with train/ and val/")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing budget of the two files together")
    parser.add_argument("--out", default="benchmarks/mobile/pte_int8", help="writes OUT.jsonl and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = " ".join(["python", *sys.argv])
    records = Path(args.out + ".jsonl")
    # a later run's row of a model replaces an earlier run's (the models finish training at different times)
    rows = [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
    with tempfile.TemporaryDirectory(prefix="litevit-pte-int8-") as tmp:
        for name in args.models:
            if not (args.runs / name / "best.safetensors").exists():
                print(f"{name}: no trained run under {args.runs}, skipped", file=sys.stderr)
                continue
            load, commit = os.getloadavg()[0], git_commit()  # as the model starts
            row = costs(name, args.runs, args.data, Path(tmp), args.seconds)
            cpu = f"{cpu_model()} [{', '.join(cpu_isa()) or 'unknown'}]"
            row = {**row, "cpu": cpu, "load": load, "commit": commit, "command": command}
            rows = [r for r in rows if r["model"] != name] + [row]
            records.write_text("".join(json.dumps(r) + "\n" for r in rows))
            Path(args.out + ".md").write_text(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
