"""The checks of an exported file against the fused PyTorch model, each with its one name.

- ``parity`` (:func:`compare`): a file that computes in fp32 gives fp32 PyTorch's outputs within :data:`RTOL`.
- ``int8`` (:func:`int8_check`): a file that does not compute in fp32 (int8, and bf16 float parts) still computes
  the model, on images held out of calibration (below).
- ``pte-reference`` (:func:`litevit.deploy.executorch.reference_check`): an int8 ``.pte`` stays as close to the PT2E
  module it was lowered from as that module is to fp32.

``litevit export --check`` runs those that fit the file and prints which ran; each result names its check.

An int8 graph is not expected to match fp32 closely, so its check asks instead whether it still computes the model:
on calibration-folder images held out of calibration, its output must be finite and vary with the input, and where
the fp32 logits vary across those images by at least :data:`INT8_MIN_SIGNAL` of their size (enough for int8 to
resolve), its top-1 must agree with fp32's on at least :data:`INT8_MIN_AGREEMENT` of the images and its logits must
correlate with fp32's, image to image, by at least :data:`INT8_MIN_CORRELATION`. Both bounds sit far below what a
working graph reaches and far above what a dead one does: the tests' models (every family, both routes, 64 px,
tests/deploy/test_int8.py) reached agreement 0.84-1.0 and correlation 0.86-1.0 on 32 images, while a constant,
zero, shuffled or negated output has correlation near 0 or below and agreement near chance, and one class winning
everywhere has agreement near that class's share. Untrained weights often leave the logits almost
input-independent (random MobileViTs at 64 px: 0.01-0.6 % of their size); int8 cannot resolve that, so agreement
and correlation are then reported and not judged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ExportError

RTOL = 1e-4  # parity: max |exported - pytorch| <= RTOL * max |pytorch|
INT8_MIN_AGREEMENT = 0.5  # share of held-out images whose int8 top-1 equals fp32's
INT8_MIN_CORRELATION = 0.5  # correlation of int8 with fp32 logits, each centred on its mean over the images
INT8_MIN_SIGNAL = 0.05  # fp32 logits' variation across the images / their RMS, below which int8 is not judged
_CONSTANT = 1e-6  # an output varying less than this (relative to its RMS) across the images is constant

# the name of each check, as results, errors, the CLI and the docs give it
PARITY = "parity"  # compare(): a file that computes in fp32 against fp32 PyTorch, within RTOL
INT8 = "int8"  # int8_check(): an int8 or bf16 file still computes the model
PTE_REFERENCE = "pte-reference"  # executorch.reference_check(): an int8 .pte against its PT2E module


@dataclass(frozen=True)
class CheckResult:
    """An exported file against a reference on one batch of images: the result of the check ``name``."""

    name: str  # PARITY, INT8 or PTE_REFERENCE
    batch: int
    max_abs_diff: float
    max_rel_diff: float  # max |exported - pytorch| / max |pytorch|
    passed: bool
    agreement: float | None = None  # int8: share of images whose top-1 class equals the fp32 model's
    correlation: float | None = None  # int8: of the logits centred over the images, with fp32's
    signal: float | None = None  # int8: how much fp32's logits vary across the images, relative to their RMS
    judged: bool | None = None  # int8: whether agreement and correlation were held to their bounds
    failures: tuple[str, ...] = ()  # why it did not pass


def __getattr__(name: str) -> Any:
    if name == "ParityCheck":
        warnings.warn("litevit.deploy.parity.ParityCheck is renamed CheckResult", DeprecationWarning, stacklevel=2)
        return CheckResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compare(exported: Any, reference: Any, batch: int, rtol: float = RTOL) -> CheckResult:
    """The parity check of one output, or the worst of several (a features model's maps)."""
    if isinstance(reference, (list, tuple)):
        if not isinstance(exported, (list, tuple)) or len(exported) != len(reference):
            raise ExportError(f"exported model does not return the {len(reference)} outputs of the PyTorch model")
        checks = [compare(e, r, batch, rtol) for e, r in zip(exported, reference, strict=True)]
        return max(checks, key=lambda check: (not check.passed, check.max_rel_diff))
    _same_shape(exported, reference)
    diff = (exported.float() - reference.float()).abs().max().item()
    scale = max(reference.abs().max().item(), 1e-12)
    passed = diff <= rtol * scale
    failures = () if passed else (f"relative difference {diff / scale:.3e} > {rtol:g}",)
    return CheckResult(PARITY, batch, diff, diff / scale, passed, failures=failures)


def _same_shape(exported: torch.Tensor, reference: torch.Tensor) -> None:
    if exported.shape != reference.shape:
        raise ExportError(f"exported model returns shape {tuple(exported.shape)}, PyTorch {tuple(reference.shape)}")


def flat_outputs(output: Any) -> torch.Tensor:
    """One ``(B, K)`` float64 matrix of everything the model returns per image (a features model: all its maps)."""
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return torch.cat([o.double().flatten(1) for o in outputs], dim=1)


def int8_check(exported: Any, reference: Any) -> CheckResult:
    """The int8 check: the int8 (or bf16) output on a batch of held-out images against fp32 PyTorch's (bounds: the
    module docstring).

    Agreement is measured on classifiers only (one ``(B, classes)`` output); a features model is judged by the
    correlation of its maps.
    """
    if isinstance(reference, (list, tuple)):
        if not isinstance(exported, (list, tuple)) or len(exported) != len(reference):
            raise ExportError(f"exported model does not return the {len(reference)} outputs of the PyTorch model")
        for e, r in zip(exported, reference, strict=True):
            _same_shape(e, r)
    else:
        _same_shape(exported, reference)
    out, ref = flat_outputs(exported), flat_outputs(reference)
    batch = ref.shape[0]
    diff = (out - ref).abs().max().item() if out.isfinite().all() else float("inf")
    scale = max(ref.abs().max().item(), 1e-12)
    ref_centred, out_centred = ref - ref.mean(0), out - out.mean(0)
    signal = (ref_centred.norm() / ref.norm().clamp_min(1e-30)).item()
    denominator = (out_centred.norm() * ref_centred.norm()).item()
    correlation = (out_centred * ref_centred).sum().item() / denominator if denominator > 0 else 0.0
    classifier = not isinstance(reference, (list, tuple)) and reference.ndim == 2
    agreement = float((exported.argmax(-1) == reference.argmax(-1)).double().mean()) if classifier else None
    judged = signal >= INT8_MIN_SIGNAL
    failures = []
    if not out.isfinite().all():
        failures.append(f"{(~out.isfinite()).sum().item()} non-finite output value(s)")
    elif out_centred.norm().item() <= _CONSTANT * out.norm().item() and signal > _CONSTANT:
        failures.append(
            f"the same output for all {batch} images (fp32's varies by {signal:.2%} of its size): "
            "the int8 graph ignores its input"
        )
    elif judged:
        if agreement is not None and agreement < INT8_MIN_AGREEMENT:
            failures.append(f"top-1 agreement with fp32 {agreement:.1%} < {INT8_MIN_AGREEMENT:.0%}")
        if correlation < INT8_MIN_CORRELATION:
            failures.append(f"correlation with fp32 logits {correlation:.3f} < {INT8_MIN_CORRELATION:g}")
    return CheckResult(
        INT8, batch, diff, diff / scale, not failures, agreement, correlation, signal, judged, tuple(failures)
    )  # fmt: skip
