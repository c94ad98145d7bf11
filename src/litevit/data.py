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
from torch.utils.data import get_worker_info
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import has_file_allowed_extension
from torchvision.transforms import InterpolationMode, v2

from ._extras import printable
from .layers import to_2tuple
from .registry import DataConfig

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
_CHANNEL_ORDERS = ("RGB", "BGR")


MAX_DEFAULT_WORKERS = 8  # beyond, more loading processes rarely speed up evaluation or training of these models


def default_workers() -> int:
    """Data-loading processes per training/eval process: the CPUs this process may use (``sched_getaffinity``),
    shared among torchrun's local processes, less one for the process that runs the model; at most
    :data:`MAX_DEFAULT_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_DEFAULT_WORKERS, per_process - 1))


class ImageLoadError(ValueError):
    """A file that cannot be read as an image; the message names the file."""


class FlipChannels(torch.nn.Module):
    """RGB -> BGR on a ``C, H, W`` (or ``B, C, H, W``) tensor, for checkpoints trained on OpenCV-decoded images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-3)


def eval_resize(data: DataConfig, img_size: int | tuple[int, int] | None = None) -> v2.Compose:
    """The first part of :func:`eval_transform`: PIL image (or uint8 ``C, H, W`` tensor) -> uint8 ``C, H, W`` tensor.

    Resize the short side to ``img_size / crop_pct`` (each side separately for a non-square ``img_size``), then
    centre-crop ``img_size``. ``img_size`` defaults to ``data.img_size``.
    """
    if data.interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {data.interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
    if not 0 < data.crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {data.crop_pct}")
    height, width = to_2tuple(img_size if img_size is not None else data.img_size)
    if height == width:
        # an int resizes the short side and keeps the aspect ratio
        resize: int | tuple[int, int] = math.floor(height / data.crop_pct)
    else:
        resize = (math.floor(height / data.crop_pct), math.floor(width / data.crop_pct))
    return v2.Compose(
        [
            # resizing before ToImage keeps PIL's resampling for PIL inputs, as the reference evaluation code does
            v2.Resize(resize, interpolation=INTERPOLATIONS[data.interpolation], antialias=True),
            v2.CenterCrop((height, width)),
            v2.ToImage(),
            v2.ToPureTensor(),
        ]
    )


def eval_normalize(data: DataConfig) -> v2.Compose:
    """The second part of :func:`eval_transform`: uint8 ``C, H, W`` or ``B, C, H, W`` tensor -> normalised float32.

    Scale pixels to ``[0, 1]``, reorder channels if the checkpoints expect BGR, then subtract ``mean`` and divide by
    ``std``; each value alone, so a batch gives each image's values exactly.
    """
    if data.channel_order not in _CHANNEL_ORDERS:
        raise ValueError(f"unknown channel order {data.channel_order!r}; expected one of {', '.join(_CHANNEL_ORDERS)}")
    steps: list[torch.nn.Module] = [v2.ToDtype(torch.float32, scale=True)]
    if data.channel_order == "BGR":
        steps.append(FlipChannels())
    steps += [v2.Normalize(mean=list(data.mean), std=list(data.std)), v2.ToPureTensor()]
    return v2.Compose(steps)


def eval_transform(data: DataConfig, img_size: int | tuple[int, int] | None = None) -> v2.Compose:
    """The evaluation preprocessing of ``data``: PIL image (or uint8 ``C, H, W`` tensor) -> normalised float tensor;
    :func:`eval_resize` then :func:`eval_normalize`. ``img_size`` defaults to ``data.img_size``."""
    return v2.Compose([eval_resize(data, img_size), eval_normalize(data)])


# Image memory. While load_image converts a file to 8-bit RGB, the image takes width x height x a few bytes (PIL
# keeps RGB as 4 bytes a pixel, an EXIF rotation or a conversion briefly holds two copies); the eval transform then
# makes it small. DECODE_BYTES is that peak per pixel by the mode a file opens as: the peak resident set of
# load_image + eval_transform measured on 9 Mpx files (EXIF-rotated for RGB, with transparency for P), plus one
# byte for the transform and the interpreter; tests/test_data.py::test_decode_peaks_stay_within_decode_bytes
# measures them again. An image is read when its peak fits in its share of IMAGE_MEMORY (divided among the images
# decoded at once, decoders_at_once); beyond, one line naming the file.
IMAGE_MEMORY = 3 << 30  # bytes that all the images being decoded at once on this machine may take together
DECODE_BYTES = {
    "1": 6, "L": 6, "P": 10, "RGB": 9, "RGBX": 9, "YCbCr": 9, "CMYK": 9, "LAB": 9, "HSV": 9, "RGBA": 9,
    "I;16": 8, "I;16B": 8, "I;16L": 8, "I;16N": 8, "I": 10, "F": 10, "LA": 13, "La": 13, "PA": 13, "RGBa": 13,
}  # fmt: skip
_OTHER_MODE_BYTES = max(DECODE_BYTES.values())  # a mode not listed: the most any listed mode takes


def decoders_at_once() -> int:
    """Images this machine's litevit processes may decode at the same time: in a DataLoader worker, the loader's
    worker count times the local processes (torchrun's ``LOCAL_WORLD_SIZE``); one per process otherwise."""
    info = get_worker_info()
    workers = info.num_workers if info is not None else 1
    return workers * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def max_pixels(mode: str = "RGB", decoders: int | None = None) -> int:
    """The most pixels an image of PIL ``mode`` may have to be read: its share of :data:`IMAGE_MEMORY` (divided
    among ``decoders``, default :func:`decoders_at_once`) over the bytes a pixel of that mode takes to decode."""
    decoders = decoders_at_once() if decoders is None else decoders
    return IMAGE_MEMORY // (max(1, decoders) * DECODE_BYTES.get(mode, _OTHER_MODE_BYTES))


def _grey_to_rgb(image: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grey image as RGB: integers / 257 (65535 -> 255), floats times 255 when in
    [0, 1], rounded and clipped to 8 bits. Computed in float64 a block of rows at a time: a whole float64 copy would
    take 8 bytes a pixel."""
    import numpy as np
    from PIL import Image

    width, height = image.size
    rows = max(1, (1 << 20) // max(1, width))  # about a million pixels a block
    blocks = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def block(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom)), dtype=np.float64)  # rows, W

    if image.mode == "F":  # float images in [0, 1] or [0, 255]
        scale = 255.0 if max(block(*b).max(initial=0.0) for b in blocks) <= 1.0 else 1.0
    else:  # 16-bit PNGs open as I;16 or I (32-bit) with values up to 65535: PIL's convert clips them to 255
        scale = 1 / 257.0
    grey = np.empty((height, width), np.uint8)
    for top, bottom in blocks:
        grey[top:bottom] = np.clip(np.round(block(top, bottom) * scale), 0, 255)
    return Image.fromarray(grey, "L").convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16/32-bit grey scaled (not clipped) to 8 bits, transparency over white, CMYK and
    palettes through PIL's conversions. An RGB image is returned as it is, not copied."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _grey_to_rgb(image)
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        # over white: a paste through the alpha channel gives alpha_composite's values (checked on every value and
        # alpha) without its two RGBA copies
        rgb = Image.new("RGB", image.size, (255, 255, 255))
        rgb.paste(image, mask=image)
        return rgb
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image, upright; raises :class:`ImageLoadError` naming the file if missing,
    unreadable or too large for its share of :data:`IMAGE_MEMORY` (:func:`max_pixels`).

    The EXIF orientation is applied; 16-bit, palette, grayscale, RGBA and CMYK images read as that image saved as
    8-bit RGB (transparent pixels over white). PIL's own decompression-bomb limit (about 179 Mpx) is replaced by
    :func:`max_pixels`, which is checked on the file's header, before anything is decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageLoadError(f"{path}: not a file")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # PIL's bomb check reads this module attribute; ours follows; restored below
        # litevit's file object, not PIL's: closing it leaves the decoded pixels alone (PIL's close frees them)
        with open(path, "rb") as file:
            image = Image.open(file)  # the header only
            width, height = image.size
            decoders = decoders_at_once()
            allowed = max_pixels(image.mode, decoders)
            if width * height > allowed:
                need = width * height * DECODE_BYTES.get(image.mode, _OTHER_MODE_BYTES)
                raise ImageLoadError(
                    f"{path}: a {width}x{height} {image.mode} image needs about {need / 2**30:.1f} GiB to decode; "
                    f"litevit reads up to {allowed} pixels in {image.mode} (litevit.data.IMAGE_MEMORY, "
                    f"{IMAGE_MEMORY / 2**30:g} GiB, shared by {decoders} image(s) decoded at once)"
                )
            ImageOps.exif_transpose(image, in_place=True)
            image.load()
            return _to_rgb(image)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file (PIL cannot identify its format)") from None
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: cannot decode image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


DECODERS = ("pil", "torchvision")  # predict's own (PIL), or JPEGs through torchvision's libjpeg-turbo decoder
_JPEG_MAGIC = b"\xff\xd8\xff"


def load_image_decoder(path: str | os.PathLike, decoder: str = "pil") -> Image.Image | torch.Tensor:
    """:func:`load_image`, or with ``decoder="torchvision"`` a JPEG as an 8-bit RGB ``C, H, W`` tensor from
    torchvision's ``decode_jpeg`` (libjpeg-turbo; EXIF orientation applied; grey and CMYK converted as PIL does), any
    other file through :func:`load_image`. The same limit (:func:`max_pixels`, from the header) and errors.

    The decoded pixels equal PIL's; :func:`eval_transform` then resizes the tensor with torch's antialiased kernels,
    which are close to PIL's resampling, not identical (the tolerance tests/test_data.py accepts for tensor input).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "pil":
        return load_image(path)
    import io

    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with open(path, "rb") as file:
            data = file.read()
        if not data.startswith(_JPEG_MAGIC):
            return load_image(path)
        with Image.open(io.BytesIO(data)) as image:  # the header only: size and mode for the memory limit
            width, height, mode = *image.size, image.mode
    except Exception:  # noqa: BLE001 (PIL raises many kinds): load_image reads it again and says why in one line
        return load_image(path)
    if width * height > max_pixels(mode) or mode not in ("RGB", "L", "CMYK"):
        return load_image(path)  # its one line for a too large image; PIL's conversions for other modes
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                           apply_exif_orientation=True)  # fmt: skip
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].rsplit(", ", 1)[-1] if str(exc).strip() else type(exc).__name__
        raise ImageLoadError(f"{path}: cannot decode image (torchvision decode_jpeg: {reason})") from None


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
