"""int8 top-1 after post-training quantization and after ``litevit train --qat``, per family, on real digits.

Each family's smallest variant is trained at 64 px on scikit-learn's digits exactly as ``tools/precision_costs.py``
trains it (its ``make_digits`` split and training settings), or taken from ``--runs DIR`` (``DIR/<model>/
best.safetensors`` trained with those settings). Then, on the held-out images:

- ``fp32``: PyTorch fp32 top-1;
- post-training int8 per route: ``litevit.deploy.exporting.export(int8=True, calibration=<train folder>)`` as an
  OpenVINO IR run with f32 float parts (``ov-int8``) and as onnxruntime QDQ (``ort-int8``);
- QAT int8 per route: ``litevit.training.train.train(TrainConfig(..., qat=True, checkpoint=best))`` with the QAT
  defaults (:mod:`litevit.training.qat`) and the float run's batch and augmentation, its ``int8.xml`` and
  ``int8.onnx`` run the same way;
- top-1 agreement with PyTorch fp32, the QAT epochs and wall time.

Both the float run and the QAT run keep the epoch with the best top-1 on the held-out images (as ``litevit train``
does with a validation folder), so the QAT figures are of the same kind as the fp32 figure they are compared with.

    OMP_NUM_THREADS=1 .venv/bin/python tools/qat_costs.py --runs /tmp/litevit/digits-runs --out benchmarks/accuracy/qat
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from _digits import val_set
from precision_costs import FAMILY_MODELS, SIZE, _ov_predict, make_digits

import litevit
from litevit._extras import cpu_isa, cpu_model
from litevit.bench.timing import git_commit
from litevit.deploy.exporting import export
from litevit.deploy.runtime import ExportedModel
from litevit.training import train as T
from litevit.training.config import QAT_EPOCHS
from litevit.training.qat import INT8_ONNX, INT8_XML, qat_lr

FLOAT_SETTINGS = dict(
    img_size=SIZE, batch_size=32, label_smoothing=0.0, workers=0, progress=False, crop_scale=(0.8, 1.0)
)  # tools/precision_costs.py's, but for the float run's lr, warm-up and EMA


def float_run(name: str, root: Path, runs: Path, epochs: int) -> tuple[Path, float | None]:
    """``runs/name/best.safetensors``, trained here as precision_costs.py trains it when absent."""
    best = runs / name / T.BEST_EXPORT
    if best.exists():
        recorded = runs / name / "train_s.json"
        return best, json.loads(recorded.read_text())["train_s"] if recorded.exists() else None
    start = time.perf_counter()
    config = T.TrainConfig(
        model=name, data=str(root), out=str(runs / name), epochs=epochs, lr=2e-3, warmup_epochs=1.0, ema=False,
        **FLOAT_SETTINGS,
    )  # fmt: skip
    T.train(config)
    return best, time.perf_counter() - start


def measure(name: str, root: Path, runs: Path, work: Path, epochs: int, qat_epochs: int) -> list[dict]:
    best, train_s = float_run(name, root, runs, epochs)
    fp32 = litevit.load(best).eval()
    images, targets = val_set(fp32, root)
    with torch.inference_mode():
        reference = fp32(images).argmax(-1)
    top1_fp32 = float((reference == targets).double().mean()) * 100  # reference: fp32's classes

    ptq = {
        "ov-int8": export(fp32, work / f"{name}-ptq.xml", int8=True, calibration=root / "train").path,
        "ort-int8": export(fp32, work / f"{name}-ptq.onnx", int8=True, calibration=root / "train").path,
    }
    start = time.perf_counter()
    qat_run = work / f"{name}-qat"
    config = T.TrainConfig(model=name, data=str(root), out=str(qat_run), epochs=qat_epochs, checkpoint=str(best),
                           qat=True, **FLOAT_SETTINGS)  # fmt: skip
    result = T.train(config)
    qat_s = time.perf_counter() - start
    qat = {"ov-int8": qat_run / INT8_XML, "ort-int8": qat_run / INT8_ONNX}

    rows = []
    for method, files in (("ptq", ptq), ("qat", qat)):
        for route, path in files.items():
            if not path.exists():  # --qat writes no int8.onnx for this family
                print(f"{name:18s} {method} {route:12s} not written", flush=True)
                continue
            logits = _ov_predict(path, "f32", images) if route.startswith("ov") else ExportedModel(path)(images)
            predicted = logits.argmax(-1)
            top1 = float((predicted == targets).float().mean()) * 100
            agreement = float((predicted == reference).float().mean()) * 100
            row = dict(
                model=name, route=route, method=method, top1_fp32=round(top1_fp32, 3), top1=round(top1, 3),
                drop=round(top1_fp32 - top1, 3), agreement=round(agreement, 3), images=len(targets),
                float_epochs=epochs, float_train_s=None if train_s is None else round(train_s, 1),
            )  # fmt: skip
            if method == "qat":
                row.update(qat_epochs=qat_epochs, qat_s=round(qat_s, 1), qat_lr=qat_lr(32), qat_best=result.best_top1)
            rows.append(row)
            print(f"{name:18s} {method} {route:12s} fp32 {top1_fp32:6.2f}  {top1:6.2f}  drop {row['drop']:+5.2f}  "
                  f"agreement {agreement:6.2f}", flush=True)  # fmt: skip
    return rows


def markdown(rows: list[dict], command: str) -> str:
    isa = ", ".join(cpu_isa()) or "unknown"
    images = rows[0]["images"] if rows else 0
    lines = [
        f"Hardware: {cpu_model()} [{isa}]; torch {torch.__version__}; commit {git_commit()}. Command: `{command}`.",
        "",
        f"Each family's smallest variant trained at {SIZE} px on scikit-learn's digits ({images} held-out images, "
        f"1 image = {100 / images if images else 0:.2f} points). drop = PyTorch fp32 top-1 - int8 top-1; ptq = "
        "post-training int8 (litevit export --precision int8, calibrated on the training images), qat = "
        "`litevit train --qat` from the same float weights (defaults), its best epoch on the held-out images.",
        "",
        "| model | route | fp32 top-1 | PTQ top-1 | PTQ drop | QAT top-1 | QAT drop | QAT agreement with fp32 | "
        "QAT epochs | QAT time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["model"], r["route"], r["method"]): r for r in rows}
    for model, route in dict.fromkeys((r["model"], r["route"]) for r in rows):
        p, q = by_key.get((model, route, "ptq")), by_key.get((model, route, "qat"))
        if p is None or q is None:
            continue
        lines.append(
            f"| {model} | {route} | {p['top1_fp32']:.2f} | {p['top1']:.2f} | {p['drop']:+.2f} | {q['top1']:.2f} | "
            f"{q['drop']:+.2f} | {q['agreement']:.2f} | {q['qat_epochs']} | {q['qat_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=FAMILY_MODELS)
    parser.add_argument("--runs", help="trained float runs to reuse (DIR/<model>/best.safetensors); else trained")
    parser.add_argument("--data", help="the digits folder (train/, val/) the runs were trained on; else written")
    parser.add_argument("--epochs", type=int, default=20, help="float training epochs (when not reused)")
    parser.add_argument("--qat-epochs", type=int, default=QAT_EPOCHS)
    parser.add_argument("--out", default="benchmarks/accuracy/qat", help="writes OUT.jsonl and OUT.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = Path(args.out + ".jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {r["model"] for r in rows}
    with tempfile.TemporaryDirectory(prefix="litevit-qat-") as tmp:
        root = Path(args.data) if args.data else make_digits(Path(tmp) / "digits")
        runs = Path(args.runs) if args.runs else Path(tmp) / "runs"
        for name in [m for m in args.models if m not in done]:
            rows += measure(name, root, runs, Path(tmp), args.epochs, args.qat_epochs)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
            Path(args.out + ".md").write_text(markdown(rows, " ".join(["python", *sys.argv])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
