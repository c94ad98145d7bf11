"""Peak memory of one training step with and without ``model.set_grad_checkpointing(True)``, on CPU.

Each measurement runs in a fresh process: it builds the model, notes its resident memory, runs one forward and
backward pass at the given resolution and batch, and reports the growth of the peak resident set
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) over that baseline, which is what the step added.

    python tools/grad_checkpointing_memory.py levit_256 mobilevit_s --img-size 512 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(name: str, img_size: int, batch: int, checkpointing: bool) -> None:
    import time

    import torch
    import torch.nn.functional as F

    import litevit

    torch.manual_seed(0)
    model = litevit.create_model(name, img_size=img_size).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch, 3, img_size, img_size)
    y = torch.zeros(batch, dtype=torch.long)
    base = _rss_mib()
    tic = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"step_peak_mib": peak - base, "seconds": seconds}))


def measure(name: str, img_size: int, batch: int, checkpointing: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", name, "--img-size", str(img_size), "--batch", str(batch)]
    if checkpointing:
        cmd.append("--checkpointing")
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.models[0], args.img_size, args.batch, args.checkpointing)
        return
    import torch

    from litevit._extras import cpu_isa, cpu_model

    isa = ", ".join(cpu_isa()) or platform.machine()
    print(f"# {cpu_model()} ({isa}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | input | batch | step peak MiB plain | with checkpointing | saved | step s plain | with |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        plain = measure(name, args.img_size, args.batch, False)
        ckpt = measure(name, args.img_size, args.batch, True)
        saved = 1 - ckpt["step_peak_mib"] / plain["step_peak_mib"]
        print(
            f"| {name} | {args.img_size} | {args.batch} | {plain['step_peak_mib']:.0f} | {ckpt['step_peak_mib']:.0f} "
            f"| {saved:.0%} | {plain['seconds']:.1f} | {ckpt['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
