"""Accuracy measured at export time on the user's own images, and the confidence bounds that decide with it.

``--calibration DIR`` is split once (:func:`split_folder`: fixed seed, stratified by sub-folder) into calibration
images and held-out images that never calibrate anything. Every candidate file, the float ones included, runs on
the held-out images (:func:`measure`): its top-1 agreement with the fp32 PyTorch model, whether it is *exact* (its
logits within :data:`.parity.RTOL` of fp32's, relative to their largest magnitude), and, where the folder's classes
are the model's, fp32's and its own top-1.

The gate (:func:`judge`): an exact candidate is always within budget. Another is within ``--max-drop D`` only when
the one-sided 95 % Clopper-Pearson upper bound of its loss rate is at most D points: labelled, the images fp32 gets
right and the candidate gets wrong (the drop can be no larger); unlabelled, the images where its top-1 differs from
fp32's. With k = 0 the bound is 1 - 0.05^(1/N) (about 3/N): N held-out images cannot resolve D below that, and
then only exact candidates are eligible (:func:`resolvable`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import imagenet_synsets
from .int8 import MIN_CALIBRATION_IMAGES, MIN_CHECK_IMAGES, CalibrationError, image_groups
from .parity import RTOL, int8_check

CONFIDENCE = 0.95
SPLIT_SEED = 0
_WNID = re.compile(r"n\d{8}")


def split_folder(
    folder: str | os.PathLike, calibration_images: int, seed: int = SPLIT_SEED
) -> tuple[list[Path], list[Path]]:
    """The images under ``folder`` split into (calibration, held-out), stratified by sub-folder with ``seed``.

    Each sub-folder's shuffled files go half to held-out (the odd one to calibration), so both halves hold every
    class in its share; calibration keeps at most ``calibration_images``, dealt from the sub-folders in turn (the
    rest calibrates nothing and is not measured). The two never overlap.
    """
    groups = image_groups(folder)
    total = sum(len(files) for files in groups.values())
    need = MIN_CALIBRATION_IMAGES + MIN_CHECK_IMAGES
    if total < need:
        raise CalibrationError(
            f"{folder} has {total} image file(s); --fastest splits them into calibration and held-out images and "
            f"needs at least {need} ({MIN_CALIBRATION_IMAGES} + {MIN_CHECK_IMAGES}), ideally several hundred"
        )
    rng = np.random.default_rng(seed)
    calibration: list[list[Path]] = []
    held_out: list[Path] = []
    for _, files in sorted(groups.items()):
        shuffled = [files[i] for i in rng.permutation(len(files))]
        half = len(shuffled) // 2
        held_out += shuffled[:half]
        calibration.append(shuffled[half:])
    dealt = [group[i] for i in range(max(map(len, calibration))) for group in calibration if i < len(group)]
    if len(held_out) < MIN_CHECK_IMAGES:  # many single-image folders: every half rounds down
        dealt, held_out = (
            dealt[MIN_CHECK_IMAGES - len(held_out) :],
            held_out + dealt[: MIN_CHECK_IMAGES - len(held_out)],
        )
    return dealt[:calibration_images], sorted(held_out)


def folder_targets(
    folders: Sequence[str], names: Sequence[str] | None, num_classes: int, strict: bool = False
) -> list[int] | None:
    """The model class of each class folder: by name when every folder names one of the model's classes, by
    ImageNet synset (``n01440764`` ...) for a 1000-class model with synset folders; None when the folders are not the
    model's classes (``strict``: synset-like folders outside ImageNet-1k are an error instead). ``litevit eval``
    and ``--fastest`` both label folders with it."""
    if names and set(folders) <= set(names):
        index = {name: i for i, name in enumerate(names)}
        return [index[f] for f in folders]
    if num_classes == 1000 and folders and all(_WNID.fullmatch(f) for f in folders):
        index = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
        unknown = sorted(set(folders) - set(index))
        if not unknown:
            return [index[f] for f in folders]
        if strict:
            raise ValueError(f"folders {unknown[:5]} look like WordNet ids but are not ImageNet-1k classes")
    return None


def labels_of(files: Sequence[Path], names: Sequence[str] | None, num_classes: int) -> torch.Tensor | None:
    """The model class of each file from its folder's name (:func:`folder_targets`), or None when unlabelled."""
    folders = sorted({f.parent.name for f in files})
    targets = folder_targets(folders, names, num_classes)
    if targets is None:
        return None
    index = dict(zip(folders, targets, strict=True))
    return torch.tensor([index[f.parent.name] for f in files])


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]  # fmt: skip
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a rate observed as ``k`` events in ``n`` trials."""
    if n < 1:
        return 1.0
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: binomial_cdf(k, n, p) falls as p grows
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def resolvable(n: int, max_drop: float, confidence: float = CONFIDENCE) -> bool:
    """Whether ``n`` images can show a drop within ``max_drop`` points at ``confidence`` (0 of n lost)."""
    return 100 * upper_bound(0, n, confidence) <= max_drop


def median_bounds(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free two-sided ``confidence`` interval of the median of ``values`` (sign-test order
    statistics); (-inf, inf) when there are too few values for any."""
    ordered, n = sorted(values), len(values)
    tail = (1 - confidence) / 2
    k = 0  # the largest k with P(Binomial(n, 1/2) <= k - 1) <= tail
    while k < n and binomial_cdf(k, n, 0.5) <= tail:
        k += 1
    if k == 0:
        return -math.inf, math.inf
    return ordered[k - 1], ordered[n - k]


@dataclass(frozen=True)
class Accuracy:
    """One candidate on the held-out images against fp32 PyTorch."""

    images: int
    exact: bool  # logits within RTOL of fp32's
    max_rel_diff: float
    agreement: float  # share of images whose top-1 equals fp32's
    disagreements: int
    top1: float | None = None  # percent, labelled folders only
    fp32_top1: float | None = None
    losses: int | None = None  # images fp32 gets right and this candidate wrong (labelled)
    int8_failure: str | None = None  # int8 candidates: why the int8 check failed

    @property
    def drop(self) -> float:
        """The measured drop in points: top-1 lost when labelled, else the disagreement rate."""
        if self.top1 is not None and self.fp32_top1 is not None:
            return self.fp32_top1 - self.top1
        return 100 * self.disagreements / self.images

    @property
    def drop_bound(self) -> float:
        """The one-sided 95 % upper bound of the drop in points (0 for an exact candidate)."""
        if self.exact:
            return 0.0
        lost = self.losses if self.losses is not None else self.disagreements
        return 100 * upper_bound(lost, self.images)


def measure(
    run: Callable[[torch.Tensor], Any], x: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None,
    int8: bool,
) -> Accuracy:  # fmt: skip
    """``run`` on the held-out images ``x`` against fp32's ``reference`` logits (``labels``: their classes)."""
    out = run(x)
    if isinstance(out, (list, tuple)):
        raise ValueError("--fastest measures classifiers: the model returns several outputs (a features model)")
    out, ref = out.double(), reference.double()
    finite = bool(out.isfinite().all())
    scale = max(ref.abs().max().item(), 1e-12)
    rel = (out - ref).abs().max().item() / scale if finite else math.inf
    same = out.argmax(-1) == ref.argmax(-1)
    top1 = fp32_top1 = losses = None
    if labels is not None:
        right, fp32_right = out.argmax(-1) == labels, ref.argmax(-1) == labels
        top1, fp32_top1 = 100 * right.double().mean().item(), 100 * fp32_right.double().mean().item()
        losses = int((fp32_right & ~right).sum())
    failure = None
    if int8:
        check = int8_check(out.float(), ref.float())
        failure = None if check.passed else "; ".join(check.failures)
    n = len(ref)
    return Accuracy(n, rel <= RTOL, rel, same.double().mean().item(), int(n - same.sum()), top1, fp32_top1, losses,
                    failure)  # fmt: skip


def judge(accuracy: Accuracy | None, max_drop: float, images: int) -> tuple[bool, str]:
    """Whether a candidate is within ``max_drop`` points on ``images`` held-out images, and why (one phrase).

    ``accuracy`` None: not measured on images (no ``--calibration``, and not exact on random inputs).
    """
    if accuracy is None:
        return False, "not measured: needs images (--calibration DIR)"
    if accuracy.int8_failure is not None:
        return False, f"fails the int8 check: {accuracy.int8_failure}"
    if accuracy.exact:
        return True, "exact to fp32"
    if not resolvable(images, max_drop):
        return False, f"not exact, and {images} images cannot resolve a drop of {max_drop:g} points"
    bound = accuracy.drop_bound
    if bound <= max_drop:
        return True, f"drop <= {bound:.2f} points at 95%"
    return False, f"drop up to {bound:.2f} points at 95% > {max_drop:g}"
