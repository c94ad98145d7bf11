"""The ``train`` command-line options and the TrainConfig they give, shared by ``litevit train`` and ``-m``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any

from ..data import INTERPOLATIONS
from ..weights.loading import as_tuples
from .config import DISTILL_KINDS, QAT_EPOCHS, TrainConfig, TrainResult
from .qat import QAT_OWNS
from .recipes import RECIPES, SHORT_RUN_RULE, get_recipe

log = logging.getLogger("litevit.training.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` options, shared by ``litevit train`` and ``python -m litevit.training.train``.

    Every hyper-parameter defaults to None here so that a ``--recipe`` value is only replaced by an explicit option.
    """
    p = parser
    p.epilog = SHORT_RUN_RULE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument(
        "model",
        help="registered model name (e.g. levit_128s), or a litevit file to fine-tune (best.safetensors, last.pt, a "
        "Hub folder): its resolution, data config and class names are taken unless given",
    )
    p.add_argument("--data", required=True, help="ImageFolder root, or a folder holding train/ and val/ ImageFolders")
    p.add_argument("--val", help="validation ImageFolder (default: DATA/val, else a split of the training images)")
    p.add_argument("--val-split", type=float, help="fraction held out per class when there is no validation folder")
    p.add_argument("--recipe", help=f"a named recipe instead of the short-run rule: {', '.join(RECIPES)}")
    p.add_argument("--out", help="output folder (default runs/train)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="images per process per step")
    p.add_argument("--lr", type=float, help="peak learning rate at --lr-ref-batch global images")
    p.add_argument("--lr-ref-batch", type=int, help="global batch the lr refers to (0: use --lr as is)")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--clip-grad", type=float, help="max gradient norm")
    p.add_argument(
        "--layer-decay",
        type=float,
        help="layer-wise lr decay (timm's, over the model's group_matcher): stem 0, blocks 1..L-1, head L; "
        "layer i trains at lr * DECAY ** (L - i) (default: off)",
    )
    p.add_argument("--img-size", type=int, help="training resolution (default: the model's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="EMA of the weights")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS))
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"), help="random-resized-crop area range")
    p.add_argument("--hflip", type=float, help="horizontal flip probability")
    p.add_argument("--rand-augment", type=int, help="RandAugment magnitude (negative: off)")
    p.add_argument("--mixup", type=float, help="MixUp alpha (0: off)")
    p.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--random-erasing", type=float, help="random erasing probability")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate")
    p.add_argument("--multi-scale", action=argparse.BooleanOptionalAction, default=None, help="variable-batch sampler")
    p.add_argument("--multi-scale-sizes", type=int, nargs="+", help="explicit sizes for the multi-scale sampler")
    p.add_argument(
        "--checkpoint",
        help="initial weights (head replaced when the class count differs); a litevit file's resolution, data config "
        "and class order are taken unless given",
    )
    p.add_argument(
        "--model-kwargs", type=json.loads, help="model config overrides as JSON, e.g. '{\"drop_path\": 0.1}'"
    )
    p.add_argument("--teacher", help="teacher: litevit model, torchvision classifier (e.g. regnet_y_16gf) or file")
    p.add_argument("--teacher-checkpoint", help="weights of a teacher given by name")
    p.add_argument("--distill", choices=DISTILL_KINDS, help="distillation type (default: hard with a teacher)")
    p.add_argument("--distill-alpha", type=float)
    p.add_argument("--distill-tau", type=float)
    p.add_argument(
        "--qat",
        action="store_true",
        default=None,
        help="quantization-aware int8 fine-tuning of the --checkpoint model (NNCF, calibrated on training images, "
        "low lr, BatchNorm statistics frozen after epoch 1, default 3 epochs); the float model is scored first and "
        "each epoch logs float top-1, int8 top-1 and the drop; writes OUT/int8.xml (OpenVINO) and OUT/int8.onnx "
        "(onnxruntime; not for MobileViT v1, whose graph keeps NNCF's own quantizer op) with the family's float-kept "
        "layers; exits 4 when the final drop exceeds --max-drop; a --recipe's schedule is not taken (QAT keeps its "
        "own); not with --teacher, --multi-scale, --ema, --amp or --layer-decay",
    )
    p.add_argument(
        "--max-drop", type=float,
        help="--qat: the largest int8 top-1 drop against the float model, in points (default 1.0)",
    )  # fmt: skip
    p.add_argument("--resume", nargs="?", const="auto", help="continue OUT/last.pt (or the given checkpoint)")
    p.add_argument(
        "--resume-override", nargs="+", metavar="SETTING", help="settings allowed to differ from the resumed run"
    )
    p.add_argument("--stop-after", type=int, help="stop after this many epochs (resume later with --resume)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--workers", type=int, help="data-loading processes per rank (default: CPUs available - 1, at most 8)"
    )
    p.add_argument("--device", help="e.g. cpu, cuda:0 (default: the local GPU if any)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the parsed options: defaults, then the recipe, then every option given explicitly."""
    values: dict[str, Any] = get_recipe(args.recipe) if args.recipe else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = {name for name in names if getattr(args, name, None) is not None}
    if args.recipe and args.qat:  # QAT keeps its own schedule; the recipe's unsupported options are not "given"
        dropped = sorted(n for n in QAT_OWNS if n in values and n not in explicit)
        for name in dropped:
            del values[name]
        if dropped:
            log.info("--qat: recipe %s's %s not taken (QAT's own schedule)", args.recipe, ", ".join(dropped))
    if args.max_drop is not None and not args.qat:
        raise ValueError("--max-drop bounds the int8 drop of a --qat run: add --qat, or leave --max-drop out")
    for name in explicit:
        values[name] = getattr(args, name)
    if values.get("rand_augment") is not None and values["rand_augment"] < 0:
        values["rand_augment"] = None
    if values.get("lr_ref_batch") == 0:
        values["lr_ref_batch"] = None
    for name in ("crop_scale", "resume_override"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    if values.get("multi_scale_sizes"):
        values["multi_scale_sizes"] = tuple(values["multi_scale_sizes"])
        values.setdefault("multi_scale", True)
    if values.get("qat") and args.epochs is None and "epochs" not in values:
        values["epochs"] = QAT_EPOCHS
    if values.get("model_kwargs") is not None:
        if not isinstance(values["model_kwargs"], dict):
            raise ValueError(f"--model-kwargs must be a JSON object, got {values['model_kwargs']!r}")
        values["model_kwargs"] = {k: as_tuples(v) for k, v in values["model_kwargs"].items()}
    return TrainConfig(**values)


def summary(result: TrainResult) -> str:
    """A one-paragraph report of a finished (or stopped) run, for the command line."""
    lines = []
    if result.history:
        last = result.history[-1]
        lines.append(
            f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, val top-1 {last['val_top1']:.2f}%, "
            f"val loss {last['val_loss']:.4f}"
        )
    if result.best_top1 is not None:
        written = ", ".join(str(result.out / name) for name in result.best_files)
        lines.append(f"best val top-1 {result.best_top1:.2f}% -> {written}")
    if result.qat is not None:
        lines.append(result.qat.line())
        if not result.qat.within:
            lines.append(f"over budget: {', '.join(str(result.out / n) for n in result.best_files)} kept, not within "
                         f"--max-drop {result.qat.max_drop:g}")  # fmt: skip
    lines.append(("finished" if result.finished else "stopped; continue with --resume") + f": {result.out}")
    return "\n".join(lines)
