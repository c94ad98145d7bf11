"""The fastest deployable file for this CPU, within an accuracy budget: ``litevit export --fastest``.

Every candidate that applies here is built (onnxruntime fp32 and int8; OpenVINO f32, bf16, int8 with f32 rest and
int8 with bf16 rest; bf16 only on a CPU with native bf16, int8 only with calibration images), then all are timed in
the same process at the requested batch, interleaved (:func:`litevit.timing.time_interleaved`). The fastest whose
recorded accuracy cost for the family (:data:`.precision.PRECISION_COSTS`) is within the budget is written. The
fp32 IR compiled at OpenVINO's own defaults (what ``openvino.convert_model`` + ``compile_model`` gives a user) is
timed beside them as a reference.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import has_native_bf16
from ..registry import family_line
from ..timing import percentile, time_interleaved
from .precision import cost
from .runtime import ExportedModel

DEFAULT_MAX_DROP = 1.0  # top-1 points
BASELINE = "ort-fp32"
REFERENCE = "ov-defaults"  # the fp32 IR at OpenVINO's default settings: timed, never chosen


@dataclass(frozen=True)
class Candidate:
    name: str  # also the cost route
    suffix: str
    precision: str  # export precision


CANDIDATES = (
    Candidate("ort-fp32", ".onnx", "fp32"),
    Candidate("ort-int8", ".onnx", "int8"),
    Candidate("ov-f32", ".xml", "fp32"),
    Candidate("ov-bf16", ".xml", "bf16"),
    Candidate("ov-int8-f32", ".xml", "int8"),
    Candidate("ov-int8-bf16", ".xml", "int8-bf16"),
)


@dataclass
class Trial:
    name: str
    path: Path
    median_ms: float
    speedup: float  # baseline time / this time, median over interleaved rounds
    speedup_p10: float
    speedup_p90: float
    cost: float | None  # recorded top-1 drop, points
    eligible: bool
    note: str = ""


@dataclass
class FastestReport:
    chosen: str
    batch: int
    threads: int
    max_drop: float
    trials: list[Trial] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not built

    def table(self) -> str:
        lines = [
            f"candidates at batch {self.batch}, {self.threads} thread(s), timed interleaved; speed-up against "
            f"{BASELINE}; budget: top-1 drop <= {self.max_drop:g} points",
            f"{'candidate':14s} {'ms':>9s} {'speed-up (p10-p90)':>20s} {'top-1 cost':>10s}  decision",
        ]
        for t in self.trials:
            spread = f"{t.speedup:.2f}x ({t.speedup_p10:.2f}-{t.speedup_p90:.2f})"
            cost_text = "-" if t.cost is None else f"{t.cost:.2f}"
            decision = "CHOSEN: fastest within budget" if t.name == self.chosen else t.note
            lines.append(f"{t.name:14s} {t.median_ms:9.3f} {spread:>20s} {cost_text:>10s}  {decision}")
        lines += [f"{name:14s} {'':9s} {'':>20s} {'':>10s}  not built: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def applicable(calibration: str | Path | None, flags: frozenset[str] | None = None) -> tuple[list[Candidate], dict]:
    """The candidates that apply on this CPU (``flags``: its feature flags, default this one's), and why the others
    do not."""
    chosen, skipped = [], {}
    bf16 = has_native_bf16(flags)
    for candidate in CANDIDATES:
        if candidate.precision.endswith("bf16") and not bf16:
            skipped[candidate.name] = "no native bf16 on this CPU (AVX512_BF16 / AMX-BF16)"
        elif candidate.precision.startswith("int8") and calibration is None:
            skipped[candidate.name] = "int8 needs calibration images (--calibration DIR)"
        else:
            chosen.append(candidate)
    return chosen, skipped


def choose(trials: list[Trial], max_drop: float) -> Trial:
    """The fastest trial whose recorded cost is within ``max_drop``; the baseline is always within (cost 0)."""
    for trial in trials:
        if trial.name == REFERENCE:
            trial.eligible, trial.note = False, "reference: what OpenVINO's defaults give"
        elif trial.cost is None:
            trial.eligible, trial.note = False, "no recorded accuracy cost for this family"
        elif trial.cost > max_drop:
            trial.eligible, trial.note = False, f"costs {trial.cost:.2f} > {max_drop:g} points"
        else:
            trial.eligible, trial.note = True, "within budget, slower"
    return max((t for t in trials if t.eligible), key=lambda t: t.speedup)


def find_fastest(
    model: nn.Module,
    stem: str | Path,
    build: Callable[..., Any],
    *,
    batch: int = 1,
    calibration: str | Path | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    threads: int = 1,
    seconds: float = 2.0,
    warmup: float = 0.5,
    img_size: int | tuple[int, int] | None = None,
    progress: Callable[[str], None] | None = None,
    flags: frozenset[str] | None = None,
) -> tuple[Path, FastestReport]:
    """Build, time and pick (see the module docstring); the chosen file is written as ``stem`` + its suffix.

    ``build``: the exporter (:func:`litevit.deploy.export.export`), passed in so that this module sits below it.
    """
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 top-1 points, got {max_drop}")
    if batch < 1:
        raise ValueError(f"--fastest times one batch size: a positive integer, got {batch}")
    say = progress or (lambda _: None)
    candidates, skipped = applicable(calibration, flags)
    name = getattr(model, "variant_name", None)
    family = family_line(name) if name else ""  # a model outside the registry has no recorded costs
    stem = Path(stem)
    work = Path(tempfile.mkdtemp(prefix="litevit-fastest-"))
    try:
        files: dict[str, Path] = {}
        for i, candidate in enumerate(candidates, 1):
            say(f"[{i}/{len(candidates)}] building {candidate.name}")
            files[candidate.name] = build(
                model, work / f"{candidate.name}{candidate.suffix}", precision=candidate.precision,
                calibration=calibration if candidate.precision.startswith("int8") else None, img_size=img_size,
            ).path  # fmt: skip
        runners = {name: ExportedModel(path, threads=threads) for name, path in files.items()}
        if "ov-f32" in files:
            runners[REFERENCE] = ExportedModel(files["ov-f32"], threads=threads, inference_precision="defaults")
        meta = runners[BASELINE].metadata
        x = torch.randn(batch, int(getattr(getattr(model, "config", None), "in_chans", 3)), *meta.img_size)
        say(f"timing {len(runners)} files at batch {batch}, {threads} thread(s), interleaved")
        times = time_interleaved({n: (lambda r=r: r(x)) for n, r in runners.items()}, seconds * len(runners), warmup)
        trials = []
        for name, samples in times.items():
            ratios = sorted(a / b for a, b in zip(times[BASELINE], samples, strict=True))
            trials.append(Trial(
                name, files.get(name, files.get("ov-f32")), statistics.median(samples) * 1e3, statistics.median(ratios),
                percentile(ratios, 0.1), percentile(ratios, 0.9), None if name == REFERENCE else cost(family, name),
                False,
            ))  # fmt: skip
        best = choose(trials, max_drop)
        report = FastestReport(best.name, batch, threads, max_drop, trials, skipped)
        target = stem.with_suffix(best.path.suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best.path, target)
        if target.suffix == ".xml":
            shutil.copyfile(best.path.with_suffix(".bin"), target.with_suffix(".bin"))
        return target, report
    finally:
        shutil.rmtree(work, ignore_errors=True)
