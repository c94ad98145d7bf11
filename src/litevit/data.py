"""Evaluation-side data: the preprocessing a variant's checkpoints expect, image loading, ImageNet class names."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision.transforms import InterpolationMode, v2

from .layers import to_2tuple
from .registry import DataConfig

if TYPE_CHECKING:
    from PIL import Image
    from torchvision.datasets import ImageFolder

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
_CHANNEL_ORDERS = ("RGB", "BGR")


class ImageLoadError(ValueError):
    """A file that cannot be read as an image; the message names the file."""


class FlipChannels(torch.nn.Module):
    """RGB -> BGR on a ``C, H, W`` (or ``B, C, H, W``) tensor, for checkpoints trained on OpenCV-decoded images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-3)


def eval_transform(data: DataConfig, img_size: int | tuple[int, int] | None = None) -> v2.Compose:
    """The evaluation preprocessing of ``data``: PIL image (or uint8 ``C, H, W`` tensor) -> normalised float tensor.

    Resize the short side to ``img_size / crop_pct`` (each side separately for a non-square ``img_size``), centre-crop
    ``img_size``, scale pixels to ``[0, 1]``, reorder channels if the checkpoints expect BGR, then subtract ``mean`` and
    divide by ``std``. ``img_size`` defaults to ``data.img_size``.
    """
    if data.interpolation not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {data.interpolation!r}; expected one of {', '.join(_INTERPOLATIONS)}")
    if data.channel_order not in _CHANNEL_ORDERS:
        raise ValueError(f"unknown channel order {data.channel_order!r}; expected one of {', '.join(_CHANNEL_ORDERS)}")
    if not 0 < data.crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {data.crop_pct}")
    height, width = to_2tuple(img_size if img_size is not None else data.img_size)
    if height == width:
        # an int resizes the short side and keeps the aspect ratio
        resize: int | tuple[int, int] = math.floor(height / data.crop_pct)
    else:
        resize = (math.floor(height / data.crop_pct), math.floor(width / data.crop_pct))
    steps: list[torch.nn.Module] = [
        # resizing before ToImage keeps PIL's resampling for PIL inputs, as the reference evaluation code does
        v2.Resize(resize, interpolation=_INTERPOLATIONS[data.interpolation], antialias=True),
        v2.CenterCrop((height, width)),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if data.channel_order == "BGR":
        steps.append(FlipChannels())
    steps += [v2.Normalize(mean=list(data.mean), std=list(data.std)), v2.ToPureTensor()]
    return v2.Compose(steps)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an RGB PIL image; raises :class:`ImageLoadError` naming the file if missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageLoadError(f"{path}: not a file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (PIL cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot decode image ({exc})") from None


def image_folder(root: str | os.PathLike, transform: v2.Compose | None = None) -> ImageFolder:
    """An ImageNet-style ``root/<class>/<image>`` dataset; a clear error when ``root`` is missing or empty."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root} (expected an ImageFolder: {root}/<class>/<image files>)")
    try:
        return ImageFolder(str(root), transform=transform, loader=load_image)
    except FileNotFoundError as exc:
        raise ValueError(f"{root} is not an ImageFolder (expected {root}/<class>/<image files>): {exc}") from None


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard class-index order (from torchvision's weight metadata)."""
    from torchvision.models import ResNet18_Weights

    names = tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet class names from torchvision, got {len(names)}")
    return names
