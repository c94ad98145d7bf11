"""The candidates of ``--fastest`` and of the bench's "litevit's fastest": each route built, measured and judged.

:func:`build_candidates` builds every route of a :class:`.fastest.Plan` at the batch it will be timed at, runs each
file on the images held out of calibration (or, without ``--calibration``, on random inputs where only exactness to
fp32 is measured) and judges it against the budget (:func:`.accuracy.judge`). Timing and the choice are
:func:`.fastest.time_and_choose`'s.

``speed_only`` (the bench without images): int8 routes are built on synthetic calibration images, timed, and shown
apart as ineligible: their accuracy is not measured.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._extras import require
from ..registry import DataConfig
from .accuracy import Accuracy, judge, labels_of, measure, split_folder
from .accuracy_control import accuracy_controlled
from .builder import build_file
from .errors import ExportError
from .fuse import fuse
from .int8 import Int8Settings, int8_settings_for, load_calibration, synthetic_calibration
from .metadata import META_KEY, ExportMetadata
from .openvino import RT_INFO, save_openvino
from .precision import float_precision
from .routes import Route
from .runtime import ExportedModel

RANDOM_IMAGES = 8  # without --calibration: random inputs on which exactness to fp32 is checked
SPEED_ONLY = "speed only: accuracy not measured (needs --calibration DIR)"


@dataclass
class Trial:
    """One candidate: built, measured and timed (or why not)."""

    route: Route
    path: Path | None = None
    accuracy: Accuracy | None = None
    eligible: bool = False
    reason: str = ""
    times: list[float] = field(default_factory=list)
    ratio: tuple[float, float, float] | None = None  # against the baseline: median, 95 % low, high

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def ms(self) -> float | None:
        return statistics.median(self.times) * 1e3 if self.times else None


@dataclass
class Candidates:
    """Every trial, and what they were measured on."""

    trials: list[Trial]
    x: torch.Tensor  # the images measured: held-out images, or random inputs without a folder
    reference: torch.Tensor  # fp32 PyTorch's logits on x
    labels: torch.Tensor | None  # x's classes, when the folder's classes are the model's
    images: int  # held-out images measured (0: random inputs, where only exactness counts)


def model_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(getattr(model, "config", None), "img_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def _at_precision(meta: ExportMetadata, precision: str) -> ExportMetadata:
    return dataclasses.replace(meta, precision=precision, inference_precision=float_precision(precision))


def build_candidates(
    model: nn.Module,
    routes: Sequence[Route],
    excluded: dict[str, str],
    work: Path,
    *,
    batch: int | str = 1,
    calibration: str | Path | None = None,
    calibration_images: int = 300,
    max_drop: float = 1.0,
    threads: int = 1,
    opset: int | None = None,
    int8_settings: Int8Settings | None = None,
    speed_only: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> Candidates:
    """Build each of ``routes`` in ``work`` at ``batch`` (``"dynamic"`` or a static batch), measure and judge it;
    those named in ``excluded`` (route name -> why the options exclude it: the baseline, kept for the speed-ups) are
    built and timed, never chosen. Each file is written by :func:`.builder.build_file`."""
    fused = fuse(model).float().eval()
    config = getattr(model, "config", None)
    size = model_size(model)
    data = model.model_info.data if hasattr(model, "model_info") else None
    held_x, labels, cal_files, cal_arrays, cal_labels = None, None, None, [], None
    if calibration is not None:
        cal_files, held_files = split_folder(calibration, calibration_images)
        say(f"split {calibration}: {len(cal_files)} calibration images, {len(held_files)} held-out images")
        arrays = load_calibration(held_files, data or DataConfig(), size, calibration)
        cal_arrays = load_calibration(cal_files, data or DataConfig(), size, calibration)  # unreadable: one line, now
        held_x = torch.cat([torch.from_numpy(a) for a in arrays])
        names = model.model_info.class_names if hasattr(model, "model_info") else None
        labels = labels_of(held_files, names, int(getattr(config, "num_classes", 0)))
        cal_labels = labels_of(cal_files, names, int(getattr(config, "num_classes", 0)))
    elif speed_only and any(route.int8 for route in routes):
        cal_files = sorted(synthetic_calibration(*size, parent=work).iterdir())
    x = held_x if held_x is not None else torch.randn(
        RANDOM_IMAGES, int(getattr(config, "in_chans", 3)), *size, generator=torch.Generator().manual_seed(0)
    )  # fmt: skip
    with torch.inference_mode():
        reference = fused(x)
    images = len(x) if held_x is not None else 0
    trials = []
    graphs: dict[tuple[str, bool], Path] = {}  # (format, int8) -> a file built: the bf16 twin is the same graph
    for i, route in enumerate(routes, 1):
        say(f"[{i}/{len(routes)}] building {route.name}")
        trial = Trial(route)
        trials.append(trial)
        if route.accuracy_control and (labels is None or cal_labels is None):
            trial.reason = "needs a labelled folder: sub-folders named as the model's classes"
            continue
        twin = graphs.get((route.format, route.int8)) if not route.accuracy_control else None
        try:
            if twin is not None:  # an IR records the float precision it runs at; its graph is the same
                trial.path = work / f"{route.name}{route.suffix}"
                rewritten(twin, trial.path, functools.partial(_at_precision, precision=route.precision))
            elif route.accuracy_control:
                fp32 = build_file(model, work / "ac-fp32.xml", "openvino", "fp32").path
                trial.path = accuracy_controlled(
                    fp32, work / f"{route.name}.xml", cal_arrays, cal_labels, max_drop,
                    int8_settings or int8_settings_for(model), batch,
                )  # fmt: skip
            else:
                trial.path = build_file(
                    model, work / f"{route.name}{route.suffix}", route.format, route.precision, batch=batch,
                    opset=opset if route.format == "onnx" else None, calibration=cal_files if route.int8 else None,
                    int8_settings=int8_settings,
                ).path  # fmt: skip
        except (ExportError, RuntimeError) as exc:
            trial.reason = f"build failed: {str(exc).splitlines()[0][:120]}"
            continue
        if not route.accuracy_control:
            graphs.setdefault((route.format, route.int8), trial.path)
        trial.accuracy = measure(ExportedModel(trial.path, threads=threads), x, reference, labels, route.int8)
        measured = images > 0 or trial.accuracy.exact
        trial.eligible, trial.reason = judge(trial.accuracy if measured else None, max_drop, images)
        if route.int8 and calibration is None:
            trial.accuracy, trial.eligible, trial.reason = None, False, SPEED_ONLY
        elif route.name in excluded:
            trial.eligible, trial.reason = False, f"baseline only: {excluded[route.name]}"
    return Candidates(trials, x, reference, labels, images)


def rewritten(source: Path, target: Path, change: Callable[[ExportMetadata], ExportMetadata]) -> None:
    """``source`` (an ``.onnx`` or ``.xml``) written to ``target`` with its metadata passed through ``change``: the
    same graph and weights."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(source))
        props = {p.key: p.value for p in proto.metadata_props}
        props[META_KEY] = change(ExportMetadata.from_json(props[META_KEY])).to_json()
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
        onnx.save_model(proto, str(target), save_as_external_data=False)
        return
    ov = require("openvino", "rewriting an OpenVINO file's metadata")
    model = ov.Core().read_model(str(source))
    model.set_rt_info(change(ExportMetadata.from_json(model.get_rt_info(RT_INFO).astype(str))).to_json(), RT_INFO)
    save_openvino(model, target)
