"""The fastest deployable file for this CPU that stays accurate: ``litevit export --fastest``.

:func:`plan`: the candidate routes (:data:`.routes.ROUTES`) that the options allow (the ``--out`` suffix,
``--format``, ``--precision``), that an installed runtime runs and that this CPU computes natively (bf16 only with
AVX512_BF16 or AMX-BF16); every other route is listed with why it is out. :func:`find_fastest` builds each at the
batch it is timed at (static unless ``dynamic_batch``), runs each on images held out of calibration
(:mod:`.accuracy`: agreement with fp32, top-1 when the folder is labelled, the 95 % gate on ``max_drop``), times
them interleaved in the same process until the fastest eligible file is separated from the next at 95 % or the
time cap is spent, and writes the pick with how it was chosen in its metadata (:class:`.metadata.Selection`). The
fp32 IR at OpenVINO's own defaults is timed beside them as a reference, never chosen.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _extras
from ..timing import time_interleaved
from .accuracy import CONFIDENCE, median_bounds, resolvable
from .candidates import Trial, build_candidates, rewritten
from .errors import ExportError
from .int8 import Int8Settings
from .metadata import SUFFIXES, CandidateRecord, Selection
from .routes import BASELINE, ROUTES, Route
from .runtime import ExportedModel

DEFAULT_MAX_DROP = 1.0  # top-1 points
REFERENCE = "ov-defaults"  # the fp32 IR at OpenVINO's default settings: timed, never chosen
FASTEST_FORMATS = {route.format for route in ROUTES}


@dataclass
class FastestReport:
    chosen: str
    selection: Selection
    skipped: dict[str, str]  # route -> why it was not built
    lines: list[str] = field(default_factory=list)  # what the table says under its rows

    def table(self) -> str:
        built = {c.route for c in self.selection.candidates}
        skipped = [
            f"{name:13s} {'':>8s} {'':>19s} {'':>7s} {'':>6s} {'':>6s}  {why}"
            for name, why in self.skipped.items()
            if name not in built
        ]
        return "\n".join(selection_table(self.selection) + skipped + self.lines)


def selection_table(s: Selection) -> list[str]:
    """The lines of the table of how ``--fastest`` chose: a heading, then a row per candidate."""
    images = f"{s.images} held-out images" if s.images else "no images (only exact files are eligible)"
    top1 = "" if s.fp32_top1 is None else f" (fp32 top-1 {s.fp32_top1:.2f}%)"
    lines = [
        f"candidates at batch {s.batch}, {s.threads} thread(s) on {s.cpu} ({', '.join(s.isa) or 'no listed ISA'}), "
        f"{s.runtimes}; timed interleaved, speed-up against {s.baseline} (95% interval); budget: top-1 drop <= "
        f"{s.max_drop:g} points at {s.confidence:.0%} on {images}{top1}",
        f"{'candidate':13s} {'ms':>8s} {'speed-up (95%)':>19s} {'agree':>7s} {'top-1':>6s} {'drop<=':>6s}  decision",
    ]
    for c in s.candidates:
        interval = "few rounds" if c.ratio_low is None else f"{c.ratio_low:.2f}-{c.ratio_high:.2f}"
        ratio = "-" if c.ratio is None else f"{c.ratio:.2f}x ({interval})"
        cells = [
            "-" if value is None else spec.format(value)
            for value, spec in ((c.ms, "{:.3f}"), (c.agreement, "{:.1%}"), (c.top1, "{:.2f}"), (c.drop_bound, "{:.2f}"))
        ]
        lines.append(
            f"{c.route:13s} {cells[0]:>8s} {ratio:>19s} {cells[1]:>7s} {cells[2]:>6s} {cells[3]:>6s}  {c.decision}"
        )
    return lines


@dataclass(frozen=True)
class Plan:
    routes: tuple[Route, ...]  # the candidates to build
    skipped: dict[str, str]  # route -> why it is out
    baseline: Route | None  # built for the speed-ups even when the options exclude it


def plan(
    out: str | Path,
    format: str | None = None,
    precision: str | None = None,
    calibration: object | None = None,
    flags: frozenset[str] | None = None,
    speed_only: bool = False,
) -> Plan:
    """The candidate routes for these options on this machine, or one-line ValueError when none can be.

    ``out``: its suffix (``.onnx``, ``.xml``) restricts the candidates to that format; no suffix leaves the choice.
    ``speed_only`` (the bench without images): int8 routes stay in, to be timed and shown apart.
    """
    suffix = Path(out).suffix.lower()
    if suffix:
        named = SUFFIXES.get(suffix)
        if named not in FASTEST_FORMATS:
            raise ValueError(
                f"--fastest writes .onnx (onnxruntime) or .xml (OpenVINO), not {suffix}: give one of those suffixes "
                "to --out, or none to let it choose"
            )
        if format is not None and format != named:
            raise ValueError(f"--format {format} contradicts --out {Path(out).name} ({named})")
        format = named
    if format is not None and format not in FASTEST_FORMATS:
        raise ValueError(f"--fastest chooses among onnx and openvino files, not {format}")
    routes, skipped = [], {}
    for route in ROUTES:
        why = _excluded(route, format, precision, calibration or speed_only, flags)
        if why is None:
            routes.append(route)
        else:
            skipped[route.name] = why
    if not routes:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ValueError(f"--fastest has no candidate for these options here: {reasons}")
    baseline = BASELINE if _extras.available(BASELINE.module) else None
    return Plan(tuple(routes), skipped, baseline)


def _excluded(
    route: Route, format: str | None, precision: str | None, calibration: object, flags: frozenset[str] | None
) -> str | None:
    """Why ``route`` is not a candidate, or None."""
    if format is not None and route.format != format:
        return f"excluded by the format asked for ({format})"
    if precision is not None and route.precision != precision:
        return f"excluded by --precision {precision}"
    for module in (route.module, *(("nncf",) if route.int8 and route.runtime == "openvino" else ())):
        if not _extras.available(module):
            return f"{module} is not installed: pip install 'litevit[{_extras.extra_of(module)}]'"
    if route.precision.endswith("bf16") and not _extras.has_native_bf16(flags):
        return "no native bf16 on this CPU (AVX512_BF16 / AMX-BF16)"
    if route.int8 and not calibration:
        return "not measured: needs images (int8 calibrates on --calibration DIR)"
    return None


def find_fastest(
    model: nn.Module,
    target: Path,
    the_plan: Plan,
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    calibration: str | Path | None = None,
    calibration_images: int = 300,
    max_drop: float = DEFAULT_MAX_DROP,
    threads: int = 1,
    seconds: float = 2.0,
    time_cap: float | None = None,
    warmup: float = 0.5,
    opset: int | None = None,
    int8_settings: Int8Settings | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, FastestReport, Trial, torch.Tensor | None, torch.Tensor]:
    """Build, measure, time and pick (module docstring); the pick is written to ``target`` (the pick's suffix added
    when it has none); each candidate is written by :func:`.builder.build_file`. ``time_cap``: seconds of timing at
    most (default 3x the first pass).

    Returns the written path, the report, the chosen trial, the held-out images (None without calibration) and
    fp32's logits on the images measured.
    """
    say = progress or (lambda _: None)
    routes = list(the_plan.routes)
    if the_plan.baseline is not None and the_plan.baseline not in routes:
        routes.insert(0, the_plan.baseline)
    work = Path(tempfile.mkdtemp(prefix="litevit-fastest-"))
    try:
        found = build_candidates(
            model, routes, the_plan.skipped, work, batch="dynamic" if dynamic_batch else batch,
            calibration=calibration, calibration_images=calibration_images, max_drop=max_drop, threads=threads,
            opset=opset, int8_settings=int8_settings, say=say,
        )  # fmt: skip
        if found.images and not resolvable(found.images, max_drop):
            say(f"{found.images} held-out images cannot resolve a drop of {max_drop:g} points at {CONFIDENCE:.0%}: "
                "only candidates exact to fp32 are eligible")  # fmt: skip
        trials = found.trials
        if not any(t.eligible for t in trials):
            raise ExportError(
                "--fastest: no candidate is eligible: " + "; ".join(f"{t.name}: {t.reason}" for t in trials)
            )
        race = time_and_choose(trials, batch, found.x, threads, seconds, time_cap, warmup, say)
        selection = _selection(
            trials, race.chosen, the_plan, threads, batch, found.images, found.labels, found.reference, max_drop,
            race.lines,
        )  # fmt: skip
        if race.reference_row is not None:
            selection = dataclasses.replace(selection, candidates=(*selection.candidates, race.reference_row))
        target = target if target.suffix else target.with_suffix(race.chosen.route.suffix)
        rewritten(race.chosen.path, target, lambda meta: dataclasses.replace(meta, selection=selection))
        report = FastestReport(race.chosen.name, selection, dict(the_plan.skipped), race.lines)
        held_x = found.x if found.images else None
        return target, report, race.chosen, held_x, found.reference
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Race:
    """What the interleaved timing decided: the pick, the lines that say how, every runner's per-call times."""

    chosen: Trial
    lines: list[str]
    times: dict[str, list[float]]  # runner name (a route name, REFERENCE, or one of ``others``) -> seconds per call
    reference_row: CandidateRecord | None  # the fp32 IR at OpenVINO's defaults; None: not timed


def time_and_choose(
    trials: list[Trial], batch: int, images: torch.Tensor, threads: int, seconds: float,
    time_cap: float | None, warmup: float, say: Callable[[str], None] = lambda _: None,
    others: dict[str, Callable[[], Any]] | None = None,
) -> Race:  # fmt: skip
    """Time every built trial interleaved (with ``others``, runners timed in the same rounds but never chosen: the
    bench's peers) until the fastest eligible is separated from the next at 95 % or ``time_cap`` seconds (default 3x
    the first pass) are spent, and choose: the fastest eligible, or when it is not separated the most accurate of
    those it is not separated from. ``seconds``: the first pass's time per runner."""
    built = [t for t in trials if t.path is not None]
    runners = {t.name: ExportedModel(t.path, threads=threads) for t in built}
    ov_fp32 = next((t for t in built if t.name == "ov-fp32"), None)
    if ov_fp32 is not None:
        runners[REFERENCE] = ExportedModel(ov_fp32.path, threads=threads, inference_precision="defaults")
    x = images[torch.arange(batch) % len(images)].contiguous()
    calls = {n: (lambda r=r: r(x)) for n, r in runners.items()} | (others or {})
    times: dict[str, list[float]] = {n: [] for n in calls}
    cap = time_cap if time_cap is not None else 3 * seconds * len(calls)
    start = time.perf_counter()
    say(f"timing {len(calls)} files at batch {batch}, {threads} thread(s), interleaved")
    eligible = [t for t in built if t.eligible]
    while True:
        for name, samples in time_interleaved(calls, seconds * len(calls), warmup).items():
            times[name] += samples
        warmup = 0.0
        for t in built:
            t.times = times[t.name]
        eligible.sort(key=lambda t: statistics.median(t.times))
        if len(eligible) < 2 or _faster(times, eligible[0].name, eligible[1].name) is True:
            separated = True
            break
        if time.perf_counter() - start + seconds * len(calls) > cap:
            separated = False
            break
        say(f"{eligible[0].name} and {eligible[1].name} not yet separated at 95%: timing more rounds")
    baseline = built[0].name
    for t in built:
        t.ratio = _ratio(times, baseline, t.name)
    fastest = eligible[0]
    lines = []
    if separated:
        chosen = fastest
        if len(eligible) > 1:
            lines.append(f"{fastest.name} is faster than {eligible[1].name} at 95% ({len(times[baseline])} rounds)")
    else:
        tied = [t for t in eligible if t is fastest or _faster(times, fastest.name, t.name) is not True]
        chosen = min(tied, key=lambda t: (not t.accuracy.exact, t.accuracy.drop_bound, statistics.median(t.times)))
        tied_names = ", ".join(t.name for t in tied if t is not fastest)
        lines.append(
            f"{fastest.name} is not separated from {tied_names} at 95% within the {cap:.0f} s time cap "
            f"({len(times[baseline])} rounds): chose the most accurate of them, {chosen.name}"
            + (" (exact to fp32)" if chosen.accuracy.exact else "")
        )
    ref_row = None
    if REFERENCE in times:
        lines.append(reference_line(*_ratio(times, REFERENCE, chosen.name), len(times[REFERENCE])))
        ref_row = CandidateRecord(
            REFERENCE, statistics.median(times[REFERENCE]) * 1e3, *_finite(_ratio(times, baseline, REFERENCE)),
            None, None, None, "reference: the fp32 IR at OpenVINO's defaults, never chosen",
        )  # fmt: skip
    for t in trials:
        if t is chosen:
            t.reason = "CHOSEN: " + ("fastest eligible" if t is fastest else "most accurate of the tied")
        elif t.eligible:
            t.reason = f"eligible ({t.reason}), slower"
    return Race(chosen, lines, times, ref_row)


def _ratio(times: dict[str, list[float]], slow: str, fast: str) -> tuple[float, float, float]:
    """How many times faster ``fast`` ran than ``slow``: the median of per-round ratios and its 95 % interval."""
    ratios = [a / b for a, b in zip(times[slow], times[fast], strict=False)]
    low, high = median_bounds(ratios)
    return statistics.median(ratios), low, high


def reference_line(median: float, low: float, high: float, rounds: int) -> str:
    """What the pick's speed-up over the fp32 IR at OpenVINO's defaults (median, 95 % interval) says."""
    if not math.isfinite(low):
        return (
            f"the pick ran {median:.2f}x OpenVINO's defaults on the fp32 IR by the median; {rounds} rounds are too few "
            "for a 95% interval: not decided"
        )
    if low <= 1.0:
        than = "faster than" if high < 1.0 else "as fast as"
        return (
            f"OpenVINO's defaults on the fp32 IR are {than} the pick (the pick: {median:.2f}x, "
            f"{low:.2f}-{high:.2f} at 95%): what a plain OpenVINO user already gets"
        )
    return f"the pick is {median:.2f}x ({low:.2f}-{high:.2f}) faster than OpenVINO's defaults on the fp32 IR"


def _finite(values: tuple[float | None, ...]) -> tuple[float | None, ...]:
    """``values`` with the infinite bounds of too few rounds for an interval (:func:`median_bounds`) as None."""
    return tuple(v if v is None or math.isfinite(v) else None for v in values)


def _faster(times: dict[str, list[float]], fast: str, slow: str) -> bool:
    """Whether ``fast`` is faster than ``slow`` at 95 % (the interval of the per-round ratio lies above 1)."""
    return _ratio(times, slow, fast)[1] > 1.0


def _selection(
    trials: list[Trial], chosen: Trial, the_plan: Plan, threads: int, batch: int, images: int,
    labels: torch.Tensor | None, reference: torch.Tensor, max_drop: float, lines: list[str],
) -> Selection:  # fmt: skip
    records = []
    for t in trials:
        measured = t.accuracy is not None and (images > 0 or t.accuracy.exact)
        a = t.accuracy if measured else None
        records.append(CandidateRecord(
            t.name, t.ms, *_finite(t.ratio or (None, None, None)), None if a is None else a.agreement,
            None if a is None else a.top1, None if a is None else a.drop_bound, t.reason,
        ))  # fmt: skip
    fp32_top1 = None
    if labels is not None:
        fp32_top1 = 100 * (reference.argmax(-1) == labels).double().mean().item()
    versions = ", ".join(
        f"{m} {importlib.metadata.version(m)}" for m in ("onnxruntime", "openvino") if _extras.available(m)
    )
    baseline = the_plan.baseline.name if the_plan.baseline is not None else trials[0].name
    return Selection(
        chosen.name, _extras.cpu_model(), _extras.cpu_isa(), threads, batch, baseline, images, fp32_top1, max_drop,
        CONFIDENCE, versions, tuple(records), " ".join(lines),
    )  # fmt: skip
