"""``litevit.export``: from a model to a checked file, in five steps, each a function of this module.

1. :func:`_validated`: the options, each refused in one line where it does not apply;
2. :func:`_route`: the one file to write (:class:`Target`: path, format, precision, batch), or the candidates of
   ``--fastest`` (:class:`.fastest.Plan`); :func:`_refuse` holds both to the same rules;
3. :func:`_build`: :func:`.builder.build_file` writes the one file; :func:`.fastest.find_fastest` builds every
   candidate with it, measures and times them, and writes the pick with how it was chosen;
4. :func:`_check` (``check=True``): the checks that fit the written file, each by its name (:mod:`.parity`):
   ``parity`` for a file that computes in fp32, ``int8`` for one that does not (int8, bf16), and ``pte-reference``
   besides for an int8 ``.pte``;
5. :func:`_result`: the :class:`ExportResult`, with the metadata the written file carries.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..layers import to_2tuple
from ..models.features import FeatureExtractor
from ..weights.loading import create_model, model_info
from .builder import (
    CHECK_BATCH,
    EMBEDDING_FORMATS,
    INT8_FORMATS,
    INT8_MIN_OPSET,
    build_file,
    check_batch,
    data_config,
    example_batch,
    image_size,
    in_chans,
)
from .coreml import COREML_PREDICTION_SKIP, coreml_available
from .errors import ExportError
from .executorch import Delegation, reference_check
from .fastest import DEFAULT_MAX_DROP, FastestReport, Plan, find_fastest, plan
from .fuse import fuse
from .int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    INT8_CHECK_IMAGES,
    MIN_CALIBRATION_IMAGES,
    Int8Settings,
    calibration_files,
    load_calibration,
)
from .metadata import FIXED_BATCH_FORMATS, ExportMetadata, format_from
from .parity import INT8, INT8_MIN_SIGNAL, PARITY, PTE_REFERENCE, CheckResult, compare, int8_check
from .precision import check_precision, float_precision, is_int8
from .routes import Route
from .runtime import ExportedModel, in_fixed_batches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote, and the checks it ran on the file (each None when it did not run)."""

    path: Path
    metadata: ExportMetadata
    parity_check: CheckResult | None = None  # a file computing in fp32 against fp32 PyTorch (.parity.compare)
    int8_check: CheckResult | None = None  # an int8 or bf16 file against fp32 PyTorch (.parity.int8_check)
    pte_reference_check: CheckResult | None = None  # int8 .pte against its PT2E module (.executorch.reference_check)
    delegation: Delegation | None = None  # ExecuTorch: the share of operators XNNPACK runs
    fastest: FastestReport | None = None  # export(fastest=True): every candidate tried, timed, and the pick

    @property
    def checks(self) -> tuple[CheckResult, ...]:
        """The checks that ran, each naming itself (``CheckResult.name``)."""
        return tuple(c for c in (self.parity_check, self.int8_check, self.pte_reference_check) if c is not None)

    @property
    def check(self) -> CheckResult | None:
        """Deprecated: ``parity_check`` or ``int8_check``, whichever ran."""
        warnings.warn("ExportResult.check is now parity_check or int8_check", DeprecationWarning, stacklevel=2)
        return self.parity_check or self.int8_check

    @property
    def reference_check(self) -> CheckResult | None:
        """Deprecated name of ``pte_reference_check``."""
        warnings.warn("ExportResult.reference_check is renamed pte_reference_check", DeprecationWarning, stacklevel=2)
        return self.pte_reference_check


@dataclass(frozen=True)
class Options:
    """The options of one :func:`export` (its parameters), as :func:`_validated` leaves them."""

    path: Path
    format: str | None
    precision: str | None  # None: fp32 for one file, every precision for --fastest
    batch: str | int
    img_size: tuple[int, int] | None
    opset: int | None
    check: bool
    calibration: str | os.PathLike | None
    calibration_images: int
    int8_settings: Int8Settings | None
    fastest: bool
    max_drop: float
    threads: int | None
    dynamic_batch: bool
    seconds: float
    time_cap: float | None
    embeddings: bool = False


@dataclass(frozen=True)
class Target:
    """The one file an export without ``fastest`` writes."""

    path: Path
    format: str
    precision: str
    batch: str | int


@dataclass(frozen=True)
class _Written:
    """A written file and what its checks need."""

    path: Path
    format: str
    precision: str  # what the file computes in (--fastest: its pick's)
    batch: str | int
    images: torch.Tensor  # what the checks run the file on
    held_out: bool  # whether ``images`` are calibration-folder images held out of calibration (else random)
    reference: torch.Tensor | None  # fp32 PyTorch's outputs on ``images`` (None without check=True)
    metadata: ExportMetadata
    delegation: Delegation | None = None
    pte_reference: nn.Module | None = None  # int8 .pte: the PT2E module it was lowered from
    fastest: FastestReport | None = None


def export(
    model: nn.Module | str,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    batch: str | int = "dynamic",
    img_size: int | tuple[int, int] | None = None,
    opset: int | None = None,
    check: bool = False,
    int8: bool = False,
    calibration: str | os.PathLike | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    int8_settings: Int8Settings | None = None,
    recipe: Int8Settings | None = None,
    precision: str | None = None,
    fastest: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
    threads: int | None = None,
    dynamic_batch: bool = False,
    seconds: float = 2.0,
    time_cap: float | None = None,
    progress: Callable[[str], None] | None = None,
    embeddings: bool = False,
) -> ExportResult:
    """Export the fused eval form of ``model`` (a litevit model, or a registered name for random weights).

    ``format``: ``"onnx"``, ``"torchscript"``, ``"pt2"``, ``"openvino"``, ``"executorch"`` or ``"coreml"`` (default:
    from the suffix of ``path``: ``.onnx``, ``.ts``, ``.pt2``, ``.xml``, ``.pte``, ``.mlpackage``). ``batch``:
    ``"dynamic"`` or a fixed size. ``img_size``: the input size (default: the model's; another size rebuilds the
    model and resamples its resolution-dependent weights). ``opset``: ONNX opset (default: the lowest that works).

    ``check``: run the saved file and raise :class:`ExportError` when a check fails; ``result.checks`` says which
    ran (their names: :mod:`.parity`). A file that computes in fp32 gets the ``parity`` check: on a batch size other
    than the exported one, within ``RTOL`` relative of PyTorch. An int8 or bf16 file gets the ``int8`` check
    (:func:`.parity.int8_check`): on up to 32 images of the calibration folder held out of calibration (at least 8;
    random images for a bf16 file exported without ``fastest``), a non-finite output, an output that does not
    change with the image, and, where fp32's logits vary across the images by at least 5 % of their size, top-1
    agreement below 50 % or a correlation of the logits with fp32's below 0.5 fail it. An int8 ``.pte`` also gets
    the ``pte-reference`` check (:func:`.executorch.reference_check`): against the PT2E module it was lowered from.

    ``int8``: static post-training int8 (:mod:`litevit.deploy.int8`), ONNX QDQ for onnxruntime, OpenVINO IR via NNCF
    or an ExecuTorch ``.pte`` through PT2E with XNNPACK's quantizer, calibrated on up to ``calibration_images``
    images from the folder ``calibration``, drawn alike from its sub-folders and preprocessed with the model's data
    config, by ``int8_settings`` (default: the family's, :data:`.int8.INT8_SETTINGS`; ``recipe`` is its deprecated
    former name). ``path`` without a suffix gets ``.xml``, the faster int8 route for every family measured.

    ``precision``: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"int8-bf16"`` (:mod:`.precision`; ``"int8"`` is the same
    as ``int8=True``); bf16 and int8-bf16 files are OpenVINO IRs whose float parts run in bf16. OpenVINO files record
    the inference precision their float parts run with (``metadata.inference_precision``), which litevit's runner
    compiles them with.

    ``fastest``: build every candidate route that the options allow and this machine runs (:func:`.fastest.plan`:
    the suffix of ``path``, ``format`` and ``precision`` restrict them), measure each on images of ``calibration``
    held out of calibration (:mod:`.accuracy`; without images only files exact to fp32 are eligible), time them
    here at ``batch`` (1 for ``"dynamic"``) on ``threads`` threads (default 1), interleaved, ``seconds`` per pass
    until the fastest eligible file is separated from the next at 95 % or ``time_cap`` is spent, and write the
    pick as ``path`` (its suffix added when ``path`` has none) at the static batch it was timed at
    (``dynamic_batch``: a dynamic batch axis), with how it was chosen in its metadata (``metadata.selection``).
    ``max_drop``: the largest top-1 drop accepted, points, at 95 % confidence. ``check``: the pick's checks, on the
    same held-out images. ``result.fastest`` holds what was tried; ``progress`` gets a line per step.

    ``embeddings``: the graph gets a second output, ``embedding``, the pre-logits features
    (:mod:`.embeddings`), which ``predict --embeddings`` writes (ONNX and OpenVINO files; not with ``fastest``). Its
    checks cover both outputs.

    The model may be passed as :func:`litevit.create_model` returns it or already fused: fusing is idempotent.
    """
    raw = Options(
        path=Path(path), format=format, precision=precision, batch=batch,
        img_size=None if img_size is None else to_2tuple(img_size), opset=opset, check=check, calibration=calibration,
        calibration_images=calibration_images, int8_settings=int8_settings, fastest=fastest, max_drop=max_drop,
        threads=threads, dynamic_batch=dynamic_batch, seconds=seconds, time_cap=time_cap, embeddings=embeddings,
    )  # fmt: skip
    options = _validated(raw, int8, recipe)
    route = _route(options)
    written = _build(_sized(model, options.img_size), route, options, progress)
    checks = _check(written) if options.check else {}
    return _result(written, checks)


def _validated(options: Options, int8: bool, recipe: Int8Settings | None) -> Options:
    """``options`` refused in one line where they contradict each other or do not apply; ``int8=True`` read as
    ``precision="int8"``, ``recipe`` as ``int8_settings``, the batch parsed, ``--fastest``'s threads defaulted."""
    precision = options.precision
    if precision is not None:
        check_precision(precision)
        if int8 and not is_int8(precision):
            raise ValueError(f"int8=True contradicts precision={precision!r}")
    elif int8:
        precision = "int8"
    settings = options.int8_settings
    if recipe is not None:
        warnings.warn("export(recipe=...) is now export(int8_settings=...)", DeprecationWarning, stacklevel=3)
        settings = settings or recipe
    threads = options.threads
    if not options.fastest and (threads is not None or options.dynamic_batch):
        raise ValueError("threads and dynamic_batch apply to --fastest (another export takes --batch dynamic)")
    if options.fastest and threads is None:
        threads = 1
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if options.max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0 top-1 points, got {options.max_drop:g}")
    if options.embeddings and options.fastest:
        raise ValueError("--embeddings applies to one file: export the --fastest pick's route with --embeddings")
    if options.calibration is not None and not isinstance(options.calibration, (str, os.PathLike)):
        raise ValueError(f"calibration is a folder of images, not {type(options.calibration).__name__}")
    if options.calibration_images < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"--calibration-images must be at least {MIN_CALIBRATION_IMAGES}, got {options.calibration_images}"
        )
    return dataclasses.replace(
        options, precision=precision, int8_settings=settings, threads=threads, batch=_parsed_batch(options.batch)
    )


def _parsed_batch(batch: str | int) -> str | int:
    if batch == "dynamic":
        return batch
    try:
        value = int(batch)
    except (TypeError, ValueError):
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if value < 1:
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def _route(options: Options) -> Target | Plan:
    """The file to write, or with ``fastest`` the candidates to choose among (:func:`.fastest.plan`)."""
    if options.fastest:
        the_plan = plan(options.path, options.format, options.precision, options.calibration)
        _refuse(the_plan.routes, options)
        return the_plan
    path, precision = options.path, options.precision or "fp32"
    if is_int8(precision) and options.format is None and not path.suffix:
        # the int8 route measured faster for every family (benchmarks/accuracy/int8_settings.md, make bench):
        # OpenVINO + NNCF
        path = path.with_suffix(".xml")
    format = format_from(path, options.format)
    batch = 1 if format in FIXED_BATCH_FORMATS and options.batch == "dynamic" else options.batch
    target = Target(path, format, precision, batch)
    _refuse([target], options)
    return target


def _refuse(files: Sequence[Target | Route], options: Options) -> None:
    """The rules every file an export may write is held to, one line each: the one file, or each candidate."""
    formats = sorted({f.format for f in files})
    if options.opset is not None and "onnx" not in formats:
        raise ValueError(f"opset applies to ONNX files, and these options write {' or '.join(formats)}")
    for f in files:
        if options.embeddings and f.format not in EMBEDDING_FORMATS:
            raise ValueError(f"--embeddings adds a second output to .onnx and .xml files, not to {f.format}")
        if float_precision(f.precision) == "bf16" and f.format != "openvino":
            raise ValueError(f"precision {f.precision!r} runs in OpenVINO only: write .xml, not {f.format}")
        if not is_int8(f.precision):
            continue
        if f.format not in INT8_FORMATS:
            raise ValueError(
                "int8 export writes .onnx (onnxruntime QDQ), .pte (ExecuTorch XNNPACK) or .xml (OpenVINO), "
                f"not {f.format}"
            )
        if options.calibration is None:
            raise ValueError("int8 export needs calibration images: --calibration DIR (a folder of images)")
        if f.format == "onnx" and options.opset is not None and options.opset < INT8_MIN_OPSET:
            raise ValueError(f"int8 ONNX (per-channel QDQ) needs opset >= {INT8_MIN_OPSET}, got {options.opset}")


def _sized(model: nn.Module | str, img_size: tuple[int, int] | None) -> nn.Module:
    """The model to export: built when named, rebuilt for ``img_size`` when that differs from its own."""
    if isinstance(model, str):
        model = create_model(model)
    own = getattr(getattr(model, "config", None), "img_size", None)
    if img_size is not None and own is not None and img_size != to_2tuple(own):
        model = _resized(model, img_size)
    return model


def _resized(model: nn.Module, img_size: tuple[int, int]) -> nn.Module:
    """``model`` rebuilt for another input size, its weights resampled by the model's ``adapt_checkpoint``."""
    name = getattr(model, "variant_name", None)
    config = getattr(model, "config", None)
    if name is None or config is None:
        raise ValueError(
            "img_size differs from the model's and the model was not built by litevit.create_model; "
            "build it at the wanted size instead"
        )
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "img_size"}
    if isinstance(model, FeatureExtractor):  # a pruned classifier's state: rebuilt as the same features model
        state, indices = model.state_dict(), model.out_indices
        resized = create_model(
            name, img_size=img_size, checkpoint=state, features_only=True, out_indices=indices, **fields
        )
    else:
        resized = create_model(name, img_size=img_size, checkpoint=model.state_dict(), **fields)
    resized.model_info = dataclasses.replace(model_info(model), img_size=img_size)
    return resized


def _build(
    model: nn.Module, route: Target | Plan, options: Options, progress: Callable[[str], None] | None
) -> _Written:
    """The file written for ``route``, with fp32's outputs on the images its checks run on."""
    if isinstance(route, Plan):
        return _build_fastest(model, route, options, progress)
    size = options.img_size or image_size(model)
    files, held_out = [], []
    if is_int8(route.precision):
        held = INT8_CHECK_IMAGES if options.check else 0
        files, held_out = calibration_files(options.calibration, options.calibration_images, held)
    built = build_file(
        model, route.path, route.format, route.precision, batch=route.batch, img_size=size, opset=options.opset,
        calibration=files, int8_settings=options.int8_settings, embeddings=options.embeddings,
    )  # fmt: skip
    if held_out:  # images the int8 graph was not calibrated on
        arrays = load_calibration(held_out, data_config(model), size, options.calibration)
        images = torch.from_numpy(np.concatenate(arrays))
    else:
        images = example_batch(check_batch(route.batch), size, in_chans(model), seed=1)
    return _Written(
        built.path, route.format, route.precision, route.batch, images, bool(held_out),
        _fp32(built.fused, images) if options.check else None, built.metadata, built.delegation, built.pte_reference,
    )  # fmt: skip


def _build_fastest(
    model: nn.Module, the_plan: Plan, options: Options, progress: Callable[[str], None] | None
) -> _Written:
    """``--fastest``'s pick, written by :func:`.fastest.find_fastest`."""
    batch = 1 if options.batch == "dynamic" else int(options.batch)
    path, report, chosen, held_x, reference = find_fastest(
        model, options.path, the_plan, batch=batch, dynamic_batch=options.dynamic_batch,
        calibration=options.calibration, calibration_images=options.calibration_images, max_drop=options.max_drop,
        threads=options.threads, seconds=options.seconds, time_cap=options.time_cap, opset=options.opset,
        int8_settings=options.int8_settings, progress=progress,
    )  # fmt: skip
    if held_x is None:  # no folder: random images
        held_x = example_batch(CHECK_BATCH, image_size(model), in_chans(model), seed=1)
        reference = _fp32(fuse(model).float().eval(), held_x) if options.check else None
    route = chosen.route
    file_batch = "dynamic" if options.dynamic_batch else batch
    metadata = ExportedModel(path).metadata  # with how it was chosen
    return _Written(
        path, route.format, route.precision, file_batch, held_x, options.calibration is not None, reference,
        metadata, fastest=report,
    )  # fmt: skip


def _fp32(fused: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return fused(images)


def _check(written: _Written) -> dict[str, CheckResult]:
    """The checks that fit the written file, by name (:mod:`.parity`); :class:`ExportError` naming the check that
    failed."""
    path = written.path
    if written.format == "coreml" and not coreml_available():
        log.warning("%s: converted; its parity check skipped: %s", path, COREML_PREDICTION_SKIP)
        return {}
    exported = ExportedModel(path)
    if exported.has_embedding:  # both outputs checked as one: logits and features side by side
        output, reference = torch.cat(exported.embed(written.images), 1), torch.cat(written.reference, 1)
        written = dataclasses.replace(written, reference=reference)
    else:
        output = exported(written.images)
    checks = {}
    if written.pte_reference is not None:  # the .pte against the PT2E module it was lowered from: what XNNPACK keeps
        with torch.no_grad():
            expected = in_fixed_batches(written.pte_reference, written.images, int(written.batch), "PT2E reference")
        checks[PTE_REFERENCE] = reference_check(output, expected, written.reference)
    if written.precision == "fp32":
        checks[PARITY] = compare(output, written.reference, len(written.images))
    else:
        checks[INT8] = int8_check(output, written.reference)
    images = f"{len(written.images)} {'images held out of calibration' if written.held_out else 'random images'}"
    for result in checks.values():
        if not result.passed:
            raise ExportError(_failure(path, result, images))
    if (int8 := checks.get(INT8)) is not None and not int8.judged:
        agreement = "" if int8.agreement is None else f"top-1 agreement {int8.agreement:.1%}, "
        log.warning(
            "%s: int8 check: accuracy not judged: fp32's logits vary by only %.2f%% of their size across the %s "
            "(< %g%%; untrained weights, or images from outside the model's domain); %scorrelation %.3f",
            path, 100 * int8.signal, images, 100 * INT8_MIN_SIGNAL, agreement, int8.correlation,
        )  # fmt: skip
    return checks


def _failure(path: Path, result: CheckResult, images: str) -> str:
    """The one line of a failed check."""
    if result.name == PARITY:
        return (
            f"{path}: the parity check failed: the file differs from PyTorch at batch {result.batch}: max |diff| "
            f"{result.max_abs_diff:.3e}, {result.failures[0]}"
        )
    if result.name == PTE_REFERENCE:
        return (
            f"{path}: the pte-reference check failed: the .pte differs from its PT2E int8 reference on {images} by "
            f"more than quantization changed the reference: {result.failures[0]}"
        )
    return f"{path}: the int8 check failed: the file does not compute the model on {images}: " + "; ".join(
        result.failures
    )


def _result(written: _Written, checks: dict[str, CheckResult]) -> ExportResult:
    return ExportResult(
        written.path, written.metadata, checks.get(PARITY), checks.get(INT8), checks.get(PTE_REFERENCE),
        written.delegation, written.fastest,
    )  # fmt: skip


def quantize(
    model: nn.Module | str,
    path: str | os.PathLike,
    calibration: str | os.PathLike,
    *,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    int8_settings: Int8Settings | None = None,
    batch: str | int = "dynamic",
    img_size: int | tuple[int, int] | None = None,
    check: bool = True,
) -> ExportResult:
    """Static post-training int8 of ``model`` into ``path``: ``.xml`` (OpenVINO, NNCF) or ``.onnx`` (onnxruntime QDQ).

    The same as ``export(model, path, int8=True, calibration=...)``; ``path`` without a suffix gets ``.xml``, the
    faster int8 route for every family measured (README). ``check`` (default on) runs the int8 check on up to 32 of
    the folder's images held out of calibration and raises :class:`ExportError` when the int8 file does not compute
    the model on them (:func:`export`); ``result.int8_check`` carries the top-1 agreement and the correlation of the
    logits with fp32's.
    """
    return export(
        model, path, batch=batch, img_size=img_size, check=check, int8=True, calibration=calibration,
        calibration_images=calibration_images, int8_settings=int8_settings,
    )  # fmt: skip
