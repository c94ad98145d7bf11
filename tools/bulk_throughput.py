"""Bulk prediction speed: ``predict --out`` against the model alone (what ``litevit bench`` times: the same file on a
constant batch) and against decoding alone, on generated JPEGs of mixed sizes about 500x375; and the JPEG decoders.

For each model: export an int8 OpenVINO IR (random weights: speed does not depend on their values; calibrated on 32
of the images), then time in interleaved rounds, in this process:
  model            the IR on a constant batch, ``--threads`` threads (images/s, as ``litevit bench`` measures it);
  decode_<dec>     the images through predict's decoding (``--workers`` processes; the uint8 batches normalised
                   in this process) and nothing else;
  predict_<dec>    ``litevit.predict_files`` into a Parquet file, the same IR, batch and threads, ``--workers``
                   decoders;
for both decoders (``pil``, ``torchvision``), with the CPU seconds each took per image (this process and its
workers): on a shared machine the wall-clock rates depend on the other jobs, the CPU time much less. Then the
decoders on one process: PIL (predict's ``load_image`` + transform), PIL with JPEG draft mode where the crop allows it,
torchvision's ``decode_jpeg``. One JSON line per model and measure into ``--out``.

    python tools/bulk_throughput.py --images runs/bulk/jpegs --count 2000 --out benchmarks/speed/bulk_throughput.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import litevit
from litevit._extras import cpu_isa, cpu_model
from litevit.bulk import predict_files
from litevit.bulk.local import decoded
from litevit.data import DECODERS, eval_transform, load_image
from litevit.deploy.runtime import ExportedModel
from litevit.predict import normalized, preprocessing

MODELS = ("levit_128s", "mobilevit_xxs")


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs (quality 90) of smooth colour fields with noise, sides drawn around 500x375 (either
    orientation, 400-600 by 300-450); made once, kept."""
    folder.mkdir(parents=True, exist_ok=True)
    rs = np.random.RandomState(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        long, short = int(rs.uniform(400, 600)), int(rs.uniform(300, 450))
        width, height = (long, short) if rs.rand() < 0.75 else (short, long)
        if not path.exists():
            yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
            freq = rs.uniform(8, 60, size=3)
            planes = [128 + 100 * np.sin(xx / f + rs.uniform(0, 6)) * np.cos(yy / f) for f in freq]
            pixels = np.stack(planes, axis=-1) + rs.normal(0, 12, (height, width, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def time_model(model: ExportedModel, batch: int, seconds: float) -> tuple[float, float]:
    """Images/s of the file on a constant batch (bench's measure); CPU s per image."""
    data, img_size, _ = preprocessing(model)
    x = torch.randn(batch, 3, *img_size)
    model(x)
    calls, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - start < seconds:
        model(x)
        calls += 1
    return calls * batch / (time.perf_counter() - start), (cpu_seconds() - cpu) / (calls * batch)


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (the decoding workers, joined at the end of a run)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_decode(paths: list[str], model: ExportedModel, batch: int, workers: int, decoder: str) -> tuple[float, float]:
    """Images/s of predict's decoding alone (its worker processes, its batches, normalised in this process as predict
    does), results dropped; CPU s per image."""
    data, img_size, _ = preprocessing(model)
    start, cpu = time.perf_counter(), cpu_seconds()
    count = 0
    for chunk, images, _ in decoded(iter(paths), data, img_size, batch, workers, decoder):
        normalized(images, data)
        count += len(chunk)
    return count / (time.perf_counter() - start), (cpu_seconds() - cpu) / count


def time_predict(
    paths: list[str], model: ExportedModel, batch: int, workers: int, folder: Path, decoder: str
) -> tuple[float, float]:
    out = folder / f"rows-{time.monotonic_ns()}.parquet"
    cpu = cpu_seconds()
    summary = predict_files(model, paths, out, batch_size=batch, workers=workers, progress=False, decoder=decoder)
    used = (cpu_seconds() - cpu) / summary.rows
    out.unlink()
    assert summary.rows == len(paths) and summary.errors == 0
    return summary.images_per_s, used


def draft_load(path: str, size: tuple[int, int]) -> Image.Image:
    """PIL with JPEG draft mode: the DCT scaled down by 1/2, 1/4 or 1/8 while it stays at least ``size``."""
    image = Image.open(path)
    image.draft("RGB", size)
    return image.convert("RGB")


def time_decoders(paths: list[str], name: str, rounds: int) -> dict[str, object]:
    """Images/s of three ways to decode + preprocess on one process, interleaved, and the largest pixel difference
    each leaves after preprocessing against predict's (PIL) way."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    data = litevit.get_variant(name).data
    transform = eval_transform(data)
    resize = int(data.img_size / data.crop_pct)
    ways = {
        "pil": lambda p: transform(load_image(p)),
        "pil_draft": lambda p: transform(draft_load(p, (resize, resize))),
        "torchvision_decode_jpeg": lambda p: transform(decode_jpeg(read_file(p), mode=ImageReadMode.RGB)),
    }
    rates: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for key, way in ways.items():
            start = time.perf_counter()
            for p in paths:
                way(p)
            rates[key].append(len(paths) / (time.perf_counter() - start))
    diffs = {k: max(float((way(p) - ways["pil"](p)).abs().max()) for p in paths[:50]) for k, way in ways.items()}
    return {"rates": rates, "max_abs_diff_normalised": diffs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("runs/bulk/jpegs"))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="model threads (the IR's and torch's)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the 5 measures, each round in a new order")
    parser.add_argument("--seconds", type=float, default=10.0, help="model-alone timing per round")
    parser.add_argument("--decoder-images", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--note", default="random weights; images generated (make_jpegs)", help="the machine's state")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = [str(p) for p in make_jpegs(args.images, args.count)]
    base = {
        "cpu": cpu_model(), "isa": list(cpu_isa()), "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "openvino": __import__("openvino").__version__, "python": platform.python_version(),
        "litevit": litevit.__version__, "command": "python " + shlex.join(sys.argv), "images": len(paths),
        "batch": args.batch, "threads": args.threads, "workers": args.workers,
        "note": args.note,
    }  # fmt: skip
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models:
            calib = folder / f"calib-{name}" / "x"
            calib.mkdir(parents=True)
            for p in paths[:32]:
                (calib / Path(p).name).symlink_to(Path(p).resolve())
            ir = folder / f"{name}_int8.xml"
            litevit.export(name, ir, precision="int8", calibration=calib.parent, calibration_images=32)
            model = ExportedModel(ir, threads=args.threads)
            kinds = ["model", *(f"{what}_{dec}" for dec in DECODERS for what in ("decode", "predict"))]
            rates: dict[str, list[float]] = {k: [] for k in kinds}
            cpu: dict[str, list[float]] = {k: [] for k in kinds}
            loads: list[float] = []
            for r in range(args.rounds):
                for what in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                    loads.append(os.getloadavg()[0])
                    if what == "model":
                        rate, used = time_model(model, args.batch, args.seconds)
                    elif what.startswith("decode"):
                        rate, used = time_decode(paths, model, args.batch, args.workers, what.split("_", 1)[1])
                    else:
                        rate, used = time_predict(paths, model, args.batch, args.workers, folder, what.split("_", 1)[1])
                    rates[what].append(rate)
                    cpu[what].append(used)
                print(name, {k: [round(v, 1) for v in vs] for k, vs in rates.items()}, flush=True)
            median = {k: statistics.median(v) for k, v in rates.items()}
            ratios = {
                f"predict_{dec}_over_{base_}": [p / b for p, b in zip(rates[f"predict_{dec}"], rates[ref], strict=True)]
                for dec in DECODERS
                for base_, ref in (("model", "model"), ("decode", f"decode_{dec}"))
            }  # per round: each pair measured back to back
            records.append({**base, "model": name, "route": f"openvino int8 {ir.name}", "images_per_s": rates,
                            "median": median, "cpu_ms_per_image": {k: [1e3 * v for v in vs] for k, vs in cpu.items()},
                            "ratios_per_round": ratios, "load_average_1min": loads})  # fmt: skip
            decoders = time_decoders(paths[: args.decoder_images], name, args.rounds)
            records.append({**base, "model": name, "measure": "decoders, 1 process", **decoders})
            print(json.dumps(records[-2]["median"]), json.dumps(decoders), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main()
