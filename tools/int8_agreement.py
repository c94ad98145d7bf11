"""Top-1 agreement of every variant's int8 file with its fp32 model, and top-1 of both where images have labels.

    OMP_NUM_THREADS=1 .venv/bin/python tools/int8_agreement.py (--images DIR | --textures N) [--pretrained | --probe N]
        [MODEL ...]

``--images``: an ImageFolder (class sub-folders) or a flat folder of images, shuffled with a fixed seed (so that
classes mix): the first ``--calibration-images`` calibrate, the next ``--eval-images`` are compared.
``--textures N``: instead, N drawn textures per class of ``tools/int8_settings.py``'s 8, tinted with a colour per
class (random backbones see colour better than pattern).

The README's every-variant table: ``--textures 60 --calibration-images 64 --eval-images 200 --probe 160``.

Weights, one of:
- ``--pretrained``: each variant's default published weights (downloaded once into the cache); with an ImageNet-style
  folder (the 1000 synset folders) top-1 is real ImageNet accuracy.
- ``--probe N``: a random backbone with a linear probe: the classifier is replaced by one for the folder's classes,
  trained on N more images' frozen, standardized features. Random classifiers make near-tied logits, whose top-1
  flips under any rounding; a trained head gives classes real margins, so agreement measures what int8 does to the
  features the head reads. The backbone is still random: this is a check of the int8 graphs of every variant,
  not an accuracy figure. ``feature_spread`` in the output (features' spread across images over their size) shows
  where a random backbone leaves the head little signal for int8 to keep (MobileViT v1: about 0.002).
- neither: random weights, agreement only shows whether the int8 graph runs.

Writes one JSON line per variant to ``--out`` (appends).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import litevit
from litevit.bench.timing import device_name
from litevit.data import eval_transform, load_image
from litevit.deploy.runtime import ExportedModel
from litevit.predict import preprocessing

sys.path.insert(0, str(Path(__file__).parent))
from int8_settings import make_textures  # noqa: E402


def fit_probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int, steps: int = 300) -> float:
    """Replace the classifier(s) with a linear probe for ``classes`` trained on the frozen features of ``images``.

    The probe standardizes each feature with its mean and spread over ``images`` first (a fixed affine map, part of
    the exported graph): random backbones make features whose spread across images is tiny next to their size.
    Returns that spread: the mean over features of (std across images / mean absolute value).
    """
    model.eval()
    with torch.inference_mode():
        features = model.forward_head(model.forward_features(images), pre_logits=True)  # (N, num_features)
    linear = nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2)
    mean, std = features.mean(0), features.std(0) + 1e-6
    standardized = (features - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(linear(standardized), labels).backward()
        optimizer.step()
    with torch.no_grad():  # fold the standardization into the linear layer
        linear.bias -= linear.weight @ (mean / std)
        linear.weight /= std
    linear.requires_grad_(False)
    model.head = linear
    if getattr(model, "head_dist", None) is not None:
        model.head_dist = linear  # LeViT averages both heads in eval: the probe twice is the probe
    return float((std / features.abs().mean(0).clamp_min(1e-12)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="default: every registered variant")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images")
    source.add_argument("--textures", type=int, metavar="N", help="N tinted drawn textures per class")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true")
    weights.add_argument("--probe", type=int, default=0, metavar="N", help="random backbone, head trained on N images")
    parser.add_argument("--suffix", default=".xml", choices=[".xml", ".onnx"])
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--out", default="int8_agreement.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from torchvision.datasets.folder import IMG_EXTENSIONS

    work = Path(tempfile.mkdtemp(prefix="litevit-agreement-"))
    root = Path(args.images) if args.images else make_textures(work / "textures", args.textures, seed=5, tint=True)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    random.Random(0).shuffle(files)
    calibration, rest = files[: args.calibration_images], files[args.calibration_images :]
    held_out, probe = rest[: args.eval_images], rest[args.eval_images :][: args.probe]
    classes = sorted({p.parent.name for p in files}) if all(p.parent != root for p in files) else None
    if args.probe and (classes is None or len(probe) < args.probe):
        parser.error(f"--probe {args.probe} needs class sub-folders and that many images after the evaluated ones")
    (work / "calibration").mkdir()
    for i, path in enumerate(calibration):
        shutil.copy(path, work / "calibration" / f"{i}{path.suffix}")
    for name in args.models or litevit.list_models():
        start = time.perf_counter()
        torch.manual_seed(0)  # the same random backbone and probe for a variant in every run
        fp32 = litevit.create_model(name, pretrained=args.pretrained).eval()
        data, size, _ = preprocessing(fp32)
        transform = eval_transform(data, size)
        spread = None
        if args.probe:
            x = torch.stack([transform(load_image(p)) for p in probe])
            spread = fit_probe(fp32, x, torch.tensor([classes.index(p.parent.name) for p in probe]), len(classes))
        result = litevit.quantize(fp32, work / f"{name}{args.suffix}", work / "calibration", check=False,
                                  calibration_images=len(calibration))  # fmt: skip
        int8 = ExportedModel(result.path, threads=1)
        agree = right_fp32 = right_int8 = 0
        for path in held_out:
            x = transform(load_image(path))[None]
            with torch.inference_mode():
                a, b = int(fp32(x).argmax()), int(int8(x).argmax())
            agree += a == b
            if classes is not None:
                label = classes.index(path.parent.name)
                right_fp32, right_int8 = right_fp32 + (a == label), right_int8 + (b == label)
        labelled = classes is not None and (args.probe or args.pretrained)
        row = dict(
            model=name, weights="pretrained" if args.pretrained else "probe" if args.probe else "random",
            route=args.suffix, images=len(held_out), agreement=100 * agree / len(held_out),
            top1_fp32=100 * right_fp32 / len(held_out) if labelled else None,
            top1_int8=100 * right_int8 / len(held_out) if labelled else None, feature_spread=spread,
            seconds=round(time.perf_counter() - start, 1), device=device_name("cpu"), torch=torch.__version__,
        )  # fmt: skip
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
