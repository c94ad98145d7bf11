"""Evaluation preprocessing against a hand-written PIL + numpy reference; image loading errors; class names."""

from __future__ import annotations

import dataclasses
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import litevit
from litevit import data
from litevit.data import ImageLoadError, eval_transform, image_folder, imagenet_classes, imagenet_synsets, load_image
from litevit.registry import DataConfig

_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise, so that resampling filters and crops give visibly different results."""
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [128 + 100 * np.sin(xx / 17 + c) * np.cos(yy / 23 - c) for c in range(3)]
    array = np.stack(channels, axis=-1) + rs.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _reference(image: Image.Image, data: DataConfig, size: int) -> np.ndarray:
    """The DeiT/timm evaluation recipe written out: PIL resize of the short side, centre crop, scale, normalise."""
    scaled = math.floor(size / data.crop_pct)
    w, h = image.size
    # the long side is truncated, as torchvision's Resize(int) (and so DeiT's and timm's evaluation) does
    new_w, new_h = (scaled, int(h * scaled / w)) if w <= h else (int(w * scaled / h), scaled)
    resized = image.resize((new_w, new_h), _PIL_FILTERS[data.interpolation])
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float64) / 255
    if data.channel_order == "BGR":
        crop = crop[..., ::-1]
    return ((crop - np.array(data.mean)) / np.array(data.std)).transpose(2, 0, 1)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape", [(300, 400), (411, 257)])
def test_eval_transform_matches_reference(interpolation: str, shape: tuple[int, int]) -> None:
    data = DataConfig(img_size=224, crop_pct=0.875, interpolation=interpolation)
    image = _photo(*shape)
    out = eval_transform(data)(image)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 224, 224)
    np.testing.assert_allclose(out.numpy(), _reference(image, data, 224), atol=1e-5)


def test_eval_transform_img_size_and_crop_pct() -> None:
    data = DataConfig(img_size=256, crop_pct=0.9, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    image = _photo(320, 300)
    out = eval_transform(data, img_size=160)(image)
    assert out.shape == (3, 160, 160)
    assert 0 <= out.min() and out.max() <= 1  # pixel range [0, 1] when mean 0, std 1
    np.testing.assert_allclose(out.numpy(), _reference(image, data, 160), atol=1e-5)
    assert eval_transform(data)(image).shape == (3, 256, 256)


def test_eval_transform_channel_order() -> None:
    image = _photo(240, 260)
    rgb = DataConfig(mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    bgr = dataclasses.replace(rgb, channel_order="BGR")
    out = eval_transform(bgr)(image)
    np.testing.assert_allclose(out.numpy(), _reference(image, bgr, 224), atol=1e-5)
    # the BGR planes are the RGB ones reversed, normalised by the config's own (BGR-ordered) mean/std
    plain = eval_transform(dataclasses.replace(rgb, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))(image)
    expected = (plain.flip(0) - torch.tensor(bgr.mean)[:, None, None]) / torch.tensor(bgr.std)[:, None, None]
    torch.testing.assert_close(out, expected)


def test_eval_transform_non_square_and_tensor_input() -> None:
    data = DataConfig(crop_pct=1.0, interpolation="bilinear")
    image = _photo(200, 300)
    assert eval_transform(data, img_size=(128, 192))(image).shape == (3, 128, 192)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # H, W, C -> C, H, W uint8
    from_tensor = eval_transform(data)(tensor)
    assert from_tensor.shape == (3, 224, 224)
    # tensor resizing (antialiased) is close to, not identical with, PIL's
    assert (from_tensor - eval_transform(data)(image)).abs().mean() < 0.05


def test_every_variant_has_a_valid_data_config() -> None:
    for name in litevit.list_models():
        variant = litevit.get_variant(name)
        out = eval_transform(variant.data)(_photo(64, 80))
        assert out.shape == (3, variant.data.img_size, variant.data.img_size), name


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("interpolation", "lanczos5", "interpolation"),
        ("channel_order", "RBG", "channel order"),
        ("crop_pct", 1.5, "crop_pct"),
    ],
)
def test_eval_transform_rejects_bad_config(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        eval_transform(dataclasses.replace(DataConfig(), **{field: value}))


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    _photo(20, 30).convert("L").save(good)
    assert load_image(good).mode == "RGB"  # greyscale files come back as RGB

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    _photo(64, 64).save(tmp_path / "full.jpg", quality=90)
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    for path, reason in [
        (tmp_path / "missing.png", "no such file"),
        (text, "not an image"),
        (truncated, "cannot decode"),
        (tmp_path, "not a file"),
    ]:
        with pytest.raises(ImageLoadError, match=reason) as info:
            load_image(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_image_folder(tmp_path: Path) -> None:
    for cls in ("b_cls", "a_cls"):
        (tmp_path / cls).mkdir()
        _photo(40, 50).save(tmp_path / cls / "x.png")
    dataset = image_folder(tmp_path, eval_transform(DataConfig(img_size=32)))
    assert dataset.classes == ["a_cls", "b_cls"] and len(dataset) == 2
    image, label = dataset[1]
    assert image.shape == (3, 32, 32) and label == 1
    with pytest.raises(ValueError, match="not found"):
        image_folder(tmp_path / "nope", eval_transform(DataConfig()))
    with pytest.raises(ValueError, match="ImageFolder"):
        image_folder(tmp_path / "a_cls", eval_transform(DataConfig()))  # files but no class folders


def test_imagenet_classes() -> None:
    names = imagenet_classes()
    assert len(names) == 1000
    # well-known ImageNet-1k indices
    assert names[0] == "tench" and names[1] == "goldfish" and names[207] == "golden retriever"
    assert names[999] == "toilet tissue"


# ------------------------------------------------------------------------------------------ images as users have them


def _rgb(seed: int, size: tuple[int, int] = (24, 36)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)  # H, W, 3


def _as_rgb8(path: Path) -> np.ndarray:
    return np.asarray(load_image(path))


def _write_png48(path: Path, array: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL reads these but cannot write them): ``array`` is ``H, W, 3`` uint16."""
    height, width, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _kinds(root: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Each image kind as a file, with the 8-bit RGB pixels it must read as."""
    rgb, grey = _rgb(0), _rgb(1)[..., 0]
    kinds: dict[str, tuple[Path, np.ndarray]] = {}
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "grey16.png")  # 16-bit PNG: I;16
    kinds["grey16"] = (root / "grey16.png", np.repeat(grey[..., None], 3, axis=-1))
    _write_png48(root / "rgb48.png", rgb.astype(np.uint16) * 257)
    kinds["rgb48"] = (root / "rgb48.png", rgb)
    Image.fromarray(grey.astype(np.int32) * 257, "I").save(root / "grey32.tif")
    kinds["grey32"] = (root / "grey32.tif", np.repeat(grey[..., None], 3, axis=-1))
    Image.fromarray(grey).save(root / "grey8.png")
    kinds["grey8"] = (root / "grey8.png", np.repeat(grey[..., None], 3, axis=-1))
    palette = Image.fromarray(rgb).quantize(64)
    palette.save(root / "palette.png")
    kinds["palette"] = (root / "palette.png", np.asarray(palette.convert("RGB")))
    Image.fromarray(np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], -1)).save(root / "rgba.png")
    kinds["rgba"] = (root / "rgba.png", rgb)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.tif")
    kinds["cmyk"] = (root / "cmyk.tif", rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are to be turned 90 degrees clockwise for display
    Image.fromarray(rgb).save(root / "rotated.png", exif=exif)
    kinds["exif_rotated"] = (
        root / "rotated.png",
        np.asarray(Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_270)),
    )
    return kinds


@pytest.mark.parametrize("kind", ["grey16", "rgb48", "grey32", "grey8", "palette", "rgba", "cmyk", "exif_rotated"])
def test_each_image_kind_reads_as_its_8bit_rgb_version(kind: str, tmp_path: Path) -> None:
    path, expected = _kinds(tmp_path)[kind]
    reference = tmp_path / "reference.png"
    Image.fromarray(expected).save(reference)  # that image saved as 8-bit RGB
    image = load_image(path)
    with Image.open(reference) as saved:
        assert image.mode == "RGB" and image.size == saved.size
    np.testing.assert_array_equal(np.asarray(image), _as_rgb8(reference))


def test_transparent_pixels_read_as_white_and_cmyk_jpeg(tmp_path: Path) -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (10, 20, 30, 255)  # left half opaque, right half transparent black
    Image.fromarray(rgba).save(tmp_path / "half.png")
    pixels = _as_rgb8(tmp_path / "half.png")
    assert (pixels[:, :3] == (10, 20, 30)).all() and (pixels[:, 3:] == 255).all()
    Image.fromarray(_rgb(2)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)  # Adobe CMYK JPEG, lossy
    assert np.abs(_as_rgb8(tmp_path / "cmyk.jpg").astype(int) - _rgb(2)).max() <= 8


def test_very_large_image_reads_without_bomb_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL refuses over 2 * MAX_IMAGE_PIXELS; shrink its limit so that a small file stands for a 200 Mpx photo
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    rgb = _rgb(3, (40, 60))  # 2400 px: 24 x PIL's limit
    Image.fromarray(rgb).save(tmp_path / "large.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(_as_rgb8(tmp_path / "large.png"), rgb)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_pixel_limit_is_the_memory_budget_shared_by_the_decoders(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    assert data.IMAGE_MEMORY == 3 << 30
    # one decoder: the 3 GiB over the bytes a pixel takes, e.g. 9 for RGB, 13 for grey with alpha
    assert data.max_pixels("RGB", 1) == (3 << 30) // 9 and data.max_pixels("LA", 1) == (3 << 30) // 13
    assert data.max_pixels("RGB", 1) < 1 << 30  # a gigapixel RGB image (about 9 GiB to decode) is over it
    assert data.max_pixels("XYZ?", 1) == (3 << 30) // max(data.DECODE_BYTES.values())  # unknown: the worst
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.decoders_at_once() == 1  # predict, or eval with workers=0: this process alone
    monkeypatch.setattr(data, "get_worker_info", lambda: SimpleNamespace(num_workers=3))  # in a DataLoader worker
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this machine
    assert data.decoders_at_once() == 6
    assert data.max_pixels("RGB") == (3 << 30) // (6 * 9) == data.max_pixels("RGB", 6)
    # the promise: every decoder at its limit stays within the budget
    for mode, per_pixel in data.DECODE_BYTES.items():
        assert 6 * data.max_pixels(mode) * per_pixel <= data.IMAGE_MEMORY, mode


def test_image_over_its_share_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    path = tmp_path / "large.png"
    Image.fromarray(_rgb(3, (40, 60))).save(path)  # 2400 RGB pixels: 2400 * 9 bytes to decode
    monkeypatch.setattr(data, "IMAGE_MEMORY", 2400 * 9)
    assert load_image(path).size == (60, 40)  # exactly its share
    monkeypatch.setattr(data, "IMAGE_MEMORY", 2400 * 9 - 1)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: a 60x40 RGB image") and "\n" not in message
    assert "litevit reads up to 2399 pixels in RGB" in message and "1 image(s) decoded at once" in message
    monkeypatch.setattr(data, "IMAGE_MEMORY", 2400 * 9 * 2)  # enough for two decoders, not for three
    monkeypatch.setattr(data, "get_worker_info", lambda: SimpleNamespace(num_workers=3))
    with pytest.raises(ImageLoadError, match="3 image"):
        load_image(path)


_PEAK_SCRIPT = """
import gc, sys
from PIL import Image
from litevit import data
from litevit.registry import DataConfig
transform = data.eval_transform(DataConfig())
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
for path in sys.argv[1:]:
    with Image.open(path) as image:
        pixels, mode = image.width * image.height, image.mode
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # the peak resident set starts again from the current one
    base = status("VmRSS")
    transform(data.load_image(path))
    print(mode, (status("VmHWM") - base) / pixels)
"""


@pytest.mark.slow  # about 40 s on 2 shared cores: ten 4 Mpx files written, then read in a fresh process
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak resident set on Linux")
def test_decode_peaks_stay_within_decode_bytes(tmp_path: Path) -> None:
    """Peak memory of load_image + eval_transform per pixel, in a fresh process, for each kind of file."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2000, 2000, 3), dtype=np.uint8)  # 4 Mpx: the arrays dominate the fixed costs
    grey = rgb[..., 0]
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "rgb.png": Image.fromarray(rgb), "rotated.jpg": Image.fromarray(rgb), "grey.png": Image.fromarray(grey),
        "bilevel.png": Image.fromarray(grey).convert("1"), "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgba.png": Image.fromarray(np.dstack([rgb, grey])), "la.png": Image.fromarray(np.dstack([grey, grey]), "LA"),
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257), "float.tif": Image.fromarray(grey / 255.0),
        "grey32.tif": Image.fromarray(grey.astype(np.int32) * 257, "I"),
    }  # fmt: skip
    for name, image in files.items():
        image.save(tmp_path / name, **({"exif": exif.tobytes()} if name == "rotated.jpg" else {}))
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "palette.png", transparency=0)
    paths = [str(tmp_path / name) for name in [*files, "palette.png"]]
    # large allocations through mmap, given back when freed: each file's peak is its own, not the allocator's cache
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, *paths], capture_output=True, text=True, env=env, check=True, timeout=300
    ).stdout.split()
    peaks = list(zip(out[::2], map(float, out[1::2]), strict=True))
    assert len(peaks) == len(paths)
    for (mode, peak), path in zip(peaks, paths, strict=True):
        assert peak <= data.DECODE_BYTES[mode], f"{Path(path).name} ({mode}): {peak:.2f} bytes a pixel"
    assert max(peak for mode, peak in peaks if mode == "RGB") > 7  # the rotated one holds two RGB copies: measured


def test_imagenet_synsets_in_class_index_order() -> None:
    wnids = imagenet_synsets()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"  # tench, toilet tissue
    timm_info = pytest.importorskip("timm").__file__
    info = Path(timm_info).parent / "data" / "_info"
    assert (info / "imagenet_synsets.txt").read_text().split() == list(wnids)
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())

    def norm(text: str) -> str:
        return text.lower().replace("_", " ").replace("-", " ").replace("'", "")

    # each torchvision class name is a lemma of the synset at its index (or one with a word added, for the two
    # duplicate names torchvision disambiguates: 'crane bird', 'maillot tank suit')
    misses = [
        (i, name, lemmas[w])
        for i, (w, name) in enumerate(zip(wnids, imagenet_classes(), strict=True))
        if not any(norm(name) in norm(lemma) or norm(lemma) in norm(name) for lemma in lemmas[w].split(","))
    ]
    assert not misses, misses[:5]


# ------------------------------------------------------------------------------------------- links in an ImageFolder


def _linked_folder(root: Path, outside: Path) -> None:
    """cat/ and dog/ with links back up, to themselves, twice to one folder, to a file, and to a folder elsewhere."""
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            _photo(8, 8).save(root / cls / f"{i}.png")
    (root / "cat" / "nested" / "deep").mkdir(parents=True)
    _photo(8, 8).save(root / "cat" / "nested" / "deep" / "2.png")
    outside.mkdir()
    _photo(8, 8).save(outside / "3.png")
    (root / "cat" / "up").symlink_to("..")  # the root: every class again, at every depth
    (root / "cat" / "self").symlink_to(".")  # two loops in one folder: 2^depth paths for os.walk(followlinks)
    (root / "cat" / "nested" / "deep" / "back").symlink_to("../..")  # a loop inside the class
    (root / "cat" / "again").symlink_to("nested")  # one folder reached twice
    (root / "cat" / "alias.png").symlink_to("0.png")  # one file reached twice
    (root / "cat" / "dogs").symlink_to("../dog")  # another class
    (root / "dog" / "elsewhere").symlink_to(outside)  # a folder on another disk: followed


def test_image_folder_follows_links_without_loops_counting_each_file_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    _linked_folder(root, tmp_path / "outside")
    dataset = image_folder(root)
    got = [(str(Path(p).relative_to(root)), t) for p, t in dataset.samples]
    # cat's nested image once (through "again" or "nested", whichever is walked first), its alias not at all
    assert got == [
        ("cat/0.png", 0), ("cat/1.png", 0), ("cat/again/deep/2.png", 0),
        ("dog/0.png", 1), ("dog/1.png", 1), ("dog/elsewhere/3.png", 1),
    ]  # fmt: skip
    assert len({Path(p).resolve() for p, _ in dataset.samples}) == len(dataset.samples)
    for link in ("cat/up", "cat/self", "cat/dogs", "cat/nested", "cat/again/deep/back"):
        assert f"not entering {root / link}" in caplog.text, link


def test_image_folder_refuses_one_file_in_two_classes(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        _photo(8, 8).save(tmp_path / cls / "0.png")
    (tmp_path / "dog" / "stolen.png").symlink_to("../cat/0.png")
    with pytest.raises(ValueError, match=r"dog/stolen\.png \(class 'dog'\) is the same file as .*cat/0\.png"):
        image_folder(tmp_path)
    (tmp_path / "dog" / "stolen.png").unlink()
    (tmp_path / "cat" / "dogs").symlink_to("../dog")
    (tmp_path / "dog" / "0.png").unlink()
    with pytest.raises(ValueError, match="no image files in the class folders dog"):  # not filled from cat's link
        image_folder(tmp_path)
