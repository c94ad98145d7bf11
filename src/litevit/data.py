"""Evaluation-side data: the preprocessing a variant's checkpoints expect, image loading, ImageNet class names."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import has_file_allowed_extension
from torchvision.transforms import InterpolationMode, v2

from ._extras import printable
from .layers import to_2tuple
from .registry import DataConfig

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

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


def _identity(path: str) -> tuple[int, int] | None:
    """What a path is on disk, links followed: ``(device, inode)``; None when it cannot be read (a broken link)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def walk_classes(
    root: str | os.PathLike, class_to_idx: dict[str, int], is_valid_file: Callable[[str], bool]
) -> list[tuple[str, int]]:
    """``(path, class index)`` of every file under ``root/<class>/`` that ``is_valid_file`` accepts, each file once.

    Links are followed (datasets are often links to another disk), but a folder is entered once: a link back up
    (``cat/up -> ..``), to the root or to another class is not followed, with a WARNING naming it. torchvision's
    walk (``os.walk(followlinks=True)``) enters such a loop until the path is too long, counting each image hundreds
    of times, and two links in one folder make that 2^depth paths (a hang). A file reached by two paths (links,
    hard links) in one class is counted once; in two classes it has no single label: ValueError naming both paths.
    """
    root = str(root)
    entered = {_identity(root)}
    for name in class_to_idx:
        identity = _identity(os.path.join(root, name))
        if identity in entered:
            raise ValueError(
                f"class folder {printable(os.path.join(root, name))} is a link to the root or another class"
            )
        entered.add(identity)
    owner: dict[tuple[int, int], tuple[str, str]] = {}  # file identity -> (class, first path)
    samples = []
    for name in sorted(class_to_idx, key=class_to_idx.__getitem__):
        for folder, subfolders, files in os.walk(os.path.join(root, name), followlinks=True):
            kept = []
            for sub in sorted(subfolders):
                identity = _identity(os.path.join(folder, sub))
                if identity is None or identity in entered:
                    log.warning(
                        "not entering %s: a link to the root, a class or a folder walked already",
                        printable(os.path.join(folder, sub)),
                    )
                    continue
                entered.add(identity)
                kept.append(sub)
            subfolders[:] = kept  # os.walk descends into these only
            for file in sorted(files):
                path = os.path.join(folder, file)
                if not is_valid_file(path):
                    continue
                identity = _identity(path)  # None: a broken link, kept so that loading reports it
                if identity is not None and identity in owner:
                    first_class, first = owner[identity]
                    if first_class != name:
                        raise ValueError(
                            f"{printable(path)} (class '{printable(name)}') is the same file as {printable(first)} "
                            f"(class '{printable(first_class)}'): one image cannot have two labels"
                        )
                    continue
                if identity is not None:
                    owner[identity] = (name, path)
                samples.append((path, class_to_idx[name]))
    return samples


class LinkSafeImageFolder(ImageFolder):
    """torchvision's ``ImageFolder`` with the file walk of :func:`walk_classes`: no loops, each file once."""

    @staticmethod
    def make_dataset(
        directory: str | os.PathLike,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        if is_valid_file is None:

            def is_valid_file(path: str) -> bool:
                return has_file_allowed_extension(path, extensions or ())

        samples = walk_classes(directory, class_to_idx, is_valid_file)
        found = {target for _, target in samples}
        empty = sorted(name for name, index in class_to_idx.items() if index not in found)
        if empty and not allow_empty:  # torchvision's error, which image_folder turns into one line
            raise FileNotFoundError(f"no image files in the class folders {', '.join(map(printable, empty[:5]))}")
        return samples


def image_folder(root: str | os.PathLike, transform: v2.Compose | None = None) -> ImageFolder:
    """An ImageNet-style ``root/<class>/<image>`` dataset (:class:`LinkSafeImageFolder`); a clear error when ``root``
    is missing or empty."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root} (expected an ImageFolder: {root}/<class>/<image files>)")
    try:
        return LinkSafeImageFolder(str(root), transform=transform, loader=load_image)
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
