"""Renamed names keep working: the old module paths and fields warn (DeprecationWarning) and answer as before, and
the old training entry point says in one line where training went."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from litevit.registry import DataConfig
from litevit.weights import reading
from litevit.weights.loading import ModelInfo


def test_weights_checkpoint_is_a_deprecated_alias_of_weights_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "litevit.weights.checkpoint", raising=False)
    with pytest.warns(DeprecationWarning, match="renamed litevit.weights.reading"):
        old = importlib.import_module("litevit.weights.checkpoint")
    assert old.read_checkpoint is reading.read_checkpoint and old.CheckpointError is reading.CheckpointError
    assert old.check_meta is reading.check_meta
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("verification", "verified"), [("sha256", True), ("sha256-prefix", True), ("first-use", False), (None, None)]
)
def test_weights_verified_is_a_deprecated_reading_of_verification(
    verification: str | None, verified: bool | None
) -> None:
    info = ModelInfo("levit_128s", 1000, None, 224, DataConfig(), verification=verification)
    with pytest.warns(DeprecationWarning, match="ModelInfo.verification"):
        assert info.weights_verified is verified


def test_python_m_litevit_train_points_to_python_m_litevit_train() -> None:
    done = subprocess.run([sys.executable, "-m", "litevit.train", "--epochs", "1"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "python -m litevit.train is now python -m litevit train (also under torchrun; see its --help)"
    ]
