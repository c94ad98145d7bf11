"""Top-1 agreement of every variant's int8 file with its fp32 model, and top-1 of both where images have labels.

    OMP_NUM_THREADS=1 .venv/bin/python tools/int8_agreement.py --images DIR [--pretrained] [--suffix .xml] [MODEL ...]

``--images``: an ImageFolder (class sub-folders: top-1 is reported too) or a flat folder of images. The first
``--calibration-images`` sorted images calibrate, the next ``--eval-images`` are compared. With ``--pretrained``
each variant loads its default published weights (downloaded once into the cache); without, random weights, which
make near-tied logits: agreement then only shows the int8 graph is not broken, it is not an accuracy figure.
Writes one JSON line per variant to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

import litevit
from litevit.bench import device_name
from litevit.data import eval_transform, load_image
from litevit.exported import ExportedModel
from litevit.predict import preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="default: every registered variant")
    parser.add_argument("--images", required=True)
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--suffix", default=".xml", choices=[".xml", ".onnx"])
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--out", default="int8_agreement.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    calibration, held_out = files[: args.calibration_images], files[args.calibration_images :][: args.eval_images]
    classes = sorted({p.parent.name for p in files}) if all(p.parent != Path(args.images) for p in files) else None
    work = Path(tempfile.mkdtemp(prefix="litevit-agreement-"))
    for i, path in enumerate(calibration):
        (work / "calibration").mkdir(exist_ok=True)
        shutil.copy(path, work / "calibration" / f"{i}{path.suffix}")
    for name in args.models or litevit.list_models():
        fp32 = litevit.create_model(name, pretrained=args.pretrained).eval()
        result = litevit.quantize(fp32, work / f"{name}{args.suffix}", work / "calibration", check=False,
                                  calibration_images=len(calibration))  # fmt: skip
        int8 = ExportedModel(result.path, threads=1)
        data, size, _ = preprocessing(fp32)
        transform = eval_transform(data, size)
        agree = right_fp32 = right_int8 = 0
        for path in held_out:
            x = transform(load_image(path))[None]
            with torch.inference_mode():
                a, b = int(fp32(x).argmax()), int(int8(x).argmax())
            agree += a == b
            if classes is not None:
                label = classes.index(path.parent.name)
                right_fp32, right_int8 = right_fp32 + (a == label), right_int8 + (b == label)
        row = dict(
            model=name, weights="pretrained" if args.pretrained else "random", route=args.suffix,
            images=len(held_out), agreement=100 * agree / len(held_out), device=device_name("cpu"),
            top1_fp32=100 * right_fp32 / len(held_out) if classes else None,
            top1_int8=100 * right_int8 / len(held_out) if classes else None,
        )  # fmt: skip
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
