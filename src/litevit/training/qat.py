"""Quantization-aware fine-tuning (``litevit train --qat``): a trained float model fine-tuned with int8 in the loop.

The route: NNCF's PyTorch quantization (``nncf.quantize`` on the torch model) inserts fake quantizers (int8
weights, int8 activations, ranges calibrated on training images) into the float model, which then trains as usual;
``openvino.convert_model`` turns each quantizer into an OpenVINO ``FakeQuantize``, so the written ``int8.xml`` is
the int8 IR OpenVINO runs with its int8 kernels. NNCF is OpenVINO's own quantizer and the post-training int8 route
litevit measured fastest for every family (``.xml``, :mod:`litevit.deploy.int8`), so the fine-tuned graph is
the graph that route deploys, with the same quantizer placement and the family's settings. PyTorch's own QAT
(``torch.ao`` / PT2E) would need its own lowering to OpenVINO and places quantizers differently.
``int8.onnx`` is the same graph for onnxruntime: the quantizers stripped to PyTorch's fake-quantize ops
(``nncf.strip``), exported as QuantizeLinear/DequantizeLinear pairs at the lowest opset from 13 that exports
(8-bit weights; on CPUs without VNNI onnxruntime's u8 x s8 kernels may saturate, where post-training export uses
7 bits). Both files are converted from the stripped model. Where NNCF leaves a quantizer in its own FakeQuantize op
(MobileViT v1: some of its quantizers), onnxruntime cannot run the graph and only ``int8.xml`` is written, with a
warning.

The run, on top of float training (:mod:`.train`):

- ``--checkpoint`` (the trained float model, or ``train FILE --qat``) is required; the model is built from it as for
  fine-tuning, at the file's resolution and preprocessing (:mod:`.inherit`).
- The run checks itself. Before calibration, the float model is scored on the validation images at the run's
  resolution (:func:`qat_baseline`); when that top-1 is far below the one the file records (:func:`far_below`: by
  more than 5 points and 3 binomial standard errors), the run stops with one line naming the resolution mismatch.
  Each epoch's record carries the float top-1, the int8 top-1 and the drop; the run ends with one line (float top-1,
  the fake-quantized graph's best int8 top-1, each written file's own top-1 as its runtime runs it, the worst drop,
  N images) and exits 4 when that drop exceeds ``--max-drop`` (default 1.0), its files kept and named as over
  budget.
- Calibration before the first step: ``nncf.quantize`` on up to
  :data:`~litevit.deploy.int8.DEFAULT_CALIBRATION_IMAGES` training images (drawn alike from every class, fixed seed,
  the model's eval preprocessing), with the family's :class:`~litevit.deploy.int8.Int8Settings` as the OpenVINO
  post-training route applies them (:func:`litevit.deploy.openvino.openvino_ir`): model type, preset, SmoothQuant
  off, and ``float_ends`` / ``float_depthwise`` as an ignored scope named on NNCF's graph of the torch model.
- A low learning rate (:data:`QAT_LR_SCALE` times the short-run rule's fine-tuning lr; 1.8e-5 at a batch of 32),
  no EMA, BatchNorm running statistics frozen from the second epoch (:data:`FREEZE_BN_AFTER`); 3 epochs by default
  on the command line (:data:`.config.QAT_EPOCHS`). With a ``--recipe``, the recipe's schedule and the options QAT
  does not support (:data:`QAT_OWNS`) are not taken; options given explicitly are.
- Validation scores the fake-quantized model, first as calibrated (before the first step: a run whose fine-tuning
  never beats it writes the calibrated graph) and after each epoch; on each new best, ``int8.xml`` (+ ``.bin``)
  and ``int8.onnx`` are written with litevit's metadata (precision int8), in place of ``best.safetensors``, as one
  set (:func:`litevit._files.replace_together`: a killed run leaves the last complete set, and the next run
  finishes a set whose writing had begun).
- Resume calibrates the same way (the quantizer layout follows from the graph and the settings), then loads the
  quantizers' ranges with the weights from ``last.pt``. DDP and the progress bar are those of float training.

Not supported with ``--qat`` (one-line errors naming the option given): distillation, the multi-scale sampler, EMA,
``--amp``, ``--layer-decay``.

NNCF compiles a C++ extension for its CPU quantizer kernels at first use (a compiler and minutes; it did not finish
within NNCF's 60 s limit on a 2-core machine); litevit runs NNCF's pure-PyTorch reference kernels instead
(:func:`use_reference_kernels`), on every device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._extras import quiet_nncf, require
from .._files import replace_together, stage
from ..deploy.builder import metadata_for
from ..deploy.int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    MIN_CALIBRATION_IMAGES,
    Int8Settings,
    deal,
    nearest_weighted,
    nncf_options,
)
from ..deploy.onnx import onnx_model, save_onnx
from ..deploy.openvino import RT_INFO, save_openvino
from ..registry import DataConfig
from .config import QAT_EPOCHS, QatOutcome, TrainConfig
from .data import DataSplit
from .inherit import FileSettings

log = logging.getLogger("litevit.training.train")

QAT_LR_SCALE = 0.5  # times the short-run rule's fine-tuning lr (recipes.short_run_rule)
FREEZE_BN_AFTER = 1  # epochs after which BatchNorm running statistics stop updating
QAT_ONNX_OPSET = 13  # the lowest opset tried: per-channel QuantizeLinear (MobileViT's attention needs 14)
INT8_XML, INT8_ONNX = "int8.xml", "int8.onnx"
WEIGHTED_OPS = ("conv1d", "conv2d", "linear", "matmul", "bmm")  # NNCF torch node types, as deploy.int8's _WEIGHTED_OV


# the learning-rate regime and schedule --qat sets, and the options it does not support: a --recipe's values for
# these are not taken with --qat (options given explicitly still are, and the unsupported ones are then refused)
QAT_OWNS = ("epochs", "lr", "lr_ref_batch", "min_lr", "warmup_lr", "warmup_epochs", "ema", "ema_decay", "multi_scale",
            "multi_scale_sizes", "distill", "layer_decay", "amp")  # fmt: skip
FAR_BELOW_POINTS, FAR_BELOW_SE = 5.0, 3.0  # "far below the file's top-1": more than max(points, SE x binomial SE)


def validate_qat(config: TrainConfig, distill: str) -> None:
    """One-line errors for a ``--qat`` run that cannot be honoured."""
    if config.max_drop < 0:
        raise ValueError(f"--max-drop is a top-1 drop in points, >= 0; got {config.max_drop:g}")
    if not config.checkpoint:
        raise ValueError("--qat fine-tunes a trained float model: pass it with --checkpoint FILE")
    unsupported = [
        ("--teacher/--distill", distill != "none"),
        ("--multi-scale", config.multi_scale),
        ("--ema", bool(config.ema)),
        ("--amp", config.amp),
        ("--layer-decay", config.layer_decay is not None),
    ]
    named = [name for name, given in unsupported if given]
    if named:
        raise ValueError(f"--qat does not support {', '.join(named)}: leave them out for quantization-aware training")


@dataclass(frozen=True)
class QatBaseline:
    """The float model a ``--qat`` run starts from, scored on the run's validation images before calibration."""

    float_top1: float
    images: int
    img_size: int

    def against(self, int8_top1: float) -> str:
        return f"float {self.float_top1:.2f}%, drop {self.float_top1 - int8_top1:+.2f} points"

    def record(self, int8_top1: float) -> dict[str, float]:
        """The per-epoch log fields: the float top-1, this epoch's int8 top-1 and the drop."""
        return {"float_top1": self.float_top1, "int8_top1": int8_top1, "drop": self.float_top1 - int8_top1}

    def outcome(self, best_int8_top1: float, max_drop: float, files: dict[str, float]) -> QatOutcome:
        return QatOutcome(self.float_top1, best_int8_top1, max_drop, self.images, self.img_size, files)


def far_below(measured: float, recorded: float, images: int) -> bool:
    """Whether ``measured`` top-1 (%) on ``images`` images is far below the ``recorded`` one: by more than
    :data:`FAR_BELOW_POINTS`, and by more than :data:`FAR_BELOW_SE` binomial standard errors at the recorded rate."""
    p = min(max(recorded / 100, 0.0), 1.0)
    se = 100 * math.sqrt(max(p * (1 - p), 0.25 / max(images, 1)) / max(images, 1))
    return recorded - measured > max(FAR_BELOW_POINTS, FAR_BELOW_SE * se)


def qat_baseline(val: dict[str, float], file: FileSettings | None, config: TrainConfig, images: int) -> QatBaseline:
    """The float model's validation top-1 here, checked against the top-1 its file records: far below it, the run
    stops before calibration with one line (the resolution or the preprocessing differs from the file's)."""
    size = int(config.img_size or 0)
    top1 = val["top1"]
    log.info("--qat: the float model scores %.2f%% top-1 on %d validation images at %d px", top1, images, size)
    if file is not None and file.top1 is not None and far_below(top1, file.top1, images):
        if file.img_size is not None and file.img_size != size:
            cause = (f"the run is at {size} px but the file was trained at {file.img_size} px: leave --img-size out "
                     f"(or pass --img-size {file.img_size})")  # fmt: skip
        else:
            cause = (f"the resolution ({size} px) and preprocessing are the file's, so these validation images are not "
                     "like those it was scored on: fine-tune it in float on them first (litevit train FILE --data "
                     "...), then run --qat from that file")  # fmt: skip
        raise ValueError(
            f"--qat: the float model {file.source} scores {top1:.2f}% here, far below the {file.top1:.2f}% it "
            f"records; {cause}"
        )
    return QatBaseline(top1, images, size)


def qat_lr(global_batch: int) -> float:
    """The default QAT learning rate: :data:`QAT_LR_SCALE` times the short-run rule's fine-tuning lr."""
    from .recipes import BASE_BATCH, FINE_TUNE_LR

    return FINE_TUNE_LR * math.sqrt(global_batch / BASE_BATCH) * QAT_LR_SCALE


def qat_config(config: TrainConfig, world: int) -> TrainConfig:
    """``config`` with the QAT defaults where left open: the low lr, :data:`.config.QAT_EPOCHS` and no EMA."""
    lr = config.lr if config.lr is not None or config.lr_ref_batch is not None else qat_lr(config.batch_size * world)
    return dataclasses.replace(config, lr=lr, ema=False, epochs=config.epochs or QAT_EPOCHS)


def calibration_images(
    split: DataSplit, data: DataConfig, img_size: int, count: int = DEFAULT_CALIBRATION_IMAGES
) -> torch.Tensor:
    """Up to ``count`` training images, drawn alike from every class with a fixed seed, preprocessed for eval:
    ``(N, C, H, W)``."""
    from ..data import eval_transform, load_image

    by_class: dict[int, list[str]] = {}
    for index in split.train_indices:
        path, label = split.train_samples[index]
        by_class.setdefault(label, []).append(path)
    total = sum(len(paths) for paths in by_class.values())
    if total < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"--qat calibrates on training images: found {total}, need at least {MIN_CALIBRATION_IMAGES}")
    dealt = deal([paths for _, paths in sorted(by_class.items())])
    transform = eval_transform(data, img_size)
    return torch.stack([transform(load_image(path)) for path in dealt[:count]])


def use_reference_kernels() -> None:
    """NNCF's pure-PyTorch quantizer kernels in place of its C++ extension (compiled at first use otherwise)."""
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

    reference = ReferenceQuantize(ReferenceBackendType.TORCH)

    class Kernels:
        Quantize_forward = staticmethod(reference.forward)
        Quantize_backward = staticmethod(reference.backward)

    namespaces = [extensions.QuantizedFunctionsCPU]
    if torch.cuda.is_available():  # else a stub that raises on any attribute
        namespaces.append(extensions.QuantizedFunctionsCUDA)
    for namespace in namespaces:
        if namespace._loaded_namespace is None:
            namespace._loaded_namespace = Kernels


def float_kept_nodes(model: nn.Module, example: torch.Tensor, settings: Int8Settings) -> list[str]:
    """Names of the nodes of NNCF's graph of ``model`` that ``settings`` keeps float: the first weighted op on every
    path from the input and the last on every path to the output (``float_ends``), and convolutions with groups > 1
    (``float_depthwise``, OpenVINO's GroupConvolution)."""
    if not (settings.float_ends or settings.float_depthwise):
        return []
    nncf = require("nncf", "quantization-aware training")
    graph = nncf.build_graph(model, example_input=example)
    kept: set[str] = set()
    if settings.float_depthwise:
        modules = dict(model.named_modules())
        for node in graph.get_all_nodes():
            if node.node_type in ("conv1d", "conv2d"):
                module = modules.get(".".join(node.node_name.split("/")[:-2]))  # "stem/0/conv/conv2d/0" -> stem.0.conv
                if getattr(module, "groups", 1) > 1 or "Depthwise" in node.metatype.__name__:
                    kept.add(node.node_name)
    if settings.float_ends:

        def walk(start: list[Any], step: Any) -> set[str]:
            return nearest_weighted(start, step, lambda n: n.node_name, lambda n: n.node_type in WEIGHTED_OPS)

        kept |= walk(graph.get_input_nodes(), graph.get_next_nodes)
        kept |= walk(graph.get_output_nodes(), graph.get_previous_nodes)
    return sorted(kept)


def quantize_for_training(model: nn.Module, images: torch.Tensor, settings: Int8Settings, batch_size: int) -> nn.Module:
    """``model`` with NNCF fake quantizers calibrated on ``images`` (in batches of ``batch_size``) by ``settings``,
    as :func:`litevit.deploy.openvino.openvino_ir` applies them to the OpenVINO graph."""
    nncf = require("nncf", "quantization-aware training")
    use_reference_kernels()
    device = next(model.parameters()).device
    batches = [images[i : i + batch_size].to(device) for i in range(0, len(images), batch_size)]
    was_training = model.training
    model.eval()
    ignored = nncf.IgnoredScope(names=float_kept_nodes(model, batches[0], settings), validate=False)
    with quiet_nncf():
        quantized = nncf.quantize(
            model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=ignored,
            **nncf_options(nncf, settings),
        )  # fmt: skip
    log.info("--qat: calibrated on %d training images, %d layers kept float", len(images), len(ignored.names))
    return quantized.train(was_training)


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers in eval mode: their running statistics stop updating (weights and biases still train)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def is_quantizer_parameter(name: str) -> bool:
    return "__nncf_hooks" in name


def qat_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as :func:`.optim.param_groups`, and the quantizers' ranges without weight decay."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            plain = param.ndim <= 1 or name in skip or is_quantizer_parameter(name)
            (no_decay if plain else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_int8(model: nn.Module, out: Path, classes: list[str], img_size: int) -> list[Path]:
    """The fake-quantized ``model`` as ``out/int8.xml`` (+ ``.bin``, OpenVINO) and ``out/int8.onnx`` (onnxruntime
    QDQ), with litevit's metadata, replaced as one set."""
    ov = require("openvino", "writing the int8 OpenVINO IR")
    nncf = require("nncf", "quantization-aware training")
    cpu = copy.deepcopy(model).cpu().eval()
    in_chans = int(getattr(getattr(model, "config", None), "in_chans", 3))
    example = torch.randn(2, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    size = (img_size, img_size)
    names = tuple(classes)
    base = dataclasses.replace(
        metadata_for(cpu, size, "dynamic", "openvino"), num_classes=len(names), class_names=names, precision="int8"
    )
    out.mkdir(parents=True, exist_ok=True)
    # PyTorch's fake-quantize ops in place of NNCF's hooks: OpenVINO 2026.4 fails to convert EfficientViT's hooked
    # graph (its SDPA reshape fusion), not the stripped one; both routes convert the same graph
    stripped = nncf.strip(cpu, do_copy=False, strip_format=nncf.StripFormat.NATIVE, example_input=example)
    tmp = stage(out, "int8")
    with torch.no_grad(), _quiet_tracing():
        ir = ov.convert_model(stripped, example_input=example, input=[ov.PartialShape([-1, in_chans, *size])])
    ir.set_rt_info(dataclasses.replace(base, inference_precision="f32").to_json(), RT_INFO)
    save_openvino(ir, tmp / INT8_XML)
    with _quiet_tracing():
        data, opset = onnx_model(stripped, example, "dynamic", None, None, min_opset=QAT_ONNX_OPSET)
    names = [INT8_ONNX, Path(INT8_XML).with_suffix(".bin").name, INT8_XML]
    foreign = _foreign_ops(data)
    if foreign:
        log.warning("--qat: %s not written: NNCF left %s in the stripped graph, which onnxruntime cannot run",
                    INT8_ONNX, ", ".join(foreign))  # fmt: skip
        names.remove(INT8_ONNX)
    else:
        save_onnx(data, tmp / INT8_ONNX, dataclasses.replace(base, format="onnx", opset=opset, weight_bits=8))
    # the pair as one set: a killed run leaves the last complete pair, or a complete new one (_files.recover)
    return replace_together(tmp, names, remove=[] if INT8_ONNX in names else [INT8_ONNX])


def _foreign_ops(data: bytes) -> list[str]:
    """Operators of an ONNX graph outside the standard domains (NNCF's own FakeQuantize, for one)."""
    import onnx

    graph = onnx.load_from_string(data).graph
    return sorted({f"{n.domain}:{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings of NNCF's hooks and of the models' shape checks
        yield
