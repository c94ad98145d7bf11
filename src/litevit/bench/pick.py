"""litevit's fastest in ``litevit bench --quick``: ``litevit export --fastest``'s own routine, timed with the peers.

The candidates are :func:`litevit.deploy.candidates.build_candidates`'s for :func:`litevit.deploy.fastest.plan`
(the family's opsets, int8 by the family's settings), built once per model with a dynamic batch: litevit's runner
compiles each at the group's static shape, the graph ``export --fastest --batch B`` writes at that batch. The rounds
and the choice are :func:`litevit.deploy.fastest.time_and_choose`'s, with the group's other runners (litevit's eager
model, timm's routes) timed in the same interleaved rounds. Without ``--calibration`` the pick is made among files
exact to fp32, and the bf16 and int8 files are timed and shown apart (their accuracy is not measured: int8 is
calibrated on noise); with it, every candidate runs on the held-out images and is gated by ``max_drop`` as in
``--fastest``.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..deploy.candidates import Candidates, Trial, build_candidates
from ..deploy.fastest import DEFAULT_MAX_DROP, REFERENCE, Plan, plan, time_and_choose
from ..deploy.routes import route_named
from .records import Comparison, compared, record_key
from .runtimes import DEFAULTS, openvino_default_precision


@dataclass(frozen=True)
class Picked:
    """What the race decided, by runner name (route names and :data:`litevit.deploy.fastest.REFERENCE`)."""

    chosen: str  # the pick
    baseline: str | None  # ort-fp32, the speed-ups' reference; None where onnxruntime is not installed
    reference: str | None  # the fp32 IR at OpenVINO's defaults; None without OpenVINO
    unmeasured: str | None  # the fastest file the gate could not judge (bf16 and int8 without images), or None
    decisions: dict[str, str]  # runner name -> the decision or why it is out
    lines: list[str]  # how it was decided
    gated: bool  # measured on held-out images (--calibration), not only exactness on random inputs


class Candidacy:
    """The run's candidates, built once per model and input size (exporting costs far more than timing)."""

    def __init__(self, folder: Path, calibration: str | Path | None = None, max_drop: float = DEFAULT_MAX_DROP):
        self.folder, self.calibration, self.max_drop = folder, calibration, max_drop
        self.built: dict[tuple[str, tuple[int, int]], tuple[Plan, Candidates]] = {}

    def candidates(self, model: nn.Module, name: str, size: tuple[int, int]) -> tuple[Plan, Candidates]:
        key = (name, size)
        if key not in self.built:
            the_plan = plan("", calibration=self.calibration, speed_only=self.calibration is None)
            routes = list(the_plan.routes)
            if the_plan.baseline is not None and the_plan.baseline not in routes:
                routes.insert(0, the_plan.baseline)
            work = self.folder / f"{name}-{size[0]}x{size[1]}"
            work.mkdir(parents=True, exist_ok=True)
            found = build_candidates(
                model, routes, the_plan.skipped, work, batch="dynamic",
                calibration=self.calibration, max_drop=self.max_drop, speed_only=self.calibration is None,
            )  # fmt: skip
            self.built[key] = (the_plan, found)
        return self.built[key]

    def race(
        self, model: nn.Module, name: str, size: tuple[int, int], batch: int, threads: int, seconds: float,
        warmup: float, others: dict[str, Callable[[], Any]],
    ) -> tuple[dict[str, list[float]], Picked]:  # fmt: skip
        """Every candidate and ``others`` timed in the same rounds by ``--fastest``'s rule; times by runner name."""
        the_plan, found = self.candidates(model, name, size)
        trials = [copy.copy(t) for t in found.trials]  # each race decides afresh (threads, timings)
        if not any(t.eligible for t in trials):
            raise RuntimeError(f"{name}: no --fastest candidate is eligible: " + _reasons(trials))
        result = time_and_choose(trials, batch, found.x, threads, seconds, None, warmup, others=others)
        unmeasured = min([t for t in trials if _unmeasured(t)], key=lambda t: statistics.median(t.times), default=None)
        decisions = dict(the_plan.skipped) | {t.name: t.reason for t in trials}  # a built baseline: its own reason
        if found.images:
            lines = [f"litevit's pick is gated on {found.images} held-out images of {self.calibration} "
                     f"(top-1 drop <= {self.max_drop:g} points at 95%)"]  # fmt: skip
        else:
            lines = ["litevit's pick is made among files exact to fp32 (no --calibration images: bf16 and int8 "
                     "are timed and shown apart, their accuracy not measured)"]  # fmt: skip
        baseline = the_plan.baseline.name if the_plan.baseline is not None else None
        reference = REFERENCE if REFERENCE in result.times else None
        picked = Picked(
            result.chosen.name, baseline, reference, None if unmeasured is None else unmeasured.name, decisions,
            lines + result.lines, bool(found.images),
        )  # fmt: skip
        return result.times, picked


def _unmeasured(trial: Trial) -> bool:
    """Built and timed, but judged without images: bf16 on random inputs, int8 calibrated on noise."""
    return trial.path is not None and not trial.eligible and trial.reason.startswith(("not measured", "speed only"))


def _reasons(trials: list[Trial]) -> str:
    return "; ".join(f"{t.name}: {t.reason}" for t in trials)


def race_precision(name: str) -> str:
    """What a race runner computes in: its route's precision, or OpenVINO's default for the reference."""
    if name == REFERENCE:
        return f"{DEFAULTS} ({openvino_default_precision()})"
    return route_named(name).precision


def race_comparisons(
    times: dict[str, list[float]], meta: dict[str, dict[str, Any]], picked: Picked, batch_size: int, threads: int
) -> list[Comparison]:
    """The quick bench's comparisons: litevit's pick (``--fastest``'s) against each other source's fastest route at
    its defaults and its OpenVINO IR at defaults (the faster of dynamic and static), against litevit's own fp32 ONNX
    in onnxruntime and fp32 IR at OpenVINO's defaults; and the fastest file the gate could not judge, apart."""
    model = next(m["model"] for m in meta.values() if m["source"] == "litevit")

    def key(name: str | None) -> str | None:
        return None if name is None else record_key("litevit", model, name, race_precision(name), fused=True)

    def fastest(keys: Iterable[str]) -> str | None:
        return min(keys, key=lambda k: statistics.median(times[k]), default=None)

    comparisons: list[Comparison] = []
    note = "; ".join(picked.lines)

    def compare(ours: str | None, theirs: str | None, kind: str) -> None:
        if ours is not None and theirs is not None:
            comparisons.append(Comparison.of(times, model, batch_size, ours, theirs, threads, kind, note))

    ours, unmeasured = key(picked.chosen), key(picked.unmeasured)
    for source in dict.fromkeys(m["source"] for m in meta.values()):
        if source != "litevit":
            theirs = [k for k in times if meta[k]["source"] == source and compared(source, meta[k]["runtime"],
                                                                                     meta[k]["precision"])]  # fmt: skip
            compare(ours, fastest(theirs), "fastest")
            compare(ours, fastest(k for k in theirs if meta[k]["runtime"] == "openvino"), "openvino defaults")
            compare(unmeasured, fastest(theirs), "unmeasured vs other")
    compare(ours, key(picked.baseline), "litevit onnxruntime fp32")
    compare(ours, key(picked.reference), "litevit openvino defaults")
    compare(unmeasured, ours, "unmeasured vs pick")
    compare(unmeasured, key(picked.baseline), "unmeasured vs litevit onnxruntime fp32")
    compare(unmeasured, key(picked.reference), "unmeasured vs litevit openvino defaults")
    return comparisons
