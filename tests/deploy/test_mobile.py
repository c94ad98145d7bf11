"""Mobile and edge export: ExecuTorch ``.pte`` (XNNPACK) and Core ML ``.mlpackage``.

By default one variant per family; the sweeps over every registered variant are ``slow``. The XNNPACK rewrites are
checked with torch alone; ExecuTorch and Core ML tests skip when their extra is not installed, and Core ML
predictions skip off macOS.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import litevit
from litevit import cli
from litevit._extras import MissingExtraError, require
from litevit.deploy.coreml import COREML_PREDICTION_SKIP, coreml_available
from litevit.deploy.exporting import export
from litevit.deploy.metadata import MetadataError
from litevit.deploy.parity import RTOL
from litevit.deploy.runtime import ExportedModel
from litevit.deploy.xnnpack_rewrite import rewrite_for_xnnpack

ONE_PER_FAMILY = ["levit_128s", "efficientvit_m0", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs", "t2t_vit_7"]
EVERY = litevit.list_models()
# ATen operators XNNPACK's partitioner rejects, which the rewrites must remove
REJECTED = {
    "split.Tensor", "split_with_sizes.default", "chunk.default", "select.int", "unbind.int", "matmul.default",
    "scaled_dot_product_attention.default", "layer_norm.default", "group_norm.default", "sum.dim_IntList",
    "im2col.default", "expand.default", "slice.Tensor(strided)",
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
    """The ATen operators of ``program``; a slice with a step other than 1 is named ``slice.Tensor(strided)``."""
    names = set()
    for node in program.graph.nodes:
        if node.op == "call_function":
            strided = node.target is torch.ops.aten.slice.Tensor and len(node.args) > 4 and node.args[4] != 1
            names.add(str(node.target).removeprefix("aten.") + ("(strided)" if strided else ""))
    return names


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_rewrites_remove_rejected_operators_and_keep_the_outputs(name: str) -> None:
    model, x = _fused(name)
    module = torch.export.export(model, (x,)).module()
    assert rewrite_for_xnnpack(module)  # every family has something XNNPACK rejects
    rewritten = torch.export.export(module, (x,))
    assert not _ops(rewritten) & REJECTED
    with torch.inference_mode():
        reference, output = model(x), rewritten.module()(x)
    assert (output - reference).abs().max() <= F32_RTOL * reference.abs().max()


# ------------------------------------------------------------------ each rewrite against the un-rewritten graph


class _Op(torch.nn.Module):
    """One operator XNNPACK rejects, applied to a 4D input ``B, C, H, W`` (after a conv for the conv-split case)."""

    def __init__(self, fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.conv = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.group = torch.nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(self, x)
        return torch.cat([t.flatten() for t in out]) if isinstance(out, (tuple, list)) else out


def _qkv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B, C, H, W -> three B, 2, H*W, C/2 heads."""
    t = x.flatten(2).transpose(1, 2)  # B, N, C
    b, n, c = t.shape
    heads = t.reshape(b, n, 2, c // 2).transpose(1, 2)  # B, 2, N, C/2
    return heads, heads.flip(-2) * 0.5, heads.cos()


# (operator rewritten, input shape, function of (module, x)); every input is B, C, H, W with C = 4
REWRITE_CASES = {
    "split_conv": ("split.Tensor", (2, 4, 8, 8), lambda m, x: m.conv(x).split(2, dim=1)),
    "split_3d": ("split.Tensor", (2, 4, 8, 8), lambda m, x: x.flatten(2).split(5, dim=-1)),
    "split_sizes": ("split_with_sizes.default", (2, 4, 8, 8), lambda m, x: x.split([1, 3], dim=1)),
    "chunk": ("chunk.default", (2, 4, 8, 8), lambda m, x: x.chunk(3, dim=2)),
    "select": ("select.int", (2, 4, 8, 8), lambda m, x: x[:, -1] * x[:, 1]),
    "unbind": ("unbind.int", (2, 4, 8, 8), lambda m, x: x.unbind(2)),
    "matmul": ("matmul.default", (2, 4, 8, 8), lambda m, x: x @ x.transpose(-1, -2)),
    "slice_step": ("slice.Tensor", (2, 4, 8, 8), lambda m, x: x[:, :, ::2]),
    "slice_negative_start": ("slice.Tensor", (2, 12, 3, 3), lambda m, x: x[:, -5::2]),
    "slice_negative_end": ("slice.Tensor", (2, 4, 8, 8), lambda m, x: x[..., 1:-2:3]),
    "slice_start_past_the_front": ("slice.Tensor", (2, 4, 8, 8), lambda m, x: x[:, :, -100:7:2]),
    "mean_hw": ("mean.dim", (2, 4, 8, 8), lambda m, x: x.mean((2, 3))),
    "mean_channels": ("mean.dim", (2, 4, 8, 8), lambda m, x: x.mean(1, keepdim=True)),
    "mean_dtype": ("mean.dim", (2, 4, 8, 8), lambda m, x: x.mean(1, dtype=torch.float64)),
    "mean_long": ("mean.dim", (1, 4, 48, 48), lambda m, x: x.mean((-2, -1), keepdim=True)),
    "unfold": ("im2col.default", (2, 4, 8, 8), lambda m, x: F.unfold(x, 3, padding=1, stride=2)),
    "unfold_dilated": ("im2col.default", (2, 4, 9, 9), lambda m, x: F.unfold(x, 2, dilation=2)),
    "attention": (
        "scaled_dot_product_attention.default",
        (2, 4, 4, 4),
        lambda m, x: F.scaled_dot_product_attention(*_qkv(x)),
    ),  # noqa: E501
    "attention_mask": (  # an additive N x N mask with the scale folded away, as EfficientViT's fused heads have it
        "scaled_dot_product_attention.default",
        (2, 4, 4, 4),
        lambda m, x: F.scaled_dot_product_attention(
            *_qkv(x), attn_mask=x.flatten(2)[0, 0, :, None] * x.flatten(2)[1, 1, None, :], scale=1.0
        ),
    ),
    "attention_mask_per_head": (
        "scaled_dot_product_attention.default",
        (2, 4, 4, 4),
        lambda m, x: F.scaled_dot_product_attention(
            *_qkv(x), attn_mask=(_qkv(x)[0] @ _qkv(x)[1].transpose(-1, -2)).cos()
        ),
    ),
    "layer_norm": ("layer_norm.default", (2, 4, 8, 8), lambda m, x: m.norm(x)),
    "group_norm": ("group_norm.default", (2, 4, 8, 8), lambda m, x: m.group(x)),
    "sum": ("sum.dim_IntList", (2, 4, 8, 8), lambda m, x: x.sum((2, 3)) + x.sum(-1, keepdim=True).mean()),
    "expand": ("expand.default", (2, 4, 8, 8), lambda m, x: x[:, :1].expand(-1, 4, -1, -1) * x),
    "softmax": ("softmax.int", (2, 4, 8, 8), lambda m, x: x.softmax(-1)),
    "softmax_dtype": ("softmax.int", (2, 4, 8, 8), lambda m, x: torch.softmax(x, -1, dtype=torch.float64)),
}
F32_RTOL = 2e-6  # the rewrites reorder float32 sums: at most 4.6e-7 relative measured on these cases and families
F64_RTOL = 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", REWRITE_CASES)
def test_each_rewrite_keeps_the_values_and_dtype(case: str, dtype: torch.dtype) -> None:
    op, shape, fn = REWRITE_CASES[case]
    model = _Op(fn).to(dtype).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # live parameters, not the initial ones (LayerNorm/GroupNorm start at 1 and 0)
        for p in model.parameters():
            p.normal_()
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    original = torch.export.export(model, (x,)).module()
    module = torch.export.export(model, (x,)).module()
    done = rewrite_for_xnnpack(module)
    assert done.get(f"aten.{op}"), done
    rewritten = torch.export.export(module, (x,))  # what lower_pte hands to ExecuTorch
    assert not _ops(rewritten) & REJECTED
    with torch.inference_mode():
        reference, output = original(x), rewritten.module()(x)
    assert output.dtype == reference.dtype and output.shape == reference.shape
    rtol = F32_RTOL if reference.dtype == torch.float32 else F64_RTOL
    assert (output - reference).abs().max() <= rtol * reference.abs().max()


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
    check = result.parity_check
    assert check is not None and check.passed and check.max_rel_diff <= RTOL and result.checks == (check,)
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


@pytest.fixture(scope="module")
def levit_pte(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """LeViT-128S exported to .pte through the CLI with --check, and what the CLI printed."""
    pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'litevit[executorch]'")
    path = tmp_path_factory.mktemp("pte") / "m.pte"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["export", "levit_128s", "--out", str(path), "--check"]) == 0  # --check fails above RTOL
    return path, printed.getvalue()


def test_cli_pte_reports_delegation(levit_pte: tuple[Path, str]) -> None:
    path, printed = levit_pte
    assert "executorch fp32, batch 1" in printed and "XNNPACK runs" in printed
    assert "parity check on 1 image: max |diff|" in printed and "(passed: <= 0.0001)" in printed, printed
    share = float(printed.split("XNNPACK runs ")[1].split("%")[0]) / 100
    assert share >= MIN_SHARE, printed
    assert ExportedModel(path).metadata.variant == "levit_128s"


# the metadata JSON lies in the .pte as the bytes of a constant: edits of the same length keep the file readable
PTE_TAMPERED = {
    "missing_field": (b'"variant": ', b'"varianX": ', "'variant' is missing"),
    "mistyped_field": (b'"num_classes": 1000', b'"num_classes": 1e03', "'num_classes': expected int, got 1000.0"),
    "class_count_not_the_graphs": (b'"num_classes": 1000', b'"num_classes": 1001', "'num_classes' is 1001 but"),
    "img_size_not_the_graphs": (b'"img_size": [224, 224]', b'"img_size": [224, 225]', "'img_size' is [224, 225]"),
    "batch_not_the_graphs": (b'"batch": 1', b'"batch": 2', "'batch' is 2 but the graph takes batch 1"),
}


def test_tampered_pte_is_refused_naming_the_field(levit_pte: tuple[Path, str], tmp_path: Path) -> None:
    data = levit_pte[0].read_bytes()
    for case, (old, new, phrase) in PTE_TAMPERED.items():
        assert data.count(old) == 1, case
        path = tmp_path / f"{case}.pte"
        path.write_bytes(data.replace(old, new))
        with pytest.raises(MetadataError) as info:
            ExportedModel(path)
        assert phrase in str(info.value) and "\n" not in str(info.value), (case, str(info.value))


def _check_coreml(name: str, folder: Path) -> None:
    pytest.importorskip("coremltools", reason="the coreml extra is not installed: pip install 'litevit[coreml]'")
    path = folder / f"{name}.mlpackage"
    result = export(name, path, check=coreml_available())
    assert path.is_dir() and result.metadata.format == "coreml"
    assert [c.passed for c in result.checks] == ([True] if coreml_available() else [])


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
