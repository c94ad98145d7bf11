"""The ``litevit`` command: each subcommand parses its options, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ._extras import MissingExtraError, printable
from .bench.options import add_bench, expand, img_size_arg, thread_count
from .bulk import ENGINES, PART_ROWS
from .data import DECODERS, MAX_DEFAULT_WORKERS
from .deploy.executorch import PTE_INT8_MAX_RATIO
from .deploy.fastest import DEFAULT_MAX_DROP
from .deploy.int8 import DEFAULT_CALIBRATION_IMAGES, INT8_CHECK_IMAGES
from .deploy.metadata import FORMATS, SUFFIXES
from .deploy.parity import (
    INT8_MIN_AGREEMENT,
    INT8_MIN_CORRELATION,
    INT8_MIN_SIGNAL,
    PARITY,
    PTE_REFERENCE,
    RTOL,
    CheckResult,
)
from .deploy.precision import PRECISIONS
from .flops import count_params
from .predict import EVAL_BATCH_SIZE, PREDICT_BATCH_SIZE, TOPK
from .registry import get_variant
from .weights.loading import create_model


def _cmd_list(args: argparse.Namespace) -> int:
    names = expand(args.patterns or ["*"])
    if args.markdown:
        from .registry import variants_markdown

        print(variants_markdown(names))
        return 0
    for name in names:
        paper = get_variant(name).paper
        line = f"{name:24s} {paper.params_m:6.1f}M params {paper.macs_m:7.0f}M MACs"
        if paper.top1 is not None:
            line += f"  top-1 {paper.top1:.1f}%"
        if args.verbose:
            line += f"  (built: {count_params(create_model(name)) / 1e6:.2f}M params)"
        print(line)
    return 0


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models with their paper records")
    p.add_argument("patterns", nargs="*", help="shell-style patterns, e.g. 'levit_*'")
    p.add_argument("--markdown", action="store_true", help="print the README table")
    p.add_argument("--verbose", action="store_true", help="also build each model and count its parameters")
    p.set_defaults(func=_cmd_list)


def _cmd_weights(args: argparse.Namespace) -> int:
    from .weights.records import get_weights, list_weights, param_millions, weights_markdown

    names = list(dict.fromkeys(n for pattern in args.patterns or ["*"] for n in list_weights(pattern)))
    if not names:
        raise ValueError(f"no published weights match {args.patterns}; see `litevit weights`")
    if args.markdown:
        print(weights_markdown(names))
        return 0
    print(f"{'weights':44s} {'input':>5s} {'top-1':>6s} {'params':>7s} {'fp32':>7s}  licence")
    for name in names:
        w = get_weights(*name.split(".", 1))
        params = param_millions(w.variant)
        flags = (" (default)" if w.default else "") + ("" if w.confirmed else " (URL not confirmed)")
        print(f"{name:44s} {w.img_size:5d} {w.top1:6.2f} {params:6.1f}M {params * 4:5.0f}MB  {w.licence}{flags}")
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list published weights with input size, top-1, size and licence")
    p.add_argument("patterns", nargs="*", help="shell-style patterns on MODEL.TAG or MODEL, e.g. 'mobilevitv2_*'")
    p.add_argument("--markdown", action="store_true", help="print the README table")
    p.set_defaults(func=_cmd_weights)


def _cmd_download(args: argparse.Namespace) -> int:
    from ._extras import printable
    from .weights.hub import DownloadError, fetch
    from .weights.records import get_weights, split_name

    for name in args.names:
        weights = get_weights(*split_name(name))
        try:
            path = fetch(weights, progress=not args.no_progress)
        except DownloadError as exc:  # one line, whatever the server sent
            print(f"litevit download: error: {printable(str(exc))}", file=sys.stderr)
            return 2
        print(f"{weights.name}: {path}")
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download published weights into the cache ($LITEVIT_HOME)")
    p.add_argument("names", nargs="+", help="MODEL (its default weights) or MODEL.TAG, see `litevit weights`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)


def _load(args: argparse.Namespace, img_size: int | tuple[int, int] | None = None) -> object:
    """The model the command names: an exported file, a litevit file, a Hub folder or repository, or a name."""
    from pathlib import Path

    from .predict import load_classifier
    from .weights.loading import load

    if Path(args.model).is_dir() or args.model.startswith("hf-hub:"):  # config.json + weights (timm's form)
        if args.checkpoint is not None or args.pretrained:
            raise ValueError(f"{args.model} carries its own weights; --checkpoint and --pretrained do not apply")
        return load(args.model, img_size=img_size).eval()
    return load_classifier(args.model, args.checkpoint, img_size, pretrained=args.pretrained)


def _say_route(model: object) -> None:
    """An exported file's route, in one line on stderr (stdout stays the command's answer)."""
    if hasattr(model, "describe"):
        print(f"litevit: {printable(model.describe())}", file=sys.stderr)


def _add_model_source(p: argparse.ArgumentParser, exported: bool = True) -> None:
    what = (
        "registered name (MODEL or MODEL.TAG for published weights), a litevit file (best.safetensors, last.pt), "
        "a Hub folder (config.json + model.safetensors, timm's or litevit's) or hf-hub:ORG/NAME"
    )
    files = " / ".join(SUFFIXES)
    p.add_argument("model", help=what + (f", or an exported file ({files})" if exported else ""))
    p.add_argument(
        "--checkpoint", help="weights for a registered model: a file (official, timm or litevit layout) or a Hub folder"
    )
    p.add_argument("--pretrained", action="store_true", help="load the model's default published weights")


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    if logging.getLogger().level > logging.INFO:  # the per-epoch metrics lines are the point of a training run
        logging.getLogger(train.__name__).setLevel(logging.INFO)
    try:
        result = train.train(train.config_from_args(args))
    except train.NonFiniteLossError as exc:
        print(f"litevit train: {exc}", file=sys.stderr)
        return 3
    if result.rank == 0:  # under torchrun only rank 0 reports
        print(train.summary(result))
    return QAT_OVER_BUDGET if result.qat is not None and not result.qat.within else 0


QAT_OVER_BUDGET = 4  # exit status of a --qat run whose int8 drop exceeds --max-drop (its files are kept)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training import train

    p = sub.add_parser("train", help="train or fine-tune a model on an ImageFolder (also under torchrun)")
    train.add_arguments(p)
    p.set_defaults(func=_cmd_train)


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy.errors import ExportError
    from .deploy.exporting import export
    from .deploy.runtime import ExportedModel

    model = _load(args)
    if isinstance(model, ExportedModel):
        raise ValueError(f"{args.model} is already exported; export a model name or a litevit weights file")
    try:
        result = export(
            model, args.out, args.format, batch=args.batch, img_size=img_size_arg(args.img_size), opset=args.opset,
            check=args.check, int8=args.int8, calibration=args.calibration, calibration_images=args.calibration_images,
            precision=args.precision, fastest=args.fastest, max_drop=args.max_drop, threads=args.threads,
            dynamic_batch=args.dynamic_batch, embeddings=args.embeddings,
            progress=lambda line: print(f"litevit export: {line}", file=sys.stderr, flush=True),
        )  # fmt: skip
    except ExportError as exc:
        print(f"litevit export: error: {exc}", file=sys.stderr)
        return 1
    if result.fastest is not None:
        print(result.fastest.table())
    meta = result.metadata
    opset = f", opset {meta.opset}" if meta.opset is not None else ""
    h, w = meta.img_size
    print(
        f"{result.path}: {meta.format}{opset} {meta.precision}, batch {meta.batch}, input {h}x{w}, "
        f"{meta.num_classes} classes" + (", pre-logits features as output 'embedding'" if args.embeddings else "")
    )
    if result.delegation is not None:
        print(result.delegation.summary())
    if args.check and not result.checks and meta.format == "coreml":
        print("parity check skipped: Core ML predictions run on macOS only")
    for check in result.checks:
        print(_check_lines(check))
    return 0


def _check_lines(c: CheckResult) -> str:
    """What a check that ran on an exported file found, under its name (:mod:`litevit.deploy.parity`)."""
    images = f"{c.batch} image{'s' if c.batch != 1 else ''}"
    if c.name == PARITY:
        return (
            f"parity check on {images}: max |diff| {c.max_abs_diff:.2e}, relative {c.max_rel_diff:.2e} "
            f"(passed: <= {RTOL:g})"
        )
    if c.name == PTE_REFERENCE:
        return (
            f"pte-reference check on the same {images}: distance from its PT2E reference {c.max_rel_diff:.2f}x the "
            f"quantization error (passed: <= {PTE_INT8_MAX_RATIO:g})"
        )
    agreement = f"top-1 agreement with fp32 {c.agreement:.1%}, " if c.agreement is not None else ""
    line = (
        f"int8 check on {images}: {agreement}correlation of the logits {c.correlation:.3f}, "
        f"max |diff| {c.max_abs_diff:.2e}, relative {c.max_rel_diff:.2e}"
    )
    if c.judged:
        bound = f"agreement >= {INT8_MIN_AGREEMENT:.0%}, " if c.agreement is not None else ""
        return f"{line}\n  (passed: {bound}correlation >= {INT8_MIN_CORRELATION:g})"
    return (
        f"{line}\n  (passed: finite and input-dependent; agreement and correlation not judged: fp32's logits vary by "
        f"only {c.signal:.2%} of their size across these images, < {INT8_MIN_SIGNAL:.0%})"
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the fused model to a file another runtime runs: ONNX, OpenVINO IR, ExecuTorch .pte, Core ML, "
        "TorchScript or pt2, in fp32, bf16 or int8; --fastest builds the candidates and keeps the fastest here",
    )
    _add_model_source(p, exported=False)
    p.add_argument(
        "--format", choices=FORMATS,
        help="default: from the --out suffix",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output (.onnx, .ts, .pt2, .xml OpenVINO, .pte ExecuTorch, .mlpackage)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default; 1 for .pte/.mlpackage) or a fixed size")
    p.add_argument("--img-size", type=int, nargs="+", help="input size S or H W (default: the model's)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the lowest that works for the model)")
    p.add_argument(
        "--check", action="store_true",
        help=(f"run the written file and fail when the check that fits it fails, naming it: 'parity' for an fp32 "
              f"file (within {RTOL:g} relative of PyTorch, on another batch size); 'int8' for an int8 or bf16 "
              f"file (on up to {INT8_CHECK_IMAGES} images of --calibration held out of calibration: a non-finite "
              f"or constant output fails, and where fp32's logits vary across the images by >= "
              f"{INT8_MIN_SIGNAL:.0%} of their size, top-1 agreement with fp32 < {INT8_MIN_AGREEMENT:.0%} or a "
              f"correlation of the logits < {INT8_MIN_CORRELATION:g}); an int8 .pte also 'pte-reference' (its "
              f"distance from its PT2E reference at most {PTE_INT8_MAX_RATIO:g}x the quantization error); with "
              "--fastest, the pick's checks on the held-out images").replace("%", "%%"),  # argparse formats help with %
    )  # fmt: skip
    p.add_argument(
        "--int8", action="store_true",
        help="static int8: .onnx (onnxruntime QDQ), .xml (OpenVINO, NNCF) or .pte (ExecuTorch, XNNPACK's quantizer)",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=PRECISIONS,
        help="fp32 (default), bf16 (OpenVINO .xml, float math in bf16), int8 (= --int8), int8-bf16 (OpenVINO int8 "
        "with bf16 float parts); bf16 runs in f32 on CPUs without native bf16",
    )  # fmt: skip
    p.add_argument(
        "--fastest", action="store_true",
        help="build every candidate the options allow on this CPU (onnxruntime fp32/int8, OpenVINO fp32/bf16/int8; "
        "the --out suffix, --format and --precision restrict them), measure each on --calibration images held out "
        "of calibration, time them here at --batch (1 if dynamic), and write the fastest within --max-drop, at "
        "that batch, with how it was chosen in its metadata (litevit info FILE)",
    )  # fmt: skip
    p.add_argument(
        "--max-drop", type=float, default=DEFAULT_MAX_DROP,
        help=f"--fastest: the largest top-1 drop accepted, in points, measured on the images of --calibration held "
        f"out of calibration, at 95%% confidence (default {DEFAULT_MAX_DROP:g}); without images only files exact to "
        "fp32 are eligible",
    )  # fmt: skip
    p.add_argument(
        "--threads",
        type=thread_count,
        help="--fastest: the thread count to time at, the one you deploy with (default 1)",
    )
    p.add_argument(
        "--dynamic-batch", action="store_true",
        help="--fastest: write the pick with a dynamic batch axis (default: the static batch it was timed at)",
    )  # fmt: skip
    p.add_argument(
        "--embeddings", action="store_true",
        help="add the pre-logits features as a second output, 'embedding' (.onnx, .xml), which predict --embeddings "
        "writes",
    )  # fmt: skip
    p.add_argument(
        "--calibration",
        help="folder of images for int8 (.onnx, .xml, .pte; preprocessed with the model's data config); with "
        "--fastest, split by sub-folder into calibration images and held-out images every candidate is measured on",
    )
    p.add_argument(
        "--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
        help=f"images used for calibration (default {DEFAULT_CALIBRATION_IMAGES})",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import check_sources, iter_predictions, iter_sources

    if args.out is None:
        extra = [flag for flag, on in (("--embeddings", args.embeddings), ("--resume", args.resume),
                                       ("--engine ray", args.engine == "ray"),
                                       ("--gpus-per-worker", args.gpus_per_worker)) if on]  # fmt: skip
        if extra:
            raise ValueError(f"{', '.join(extra)} need --out (a .csv, .jsonl or .parquet results file)")
        check_sources(args.sources, missing_files=True)  # a missing file is reported by its prediction, as before
    else:
        from .bulk import predict_files

        summary = predict_files(
            _load(args, img_size_arg(args.img_size)), args.sources, args.out, topk=args.topk,
            batch_size=args.batch_size, workers=args.workers, embeddings=args.embeddings, resume=args.resume,
            progress=not args.quiet, part_rows=args.part_rows, engine=args.engine, ray_address=args.ray_address,
            gpus_per_worker=args.gpus_per_worker, decoder=args.decoder,
        )  # fmt: skip
        resumed = f", {summary.resumed} from the interrupted run" if summary.resumed else ""
        print(
            f"{printable(summary.out)}: {summary.rows} rows, {summary.errors} unreadable image(s){resumed}; "
            f"{summary.images_per_s:.1f} images/s"
        )
        return 0
    model = _load(args, img_size_arg(args.img_size))
    _say_route(model)
    failed = 0
    for result in iter_predictions(model, iter_sources(args.sources), topk=args.topk, batch_size=args.batch_size):
        # paths and class names come from files (folder names, checkpoint and exported metadata): escaped, an
        # escape sequence in a class name must not reach the terminal
        if result.error is not None:
            print(f"litevit predict: error: {printable(result.error)}", file=sys.stderr)
            failed += 1
            continue
        print(printable(result.path))
        for index, name, prob in result.topk:
            print(f"  {prob:7.2%}  {printable(name)} ({index})")
    return 1 if failed else 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k classes of images: printed, or a whole collection (folders, globs, @list, stdin) into a "
        "resumable CSV/JSONL/Parquet results file, locally or on Ray",
    )
    _add_model_source(p)
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="image file, folder (recursive), glob ('photos/**/*.jpg'), @list.txt (a path a line), - (stdin)",
    )  # fmt: skip
    p.add_argument("--topk", type=int, default=TOPK, help=f"classes to show per image (default {TOPK})")
    p.add_argument(
        "--batch-size", type=int, default=PREDICT_BATCH_SIZE,
        help=f"images per forward pass (default {PREDICT_BATCH_SIZE})",
    )  # fmt: skip
    p.add_argument("--img-size", type=int, nargs="+", help="input size S or H W (default: the model's)")
    p.add_argument(
        "--out",
        help="results file, one row per image (path, error, top-k indices, names, probabilities): .csv, .jsonl "
        "(metadata in OUT.meta.json) or .parquet (metadata in the schema); written in parts, see --resume",
    )
    p.add_argument(
        "--embeddings", action="store_true",
        help="with --out: add the pre-logits features (the eager model, or a file exported with an embedding output)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="with --out: go on from the parts of an interrupted run")
    p.add_argument(
        "--workers", type=int,
        help=f"with --out: decoding processes (default: CPUs - 1, at most {MAX_DEFAULT_WORKERS}); Ray: model actors",
    )  # fmt: skip
    p.add_argument(
        "--part-rows", type=int, default=PART_ROWS, help=f"rows per atomically written part (default {PART_ROWS})"
    )
    p.add_argument(
        "--decoder", choices=DECODERS, default="pil",
        help="with --out: pil (default: rows equal predict's) or torchvision (JPEGs by libjpeg-turbo, torch's resize)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--engine", choices=ENGINES, default="local",
        help="local (default) or ray: Ray Data's map_batches, one model per actor, a Parquet dataset (litevit[ray])",
    )  # fmt: skip
    p.add_argument("--ray-address", help="--engine ray: a Ray cluster address (default: a local Ray instance)")
    p.add_argument(
        "--gpus-per-worker", type=float, default=0.0, metavar="F",
        help="--engine ray: GPUs each model actor asks for (map_batches' num_gpus; 0.5: two actors a GPU); the eager "
        "model runs on CUDA",
    )  # fmt: skip
    p.set_defaults(func=_cmd_predict)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .predict import evaluate

    model = _load(args, img_size_arg(args.img_size))
    _say_route(model)
    progress = not args.no_progress and not args.json
    result = evaluate(model, args.data, batch_size=args.batch_size, workers=args.workers, progress=progress)
    if args.json:
        record = {"top1": result.top1, "top5": result.top5, "images": result.count, "skipped": result.skipped}
        print(json.dumps({**record, "loss": result.loss, "classes": result.num_classes}))
        return 0
    skipped = f", {result.skipped} unreadable skipped" if result.skipped else ""
    print(
        f"{printable(args.model)}: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}  "
        f"({result.count} images, {result.num_classes} classes{skipped})"
    )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1 / top-5 / loss on an ImageFolder (registered model or exported file)")
    _add_model_source(p)
    p.add_argument("--data", required=True, help="ImageFolder root: DIR/<class>/<image>, classes in sorted order")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE, help=f"default {EVAL_BATCH_SIZE}")
    p.add_argument(
        "--workers", type=int,
        help=f"data loading processes (default: CPUs available - 1, at most {MAX_DEFAULT_WORKERS})",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object: top1, top5, images, skipped, ...")
    p.add_argument("--img-size", type=int, nargs="+", help="input size S or H W (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)


def _cmd_info(args: argparse.Namespace) -> int:
    from .deploy.runtime import ExportedModel

    model = ExportedModel(args.file)
    print(printable(model.describe()))
    meta = model.metadata
    for name, value in vars(meta).items():
        if name not in ("selection", "class_names", "data"):
            print(f"  {name}: {printable(str(value))}")
    print(f"  data: {meta.data}")
    if meta.class_names is not None:
        shown = ", ".join(meta.class_names[:10]) + (" ..." if len(meta.class_names) > 10 else "")
        print(f"  class_names: {printable(shown)}")
    if meta.selection is not None:
        from .deploy.fastest import selection_table

        print("  chosen by --fastest:")
        for line in [*selection_table(meta.selection), meta.selection.note]:
            print(f"  {printable(line)}")  # the file's text: escaped
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print an exported file's metadata, and how --fastest chose it")
    p.add_argument("file", help="an exported file (.onnx, .xml, .ts, .pt2, .pte, .mlpackage)")
    p.set_defaults(func=_cmd_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litevit", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_list(sub)
    _add_weights(sub)
    _add_download(sub)
    add_bench(sub)
    _add_train(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_eval(sub)
    _add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, MissingExtraError) as exc:
        print(f"litevit {args.command}: error: {printable(str(exc))}", file=sys.stderr)  # may quote a file's text
        return 2


if __name__ == "__main__":
    sys.exit(main())
