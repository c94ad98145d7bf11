"""What the digits measuring tools share: a model's held-out images and the top-1 scores.

The data set is ``tools/precision_costs.py``'s (``make_digits``: ``ROOT/{train,val}/<digit>/<i>.png``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from litevit.data import eval_transform, image_folder
from litevit.deploy.int8 import DEFAULT_CALIBRATION_IMAGES, INT8_CHECK_IMAGES, calibration_files, load_calibration
from litevit.predict import preprocessing


def val_set(model: nn.Module, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``root/val``'s images preprocessed as ``model`` wants them, ``(N, C, H, W)``, and their labels ``(N,)``."""
    data, size, _ = preprocessing(model)
    val = image_folder(Path(root) / "val", eval_transform(data, size))
    return torch.stack([x for x, _ in val]), torch.tensor([y for _, y in val])


def calibration_split(model: nn.Module, root: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The int8 export's draw from ``root/train`` for ``model``: its calibration images and the images its check
    holds out, each a ``(1, C, H, W)`` batch."""
    data, size, _ = preprocessing(model)
    folder = Path(root) / "train"

    def batches(files: list[Path]) -> list[torch.Tensor]:
        return [torch.from_numpy(b).contiguous() for b in load_calibration(files, data, size, folder)]

    calibration, held_out = calibration_files(folder, DEFAULT_CALIBRATION_IMAGES, INT8_CHECK_IMAGES)
    return batches(calibration), batches(held_out)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(-1) == targets).double().mean()) * 100


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of images, in percent, whose top-1 class is the reference logits' top-1 class."""
    return accuracy(logits, reference.argmax(-1))
