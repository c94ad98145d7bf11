"""Exported files read as untrusted input: tampered metadata in ``.onnx`` and OpenVINO ``.xml`` files is refused with
one line naming the field (the ``.pte`` case is in test_mobile.py, next to the ExecuTorch export it reuses)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from torch import nn

from litevit import _extras
from litevit._extras import quiet_nncf
from litevit.cli import main
from litevit.deploy.exporting import export
from litevit.deploy.metadata import META_KEY, ExportMetadata, MetadataError
from litevit.deploy.onnx import weight_bits_mismatch
from litevit.deploy.openvino import RT_INFO
from litevit.deploy.runtime import ExportedModel

SIZE = 16
CLASSES = 3


@dataclass(frozen=True)
class _Config:
    num_classes: int = CLASSES  # export reads the class count from model.config, as on litevit's models
    img_size: int = SIZE


class _Tiny(nn.Module):
    """A classifier small enough to export in a second: conv, global mean, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))  # B, 3, H, W -> B, 4, H', W' -> B, 4 -> B, CLASSES


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    model = _Tiny().eval()
    return {suffix: export(model, root / f"tiny.{suffix}", img_size=(SIZE, SIZE)).path for suffix in ("onnx", "xml")}


def _read_json(path: Path) -> str:
    if path.suffix == ".onnx":
        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY]
    import openvino as ov

    return ov.Core().read_model(str(path)).get_rt_info(RT_INFO).astype(str)


def _write_json(source: Path, target: Path, text: str) -> None:
    """A copy of ``source`` at ``target`` whose litevit metadata is ``text``, the graph unchanged."""
    if source.suffix == ".onnx":
        proto = onnx.load(str(source))
        for prop in proto.metadata_props:
            if prop.key == META_KEY:
                prop.value = text
        onnx.save(proto, str(target))
        return
    import openvino as ov

    model = ov.Core().read_model(str(source))
    model.set_rt_info(text, RT_INFO)
    ov.save_model(model, str(target), compress_to_fp16=False)


def _edit(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(raw: dict[str, Any]) -> None:
        for key, value in changes.items():
            if key.startswith("data_"):
                raw["data"][key.removeprefix("data_")] = value
            else:
                raw[key] = value

    return apply


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["data"].pop(key.removeprefix("data.")) if key.startswith("data.") else raw.pop(key)


# tampering -> (the field the one-line error must name, a phrase of it)
TAMPERED = {
    "missing_num_classes": (_drop("num_classes"), "'num_classes' is missing"),
    "missing_img_size": (_drop("img_size"), "'img_size' is missing"),
    "missing_data_mean": (_drop("data.mean"), "'data.mean' is missing"),
    "num_classes_as_text": (_edit(num_classes="3"), "'num_classes': expected int"),
    "num_classes_as_float": (_edit(num_classes=3.0), "'num_classes': expected int"),
    "num_classes_as_bool": (_edit(num_classes=True), "'num_classes': expected int"),
    "img_size_as_text": (_edit(img_size="16x16"), "'img_size': expected list[int, int]"),
    "img_size_three_numbers": (_edit(img_size=[16, 16, 16]), "'img_size': expected list[int, int]"),
    "mean_of_two": (_edit(data_mean=[0.5, 0.5]), "'data.mean': expected list[float, float, float]"),
    "mean_not_finite": (_edit(data_mean=[0.5, 0.5, float("nan")]), "'data.mean'"),
    "std_zero": (_edit(data_std=[0.5, 0.0, 0.5]), "'data.std': expected three positive numbers"),
    "unknown_interpolation": (_edit(data_interpolation="lanczos"), "'data': unknown interpolation 'lanczos'"),
    "class_names_as_text": (_edit(class_names="cat"), "'class_names': expected list[str, ...] | null"),
    "class_names_too_few": (_edit(class_names=["cat", "dog"]), "'class_names': expected 3 names"),
    "batch_zero": (_edit(batch=0), "'batch': expected 'dynamic' or a positive integer"),
    "batch_fixed_on_a_dynamic_graph": (_edit(batch=4), None),  # allowed: the file then takes batch 4 only
    "negative_classes": (_edit(num_classes=-1), "'num_classes': expected an integer >= 0"),
    "unknown_format": (_edit(format="tflite"), "'format': expected one of"),
    "unknown_field": (_edit(owner="someone"), "'owner' is unknown"),
    # agree with themselves, not with the graph
    "class_count_not_the_graphs": (_edit(num_classes=1000), "'num_classes' is 1000 but the graph gives 3 classes"),
    "img_size_not_the_graphs": (_edit(img_size=[224, 224]), "'img_size' is [224, 224] but the graph takes [16, 16]"),
}


@pytest.mark.parametrize("suffix", ["onnx", "xml"])
@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_metadata_is_refused_naming_the_field(
    case: str, suffix: str, exported: dict[str, Path], tmp_path: Path
) -> None:
    tamper, expected = TAMPERED[case]
    raw = json.loads(_read_json(exported[suffix]))
    tamper(raw)
    path = tmp_path / f"tampered.{suffix}"
    _write_json(exported[suffix], path, json.dumps(raw))
    if expected is None:
        assert ExportedModel(path).metadata.batch == raw["batch"]
        return
    with pytest.raises(MetadataError) as info:
        ExportedModel(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message, message


@pytest.mark.parametrize("suffix", ["onnx", "xml"])
def test_format_and_json_of_the_file_itself(suffix: str, exported: dict[str, Path], tmp_path: Path) -> None:
    raw = json.loads(_read_json(exported[suffix]))
    other = {"onnx": "openvino", "xml": "onnx"}[suffix]
    cases = {"not valid JSON": "{", "'format' is": json.dumps({**raw, "format": other}), "root": "[1, 2]"}
    for phrase, text in cases.items():
        path = tmp_path / f"{phrase[:3].strip(chr(39))}.{suffix}"
        _write_json(exported[suffix], path, text)
        with pytest.raises(MetadataError, match=phrase):
            ExportedModel(path)


def test_untampered_files_load_and_run(exported: dict[str, Path]) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        outputs = [ExportedModel(path)(x) for path in exported.values()]
    assert all(out.shape == (2, CLASSES) for out in outputs)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_a_result_is_the_callers_own_after_the_next_call(exported: dict[str, Path]) -> None:
    """The runner reuses one infer request and reads its output buffer in place: each result is copied out, so a
    later call (same shape, other images) leaves an earlier result as it was, and the input is left unchanged."""
    for path in exported.values():
        run = ExportedModel(path)
        x, y = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE)
        first = run(x)
        kept, x_before = first.clone(), x.clone()
        second = run(y)
        assert torch.equal(first, kept) and torch.equal(x, x_before), path.suffix
        assert not torch.allclose(first, second), path.suffix


NO_VNNI, AVX512_VNNI, AVX_VNNI = (
    frozenset({"avx2", "avx512f"}),
    frozenset({"avx2", "avx512_vnni"}),
    frozenset({"avx_vnni"}),
)


def test_weight_bits_suit_the_cpu_that_runs_them() -> None:
    assert "has no VNNI" in (weight_bits_mismatch(8, NO_VNNI) or "")
    assert weight_bits_mismatch(8, AVX512_VNNI) is None and weight_bits_mismatch(8, AVX_VNNI) is None
    assert weight_bits_mismatch(7, NO_VNNI) is None and weight_bits_mismatch(7, AVX512_VNNI) is None  # 7 bits: safe
    assert weight_bits_mismatch(None, NO_VNNI) is None  # not an onnxruntime int8 file


@pytest.mark.parametrize(
    ("bits", "flags", "warned"), [(8, NO_VNNI, True), (8, AVX512_VNNI, False), (7, NO_VNNI, False)]
)
def test_the_runner_warns_when_a_files_weight_bits_do_not_suit_this_cpu(
    bits: int, flags: frozenset[str], warned: bool, exported: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    raw = json.loads(_read_json(exported["onnx"]))
    path = tmp_path / f"int8_{bits}.onnx"
    _write_json(exported["onnx"], path, json.dumps({**raw, "precision": "int8", "weight_bits": bits}))
    monkeypatch.setattr(_extras, "cpu_flags", lambda: flags)  # the CPU the file runs on
    with caplog.at_level(logging.WARNING, logger="litevit"):
        ExportedModel(path)
    assert (f"{path}: its int8 weights take 8 bits" in caplog.text) is warned


def test_quiet_nncf_holds_nncf_at_warning_and_restores_its_level(caplog: pytest.LogCaptureFixture) -> None:
    nncf_log = logging.getLogger("nncf")
    nncf_log.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="nncf"), quiet_nncf():
            nncf_log.info("a line per layer")
            nncf_log.warning("kept")
        assert "a line per layer" not in caplog.text and "kept" in caplog.text
        assert nncf_log.level == logging.INFO
    finally:
        nncf_log.setLevel(logging.NOTSET)


def test_cli_refuses_a_tampered_file_in_one_line(
    exported: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    raw = json.loads(_read_json(exported["onnx"]))
    path = tmp_path / "tampered.onnx"
    _write_json(exported["onnx"], path, json.dumps({**raw, "num_classes": 10}))
    image = tmp_path / "grey.png"
    Image.new("RGB", (20, 20), (128, 128, 128)).save(image)
    assert main(["predict", str(path), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'num_classes' is 10" in err and "Traceback" not in err, err


def test_from_json_round_trip_and_old_files() -> None:
    """Every field survives to_json -> from_json; a file without the fields added later still reads."""
    meta = ExportMetadata(
        "levit_128s", (224, 192), 2, ExportMetadata.from_json(_minimal()).data, 1, "onnx", 17, "0.1", "2.14",
        ("cat", "dog"), "int8",
    )  # fmt: skip
    assert ExportMetadata.from_json(meta.to_json()) == meta
    old = ExportMetadata.from_json(_minimal())
    assert old.class_names is None and old.precision == "fp32" and old.opset is None


def _minimal() -> str:
    data = {"img_size": 224, "crop_pct": 0.9, "interpolation": "bilinear", "mean": [0, 0, 0], "std": [1, 1, 1]}
    data["channel_order"] = "BGR"
    return json.dumps({"variant": None, "img_size": [224, 192], "num_classes": 2, "data": data, "batch": 1,
                       "format": "onnx"})  # fmt: skip


def test_an_ir_and_its_bin_are_replaced_as_one_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save_openvino stages the pair and moves it as a set: a write that dies between the .xml and the .bin
    (planted) leaves the old pair whole, and no staging folder behind."""
    ov = pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'litevit[openvino]'")
    from litevit.deploy.openvino import save_openvino

    path = tmp_path / "m.xml"
    save_openvino(ov.convert_model(nn.Linear(4, 2), example_input=torch.zeros(1, 4)), path)
    old = (path.read_bytes(), path.with_suffix(".bin").read_bytes())
    real = ov.save_model

    def dies_after_the_xml(model: Any, target: str, **kwargs: Any) -> None:
        real(model, target, **kwargs)
        Path(target).with_suffix(".bin").unlink()
        raise OSError("No space left on device")

    monkeypatch.setattr(ov, "save_model", dies_after_the_xml)
    with pytest.raises(OSError, match="No space left"):
        save_openvino(ov.convert_model(nn.Linear(4, 3), example_input=torch.zeros(1, 4)), path)
    assert (path.read_bytes(), path.with_suffix(".bin").read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
