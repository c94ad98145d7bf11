"""What the OpenVINO int8 route costs LeViT, and which NNCF setting changes it (issue 23).

Trains LeViT-128S on the drawn textures exactly as ``tools/int8_settings.py`` does (its ``make_textures`` and
``accuracy`` configuration: 64 px, 8 classes, 100 training and 50 held-out images each, ``--epochs`` epochs) and
quantizes it with the tool's OpenVINO candidates and with further NNCF settings that ``Int8Settings`` does not
express (SmoothQuant alphas, the performance preset with the transformer type, HSwish inputs float, outlier-robust
activation ranges, full bias correction, 300 calibration images as ``litevit export`` takes by default); each is
evaluated on the 400 held-out textures. With ``--digits-run``, the same candidates are measured on a LeViT-128S
trained on scikit-learn's digits (``tools/precision_costs.py``'s configuration), calibrated on its training images
and evaluated on its held-out images.

    OMP_NUM_THREADS=1 .venv/bin/python tools/int8_levit_search.py --out benchmarks/int8_settings_levit \\
        [--digits-run RUN/best.safetensors --digits DIGITS]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import litevit
from litevit._extras import cpu_isa, cpu_model
from litevit.bench.timing import git_commit
from litevit.data import eval_transform, image_folder
from litevit.deploy import openvino
from litevit.deploy.export import export
from litevit.deploy.int8 import Int8Settings
from litevit.deploy.runtime import ExportedModel
from litevit.predict import preprocessing
from litevit.training import train as T

sys.path.insert(0, str(Path(__file__).parent))
from int8_settings import CANDIDATES, make_textures  # noqa: E402

MODEL = "levit_128s"


@dataclass(frozen=True)
class Search(Int8Settings):
    """An :class:`Int8Settings` with the NNCF knobs searched here."""

    sq_alpha: float | None = None  # SmoothQuant's MatMul alpha (NNCF's transformer default 0.95)
    float_types: tuple[str, ...] = ()  # OpenVINO op types whose inputs stay float
    ranges: str | None = None  # activation range estimator (nncf RangeEstimatorParametersSet name)
    full_bias_correction: bool = False
    images: int = 100  # calibration images


SEARCH: dict[str, Search] = {
    "ov-transformer-no-sq-float-ends": Search(smooth_quant=False, float_ends=True),
    "ov-transformer-no-sq-performance": Search(smooth_quant=False, preset="performance"),
    "ov-transformer-sq-0.15": Search(sq_alpha=0.15),
    "ov-transformer-sq-0.3": Search(sq_alpha=0.3),
    "ov-transformer-sq-0.5": Search(sq_alpha=0.5),
    "ov-transformer-no-sq-float-hswish": Search(smooth_quant=False, float_types=("HSwish",)),
    "ov-transformer-no-sq-mean-quantile": Search(smooth_quant=False, ranges="MEAN_QUANTILE"),
    "ov-transformer-no-sq-bias-correction": Search(smooth_quant=False, full_bias_correction=True),
    "ov-transformer-no-sq-300-images": Search(smooth_quant=False, images=300),
    "ov-transformer-no-sq-float-ends-300": Search(smooth_quant=False, float_ends=True, images=300),
}


def _nncf_quantize(nncf: Any, model: Any, calibration: list, settings: Int8Settings) -> Any:
    """``openvino._nncf_quantize`` taking the searched knobs of a :class:`Search`."""
    if not isinstance(settings, Search):
        return _LIBRARY_QUANTIZE(nncf, model, calibration, settings)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    alpha = -1 if not settings.smooth_quant else (settings.sq_alpha if settings.sq_alpha is not None else 0.95)
    advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha))
    if settings.ranges:
        advanced.activations_range_estimator_params = getattr(RangeEstimatorParametersSet, settings.ranges)
    types = list(settings.float_types) + (["GroupConvolution"] if settings.float_depthwise else [])
    names = openvino.openvino_ends(model) if settings.float_ends else []
    return nncf.quantize(
        model, nncf.Dataset(calibration),
        preset=nncf.QuantizationPreset.MIXED if settings.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER if settings.transformer else None, subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=names, types=types, validate=False),
        fast_bias_correction=not settings.full_bias_correction, advanced_parameters=advanced,
    )  # fmt: skip


_LIBRARY_QUANTIZE = openvino._nncf_quantize


def candidates() -> dict[str, Int8Settings]:
    found: dict[str, Int8Settings] = {c: s for c, (suffix, s) in CANDIDATES.items() if suffix == ".xml"}
    return {**found, **SEARCH}


def measure(data: str, fp32: torch.nn.Module, root: Path, work: Path) -> list[dict]:
    """Every candidate's int8 IR of ``fp32``, calibrated on ``root/train``, on the images of ``root/val``."""
    norm, size, _ = preprocessing(fp32)
    val = image_folder(root / "val", eval_transform(norm, size))
    images = torch.stack([x for x, _ in val])
    targets = torch.tensor([y for _, y in val])
    with torch.inference_mode():
        reference = fp32(images).argmax(-1)
    top1_fp32 = float((reference == targets).double().mean()) * 100
    rows = []
    for name, settings in candidates().items():
        path = work / f"{data}-{name}.xml"
        count = settings.images if isinstance(settings, Search) else 100
        export(fp32, path, int8=True, calibration=root / "train", calibration_images=count, int8_settings=settings)
        predicted = ExportedModel(path, threads=1)(images).argmax(-1)
        top1 = float((predicted == targets).double().mean()) * 100
        agree = float((predicted == reference).double().mean()) * 100
        rows.append(dict(
            data=data, model=MODEL, candidate=name, images=len(targets), top1_fp32=round(top1_fp32, 3),
            top1_int8=round(top1, 3), drop=round(top1_fp32 - top1, 3), agreement=round(agree, 3),
        ))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    isa = ", ".join(cpu_isa()) or "unknown"
    lines = [
        f"Hardware: {cpu_model()} [{isa}]; torch {torch.__version__}; commit {git_commit()}. Command: `{command}`.",
        "",
        "LeViT-128S, OpenVINO int8 (NNCF) candidates; drop = fp32 top-1 - int8 top-1 on the held-out images.",
        "",
        "| data | candidate | held-out images | fp32 top-1 | int8 top-1 | drop | agreement with fp32 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['data']} | {r['candidate']} | {r['images']} | {r['top1_fp32']:.2f} | {r['top1_int8']:.2f} "
                     f"| {r['drop']:+.2f} | {r['agreement']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the texture training")
    parser.add_argument("--digits-run", type=Path, help="a LeViT-128S best.safetensors trained on the digits")
    parser.add_argument("--digits", type=Path, help="the digits folder (train/, val/) of that run")
    parser.add_argument("--skip-textures", action="store_true")
    parser.add_argument("--out", default="benchmarks/int8_settings_levit", help="writes OUT.jsonl and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    openvino._nncf_quantize = _nncf_quantize
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="litevit-levit-int8-"))

    def save() -> None:
        Path(args.out + ".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        Path(args.out + ".md").write_text(markdown(rows, " ".join(["python", *sys.argv])))

    if args.digits_run is not None:
        rows += measure("digits", litevit.load(args.digits_run).eval(), args.digits, work)
        save()
    if not args.skip_textures:
        root = work / "textures"
        make_textures(root / "train", 100, seed=0)
        make_textures(root / "val", 50, seed=1)
        config = T.TrainConfig(
            model=MODEL, data=str(root), out=str(work / "run"), img_size=64, epochs=args.epochs, batch_size=32,
            lr=2e-3, warmup_epochs=1.0, ema=False, label_smoothing=0.0, workers=0, progress=False,
            crop_scale=(0.6, 1.0),
        )  # fmt: skip
        T.train(config)
        rows += measure("textures", litevit.load(work / "run" / T.BEST_EXPORT).eval(), root, work)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
