"""The measurement behind ``litevit.deploy.int8.INT8_SETTINGS``: accuracy and speed of int8 settings per family.

Accuracy: each family's representative is trained at 64 px on drawn textures (8 classes, 100 training and 50
held-out images each), quantized with every candidate settings through ``litevit.export`` (calibrated on 100 training
images) and evaluated on the 400 held-out images: top-1 and top-1 agreement with the fp32 model.
Speed: at the variant's own resolution with random weights, every candidate file and onnxruntime fp32 are timed
interleaved at batch 1 (and 16 with ``--batch 1 16``), 1 thread; ratios are onnxruntime fp32 time / candidate time.

    OMP_NUM_THREADS=1 .venv/bin/python tools/int8_settings.py --out benchmarks/accuracy/int8_settings [--batch 1 16]

The rule that picks a family's settings (printed, then written into ``INT8_SETTINGS`` by hand), per route (OpenVINO,
onnxruntime): among the candidates whose top-1 drop is within 0.5 points of the route's smallest, the smallest drop
among those within 5 % of the fastest's batch-1 speed; without ``--batch`` (no timings) the smallest drop.
``--rechoose JSONL [JSONL ...]`` applies the rule again to finished runs' records: a later file's accuracy (or
speed) records of a model replace the earlier files' (a family measured again with more ``--epochs``).
The chosen settings' speed is what ``litevit bench`` measures.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import litevit
from litevit._extras import cpu_isa
from litevit.bench import run as bench
from litevit.bench.runtimes import ONNX_OPSET
from litevit.data import eval_transform, image_folder
from litevit.deploy.exporting import export
from litevit.deploy.int8 import Int8Settings
from litevit.deploy.runtime import ExportedModel
from litevit.predict import evaluate, preprocessing
from litevit.training import train as T

FAMILY_MODELS = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
CANDIDATES = {  # name -> (suffix, settings)
    "ov-nncf-defaults": (".xml", Int8Settings(transformer=False, preset="performance")),
    "ov-mixed": (".xml", Int8Settings(transformer=False)),
    "ov-transformer": (".xml", Int8Settings()),
    "ov-transformer-no-smoothquant": (".xml", Int8Settings(smooth_quant=False)),
    "ov-transformer-float-ends": (".xml", Int8Settings(float_ends=True)),
    "ov-float-depthwise": (".xml", Int8Settings(transformer=False, preset="performance", float_depthwise=True)),
    "ort-per-channel": (".onnx", Int8Settings()),
    "ort-per-tensor": (".onnx", Int8Settings(per_channel=False)),
    "ort-percentile": (".onnx", Int8Settings(calibration="percentile")),
    "ort-float-ends": (".onnx", Int8Settings(onnx_float_ends=True)),
}
TEXTURES = ("hstripes", "vstripes", "diag_up", "diag_down", "rings", "checker", "dots", "blob")


def draw(kind: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One texture of class ``kind`` in random colours, period, phase and position, with pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period, phase = rng.uniform(6, 14), rng.uniform(0, 14)
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    coordinate = {
        "hstripes": yy,
        "vstripes": xx,
        "diag_up": (xx + yy) / np.sqrt(2),
        "diag_down": (xx - yy) / np.sqrt(2),
        "rings": np.hypot(yy - cy, xx - cx),
    }
    if kind in coordinate:
        mask = (coordinate[kind] + phase) % period < period / 2
    elif kind == "checker":
        mask = ((xx + phase) // (period / 2) + (yy + phase) // (period / 2)) % 2 == 0
    elif kind == "dots":
        mask = np.hypot((xx + phase) % period - period / 2, (yy + phase) % period - period / 2) < period / 4
    else:
        mask = np.hypot(yy - cy, xx - cx) < rng.uniform(size * 0.15, size * 0.3)
    background, foreground = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(background - foreground).sum() < 150:
        foreground = rng.integers(0, 256, 3)
    image = np.where(mask[..., None], foreground, background) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_textures(root: Path, per_class: int, seed: int, tint: bool = False) -> Path:
    """``per_class`` textures of every class under ``root/<class>/``; ``tint`` blends each image half-way with a
    colour of its class (hue class/8), so that classes differ in colour as well as in pattern."""
    rng = np.random.default_rng(seed)
    for c, kind in enumerate(TEXTURES):
        (root / kind).mkdir(parents=True, exist_ok=True)
        hue = np.array(colorsys.hsv_to_rgb(c / len(TEXTURES), 0.8, 1.0)) * 255
        for i in range(per_class):
            image = draw(kind, rng)
            if tint:
                image = Image.fromarray(
                    np.clip(0.5 * np.asarray(image, np.float32) + 0.5 * hue, 0, 255).astype(np.uint8)
                )
            image.save(root / kind / f"{i}.png")
    return root


def accuracy(name: str, root: Path, work: Path, epochs: int) -> list[dict]:
    """Train ``name`` at 64 px, quantize it with every candidate, evaluate on the held-out textures."""
    run = work / f"{name}-run"
    config = T.TrainConfig(
        model=name, data=str(root), out=str(run), img_size=64, epochs=epochs, batch_size=32, lr=2e-3,
        warmup_epochs=1.0, ema=False, label_smoothing=0.0, workers=0, progress=False, crop_scale=(0.6, 1.0),
    )  # fmt: skip
    T.train(config)
    fp32 = litevit.load(run / T.BEST_EXPORT).eval()
    data, size, _ = preprocessing(fp32)
    images = torch.stack([x for x, _ in image_folder(root / "val", eval_transform(data, size))])
    with torch.inference_mode():
        reference = fp32(images).argmax(-1)
    top1_fp32 = evaluate(fp32, root / "val", workers=0, progress=False).top1
    rows = []
    for candidate, (suffix, settings) in CANDIDATES.items():
        path = work / f"{name}-{candidate}{suffix}"
        export(fp32, path, int8=True, calibration=root / "train", calibration_images=100, int8_settings=settings)
        int8 = ExportedModel(path)
        top1 = evaluate(int8, root / "val", workers=0, progress=False).top1
        agree = float((int8(images).argmax(-1) == reference).float().mean()) * 100
        rows.append(dict(model=name, candidate=candidate, top1_fp32=top1_fp32, top1_int8=top1, agreement=agree))
        print(f"{name:18s} {candidate:26s} fp32 {top1_fp32:5.1f}  int8 {top1:5.1f}  agreement {agree:5.1f}", flush=True)
    return rows


def speed(name: str, root: Path, work: Path, batches: list[int], seconds: float) -> list[dict]:
    """Every candidate at the variant's resolution (random weights) against onnxruntime fp32, interleaved."""
    torch.set_num_threads(1)
    model = litevit.create_model(name).eval()
    files = {"ort-fp32": export(model, work / f"{name}-fp32.onnx", opset=ONNX_OPSET).path}
    for candidate, (suffix, settings) in CANDIDATES.items():
        if candidate in ("ort-percentile",):  # the same graph as ort-per-channel, other scales
            continue
        path = work / f"{name}-{candidate}-full{suffix}"
        files[candidate] = export(model, path, int8=True, calibration=root / "train", calibration_images=32,
                                  int8_settings=settings).path  # fmt: skip
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, *bench.model_input_size(model))
        runners = {}
        for candidate, path in files.items():
            exported = ExportedModel(path, threads=1)
            runners[candidate] = lambda exported=exported, x=x: exported(x)
        times = bench.time_interleaved(runners, seconds * len(runners), 1.0, lambda: None)
        for candidate, samples in times.items():
            ratios = [a / b for a, b in zip(times["ort-fp32"], samples, strict=True)]
            ratios.sort()
            rows.append(dict(
                model=name, candidate=candidate, batch=batch, median_ms=statistics.median(samples) * 1e3,
                vs_ort_fp32=statistics.median(ratios), p10=ratios[len(ratios) // 10], p90=ratios[9 * len(ratios) // 10],
            ))  # fmt: skip
            row = rows[-1]
            print(f"{name:18s} {candidate:26s} b{batch:<3d} {row['median_ms']:8.2f} ms  "
                  f"x{row['vs_ort_fp32']:.2f} ({row['p10']:.2f}-{row['p90']:.2f})", flush=True)  # fmt: skip
    return rows


def choose(acc: list[dict], spd: list[dict]) -> list[dict]:
    """Per model and route, among the candidates whose top-1 drop is within 0.5 points of the route's smallest, the
    smallest drop among those within 5 % of the fastest's speed (timing noise is a few %; without timings: the
    smallest drop)."""
    first_batch = min((r["batch"] for r in spd), default=None)
    chosen = []
    for name in dict.fromkeys(r["model"] for r in acc):
        rows = {r["candidate"]: r for r in acc if r["model"] == name}
        drop = {c: r["top1_fp32"] - r["top1_int8"] for c, r in rows.items()}
        ratio = {r["candidate"]: r["vs_ort_fp32"] for r in spd if r["model"] == name and r["batch"] == first_batch}
        ratio["ort-percentile"] = ratio.get("ort-per-channel", 0.0)  # the same graph, other scales
        pick = {}
        for route, prefix in (("openvino", "ov-"), ("onnxruntime", "ort-")):
            candidates = [c for c in rows if c.startswith(prefix)]
            smallest = min(drop[c] for c in candidates)
            close = [c for c in candidates if drop[c] <= smallest + 0.5]
            fastest = max(ratio.get(c, 0.0) for c in close)
            fast = [c for c in close if ratio.get(c, 0.0) >= 0.95 * fastest]
            pick[route] = min(fast, key=lambda c: (drop[c], -ratio.get(c, 0.0)))
        chosen.append(dict(
            kind="chosen", model=name, openvino=pick["openvino"], onnxruntime=pick["onnxruntime"],
            openvino_drop=drop[pick["openvino"]], onnxruntime_drop=drop[pick["onnxruntime"]],
            nncf_defaults_drop=drop["ov-nncf-defaults"],
        ))  # fmt: skip
    return chosen


def markdown(acc: list[dict], spd: list[dict], chosen: list[dict]) -> str:
    lines = [
        f"Hardware: {bench.device_name('cpu')}; ISA {', '.join(cpu_isa()) or 'unknown'}; torch {torch.__version__}; "
        f"commit {bench.git_commit()}. Command: `{' '.join(['python', *sys.argv])}`.",
        "",
        "Accuracy: trained at 64 px on 8 drawn texture classes, 400 held-out images (1 image = 0.25 points).",
        "",
        "| model | candidate | fp32 top-1 | int8 top-1 | drop | agreement with fp32 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in acc:
        drop = r["top1_fp32"] - r["top1_int8"]
        lines.append(f"| {r['model']} | {r['candidate']} | {r['top1_fp32']:.2f} | {r['top1_int8']:.2f} | "
                     f"{drop:+.2f} | {r['agreement']:.2f} |")  # fmt: skip
    if spd:
        lines += [
            "",
            "Speed: own resolution, random weights, 1 thread, interleaved; ratio = onnxruntime fp32 time / this time "
            "(median, p10-p90 of per-round ratios).",
            "",
            "| model | candidate | batch | median ms | vs onnxruntime fp32 |",
            "|---|---|---:|---:|---|",
        ]
    for r in spd:
        lines.append(f"| {r['model']} | {r['candidate']} | {r['batch']} | {r['median_ms']:.2f} | "
                     f"{r['vs_ort_fp32']:.2f} ({r['p10']:.2f}-{r['p90']:.2f}) |")  # fmt: skip
    rule = (
        "Chosen per route: among candidates within 0.5 points of the route's smallest drop, the smallest drop "
        "among those within 5 % of the fastest's batch-1 speed (without timings: the smallest drop)."
    )
    lines += ["", rule, ""]
    lines += [f"- {c['model']}: OpenVINO {c['openvino']} (drop {c['openvino_drop']:+.2f}), onnxruntime "
              f"{c['onnxruntime']} (drop {c['onnxruntime_drop']:+.2f}); NNCF defaults drop "
              f"{c['nncf_defaults_drop']:+.2f}" for c in chosen]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=FAMILY_MODELS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="*", default=[], help="also time the candidates at these batches")
    parser.add_argument("--seconds", type=float, default=4.0, help="timing budget per file and batch size")
    parser.add_argument("--out", default="benchmarks/accuracy/int8_settings", help="writes OUT.jsonl and OUT.md")
    parser.add_argument("--rechoose", nargs="+", metavar="JSONL", help="no run: choose again from these records")
    args = parser.parse_args()
    if args.rechoose:
        write(Path(args.out), *merged(args.rechoose))
        return
    torch.set_num_threads(1)  # the papers' CPU protocol, and no oversubscription next to other jobs
    work = Path(tempfile.mkdtemp(prefix="litevit-settings-"))
    root = work / "textures"
    make_textures(root / "train", 100, seed=0)
    make_textures(root / "val", 50, seed=1)
    acc, spd = [], []
    for name in args.models:
        acc += accuracy(name, root, work, args.epochs)
        if args.batch:
            spd += speed(name, root, work, args.batch, args.seconds)
    write(Path(args.out), acc, spd)


def merged(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """Accuracy and speed records of several runs; a later run's records of a model replace an earlier run's."""
    kept: dict[str, list[dict]] = {"accuracy": [], "speed": []}
    for path in paths:
        records = [json.loads(line) for line in open(path)]
        for kind, rows in kept.items():
            new = [{k: v for k, v in r.items() if k != "kind"} for r in records if r["kind"] == kind]
            replaced = {r["model"] for r in new}
            kept[kind] = [r for r in rows if r["model"] not in replaced] + new
    return kept["accuracy"], kept["speed"]


def write(out: Path, acc: list[dict], spd: list[dict]) -> None:
    chosen = choose(acc, spd)
    with open(out.with_suffix(".jsonl"), "w") as f:
        for row in acc:
            f.write(json.dumps({"kind": "accuracy", **row}) + "\n")
        for row in spd:
            f.write(json.dumps({"kind": "speed", **row}) + "\n")
        for row in chosen:
            f.write(json.dumps(row) + "\n")
    out.with_suffix(".md").write_text(markdown(acc, spd, chosen))
    print(markdown(acc, spd, chosen))


if __name__ == "__main__":
    main()
