"""Precision as a choice: recorded precision, CPU-dependent fallback, measured costs and the --fastest pick."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from litevit._extras import cpu_isa, has_native_bf16
from litevit.deploy import fastest as F
from litevit.deploy import precision as P
from litevit.registry import family_line, list_models

RECORD = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy" / "precision_costs.jsonl"

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


def test_every_family_has_a_measured_cost_for_every_route() -> None:
    families = {family_line(name) for name in list_models()}
    measured = set(P.PRECISION_COSTS)
    assert measured == families
    for family in measured:
        for route in ("ov-f32", "ov-bf16", "ov-int8-f32", "ov-int8-bf16", "ort-int8"):
            assert P.cost(family, route) is not None, (family, route)
    assert P.cost("levit", "ort-fp32") == 0.0 and P.cost("nope", "ov-bf16") is None
    assert P.cost("levit", "ov-bf16") == 0.0  # measured -0.19: a negative drop is no cost


def test_precision_costs_are_the_committed_measurement() -> None:
    """The table in the code is benchmarks/accuracy/precision_costs.jsonl, the output of tools/precision_costs.py."""
    records = [json.loads(line) for line in RECORD.read_text().splitlines()]
    measured: dict[str, dict[str, float]] = {}
    for r in records:
        if r["route"] != "ort-fp32":
            measured.setdefault(family_line(r["model"]), {})[r["route"]] = r["drop"]
    assert measured.keys() == P.PRECISION_COSTS.keys()
    for family, routes in measured.items():
        assert P.PRECISION_COSTS[family] == pytest.approx(routes, abs=0.006), family


def test_applicable_candidates_follow_the_cpu_and_the_calibration() -> None:
    names = lambda cands: [c.name for c in cands]  # noqa: E731
    both, skipped = F.applicable("calib", ZEN4)
    assert names(both) == ["ort-fp32", "ort-int8", "ov-f32", "ov-bf16", "ov-int8-f32", "ov-int8-bf16"] and not skipped
    no_bf16, skipped = F.applicable("calib", XEON_NO_BF16)
    assert names(no_bf16) == ["ort-fp32", "ort-int8", "ov-f32", "ov-int8-f32"]
    assert set(skipped) == {"ov-bf16", "ov-int8-bf16"} and "no native bf16" in skipped["ov-bf16"]
    float_only, skipped = F.applicable(None, ZEN4)
    assert names(float_only) == ["ort-fp32", "ov-f32", "ov-bf16"] and "calibration" in skipped["ort-int8"]


def _trial(name: str, speedup: float, cost: float | None) -> F.Trial:
    return F.Trial(name, Path(name), 1.0 / speedup, speedup, speedup, speedup, cost, False)


def test_choose_takes_the_fastest_within_the_budget() -> None:
    trials = [
        _trial("ort-fp32", 1.0, 0.0),
        _trial("ov-f32", 1.1, 0.0),
        _trial("ov-bf16", 1.6, 0.8),
        _trial("ov-int8-bf16", 2.2, 1.3),
        _trial("ov-int8-f32", 1.9, None),
        _trial(F.REFERENCE, 3.0, None),
    ]
    assert F.choose(trials, 1.0).name == "ov-bf16"
    assert F.choose(trials, 1.5).name == "ov-int8-bf16"
    assert F.choose(trials, 0.0).name == "ov-f32"
    reasons = {t.name: t.note for t in trials}
    assert reasons[F.REFERENCE].startswith("reference") and "no recorded accuracy cost" in reasons["ov-int8-f32"]


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


def test_cli_precision_and_fastest_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from litevit.cli import main

    assert main(["export", "levit_128s", "--out", str(tmp_path / "m.onnx"), "--precision", "bf16"]) == 2
    assert main(["export", "levit_128s", "--out", str(tmp_path / "m"), "--fastest", "--max-drop", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "OpenVINO only" in err[0] and "max_drop must be >= 0" in err[1]
    assert "Traceback" not in "\n".join(err)


def test_fastest_writes_the_fastest_eligible_file_and_reports_every_candidate(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    import litevit
    from litevit.deploy.runtime import ExportedModel

    lines: list[str] = []
    model = litevit.create_model("levit_128s", img_size=64).eval()
    result = litevit.export(model, tmp_path / "best", fastest=True, batch=1, progress=lines.append, seconds=0.3)
    report = result.fastest
    names = {t.name for t in report.trials}
    expected = {"ort-fp32", "ov-f32", F.REFERENCE} | ({"ov-bf16"} if has_native_bf16() else set())
    assert names == expected and set(report.skipped) >= {"ort-int8", "ov-int8-f32"}  # no calibration: no int8
    chosen = next(t for t in report.trials if t.name == report.chosen)
    assert chosen.eligible and chosen.speedup == max(t.speedup for t in report.trials if t.eligible)
    assert result.path == tmp_path / ("best" + chosen.path.suffix) and result.path.exists()
    assert ExportedModel(result.path).metadata.variant == "levit_128s"
    assert any(line.startswith("[1/") and "building ort-fp32" in line for line in lines)
    assert "CHOSEN" in report.table() and all(n in report.table() for n in names)
