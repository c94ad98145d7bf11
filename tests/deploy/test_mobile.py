"""Mobile and edge export: ExecuTorch ``.pte`` (XNNPACK) and Core ML ``.mlpackage``.

By default one variant per family; the sweeps over every registered variant are ``slow``. The XNNPACK rewrites are
checked with torch alone; ExecuTorch and Core ML tests skip when their extra is not installed, and Core ML
predictions skip off macOS.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import litevit
from litevit import cli
from litevit._extras import MissingExtraError, require
from litevit.deploy.coreml import COREML_PREDICTION_SKIP, coreml_available
from litevit.deploy.export import export
from litevit.deploy.parity import RTOL
from litevit.deploy.runtime import ExportedModel
from litevit.deploy.xnnpack_rewrite import rewrite_for_xnnpack

ONE_PER_FAMILY = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
EVERY = litevit.list_models()
# ATen operators XNNPACK's partitioner rejects, which the rewrites must remove
REJECTED = {
    "split.Tensor", "split_with_sizes.default", "chunk.default", "select.int", "unbind.int", "matmul.default",
    "scaled_dot_product_attention.default", "layer_norm.default", "group_norm.default", "sum.dim_IntList",
    "im2col.default", "expand.default",
}  # fmt: skip
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # coremltools' own registry calls
# shares measured with ExecuTorch 1.5.1 after the rewrites; a drop means an operator fell back again
MIN_SHARE = 0.95


def _fused(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    model = litevit.fuse(litevit.create_model(name).eval())
    size = model.config.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    return model, torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))


def _ops(program: torch.export.ExportedProgram) -> set[str]:
    return {str(node.target).removeprefix("aten.") for node in program.graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_rewrites_remove_rejected_operators_and_keep_the_outputs(name: str) -> None:
    model, x = _fused(name)
    module = torch.export.export(model, (x,)).module()
    assert rewrite_for_xnnpack(module)  # every family has something XNNPACK rejects
    rewritten = torch.export.export(module, (x,))
    assert not _ops(rewritten) & REJECTED
    with torch.inference_mode():
        reference, output = model(x), rewritten.module()(x)
    assert (output - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, *args: object) -> object:
        if name.split(".")[0] in ("executorch", "coremltools"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingExtraError, match=r"pip install 'litevit\[executorch\]'"):
        require("executorch.exir", "ExecuTorch export")
    with pytest.raises(MissingExtraError, match=r"pip install 'litevit\[coreml\]'"):
        require("coremltools", "Core ML export")


def _check_pte(name: str, folder: Path) -> None:
    pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'litevit[executorch]'")
    result = export(name, folder / f"{name}.pte", check=True)
    assert result.check is not None and result.check.passed and result.check.max_rel_diff <= RTOL
    assert result.metadata.batch == 1 and result.metadata.variant == name
    assert result.delegation is not None and result.delegation.share >= MIN_SHARE, result.delegation.summary()
    loaded = ExportedModel(result.path)
    assert loaded.metadata == result.metadata


# one .pte export costs about a minute on 2 cores: LeViT's goes through the CLI test below
@pytest.mark.parametrize("name", [n for n in ONE_PER_FAMILY if n != "levit_128s"])
def test_pte_matches_pytorch(name: str, tmp_path: Path) -> None:
    _check_pte(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    sorted(set(EVERY) - set(ONE_PER_FAMILY)),
)
def test_pte_matches_pytorch_every_variant(name: str, tmp_path: Path) -> None:
    _check_pte(name, tmp_path)


def test_cli_pte_reports_delegation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'litevit[executorch]'")
    path = tmp_path / "m.pte"
    assert cli.main(["export", "levit_128s", "--out", str(path), "--check"]) == 0  # --check fails above RTOL
    printed = capsys.readouterr().out
    assert "executorch fp32, batch 1" in printed and "XNNPACK runs" in printed and "(passed)" in printed
    share = float(printed.split("XNNPACK runs ")[1].split("%")[0]) / 100
    assert share >= MIN_SHARE, printed
    assert ExportedModel(path).metadata.variant == "levit_128s"


def _check_coreml(name: str, folder: Path) -> None:
    pytest.importorskip("coremltools", reason="the coreml extra is not installed: pip install 'litevit[coreml]'")
    path = folder / f"{name}.mlpackage"
    result = export(name, path, check=coreml_available())
    assert path.is_dir() and result.metadata.format == "coreml"
    if result.check is not None:
        assert result.check.passed


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_coreml_converts(name: str, tmp_path: Path) -> None:
    _check_coreml(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(EVERY) - set(ONE_PER_FAMILY)))
def test_coreml_converts_every_variant(name: str, tmp_path: Path) -> None:
    _check_coreml(name, tmp_path)


@pytest.mark.skipif(not coreml_available(), reason=COREML_PREDICTION_SKIP)
def test_coreml_predictions_match_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("coremltools", reason="the coreml extra is not installed: pip install 'litevit[coreml]'")
    model, x = _fused("mobilevit_xxs")
    path = tmp_path / "m.mlpackage"
    export(model, path)
    with torch.inference_mode():
        reference = model(x)
    output = ExportedModel(path)(x)
    assert (output - reference).abs().max() <= RTOL * reference.abs().max()
