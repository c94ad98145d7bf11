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
