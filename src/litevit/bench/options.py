"""The ``bench`` subcommand's options and their run (``litevit bench``), and the option types the command line shares:
thread counts, input sizes, model-name patterns."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO

from ..deploy.fastest import DEFAULT_MAX_DROP
from ..registry import list_models
from . import report as bench_report
from . import run as bench
from .run import RUNTIMES


def expand(patterns: list[str]) -> list[str]:
    """Registered names matching any of the shell-style patterns, in registry order, once each."""
    return list(dict.fromkeys(n for pattern in patterns for n in list_models(pattern)))


def thread_count(value: str) -> int:
    """A thread count, or ``all``: the cores this process may run on."""
    if value == "all":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a thread count or 'all', got {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"thread count must be at least 1, got {count}")
    return count


def img_size_arg(values: list[int] | None) -> int | tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise ValueError(f"--img-size takes S or H W, got {len(values)} numbers")
    return values[0] if len(values) == 1 else (values[0], values[1])


@contextlib.contextmanager
def output_to(log: str | os.PathLike) -> Iterator[TextIO]:
    """Everything written to standard output and error, by Python and by native libraries (tracer and deprecation
    warnings, NNCF's progress), appended to ``log``; yields a stream to the terminal's standard error for the
    progress bar."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        os.dup2(f.fileno(), 1)  # native code writes to the descriptors, Python to sys.stdout / sys.stderr
        os.dup2(f.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            terminal.close()


def _cmd_bench(args: argparse.Namespace) -> int:
    models = expand(args.models) if args.models else None
    if args.models and not models:
        raise ValueError(f"no registered model matches {args.models}; see `litevit list`")
    with output_to(args.log) if args.log else contextlib.nullcontext(None) as terminal:
        result = bench.run_bench(
            models, device=args.device, batch_sizes=args.batch_size, threads=list(dict.fromkeys(args.threads)),
            img_size=img_size_arg(args.img_size), dtype=args.dtype, channels_last=args.channels_last,
            runtimes=args.runtime, seconds=args.seconds, warmup=args.warmup, compare=args.compare,
            progress=not args.no_progress, progress_to=terminal, quick=args.quick, calibration=args.calibration,
            max_drop=args.max_drop,
        )  # fmt: skip
    if args.log:
        print(f"the run's warnings and progress output: {args.log}", file=sys.stderr)
    costs = bench_report.read_int8_costs(args.int8_costs) if args.int8_costs else None
    if args.out:
        bench_report.write_jsonl(result, args.out)
    if args.plot:
        bench_report.plot(result, args.plot, costs)
    table = bench_report.markdown(result, costs)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    print(table)
    return 0


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency and throughput of models per runtime (eager, compile, ONNX Runtime, OpenVINO, ExecuTorch, ...) "
        "and precision, at each batch size and thread count, against timm with --compare (default: a model set)",
    )
    p.add_argument("models", nargs="*", help="names or patterns (default: smallest of each family + levit_256, m4)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--batch-size", type=int, nargs="+", help="batch sizes (default: 1 16 on CPU, 256 on GPU)")
    p.add_argument(
        "--threads", type=thread_count, nargs="+", default=[1],
        help="CPU thread counts, or 'all' for every core (default 1, the papers' CPU protocol)",
    )  # fmt: skip
    p.add_argument("--img-size", type=int, nargs="+", help="input size: S or H W (default: each model's)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default fp32 on CPU, fp16 AMP on GPU")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    p.add_argument(
        "--runtime", nargs="+", default=["eager"], choices=[*RUNTIMES, "installed"],
        help="runtimes to time (several allowed; 'installed': eager and every exported-file runtime installed here)",
    )  # fmt: skip
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per runner and batch size")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up time per runner (s)")
    p.add_argument("--compare", choices=["timm"], help="also time timm's model with the same weights + 2 CNNs")
    p.add_argument(
        "--quick", action="store_true",
        help="the fastest way to run each family's smallest model here (litevit's pick by export --fastest's own "
        "routine) against timm's routes at their defaults; no reference CNNs (make bench)",
    )  # fmt: skip
    p.add_argument(
        "--calibration", metavar="DIR",
        help="with --quick: images to gate litevit's pick as export --fastest does (split into calibration and "
        "held-out images; without, the pick is made among files exact to fp32 and bf16/int8 are shown apart)",
    )  # fmt: skip
    p.add_argument(
        "--max-drop", type=float, default=DEFAULT_MAX_DROP,
        help=f"with --calibration: top-1 points a pick may lose, at 95%% (default {DEFAULT_MAX_DROP:g})",
    )  # fmt: skip
    p.add_argument("--out", help="append JSON-lines records to this file")
    p.add_argument("--markdown", help="also write the markdown tables to this file")
    p.add_argument("--plot", help="PNG of paper top-1 against images/s, one panel per batch size and thread count")
    p.add_argument(
        "--int8-costs", metavar="JSONL",
        help="measured int8 top-1 drops per family (tools/int8_settings.py output), printed next to int8 speeds",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--log", metavar="FILE",
        help="send what libraries print while building and timing (warnings, NNCF's progress) to FILE; the terminal "
        "keeps the progress bar and the tables",
    )  # fmt: skip
    p.set_defaults(func=_cmd_bench)
