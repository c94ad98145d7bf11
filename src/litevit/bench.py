"""Measured speed: params, MACs, batch-1 latency and batched throughput, unfused vs deployed, per runtime.

Protocol: every runner of a comparison group (same model, batch size and input) is warmed up for a fixed
time, then the runners are called in interleaved rounds (rotating order) until the time budget is spent;
each call is timed on its own (with device synchronisation on GPU). We report the median and the
10th/90th percentiles of the per-call times, and ratios as the median (and p10/p90) of the per-round
ratios, so that drifts in machine load hit both sides of a ratio alike.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .deploy import fuse
from .flops import count_macs, count_params
from .layers import to_2tuple
from .loading import create_model
from .registry import DataConfig, get_variant, list_models

log = logging.getLogger(__name__)

DEPLOY_RUNTIMES = ("onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "executorch")  # CPU, exported files
RUNTIMES = ("eager", "compile", *DEPLOY_RUNTIMES)
# one opset for both sides of an onnxruntime comparison: 17 has LayerNormalization and HardSwish as single ops
ONNX_OPSET = 17
# reference CNNs from timm for the papers' comparison: name -> (top-1 %, source)
REFERENCE_CNNS = {
    "efficientnet_b0": (77.1, "EfficientNet paper (Tan & Le 2019), Table 2"),
    "mobilenetv3_large_100": (75.2, "MobileNetV3 paper (Howard et al. 2019), Table 3"),
}


@dataclass
class BenchRecord:
    model: str
    source: str  # "litevit", "timm"
    runtime: str  # eager | compile | onnxruntime
    fused: bool
    batch_size: int
    img_size: tuple[int, int]
    dtype: str
    channels_last: bool
    device: str
    device_name: str
    threads: int
    torch_version: str
    git_commit: str
    params_m: float
    macs_m: float
    paper_top1: float | None
    median_ms: float  # per call
    p10_ms: float
    p90_ms: float
    images_per_s: float  # batch_size / median call time
    samples: int
    baseline: str | None  # the runner the speedups are against (None: this is it)
    speedup_median: float  # baseline time / this time, per interleaved round
    speedup_p10: float
    speedup_p90: float


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model with the instruction sets its int8/bf16 kernels use."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    from .quantize import cpu_isa

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = cpu_isa()
    return f"{name} [{', '.join(isa)}]" if isa else name


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_interleaved(
    runners: dict[str, Callable[[], Any]], seconds: float, warmup: float, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Per-call times (s) of each runner, measured in interleaved rounds after a time-based warm-up."""
    for run in runners.values():
        start = time.perf_counter()
        while time.perf_counter() - start < warmup:
            run()
        sync()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    deadline = time.perf_counter() + seconds
    round_index = 0
    while time.perf_counter() < deadline or round_index < 3:
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            runners[name]()
            sync()
            times[name].append(time.perf_counter() - start)
        round_index += 1
    return times


@dataclass
class FlopRate:
    """A model's achieved FLOP rate against the machine's float32 matmul rate, timed interleaved."""

    model: str
    batch_size: int
    threads: int
    model_gflops: float  # 2 * MACs * images/s of the fused eager model (median)
    matmul_gflops: float  # 2 n^3 / time of an n x n float32 matmul (median)
    ratio_median: float  # per interleaved round
    ratio_p10: float
    ratio_p90: float


def flop_rate(
    name: str = "levit_128s", batch_size: int = 16, threads: int = 1, seconds: float = 10.0, size: int = 1024
) -> FlopRate:
    """How close the fused model's eager forward comes to plain matmul throughput on this machine."""
    torch.set_num_threads(threads)
    model = fuse(create_model(name))
    height, width = model_input_size(model)
    flops_per_image = 2 * count_macs(model, (height, width))
    x = torch.randn(batch_size, 3, height, width)
    a, b = torch.randn(size, size), torch.randn(size, size)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    times = time_interleaved({"model": forward, "matmul": lambda: torch.mm(a, b)}, seconds, warmup=1.0)
    model_rates = [flops_per_image * batch_size / t / 1e9 for t in times["model"]]
    matmul_rates = [2 * size**3 / t / 1e9 for t in times["matmul"]]
    ratios = [m / r for m, r in zip(model_rates, matmul_rates, strict=True)]
    return FlopRate(
        name, batch_size, threads, statistics.median(model_rates), statistics.median(matmul_rates),
        statistics.median(ratios), _percentile(ratios, 0.1), _percentile(ratios, 0.9),
    )  # fmt: skip


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


def model_input_size(model: nn.Module) -> tuple[int, int]:
    return to_2tuple(getattr(getattr(model, "config", None), "img_size", 224))


def _calibration_folder(height: int, width: int, count: int = 32) -> Path:
    """Synthetic calibration images for timing int8 graphs (their accuracy is not what the bench measures)."""
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="litevit-calibration-"))
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _deployed(
    model: nn.Module, runtime: str, x: torch.Tensor, threads: int, name: str, source: str
) -> Callable[[], Any]:
    """A runner of the model in onnxruntime or OpenVINO, fp32 or int8.

    litevit models go through litevit's exporter (fused; int8 by its per-family recipe); timm's models take the
    routes a timm user would: a plain ``torch.onnx.export`` / ``openvino.convert_model`` of the unmodified model,
    and for int8 the quantizers' own defaults (onnxruntime ``quantize_static``, NNCF ``quantize``).
    """
    from .export import ExportedModel
    from .quantize import calibration_set, require

    int8 = runtime.endswith("-int8")
    kind = "openvino" if runtime.startswith("openvino") else "onnx"
    folder = Path(tempfile.mkdtemp(prefix="litevit-bench-"))
    if runtime == "executorch":
        return _executorch(model, x, threads, folder / f"{name}.pte", source)
    path = folder / f"{name}.{'xml' if kind == 'openvino' else 'onnx'}"
    size = tuple(x.shape[-2:])
    calibration = _calibration_folder(*size) if int8 else None
    if source == "litevit":
        from .export import export

        opset = None if int8 else ONNX_OPSET
        export(model, path, batch="dynamic", img_size=size, opset=opset if kind == "onnx" else None, int8=int8,
               calibration=calibration, calibration_images=32)  # fmt: skip
        exported = ExportedModel(path, threads=threads)
        return lambda: exported(x)
    batches = calibration_set(calibration, DataConfig(), size, 32) if int8 else None
    if kind == "openvino":
        ov = require("openvino", "the OpenVINO bench runtime")
        ir = ov.convert_model(model.float().cpu(), example_input=x.float().cpu())
        if batches is not None:
            nncf = require("nncf", "the openvino-int8 bench runtime")
            ir = nncf.quantize(ir, nncf.Dataset(batches), subset_size=len(batches))
        compiled = ov.Core().compile_model(
            ir, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        )
        request, feed = compiled.create_infer_request(), x.float().cpu().numpy()
        return lambda: request.infer({0: feed})
    ort = require("onnxruntime", "the onnxruntime bench runtime")
    torch.onnx.export(
        model, (x.float().cpu(),), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
    )  # fmt: skip
    if batches is not None:
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self.items, None)
                return None if batch is None else {"input": batch}

        quantized = folder / f"{name}-int8.onnx"
        quantize_static(str(path), str(quantized), Reader())  # onnxruntime's defaults
        path = quantized
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.float().cpu().numpy()}
    return lambda: session.run(None, feed)


def _executorch(model: nn.Module, x: torch.Tensor, threads: int, path: Path, source: str) -> Callable[[], Any]:
    """A runner of the model as an XNNPACK ``.pte`` at the batch size of ``x`` (timm's: lowered unmodified)."""
    from .export import ExportedModel, export
    from .mobile import pte_runner, save_pte

    if source == "litevit":
        export(model, path, batch=x.shape[0], img_size=tuple(x.shape[-2:]))
        exported = ExportedModel(path, threads=threads)
        return lambda: exported(x)
    save_pte(model.float().cpu(), x.float().cpu(), path, "{}", rewrite=False)
    _, run = pte_runner(path, threads)
    feed = x.float().cpu().contiguous()
    return lambda: run(feed)


def _runner(
    model: nn.Module, runtime: str, x: torch.Tensor, threads: int, autocast: Any, name: str, source: str
) -> Callable[[], Any]:
    if runtime in DEPLOY_RUNTIMES:
        return _deployed(model, runtime, x, threads, name, source)
    if runtime not in ("eager", "compile"):
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    forward = torch.compile(model) if runtime == "compile" else model

    def run() -> Any:
        with torch.inference_mode(), autocast:
            return forward(x)

    return run


@dataclass
class Comparison:
    """litevit's fastest runner against another source's fastest on the same model, batch and machine."""

    model: str
    batch_size: int
    ours: str
    theirs: str
    speedup_median: float  # their time / our time, per interleaved round
    speedup_p10: float
    speedup_p90: float


def _ratio(times: dict[str, list[float]], slow: str, fast: str) -> list[float]:
    return [a / b for a, b in zip(times[slow], times[fast], strict=True)]


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
) -> tuple[list[BenchRecord], list[Comparison]]:
    """Time every subject (litevit: unfused and fused) under every runtime, all interleaved together.

    ``seconds`` is the measuring budget per runner. Speedups in the records are against the first runner
    (litevit eager unfused); comparisons pit litevit's fastest runner against each other source's fastest.
    """
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
    for subject in subjects:
        model = subject.build().eval()
        if img_size is not None:
            height, width = to_2tuple(img_size)
        else:
            height, width = subject.img_size or model_input_size(model)
        macs, params = count_macs(model, (height, width)) / 1e6, count_params(model) / 1e6
        forms = [(False, model)] + ([(True, fuse(model))] if subject.source == "litevit" else [])
        for fused, form in forms:
            x = torch.randn(batch_size, 3, height, width, device=device)
            form = form.to(device)
            if channels_last:
                form, x = form.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            for runtime in runtimes:
                if runtime in DEPLOY_RUNTIMES and (device != "cpu" or dtype != "fp32"):
                    continue  # CPU runtimes of exported files, from float32 models
                if runtime in DEPLOY_RUNTIMES and subject.source == "litevit" and not fused:
                    continue  # litevit's exporter always exports the fused model: timed once, as fused
                key = f"{subject.source}:{subject.name}:{runtime}{':fused' if fused else ''}"
                runners[key] = _runner(form, runtime, x, threads, autocast, subject.name, subject.source)
                meta[key] = dict(
                    model=subject.name, source=subject.source, runtime=runtime, fused=fused, params_m=params,
                    macs_m=macs, paper_top1=subject.paper_top1, img_size=(height, width),
                )  # fmt: skip
    times = time_interleaved(runners, seconds * len(runners), warmup, sync)
    common = dict(
        batch_size=batch_size, dtype=dtype, channels_last=channels_last, device=device,
        device_name=device_name(device), threads=threads, torch_version=torch.__version__, git_commit=git_commit(),
    )  # fmt: skip
    baseline = next(iter(runners))
    records = []
    for key, samples in times.items():
        median = statistics.median(samples)
        ratios = _ratio(times, baseline, key)
        records.append(
            BenchRecord(
                **meta[key],
                **common,
                median_ms=median * 1e3,
                p10_ms=_percentile(samples, 0.1) * 1e3,
                p90_ms=_percentile(samples, 0.9) * 1e3,
                images_per_s=batch_size / median,
                samples=len(samples),
                baseline=None if key == baseline else baseline,
                speedup_median=statistics.median(ratios),
                speedup_p10=_percentile(ratios, 0.1),
                speedup_p90=_percentile(ratios, 0.9),
            )  # fmt: skip
        )
    fastest: dict[str, str] = {}
    for key, samples in times.items():
        source = meta[key]["source"]
        if source not in fastest or statistics.median(samples) < statistics.median(times[fastest[source]]):
            fastest[source] = key
    comparisons = []
    if "litevit" in fastest:
        ours = fastest["litevit"]
        for source, theirs in fastest.items():
            if source != "litevit":
                ratios = _ratio(times, theirs, ours)
                comparisons.append(
                    Comparison(
                        meta[ours]["model"],
                        batch_size,
                        ours,
                        theirs,
                        statistics.median(ratios),
                        _percentile(ratios, 0.1),
                        _percentile(ratios, 0.9),
                    )  # fmt: skip
                )
    return records, comparisons


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


def run_bench(
    models: list[str] | None = None,
    *,
    device: str = "cpu",
    batch_sizes: list[int] | None = None,
    threads: int = 1,
    img_size: int | tuple[int, int] | None = None,
    dtype: str | None = None,
    channels_last: bool = False,
    runtimes: Iterable[str] = ("eager",),
    seconds: float = 3.0,
    warmup: float = 1.0,
    compare: str | None = None,
    progress: bool = True,
) -> BenchResult:
    """The ``litevit bench`` job. Defaults follow the papers: CPU 1 thread batch 1 and 16; GPU batch 256 AMP."""
    names = models or default_models()
    gpu = device.startswith("cuda")
    batch_sizes = batch_sizes or ([256] if gpu else [1, 16])
    dtype = dtype or ("fp16" if gpu else "fp32")
    runtimes = list(runtimes)
    if compare not in (None, "timm"):
        raise ValueError(f"--compare supports 'timm' only, got {compare!r}")
    tasks: list[tuple[list[Subject], int]] = []
    for name in names:
        subjects = _subjects(name, img_size, compare)
        tasks += [(subjects, batch) for batch in batch_sizes]
    if compare == "timm":
        import timm

        for cnn, (top1, _) in REFERENCE_CNNS.items():
            subject = Subject(cnn, "timm", lambda cnn=cnn: timm.create_model(cnn, pretrained=False), top1)
            tasks += [([subject], batch) for batch in batch_sizes]
    from tqdm import tqdm

    records: list[BenchRecord] = []
    comparisons: list[Comparison] = []
    for subjects, batch in tqdm(tasks, desc="bench", disable=not progress, unit="group"):
        group_records, group_comparisons = bench_group(
            subjects, runtimes=runtimes, batch_size=batch, img_size=img_size, device=device, dtype=dtype,
            channels_last=channels_last, threads=threads, seconds=seconds, warmup=warmup,
        )  # fmt: skip
        records += group_records
        comparisons += group_comparisons
    result = BenchResult(records, comparisons)
    if "levit_128s" in names and not gpu and img_size is None:
        result.flop_rate = flop_rate("levit_128s", max(batch_sizes), threads, seconds=4 * seconds)
    return result


def write_jsonl(result: BenchResult, path: str | os.PathLike) -> None:
    with open(path, "a") as f:
        for record in result.records:
            f.write(json.dumps({"kind": "record", **dataclasses.asdict(record)}) + "\n")
        for comparison in result.comparisons:
            f.write(json.dumps({"kind": "comparison", **dataclasses.asdict(comparison)}) + "\n")
        if result.flop_rate is not None:
            f.write(json.dumps({"kind": "flop_rate", **dataclasses.asdict(result.flop_rate)}) + "\n")


def markdown(result: BenchResult) -> str:
    """Tables of the run: every runner, then litevit-vs-other comparisons, then the FLOP-rate line."""
    first = result.records[0] if result.records else None
    lines = []
    if first is not None:
        lines += [
            f"Hardware: {first.device_name} ({first.device}), {first.threads} thread(s); torch {first.torch_version}; "
            f"dtype {first.dtype}; commit {first.git_commit}.",
            "",
        ]
    lines += [
        "| model | source | runtime | fused | batch | params (M) | MACs (M) | paper top-1 | median ms | p90 ms "
        "| images/s | speedup vs unfused eager (p10-p90) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result.records:
        top1 = f"{r.paper_top1:.1f}" if r.paper_top1 is not None else "-"
        speed = (
            "baseline" if r.baseline is None else f"{r.speedup_median:.2f} ({r.speedup_p10:.2f}-{r.speedup_p90:.2f})"
        )
        if r.source != "litevit":
            speed = "-"
        lines.append(
            f"| {r.model} | {r.source} | {r.runtime} | {'yes' if r.fused else 'no'} | {r.batch_size} | "
            f"{r.params_m:.2f} | {r.macs_m:.0f} | {top1} | {r.median_ms:.2f} | {r.p90_ms:.2f} | "
            f"{r.images_per_s:.1f} | {speed} |"
        )
    if result.comparisons:
        lines += [
            "",
            "| model | batch | litevit fastest | other fastest | speedup (median) | p10-p90 |",
            "|---|---:|---|---|---:|---|",
        ]
        for c in result.comparisons:
            lines.append(
                f"| {c.model} | {c.batch_size} | {c.ours.split(':', 2)[2]} | {c.theirs.split(':', 1)[0]}:"
                f"{c.theirs.split(':', 2)[2]} | {c.speedup_median:.2f} | {c.speedup_p10:.2f}-{c.speedup_p90:.2f} |"
            )
    if (rate := result.flop_rate) is not None:
        lines += [
            "",
            f"{rate.model} fused eager, batch {rate.batch_size}, {rate.threads} thread(s): {rate.model_gflops:.1f} "
            f"GFLOP/s against a float32 1024^3 matmul at {rate.matmul_gflops:.1f} GFLOP/s, timed interleaved: "
            f"{rate.ratio_median:.0%} of the matmul rate (p10-p90 {rate.ratio_p10:.0%}-{rate.ratio_p90:.0%}).",
        ]
    return "\n".join(lines)


_MARKERS = {"eager": "o", "compile": "s", "onnxruntime": "^", "onnxruntime-int8": "v", "openvino": "D",
            "openvino-int8": "d", "executorch": "P"}  # fmt: skip


def _fastest(records: list[BenchRecord]) -> dict[tuple[str, str], BenchRecord]:
    """(source, model) -> its fastest runner (litevit's fused forms only: that is what it deploys)."""
    best: dict[tuple[str, str], BenchRecord] = {}
    for r in records:
        if r.source == "litevit" and not r.fused:
            continue
        key = (r.source, r.model)
        if key not in best or r.images_per_s > best[key].images_per_s:
            best[key] = r
    return best


def _line(model: str) -> str:
    """The line a registered model is drawn on: its family, with MobileViT split into v1, v2 and v3."""
    family = get_variant(model).family
    return model.split("_")[0] if family == "mobilevit" else family


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """PNG, as the papers plot it: paper top-1 against images/s (log), one panel per batch size.

    One line per family through its variants for litevit's fastest path (solid) and timm's (dashed), the
    marker saying which runtime was fastest; reference CNNs as labelled crosses. Points are not labelled one by
    one (families are told apart by colour in the legend), so nothing overlaps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    batches = sorted({r.batch_size for r in result.records})
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5.5), squeeze=False)
    registered = set(list_models())
    families = sorted({_line(r.model) for r in result.records if r.model in registered})
    colours = {family: f"C{i}" for i, family in enumerate(families)}
    runtimes_seen: set[str] = set()
    for ax, batch in zip(axes[0], batches, strict=True):
        best = _fastest([r for r in result.records if r.batch_size == batch and r.paper_top1 is not None])
        for family in families:
            for source, style in (("litevit", "-"), ("timm", "--")):
                points = sorted(
                    (r for (src, model), r in best.items() if src == source and model in registered
                     and _line(model) == family),
                    key=lambda r: r.images_per_s,
                )  # fmt: skip
                if not points:
                    continue
                xs, ys = [r.images_per_s for r in points], [r.paper_top1 for r in points]
                ax.plot(xs, ys, style, color=colours[family], alpha=0.8)
                for r in points:
                    runtimes_seen.add(r.runtime)
                    ax.scatter(
                        r.images_per_s, r.paper_top1, marker=_MARKERS[r.runtime], color=colours[family], zorder=3
                    )
        for (_, model), r in best.items():
            if model not in registered:  # a reference CNN
                ax.scatter(r.images_per_s, r.paper_top1, marker="x", color="black", zorder=3)
                ax.annotate(model, (r.images_per_s, r.paper_top1), fontsize=7, xytext=(4, -10),
                            textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(f"images/s at batch {batch} (log)")
        ax.set_ylabel("ImageNet top-1 (%, as published)")
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=colours[f], label=f) for f in families]
    handles += [Line2D([], [], color="gray", linestyle=s, label=f"{src}'s fastest") for src, s in
                (("litevit", "-"), ("timm", "--"))]  # fmt: skip
    handles += [Line2D([], [], color="gray", marker=_MARKERS[r], linestyle="", label=r) for r in sorted(runtimes_seen)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    first = result.records[0]
    fig.suptitle(f"{first.device_name}, {first.threads} thread(s), torch {first.torch_version}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)
