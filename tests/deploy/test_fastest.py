"""``export --fastest``: accuracy measured on the user's images, the 95 % gates, every option honoured or refused,
the file that says how it was chosen, on every family.

The models are random-weight models whose logits follow their input (test_int8's ``_working_model``: BatchNorm
statistics from the images, a ridge head fitted to the 4 drawn classes), at 64 px.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import litevit
from litevit import _extras, cli
from litevit.deploy import accuracy as A
from litevit.deploy import candidates as C
from litevit.deploy import fastest as F
from litevit.deploy.errors import ExportError
from litevit.deploy.int8 import CalibrationError
from litevit.deploy.metadata import ExportMetadata, MetadataError
from litevit.deploy.routes import ROUTES, Route, route_named, route_of
from litevit.deploy.runtime import ExportedModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_int8 import CLASSES, FAMILY_SMALLEST, _class_tree, _working_model  # noqa: E402

ZEN4 = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
NO_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni"})
FAST = dict(seconds=0.1, time_cap=1.0)  # timing kept short: these tests check decisions, not speeds


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 20 drawn images: 40 calibration, 40 held-out."""
    return _class_tree(tmp_path_factory.mktemp("fastest") / "images", per_class=20)


def _labelled(name: str, folder: Path) -> torch.nn.Module:
    model = _working_model(name, folder)
    model.model_info = dataclasses.replace(model.model_info, class_names=tuple(f"class{i}" for i in range(CLASSES)))
    return model


# --- statistics ---------------------------------------------------------------------------------------------------


def test_upper_bound_is_clopper_pearson() -> None:
    assert A.upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(1, 20), (5, 100), (37, 359), (4, 359)]:
        assert A.upper_bound(k, n) == pytest.approx(stats.beta.ppf(0.95, k + 1, n - k), rel=1e-6), (k, n)
    assert A.upper_bound(10, 10) == 1.0 and A.upper_bound(0, 0) == 1.0


def test_resolvable_needs_about_three_hundred_images_per_point() -> None:
    n = math.ceil(math.log(0.05) / math.log(0.99))  # 0 lost of n: 1 - 0.05^(1/n) <= 1 %
    assert A.resolvable(n, 1.0) and not A.resolvable(n - 1, 1.0)
    assert not A.resolvable(10**6, 0.0)  # a zero budget is never resolved: only exact files


def test_median_bounds_cover_the_median_and_widen_with_noise() -> None:
    rng = np.random.default_rng(0)
    tight = list(1.5 + 0.01 * rng.standard_normal(200))
    low, high = A.median_bounds(tight)
    assert low < 1.5 < high and high - low < 0.01
    assert A.median_bounds([1.0, 2.0]) == (-math.inf, math.inf)  # 2 rounds cannot bound anything at 95 %


# --- the split ----------------------------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_and_fixed(folder: Path) -> None:
    calibration, held_out = A.split_folder(folder, 300)
    assert len(calibration) == 40 and len(held_out) == 40 and not set(calibration) & set(held_out)
    for files in (calibration, held_out):
        assert sorted({p.parent.name: 0 for p in files}) == [f"class{c}" for c in range(CLASSES)]
        assert {sum(p.parent.name == f"class{c}" for p in files) for c in range(CLASSES)} == {10}
    assert A.split_folder(folder, 300) == (calibration, held_out)
    assert A.split_folder(folder, 300, seed=1) != (calibration, held_out)
    capped, held = A.split_folder(folder, 12)
    assert len(capped) == 12 and held == held_out  # the cap takes from calibration, never from held-out


def test_split_refuses_bad_folders_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match=r"has 0 image file\(s\); --fastest splits them .* at least 16"):
        A.split_folder(tmp_path / "empty", 300)
    few = _class_tree(tmp_path / "few", per_class=3)
    with pytest.raises(CalibrationError, match=r"has 12 image file\(s\)"):
        A.split_folder(few, 300)
    with pytest.raises(CalibrationError, match="calibration folder not found"):
        A.split_folder(tmp_path / "missing", 300)


def test_labels_come_from_the_folder_names_when_they_are_the_models_classes(folder: Path) -> None:
    files = A.split_folder(folder, 300)[1]
    names = tuple(f"class{i}" for i in range(CLASSES))
    assert A.labels_of(files, names, CLASSES).tolist() == [int(p.parent.name[-1]) for p in files]
    assert A.labels_of(files, None, CLASSES) is None and A.labels_of(files, ("a", "b"), 2) is None
    synsets = [Path("n01440764/a.png"), Path("n01443537/b.png")]
    assert A.labels_of(synsets, None, 1000).tolist() == [0, 1]  # ImageNet synsets, as eval maps them


# --- the gate -----------------------------------------------------------------------------------------------------


def _accuracy(**kw: object) -> A.Accuracy:
    base = dict(images=400, exact=False, max_rel_diff=1e-2, agreement=1.0, disagreements=0)
    return A.Accuracy(**{**base, **kw})


def test_gate_decides_on_the_bound_not_the_point_estimate() -> None:
    assert A.judge(_accuracy(exact=True, disagreements=3), 0.0, 400) == (True, "exact to fp32")
    ok, why = A.judge(_accuracy(disagreements=0), 1.0, 400)
    assert ok and why.startswith("drop <= 0.75")
    ok, why = A.judge(_accuracy(disagreements=2), 1.0, 400)  # 0.5 points measured, bound 1.57
    assert not ok and "drop up to 1.57 points at 95% > 1" in why
    labelled = _accuracy(disagreements=9, top1=90.0, fp32_top1=90.0, losses=0)  # flips among wrong images only
    assert A.judge(labelled, 1.0, 400)[0] and labelled.drop == 0.0
    assert not A.judge(_accuracy(disagreements=0), 1.0, 100)[0]  # 100 images cannot resolve 1 point
    assert "cannot resolve a drop of 1 points" in A.judge(_accuracy(), 1.0, 100)[1]
    dead = _accuracy(int8_failure="the same output for all 400 images")
    assert A.judge(dead, 100.0, 400) == (False, "fails the int8 check: the same output for all 400 images")
    assert A.judge(None, 100.0, 0) == (False, "not measured: needs images (--calibration DIR)")


# --- routes and the plan ------------------------------------------------------------------------------------------


def test_one_name_per_route() -> None:
    names = [r.name for r in ROUTES]
    assert names == ["ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16", "ov-int8-ac"]
    assert route_of("openvino", "int8").name == "ov-int8"  # a file's route: the plain one
    with pytest.raises(ValueError, match="accuracy-controlled quantization is an OpenVINO int8 route"):
        Route("onnxruntime", "int8", accuracy_control=True)
    assert all(route_named(n).name == n for n in names) and route_of("openvino", "int8") == Route("openvino", "int8")
    with pytest.raises(ValueError, match="unknown route 'ov-int8-f32'"):
        route_named("ov-int8-f32")
    with pytest.raises(ValueError, match="unknown runtime"):
        Route("tensorrt", "fp32")


@pytest.mark.parametrize(
    ("out", "fmt", "precision", "routes"),
    [
        ("m", None, None, ["ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16", "ov-int8-ac"]),
        ("m.onnx", None, None, ["ort-fp32", "ort-int8"]),
        ("m.xml", None, None, ["ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16", "ov-int8-ac"]),
        ("m", "openvino", "int8", ["ov-int8", "ov-int8-ac"]),
        ("m.onnx", None, "int8", ["ort-int8"]),
        ("m", None, "bf16", ["ov-bf16"]),
    ],
)
def test_suffix_format_and_precision_restrict_the_candidates(out, fmt, precision, routes) -> None:
    p = F.plan(out, fmt, precision, "images", ZEN4)
    assert [r.name for r in p.routes] == routes
    assert p.baseline == route_named("ort-fp32")  # timed for the speed-ups even when excluded


def test_plan_follows_the_cpu_the_images_and_the_installed_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    p = F.plan("m", calibration="images", flags=NO_BF16)
    assert "no native bf16" in p.skipped["ov-bf16"] and "ov-bf16" not in [r.name for r in p.routes]
    p = F.plan("m", flags=ZEN4)  # no images: int8 cannot be built; bf16 is built and listed as not measured
    assert [r.name for r in p.routes] == ["ort-fp32", "ov-fp32", "ov-bf16"]
    assert p.skipped["ov-int8"].startswith("not measured: needs images")
    real = _extras.available
    monkeypatch.setattr(_extras, "available", lambda m: m not in ("openvino", "nncf") and real(m))
    p = F.plan("m", calibration="images", flags=ZEN4)  # onnxruntime alone
    assert [r.name for r in p.routes] == ["ort-fp32", "ort-int8"]
    assert p.skipped["ov-fp32"] == "openvino is not installed: pip install 'litevit[openvino]'"
    with pytest.raises(ValueError, match="no candidate .*openvino is not installed: pip install 'litevit"):
        F.plan("m.xml", flags=ZEN4)
    monkeypatch.setattr(_extras, "available", lambda m: m != "onnxruntime" and real(m))
    p = F.plan("m", calibration="images", flags=ZEN4)  # OpenVINO alone: no onnxruntime baseline
    assert [r.name for r in p.routes] == ["ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16", "ov-int8-ac"]
    assert p.baseline is None
    assert "pip install 'litevit[export]'" in p.skipped["ort-fp32"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "m.pte"], r"--fastest writes \.onnx \(onnxruntime\) or \.xml \(OpenVINO\), not \.pte"),
        (["--out", "levit.v2"], r"not \.v2: give one of those suffixes"),
        (["--out", "m.onnx", "--format", "openvino"], "--format openvino contradicts --out m.onnx"),
        (["--out", "m.onnx", "--precision", "bf16"], r"no candidate .*ort-fp32: excluded by --precision bf16"),
        (["--out", "m.xml", "--opset", "17"], "opset applies to ONNX files, and these options write openvino"),
        (["--out", "m", "--max-drop", "-1"], "--max-drop must be >= 0 top-1 points, got -1"),
        (["--out", "m", "--calibration", "EMPTY"], r"has 0 image file\(s\)"),
        (["--out", "m", "--calibration", "FEW"], r"has 12 image file\(s\); --fastest splits them"),
        (["--out", "m", "--calibration", "BROKEN"], r"calibration image\(s\) under .* cannot be read"),
        (["--out", "m", "--calibration-images", "4"], "--calibration-images must be at least 8, got 4"),
        # the same rules as any export, before a file is read: ort-int8 is a candidate and needs opset 13
        (["--out", "m.onnx", "--opset", "10", "--calibration", "EMPTY"], r"int8 ONNX .* needs opset >= 13, got 10"),
        (["--out", "m.onnx", "--threads", "2"], None),  # allowed with --fastest; refused without below
    ],
)
def test_bad_fastest_input_is_one_line(args, message, tmp_path, capsys) -> None:
    (tmp_path / "EMPTY").mkdir()
    _class_tree(tmp_path / "FEW", per_class=3)
    broken = _class_tree(tmp_path / "BROKEN", per_class=5)
    (broken / "class0" / "000.png").write_bytes(b"not an image")
    args = [a if a not in ("EMPTY", "FEW", "BROKEN") else str(tmp_path / a) for a in args]
    args = [str(tmp_path / a) if a.startswith("m") or a.startswith("levit") else a for a in args]
    if message is None:
        assert cli.main(["export", "levit_128s", *args[:2], "--threads", "2"]) == 2  # without --fastest
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "apply to --fastest" in err
        return
    assert cli.main(["export", "levit_128s", "--fastest", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # the others: progress lines
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(message, errors[0]), err


# --- on every family ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [FAMILY_SMALLEST[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in FAMILY_SMALLEST[1:]]
)
def test_fastest_measures_every_candidate_on_held_out_images(name: str, folder: Path, tmp_path: Path) -> None:
    """onnxruntime's candidates (fp32 and int8) on the held-out images of a labelled folder: every candidate's
    agreement and top-1 are measured, the decision follows the gate, and the file says so."""
    model = _labelled(name, folder)
    result = litevit.export(model, tmp_path / "m.onnx", fastest=True, calibration=folder, max_drop=20.0, **FAST)
    s = result.metadata.selection
    assert result.path == tmp_path / "m.onnx" and s.route == result.fastest.chosen
    assert s.images == 40 and s.batch == 1 and result.metadata.batch == 1
    assert s.fp32_top1 == pytest.approx(_fp32_top1(model, folder))  # measured on the held-out images, labelled
    rows = {c.route: c for c in s.candidates}
    assert set(rows) == {"ort-fp32", "ort-int8"}
    assert rows["ort-fp32"].agreement == 1.0 and rows["ort-fp32"].drop_bound == 0.0
    int8 = rows["ort-int8"]
    assert int8.agreement is not None and int8.top1 is not None and int8.ms is not None
    net = max(0, round((s.fp32_top1 - int8.top1) * 40 / 100))  # images lost, at least the net drop
    assert int8.drop_bound >= 100 * A.upper_bound(net, 40) - 1e-9
    assert int8.decision.startswith(("CHOSEN", "eligible")) is (int8.drop_bound <= 20.0), int8
    assert ExportedModel(result.path).metadata.selection == s  # read back from the file


def test_too_few_images_keep_only_exact_candidates(folder: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    model = _labelled("levit_128s", folder)
    result = litevit.export(model, tmp_path / "m.onnx", fastest=True, calibration=folder, max_drop=1.0,
                            progress=lines.append, **FAST)  # fmt: skip
    assert any(
        "40 held-out images cannot resolve a drop of 1 points at 95%: only candidates exact" in ln for ln in lines
    )
    rows = {c.route: c for c in result.metadata.selection.candidates}
    assert result.metadata.selection.route == "ort-fp32"
    assert "40 images cannot resolve a drop of 1 points" in rows["ort-int8"].decision


def test_a_dead_int8_file_stays_in_the_table_with_the_int8_checks_reason(folder, tmp_path, monkeypatch) -> None:
    """Planted: the int8 file returns one output for every image. It is measured, fails the int8 check and is
    kept out, whatever the budget."""
    real = ExportedModel.__call__

    def dead(self: ExportedModel, x: torch.Tensor) -> torch.Tensor:
        out = real(self, x)
        return out.mean(0, keepdim=True).expand_as(out) if self.metadata.precision == "int8" else out

    monkeypatch.setattr(ExportedModel, "__call__", dead)
    model = _labelled("levit_128s", folder)
    result = litevit.export(model, tmp_path / "m.onnx", fastest=True, calibration=folder, max_drop=100.0, **FAST)
    rows = {c.route: c for c in result.metadata.selection.candidates}
    assert rows["ort-int8"].decision.startswith("fails the int8 check: the same output for all 40 images")
    assert result.metadata.selection.route == "ort-fp32"


def test_int8_calibrated_on_one_class_is_measured_on_every_class(folder, tmp_path, monkeypatch) -> None:
    """Planted: the int8 candidate is calibrated on class0 alone. It is judged on held-out images of all four
    classes (never on its calibration images), and by the bound of what it measured there."""
    real = C.split_folder
    seen: list[list[Path]] = []

    def one_class(root: Path, count: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
        calibration, held_out = real(root, count, seed)
        seen.append(held_out)
        return [p for p in calibration if p.parent.name == "class0"], held_out

    monkeypatch.setattr(C, "split_folder", one_class)
    model = _labelled("levit_128s", folder)
    result = litevit.export(model, tmp_path / "m.onnx", fastest=True, calibration=folder, max_drop=0.0, **FAST)
    assert {p.parent.name for p in seen[0]} == {f"class{c}" for c in range(CLASSES)}
    rows = {c.route: c for c in result.metadata.selection.candidates}
    assert rows["ort-int8"].agreement is not None and not rows["ort-int8"].decision.startswith(("CHOSEN", "eligible"))
    assert result.metadata.selection.route == "ort-fp32"  # a zero budget: exact files only


def test_near_tied_logits_bf16_flips_predictions_and_is_refused(folder: Path, tmp_path: Path) -> None:
    """Two classes whose logits differ by far less than bf16 resolves: bf16 flips some held-out images."""
    pytest.importorskip("openvino")
    if not _extras.has_native_bf16():
        pytest.skip("this CPU has no native bf16: OpenVINO runs bf16 files in f32")
    model = _labelled("levit_128s", folder)
    with torch.no_grad():
        for head in {id(h): h for h in (model.head, getattr(model, "head_dist", None)) if h is not None}.values():
            head.weight[1] = head.weight[0] + 1e-3 * torch.randn_like(head.weight[0])
            head.bias[1] = head.bias[0]
            head.weight[2:] -= 10.0  # classes 2, 3 never win: every image is a near-tie between 0 and 1
    with pytest.raises(ExportError, match=r"no candidate is eligible: .*ov-bf16: drop up to [\d.]+ points at 95% > 10"):
        litevit.export(model, tmp_path / "m.xml", fastest=True, calibration=folder, precision="bf16", max_drop=10.0,
                       **FAST)  # fmt: skip
    flips = _planted_flips(model, folder)
    assert flips > 0  # what the gate measured: bf16 changes the top-1 of near-tied images


def _fp32_top1(model: torch.nn.Module, folder: Path) -> float:
    """fp32 PyTorch's top-1 on the held-out share of ``folder``, computed here apart from --fastest."""
    from litevit.deploy.int8 import load_calibration

    held = A.split_folder(folder, 300)[1]
    x = torch.cat([torch.from_numpy(a) for a in load_calibration(held, model.model_info.data, (64, 64), folder)])
    labels = torch.tensor([int(p.parent.name.removeprefix("class")) for p in held])
    with torch.no_grad():
        return 100 * (model(x).argmax(-1) == labels).double().mean().item()


def _planted_flips(model: torch.nn.Module, folder: Path) -> int:
    from litevit.deploy.int8 import load_calibration

    held = A.split_folder(folder, 300)[1]
    x = torch.cat([torch.from_numpy(a) for a in load_calibration(held, model.model_info.data, (64, 64), folder)])
    with torch.no_grad():
        fp32 = model(x).argmax(-1)
        bf16 = model.to(torch.bfloat16)(x.bfloat16()).argmax(-1)
    model.float()
    return int((fp32 != bf16).sum())


# --- options, the file, info --------------------------------------------------------------------------------------


def test_onnxruntime_alone_chooses_among_onnxruntime_files(folder, tmp_path, monkeypatch, capsys) -> None:
    real = _extras.available
    monkeypatch.setattr(_extras, "available", lambda m: m not in ("openvino", "nncf") and real(m))
    model = _labelled("levit_128s", folder)
    result = litevit.export(model, tmp_path / "m", fastest=True, calibration=folder, threads=2, **FAST)
    assert result.path == tmp_path / "m.onnx" and result.metadata.selection.threads == 2
    assert "openvino is not installed: pip install 'litevit[openvino]'" in result.fastest.table()
    assert {c.route for c in result.metadata.selection.candidates} == {"ort-fp32", "ort-int8"}


def test_openvino_alone_measures_against_its_fp32_ir(tmp_path, monkeypatch) -> None:
    pytest.importorskip("openvino")
    real = _extras.available
    monkeypatch.setattr(_extras, "available", lambda m: m != "onnxruntime" and real(m))
    model = litevit.create_model("levit_128s", img_size=64).eval()
    result = litevit.export(model, tmp_path / "m", fastest=True, precision="fp32", dynamic_batch=True, **FAST)
    s = result.metadata.selection
    assert result.path == tmp_path / "m.xml" and s.baseline == "ov-fp32" and s.images == 0
    assert result.metadata.batch == "dynamic" and s.batch == 1  # timed at 1, written dynamic as asked
    assert "onnxruntime is not installed: pip install 'litevit[export]'" in result.fastest.table()


def test_cli_fastest_check_says_which_check_ran_and_info_prints_how_it_chose(tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    command = ["export", "levit_128s", "--img-size", "64", "--fastest", "--out", str(out), "--check", "--batch", "2",
               "--precision", "fp32"]  # fmt: skip
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    assert "parity check on 3 images: max |diff|" in printed and "(passed: <= 0.0001)" in printed, printed
    assert "ort-fp32" in printed and "CHOSEN" in printed and "Core ML" not in printed
    loaded = ExportedModel(out)
    assert loaded.metadata.batch == 2 and loaded.metadata.selection.batch == 2  # the shape it was timed at
    x = torch.randn(3, 3, 64, 64)  # litevit's runner splits and pads for a fixed-batch file
    assert torch.allclose(loaded(x), torch.cat([loaded(x[:2]), loaded(x[2:].repeat(2, 1, 1, 1))[:1]]))
    assert cli.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert info.startswith("m.onnx: route ort-fp32, batch 2, input 64x64; chosen by --fastest among 1 files on ")
    assert "chosen by --fastest:" in info and "speed-up against ort-fp32" in info and _extras.cpu_model() in info
    assert cli.main(["predict", str(out), str(tmp_path / "missing.png")]) == 1
    assert "litevit: m.onnx: route ort-fp32, batch 2" in capsys.readouterr().err


def test_info_prints_any_exported_file(tmp_path, capsys) -> None:
    litevit.export(litevit.create_model("levit_128s", img_size=64), tmp_path / "m.pt2")
    assert cli.main(["info", str(tmp_path / "m.pt2")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("m.pt2: pt2 fp32, batch dynamic, input 64x64\n") and "variant: levit_128s" in printed
    assert cli.main(["info", str(tmp_path / "nothing.onnx")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_selection_metadata_is_read_back_and_checked(tmp_path) -> None:
    from litevit.deploy.metadata import CandidateRecord, Selection
    from litevit.registry import DataConfig

    row = CandidateRecord("ov-int8", 1.0, 2.0, 1.5, 2.5, 0.99, 97.5, 0.8, "CHOSEN")
    s = Selection("ov-int8", "cpu", ("AVX2",), 1, 1, "ort-fp32", 400, 98.0, 1.0, 0.95, "openvino 1", (row,), "")
    meta = ExportMetadata("levit_128s", (64, 64), 4, DataConfig(), 1, "openvino", selection=s)
    assert ExportMetadata.from_json(meta.to_json()) == meta
    raw = json.loads(meta.to_json())
    raw["selection"]["candidates"][0]["ms"] = "fast"  # planted: a mistyped field deep in the record
    with pytest.raises(MetadataError, match=r"'selection.candidates\[0\].ms': expected float \| null, got \"fast\""):
        ExportMetadata.from_json(json.dumps(raw))
    raw["selection"] = {"route": "ov-int8"}
    with pytest.raises(MetadataError, match="field 'selection.cpu' is missing"):
        ExportMetadata.from_json(json.dumps(raw))


@pytest.mark.slow
def test_nncf_accuracy_control_is_a_candidate_for_a_labelled_folder_only(folder: Path, tmp_path: Path) -> None:
    """``ov-int8-ac``: NNCF's quantize_with_accuracy_control on the calibration share, judged on the held-out one."""
    pytest.importorskip("nncf")
    model = _labelled("levit_128s", folder)
    result = litevit.export(model, tmp_path / "m.xml", fastest=True, calibration=folder, precision="int8",
                            max_drop=10.0, **FAST)  # fmt: skip
    rows = {c.route: c for c in result.metadata.selection.candidates}
    assert rows["ov-int8-ac"].agreement is not None and rows["ov-int8-ac"].top1 is not None
    assert rows["ort-fp32"].decision.startswith("baseline only: excluded by")
    unlabelled = _working_model("levit_128s", folder)  # no class names: the folders are not its classes
    result = litevit.export(unlabelled, tmp_path / "u.xml", fastest=True, calibration=folder, precision="int8",
                            max_drop=10.0, **FAST)  # fmt: skip
    rows = {c.route: c for c in result.metadata.selection.candidates}
    assert rows["ov-int8-ac"].decision == "needs a labelled folder: sub-folders named as the model's classes"
    assert rows["ov-int8-ac"].ms is None and rows["ov-int8"].agreement is not None


def test_the_bf16_candidates_are_their_f32_twins_graphs_recorded_at_bf16(tmp_path) -> None:
    """An IR records the float precision it runs at: ov-bf16 is ov-fp32's graph and ov-int8-bf16 ov-int8's (one
    quantization, not two), each recording its own precision, which the runner compiles it at."""
    pytest.importorskip("nncf", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    ov = pytest.importorskip("openvino")
    model = litevit.create_model("levit_128s", img_size=64, num_classes=CLASSES)
    routes = [route_named(n) for n in ("ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16")]
    found = C.build_candidates(model, routes, {}, tmp_path, speed_only=True)
    paths = {t.name: t.path for t in found.trials}

    def ops(path: Path) -> list[tuple[str, str]]:
        graph = ov.Core().read_model(str(path))
        return [(op.get_type_name(), op.get_friendly_name()) for op in graph.get_ordered_ops()]

    for twin, of in (("ov-bf16", "ov-fp32"), ("ov-int8-bf16", "ov-int8")):
        assert ops(paths[twin]) == ops(paths[of])
        meta, original = ExportedModel(paths[twin]).metadata, ExportedModel(paths[of]).metadata
        assert (meta.precision, meta.inference_precision) == (twin[3:], "bf16")
        assert original.inference_precision == "f32" and meta.variant == original.variant
    assert any(op == "FakeQuantize" for op, _ in ops(paths["ov-int8"]))


@pytest.mark.parametrize(
    ("low", "high", "says"),
    [
        (1.1, 1.3, "the pick is 1.20x (1.10-1.30) faster than OpenVINO's defaults"),
        (0.9, 1.3, "OpenVINO's defaults on the fp32 IR are as fast as the pick"),
        (0.7, 0.9, "OpenVINO's defaults on the fp32 IR are faster than the pick"),
        (-math.inf, math.inf, "5 rounds are too few for a 95% interval: not decided"),
    ],
)
def test_the_line_against_openvino_defaults_claims_only_what_the_interval_decides(
    low: float, high: float, says: str
) -> None:
    assert says in F.reference_line(1.2, low, high, 5)
