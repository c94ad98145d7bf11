"""The detection and segmentation examples (examples/): their metrics against brute-force recomputation, and runs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import detect_shapes  # noqa: E402
import segment_shapes  # noqa: E402
import shapes  # noqa: E402


def _brute_force_ap(tp: list[int], num_gt: int) -> float:
    """The integral of the precision envelope (best precision at recall >= r) over r in (0, 1], on a 1e-5 grid:
    the quantity VOC's all-point AP computes, evaluated from its definition."""
    hits = np.cumsum(tp)
    recall, precision = hits / num_gt, hits / np.arange(1, len(tp) + 1)
    grid = np.linspace(0, 1, 100_001)[1:]
    envelope = np.where(recall[None, :] >= grid[:, None], precision[None, :], 0.0).max(axis=1)
    return float(envelope.mean())


def _brute_force_map(
    predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]], threshold: float = 0.5
) -> float:
    """VOC mAP from the definition in ``shapes.mean_average_precision``'s docstring, recomputed independently:
    IoU in plain Python, and for every cut-off k of the score ranking the true positives among the top k matched
    from scratch (each ground-truth box once, to the unmatched box of highest IoU >= threshold)."""

    def iou(a: list[float], b: list[float]) -> float:
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    aps = []
    for c in sorted({int(label) for t in targets for label in t["labels"]}):
        truth = [t["boxes"][t["labels"] == c].tolist() for t in targets]
        ranked = []  # (score, image, box)
        for i, p in enumerate(predictions):
            keep = p["labels"] == c
            ranked += zip(p["scores"][keep].tolist(), [i] * int(keep.sum()), p["boxes"][keep].tolist(), strict=True)
        ranked.sort(key=lambda item: -item[0])
        hits_at = [0]
        for k in range(1, len(ranked) + 1):
            matched: set[tuple[int, int]] = set()
            for _, i, box in ranked[:k]:
                free = [(iou(box, g), j) for j, g in enumerate(truth[i]) if (i, j) not in matched]
                best = max(free, default=(0.0, -1))
                if best[0] >= threshold:
                    matched.add((i, best[1]))
            hits_at.append(len(matched))
        tp = [hits_at[k] - hits_at[k - 1] for k in range(1, len(hits_at))]
        num_gt = sum(len(boxes) for boxes in truth)
        aps.append(_brute_force_ap(tp, num_gt) if tp else 0.0)
    return float(np.mean(aps))


def test_average_precision_by_hand_and_brute_force() -> None:
    # ranked detections: hit, miss, hit, miss, hit for 4 ground-truth boxes
    # recalls .25 .25 .5 .5 .75, precisions 1 .5 .667 .5 .6 -> envelope 1 on (0, .25], .667 on (.25, .5],
    # .6 on (.5, .75], 0 above: AP = .25 * (1 + 2/3 + .6) = 0.566667
    recall = np.array([0.25, 0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 0.5, 2 / 3, 0.5, 0.6])
    assert shapes.average_precision(recall, precision) == pytest.approx(0.25 * (1 + 2 / 3 + 0.6))
    assert _brute_force_ap([1, 0, 1, 0, 1], 4) == pytest.approx(0.25 * (1 + 2 / 3 + 0.6), abs=1e-4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        tp = rng.integers(0, 2, size=12).tolist()
        num_gt = sum(tp) + int(rng.integers(0, 3))
        if num_gt == 0:
            continue
        hits = np.cumsum(tp)
        ap = shapes.average_precision(hits / num_gt, hits / np.arange(1, 13))
        assert ap == pytest.approx(_brute_force_ap(tp, num_gt), abs=1e-4)


def test_mean_average_precision_matching() -> None:
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    targets = [{"boxes": torch.cat([box, box + 20]), "labels": torch.tensor([1, 2])}]
    # class 1: a duplicate of one box (second is a false positive) -> AP 1; class 2: wrong place -> AP 0
    predictions = [
        {
            "boxes": torch.cat([box, box + 0.5, box + 50]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([1, 1, 2]),
        }
    ]
    assert shapes.mean_average_precision(predictions, targets) == pytest.approx(0.5)
    perfect = [{"boxes": targets[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}]
    assert shapes.mean_average_precision(perfect, targets) == pytest.approx(1.0)


def test_mean_iou_by_hand() -> None:
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    predicted = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2]])
    # class 0: inter 3, union 4; class 1: inter 3, union 5; class 2: inter 0, union 1
    assert shapes.mean_iou(predicted, truth, 3) == pytest.approx((3 / 4 + 3 / 5 + 0) / 3)


def test_drawn_shapes_have_consistent_boxes_and_masks() -> None:
    for sample in shapes.dataset(20, seed=3):
        assert sample.image.shape == (3, 128, 128) and 0 <= sample.image.min() and sample.image.max() <= 1
        assert len(sample.boxes) == len(sample.labels) >= 1
        for box, label in zip(sample.boxes, sample.labels, strict=True):
            x1, y1, x2, y2 = box.round().int().clamp(0, 128).tolist()
            assert (sample.mask[y1:y2, x1:x2] == label).any()


def _brute_force_miou(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes present in either mask of |P & T| / |P | T|, class by class with boolean masks."""
    ious = []
    for c in range(num_classes):
        p, t = predicted == c, truth == c
        union = int((p | t).sum())
        if union:
            ious.append(int((p & t).sum()) / union)
    return float(np.mean(ious))


def test_examples_run_quickly() -> None:
    """Both examples train and evaluate end to end; the scores they report equal an independent recomputation
    from the predictions they were computed from (the detector after 2 steps scores under the example's 0.2
    threshold, so the threshold is lowered to have boxes to score)."""
    small = dict(steps=2, batch_size=2, train_images=4, test_images=6, size=64)
    detection = detect_shapes.run(**small, score_thresh=0.01)
    predictions, targets = detection["predictions"], detection["targets"]
    assert len(predictions) == len(targets) == 6 and sum(len(p["boxes"]) for p in predictions) > 0
    assert detection["map50"] == pytest.approx(_brute_force_map(predictions, targets), abs=1e-4)
    # the same comparison with hits among the misses: every ground-truth box, 1 px off, ranked between them
    generator = torch.Generator().manual_seed(0)
    mixed = [
        {
            "boxes": torch.cat([p["boxes"], t["boxes"] + 1.0]),
            "scores": torch.cat([p["scores"], torch.rand(len(t["boxes"]), generator=generator)]),
            "labels": torch.cat([p["labels"], t["labels"]]),
        }
        for p, t in zip(predictions, targets, strict=True)
    ]
    recomputed = _brute_force_map(mixed, targets)
    assert 0.05 < recomputed < 1.0
    assert shapes.mean_average_precision(mixed, targets) == pytest.approx(recomputed, abs=1e-4)

    segmentation = segment_shapes.main(["--steps", "2", "--batch-size", "2", "--train-images", "4", "--size", "64",
                                        "--test-images", "4"])  # fmt: skip
    predicted, truth = segmentation["predicted"], segmentation["truth"]
    assert predicted.shape == truth.shape == (4, 64, 64)
    assert segmentation["miou"] == pytest.approx(_brute_force_miou(predicted, truth, len(shapes.CLASSES)), abs=1e-12)


@pytest.mark.slow
def test_detection_example_reaches_map50() -> None:
    assert detect_shapes.main([])["map50"] >= 0.5


@pytest.mark.slow
def test_segmentation_example_reaches_miou() -> None:
    assert segment_shapes.main([])["miou"] >= 0.6
