"""Peak memory of ``litevit predict --out`` against the number of images: the resident memory of the whole process
tree (the command and its decoding workers; PSS, and summed RSS), sampled every 0.2 s, for each ``--counts`` over
generated JPEGs (tools/bulk_throughput.py's make_jpegs, about 500x375): ``--distinct`` image files, each path of the
run a link to one of them in turn (20,000 distinct JPEGs take hours to generate on a shared 2-core machine; rows and
memory depend on the paths, not on how many distinct files lie behind them). Flat: the peak does not grow with the
count.

    python tools/bulk_memory.py --images runs/bulk/jpegs --counts 2000 20000 --out benchmarks/memory/bulk_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from bulk_throughput import make_jpegs

import litevit
from litevit._extras import cpu_isa, cpu_model


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """Resident bytes of a process and all its descendants: summed RSS (pages a forked worker shares with its parent
    counted twice) and summed PSS (shared pages divided among the processes that share them)."""
    rss = pss = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


def run(command: list[str], parts: Path) -> dict[str, object]:
    """Run ``command``; its peak tree memory, and the PSS when each part had been written."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak_rss = peak_pss = 0
    timeline = []
    while child.poll() is None:
        rss, pss = tree_memory(process)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        done = len(list(parts.glob("part-*"))) if parts.is_dir() else 0
        if not timeline or timeline[-1][0] != done:
            timeline.append((done, pss))
        time.sleep(0.2)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed: {err.strip().splitlines()[-1:]}")
    return {"peak_rss_sum_mib": peak_rss / 2**20, "peak_pss_mib": peak_pss / 2**20,
            "pss_mib_by_parts_written": [(d, r / 2**20) for d, r in timeline],
            "seconds": time.perf_counter() - started, "summary": out.strip()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("runs/bulk/jpegs"))
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--distinct", type=int, default=2000, help="image files behind the paths")
    parser.add_argument("--model", default="levit_128s")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    files = make_jpegs(args.images, args.distinct)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ir = folder / f"{args.model}_int8.xml"
        calib = folder / "calib" / "x"
        calib.mkdir(parents=True)
        for p in files[:32]:
            (calib / p.name).symlink_to(p.resolve())
        litevit.export(args.model, ir, precision="int8", calibration=calib.parent, calibration_images=32)
        for count in args.counts:
            links = folder / f"links-{count}"
            links.mkdir()
            for i in range(count):
                (links / f"{i:06d}.jpg").symlink_to(files[i % len(files)].resolve())
            listing = folder / f"list-{count}.txt"
            listing.write_text("".join(f"{links / f'{i:06d}.jpg'}\n" for i in range(count)))
            out = folder / f"rows-{count}.parquet"
            command = [sys.executable, "-m", "litevit", "predict", str(ir), f"@{listing}", "--out", str(out),
                       "--workers", str(args.workers), "--quiet"]  # fmt: skip
            result = run(command, folder / f"rows-{count}.parquet.parts")
            records.append({
                "cpu": cpu_model(), "isa": list(cpu_isa()), "torch": torch.__version__,
                "python": platform.python_version(), "litevit": litevit.__version__,
                "tool": "python " + shlex.join(sys.argv),
                "measured": "litevit " + shlex.join(command[3:]), "images": count, "model": args.model,
                "route": "openvino int8 (random weights)", "distinct_files": len(files),
                "note": "machine shared with other jobs", **result,
            })  # fmt: skip
            print(json.dumps({k: v for k, v in records[-1].items() if k != "pss_mib_by_parts_written"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
