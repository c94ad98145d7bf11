"""Coloured shapes on noisy backgrounds, with boxes and masks, and the metrics the two examples report.

Class ``k`` (1: circle, 2: square, 3: triangle; 0 is background) is drawn in a jittered hue of its own, so a
small network trained from scratch on a CPU learns it in minutes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CLASSES = ("background", "circle", "square", "triangle")
_HUES = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.85, 0.25), 3: (0.25, 0.35, 0.95)}


@dataclass
class Sample:
    image: torch.Tensor  # 3, H, W in [0, 1]
    boxes: torch.Tensor  # n, 4 (x1, y1, x2, y2), pixels
    labels: torch.Tensor  # n, classes 1..3
    mask: torch.Tensor  # H, W class index per pixel (later shapes cover earlier ones)


def _shape_mask(kind: int, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind == 1:
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
    if kind == 2:
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    # upward triangle inscribed in the box [cx - r, cx + r] x [cy - r, cy + r]
    inside_y = (ys >= cy - r) & (ys <= cy + r)
    half_width = (ys - (cy - r)) / 2.0
    return inside_y & (np.abs(xs - cx) <= half_width)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def draw(rng: np.random.Generator, size: int = 128, max_shapes: int = 3) -> Sample:
    """One image with 1..max_shapes shapes whose boxes overlap by IoU < 0.1."""
    image = rng.uniform(0.0, 0.35, size=3)[:, None, None] + rng.normal(0, 0.04, size=(3, size, size))
    mask = np.zeros((size, size), dtype=np.int64)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            kind = int(rng.integers(1, 4))
            r = float(rng.uniform(size * 0.08, size * 0.2))
            cx, cy = rng.uniform(r, size - r, size=2)
            box = np.array([cx - r, cy - r, cx + r, cy + r], dtype=np.float32)
            if all(_iou(box, other) < 0.1 for other in boxes):
                break
        else:
            continue
        region = _shape_mask(kind, cx, cy, r, size)
        colour = np.clip(np.array(_HUES[kind]) + rng.normal(0, 0.08, size=3), 0, 1)
        image[:, region] = colour[:, None]
        mask[region] = kind
        boxes.append(box)
        labels.append(kind)
    return Sample(
        torch.from_numpy(np.clip(image, 0, 1).astype(np.float32)),
        torch.from_numpy(np.stack(boxes)),
        torch.tensor(labels, dtype=torch.int64),
        torch.from_numpy(mask),
    )


def dataset(count: int, seed: int, size: int = 128) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [draw(rng, size) for _ in range(count)]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``n, 4`` and ``m, 4`` boxes (x1, y1, x2, y2): ``n, m``."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC (2010+) all-point AP: area under the precision envelope (max precision at any recall >= r)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]  # envelope: precision made non-increasing in recall
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]], iou_threshold: float = 0.5
) -> float:
    """VOC-style mAP: per class, detections of all images by descending score, each ground-truth box matched once
    (to the unmatched box of highest IoU >= threshold), AP from :func:`average_precision`, mean over the classes
    that have ground truth."""
    classes = sorted({int(c) for t in targets for c in t["labels"]})
    aps = []
    for c in classes:
        scored = []  # (score, image index, box)
        num_gt = 0
        for i, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
            num_gt += int((target["labels"] == c).sum())
            keep = pred["labels"] == c
            scored += [(float(s), i, b) for s, b in zip(pred["scores"][keep], pred["boxes"][keep], strict=True)]
        scored.sort(key=lambda item: -item[0])
        matched = {i: torch.zeros(int((t["labels"] == c).sum()), dtype=torch.bool) for i, t in enumerate(targets)}
        tp = np.zeros(len(scored))
        for k, (_, i, box) in enumerate(scored):
            gt = targets[i]["boxes"][targets[i]["labels"] == c]
            if len(gt) == 0:
                continue
            ious = box_iou(box[None], gt)[0]
            ious[matched[i]] = -1.0
            best = int(ious.argmax())
            if ious[best] >= iou_threshold:
                tp[k] = 1.0
                matched[i][best] = True
        cum_tp = np.cumsum(tp)
        recall = cum_tp / max(num_gt, 1)
        precision = cum_tp / np.arange(1, len(scored) + 1)
        aps.append(average_precision(recall, precision))
    return float(np.mean(aps)) if aps else 0.0


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean over classes (background included) of intersection / union over all pixels; absent classes skipped."""
    confusion = torch.bincount(target.flatten() * num_classes + predicted.flatten(), minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).double()  # rows: truth, columns: prediction
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    return float((inter[union > 0] / union[union > 0]).mean())


def run_arguments(description: str, steps: int, argv: list[str] | None) -> dict[str, Any]:
    """The command line both examples share, parsed into ``run(**...)`` keyword arguments (sets torch threads)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", dest="model_name", default="mobilevit_xxs")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 on a busy machine)")
    parser.add_argument("--checkpoint", help="ImageNet weights for the backbone (file); default: from scratch")
    args = vars(parser.parse_args(argv))
    threads = args.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    return args
