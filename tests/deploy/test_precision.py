"""Precision as a choice: recorded precision and the CPU-dependent fallback (--fastest: test_fastest.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from litevit._extras import cpu_isa, has_native_bf16
from litevit.deploy import precision as P

ZEN4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})  # AMD EPYC Zen 4: AVX512_BF16 and VNNI
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16", "amx_tile"})
XEON_NO_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni"})  # Cascade Lake / Ice Lake: VNNI, no bf16


@pytest.mark.parametrize(("flags", "native"), [(ZEN4, True), (SAPPHIRE_RAPIDS, True), (XEON_NO_BF16, False)])
def test_native_bf16_is_read_from_the_cpu_flags(flags: frozenset[str], native: bool) -> None:
    assert has_native_bf16(flags) is native
    assert ("AVX512-BF16" in cpu_isa(flags) or "AMX-BF16" in cpu_isa(flags)) is native


def test_bf16_file_runs_in_f32_without_native_bf16_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    P._warned.clear()
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert P.runnable("bf16", XEON_NO_BF16) == "f32"
        assert P.runnable("bf16", XEON_NO_BF16) == "f32"
    assert [r.getMessage() for r in caplog.records] == [
        "this CPU has no native bf16 (no AVX512_BF16, no AMX-BF16): bf16 files run in f32 here"
    ]
    assert P.runnable("bf16", ZEN4) == "bf16"
    assert P.runnable("f32", ZEN4) == "f32"  # a file measured at f32 stays f32 even where bf16 is OpenVINO's default
    assert P.runnable(None, ZEN4) == "f32"  # files written before the field existed were measured at f32
    with pytest.raises(ValueError, match="expected 'f32' or 'bf16'"):
        P.runnable("fp16", ZEN4)


def test_precision_names() -> None:
    assert [P.float_precision(p) for p in P.PRECISIONS] == ["f32", "bf16", "f32", "bf16"]
    assert [P.is_int8(p) for p in P.PRECISIONS] == [False, False, True, True]
    with pytest.raises(ValueError, match="unknown precision 'fp16'; expected one of fp32, bf16, int8, int8-bf16"):
        P.float_precision("fp16")


def _spy_compile(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The inference precision every OpenVINO compile of litevit's runner asks for."""
    from litevit.deploy import openvino as O

    asked: list[str | None] = []
    real = O.openvino_config

    def spy(threads: int | None, precision: str | None = "f32") -> dict:
        asked.append(precision)
        return real(threads, precision)

    monkeypatch.setattr(O, "openvino_config", spy)
    return asked


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_openvino_files_record_their_precision_and_the_runner_honours_it(
    native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    import torch

    import litevit
    from litevit.deploy.runtime import ExportedModel

    monkeypatch.setattr(P, "has_native_bf16", lambda flags=None: native)
    P._warned.clear()
    model = litevit.create_model("levit_128s", img_size=64).eval()
    f32 = litevit.export(model, tmp_path / "f32.xml", precision="fp32").metadata
    bf16 = litevit.export(model, tmp_path / "bf16.xml", precision="bf16").metadata
    assert (f32.precision, f32.inference_precision) == ("fp32", "f32")
    assert (bf16.precision, bf16.inference_precision) == ("bf16", "bf16")
    asked = _spy_compile(monkeypatch)
    x = torch.randn(2, 3, 64, 64)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        for name in ("f32", "bf16"):
            ExportedModel(tmp_path / f"{name}.xml")(x)
        ExportedModel(tmp_path / "bf16.xml", inference_precision="defaults")(x)
    assert asked == ["f32", "bf16" if native else "f32", None]  # None: OpenVINO's own default
    assert any("no native bf16" in r.getMessage() for r in caplog.records) is not native


def test_bf16_needs_openvino_in_one_line(tmp_path: Path) -> None:
    import litevit

    with pytest.raises(ValueError, match=r"precision 'bf16' runs in OpenVINO only: write \.xml, not onnx"):
        litevit.export("levit_128s", tmp_path / "m.onnx", precision="bf16")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        litevit.export("levit_128s", tmp_path / "m.xml", precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_check_names_the_check_that_fits_the_files_precision(precision: str, tmp_path: Path) -> None:
    """An fp32 IR gets the parity check, a bf16 IR the int8 check: on a CPU with native bf16 (this machine's, where
    these tests are measured) a bf16 IR is 8e-3 relative off fp32 on LeViT-128S at 64 px, far outside parity."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    import litevit

    model = litevit.create_model("levit_128s", img_size=64).eval()
    result = litevit.export(model, tmp_path / "m.xml", precision=precision, check=True)
    assert [c.name for c in result.checks] == (["parity"] if precision == "fp32" else ["int8"])
    assert all(c.passed for c in result.checks)
