"""Fixtures of the training tests: one thread per test, and the drawn-pattern data set (one per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_train import make_patterns


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # tiny models on a shared machine: one thread avoids oversubscription stalls
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 training images (24 per class) and 30 validation images from another seed."""
    root = tmp_path_factory.mktemp("patterns")
    make_patterns(root / "train", 24, seed=0)
    make_patterns(root / "val", 10, seed=1)
    return root


@pytest.fixture(scope="session")
def strong_float(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, Path]:
    """A tiny LeViT trained 20 epochs at 32 px on the patterns (90 % on their 30 validation images): its
    ``best.safetensors``, its validation top-1 computed here (independently of training), and the patterns' root."""
    from test_train import CLASSES, tiny_config

    from litevit import load
    from litevit.data import eval_transform, load_image
    from litevit.training import train as T

    root = tmp_path_factory.mktemp("strong")
    make_patterns(root / "data" / "train", 24, seed=0)
    make_patterns(root / "data" / "val", 10, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.train(tiny_config(root / "data", root / "run", epochs=20))
    finally:
        torch.set_num_threads(threads)
    model = load(root / "run" / T.BEST_EXPORT).eval()
    paths = sorted((root / "data" / "val").rglob("*.png"))
    transform = eval_transform(model.model_info.data, 32)
    x = torch.stack([transform(load_image(p)) for p in paths])
    y = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    with torch.no_grad():
        top1 = float((model(x).argmax(-1) == y).double().mean() * 100)
    return root / "run" / T.BEST_EXPORT, top1, root / "data"
