"""The accuracy cost of every deployable precision, per family, on models trained on real handwritten digits.

Each family's smallest variant is trained at 64 px on scikit-learn's digits (1,797 scans of handwritten digits, 8x8
grey levels, shipped inside scikit-learn: no download), upsampled to 64x64 RGB, 70 % for training and 30 % held out
(stratified, fixed seed). The trained model is exported once as an fp32 OpenVINO IR and once as an int8 IR (NNCF with
the family's ``INT8_SETTINGS``, calibrated on 300 training images), plus fp32 and int8 ONNX files, and every route
is evaluated on the held-out images:

- ``ov-fp32`` and ``ov-bf16``: the fp32 IR compiled with ``INFERENCE_PRECISION_HINT`` f32 / bf16 (litevit's one set
  of compile settings, ``litevit.deploy.openvino.openvino_config``);
- ``ov-int8`` and ``ov-int8-bf16``: the int8 IR with its float parts at f32 / bf16;
- ``ort-fp32`` and ``ort-int8``: onnxruntime.

Each row gives top-1, the drop against PyTorch fp32 top-1, and top-1 agreement with PyTorch fp32. bf16 rows are
only measured on a CPU with native bf16 (AVX512_BF16 or AMX-BF16): elsewhere OpenVINO runs them in f32 and the tool
skips them. The routes are named as ``litevit.deploy.routes.Route`` names them. These per-family drops are
documentation: ``export --fastest`` measures the model at hand on the user's own images.

    OMP_NUM_THREADS=2 .venv/bin/python tools/precision_costs.py --out benchmarks/accuracy/precision_costs [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _digits import accuracy, agreement, val_set
from PIL import Image

import litevit
from litevit._extras import cpu_isa, cpu_model, has_native_bf16, require
from litevit.bench.timing import git_commit
from litevit.deploy.exporting import export
from litevit.deploy.openvino import openvino_config
from litevit.deploy.runtime import ExportedModel
from litevit.training import train as T

FAMILY_MODELS = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
SIZE = 64


def make_digits(root: Path, seed: int = 0, held_out: float = 0.3) -> Path:
    """scikit-learn's digits as ``root/{train,val}/<digit>/<i>.png``, 64x64 RGB, a stratified split."""
    datasets = require("sklearn.datasets", "the digits data set (scikit-learn)")
    digits = datasets.load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = np.flatnonzero(digits.target == label)
        rng.shuffle(indices)
        cut = int(round(len(indices) * held_out))
        for split, chosen in (("val", indices[:cut]), ("train", indices[cut:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                grey = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels
                image = Image.fromarray(grey).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
                image.save(folder / f"{i}.png")
    return root


def _ov_predict(path: Path, precision: str, images: torch.Tensor) -> torch.Tensor:
    ov = require("openvino", "OpenVINO")
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([1, *images.shape[1:]])
    compiled = core.compile_model(model, "CPU", openvino_config(None, precision))
    request = compiled.create_infer_request()
    rows = [np.array(request.infer({0: images[i : i + 1].numpy()})[0]) for i in range(len(images))]
    return torch.from_numpy(np.concatenate(rows))


def costs(name: str, root: Path, work: Path, epochs: int) -> list[dict]:
    run = work / f"{name}-run"
    start = time.perf_counter()
    config = T.TrainConfig(
        model=name, data=str(root), out=str(run), img_size=SIZE, epochs=epochs, batch_size=32, lr=2e-3,
        warmup_epochs=1.0, ema=False, label_smoothing=0.0, workers=0, progress=False, crop_scale=(0.8, 1.0),
    )  # fmt: skip
    T.train(config)
    train_s = time.perf_counter() - start
    fp32 = litevit.load(run / T.BEST_EXPORT).eval()
    images, targets = val_set(fp32, root)
    with torch.inference_mode():
        reference = fp32(images)
    top1_fp32 = accuracy(reference, targets)
    files = {
        "ov-fp32": export(fp32, work / f"{name}-fp32.xml").path,
        "ov-int8": export(fp32, work / f"{name}-int8.xml", int8=True, calibration=root / "train").path,
        "ort-fp32": export(fp32, work / f"{name}-fp32.onnx").path,
        "ort-int8": export(fp32, work / f"{name}-int8.onnx", int8=True, calibration=root / "train").path,
    }
    outputs = {
        "ov-fp32": _ov_predict(files["ov-fp32"], "f32", images),
        "ov-int8": _ov_predict(files["ov-int8"], "f32", images),
        "ort-fp32": ExportedModel(files["ort-fp32"])(images),
        "ort-int8": ExportedModel(files["ort-int8"])(images),
    }
    if has_native_bf16():
        outputs["ov-bf16"] = _ov_predict(files["ov-fp32"], "bf16", images)
        outputs["ov-int8-bf16"] = _ov_predict(files["ov-int8"], "bf16", images)
    rows = []
    for route, logits in outputs.items():
        top1 = accuracy(logits, targets)
        agreement_fp32 = agreement(logits, reference)
        rows.append(dict(
            model=name, route=route, top1_fp32=round(top1_fp32, 3), top1=round(top1, 3),
            drop=round(top1_fp32 - top1, 3), agreement=round(agreement_fp32, 3), images=len(targets),
            epochs=epochs, train_s=round(train_s, 1),
        ))  # fmt: skip
        r = rows[-1]
        print(f"{name:18s} {route:14s} fp32 {top1_fp32:6.2f}  {top1:6.2f}  drop {r['drop']:+5.2f}  "
              f"agreement {agreement_fp32:6.2f}", flush=True)  # fmt: skip
    return rows


def markdown(rows: list[dict], command: str) -> str:
    isa = ", ".join(cpu_isa()) or "unknown"
    lines = [
        f"Hardware: {cpu_model()} [{isa}]; torch {torch.__version__}; commit {git_commit()}. Command: `{command}`.",
        "",
        f"Accuracy: each family's smallest variant trained at {SIZE} px on scikit-learn's digits "
        f"({rows[0]['images'] if rows else 0} held-out images, 1 image = "
        f"{100 / rows[0]['images'] if rows else 0:.2f} points); drop = PyTorch fp32 top-1 - route top-1.",
        "",
        "| model | route | fp32 top-1 | route top-1 | drop | agreement with fp32 | epochs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['route']} | {r['top1_fp32']:.2f} | {r['top1']:.2f} | {r['drop']:+.2f} | "
                     f"{r['agreement']:.2f} | {r['epochs']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=FAMILY_MODELS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/accuracy/precision_costs", help="writes OUT.jsonl and OUT.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="litevit-precision-") as tmp:
        root = make_digits(Path(tmp) / "digits")
        for name in args.models:
            rows += costs(name, root, Path(tmp), args.epochs)
            Path(args.out + ".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path(args.out + ".md").write_text(markdown(rows, " ".join(["python", *sys.argv])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
