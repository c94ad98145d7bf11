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

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
_CHANNEL_ORDERS = ("RGB", "BGR")


def default_workers() -> int:
    """Data-loading processes per training/eval process: the CPUs this process may use (``sched_getaffinity``),
    shared among torchrun's local processes, less one for the process that runs the model; at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


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
    if data.interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {data.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
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
        v2.Resize(resize, interpolation=INTERPOLATIONS[data.interpolation], antialias=True),
        v2.CenterCrop((height, width)),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if data.channel_order == "BGR":
        steps.append(FlipChannels())
    steps += [v2.Normalize(mean=list(data.mean), std=list(data.std)), v2.ToPureTensor()]
    return v2.Compose(steps)


# PIL refuses images over 2 * Image.MAX_IMAGE_PIXELS (~179 Mpx) as decompression bombs; a user's own photos and scans
# may be larger. Up to this many pixels (3 GiB as 8-bit RGB) they are read; beyond, a clear error.
MAX_PIXELS = 1 << 30


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16/32-bit grey scaled (not clipped) to 8 bits, transparency over white, CMYK and
    palettes through PIL's conversions."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit PNGs open as I;16 or I (32-bit) with values up to 65535: PIL's convert clips them to 255 (all white)
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0  # float images in [0, 1] or [0, 255]
        return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image, upright; raises :class:`ImageLoadError` naming the file if missing or
    unreadable.

    The EXIF orientation is applied; 16-bit, palette, grayscale, RGBA and CMYK images read as that image saved as
    8-bit RGB (transparent pixels over white); images up to :data:`MAX_PIXELS` pixels are read whatever their size.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageLoadError(f"{path}: not a file")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # PIL's bomb check reads this module attribute; raised for this call only, restored below
        Image.MAX_IMAGE_PIXELS = max(limit or 0, MAX_PIXELS // 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _to_rgb(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{path}: more than {MAX_PIXELS} pixels (litevit.data.MAX_PIXELS)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (PIL cannot identify its format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot decode image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


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


@cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764`` ...) in class-index order (the sorted ids, as the ILSVRC
    folders sort), shipped as ``imagenet_synsets.txt``: timm's list, checked against torchvision's class names."""
    path = Path(__file__).with_name("imagenet_synsets.txt")
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the litevit installation; reinstall litevit")
    wnids = tuple(path.read_text().split())
    if len(wnids) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet synsets in {path}, got {len(wnids)}")
    return wnids
