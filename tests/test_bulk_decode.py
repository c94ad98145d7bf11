"""Bulk prediction's decoding: uint8 batches from the workers, normalised where the batch is used, each image exactly
what ``eval_transform`` gives it alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_predict import _picture

import litevit
from litevit.bulk.local import decoded
from litevit.data import DECODERS, eval_transform, load_image_decoder
from litevit.predict import normalized
from litevit.registry import DataConfig

_LEVIT = litevit.get_variant("levit_128s").data  # RGB, ImageNet mean and std, bicubic
_MOBILEVIT = litevit.get_variant("mobilevit_xxs").data  # BGR, no mean or std, 256 px
CONFIGS = {
    "rgb": (_LEVIT, (224, 224)),
    "bgr": (_MOBILEVIT, (256, 256)),
    "bgr-imagenet-nonsquare": (dataclasses.replace(_LEVIT, channel_order="BGR"), (96, 128)),
}


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """JPEGs and PNGs: landscape, portrait, smaller than the crop, grey, odd sizes; one unreadable file among them."""
    root = tmp_path_factory.mktemp("decode")
    pictures = {
        "wide.jpg": _picture(1, (180, 240)),
        "tall.jpg": _picture(2, (301, 170)),
        "small.jpg": _picture(3, (41, 57)),
        "grey.jpg": _picture(4, (200, 233)).convert("L"),
        "odd.png": _picture(5, (97, 333)),
        "grey.png": _picture(6, (150, 150)).convert("L"),
    }
    for name, picture in pictures.items():
        picture.save(root / name)
    (root / "empty.jpg").write_bytes(b"")
    order = ["wide.jpg", "tall.jpg", "empty.jpg", "small.jpg", "grey.jpg", "odd.png", "grey.png"]
    return [str(root / name) for name in order]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("config", CONFIGS)
def test_normalised_batches_equal_eval_transform(paths: list[str], config: str, decoder: str, workers: int) -> None:
    data, img_size = CONFIGS[config]
    transform = eval_transform(data, img_size)
    readable = []
    for chunk, images, errors in decoded(iter(paths), data, img_size, 3, workers, decoder):
        assert images is not None and images.dtype == np.uint8 and images.shape[1:] == (3, *img_size)
        batch = normalized(images, data)
        assert type(batch) is torch.Tensor and batch.dtype == torch.float32 and len(batch) == errors.count(None)
        kept = [path for path, error in zip(chunk, errors, strict=True) if error is None]
        for path, x in zip(kept, batch, strict=True):
            assert torch.equal(x, transform(load_image_decoder(path, decoder))), path
        readable += kept
    assert readable == [p for p in paths if not p.endswith("empty.jpg")]


def test_normalized_passes_none_through() -> None:
    assert normalized(None, DataConfig()) is None
