"""Measured speed: params, MACs, batch-1 latency and batched throughput, unfused vs fused, per runtime.

Protocol: every runner of a comparison group (same model, batch size and input) is warmed up for a fixed
time, then the runners are called in interleaved rounds (rotating order) until the time budget is spent;
each call is timed on its own (with device synchronisation on GPU). We report the median and the
10th/90th percentiles of the per-call times, and ratios as the median (and p10/p90) of the per-round
ratios, so that drifts in machine load hit both sides of a ratio alike.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import statistics
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import nn

from .. import _extras
from ..deploy.fastest import DEFAULT_MAX_DROP
from ..deploy.fuse import fuse
from ..flops import count_macs, count_params
from ..layers import to_2tuple
from ..registry import get_variant, list_models
from ..timing import percentile, time_interleaved
from ..weights.loading import create_model
from .peak import Peak, openvino_peak
from .pick import Candidacy, race_comparisons, race_precision
from .records import BenchRecord, Comparison, compared, record_key, round_ratios
from .runtimes import (
    EXPORT_RUNTIMES,
    ExportedFiles,
    installed_runtimes,
    precision_label,
    precisions,
)
from .timing import FlopRate, device_name, flop_rate, git_commit

log = logging.getLogger(__name__)

RUNTIMES = ("eager", "compile", *EXPORT_RUNTIMES)
FASTEST_RUNTIMES = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")  # litevit export --fastest's
# reference CNNs from timm for the papers' comparison: name -> (top-1 %, source)
REFERENCE_CNNS = {
    "efficientnet_b0": (77.1, "EfficientNet paper (Tan & Le 2019), Table 2"),
    "mobilenetv3_large_100": (75.2, "MobileNetV3 paper (Howard et al. 2019), Table 3"),
}
# the models a user would pick instead of a lightweight ViT (timm, reparameterized where they are), at their
# published ImageNet top-1 and input size: ``make bench`` times the first two, ``make bench-full`` all three
RIVALS = {
    "repvit_m0_9": (78.7, "RepViT (Wang et al. 2024), official model zoo, M0.9 at 300 epochs"),
    "mobilenetv4_conv_small": (73.8, "MobileNetV4 paper (Qin et al. 2024), MNv4-Conv-S"),
    "fastvit_t8": (76.2, "FastViT (Vasu et al. 2023), official model zoo, T8"),
}
QUICK_RIVALS = ("repvit_m0_9", "mobilenetv4_conv_small")


@dataclass
class Subject:
    """One model to time: how to build it and what to report about it."""

    name: str
    source: str
    build: Callable[[], nn.Module]
    paper_top1: float | None
    img_size: tuple[int, int] | None = None  # input size; None: the model's own (224 for models without one)

    def __post_init__(self) -> None:
        # one model per subject for all its batch sizes (each runner fuses and exports its own copy)
        self.build = functools.cache(self.build)


def _subjects(name: str, img_size: int | tuple[int, int] | None, compare: str | None) -> list[Subject]:
    """litevit's model, and with ``compare="timm"`` timm's model of the same variant carrying the same weights:
    timm's random initialisation, read into litevit through litevit's own checkpoint converter."""
    variant = get_variant(name)
    top1 = variant.paper.top1
    timm_name = None
    if compare == "timm":
        import timm

        timm_name = next((n for n in variant.external_names if n in timm.list_models()), None)
    size = to_2tuple(img_size if img_size is not None else variant.config.img_size)
    if timm_name is None:
        return [Subject(name, "litevit", lambda: create_model(name, img_size=img_size), top1, size)]
    kwargs = {} if img_size is None else {"img_size": img_size}
    theirs = timm.create_model(timm_name, pretrained=False, **kwargs).eval()

    def ours() -> nn.Module:
        model = create_model(name, img_size=img_size, checkpoint=theirs.state_dict()).eval()
        height, width = model_input_size(model)
        x = torch.randn(2, 3, height, width)
        with torch.inference_mode():
            expected, got = theirs(x), model(x)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()):
            raise RuntimeError(f"litevit's {name} and timm's {timm_name} disagree on the same weights")
        return model

    # both at the litevit variant's size: timm's models carry no input size of their own
    return [Subject(name, "litevit", ours, top1, size), Subject(timm_name, "timm", lambda: theirs, top1, size)]


def _references(quick: bool) -> list[Subject]:
    """timm's models a user would pick instead (:data:`RIVALS`, reparameterized), and the papers' reference CNNs
    in the full sweep, each at its published top-1 and input size."""
    import timm
    from timm.utils.model import reparameterize_model

    def build(name: str) -> Callable[[], nn.Module]:
        return lambda: reparameterize_model(timm.create_model(name, pretrained=False).eval())

    names = {n: RIVALS[n] for n in QUICK_RIVALS} if quick else {**RIVALS, **REFERENCE_CNNS}
    subjects = []
    for name, (top1, _) in names.items():
        size = timm.create_model(name, pretrained=False).pretrained_cfg["input_size"][1:]
        subjects.append(Subject(name, "timm", build(name), top1, tuple(size)))
    return subjects


def model_input_size(model: nn.Module) -> tuple[int, int]:
    return to_2tuple(getattr(getattr(model, "config", None), "img_size", 224))


def _runner(
    model: nn.Module,
    runtime: str,
    x: torch.Tensor,
    threads: int,
    autocast: Any,
    name: str,
    source: str,
    exported_files: ExportedFiles,
    precision: str | None = None,
) -> Callable[[], Any]:
    if runtime in EXPORT_RUNTIMES:
        return exported_files.runner(model, runtime, x, threads, name, source, precision)
    if runtime not in ("eager", "compile"):
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    forward = torch.compile(model) if runtime == "compile" else model

    def run() -> Any:
        with torch.inference_mode(), autocast:
            return forward(x)

    return run


def bench_group(
    subjects: list[Subject],
    *,
    runtimes: Iterable[str] = ("eager",),
    batch_size: int = 1,
    img_size: int | tuple[int, int] | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    channels_last: bool = False,
    threads: int = 1,
    seconds: float = 3.0,
    warmup: float = 1.0,
    exported_files: ExportedFiles | None = None,
    scope: str = "full",
    candidacy: Candidacy | None = None,
) -> tuple[list[BenchRecord], list[Comparison]]:
    """Time every subject (litevit: unfused and fused) under every runtime and precision, all interleaved together.

    ``seconds`` is the measuring budget per runner. Speedups in the records are against the first runner
    (litevit eager unfused; fused in the ``"fastest"`` scope). Comparisons pit litevit's fastest runner (at the
    precision its runner compiles with, never at OpenVINO's defaults) against each other source's fastest route at
    its runtimes' defaults, and against that source's fp32 IR at OpenVINO's defaults when it was timed.
    ``exported_files``: the run's exported files, shared between groups (default: built for this group alone).
    ``scope``: ``"full"`` times every route at every precision; ``"fastest"``: litevit's exported files are
    ``export --fastest``'s candidates, built, judged and timed by its routine with the other runners in its rounds
    (:mod:`.pick`, ``candidacy``: the run's candidates), against timm's routes at their defaults
    (:func:`.runtimes.precisions`).
    """
    exported_files = exported_files or ExportedFiles()
    if dtype not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
    if device == "cpu":
        torch.set_num_threads(threads)
    autocast: Any = nullcontext()
    if dtype != "fp32":
        autocast = torch.autocast(device.split(":")[0], dtype=torch.float16 if dtype == "fp16" else torch.bfloat16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    runners: dict[str, Callable[[], Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    # litevit's onnxruntime and OpenVINO files: export --fastest's candidates, raced by its rule (:mod:`.pick`)
    racing = device == "cpu" and dtype == "fp32" and bool(set(runtimes) & set(FASTEST_RUNTIMES))
    racer: tuple[Subject, nn.Module, dict[str, Any]] | None = None
    for subject in subjects:
        model = subject.build().eval()
        if img_size is not None:
            height, width = to_2tuple(img_size)
        else:
            height, width = subject.img_size or model_input_size(model)
        macs, params = count_macs(model, (height, width)) / 1e6, count_params(model) / 1e6
        forms = [(False, model)] + ([(True, fuse(model))] if subject.source == "litevit" else [])
        if scope == "fastest" and subject.source == "litevit":
            forms = forms[1:]  # what litevit deploys: the fused form
        if racing and subject.source == "litevit":
            info = dict(model=subject.name, source="litevit", fused=True, params_m=params, macs_m=macs,
                        paper_top1=subject.paper_top1, img_size=(height, width))  # fmt: skip
            racer = (subject, model, info)
        for fused, form in forms:
            x = torch.randn(batch_size, 3, height, width, device=device)
            form = form.to(device)
            if channels_last:
                form, x = form.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            for runtime in runtimes:
                exported = runtime in EXPORT_RUNTIMES
                raced = racer is not None and subject.source == "litevit" and runtime in FASTEST_RUNTIMES
                if raced or exported and not _exports(runtime, subject.source, fused, device, dtype, scope):
                    continue
                for precision in precisions(runtime, scope) if exported else [dtype]:
                    label = precision_label(runtime, precision)
                    key = record_key(subject.source, subject.name, runtime, label, fused)
                    runners[key] = _runner(
                        form, runtime, x, threads, autocast, subject.name, subject.source, exported_files, precision
                    )
                    meta[key] = dict(
                        model=subject.name, source=subject.source, runtime=runtime, fused=fused, params_m=params,
                        macs_m=macs, paper_top1=subject.paper_top1, img_size=(height, width), precision=label,
                    )  # fmt: skip
    picked = None
    if racer is not None:
        subject, model, info = racer
        candidacy = candidacy or Candidacy(exported_files.folder)
        raced, picked = candidacy.race(model, subject.name, info["img_size"], batch_size, threads, seconds, warmup,
                                       runners)  # fmt: skip
        times = {}
        for name, samples in raced.items():
            if name in runners:
                times[name] = samples
                continue
            precision = race_precision(name)
            key = record_key("litevit", subject.name, name, precision, fused=True)
            times[key] = samples
            meta[key] = dict(**info, runtime=name, precision=precision, decision=picked.decisions.get(name, ""))
    else:
        times = time_interleaved(runners, seconds * len(runners), warmup, sync)
    common = dict(
        batch_size=batch_size, dtype=dtype, channels_last=channels_last, device=device,
        device_name=device_name(device), threads=threads, torch_version=torch.__version__, git_commit=git_commit(),
    )  # fmt: skip
    baseline = next(iter(runners), next(iter(times)))
    records = []
    for key, samples in times.items():
        median = statistics.median(samples)
        ratios = round_ratios(times, baseline, key)
        records.append(
            BenchRecord(
                **meta[key],
                **common,
                median_ms=median * 1e3,
                p10_ms=percentile(samples, 0.1) * 1e3,
                p90_ms=percentile(samples, 0.9) * 1e3,
                images_per_s=batch_size / median,
                samples=len(samples),
                baseline=None if key == baseline else baseline,
                speedup_median=statistics.median(ratios),
                speedup_p10=percentile(ratios, 0.1),
                speedup_p90=percentile(ratios, 0.9),
            )  # fmt: skip
        )
    if picked is not None:
        return records, race_comparisons(times, meta, picked, batch_size, threads)
    return records, _comparisons(times, meta, batch_size, threads)


def _exports(runtime: str, source: str, fused: bool, device: str, dtype: str, scope: str) -> bool:
    """Whether an exported-file runtime is timed for this form of a subject."""
    if device != "cpu" or dtype != "fp32":
        return False  # CPU runtimes of exported files, from float32 models
    if source == "litevit" and not fused:
        return False  # litevit's exporter always exports the fused model: timed once, as fused
    if runtime == "executorch" and source != "litevit":
        return False  # timm has no ExecuTorch route (bench_runtimes)
    return bool(precisions(runtime, scope))


def _comparisons(
    times: dict[str, list[float]], meta: dict[str, dict[str, Any]], batch_size: int, threads: int
) -> list[Comparison]:
    """litevit's fastest runner against each other source's fastest route at defaults and its OpenVINO defaults, in
    groups without exported files (GPU, reduced precision); on CPU at fp32 it is :func:`.pick.race_comparisons`."""

    def fastest(keys: Iterable[str]) -> str | None:
        return min(keys, key=lambda k: statistics.median(times[k]), default=None)

    def counted(key: str) -> bool:
        return compared(meta[key]["source"], meta[key]["runtime"], meta[key]["precision"])

    def compare(ours: str, theirs: str | None, kind: str) -> None:
        if theirs is not None:
            comparisons.append(Comparison.of(times, meta[ours]["model"], batch_size, ours, theirs, threads, kind))

    mine = [k for k in times if meta[k]["source"] == "litevit" and counted(k)]
    ours = fastest(mine)
    if ours is None:
        return []
    comparisons: list[Comparison] = []
    for source in dict.fromkeys(m["source"] for m in meta.values()):
        if source != "litevit":
            theirs = [k for k in times if meta[k]["source"] == source and counted(k)]
            compare(ours, fastest(theirs), "fastest")
            # the faster of the plain (dynamic) IR and the IR reshaped to the static shape
            compare(ours, fastest(k for k in theirs if meta[k]["runtime"] == "openvino"), "openvino defaults")
    return comparisons


# `litevit bench --quick`: the smallest variant of each family's first version (timm has all but T2T-ViT)
QUICK_MODELS = ("levit_128s", "efficientvit_m0", "mobilevit_xxs", "t2t_vit_7")
QUICK_RUNTIMES = ("eager", *FASTEST_RUNTIMES)


def default_models() -> list[str]:
    """The smallest variant (by paper MACs) of each family, plus LeViT-256 and EfficientViT-M4."""
    smallest: dict[str, str] = {}
    for name in list_models():
        family = get_variant(name).family
        if family not in smallest or get_variant(name).paper.macs_m < get_variant(smallest[family]).paper.macs_m:
            smallest[family] = name
    extra = [n for n in ("levit_256", "efficientvit_m4") if n in list_models()]
    return list(dict.fromkeys(list(smallest.values()) + extra))


@dataclass
class BenchResult:
    records: list[BenchRecord]
    comparisons: list[Comparison]
    flop_rate: FlopRate | None = None  # LeViT-128S against the machine's matmul rate (CPU runs that include it)
    delegations: dict[str, str] = field(default_factory=dict)  # .pte file -> what XNNPACK runs
    peaks: list[Peak] = field(default_factory=list)  # this core's matmul MAC rate in OpenVINO, per thread count


def run_bench(
    models: list[str] | None = None,
    *,
    device: str = "cpu",
    batch_sizes: list[int] | None = None,
    threads: int | list[int] = 1,
    img_size: int | tuple[int, int] | None = None,
    dtype: str | None = None,
    channels_last: bool = False,
    runtimes: Iterable[str] = ("eager",),
    seconds: float = 3.0,
    warmup: float = 1.0,
    compare: str | None = None,
    progress: bool = True,
    progress_to: TextIO | None = None,
    quick: bool = False,
    calibration: str | os.PathLike | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
) -> BenchResult:
    """The ``litevit bench`` job. Defaults follow the papers: CPU 1 thread batch 1 and 16; GPU batch 256 AMP.

    ``progress_to``: where the progress bar goes (default: standard error).
    ``runtimes``: names from :data:`RUNTIMES`, or ``"installed"`` for eager and every exported-file runtime whose
    packages are installed. ``threads``: one count or several (each a group of its own). ExecuTorch, a phone
    runtime with fixed-batch files, is timed at batch 1 only.

    ``quick``: the question ``make bench`` answers first, what is the fastest way to run each family's smallest
    model here and how that compares with timm: :data:`QUICK_MODELS`, litevit's ``--fastest`` candidates (fused;
    ONNX Runtime and OpenVINO at pinned precisions, :data:`QUICK_RUNTIMES`) against timm's routes at their
    defaults, without the reference CNNs and the FLOP-rate line. litevit's side is ``export --fastest``'s routine
    (:mod:`.pick`): with ``calibration`` (a folder of images) every candidate is measured on its held-out images and
    gated by ``max_drop`` top-1 points; without, the pick is made among files exact to fp32.
    """
    if calibration is not None and not quick:
        raise ValueError("--calibration gates litevit's --fastest pick: it applies to --quick")
    if max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0 top-1 points, got {max_drop:g}")
    names = models or (list(QUICK_MODELS) if quick else default_models())
    scope = "fastest" if quick else "full"
    gpu = device.startswith("cuda")
    batch_sizes = batch_sizes or ([256] if gpu else [1, 16])
    dtype = dtype or ("fp16" if gpu else "fp32")
    runtimes = [r for name in runtimes for r in (installed_runtimes() if name == "installed" else [name])]
    if quick:
        runtimes = [r for r in runtimes if r in QUICK_RUNTIMES]
    thread_counts = [threads] if isinstance(threads, int) else list(threads)
    if compare not in (None, "timm"):
        raise ValueError(f"--compare supports 'timm' only, got {compare!r}")
    tasks: list[tuple[list[Subject], int, int]] = []
    for name in names:
        subjects = _subjects(name, img_size, compare)
        tasks += [(subjects, batch, t) for t in thread_counts for batch in batch_sizes]
    if compare == "timm":
        for subject in _references(quick):
            tasks += [([subject], batch, t) for t in thread_counts for batch in batch_sizes]
    from tqdm import tqdm

    records: list[BenchRecord] = []
    comparisons: list[Comparison] = []
    exported_files = ExportedFiles()
    candidacy = Candidacy(exported_files.folder, calibration, max_drop)
    try:
        for subjects, batch, count in tqdm(tasks, desc="bench", disable=not progress, unit="group", file=progress_to):
            group_runtimes = [r for r in runtimes if r != "executorch" or batch == 1]
            group_records, group_comparisons = bench_group(
                subjects, runtimes=group_runtimes, batch_size=batch, img_size=img_size, device=device, dtype=dtype,
                channels_last=channels_last, threads=count, seconds=seconds, warmup=warmup,
                exported_files=exported_files, scope=scope, candidacy=candidacy,
            )  # fmt: skip
            records += group_records
            comparisons += group_comparisons
    finally:  # the run's exported files and calibration images
        shutil.rmtree(exported_files.folder, ignore_errors=True)
    result = BenchResult(records, comparisons, delegations=exported_files.delegations)
    if "levit_128s" in names and not gpu and img_size is None and not quick:
        result.flop_rate = flop_rate("levit_128s", max(batch_sizes), thread_counts[0], seconds=4 * seconds)
    if not gpu and "openvino" in runtimes and _extras.available("nncf"):
        result.peaks = [openvino_peak(count, seconds=max(seconds, 0.5)) for count in thread_counts]
    return result
