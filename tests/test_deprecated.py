"""Renamed names keep working: the old module paths and fields warn (DeprecationWarning) and answer as before, and
the old training entry point says in one line where training went."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

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


def test_deploy_export_module_is_a_deprecated_alias_and_leaves_the_function_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``from litevit.deploy.export import export, ExportResult`` still works (and warns), and importing that module
    does not replace the package's ``export`` function by the module, as the import system would."""
    import litevit
    from litevit import deploy
    from litevit.deploy import builder, exporting

    monkeypatch.delitem(sys.modules, "litevit.deploy.export", raising=False)
    with pytest.warns(DeprecationWarning, match="renamed litevit.deploy.exporting"):
        old = importlib.import_module("litevit.deploy.export")
    assert old.export is exporting.export and old.ExportResult is exporting.ExportResult
    assert old.quantize is exporting.quantize and old.metadata_for is builder.metadata_for
    assert deploy.export is exporting.export and litevit.export is exporting.export
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


def test_renamed_check_names_warn_and_answer_as_before(tmp_path) -> None:
    from litevit.deploy import parity
    from litevit.deploy.exporting import ExportResult

    with pytest.warns(DeprecationWarning, match="renamed CheckResult"):
        assert parity.ParityCheck is parity.CheckResult
    int8 = parity.CheckResult(parity.INT8, 8, 0.1, 0.01, True)
    pte = parity.CheckResult(parity.PTE_REFERENCE, 8, 0.1, 0.5, True)
    result = ExportResult(tmp_path / "m.pte", None, int8_check=int8, pte_reference_check=pte)
    with pytest.warns(DeprecationWarning, match="parity_check or int8_check"):
        assert result.check is int8
    with pytest.warns(DeprecationWarning, match="renamed pte_reference_check"):
        assert result.reference_check is pte
    assert result.checks == (int8, pte)


def test_split_conv_is_a_deprecated_alias_of_split_layer() -> None:
    from litevit import layers

    with pytest.warns(DeprecationWarning, match="renamed SplitLayer"):
        old = layers.SplitConv
    assert old is layers.SplitLayer
    split = old.from_conv(torch.nn.Conv2d(4, 6, 1), [2, 4])
    assert [p.out_channels for p in split.parts] == [2, 4]
    with pytest.raises(AttributeError):
        layers.no_such_name  # noqa: B018
